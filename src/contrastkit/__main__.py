"""``python -m contrastkit`` (and ``torchrun -m contrastkit``) runs the CLI."""

import sys

from contrastkit.cli import main

sys.exit(main())
