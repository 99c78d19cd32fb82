"""The ``contrastkit`` commands, one module each, in the order ``contrastkit --help`` lists them.

A command module declares what :func:`contrastkit.cli.build_parser` needs to
add its sub-parser, next to the function that runs it:

- ``NAME``, ``HELP`` (its line in ``contrastkit --help``), ``DESCRIPTION`` and
  ``FORMATTER`` (the argparse formatter of its ``--help``);
- ``add_arguments(parser)``: its options;
- ``run(args) -> int``: does the work, prints the summary and returns the exit
  status. Errors a user can cause are raised as
  :class:`~contrastkit.errors.ContrastkitError`; :func:`contrastkit.cli.main`
  prints them as one line.

``run`` imports what the work needs (models, data, FAISS, plots) when it runs,
so ``contrastkit --help`` stays quick. :mod:`contrastkit.commands.options`
holds the training options shared from :class:`~contrastkit.config.TrainConfig`.
"""

from __future__ import annotations

import argparse
from typing import Protocol

# one import per module: `from contrastkit.commands import ...` would read as the package importing itself
import contrastkit.commands.audit as audit
import contrastkit.commands.complete as complete
import contrastkit.commands.embed as embed
import contrastkit.commands.evaluate as evaluate
import contrastkit.commands.fidelity as fidelity
import contrastkit.commands.generate as generate
import contrastkit.commands.index as index
import contrastkit.commands.label as label
import contrastkit.commands.report as report
import contrastkit.commands.search as search
import contrastkit.commands.serve as serve
import contrastkit.commands.train as train
import contrastkit.commands.train_generator as train_generator
import contrastkit.commands.visualize as visualize


class Command(Protocol):
    """What a command module provides (a module satisfies this protocol)."""

    NAME: str
    HELP: str
    DESCRIPTION: str
    FORMATTER: type[argparse.HelpFormatter]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments to its sub-parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command on parsed arguments; returns the exit status."""


COMMANDS: tuple[Command, ...] = (train, embed, evaluate, label, index, search, visualize, report, audit, serve, fidelity,
                                 train_generator, generate, complete)
