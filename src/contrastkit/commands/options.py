"""What several commands share: the training options generated from :class:`~contrastkit.config.TrainConfig`."""

from __future__ import annotations

import argparse
import dataclasses

from contrastkit.config import BALANCE_NAMES, DEVICE_NAMES, DISTANCE_NAMES, METHOD_NAMES, OPTIMIZER_NAMES, PRECISION_NAMES, TrainConfig
from contrastkit.models.backbones import BACKBONES

CHOICES = {
    "method": METHOD_NAMES,
    "backbone": tuple(BACKBONES),
    "optimizer": OPTIMIZER_NAMES,
    "distance": DISTANCE_NAMES,
    "device": DEVICE_NAMES,
    "precision": PRECISION_NAMES,
    "balance": BALANCE_NAMES,
}
TYPES = {"int": int, "float": float, "str": str}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; defaults are suppressed so only given options are set."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = "omitted" if default is None else default
        help_text = f"{f.metadata['help']} (default: {shown})"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        base = TYPES[f.type.replace(" | None", "")]
        parser.add_argument(
            flag, type=base, default=argparse.SUPPRESS, choices=CHOICES.get(f.name),
            metavar=f.name.upper() if f.name not in CHOICES else None, help=help_text,
        )
