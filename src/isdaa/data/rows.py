"""Rows and the checks of their fields: `DataError`, `Rows` (loaded rows that remember where they came
from), `row_where`, the float columns and the row field validators (the rules are in `isdaa.data`'s
docstring)."""

from __future__ import annotations

import math

PREF_FLOAT_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "chosen_logps", "rejected_logps")
LOGPS_PAIRS = (("ref_chosen_logps", "ref_rejected_logps"), ("chosen_logps", "rejected_logps"))


class DataError(ValueError):
    """Bad input data; the message names the file, the row (line) and the field."""


class Rows(list):
    """Loaded rows that remember where they came from (`source`, and `lines`: the line number of each
    row in a .jsonl file), so that errors can point at the offending row. A mixture of several sources
    keeps each row's location in `where`."""

    def __init__(self, rows=(), source: str | None = None, lines: list[int] | None = None,
                 where: list[str] | None = None):
        super().__init__(rows)
        self.source, self.lines, self.where = source, lines, where

    def head(self, n: int | None) -> Rows:
        if not n:
            return self
        cut = (lambda x: x[:n] if x is not None else None)
        return Rows(self[:n], self.source, cut(self.lines), cut(self.where))


def row_where(rows, i: int) -> str:
    """`file: line N` (jsonl), `file: row i` (other files, 0-based) or `row i` (in-memory rows)."""
    if getattr(rows, "where", None) is not None:
        return rows.where[i]
    source, lines = getattr(rows, "source", None), getattr(rows, "lines", None)
    if source and lines is not None:
        return f"{source}: line {lines[i]}"
    return f"{source}: row {i}" if source else f"row {i}"


def _row_error(rows, i: int, err: Exception) -> DataError:
    detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return DataError(f"{row_where(rows, i)}: {detail}")


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_text_field(row: dict, name: str, allow_blank: bool = False):
    """The value of `name`: a string (non-blank unless allow_blank) or a non-empty message list."""
    if name not in row:
        raise ValueError(f"missing field {name!r} (the row has {sorted(row)})")
    value = row[name]
    if value is None:
        raise ValueError(f"field {name!r} is null")
    if isinstance(value, str):
        if not allow_blank and not value.strip():
            raise ValueError(f"field {name!r} is empty or whitespace-only")
        return value
    if isinstance(value, list):
        if not value:
            raise ValueError(f"field {name!r} is an empty list of messages")
        for j, m in enumerate(value):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                why = f"message {j} is malformed (needs 'role' and 'content' strings), got {_short(m)}"
                raise ValueError(f"field {name!r}: {why}")  # noqa: TRY004 -- bad data is a ValueError
        if not allow_blank and not any(m["content"].strip() for m in value):
            raise ValueError(f"field {name!r}: every message content is empty or whitespace-only")
        return value
    raise ValueError(f"field {name!r} must be a string or a list of messages, got {type(value).__name__} "
                     f"{_short(value)}")


def check_logps_fields(row: dict) -> dict:
    """The optional float columns of a row, validated: finite numbers <= 0, given in pairs."""
    out = {}
    for pair in LOGPS_PAIRS:
        present = [c for c in pair if row.get(c) is not None]
        if len(present) == 1:
            raise ValueError(f"field {present[0]!r} is given without {next(c for c in pair if c not in present)!r}")
        for col in present:
            v = row[col]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"field {col!r} must be a number, got {type(v).__name__} {_short(v)}")  # noqa: TRY004
            if not math.isfinite(v):
                raise ValueError(f"field {col!r} is not finite ({v})")
            if v > 1e-4:
                raise ValueError(f"field {col!r} must be <= 0 (a summed log-probability), got {v}")
            out[col] = float(v)
    return out


def check_finished_fields(row: dict) -> tuple[bool, bool]:
    """(chosen_finished, rejected_finished): optional booleans written by `isdaa label` (False: the
    sample was cut at max_new_tokens and has no EOS); absent means finished."""
    out = []
    for col in ("chosen_finished", "rejected_finished"):
        v = row.get(col, True)
        if not isinstance(v, bool):
            raise ValueError(f"field {col!r} must be true or false, got {_short(v)}")  # noqa: TRY004
        out.append(v)
    return out[0], out[1]


def check_behavior_fields(row: dict) -> dict:
    """The optional declaration of the sampler pi_b (`isdaa label` writes it): `behavior_model` (name
    or path) and `behavior_temperature` (> 0)."""
    out = {}
    if row.get("behavior_model") is not None:
        if not isinstance(row["behavior_model"], str):
            raise ValueError(f"field 'behavior_model' must be a string, got {_short(row['behavior_model'])}")  # noqa: TRY004
        out["behavior_model"] = row["behavior_model"]
    t = row.get("behavior_temperature")
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"field 'behavior_temperature' must be a number > 0, got {_short(t)}")
        out["behavior_temperature"] = float(t)
    return out
