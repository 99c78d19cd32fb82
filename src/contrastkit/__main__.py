"""``python -m contrastkit`` (and ``torchrun -m contrastkit``) runs the CLI (see :func:`contrastkit.cli.main`)."""

import sys

from contrastkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
