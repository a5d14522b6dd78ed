"""Validation helpers of the config dataclasses: a failed check raises ValueError with its message, a
choice field (`one_of`) names the nearest valid value, and YAML 1.1 booleans read back as the choice they spell."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import field


def _nearest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.0)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _one_of(value, options, what: str) -> None:
    _check(value in options, f"{what} must be one of {list(options)}, got {value!r}{_nearest(value, options)}")


def one_of(*choices, default: str | None = None):
    """A string field that takes one of `choices` (default: the first; or one function returning them),
    checked at construction by `_check_choices`. YAML 1.1 reads unquoted yes/no/on/off/true/false as
    booleans: `from_dict` reads such a boolean back as the one choice it spells (`check_logps: off`)."""
    lazy = len(choices) == 1 and callable(choices[0])
    return field(default=default if lazy else default or choices[0],
                 metadata={"choices": choices[0] if lazy else choices})


def choices_of(f: dataclasses.Field) -> tuple | None:
    """The choices of a `one_of` field, else None."""
    c = f.metadata.get("choices")
    return tuple(c()) if callable(c) else c


def _check_choices(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        if (c := choices_of(f)) is not None:
            _one_of(getattr(obj, f.name), c, prefix + f.name)


YAML_TRUE, YAML_FALSE = ("true", "yes", "on"), ("false", "no", "off")  # YAML 1.1's boolean words


def _yaml_word(value: bool, choices: tuple, where: str) -> str:
    """The choice a YAML 1.1 boolean spells (`off` -> False -> "off"); refused when none or several do."""
    spelled = [c for c in choices if str(c).lower() in (YAML_TRUE if value else YAML_FALSE)]
    if len(spelled) != 1:
        raise ValueError(f"config key {where!r} must be one of {list(choices)}, got {value!r}: YAML reads unquoted "
                         "yes/no/on/off/true/false as a boolean; write the value in quotes")
    return spelled[0]
