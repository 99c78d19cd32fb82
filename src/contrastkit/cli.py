"""The ``contrastkit`` command line: train, embed, evaluate, label, index, search, visualize, report.

Each command is a module of :mod:`contrastkit.commands` that declares its
arguments next to its run function; :func:`build_parser` adds them in the
order of :data:`~contrastkit.commands.COMMANDS`. Training options are generated
from :class:`~contrastkit.config.TrainConfig`, so their defaults and help live
in one place. Errors a user can cause are printed by :func:`main` as one line
naming the file or option, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from contrastkit import __version__
from contrastkit.commands import COMMANDS, Command
from contrastkit.commands.train import config_from_args as _config_from_args  # noqa: F401 (the name tests use)
from contrastkit.errors import ContrastkitError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="contrastkit",
        description="Contrastive self-supervised learning on images: train an encoder without labels, "
        "then embed and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"contrastkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP, description=command.DESCRIPTION,
                                             formatter_class=command.FORMATTER))
    return parser


def _command(name: str) -> Command:
    """The command module called ``name`` (looked up when it runs, so a test may replace its ``run``)."""
    return next(c for c in COMMANDS if c.NAME == name)


def _quiet_other_ranks() -> None:
    """Under torchrun, all but rank 0 (``RANK`` in the environment) send standard output to the null device.

    Every process runs the same command, so the summary lines are printed
    once (DINO's ``setup_for_distributed`` does the same with ``print``).
    Standard error stays open on every rank: errors from any process show.
    """
    from contrastkit.distributed import env_rank

    if env_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)


def _escape_unencodable_output() -> None:
    """Print what the streams' encoding cannot hold as backslash escapes instead of raising UnicodeEncodeError.

    A file name that is not valid in the file system encoding comes back from
    ``os.fsdecode`` with surrogate escapes (``'\\udcff'``), which no text
    encoding writes; printed in a summary or an error it would crash the
    command after its work was done. Streams without ``reconfigure`` (replaced
    by the caller) are left as they are.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure):
            try:
                reconfigure(errors="backslashreplace")
            except ValueError:  # a closed stream
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``contrastkit`` console script and of ``python -m contrastkit`` (also under torchrun)."""
    _quiet_other_ranks()
    _escape_unencodable_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _command(args.command).run(args)
    except ContrastkitError as e:
        print(f"contrastkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ncontrastkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
