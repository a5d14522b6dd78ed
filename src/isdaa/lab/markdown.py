"""Markdown helpers of the lab's report: number formatting and tables. A leaf module (imports nothing from
the lab), shared by every report section."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


def fmt(x, nd: int = 3) -> str:
    """A number with `nd` decimals; `n/a` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def pm(mean, se, nd: int = 3) -> str:
    """`0.753 +- 0.012`, or `0.753` when the se is undefined (one seed)."""
    return fmt(mean, nd) + ("" if se is None or math.isnan(se) else f" +- {se:.{nd}f}")


def seeds(n: int) -> str:
    return "(1 seed)" if n == 1 else f"({n} seeds)"


def dashes(rows: list[dict]) -> list[dict]:
    """None cells as `-`."""
    return [{k: "-" if v is None else v for k, v in r.items()} for r in rows]


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """A markdown table; cols = [(key, title, decimals)]: a float cell gets `decimals` places, a
    (mean, se) tuple is written `mean +- se`, anything else as str()."""
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "|".join("---:" for _ in cols) + "|\n"
    body = ""
    for r in rows:
        cells = []
        for key, _title, nd in cols:
            v = r.get(key)
            if isinstance(v, tuple):  # (mean, se)
                cells.append(pm(v[0], v[1], int(nd)))
            else:
                cells.append(fmt(v, int(nd)) if isinstance(v, float) else str(v))
        body += "| " + " | ".join(cells) + " |\n"
    return head + body


@dataclass
class Table:
    """A CSV table of a report section: rows and the columns to write (None: the first row's keys)."""

    rows: list[dict]
    fields: list[str] | None = None


@dataclass
class Section:
    """What a report section renders: its markdown, the figures it drew, the tables the report writes as
    csv/<name>.csv (empty tables are not written)."""

    markdown: str
    figures: list[Path] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
