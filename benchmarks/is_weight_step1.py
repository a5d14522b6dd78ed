"""Step-1 `is/weight_mean` and loss of IS-DPO (before any update: pi_theta = pi_b, so the weight must be
exactly 1 and the loss log 2 = 0.6931) for the cases of issue 11, each run through the public paths a
user takes: `isdaa label` (CLI) then `isdaa.api.train`.

    PYTHONPATH=src python benchmarks/is_weight_step1.py            # this tree
    PYTHONPATH=/other/src python benchmarks/is_weight_step1.py     # another version, same script

Cases: a model with attention dropout 0.2 (data without behavior columns: pi_b = pi_ref); long rows
(prompts longer than max_prompt_length, responses cut at max_length) labelled by `isdaa label`;
conversational prompts labelled by `isdaa label` under four chat-template families (tests/conftest.py);
TRL-format conversational rows whose pi_b / pi_ref columns were computed on TRL's own token ids
(`DPOTrainer._prepare_dataset`; needs trl, the `[bench]` extra), per family.
Options a version lacks (e.g. `--max-length` of `isdaa label`) are left out, so the same script runs on
older code. Tiny random models (CPU, a few seconds per case).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

MAX_LENGTH, MAX_PROMPT_LENGTH = 32, 16


def save_model(tok, out: Path, attention_dropout: float = 0.0) -> Path:
    from isdaa.tiny import build_tiny_llama, save_tiny

    model = build_tiny_llama(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, seed=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.bos_token_id)
    model.config.attention_dropout = attention_dropout
    return save_tiny(model, tok, out)


def label(model_dir: Path, prompts: list, out: Path, max_new_tokens: int) -> Path:
    from click.testing import CliRunner

    from isdaa.cli import main
    from isdaa.cli.eval import label as label_cmd

    data = out.with_suffix(".prompts.jsonl")
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    args = ["label", "--policy", str(model_dir), "--reward", "isdaa.lab.keytoken:golden_reward", "--data", str(data),
            "--out", str(out), "--n", "2", "--max-new-tokens", str(max_new_tokens), "--batch-size", "16"]
    opts = {p.name for p in label_cmd.params}
    if "max_length" in opts:
        args += ["--max-length", str(MAX_LENGTH), "--max-prompt-length", str(MAX_PROMPT_LENGTH)]
    r = CliRunner().invoke(main, args)
    if r.exit_code:
        raise RuntimeError(r.output) from r.exception
    # a blank sample (EOS or special tokens only) is a row the trainer refuses: left out, as the lab does
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    text = [(x, y) for x, y in ((r["chosen"], r["rejected"]) for r in rows)]
    keep = [r for r, pair in zip(rows, text) if all((v if isinstance(v, str) else v[-1]["content"]).strip()
                                                       for v in pair)]
    (out / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out / "kept.jsonl"


def trl_scored(model_dir: Path, tok, out: Path) -> Path:
    """Conversational rows + behavior and reference log-probs of the model on TRL's ids for them."""
    from types import SimpleNamespace

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    try:  # the name moved (isdaa.logprobs.score_responses); the script also runs on older code
        from isdaa.logprobs import score_responses
    except ImportError:
        from isdaa.evaluate.metrics import response_logps as score_responses

    rows = [{"prompt": [{"role": "user", "content": f"hello w{i} w{i + 1}"}],
             "chosen": [{"role": "assistant", "content": f"good w{i + 2} yes"}],
             "rejected": [{"role": "assistant", "content": f"bad w{i + 3}"}]} for i in range(8)]
    args = DPOConfig(output_dir=str(out), max_length=None, report_to=[], use_cpu=True, bf16=False)
    ds = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), Dataset.from_list(rows), tok, args, "x")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for side in ("chosen", "rejected"):
        lp = score_responses(model, ds["prompt_ids"], ds[f"{side}_ids"])
        for r, v in zip(rows, lp):
            r[f"{side}_logps"] = r[f"ref_{side}_logps"] = float(v)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def step1(model_dir: Path, data: Path, out: Path, **extra) -> dict:
    """Train one step of is-dpo; the step's logged metrics."""
    from isdaa.api import train
    from isdaa.config import PrefConfig, load_config

    fields = {f.name for f in dataclasses.fields(PrefConfig)}
    cfg = {"model": {"name_or_path": str(model_dir)}, "output_dir": str(out), "method": "is-dpo", "beta": 0.1,
           "data": {"train": str(data), "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH},
           "batch_size": 4, "micro_batch_size": 4, "max_steps": 1, "logging_steps": 1, "progress": False,
           "optim": {"lr": 1e-3, "warmup_steps": 0}, "mixed_precision": "no",
           "ref_cache_dir": str(out.parent / "cache")}
    for key, value in extra.items():
        if key.split(".")[0] in fields or key.startswith("data."):
            node, *path = key.split(".")
            (cfg.setdefault(node, {}) if path else cfg)[path[0] if path else node] = value
    from isdaa.config import DataConfig

    if "drop_unfinished" not in {f.name for f in dataclasses.fields(DataConfig)}:
        cfg["data"].pop("drop_unfinished", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(load_config(cfg))
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    summary = json.loads((out / "summary.json").read_text())
    return {"is/weight_mean": rec["is/weight_mean"], "loss": rec["loss"], "pairs": summary.get("train_examples")}


def main() -> None:
    from conftest import CHAT_FAMILIES, chat_family_tokenizer, generated_corpus

    from isdaa.tiny import build_word_tokenizer

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = build_word_tokenizer(corpus=generated_corpus(), vocab_size=128)

        # 1. attention dropout 0.2, data without behavior columns (pi_b = pi_ref)
        model = save_model(tok, tmp / "drop", attention_dropout=0.2)
        rows = [{"prompt": f"w{i} w{i + 1}", "chosen": f"good w{i}", "rejected": f"bad w{i + 2}"} for i in range(16)]
        (tmp / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        results["dropout 0.2"] = step1(model, tmp / "plain.jsonl", tmp / "run-drop")

        # 2. long rows labelled by `isdaa label`: 24-word prompts (> max_prompt_length 16), responses up to
        #    24 tokens (prompt 16 + 24 > max_length 32); unfinished samples kept (without EOS) to train on all
        model = save_model(tok, tmp / "plain")
        prompts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(24)) for i in range(8)]
        pairs = label(model, prompts, tmp / "label-long", max_new_tokens=24)
        results["long rows (isdaa label)"] = step1(model, pairs, tmp / "run-long", **{"data.drop_unfinished": False})

        # 3. conversational prompts labelled by `isdaa label`, per template family
        for family in CHAT_FAMILIES:
            ftok = chat_family_tokenizer(family)
            model = save_model(ftok, tmp / f"m-{family}")
            prompts = [[{"role": "user", "content": f"hello w{i} w{i + 3}"}] for i in range(8)]
            pairs = label(model, prompts, tmp / f"label-{family}", max_new_tokens=8)
            results[f"chat {family} (isdaa label)"] = step1(model, pairs, tmp / f"run-{family}",
                                                            **{"data.drop_unfinished": False})
            try:
                rows = trl_scored(model, ftok, tmp / f"trl-{family}.jsonl")
            except ImportError:
                continue
            results[f"chat {family} (TRL-format, log-probs on TRL's ids)"] = step1(model, rows, tmp / f"trl-{family}")
    print(f"| case | step-1 is/weight_mean | step-1 loss (log 2 = {math.log(2):.4f}) | pairs |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['is/weight_mean']:.6f} | {r['loss']:.6f} | {r['pairs']} |")


if __name__ == "__main__":
    main()
