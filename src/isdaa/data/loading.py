"""Loading through `datasets`: `load_rows` (a local .jsonl / .json / .parquet / .csv file or a glob of them
through `datasets.load_dataset(builder, data_files=...)`, a `save_to_disk` folder through
`datasets.load_from_disk`, a hub name or a folder of data files through `datasets.load_dataset(name)`, or a
mixture of these) and `stream_rows` (the same sources read lazily, row by row).

Split slicing (`train[:10]`, `train[10:20]`, `train[:5%]`, `train[:10]+train[20:30]`) is honoured for every
source: datasets' own `ReadInstruction` for local files, folders and the hub, and, when streaming, skip /
take (absolute bounds only: a percentage or a negative index needs the length, which a stream does not
know). A local file (or glob) has one split, whatever it is called (`test[:50]` of an evaluation file is
its first 50 rows); the trainer refuses a training file named as the evaluation set unless asked
(`isdaa.train.base`).

Errors keep naming the file, the line (JSONL, 1-based) or row, and the field: each row remembers its
source (`Rows`); a file datasets cannot read as a table (invalid JSON or UTF-8, a line that is no object,
a column holding several types) is read again line by line by the readers below, which name the first bad
line -- or, when every line is valid JSON (several types in one column), give its rows as they are. A
JSON value datasets turned into a null (a key absent from some rows) is read back from the line itself,
so that "missing field" and "field is null" stay distinct.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from isdaa.data.rows import DataError, LineIndex, Rows, Source

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
MIXTURE_KEYS = {"path", "name", "split", "data_files", "data_dir", "columns"}
_FAR = 10 ** 15  # a length no dataset reaches: for split bounds that do not depend on the length


def load_rows(spec, split: str = "train", subset: str | None = None, limit: int | None = None,
              streaming: bool = False, num_proc: int | None = None) -> Rows:
    """Rows of `spec` (see the module docstring), split `split` (slices honoured), the first `limit` of
    them (streamed: only those are read). File-level problems (missing, not UTF-8, not JSON, empty, ...)
    raise DataError naming the file (and line)."""
    if streaming:
        return _collect(stream_rows(spec, split, subset, num_proc), limit)
    if isinstance(spec, (list, tuple, dict)):
        return _load_mixture([spec] if isinstance(spec, dict) else spec, split, subset, limit, num_proc)
    files = _local_files(spec)
    if files is not None:
        return _from_parts([_file_part(f, num_proc) for f in files], split, limit, spec)
    path = Path(spec)
    if _saved_to_disk(path):
        return _load_from_disk(path, split, limit)
    return _load_hub(spec, split, subset, limit, num_proc)


def stream_rows(spec, split: str = "train", subset: str | None = None, num_proc: int | None = None,
                skip: int = 0) -> Iterator[tuple[dict, Source, int]]:
    """(row, its source, its index there) for the rows of `spec`'s split, read lazily (IterableDataset):
    nothing past the rows taken is read (a later file of a glob is not even opened). `skip` rows are
    passed over first (resuming)."""
    if isinstance(spec, (list, tuple, dict)):  # each entry sliced by its own split, as load_rows does
        entries = [spec] if isinstance(spec, dict) else spec
        items = (item for e in entries for item in _entry_stream(e, split, subset, num_proc))
        for n, item in enumerate(items):
            if n >= skip:
                yield item
        return
    bounds = _stream_bounds(split)
    if (files := _local_files(spec)) is not None:
        parts = (_file_stream(f) for f in files)
    elif _saved_to_disk(Path(spec)):
        rows = _load_from_disk(Path(spec), bounds[0], None)
        parts = iter([((r, src, i) for r, (src, i) in zip(rows, _locations(rows)))])
    else:
        parts = iter([_hub_stream(spec, bounds[0], subset)])
    _, start, stop = bounds
    n = 0
    for part in parts:  # a generator of generators: a file is opened only when reached
        for item in part:
            if n >= start + skip:
                if stop is not None and n >= stop:
                    return
                yield item
            n += 1
            if stop is not None and n >= stop:
                return


# ---------------------------------------------------------------- local files


def one_split(spec) -> bool:
    """Whether `spec` names local files (a file, a glob, a path with a data suffix): one split, whatever
    it is called. Touches the filesystem only to see whether a path exists."""
    if not isinstance(spec, (str, Path)):
        return False
    path = Path(spec)
    return path.is_file() or path.suffix.lower() in BUILDERS or any(c in str(spec) for c in "*?[")


def _local_files(spec) -> list[Path] | None:
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


def _file_part(path: Path, num_proc) -> tuple:
    """(rows as a datasets.Dataset or a list, Source) of one local file."""
    import datasets

    builder = BUILDERS[path.suffix.lower()]
    source = Source(str(path), LineIndex(path) if path.suffix.lower() == ".jsonl" else None)
    if _blank(path):
        raise DataError(f"{path}: no rows (empty dataset file)")
    if not _json_opening_ok(path):  # not JSON rows at all: the line reader names the problem
        return _read_file(path), source
    try:
        ds = _quiet(lambda: datasets.load_dataset(builder, data_files=str(path), split="train", num_proc=num_proc))
        ds = _json_shape(ds, path) if path.suffix.lower() == ".json" else ds
        if len(ds) == 0:
            raise DataError(f"{path}: no rows (empty dataset file)")
        return ds, source
    except DataError:
        raise
    except Exception as err:  # not readable as one table: name the first bad line (or take the rows as they are)
        if "corresponds to no data" in str(err):  # e.g. a CSV header with no row
            raise DataError(f"{path}: no rows (empty dataset file)") from None
        return _read_file(path, err), source


def _file_stream(path: Path) -> Iterator[tuple[dict, Source, int]]:
    """One file's rows through datasets' streaming reader; a file it cannot read as a table (a column of
    several types, a bad line) is read by the line reader instead, which names the first bad line."""
    import datasets

    source = Source(str(path), LineIndex(path) if path.suffix.lower() == ".jsonl" else None)
    i = -1
    try:
        if not _json_opening_ok(path):
            raise DataError(f"{path}: not JSON rows")
        it = _quiet(lambda: datasets.load_dataset(BUILDERS[path.suffix.lower()], data_files=str(path),
                                                  split="train", streaming=True))
        for i, row in enumerate(it):
            yield _unnulled(source, i, row), source, i
    except Exception as err:
        if isinstance(err, DataError) and "not a JSON object" in str(err):
            raise
        rows = _read_file(path, err)  # names the bad line, or gives the rows datasets could not type
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
        return _quiet(lambda: datasets.load_dataset("json", data_files=str(path), field="data", split="train"))
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


def _read_file(path: Path, err: Exception | None = None) -> list[dict]:
    """isdaa's line readers: the rows of a file datasets could not read as a table, or the error that
    names its first bad line. `err`: datasets' error, reported when the readers find nothing wrong."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl_rows(path)
    if suffix == ".json":
        return _read_json_rows(path)
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


def _read_json_rows(path: Path) -> list[dict]:
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


# ---------------------------------------------------------------- parts -> Rows, split slices


def _from_parts(parts: list[tuple], split: str, limit, spec) -> Rows:
    """Rows of the concatenated parts [(Dataset or list, Source)], sliced by `split` (the parts' one split
    is `train`), the first `limit`. Only the selected rows become Python rows."""
    total = sum(len(data) for data, _ in parts)
    picked = _split_ranges(split, {name: total for name in _split_names(split)}, spec)  # one split, any name
    rows, sources, starts = [], [], []
    offset = 0
    for data, source in parts:
        starts.append(offset)
        offset += len(data)
    for lo, hi in picked:
        for (data, source), start in zip(parts, starts):
            a, b = max(lo, start), min(hi, start + len(data))
            if a >= b:
                continue
            if limit and len(rows) >= limit:
                break
            b = min(b, a + limit - len(rows)) if limit else b
            if hasattr(data, "select"):  # a Dataset: nulls datasets made of absent keys read back from the file
                try:
                    chunk = data.select(range(a - start, b - start)).to_list()
                except Exception as err:  # e.g. invalid UTF-8, found only when the strings are decoded
                    chunk = _read_file(Path(source.name), err)[a - start: b - start]
                chunk = [_unnulled(source, a - start + k, r) for k, r in enumerate(chunk)]
            else:
                chunk = list(data[a - start: b - start])
            sources.append((len(rows), Source(source.name, source.lines, a - start)))
            rows += chunk
    if not rows:
        raise DataError(f"{spec}: no rows in split {split!r}" if total else f"{spec}: no rows")
    return Rows(rows, sources=sources)


def _unnulled(source: Source, i: int, row: dict) -> dict:
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
        return _read_json_rows(Path(source.name))[i]
    return row


def _split_ranges(split: str, lengths: dict, spec) -> list[tuple[int, int]]:
    """[(from, to)] row ranges of `split` (`train[:10]`, `train[:5%]+train[-2:]`, ...) given each split's
    length (datasets' ReadInstruction)."""
    import datasets

    try:
        return [(x.from_, x.to) for x in datasets.ReadInstruction.from_spec(split).to_absolute(lengths)]
    except (ValueError, AssertionError) as err:
        raise DataError(f"{spec}: split {split!r} cannot be read ({err}; splits: {sorted(lengths)})") from None


def _stream_bounds(split: str) -> tuple[str, int, int | None]:
    """(split name, from, to or None) of a streamed split: absolute bounds only."""
    import datasets

    try:
        ri = datasets.ReadInstruction.from_spec(split)
        name = ri.to_absolute({n: _FAR for n in _split_names(split)})
    except (ValueError, AssertionError) as err:
        raise DataError(f"split {split!r}: {err}") from None
    other = ri.to_absolute({n: _FAR + 7 for n in _split_names(split)})
    if len(name) != 1 or name[0].from_ != other[0].from_ or (name[0].to != other[0].to and name[0].to != _FAR):
        raise DataError(f"split {split!r}: a streamed dataset takes one slice with absolute bounds (e.g. train[:1000], "
                        "train[100:200]); a percentage, a negative index or several slices need the length")
    return name[0].splitname, name[0].from_, None if name[0].to == _FAR else name[0].to


def _split_names(split: str) -> list[str]:
    import re

    return sorted({m.group(1) for m in re.finditer(r"([\w.-]+)(?:\[[^\]]*\])?", split)})


def _locations(rows: Rows) -> list[tuple[Source, int]]:
    out = []
    for k, (start, source) in enumerate(rows.sources):
        end = rows.sources[k + 1][0] if k + 1 < len(rows.sources) else len(rows)
        out += [(source, source.offset + i) for i in range(end - start)]
    return out or [(Source("rows"), i) for i in range(len(rows))]


def _collect(items, limit) -> Rows:
    rows, sources = [], []
    for row, source, index in items:
        if not sources or sources[-1][1].name != source.name or \
                sources[-1][1].offset + len(rows) - sources[-1][0] != index:
            sources.append((len(rows), Source(source.name, source.lines, index)))
        rows.append(row)
        if limit and len(rows) >= limit:
            break  # the next row is not even read
    if not rows:
        raise DataError("no rows")
    return Rows(rows, sources=sources)


# ---------------------------------------------------------------- folders, the hub, mixtures


def _saved_to_disk(path: Path) -> bool:
    """A `save_to_disk` folder (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _load_from_disk(path: Path, split: str, limit) -> Rows:
    """`datasets.load_from_disk`: a DatasetDict's split (sliced), or a Dataset as split `train`."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{path}: not a readable save_to_disk folder ({type(err).__name__}: {err})") from err
    splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    picked = _split_ranges(split, {k: len(v) for k, v in splits.items()}, path)
    names = [x.splitname for x in datasets.ReadInstruction.from_spec(split).to_absolute(
        {k: len(v) for k, v in splits.items()})]
    rows, sources = [], []
    for name, (lo, hi) in zip(names, picked):
        hi = min(hi, lo + limit - len(rows)) if limit else hi
        if hi <= lo:
            break
        sources.append((len(rows), Source(f"{path}[{name}]", None, lo)))
        rows += splits[name].select(range(lo, hi)).to_list()
    if not rows:
        raise DataError(f"{path}: no rows in split {split!r}")
    return Rows(rows, sources=sources)


def _load_hub(spec: str, split: str, subset, limit, num_proc, **kwargs) -> Rows:
    """`datasets.load_dataset` (a hub name, or a folder of data files): only the first `limit` rows
    become Python rows."""
    import datasets

    try:
        ds = _quiet(lambda: datasets.load_dataset(spec, subset, split=split, num_proc=num_proc, **kwargs))
        rows = (ds.select(range(min(limit, len(ds)))) if limit else ds).to_list()
    except Exception as err:
        raise DataError(f"dataset {spec!r} (split {split!r}) could not be loaded: "
                        f"{type(err).__name__}: {err}") from err
    if not rows:
        raise DataError(f"{spec}: no rows")
    return Rows(rows, source=f"{spec}[{split}]")


def _hub_stream(spec: str, split: str, subset, **kwargs) -> Iterator[tuple[dict, Source, int]]:
    import datasets

    source = Source(f"{spec}[{split}]")
    try:
        it = _quiet(lambda: datasets.load_dataset(spec, subset, split=split, streaming=True, **kwargs))
        for i, row in enumerate(it):
            yield row, source, i
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"dataset {spec!r} (split {split!r}) could not be streamed: "
                        f"{type(err).__name__}: {err}") from err


def _check_entry(entry: dict) -> None:
    unknown = set(entry) - MIXTURE_KEYS
    if unknown or "path" not in entry:
        raise DataError(f"dataset mixture entry {entry}: needs `path`; keys {sorted(MIXTURE_KEYS)}"
                        + (f", not {sorted(unknown)}" if unknown else ""))


def _entry_stream(entry, split, subset, num_proc) -> Iterator[tuple[dict, Source, int]]:
    if not isinstance(entry, dict):
        yield from stream_rows(entry, split, subset, num_proc)
        return
    _check_entry(entry)
    e_split, e_subset = entry.get("split", split), entry.get("name", subset)
    kw = {k: entry[k] for k in ("data_files", "data_dir") if entry.get(k) is not None}
    items = _hub_stream(entry["path"], e_split, e_subset, **kw) if kw else stream_rows(entry["path"], e_split,
                                                                                      e_subset, num_proc)
    cols = list(entry.get("columns") or [])
    for row, source, i in items:
        yield ({c: row.get(c) for c in cols} if cols else row), source, i


def _load_mixture(specs, split, subset, limit, num_proc) -> Rows:
    """A list of specs, concatenated in order; each row keeps its own location. An entry may be a mapping
    as in TRL's `datasets:` list (path, name, split, data_files, data_dir, columns)."""
    rows, sources = [], []
    for entry in specs:
        if limit and len(rows) >= limit:
            break
        if isinstance(entry, dict):
            _check_entry(entry)
            e_split, e_subset = entry.get("split", split), entry.get("name", subset)
            kw = {k: entry[k] for k in ("data_files", "data_dir") if entry.get(k) is not None}
            if kw:  # a builder (json, parquet, csv, ...) over files
                part = _load_hub(entry["path"], e_split, e_subset, None, num_proc, **kw)
                part.sources[0][1].name = f"{entry['path']}:{kw.get('data_files', kw.get('data_dir'))}[{e_split}]"
            else:
                part = load_rows(entry["path"], e_split, e_subset, None, False, num_proc)
            if entry.get("columns"):
                cols = list(entry["columns"])
                part = Rows([{c: r.get(c) for c in cols} for r in part], sources=part.sources)
        else:
            part = load_rows(entry, split, subset, None, False, num_proc)
        sources += [(len(rows) + start, source) for start, source in part.sources]
        rows += part
    return Rows(rows, sources=sources).head(limit)


def _quiet(fn):
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
