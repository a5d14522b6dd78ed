"""Supervised fine-tuning: NLL of the completion tokens only (prompt tokens masked), summed over
tokens and divided by the number of response tokens of the global batch (on each process)."""

from __future__ import annotations

from isdaa.data import collate_sft, tokenize_sft
from isdaa.logprobs import response_head_supported, response_logps
from isdaa.train.base import Task
from isdaa.train.models import load_causal_lm, load_tokenizer


class SFTTask(Task):
    kind = "sft"

    def build(self, accelerator, online=False):
        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_causal_lm(cfg.model, self.tokenizer)

        def tokenize(rows, stats=None):  # this task's tokenization of a split's rows
            return tokenize_sft(rows, self.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length,
                                cfg.data.sft_source, stats, progress=cfg.progress and accelerator.is_main_process)

        self.train_examples = tokenize(self.load("train"), self.data_stats)
        self.truncated = sum(e["truncated"] for e in self.train_examples)
        self.eval_examples = tokenize(self.load("eval")) if cfg.data.eval else None

    def collate(self, examples):
        return collate_sft(examples, self.tokenizer.pad_token_id)

    def units(self, examples):
        return sum(len(e["response_ids"]) for e in examples)

    def loss(self, model, batch):
        head_only = self.cfg.response_only_head and response_head_supported(model)
        logps, counts = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                       response_only_head=head_only, return_counts=True)   # (B,), (B,)
        nll = -logps.sum()
        return nll, {"nll_per_token": nll.detach() / counts.sum().clamp(min=1)}, None
