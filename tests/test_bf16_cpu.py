"""bf16 autocast on CPU (`mixed_precision: bf16`): matmuls run in bf16, the master weights, the
log-probs and the loss stay float32, and the first step (policy = reference) matches the float32 run
to bf16 precision."""

import json

import pytest
import torch

from isdaa.api import train
from isdaa.config import load_config
from isdaa.io import read_jsonl
from isdaa.train.callbacks import TrainerCallback

ROWS = [{"prompt": f"w{i} w{i + 1} w{i + 2}", "chosen": f"good yes w{i}", "rejected": f"bad no w{i + 3}"}
        for i in range(16)]


class Probe(TrainerCallback):
    """The weights' dtypes after a step (and, filled by a hook, the Linear outputs' dtypes)."""

    def __init__(self):
        self.out_dtypes, self.param_dtypes = set(), set()

    def on_step_end(self, ctx):
        self.param_dtypes = {p.dtype for p in ctx.model.parameters()}


def _run(tiny_dir, tmp_path, precision):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config({"model": {"name_or_path": str(tiny_dir)}, "method": "dpo", "beta": 0.5,
                       "data": {"train": str(data), "max_length": 16, "max_prompt_length": 8},
                       "optim": {"optimizer": "sgd", "lr": 0.1, "warmup_steps": 0},
                       "output_dir": str(tmp_path / precision), "batch_size": 8, "micro_batch_size": 8,
                       "max_steps": 2, "logging_steps": 1, "progress": False, "num_threads": 1,
                       "mixed_precision": precision, "ref_cache_dir": str(tmp_path / f"cache-{precision}")},
                      kind="pref")
    probe = Probe()
    seen = probe.out_dtypes  # every Linear's output dtype in the training (grad-enabled) forwards
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.add(o.dtype) if isinstance(m, torch.nn.Linear) and torch.is_grad_enabled() else None)
    try:
        train(cfg, callbacks=[probe])
    finally:
        handle.remove()
    return read_jsonl(tmp_path / precision / "metrics.jsonl"), probe


def test_bf16_autocast_on_cpu(tiny_dir, tmp_path):
    fp32, probe32 = _run(tiny_dir, tmp_path, "no")
    bf16, probe16 = _run(tiny_dir, tmp_path, "bf16")
    assert probe32.out_dtypes == {torch.float32}
    assert torch.bfloat16 in probe16.out_dtypes          # the matmuls ran in bf16
    assert probe16.param_dtypes == {torch.float32}        # master weights (and AdamW/SGD state) stay float32
    a, b = fp32[0], bf16[0]                               # step 1: identical weights in both runs
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)  # both ~log 2: policy = reference
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=5e-2)  # bf16 activations: ~3 significant digits
    assert b["logps/chosen"] == pytest.approx(a["logps/chosen"], rel=2e-2)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in bf16)
