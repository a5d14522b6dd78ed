"""A TRL user's config works unchanged: TRL's key names resolve to isdaa's (checked against the values
written by hand below and against TRL's own dataclasses), every problem is reported at once, `--help`
lists every key, `--key value` works, and a TRL-style YAML trains through the CLI."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from isdaa.cli import main
from isdaa.cli.train import overrides_from_args
from isdaa.config import PrefConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
TRL_DPO = ROOT / "configs" / "trl" / "dpo.yaml"
TRL_LORA = ROOT / "configs" / "trl" / "dpo-lora.yaml"


@pytest.fixture(autouse=True)
def one_process(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ISDAA_CACHE", str(tmp_path / "cache"))


def test_shipped_trl_dpo_config_resolves():
    """configs/trl/dpo.yaml, value by value (batch = 2 per device x 8 accumulation x 1 process)."""
    cfg = load_config(TRL_DPO)
    assert (cfg.model.name_or_path, cfg.model.gradient_checkpointing) == ("Qwen/Qwen2-0.5B-Instruct", True)
    assert (cfg.data.train, cfg.data.eval, cfg.data.eval_split) == ("trl-lib/ultrafeedback_binarized",) * 2 + ("test",)
    assert (cfg.data.max_length, cfg.data.max_prompt_length) == (1024, 512)
    assert (cfg.optim.lr, cfg.optim.scheduler, cfg.optim.warmup_ratio) == (5e-7, "cosine", 0.1)
    assert (cfg.epochs, cfg.micro_batch_size, cfg.batch_size) == (1.0, 2, 16)
    assert (cfg.method, cfg.beta, cfg.ref_logps, cfg.mixed_precision) == ("dpo", 0.1, "precompute", "bf16")
    assert (cfg.logging_steps, cfg.eval_steps, cfg.save_steps, cfg.seed) == (25, 50, 500, 42)
    assert (cfg.output_dir, cfg.report_to, cfg.push_to_hub) == ("Qwen2-0.5B-DPO", [], False)
    lora = load_config(TRL_LORA)
    assert (lora.model.lora.r, lora.model.lora.alpha, lora.model.lora.target_modules) == (32, 16, None)
    assert (lora.max_steps, lora.batch_size, lora.report_to) == (1000, 16, ["all"])


def test_shipped_trl_configs_use_only_trl_names():
    """Every key of the shipped TRL-style configs is a field of TRL's own config classes (the peer
    library), except max_prompt_length / warmup_ratio, which TRL < 1 (transformers < 5) declared."""
    trl = pytest.importorskip("trl")
    names = {f.name for c in (trl.DPOConfig, trl.ModelConfig, trl.ScriptArguments) for f in dataclasses.fields(c)}
    for path in (TRL_DPO, TRL_LORA):
        assert set(yaml.safe_load(path.read_text())) - names <= {"max_prompt_length", "warmup_ratio"}


def test_batch_counts_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = load_config({"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o",
                       "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2})
    assert (cfg.micro_batch_size, cfg.batch_size) == (3, 24)
    # TRL's default per-device batch is 8
    assert load_config({"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o",
                        "gradient_accumulation_steps": 2}).batch_size == 64


@pytest.mark.parametrize("given, key, expected", [
    ({"loss_type": "ipo"}, "method", "ipo"),
    ({"loss_type": ["sigmoid"]}, "method", "dpo"),
    ({"max_steps": -1}, "max_steps", None),
    ({"bf16": False}, "mixed_precision", "no"),
    ({"fp16": True}, "mixed_precision", "fp16"),
    ({"mixed_precision": False}, "mixed_precision", "no"),   # YAML's `no`
    ({"precompute_ref_log_probs": False}, "ref_logps", "on_the_fly"),
    ({"optim": "adamw_torch_fused"}, "optim.optimizer", "adamw"),
    ({"lr_scheduler_type": "constant_with_warmup"}, "optim.scheduler", "constant"),
    ({"warmup_steps": 0.05}, "optim.warmup_ratio", 0.05),   # transformers 5: a float < 1 is a ratio
    ({"warmup_steps": 7}, "optim.warmup_steps", 7),
    ({"dtype": "bfloat16"}, "model.dtype", "bf16"),
    ({"dataset_config": "default", "dataset_train_split": "train_prefs"}, "data.train_split", "train_prefs"),
    ({"eval_strategy": "no"}, "data.eval", None),
    ({"eval_strategy": "steps", "logging_steps": 7}, "eval_steps", 7),   # TRL: eval_steps <- logging_steps
    ({"eval_strategy": "steps"}, "data.eval", "d"),
    ({"report_to": "none"}, "report_to", []),
    ({"hub_model_id": "me/m", "push_to_hub": True}, "hub_model_id", "me/m"),
    ({"use_peft": True, "lora_target_modules": ["q_proj", "v_proj"]}, "model.lora.target_modules",
     ["q_proj", "v_proj"]),
    ({"use_peft": False}, "model.lora", None),
    ({"torch_compile": True}, "compile", True),
])
def test_converted_values(given, key, expected):
    cfg = load_config({"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o", **given})
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected


def test_mixed_precision_no_from_yaml_and_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {train: d.jsonl}\noutput_dir: o\nmixed_precision: no\n")
    assert load_config(path).mixed_precision == "no"
    assert load_config(path, overrides_from_args(["--mixed_precision", "no"])).mixed_precision == "no"


def test_every_problem_at_once_with_suggestions_from_both_vocabularies():
    with pytest.raises(ValueError) as info:
        load_config({"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o",
                     "lerning_rate": 1e-6, "bta": 0.1, "optim": {"lrr": 1}, "hub_token": "hf_secret",
                     "loss_type": "hinge", "per_device_train_batchsize": 2})
    msg = str(info.value)
    assert msg.startswith("6 config problems")
    assert "'lerning_rate' (did you mean 'learning_rate', TRL's name for 'optim.lr'?)" in msg
    assert "'bta' (did you mean 'beta'?)" in msg and "'optim.lrr' (did you mean 'lr'?)" in msg
    assert "'per_device_train_batchsize' (did you mean 'per_device_train_batch_size'" in msg
    assert "HF_TOKEN" in msg and "hf_secret" not in msg
    assert "loss_type 'hinge' is not supported" in msg


def test_alias_and_isdaa_key_conflict_but_cli_overrides_win(tmp_path):
    with pytest.raises(ValueError, match=r"'learning_rate' \(TRL name for 'optim.lr'\) = 2e-06 conflicts"):
        load_config({"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o", "learning_rate": 2e-6,
                     "optim": {"lr": 1e-6}})
    path = tmp_path / "t.yaml"
    path.write_text("model_name_or_path: m\ndataset_name: d\noutput_dir: o\nlearning_rate: 1.0e-6\n")
    assert load_config(path, overrides_from_args(["--learning_rate", "3e-6"])).optim.lr == 3e-6
    assert load_config(path, ["optim.lr=4e-6"]).optim.lr == 4e-6


def test_overrides_from_args():
    assert overrides_from_args(["--beta", "0.2", "--use_peft", "method=is-dpo", "--lora-r=8",
                                "--no_gradient_checkpointing", "--optim.lr", "1e-5", "--push_to_hub"]) == [
        "beta=0.2", "use_peft=true", "method=is-dpo", "lora_r=8", "gradient_checkpointing=false", "optim.lr=1e-5",
        "push_to_hub=true"]


def _all_keys(cls, prefix=""):
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        out.append(prefix + f.name)
        sub = next((a for a in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(a)), None)
        if sub is not None:
            out += _all_keys(sub, prefix + f.name + ".")
    return out


def test_help_lists_every_key_with_type_default_and_doc():
    r = CliRunner().invoke(main, ["train", "pref", "--help"], terminal_width=200)
    assert r.exit_code == 0
    keys_part, trl_part = r.output.split("TRL names accepted")
    lines = {line.split()[0]: line for line in keys_part.splitlines() if line.startswith("  ") and line.split()}
    for key in _all_keys(PrefConfig):
        assert key in lines, key
    assert "float = 1e-06  paper, Appendix C" in lines["optim.lr"]
    assert "float = 0.1  KL strength" in lines["beta"]
    trl = {line.split()[0]: line for line in trl_part.splitlines() if line.startswith("  ") and line.split()}
    assert "optim.lr" in trl["learning_rate"] and "method: sigmoid -> dpo" in trl["loss_type"]
    # "key  type = default  doc": a doc follows the default after two spaces
    undocumented = [k for k in _all_keys(PrefConfig) if "  " not in lines[k].strip()[len(k):].strip()]
    assert undocumented == []


def _tiny_trl_yaml(path: Path, tiny_dir, data, out, source=TRL_DPO, **changes) -> Path:
    """The shipped TRL config, key names untouched, pointed at a local tiny model and dataset."""
    cfg = yaml.safe_load(source.read_text())
    cfg.update(model_name_or_path=str(tiny_dir), dataset_name=str(data), output_dir=str(out), **changes)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def pairs_folder(root: Path, n: int = 32) -> Path:
    """A local dataset folder with train.jsonl and test.jsonl: `load_dataset(folder)` gives both splits, as
    TRL's eval_strategy wants them."""
    from test_train import pref_rows, write_jsonl

    root.mkdir()
    write_jsonl(root / "train.jsonl", pref_rows(n))
    write_jsonl(root / "test.jsonl", pref_rows(8, seed=5))
    return root


def test_trl_style_yaml_trains_through_the_cli(tiny_dir, tmp_path):
    data = pairs_folder(tmp_path / "pairs")
    config = _tiny_trl_yaml(tmp_path / "dpo.yaml", tiny_dir, data, tmp_path / "run", max_length=32,
                            max_prompt_length=16, learning_rate=1e-3, per_device_train_batch_size=4,
                            gradient_accumulation_steps=2, logging_steps=1, eval_steps=2, save_steps=3)
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config), "--beta", "0.2", "--max_steps", "4",
                                  "progress=false"])
    assert r.exit_code == 0, r.output
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    got = (resolved["beta"], resolved["method"], resolved["optim"]["lr"], resolved["batch_size"])
    assert got == (0.2, "dpo", 1e-3, 8)
    assert resolved["mixed_precision"] == "bf16" and resolved["model"]["gradient_checkpointing"] is True
    assert "learning_rate" not in resolved  # written with isdaa's names only
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval/loss" in rows[1]
    assert (tmp_path / "run" / "checkpoint-3").is_dir()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "finished"


def test_docs_list_every_trl_key():
    """docs/TRL.md names every TRL key the code accepts, converts, ignores or refuses, each alias on a table
    row with the isdaa key it maps to, each converted key on a row with its target, each refused key in the
    refused table, and every default listed as differing from TRL's."""
    from isdaa import trl_compat as T

    doc = (ROOT / "docs" / "TRL.md").read_text()
    missing = [k for table in (T.ALIASES, T.CONVERTED, T.NO_OP, T.REFUSED, T.SWITCHES) for k in table
               if f"`{k}" not in doc]
    assert missing == []
    rows = [line for line in doc.splitlines() if line.startswith("| `")]

    def row_of(key):
        return next((r for r in rows if f"`{key}`" in r.split("|")[1]), "")

    wrong = [k for k, target in T.ALIASES.items() if target.rsplit(".", 1)[-1] not in row_of(k)]
    wrong += [k for k, (target, _) in T.CONVERTED.items() if target.rsplit(".", 1)[-1] not in row_of(k)]
    refused = doc.split("## Refused deliberately")[1]
    wrong += [k for k in T.REFUSED if f"`{k}`" not in refused]
    assert wrong == []
    section = doc.split("## Outputs")[0]  # the defaults paragraph at the top
    assert [k for k in T.DEFAULT_DIFFERENCES if k.split(".")[-1] not in doc] == []
    assert "save_total_limit" in section and "resume_from_checkpoint" in section


def test_translation_leaves_the_callers_mapping_alone():
    given = {"model": {"name_or_path": "m"}, "data": {"train": "d"}, "output_dir": "o", "dataset_config": "x",
             "model_revision": "r"}
    snapshot = json.dumps(given, sort_keys=True)
    cfg = load_config(given)
    assert (cfg.data.subset, cfg.model.revision) == ("x", "r") and json.dumps(given, sort_keys=True) == snapshot


def test_trl_loss_name_under_isdaa_key_points_to_the_isdaa_name():
    with pytest.raises(ValueError, match=r"method 'sigmoid' is TRL's loss_type name: isdaa's is method: dpo"):
        load_config({"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o"}, ["method=sigmoid"])


def test_disable_dropout_is_trls_switch():
    """TRL's `disable_dropout` is isdaa's key of the same name: default on (as TRL), off when asked."""
    base = {"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o", "loss_type": "sigmoid"}
    assert load_config(base, kind="pref").disable_dropout is True
    assert load_config({**base, "disable_dropout": False}, kind="pref").disable_dropout is False


# ---------------------------------------------------------------- one translation path, origins


BASE_TRL = "model_name_or_path: m\ndataset_name: org/d\noutput_dir: o\n"


def test_command_line_keys_mean_what_the_same_keys_mean_in_yaml(tmp_path):
    """`--eval_strategy steps --eval_steps 2` on the command line resolves exactly as the same keys in the
    file (it was dropped: the command line was translated on its own, without the file's dataset_name);
    so do batch keys split between the file and the command line."""
    from isdaa.config import to_dict

    base, full = tmp_path / "base.yaml", tmp_path / "full.yaml"
    base.write_text(BASE_TRL + "per_device_train_batch_size: 2\n")
    full.write_text(BASE_TRL + "per_device_train_batch_size: 2\neval_strategy: steps\neval_steps: 2\n"
                    "gradient_accumulation_steps: 4\n")
    args = ["--eval_strategy", "steps", "--eval_steps", "2", "--gradient_accumulation_steps", "4"]
    cli, yml = load_config(base, overrides_from_args(args)), load_config(full)
    assert to_dict(cli) == to_dict(yml)
    assert (cli.data.eval, cli.eval_steps, cli.micro_batch_size, cli.batch_size) == ("org/d", 2, 2, 8)


def test_errors_name_where_the_key_came_from(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(BASE_TRL + "lerning_rate: 1.0e-6\n")
    with pytest.raises(ValueError) as info:
        load_config(path, ["bta=0.2"])
    msg = str(info.value)
    assert f"{path}: unknown config key 'lerning_rate'" in msg and "command line: unknown config key 'bta'" in msg
    path.write_text(BASE_TRL)
    with pytest.raises(ValueError, match=r"^command line: unknown config key 'bta'"):
        load_config(path, ["bta=0.2"])      # typed on the command line: not blamed on the file
    with pytest.raises(ValueError, match=r"^command line: beta must be > 0"):
        load_config(path, ["beta=-1"])
    path.write_text(BASE_TRL + "beta: -1\n")
    with pytest.raises(ValueError, match=rf"^{path}: beta must be > 0"):
        load_config(path)
    path.write_text(BASE_TRL + "learning_rate: 2.0e-6\noptim: {lr: 1.0e-6}\n")
    with pytest.raises(ValueError, match=rf"^{path}: 'learning_rate' \(TRL name for 'optim.lr'\) = 2e-06 conflicts"):
        load_config(path)
    assert load_config(path, ["learning_rate=3e-6"]).optim.lr == 3e-6   # the command line wins, either name


# ---------------------------------------------------------------- TRL 1.x loss_type lists


def _cfg(**trl):
    return load_config({"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o", **trl})


def test_loss_type_lists_map_where_isdaa_has_the_loss_exactly():
    """TRL's ipo is length-normalized (isdaa: ipo_length_normalize); `method: is-dpo` with loss_type
    sigmoid is its IS variant; a one-element list with weight 1 is the loss itself."""
    ipo = _cfg(loss_type=["ipo"])
    assert (ipo.method, ipo.loss.ipo_length_normalize) == ("ipo", True)
    assert _cfg(loss_type=["sigmoid"], loss_weights=[1.0]).method == "dpo"
    assert _cfg(loss_type="sigmoid", method="is-dpo").method == "is-dpo"
    assert _cfg(loss_type=["sigmoid_norm"]).method == "dpo-norm"
    rpo = _cfg(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], per_device_train_batch_size=8)
    assert (rpo.method, rpo.loss.dpo_sft_weight, rpo.batch_size, rpo.micro_batch_size) == ("dpo-sft", 0.5, 8, 8)
    assert _cfg(loss_type=["sft", "sigmoid"], per_device_train_batch_size=8).loss.dpo_sft_weight == 1.0


def test_wpo_and_tr_dpo_switches_map_to_their_blocks():
    """use_weighting: WPO as TRL 1.x computes it (no clamp); sync_ref_model: TR-DPO with TRL's defaults (0.6,
    512) or the given members, the reference scored in memory as TRL does; with an is-* method WPO is refused."""
    wpo = _cfg(use_weighting=True)
    assert (wpo.loss.wpo_weighting, wpo.loss.wpo_max_weight) == (True, None)
    assert _cfg(use_weighting=False).loss.wpo_weighting is False
    with pytest.raises(ValueError, match="wpo"):
        _cfg(use_weighting=True, method="is-dpo")
    tr = _cfg(sync_ref_model=True)
    assert (tr.ref_sync.alpha, tr.ref_sync.steps, tr.ref_logps) == (0.6, 512, "on_the_fly")
    tr = _cfg(sync_ref_model=True, ref_model_mixup_alpha=0.5, ref_model_sync_steps=64)
    assert (tr.ref_sync.alpha, tr.ref_sync.steps) == (0.5, 64)
    assert _cfg(sync_ref_model=False).ref_sync is None
    with pytest.raises(ValueError, match=r"conflicts with method = 'rpo'"):
        _cfg(loss_type="sigmoid", method="rpo")


@pytest.mark.parametrize("trl, message", [
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [2.0, 0.5], "beta": 0.1},
     r"\[sigmoid, sft\] \(RPO\) is not supported exactly.*a sigmoid weight != 1 has no isdaa equivalent"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "per_device_train_batch_size": 4,
      "gradient_accumulation_steps": 2},  # TRL's token mean would be per micro-batch: isdaa refuses the split
     r"method 'dpo-sft' computes its loss over the whole optimizer step's batch: set micro_batch_size = batch_size"),
    ({"loss_type": ["sigmoid"], "loss_weights": [2.0]}, r"isdaa has no loss scale"),
    ({"loss_type": ["hinge"]}, r"TRL loss_type 'hinge' is not supported: isdaa maps sigmoid -> dpo, ipo -> ipo, "
                                r"sigmoid_norm -> dpo-norm, sft\+sigmoid -> dpo-sft; its other methods \(rpo, "),
    ({"loss_type": ["sigmoid", "bco_pair", "sft"]}, r"loss_type \['sigmoid', 'bco_pair', 'sft'\] is not supported"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, r"loss_weights has 1 values for 2 loss_type"),
    ({"loss_weights": [1.0, 2.0]}, r"TRL key 'loss_weights' is not supported"),
])
def test_loss_type_lists_refused_with_the_nearest(trl, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**trl)


def test_trl_defaults_of_missing_features_are_accepted():
    """A config holding TRL's own defaults for the features isdaa lacks (as `DPOConfig().to_dict()` dumps
    them) loads; any other value is refused. Checked against TRL's dataclass when it is installed."""
    from isdaa.trl_compat import HARMLESS, MEMBER_DEFAULTS, REFUSED

    defaults = {k: v[0] for k, v in HARMLESS.items()} | MEMBER_DEFAULTS
    assert _cfg(**{k: v for k, v in defaults.items() if k not in ("lora_task_type",)}).method == "dpo"
    with pytest.warns(UserWarning, match=r"ref_model_sync_steps = 64 given without sync_ref_model: true; ignored"):
        _cfg(ref_model_sync_steps=64)
    trl = pytest.importorskip("trl")
    fields = {f.name: f for c in (trl.DPOConfig, trl.ModelConfig) for f in dataclasses.fields(c)}
    for key in REFUSED:
        if key in fields and fields[key].default is not dataclasses.MISSING and key != "hub_token":
            assert fields[key].default in HARMLESS.get(key, ()) + (MEMBER_DEFAULTS.get(key),), key


def _trl_loss_and_ours(tiny_dir, tmp_path, rows, loss_type, loss_weights, beta, method, trl_args=None, **options):
    """TRL's DPOTrainer.compute_loss on `rows` (one batch; the policy a perturbed copy of the reference)
    next to isdaa's preference_loss on isdaa's log-probs of the same models and rows."""
    import copy

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from isdaa.data import collate_pref, tokenize_pref
    from isdaa.logprobs import response_logps
    from isdaa.losses import preference_loss

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), beta=beta,
                     loss_type=loss_type, loss_weights=loss_weights, max_length=None, report_to=[], use_cpu=True,
                     bf16=False, gradient_checkpointing=False, disable_dropout=True, precompute_ref_log_probs=False,
                     **(trl_args or {}))
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, next(iter(trainer.get_train_dataloader()))).item()
    batch = collate_pref(tokenize_pref(rows, tok, 256, 128), tok.pad_token_id)
    n = batch["n_pairs"]
    with torch.no_grad():
        lp, sq = response_logps(policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                with_sq_logsumexp=True)
        lr = response_logps(ref, batch["input_ids"], batch["attention_mask"], batch["response_mask"]).double()
    lp = lp.double()
    sq_lse = {"policy_chosen_sq_lse": sq[:n], "policy_rejected_sq_lse": sq[n:]} if options.get("wpo_weighting") else {}
    ours = preference_loss(method, beta, lp[:n], lp[n:], lr[:n], lr[n:], chosen_lengths=batch["chosen_lengths"],
                           rejected_lengths=batch["rejected_lengths"], **sq_lse, **options).loss.item()
    return trl_loss, ours


# responses start with a space, as TRL's standard format expects (it tokenizes prompt + response as one text)
EQUAL = [{"prompt": f"w{i} w{i + 1}", "chosen": f" good w{i} yes", "rejected": " bad no"} for i in range(4)]
UNEQUAL = [{"prompt": f"w{i} w{i + 1}", "chosen": " good " + " ".join(f"w{j}" for j in range(1 + 3 * i)),
            "rejected": " bad no w3"} for i in range(4)]


@pytest.mark.slow
def test_trl_ipo_is_isdaas_length_normalized_ipo_on_numbers(tiny_dir, tmp_path):
    """TRL's own loss code (dpo_trainer.py) on the same models and rows: loss_type [ipo] = isdaa's ipo with
    ipo_length_normalize (float32 round-off), not the summed form the mapping used to pick."""
    pytest.importorskip("trl")
    trl_loss, ours = _trl_loss_and_ours(tiny_dir, tmp_path, UNEQUAL, ["ipo"], None, 0.1, "ipo",
                                        ipo_length_normalize=True)
    assert ours == pytest.approx(trl_loss, rel=1e-4)
    _, summed = _trl_loss_and_ours(tiny_dir, tmp_path, UNEQUAL, ["ipo"], None, 0.1, "ipo")
    assert abs(summed - trl_loss) > 1e-2 * abs(trl_loss)


@pytest.mark.slow
def test_trl_losses_mapped_by_name_equal_trls_on_numbers(tiny_dir, tmp_path):
    """TRL's own loss code on the same models and rows: [sigmoid, sft] = isdaa's dpo-sft (chosen lengths
    equal or not), sigmoid_norm = dpo-norm, use_weighting = dpo with wpo_weighting and no clamp."""
    pytest.importorskip("trl")
    for rows in (EQUAL, UNEQUAL):
        trl_loss, ours = _trl_loss_and_ours(tiny_dir, tmp_path, rows, ["sigmoid", "sft"], [1.0, 0.5], 0.1, "dpo-sft",
                                            dpo_sft_weight=0.5)
        assert ours == pytest.approx(trl_loss, rel=1e-4)
    trl_loss, ours = _trl_loss_and_ours(tiny_dir, tmp_path, UNEQUAL, ["sigmoid_norm"], None, 0.1, "dpo-norm")
    assert ours == pytest.approx(trl_loss, rel=1e-4)
    trl_loss, ours = _trl_loss_and_ours(tiny_dir, tmp_path, UNEQUAL, ["sigmoid"], None, 0.1, "dpo",
                                        trl_args={"use_weighting": True}, wpo_weighting=True, wpo_max_weight=None)
    assert ours == pytest.approx(trl_loss, rel=1e-4)


@pytest.mark.slow
def test_trl_rpo_equals_isdaas_rpo_only_at_equal_chosen_lengths(tiny_dir, tmp_path):
    """Why [sigmoid, sft] maps to dpo-sft and not rpo: TRL's sft term (the micro-batch's token-mean NLL) equals
    isdaa's rpo with rpo_nll_mean and eta = alpha / beta when the chosen responses have equal lengths, and not
    otherwise (the token mean weighs long responses more)."""
    pytest.importorskip("trl")
    alpha, beta = 0.5, 0.1
    for rows, equal in ((EQUAL, True), (UNEQUAL, False)):
        trl_loss, ours = _trl_loss_and_ours(tiny_dir, tmp_path, rows, ["sigmoid", "sft"], [1.0, alpha], beta, "rpo",
                                            rpo_eta=alpha / beta, rpo_nll_mean=True)
        assert (ours == pytest.approx(trl_loss, rel=1e-4)) is equal, (rows[0], trl_loss, ours)


def test_help_docs_are_whole_sentences():
    """A field doc written over several comment lines reaches --help whole (compile, response_only_head,
    disable_dropout, check_logps, pack_pairs were cut after their first line)."""
    from isdaa.cli.train import config_keys

    docs = {key: doc for key, _, _, doc in config_keys(PrefConfig)}
    assert "README 'Performance' says when it pays off" in docs["compile"]
    assert "false: one row each" in docs["pack_pairs"]
    assert docs["check_logps"].endswith("error | recompute | off")
    cut = [k for k, d in docs.items() if d.count("(") != d.count(")") or d.count("[") != d.count("]")
           or d.rstrip().endswith((",", ":", ";", "(")) or d.split()[-1] in ("the", "on", "in", "of", "a", "to")]
    assert cut == []


def test_evaluation_on_the_training_file_only_when_asked(tiny_dir, tmp_path):
    """TRL's eval_strategy: steps on a local training file (one split) used to evaluate on the training
    rows without a word: now refused with what to set; asked for (dataset_test_split: train), it runs and
    says so."""
    from test_train import pref_rows, write_jsonl

    data = write_jsonl(tmp_path / "pairs.jsonl", pref_rows(16))
    base = {"model_name_or_path": str(tiny_dir), "dataset_name": data, "output_dir": str(tmp_path / "run"),
            "eval_strategy": "steps"}
    with pytest.raises(ValueError, match=r"data.eval is the training file .*pairs.jsonl: a local file has one split, "
                                         r"so eval_split 'test' would read the training rows; .*dataset_test_split"):
        load_config(base)
    cfg = load_config({**base, "dataset_test_split": "train", "max_steps": 1, "per_device_train_batch_size": 4,
                       "max_length": 32, "max_prompt_length": 16, "progress": False, "bf16": False})
    from isdaa.api import train

    with pytest.warns(UserWarning, match=r"data.eval is the training data .*pairs.jsonl, split train"):
        train(cfg)


def test_a_trl_max_length_below_isdaas_prompt_limit_keeps_half_for_the_prompt():
    """TRL 1.x has no max_prompt_length: `max_length: 32` alone used to fail (isdaa's 512-token prompt
    limit must stay below max_length)."""
    assert (_cfg(max_length=32).data.max_prompt_length, _cfg(max_length=32).data.max_length) == (16, 32)
    assert _cfg(max_length=2048).data.max_prompt_length == 512
    assert _cfg(max_length=32, max_prompt_length=24).data.max_prompt_length == 24


def test_default_differences_are_trls_defaults():
    """The defaults listed at the start of a run as TRL's are TRL's own (its dataclasses)."""
    from isdaa.train.notices import default_differences
    from isdaa.trl_compat import DEFAULT_DIFFERENCES

    listed = default_differences(_cfg())
    assert any(line.startswith("optim.scheduler cosine (TRL: lr_scheduler_type linear)") for line in listed)
    assert not any(line.startswith("optim.scheduler") for line in default_differences(_cfg(lr_scheduler_type="linear")))
    # a key the user wrote is theirs, even when it equals isdaa's default (TRL's shipped dpo.yaml says cosine)
    written = default_differences(_cfg(lr_scheduler_type="cosine", warmup_ratio=0.1, num_train_epochs=1,
                                       per_device_train_batch_size=4, precompute_ref_log_probs=True))
    assert not any(line.split()[0] in ("optim.scheduler", "optim.warmup_steps", "epochs", "micro_batch_size",
                                       "ref_logps") for line in written), written
    assert any(line.startswith("seed ") for line in written)  # what the user left unset is still listed
    trl = pytest.importorskip("trl")
    args = trl.DPOConfig(output_dir="unused", use_cpu=True)
    for trl_key, default in DEFAULT_DIFFERENCES.values():
        if hasattr(args, trl_key):
            value = getattr(args, trl_key)
            assert str(getattr(value, "value", value)) == str(default), trl_key
