"""Atomic file writes: every artifact goes to a temporary name in the same folder, then is renamed.

A kill at any moment leaves either the old file or the new one, never a half-written file that a
later run would trust.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path` (fsynced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, default=_json_default) + "\n" for row in rows)


def atomic_write_csv(path: str | os.PathLike, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    fieldnames = fieldnames or (list(rows[0]) if rows else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one record and flush it to disk (metrics logs: a kill loses at most the line in flight;
    readers skip a final partial line via `read_jsonl(..., tolerate_partial_tail=True)`)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike, tolerate_partial_tail: bool = False) -> list[dict]:
    """Read a JSONL file; a malformed line is an error naming the file and line number, except a
    final unterminated line when `tolerate_partial_tail` (an append cut by a kill)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if tolerate_partial_tail and b"\n" not in data[err.start:]:  # a kill cut the last line mid-character
            return read_jsonl_text(data[: data.rfind(b"\n") + 1].decode("utf-8", errors="strict"), path)
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line} is not valid UTF-8 (byte {err.start})") from None
    return read_jsonl_text(text, path, tolerate_partial_tail)


def read_jsonl_text(text: str, path, tolerate_partial_tail: bool = False) -> list[dict]:
    """The records of JSONL `text` read from `path` (named in errors)."""
    rows = []
    lines = text.split("\n")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if tolerate_partial_tail and i == len(lines):
                break
            raise ValueError(f"{path}: line {i} is not valid JSON ({err.msg})") from None
    return rows


def _json_default(obj: Any):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
