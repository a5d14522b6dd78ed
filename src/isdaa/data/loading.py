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

from collections.abc import Iterator
from pathlib import Path

from isdaa.data.files import file_part, file_stream, local_files, quiet, read_file, unnulled
from isdaa.data.rows import DataError, Rows, Source

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
    files = local_files(spec)
    if files is not None:
        return _from_parts([file_part(f, num_proc) for f in files], split, limit, spec)
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
    if (files := local_files(spec)) is not None:
        parts = (file_stream(f) for f in files)
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
                    chunk = read_file(Path(source.name), err)[a - start: b - start]
                chunk = [unnulled(source, a - start + k, r) for k, r in enumerate(chunk)]
            else:
                chunk = list(data[a - start: b - start])
            sources.append((len(rows), Source(source.name, source.lines, a - start)))
            rows += chunk
    if not rows:
        raise DataError(f"{spec}: no rows in split {split!r}" if total else f"{spec}: no rows")
    return Rows(rows, sources=sources)


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
        ds = quiet(lambda: datasets.load_dataset(spec, subset, split=split, num_proc=num_proc, **kwargs))
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
        it = quiet(lambda: datasets.load_dataset(spec, subset, split=split, streaming=True, **kwargs))
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
