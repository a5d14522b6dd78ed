"""TRL's key names accepted as aliases of isdaa's, so that a DPOConfig / TrainingArguments / ModelConfig /
ScriptArguments YAML (as the TRL docs write one) trains unchanged. `translate` maps TRL-style mappings
onto isdaa's nested keys; the typed config then validates it and the run writes it resolved (isdaa's
names only). The full list, and the TRL keys deliberately refused, is docs/TRL.md.

    translate([({"learning_rate": 5e-7, "loss_type": "sigmoid"}, "dpo.yaml"), ({"bf16": True}, "command line")],
              PrefConfig)
    -> ({"optim": {"lr": 5e-7}, "method": "dpo", "mixed_precision": "bf16"}, [], tree)

One path for every source: the YAML file and the command line are merged first, then translated once,
so `--eval_strategy steps` on the command line means what it means in the file. A later source wins
(the command line over the file, under either name); within one source, an alias and the isdaa key it
stands for with different values is an error. An isdaa name always wins over an alias (a key that is
both is isdaa's). Problems are returned, not raised, each headed by its source, so that
`isdaa.config.load_config` reports every one of them at once.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
import warnings

from isdaa.registry import BASE_METHODS, METHODS
from isdaa.trl_keys import (  # noqa: F401  (the tables, under the names callers use)
    ALIASES,
    COMMAND_LINE,
    CONVERTED,
    DEFAULT_DIFFERENCES,
    DEFAULT_PROMPT_LIMIT,
    DTYPES,
    HARMLESS,
    MEMBER_DEFAULTS,
    NO_OP,
    OPTIMIZERS,
    REFUSED,
    SCHEDULERS,
    SWITCH_EXTRA,
    SWITCHES,
    TRL_DEFAULT_LOGGING_STEPS,
    TRL_DEFAULT_MICRO_BATCH,
    TRL_LOSSES,
)


def trl_names() -> list[str]:
    """Every TRL key this module accepts (aliases, converted and no-op keys)."""
    return sorted({*ALIASES, *CONVERTED, *NO_OP})


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def world_size() -> int:
    """Processes of this launch (accelerate / torchrun set WORLD_SIZE); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _where(origin) -> str:
    return f"{origin}: " if origin else ""


class _Tree:
    """The isdaa-keyed mapping being built, with the rank of the source that set each leaf (sources
    later in the list override earlier ones: the file, then the command line) and its origin."""

    def __init__(self, origins: list):
        self.data: dict = {}
        self.rank: dict[str, int] = {}   # dotted leaf -> rank of its source
        self.origins = origins
        self.problems: list[str] = []

    def origin(self, dotted: str):
        """The origin (file / command line) of the value at `dotted` or of the nearest key above it."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if key in self.rank:
                return self.origins[self.rank[key]]
        return None

    def merge(self, value, prefix: str, rank: int) -> None:
        """An isdaa-named value (mappings nested) from the source of rank `rank`."""
        if isinstance(value, dict) and value:
            for k, v in value.items():
                self.merge(v, f"{prefix}.{k}" if prefix else str(k), rank)
            return
        self.put(prefix, value, rank)

    def put(self, dotted: str, value, rank: int) -> None:
        node = self._parent(dotted)
        if node is None:
            return
        for k in [k for k in self.rank if k.startswith(dotted + ".")]:  # a whole block replaces its leaves
            del self.rank[k]
        node[dotted.rsplit(".", 1)[-1]] = copy.deepcopy(value)
        self.rank[dotted] = rank

    def get(self, dotted: str, default=None):
        node = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def _parent(self, dotted: str) -> dict | None:
        node = self.data
        *parents, _ = dotted.split(".")
        for i, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                self.problems.append(f"{_where(self.origin('.'.join(parents[: i + 1])))}{dotted!r} is set, but "
                                     f"{'.'.join(parents[: i + 1])!r} is not a mapping")
                return None
        return node

    def set_trl(self, dotted: str, value, key: str, rank: int) -> None:
        """`key` (a TRL name, from the source of rank `rank`) sets `dotted`. Against a value already
        there: a later source wins; within one source, a different value is a conflict."""
        if dotted in self.rank:
            old = self.get(dotted)
            if self.rank[dotted] > rank or (self.rank[dotted] == rank and old == value):
                return  # e.g. optim.lr on the command line over learning_rate in the file
            if self.rank[dotted] == rank:
                self.problems.append(f"{_where(self.origins[rank])}{key!r} (TRL name for {dotted!r}) = {value!r} "
                                     f"conflicts with {dotted} = {old!r}")
                return
        self.put(dotted, value, rank)


def translate(sources, cls) -> tuple[dict, list[str], _Tree]:
    """(isdaa-keyed mapping, problems, tree) for `sources`: [(mapping, origin)], config mappings that may
    use TRL's names, the later overriding the earlier (the file, then the command line; `origin` names
    them in messages). Keys that are neither TRL's nor isdaa's pass through unchanged (`unknown_keys`
    reports them). Every source is merged first, then translated once: a TRL key and the keys it
    combines with (dataset_name + eval_strategy, per_device_train_batch_size + gradient_accumulation_steps)
    mean the same wherever each was given."""
    if isinstance(sources, dict):
        sources = [(sources, None)]
    names = _fields(cls)
    tree = _Tree([origin for _, origin in sources])
    trl: dict[str, tuple] = {}  # TRL key -> (value, rank)
    for rank, (data, origin) in enumerate(sources):
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            if key in names or key == "kind":
                if key == "max_steps" and value is not None and str(value).strip() == "-1":
                    value = None  # TRL's "unset"
                if key == "optim" and isinstance(value, str):  # TRL's optimizer name
                    trl[key] = (value, rank)
                    continue
                isdaa = TRL_LOSSES.get((value,), {}).get("method", value) if isinstance(value, str) else value
                if key == "method" and isdaa != value:  # e.g. method=sigmoid
                    tree.problems.append(f"{_where(origin)}method {value!r} is TRL's loss_type name: isdaa's is "
                                         f"method: {isdaa} (or loss_type: {value})")
                    continue
                tree.merge(value, key, rank)
            elif key in ALIASES or key in CONVERTED or key in NO_OP or key in REFUSED or key in SWITCHES:
                trl[key] = (value, rank)
            else:
                tree.merge(value, key, rank)
    for key, (value, rank) in trl.items():
        where = _where(tree.origins[rank])
        switch = next((s for s, (_, members, _) in SWITCHES.items() if key in members), None)
        if key in MEMBER_DEFAULTS and not (trl.get("sync_ref_model") or (False,))[0]:
            if value != MEMBER_DEFAULTS[key]:
                _warn(f"{where}{key} = {value!r} given without sync_ref_model: true; ignored (as TRL does)")
        elif key in REFUSED:
            if value not in HARMLESS.get(key, ()) and not (key == "loss_weights" and "loss_type" in trl):
                tree.problems.append(f"{where}TRL key {key!r} is not supported: {REFUSED[key]}")
        elif key in NO_OP:
            allowed = NO_OP[key]
            if allowed is not None and value not in allowed:
                tree.problems.append(f"{where}TRL key {key!r} = {value!r} is not supported (isdaa behaves as "
                                     f"{allowed[0]!r})")
        elif key in ALIASES and switch is None:
            tree.set_trl(ALIASES[key], value, key, rank)
    _convert(trl, tree)
    return tree.data, tree.problems, tree


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def _convert(trl: dict, tree: _Tree) -> None:
    """The TRL keys whose values change on the way (CONVERTED), and the block switches (SWITCHES)."""
    def rank_of(*keys):
        return max(trl[k][1] for k in keys if k in trl)

    def where(*keys):
        return _where(tree.origins[rank_of(*keys)])

    if "loss_type" in trl:
        _loss_type(trl, tree, rank_of("loss_type", "loss_weights"), where("loss_type", "loss_weights"))
    for key, table, target in (("lr_scheduler_type", SCHEDULERS, "optim.scheduler"),
                               ("optim", OPTIMIZERS, "optim.optimizer")):
        if key in trl:
            value = trl[key][0]
            if value in table:
                tree.set_trl(target, table[value], key, rank_of(key))
            else:
                tree.problems.append(f"{where(key)}TRL {key} {value!r} is not supported (one of {sorted(table)})")
    for key in ("dtype", "torch_dtype"):
        if key in trl:
            value = trl[key][0]
            if value in DTYPES:
                tree.set_trl("model.dtype", DTYPES[value], key, rank_of(key))
            else:
                tree.problems.append(f"{where(key)}TRL {key} {value!r} is not supported (one of {sorted(DTYPES)})")
    if "bf16" in trl or "fp16" in trl:
        bf16, fp16 = bool((trl.get("bf16") or (None,))[0]), bool((trl.get("fp16") or (None,))[0])
        if bf16 and fp16:
            tree.problems.append(f"{where('bf16', 'fp16')}TRL bf16 and fp16 are both true")
        else:
            tree.set_trl("mixed_precision", "bf16" if bf16 else "fp16" if fp16 else "no", "bf16/fp16",
                         rank_of("bf16", "fp16"))
    if "warmup_steps" in trl:
        w = trl["warmup_steps"][0]
        ratio = isinstance(w, float) and 0 < w < 1
        key = "optim.warmup_ratio" if ratio else "optim.warmup_steps"
        tree.set_trl(key, w, "warmup_steps", rank_of("warmup_steps"))
    if "precompute_ref_log_probs" in trl:
        tree.set_trl("ref_logps", "precompute" if trl["precompute_ref_log_probs"][0] else "on_the_fly",
                     "precompute_ref_log_probs", rank_of("precompute_ref_log_probs"))
    if "max_length" in trl and tree.get("data.max_prompt_length") is None:
        # TRL 1.x has no prompt limit (max_length cuts prompt + response); isdaa's (512) must stay below
        # max_length: a shorter max_length keeps half of it for the prompt
        value, rank = trl["max_length"]
        if isinstance(value, int) and not isinstance(value, bool) and value <= DEFAULT_PROMPT_LIMIT:
            tree.set_trl("data.max_prompt_length", max(1, value // 2), "max_length", rank)
    for switch in SWITCHES:
        _switch(switch, trl, tree)
    _batch(trl, tree)
    if "eval_strategy" in trl:
        value, rank = trl["eval_strategy"]
        strategy = "no" if value is False else value  # YAML 1.1 reads `no` as false
        if strategy == "steps":
            if not tree.get("data.eval"):  # TRL: dataset_test_split of the training dataset
                tree.set_trl("data.eval", tree.get("data.train"), "eval_strategy", rank)
            if tree.get("eval_steps") is None:  # as TrainingArguments: eval_steps defaults to logging_steps
                tree.set_trl("eval_steps", tree.get("logging_steps", TRL_DEFAULT_LOGGING_STEPS), "eval_strategy", rank)
        elif strategy != "no":
            tree.problems.append(f"{where('eval_strategy')}TRL eval_strategy {strategy!r} is not supported (steps | "
                                 "no; isdaa counts steps)")


def _loss_type(trl: dict, tree: _Tree, rank: int, where: str) -> None:
    """TRL 1.x `loss_type` (a list; a string is one element) with `loss_weights` -> isdaa's method and options,
    where isdaa has the combination exactly (TRL_LOSSES); anything else is refused, naming the nearest."""
    types = trl["loss_type"][0]
    types = [types] if isinstance(types, str) else list(types or [])
    weights = (trl.get("loss_weights") or (None,))[0]
    weights = [1.0] * len(types) if weights is None else list(weights)
    if len(weights) != len(types):
        tree.problems.append(f"{where}loss_weights has {len(weights)} values for {len(types)} loss_type entries")
        return
    mixture = dict(zip(types, weights))
    target = TRL_LOSSES.get(tuple(sorted(types)))
    if callable(target):
        target = target(mixture)
    elif target is not None and not all(float(w) == 1.0 for w in weights):
        tree.problems.append(f"{where}TRL loss_weights {weights} for loss_type {types}: isdaa has no loss scale "
                             "(a weight != 1 on a single loss changes the step size; set optim.lr)")
        return
    if target is not None:
        method = tree.get("method")
        for dotted, value in target.items():
            if dotted == "method" and method == f"is-{value}" and tree.rank.get("method", -1) >= rank:
                continue  # `method: is-dpo` with `loss_type: sigmoid`: the IS variant of the same loss
            tree.set_trl(dotted, value, "loss_type", rank)
        return
    if set(mixture) == {"sigmoid", "sft"}:
        alpha, beta = float(mixture["sft"]), float(tree.get("beta", 0.1) or 0.1)
        tree.problems.append(
            f"{where}TRL loss_type [sigmoid, sft] (RPO) is not supported exactly: TRL's sft term is the mean NLL "
            "over every chosen token of the micro-batch (long responses weigh more, and the value depends on the "
            "micro-batch split); isdaa's nearest is method: rpo with loss.rpo_nll_mean: true and loss.rpo_eta = "
            f"alpha / beta = {alpha:g} / {beta:g} = {alpha / beta:g}, which averages each pair's per-token NLL "
            "(equal to TRL's when a micro-batch's chosen responses have equal lengths)"
            + ("" if float(mixture["sigmoid"]) == 1.0 else "; a sigmoid weight != 1 has no isdaa equivalent"))
        return
    known = ", ".join(f"{'+'.join(METHODS[m].trl_loss_type)} -> {m}" for m in BASE_METHODS if METHODS[m].trl_loss_type)
    others = ", ".join(m for m in BASE_METHODS if not METHODS[m].trl_loss_type)
    tree.problems.append(f"{where}TRL loss_type {types if len(types) > 1 else types[0]!r} is not supported: isdaa "
                         f"maps {known}; its other methods ({others}, is-*) are set with `method`")


def _switch(switch: str, trl: dict, tree: _Tree) -> None:
    """A TRL switch (use_peft) turns an isdaa block on with its member keys; members without it are
    ignored with a warning, as TRL ignores them."""
    block, members, defaults = SWITCHES[switch]
    given = [k for k in members if k in trl]
    if switch in trl and trl[switch][0]:
        rank = trl[switch][1]
        for field_name, value in defaults.items():
            if not any(ALIASES[k].endswith("." + field_name) for k in given):
                tree.set_trl(f"{block}.{field_name}", value, switch, rank)
        if not given and not defaults:
            tree.set_trl(block, {}, switch, rank)
        for k in given:
            tree.set_trl(ALIASES[k], trl[k][0], k, trl[k][1])
        for dotted, value in SWITCH_EXTRA.get(switch, {}).items():
            if tree.rank.get(dotted, -1) < rank:  # unless a later source set it
                tree.set_trl(dotted, value, switch, rank)
    elif given:
        _warn(f"{_where(tree.origins[max(trl[k][1] for k in given)])}{sorted(given)} given without {switch}: true; "
              "ignored (as TRL does)")


def _batch(trl: dict, tree: _Tree) -> None:
    keys = [k for k in ("per_device_train_batch_size", "gradient_accumulation_steps") if k in trl]
    if not keys:
        return
    micro = (trl.get("per_device_train_batch_size") or (TRL_DEFAULT_MICRO_BATCH,))[0]
    accum = (trl.get("gradient_accumulation_steps") or (1,))[0]
    rank = max(trl[k][1] for k in keys)
    try:
        micro, accum = int(micro), int(accum)
    except (TypeError, ValueError):
        tree.problems.append(f"{_where(tree.origins[rank])}per_device_train_batch_size ({micro!r}) and "
                             f"gradient_accumulation_steps ({accum!r}) must be integers")
        return
    tree.set_trl("micro_batch_size", micro, "per_device_train_batch_size",
                 trl.get("per_device_train_batch_size", (None, rank))[1])
    tree.set_trl("batch_size", micro * accum * world_size(), "per_device_train_batch_size x "
                 "gradient_accumulation_steps x processes", rank)


# ---------------------------------------------------------------- unknown keys, reported together


def _hint(tp) -> type | None:
    """The dataclass inside `X | None`, if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def dotted_names(cls, prefix: str = "") -> list[str]:
    """Every key of `cls`, nested ones dotted (`optim.lr`)."""
    out = []
    hints = typing.get_type_hints(cls)
    for name in _fields(cls):
        out.append(prefix + name)
        sub = _hint(hints[name])
        if sub is not None:
            out += dotted_names(sub, prefix + name + ".")
    return out


def suggest(key: str, cls, prefix: str = "") -> str:
    """` (did you mean 'x'?)` from isdaa's names at this level, all of isdaa's dotted names, and TRL's."""
    here = list(_fields(cls))
    vocab = here + [n for n in dotted_names(cls) if n not in here] + (trl_names() if not prefix else [])
    close = difflib.get_close_matches(key, here, n=1, cutoff=0.75) or difflib.get_close_matches(key, vocab, n=1,
                                                                                                 cutoff=0.6)
    if not close:
        return ""
    name = close[0]
    if not prefix and name not in here and (name in ALIASES or name in CONVERTED):
        target = ALIASES.get(name) or CONVERTED[name][0]
        return f" (did you mean {name!r}, TRL's name for {target!r}?)"
    return f" (did you mean {name!r}?)"


def unknown_keys(cls, data, prefix: str = "", origin=lambda dotted: None) -> list[str]:
    """One message per key of `data` that `cls` (recursively) does not have, headed by the key's origin
    (`origin(dotted key)`: the file or the command line)."""
    if not isinstance(data, dict):
        return []
    hints, out = typing.get_type_hints(cls), []
    for key, value in data.items():
        if key not in hints or key not in _fields(cls):
            out.append(f"{_where(origin(prefix + str(key)))}unknown config key {prefix + str(key)!r}"
                       f"{suggest(str(key), cls, prefix)}")
            continue
        sub = _hint(hints[key])
        if sub is not None and isinstance(value, dict):
            out += unknown_keys(sub, value, prefix + key + ".", origin)
    return out
