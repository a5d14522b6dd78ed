"""The reference pass (`isdaa.train.reference.compute`): batches by length under a token budget, the same
values as each pair scored alone whatever the batching, the same number of forwards on every process with
each pair written by exactly one, no autograd state, and its throughput printed."""

from __future__ import annotations

import contextlib
import random

import torch

from isdaa.logprobs import response_logps
from isdaa.train.reference import compute, length_batches


def _examples(n=13, seed=0):
    rng = random.Random(seed)

    def ids(k):
        return [rng.randrange(3, 60) for _ in range(k)]  # within the tiny vocabulary

    return [{"prompt_ids": ids(rng.randint(1, 9)), "chosen_ids": ids(rng.randint(1, 12)),
             "rejected_ids": ids(rng.randint(1, 12))} for _ in range(n)]


def _width(e):
    return len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"]))


def test_length_batches_sort_and_respect_the_budget():
    ex = _examples(40, seed=1)
    for budget in (1, 30, 100, 10_000):
        batches = length_batches(ex, budget)
        assert sorted(i for b in batches for i in b) == list(range(40))   # every pair once
        widths = [_width(ex[i]) for b in batches for i in b]
        assert widths == sorted(widths)                                    # by length
        for b in batches:
            assert len(b) == 1 or 2 * len(b) * max(_width(ex[i]) for i in b) <= budget
    assert len(length_batches(ex, 1)) == 40                                # each pair alone when none fits
    assert len(length_batches(ex, 10_000)) == 1


class FakeAccelerator:
    """One process of `world` on the CPU; `reduce` keeps the local tensor (the test sums the processes)."""

    def __init__(self, world=1, rank=0):
        self.num_processes, self.process_index, self.device = world, rank, torch.device("cpu")
        self.is_main_process = rank == 0

    def autocast(self):
        return contextlib.nullcontext()

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        return tensor


def _model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).double().train()


def _alone(model, examples):
    """Each pair's two sequences alone, unpadded, through the model: (N,) chosen and rejected."""
    out = []
    with torch.no_grad():
        for e in examples:
            for side in ("chosen_ids", "rejected_ids"):
                ids = torch.tensor([e["prompt_ids"] + e[side]])
                resp = torch.zeros_like(ids, dtype=torch.bool)
                resp[0, len(e["prompt_ids"]):] = True
                out.append(float(response_logps(model, ids, torch.ones_like(ids), resp, head_chunk_mb=0)))
    return torch.tensor(out, dtype=torch.float64).view(-1, 2).T


def test_values_equal_each_pair_alone_for_any_budget(tiny_dir):
    model = _model(tiny_dir)
    ex = _examples()
    expected = _alone(model, ex)
    assert model.training
    for budget, head_mb in ((None, 256.0), (40, 1e-6), (10_000, 256.0)):
        chosen, rejected = compute(model, ex, FakeAccelerator(), 2, 0, max_tokens=budget, head_chunk_mb=head_mb)
        assert chosen.dtype == torch.float32 and not chosen.requires_grad and chosen.shape == (13,)
        torch.testing.assert_close(chosen.double(), expected[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rejected.double(), expected[1], rtol=1e-6, atol=1e-6)
    assert model.training                                                  # mode restored
    assert all(p.grad is None for p in model.parameters())


def test_processes_run_equal_forwards_and_sum_to_one_process(tiny_dir):
    """3 processes: the same number of forwards each (collective FSDP forwards), every pair written by exactly
    one of them (so summing the processes' tensors gathers the values of the one-process pass)."""
    model = _model(tiny_dir)
    ex = _examples(11, seed=2)
    grad_on = []
    model.register_forward_pre_hook(lambda m, a: grad_on.append(torch.is_grad_enabled()))
    single = compute(model, ex, FakeAccelerator(), 1, 0, max_tokens=60)
    n_batches = len(length_batches(ex, 60))
    assert len(grad_on) == n_batches and not any(grad_on)                 # no autograd state
    parts, forwards = [], []
    for rank in range(3):
        grad_on.clear()
        parts.append(torch.stack(compute(model, ex, FakeAccelerator(3, rank), 1, 0, max_tokens=60)))
        forwards.append(len(grad_on))
    assert forwards == [-(-n_batches // 3)] * 3
    written = torch.stack([(p != 0).all(0) for p in parts])               # (3, N): who wrote each pair
    assert written.sum(0).tolist() == [1] * 11
    torch.testing.assert_close(sum(parts), torch.stack(single), rtol=0, atol=0)


def test_throughput_is_printed(tiny_dir, capsys):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # where the pass's bar shows (a `progress: false` run turns both off)
    model = _model(tiny_dir).float()
    ex = _examples(6, seed=3)
    compute(model, ex, FakeAccelerator(), 2, 0, report=True)
    line = capsys.readouterr().out
    tokens = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in ex)
    assert f"reference log-probs: 6 pairs ({tokens:,} tokens)" in line
    assert "pairs/s" in line and "tokens/s" in line and "padding" in line
    compute(model, ex, FakeAccelerator(), 2, 0)
    assert capsys.readouterr().out == ""                                   # report=False: silent
    hf_logging.disable_progress_bar()
    compute(model, ex, FakeAccelerator(), 2, 0, report=True)
    assert capsys.readouterr().out == ""                                   # progress off: silent
    hf_logging.enable_progress_bar()
