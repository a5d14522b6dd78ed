"""Rows and the checks of their fields: `DataError`, `Rows` (loaded rows that remember where they came
from), `row_where`, the float columns and the row field validators (the rules are in `isdaa.data`'s
docstring)."""

from __future__ import annotations

import math

PREF_FLOAT_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "chosen_logps", "rejected_logps")
LOGPS_PAIRS = (("ref_chosen_logps", "ref_rejected_logps"), ("chosen_logps", "rejected_logps"))


class DataError(ValueError):
    """Bad input data; the message names the file, the row (line) and the field."""


class LineIndex:
    """The 1-based line number (and byte offset) of each row of a JSONL file (blank lines hold no row),
    found lazily: the file is scanned only as far as the rows asked for (a streamed file is not read past
    what training used)."""

    def __init__(self, path):
        self.path, self.lines, self.offsets = str(path), [], []
        self._pos, self._line, self._done = 0, 0, False

    def __getitem__(self, i: int) -> int:
        self._reach(i)
        return self.lines[i]

    def raw(self, i: int) -> dict:
        """Row i as written on its line (json.loads)."""
        import json

        self._reach(i)
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            return json.loads(f.readline())

    def _reach(self, i: int) -> None:
        while len(self.lines) <= i and not self._done:
            self._scan()
        if len(self.lines) <= i:
            raise IndexError(f"{self.path} has {len(self.lines)} rows, not {i + 1}")

    def _scan(self, n_lines: int = 1024) -> None:
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            for _ in range(n_lines):
                start = f.tell()
                line = f.readline()
                if not line:
                    self._done = True
                    break
                self._line += 1
                if line.strip():
                    self.lines.append(self._line)
                    self.offsets.append(start)
            self._pos = f.tell()


class Source:
    """Where a run of rows came from: a file (`lines`: its LineIndex for JSONL) or a dataset name, and the
    index in it of the first row (a split slice starts past 0)."""

    def __init__(self, name: str, lines: LineIndex | None = None, offset: int = 0):
        self.name, self.lines, self.offset = name, lines, offset

    def where(self, i: int) -> str:
        if self.lines is not None:
            return f"{self.name}: line {self.lines[self.offset + i]}"
        return f"{self.name}: row {self.offset + i}"


class Rows(list):
    """Loaded rows that remember where they came from, so that errors can point at the offending row:
    `sources` is [(index of its first row here, Source)], in order (a glob or a mixture has several).
    `source` names a single source; `where[i]` is row i's location."""

    def __init__(self, rows=(), source: str | None = None, lines=None, where: list[str] | None = None,
                 sources: list | None = None):
        super().__init__(rows)
        if sources is None and source is not None:
            sources = [(0, Source(source, _Lines(lines) if lines is not None else None))]
        self.sources = sources or []
        self._where = where

    @property
    def source(self) -> str | None:
        return self.sources[0][1].name if len(self.sources) == 1 else None

    @property
    def where(self):
        return self._where if self._where is not None else _Where(self)

    def head(self, n: int | None) -> Rows:
        if not n:
            return self
        return Rows(self[:n], where=None if self._where is None else self._where[:n],
                    sources=[s for s in self.sources if s[0] < n])


class _Lines:
    """Given line numbers, as a LineIndex."""

    def __init__(self, lines):
        self.lines = list(lines)

    def __getitem__(self, i):
        return self.lines[i]


class _Where:
    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, i):
        return row_where(self.rows, i)

    def __len__(self):
        return len(self.rows)


def row_where(rows, i: int) -> str:
    """`file: line N` (jsonl), `file: row i` (other files, 0-based) or `row i` (in-memory rows)."""
    if getattr(rows, "_where", None) is not None:
        return rows._where[i]
    sources = getattr(rows, "sources", None)
    if sources:
        import bisect

        k = bisect.bisect_right([start for start, _ in sources], i) - 1
        start, source = sources[max(k, 0)]
        return source.where(i - start)
    return f"row {i}"


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
