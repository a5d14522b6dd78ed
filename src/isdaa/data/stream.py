"""`data.streaming` for preference training: the rows are read as training consumes them, never ahead.

`StreamSource` is the trainer's `batch_source` (isdaa.train): optimizer step s takes rows
[s * batch_size, (s + 1) * batch_size) of the stream (`isdaa.data.stream_rows`: an IterableDataset, file
order), each process its contiguous slice, tokenized on the fly. A run reads max_steps x batch_size rows
and no more (a later file of a glob is not opened); a resumed run skips the rows its steps consumed.

The rules are the dataset's (isdaa.data): each batch is parsed here first, so a bad row is an error that
names its file, line and field; identical pairs and pairs with an unfinished response are dropped
(counted in `stats`; a dropped pair leaves its batch one pair smaller). Rows without `ref_*` columns are
scored by the reference model in memory (a precomputed pass would read the whole dataset); stored
log-prob columns are not checked against the models (`check_logps` samples the dataset before training).
"""

from __future__ import annotations

import warnings

from isdaa.data.loading import stream_rows
from isdaa.data.rows import DataError, Rows, Source
from isdaa.data.tokenize import tokenize_pref


class StreamSource:
    """batch_source(step, model, tokenizer) -> this process's rows of optimizer step `step`."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.position = None  # rows of the stream consumed so far (None: not opened)
        self.items = None
        self.stats: dict = {}
        self.warned = False

    def _open(self, skip: int) -> None:
        d = self.cfg.data
        self.items = stream_rows(d.train, d.train_split, d.subset, d.num_proc, skip=skip)
        self.position = skip

    def __call__(self, step: int, model, tokenizer) -> Rows:
        size = self.cfg.batch_size
        if self.position != step * size:  # the first call, or a resume: skip what earlier steps consumed
            self._open(step * size)
        batch = [item for _, item in zip(range(size), self.items)]
        self.position += len(batch)
        if len(batch) < size:
            raise DataError(f"data.streaming: {self.cfg.data.train} ran out after {self.position} rows, "
                            f"at step {step + 1}; "
                            f"max_steps={self.cfg.max_steps} x batch_size={size} needs "
                            f"{(self.cfg.max_steps or 0) * size} rows")
        from accelerate import PartialState

        state = PartialState()  # the loop's: this process's slice of the global batch
        rows = _rows(batch)
        kept = self._check(rows, tokenizer)
        local = size // state.num_processes
        lo = state.process_index * local
        return Rows([rows[i] for i in kept if lo <= i < lo + local])

    def _check(self, rows: Rows, tokenizer) -> list[int]:
        """Indices of the rows that train: each row parsed by the dataset's rules (errors name file, line,
        field), identical and unfinished pairs dropped and counted."""
        d = self.cfg.data
        with warnings.catch_warnings():  # the drops are counted in the summary, not warned per batch
            warnings.simplefilter("ignore")
            examples = tokenize_pref(rows, tokenizer, d.max_length, d.max_prompt_length, self.stats,
                                     drop_identical=True, drop_unfinished=d.drop_unfinished)
        kept = {e["row"] for e in examples}
        if not self.warned and any("ref_chosen_logps" in e or "chosen_logps" in e for e in examples):
            self.warned = True
            if getattr(self.cfg, "check_logps", "off") != "off":
                warnings.warn("data.streaming: the rows' stored log-prob columns are not checked against the models "
                              "(check_logps samples the dataset before training; streamed rows arrive later)",
                              stacklevel=3)
        return [i for i in range(len(rows)) if rows.where[i] in kept]


def _rows(batch: list) -> Rows:
    """Rows with each row's location (file and line) from stream_rows' (row, source, index) items."""
    sources = []
    for k, (_, source, index) in enumerate(batch):
        last = sources[-1] if sources else None
        if last is None or last[1].name != source.name or last[1].offset + (k - last[0]) != index:
            sources.append((k, Source(source.name, source.lines, index)))
    return Rows([row for row, _, _ in batch], sources=sources)
