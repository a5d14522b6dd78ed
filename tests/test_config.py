"""Typed configs: validation at construction, nearest-name suggestions, YAML + CLI overrides."""

import pytest

from isdaa.config import (
    LossOptions,
    PrefConfig,
    SFTConfig,
    load_config,
    load_run_config,
    parse_overrides,
    to_yaml,
)

BASE = {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}, "output_dir": "out"}


def test_loss_options_are_the_registry_options():
    """One LossOptions field per registry option, same default; every method name validates."""
    import dataclasses

    from isdaa.losses import METHODS, OPTIONS

    fields = {f.name: f.default for f in dataclasses.fields(LossOptions)}
    assert fields == {name: o.default for name, o in OPTIONS.items()}
    for method in METHODS:  # a loss over the whole batch (dpo-sft) needs it unsplit
        unsplit = ["micro_batch_size=64"] if METHODS[method].whole_batch({}) else []
        assert load_config(BASE, [f"method={method}", *unsplit]).method == method


@pytest.mark.parametrize("option", ["is_clip", "rpo_eta", "chipo_rmax", "rdpo_alpha", "is_self_normalize"])
def test_each_option_is_checked_by_its_registry_entry(option):
    """Out of range (-1) or the wrong type ("yes" for a flag, a string for a number) names the option."""
    from isdaa.losses import OPTIONS

    bad = "maybe" if OPTIONS[option].kind is bool else -1.0
    with pytest.raises(ValueError, match=f"loss.{option}"):
        load_config(BASE, [f"loss.{option}={bad}"])


def test_overrides_parse_with_yaml_and_nest():
    assert parse_overrides(["optim.lr=1e-5", "method=is-dpo", "save_fractions=[0.1, 0.5]", "model.lora=null"]) == {
        "optim": {"lr": "1e-5"}, "method": "is-dpo", "save_fractions": [0.1, 0.5], "model": {"lora": None}}
    cfg = load_config(BASE, ["optim.lr=1e-5", "method=is-ipo", "beta=0.05", "loss.is_clip=0.5",
                             "model.lora={r: 4}"])
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert (cfg.method, cfg.beta, cfg.loss.is_clip, cfg.model.lora.r) == ("is-ipo", 0.05, 0.5, 4)


@pytest.mark.parametrize("override, message", [
    (["beta=0"], "beta must be > 0"),
    (["method=is-dop"], "did you mean 'is-dpo'"),
    (["optim.lrr=1"], "did you mean 'lr'"),
    (["bta=0.1"], "did you mean 'beta'"),
    (["loss.is_clip=0"], "is_clip"),
    (["batch_size=0"], "must be > 0"),
    (["batch_size=10", "micro_batch_size=4"], "multiple of micro_batch_size"),
    (["data.max_length=0"], "must be > 0"),
    (["data.max_prompt_length=700"], "max_prompt_length must be <"),
    (["optim.lr=abc"], "must be float"),
    (["ref_logps=cached"], "ref_logps must be one of"),
])
def test_invalid_values_are_rejected(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(BASE, override)


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {train: d.jsonl}\noutput_dir: out\n"
                    "optim: {lr: 1e-6}\nmethod: is-dpo\n")
    cfg = load_config(path, ["beta=0.01"])
    assert isinstance(cfg, PrefConfig) and cfg.optim.lr == 1e-6 and cfg.beta == 0.01
    (tmp_path / "resolved.yaml").write_text(to_yaml(cfg))
    assert load_run_config(tmp_path / "resolved.yaml") == cfg
    with pytest.raises(ValueError, match="isdaa train pref"):
        load_config(tmp_path / "resolved.yaml", kind="sft")
    assert isinstance(load_config(BASE, kind="sft"), SFTConfig)


def test_shipped_configs_load():
    """Every shipped training config validates (paths are not opened at load time)."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted((root / "paper").glob("*.yaml")) + sorted((root / "examples").glob("*.yaml"))
    assert len(files) >= 15
    methods = set()
    for path in files:
        kind = yaml.safe_load(path.read_text())["kind"]
        cfg = load_config(path, kind=kind)
        methods.add(getattr(cfg, "method", None))
        if "paper" in path.parts and kind == "pref":
            assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.batch_size, cfg.data.max_length) == (1e-6, 100, 64, 640)
    assert {"dpo", "is-dpo", "is-ipo", "rpo", "chipo", "rdpo"} <= methods
    for path in sorted((root / "accelerate").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")


def _choice_fields(cls, prefix=""):
    """(dotted key, choices) of every enumerated string option of `cls`, nested blocks included."""
    import dataclasses
    import typing

    from isdaa.config import choices_of
    from isdaa.trl_compat import _hint

    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if (sub := _hint(hints[f.name])) is not None:
            out += _choice_fields(sub, prefix + f.name + ".")
        elif (c := choices_of(f)) is not None:
            out.append((prefix + f.name, c))
    return out


BASE_YAML = "model: {name_or_path: m}\ndata: {train: d.jsonl}\noutput_dir: o\n"
YAML_BOOL_WORDS = {"yes", "no", "on", "off", "true", "false"}


def test_yaml_booleans_read_back_as_the_documented_strings(tmp_path):
    """`check_logps: off`, written in a YAML FILE as the README documents it, is the string "off" (YAML
    1.1 reads it as False); so is every value of every enumerated option that YAML reads as a boolean,
    from a file and from the command line."""
    import yaml

    from isdaa.cli.train import overrides_from_args

    path = tmp_path / "c.yaml"
    path.write_text(BASE_YAML + "check_logps: off\n")
    assert yaml.safe_load(path.read_text())["check_logps"] is False  # the trap
    assert load_config(path).check_logps == "off"
    assert load_config(path, overrides_from_args(["--check_logps", "error"])).check_logps == "error"
    assert load_config(BASE, overrides_from_args(["--check_logps", "off"])).check_logps == "off"
    cases = [(k, w) for cls in (PrefConfig, SFTConfig) for k, c in _choice_fields(cls) for w in c
             if w.lower() in YAML_BOOL_WORDS]
    assert {k for k, _ in cases} >= {"check_logps", "mixed_precision"}
    for key, word in cases:
        head, _, leaf = key.rpartition(".")
        path.write_text(BASE_YAML + (f"{head}: {{{leaf}: {word}}}\n" if head else f"{key}: {word}\n"))
        value = load_config(path)
        for part in key.split("."):
            value = getattr(value, part)
        assert value == word, (key, word)


def test_yaml_boolean_for_an_option_without_that_word_is_refused_clearly(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE_YAML + "check_logps: yes\n")
    with pytest.raises(ValueError, match=r"'check_logps' must be one of \['error', 'recompute', 'off'\], got True: "
                                         r"YAML reads unquoted yes/no/on/off/true/false as a boolean; write the value "
                                         r"in quotes"):
        load_config(path)
    path.write_text(BASE_YAML + "optim: {scheduler: off}\n")
    with pytest.raises(ValueError, match=r"'optim.scheduler' must be one of"):
        load_config(path)
