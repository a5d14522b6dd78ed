"""dpo-sft (DPO + TRL 1.x's SFT term, a token mean over the whole batch) in the trainer: the batch may not be
split (config and launch refuse it), and step 1's logged loss is the hand formula on the initial model."""

from __future__ import annotations

import math

import pytest
from test_train import make_cfg, metrics, pref_rows
from test_wpo import naive_sums

from isdaa.api import train
from isdaa.train.pref import _check_whole_batch


def test_dpo_sft_refuses_a_split_batch(tiny_dir, tmp_path):
    """Micro-batches would change the token mean's denominator: a config error naming the way out (and rpo with
    rpo_nll_mean, which splits freely); several processes are refused at launch."""
    with pytest.raises(ValueError, match=r"micro_batch_size = batch_size \(now 4 < 8\).*rpo_nll_mean"):
        make_cfg(tiny_dir, tmp_path, method="dpo-sft")
    cfg = make_cfg(tiny_dir, tmp_path, method="is-dpo-sft", micro_batch_size=8)
    with pytest.raises(ValueError, match="2 processes would split"):
        _check_whole_batch(cfg, 2)
    _check_whole_batch(cfg, 1)
    _check_whole_batch(make_cfg(tiny_dir, tmp_path, method="rpo", micro_batch_size=4), 2)  # splits freely


def test_dpo_sft_step_one_loss_is_the_formula_on_the_initial_model(tiny_dir, tmp_path):
    """Step 1: pi_theta = pi_ref, so every DPO part is log 2 and the logged loss is
    log 2 + weight * (sum of the chosen NLLs) / (chosen tokens of the batch), the batch being all 8 rows; the
    NLLs come from a naive float64 per-sequence loop on the initial model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.data import collate_pref, tokenize_pref

    rows = pref_rows(8)
    cfg = make_cfg(tiny_dir, tmp_path, "sft", rows=rows, method="dpo-sft", micro_batch_size=8, max_steps=2,
                   loss={"dpo_sft_weight": 0.3})
    train(cfg)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).double()
    batch = collate_pref(tokenize_pref(rows, tok, max_length=32, max_prompt_length=16), tok.pad_token_id)
    logps, _ = naive_sums(model, batch)
    tokens = int(batch["response_mask"][:8].sum())
    want = math.log(2) + 0.3 * float(-logps[:8].sum()) / tokens
    first = metrics(cfg)[0]
    assert first["loss"] == pytest.approx(want, rel=1e-5)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
