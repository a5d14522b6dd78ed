"""Local data files through `datasets` (json / parquet / csv builders over `data_files`), and the line readers
that name the first bad line of a file datasets cannot read as a table (invalid JSON or UTF-8, a line that is
no object, a column holding several types). `isdaa.data.loading` puts these parts together into `Rows`.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from isdaa.data.rows import DataError, LineIndex, Source

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def one_split(spec) -> bool:
    """Whether `spec` names local files (a file, a glob, a path with a data suffix): one split, whatever
    it is called. Touches the filesystem only to see whether a path exists."""
    if not isinstance(spec, (str, Path)):
        return False
    path = Path(spec)
    return path.is_file() or path.suffix.lower() in BUILDERS or any(c in str(spec) for c in "*?[")


def local_files(spec) -> list[Path] | None:
    """The files a local spec names (one file, or a glob's matches, sorted), or None for a non-file spec."""
    if not isinstance(spec, (str, Path)):
        return None
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif any(c in str(spec) for c in "*?[") and not path.exists():
        files = [Path(p) for p in sorted(glob.glob(str(spec), recursive=True)) if Path(p).is_file()]
        if not files:
            raise FileNotFoundError(f"no dataset file matches {spec!r}")
    elif path.suffix.lower() in BUILDERS:
        raise FileNotFoundError(f"dataset file not found: {spec}")
    else:
        return None
    for f in files:
        if f.suffix.lower() not in BUILDERS:
            raise DataError(f"{f}: unsupported dataset file type {f.suffix or '(none)'!r}; use "
                            f"{', '.join(BUILDERS)}")
    if len({BUILDERS[f.suffix.lower()] for f in files}) > 1:
        raise DataError(f"{spec}: the files are of several types ({sorted({f.suffix for f in files})}); give one "
                        "type per glob, or a mixture (a list)")
    return files


def file_part(path: Path, num_proc) -> tuple:
    """(rows as a datasets.Dataset or a list, Source) of one local file."""
    import datasets

    builder = BUILDERS[path.suffix.lower()]
    source = Source(str(path), LineIndex(path) if path.suffix.lower() == ".jsonl" else None)
    if _blank(path):
        raise DataError(f"{path}: no rows (empty dataset file)")
    if not _json_opening_ok(path):  # not JSON rows at all: the line reader names the problem
        return read_file(path), source
    try:
        ds = quiet(lambda: datasets.load_dataset(builder, data_files=str(path), split="train", num_proc=num_proc))
        ds = _json_shape(ds, path) if path.suffix.lower() == ".json" else ds
        if len(ds) == 0:
            raise DataError(f"{path}: no rows (empty dataset file)")
        return ds, source
    except DataError:
        raise
    except Exception as err:  # not readable as one table: name the first bad line (or take the rows as they are)
        if "corresponds to no data" in str(err):  # e.g. a CSV header with no row
            raise DataError(f"{path}: no rows (empty dataset file)") from None
        return read_file(path, err), source


def file_stream(path: Path) -> Iterator[tuple[dict, Source, int]]:
    """One file's rows through datasets' streaming reader; a file it cannot read as a table (a column of
    several types, a bad line) is read by the line reader instead, which names the first bad line."""
    import datasets

    source = Source(str(path), LineIndex(path) if path.suffix.lower() == ".jsonl" else None)
    i = -1
    try:
        if not _json_opening_ok(path):
            raise DataError(f"{path}: not JSON rows")
        it = quiet(lambda: datasets.load_dataset(BUILDERS[path.suffix.lower()], data_files=str(path),
                                                  split="train", streaming=True))
        for i, row in enumerate(it):
            yield unnulled(source, i, row), source, i
    except Exception as err:
        if isinstance(err, DataError) and "not a JSON object" in str(err):
            raise
        rows = read_file(path, err)  # names the bad line, or gives the rows datasets could not type
        for k in range(i + 1, len(rows)):
            yield rows[k], source, k
        return
    if i < 0:
        raise DataError(f"{path}: no rows (empty dataset file)")


def _json_opening_ok(path: Path) -> bool:
    """Whether a JSON(L) file opens as rows do: `{` (JSONL; a .json also `[`). datasets reads a .jsonl that
    opens with `[` as one JSON array, and pyarrow 26's JSON reader crashes the process on a leading `null`
    line: such files go to the line reader, which names the line."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return True
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return line.lstrip()[:1] in ((b"{", b"[") if path.suffix.lower() == ".json" else (b"{",))
    return True


def _blank(path: Path) -> bool:
    with open(path, "rb") as f:
        return all(not chunk.strip() for chunk in iter(lambda: f.read(1 << 20), b""))


def _json_shape(ds, path: Path):
    """A .json file holding {"data": [rows]} or columns ({"prompt": [...], ...}) as rows."""
    import datasets

    if len(ds) == 1 and ds.column_names == ["data"] and isinstance(ds[0]["data"], list):
        return quiet(lambda: datasets.load_dataset("json", data_files=str(path), field="data", split="train"))
    if len(ds) == 1 and _top_level_object(path):
        row = ds[0]
        lengths = {k: len(v) if isinstance(v, list) else None for k, v in row.items()}
        if None in lengths.values() or len(set(lengths.values())) > 1:
            raise DataError(f"{path}: a JSON object must be {{'data': [rows]}} or columns of equal-length "
                            f"lists; got lengths {lengths}")
        return datasets.Dataset.from_dict(row)
    return ds


def _top_level_object(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4096).lstrip().startswith(b"{")


def read_file(path: Path, err: Exception | None = None) -> list[dict]:
    """isdaa's line readers: the rows of a file datasets could not read as a table, or the error that
    names its first bad line. `err`: datasets' error, reported when the readers find nothing wrong."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl_rows(path)
    if suffix == ".json":
        return read_json_rows(path)
    detail = f" ({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})" if err else ""
    if suffix == ".parquet":
        raise DataError(f"{path}: not a readable parquet file{detail}")
    _decode(path)
    raise DataError(f"{path}: not a readable {suffix[1:]} file{detail}")


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte {err.start}: {err.reason})") from None


def _read_jsonl_rows(path: Path) -> list[dict]:
    rows = []
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
    if not rows:
        raise DataError(f"{path}: no rows (empty dataset file)")
    return rows


def read_json_rows(path: Path) -> list[dict]:
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
    if not obj:
        raise DataError(f"{path}: no rows (empty dataset file)")
    return obj


def quiet(fn):
    """Run a datasets call without its progress bars and info logging (the trainer has its own bar)."""
    import datasets

    bars = datasets.utils.logging.is_progress_bar_enabled() if hasattr(datasets.utils.logging,
                                                                         "is_progress_bar_enabled") else None
    datasets.disable_progress_bars()
    try:
        return fn()
    finally:
        if bars:
            datasets.enable_progress_bars()


def unnulled(source: Source, i: int, row: dict) -> dict:
    """Row i of a JSON source as written, when datasets holds a null in it: a key absent from the row
    and a key set to null are not the same row (one is an implicit prompt, the other an error)."""
    if not any(v is None for v in row.values()):
        return row
    if source.lines is not None:  # JSONL: that line alone
        raw = source.lines.raw(i)
        if not isinstance(raw, dict):  # e.g. a `null` line, which datasets takes as a row of nulls
            raise DataError(f"{source.where(i)} is not a JSON object (one row per line), got {type(raw).__name__}")
        return raw
    if Path(source.name).suffix.lower() == ".json":
        return read_json_rows(Path(source.name))[i]
    return row
