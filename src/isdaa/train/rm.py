"""Reward model (Eq. 2, Bradley-Terry): loss = -log sigmoid(r(x, y_c) - r(x, y_r)) on a one-label
sequence classifier; chosen and rejected go through the model in one concatenated forward."""

from __future__ import annotations

import torch.nn.functional as F

from isdaa.data import collate_pref, tokenize_pref
from isdaa.train.base import Task
from isdaa.train.models import load_reward_model, load_tokenizer


class RMTask(Task):
    kind = "rm"

    def build(self, accelerator, online=False):
        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_reward_model(cfg.model, self.tokenizer)

        def tokenize(rows, stats=None):  # this task's tokenization of a split's rows
            return tokenize_pref(rows, self.tokenizer, cfg.data.max_length, cfg.data.max_prompt_length, stats,
                                 progress=cfg.progress and accelerator.is_main_process)

        self.train_examples = tokenize(self.load("train"), self.data_stats)
        self.truncated = sum(e["chosen_truncated"] + e["rejected_truncated"] for e in self.train_examples)
        self.eval_examples = tokenize(self.load("eval")) if cfg.data.eval else None

    def collate(self, examples):
        return collate_pref(examples, self.tokenizer.pad_token_id)

    def units(self, examples):
        return len(examples)

    def loss(self, model, batch):
        n = batch["n_pairs"]
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        use_cache=False).logits[:, 0].float()                # (2B,)
        chosen, rejected = rewards[:n], rewards[n:]
        losses = -F.logsigmoid(chosen - rejected)                            # (B,)
        d = (chosen - rejected).detach()
        metrics = {"accuracy": (d > 0).float().mean(), "rewards/chosen": chosen.detach().mean(),
                   "rewards/rejected": rejected.detach().mean(), "rewards/margins": d.mean()}
        return losses.sum(), metrics, None
