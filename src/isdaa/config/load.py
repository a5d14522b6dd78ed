"""Configs from plain dicts, YAML files and `key=value` overrides (TRL's key names translated by
isdaa.trl_compat), and back to dicts / YAML."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

import yaml

from isdaa.config.checks import _check, _nearest, _one_of, _yaml_word, choices_of
from isdaa.config.pref import PrefConfig
from isdaa.config.train import RMConfig, SFTConfig

KIND_OF = {cls: cls.kind for cls in (SFTConfig, RMConfig, PrefConfig)}
CONFIG_CLASSES = {v: k for k, v in KIND_OF.items()}


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a plain dict: nested dataclasses recursively, unknown keys rejected."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")  # noqa: TRY004
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown config key {where + key!r}{_nearest(key, fields)}")
        if isinstance(value, bool) and (choices := choices_of(fields[key])) is not None:
            value = _yaml_word(value, choices, where + key)  # `check_logps: off` read by YAML 1.1 as False
        kwargs[key] = _coerce(hints[key], value, where + key)
    return cls(**kwargs)


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where + ".")
    if tp in (int, float) and isinstance(value, str):  # YAML 1.1 reads `1e-6` as a string
        try:
            value = tp(value)
        except ValueError:
            raise ValueError(f"config key {where!r} must be {tp.__name__}, got {value!r}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"config key {where!r} must be {tp.__name__}, got {value!r}")
    if tp is list and not isinstance(value, (list, tuple)):
        return [value]
    return value


def parse_overrides(overrides) -> dict:
    """`["optim.lr=1e-5", "method=is-dpo"]` -> nested dict; values parsed with yaml.safe_load."""
    out: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({err.problem})") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with another override")  # noqa: TRY004
        node[parts[-1]] = value
    return out


def load_config(source=None, overrides=(), kind: str = "pref"):
    """Config of `kind` (sft | rm | pref) from a YAML path or dict, then `key=value` overrides (the
    command line). Both go through one translation (`trl_compat.translate`); every problem is reported
    at once, each naming where its key came from (the file or the command line)."""
    _one_of(kind, tuple(CONFIG_CLASSES), "kind")
    origin = str(source) if isinstance(source, (str, Path)) else None
    if source is None:
        data = {}
    elif isinstance(source, dict):
        data = source
    else:
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: not valid YAML ({err})") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{source}: not valid UTF-8 ({err.reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a config must be a mapping of keys, got {type(data).__name__}")  # noqa: TRY004
    from isdaa import trl_compat

    cls = CONFIG_CLASSES[kind]
    sources = [(data, origin), (parse_overrides(overrides), trl_compat.COMMAND_LINE)]
    data, problems, tree = trl_compat.translate(sources, cls)  # TRL key names -> isdaa's (trl_compat.py)
    declared = data.pop("kind", kind)
    _check(declared == kind, f"this config is for `isdaa train {declared}`, not `{kind}`")
    problems += trl_compat.unknown_keys(cls, data, origin=tree.origin)
    if problems:  # every unknown / unsupported key at once
        raise ValueError(problems[0] if len(problems) == 1 else
                         f"{len(problems)} config problems:\n  - " + "\n  - ".join(problems))
    try:
        cfg = from_dict(cls, data)
    except ValueError as err:  # a bad value: name where it came from
        raise ValueError(_attributed(str(err), tree)) from None
    # which keys the user set (dotted isdaa names): the start-of-run notices list only the TRL default
    # differences the user left unset. Not a field: it is provenance, never written to config.yaml.
    object.__setattr__(cfg, "given_keys", frozenset(tree.rank))
    return cfg


def _attributed(message: str, tree) -> str:
    """`message` headed by the origin of the config keys it names, when they all come from one place."""
    import re

    named = [k for k in tree.rank if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message)]
    origins = {tree.origin(k) for k in named}
    return f"{origins.pop()}: {message}" if len(origins) == 1 and None not in origins else message


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump({"kind": cfg.kind, **to_dict(cfg)}, sort_keys=False)


def load_run_config(path):
    """Read a run's resolved config.yaml back (its `kind` key picks the class)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return load_config(data, kind=data.get("kind", "pref"))
