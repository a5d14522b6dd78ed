"""Loading: `load_rows` (a hub name / .jsonl / .json / .parquet file, a glob, or a mixture of these)
and isdaa's own file readers, whose errors name the file and line."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from isdaa.data.rows import DataError, Rows, row_where


def load_rows(spec, split: str = "train", subset: str | None = None, limit: int | None = None,
              streaming: bool = False, num_proc: int | None = None) -> Rows:
    """Rows of a local .jsonl / .json / .parquet file, a glob of such files, a hub dataset or local
    dataset folder `spec` (`datasets.load_dataset`, split `split`, `streaming`, `num_proc`), or a list of
    these (a mixture, concatenated in order; an entry may be a mapping as in TRL's `datasets:` list:
    path, name, split, data_files, data_dir, columns). `limit` keeps the first rows (a streamed dataset
    reads only those). File-level problems (missing, not UTF-8, not JSON, empty, ...) raise DataError
    naming the file; local files are read by isdaa's own readers so that errors name the line."""
    if isinstance(spec, (list, tuple)) or (isinstance(spec, str) and _is_glob(spec)):
        return _load_mixture(spec, split, subset, limit, streaming, num_proc)
    if isinstance(spec, dict):
        return _load_mixture([spec], split, subset, limit, streaming, num_proc)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet") and not path.exists():
        raise FileNotFoundError(f"dataset file not found: {spec}")
    if suffix == ".jsonl":
        rows = _read_jsonl_rows(path)
    elif suffix == ".json":
        rows = _read_json_rows(path)
    elif suffix == ".parquet":
        rows = _read_parquet_rows(path)
    elif path.is_file():
        raise DataError(f"{spec}: unsupported dataset file type {suffix or '(none)'!r}; use .jsonl, .json or .parquet")
    else:
        rows = _load_hub(spec, split, subset, limit, streaming, num_proc)
    if not rows:
        raise DataError(f"{spec}: no rows (empty dataset file)" if path.is_file() else f"{spec}: no rows")
    return rows.head(limit)


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[") and not Path(spec).exists()


def _load_hub(spec: str, split: str, subset, limit, streaming: bool, num_proc, **kwargs) -> Rows:
    """`datasets.load_dataset`: only the first `limit` rows become Python rows (streamed: only those are
    read)."""
    import datasets

    try:
        if streaming:
            ds = datasets.load_dataset(spec, subset, split=split, streaming=True, **kwargs)
            rows = list(ds.take(limit) if limit else ds)
        else:
            ds = datasets.load_dataset(spec, subset, split=split, num_proc=num_proc, **kwargs)
            rows = (ds.select(range(min(limit, len(ds)))) if limit else ds).to_list()
    except Exception as err:
        raise DataError(f"dataset {spec!r} (split {split!r}) could not be loaded: "
                        f"{type(err).__name__}: {err}") from err
    return Rows(rows, source=f"{spec}[{split}]")



MIXTURE_KEYS = {"path", "name", "split", "data_files", "data_dir", "columns"}


def _load_mixture(specs, split, subset, limit, streaming, num_proc) -> Rows:
    """A glob (its files, sorted) or a list of specs, concatenated; each row keeps its own location."""
    if isinstance(specs, str):
        pattern, specs = specs, sorted(glob.glob(specs, recursive=True))
        if not specs:
            raise FileNotFoundError(f"no dataset file matches {pattern!r}")
    rows, where = [], []
    for entry in specs:
        if isinstance(entry, dict):
            unknown = set(entry) - MIXTURE_KEYS
            if unknown or "path" not in entry:
                raise DataError(f"dataset mixture entry {entry}: needs `path`; keys {sorted(MIXTURE_KEYS)}"
                                + (f", not {sorted(unknown)}" if unknown else ""))
            kw = {k: entry[k] for k in ("data_files", "data_dir") if entry.get(k) is not None}
            e_split, e_subset = entry.get("split", split), entry.get("name", subset)
            if kw:  # a builder (json, parquet, csv, ...) over files: errors name the files
                part = _load_hub(entry["path"], e_split, e_subset, None, streaming, num_proc, **kw)
                part.source = f"{entry['path']}:{kw.get('data_files', kw.get('data_dir'))}[{e_split}]"
            else:
                part = load_rows(entry["path"], e_split, e_subset, None, streaming, num_proc)
            if entry.get("columns"):
                cols = list(entry["columns"])
                part = Rows([{c: r.get(c) for c in cols} for r in part], part.source, part.lines, part.where)
        else:
            part = load_rows(entry, split, subset, None, streaming, num_proc)
        rows += part
        where += [row_where(part, i) for i in range(len(part))]
        if limit and len(rows) >= limit:
            break
    return Rows(rows, source=None, where=where).head(limit)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte {err.start}: {err.reason})") from None


def _read_jsonl_rows(path: Path) -> Rows:
    rows, lines = [], []
    for i, line in enumerate(_decode(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {i} is not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {i} is not a JSON object (one row per line), got {type(obj).__name__}")
        rows.append(obj)
        lines.append(i)
    return Rows(rows, str(path), lines)


def _read_json_rows(path: Path) -> Rows:
    try:
        obj = json.loads(_decode(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if isinstance(obj, dict):  # columnar {"prompt": [...], ...} or {"data": [...]}
        if "data" in obj:
            obj = obj["data"]
        else:
            lengths = {k: len(v) if isinstance(v, list) else None for k, v in obj.items()}
            if None in lengths.values() or len(set(lengths.values())) > 1:
                raise DataError(f"{path}: a JSON object must be {{'data': [rows]}} or columns of equal-length "
                                f"lists; got lengths {lengths}")
            obj = [dict(zip(obj, vals)) for vals in zip(*obj.values())]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a list of row objects, got {type(obj).__name__}")
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is not an object, got {type(row).__name__}")
    return Rows(obj, str(path))


def _read_parquet_rows(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return Rows(pq.read_table(path).to_pylist(), str(path))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
