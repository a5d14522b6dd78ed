"""Progress bars for tokenization and the reference precompute, one at a time (the live eval's sampling,
inside training, shows none: its numbers are in the step's log line); none with `progress: false`."""

from __future__ import annotations

from test_train import make_cfg, pref_rows, write_jsonl

from isdaa.api import train


def test_reference_and_sampling_bars_follow_progress(tiny_dir, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # an earlier `progress: false` run in this process turned them off
    live = {"every": 1, "n_prompts": 2, "max_new_tokens": 3, "prompts": str(tmp_path / "prompts.jsonl")}
    write_jsonl(tmp_path / "prompts.jsonl", pref_rows(4, seed=9))
    train(make_cfg(tiny_dir, tmp_path, "bars", max_steps=1, progress=True, eval=live))
    captured = capfd.readouterr()
    err = captured.err
    assert "tokenizing:" in err and "0/64 [" in err               # a bar over the 64 training rows
    assert "reference log-probs:" in err and "/64 [" in err      # 64 pairs precomputed
    assert "sampling" not in err and "\x1b[A" not in err         # no second bar under the training bar
    assert "'eval/kl_k1'" not in captured.out and "'eval_kl_k1':" in captured.out  # the live eval, in the log line
    train(make_cfg(tiny_dir, tmp_path, "quiet", max_steps=1, progress=False, eval=live,
                   ref_cache_dir=str(tmp_path / "other-cache")))
    err = capfd.readouterr().err
    assert "reference log-probs" not in err and "sampling" not in err and "tokenizing" not in err
