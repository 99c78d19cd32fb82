"""A dict of options as a config dataclass: the one ``from_dict`` of :class:`~contrastkit.config.TrainConfig` and
:class:`~contrastkit.generate.config.GeneratorConfig`.

Keys that are not fields of the dataclass are refused with one
:class:`~contrastkit.errors.ConfigError`, worded by the caller; the values
are then given to the dataclass, whose own checks (``__post_init__``) refuse
bad values with theirs.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, TypeVar

from contrastkit.errors import ConfigError

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], values: dict[str, Any], unknown_message: Callable[[list[str], list[str]], str]) -> T:
    """``cls(**values)``, after refusing the keys of ``values`` that are not fields of ``cls``.

    Args:
        cls: a dataclass.
        values: field name -> value; missing fields take their defaults.
        unknown_message: the ConfigError's message for unknown keys, from
            (the unknown keys, every field name), both sorted.

    Raises:
        ConfigError: an unknown key (or whatever the dataclass's own checks raise).
    """
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(unknown_message(unknown, sorted(known)))
    return cls(**values)
