"""`isdaa train sft|rm|pref [--config FILE.yaml] [key=value | --key value ...] [--resume | --overwrite]`.

Overrides use dotted keys (`optim.lr=1e-5`, `--method is-dpo`, `loss.is_clip=0.5`) or TRL's names
(`--learning_rate 1e-5`, `--use_peft`), values parsed with yaml.safe_load; the resolved config is written
to OUTPUT_DIR/config.yaml. `--help` lists every key with its type, default and doc. Works unchanged
under `accelerate launch -m isdaa.cli train pref ...`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing

import click

_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.]*=")  # a `key=value` override, not the value of a flag
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")
_MORE_LINE = re.compile(r"^\s+#\s*(.*)$")  # a comment-only line: the field doc above it goes on


def _field_docs(cls) -> dict[str, str]:
    """Each field's trailing `# comment` in the class source, with the comment-only lines under it (the
    config's docs)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names, last = {f.name for f in dataclasses.fields(klass)}, None
        for line in source.splitlines():
            m = _FIELD_LINE.match(line)
            if m and m.group(1) in names and m.group(2):
                last = m.group(1)
                docs[last] = m.group(2).strip()
            elif last and (more := _MORE_LINE.match(line)):  # the comment goes on under the field
                docs[last] += " " + more.group(1).strip()
            else:
                last = None
    return docs


def _type_name(tp) -> str:
    if tp is typing.Any:
        return "any"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and len(args) < len(typing.get_args(tp)):
        return " | ".join(_type_name(a) for a in args) + " | null"
    return getattr(tp, "__name__", str(tp))


def config_keys(cls, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """(dotted key, type, default, doc) for every key of config class `cls`, nested blocks included."""
    from isdaa.trl_compat import _hint

    hints, docs, rows = typing.get_type_hints(cls), _field_docs(cls), []
    for f in dataclasses.fields(cls):
        sub = _hint(hints[f.name])
        if sub is not None:
            optional = f.default is None
            rows.append((prefix + f.name, "block" + (" | null" if optional else ""),
                         None if optional else "{...}", docs.get(f.name, "")))
            rows += config_keys(sub, prefix + f.name + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        doc = f.metadata.get("doc") or docs.get(f.name, "")  # LossOptions: docs from losses.OPTIONS
        rows.append((prefix + f.name, _type_name(hints[f.name]), default, doc))
    return rows


class TrainCommand(click.Command):
    """`--help` ends with the registry's methods (pref), every config key (type = default: doc) and the
    TRL names accepted (imported only when help is shown)."""

    def __init__(self, *args, config_cls=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.config_cls = config_cls

    def format_epilog(self, ctx, formatter):
        from isdaa.trl_compat import ALIASES, CONVERTED, NO_OP

        if any(f.name == "method" for f in dataclasses.fields(self.config_cls)):
            from isdaa.losses import methods_help

            with formatter.section("Methods (method=NAME)"):
                formatter.write_text(methods_help())
        rows = [(key, f"{tp} = {json.dumps(default, default=str)}" + (f"  {doc}" if doc else ""))
                for key, tp, default, doc in config_keys(self.config_cls)]
        with formatter.section("Config keys (YAML, key=value or --key value)"):
            formatter.write_dl(rows)
        names = {k for k, _, _, _ in config_keys(self.config_cls)}
        trl = [(k, v) for k, v in ALIASES.items() if v.split(".")[0] in names]
        trl += [(k, f"{target}: {doc}") for k, (target, doc) in CONVERTED.items() if target.split(".")[0] in names]
        trl += [(k, "accepted, no effect" + (f" (only {v[0]!r})" if v else "")) for k, v in NO_OP.items()]
        with formatter.section("TRL names accepted (DPOConfig / TrainingArguments / ModelConfig; docs/TRL.md)"):
            formatter.write_dl(sorted(trl))


def overrides_from_args(args) -> list[str]:
    """`key=value`, `--key value`, `--key=value`, `--flag` (true) and `--no_flag` (false) -> `key=value`."""
    out, i = [], 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and len(token) > 2:
            key = token[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--") and not _KEY_VALUE.match(args[i + 1]):
                value, i = args[i + 1], i + 1
            elif key.startswith("no_"):
                key, value = key[3:], "false"
            else:
                value = "true"
            out.append(f"{key.replace('-', '_')}={value}")
        elif "=" in token and not token.startswith("-"):
            out.append(token)
        else:
            raise click.UsageError(f"unexpected argument {token!r}: overrides are key=value or --key value")
        i += 1
    return out


def _command(kind: str, help_text: str):
    from isdaa.config import CONFIG_CLASSES

    @click.command(name=kind, help=help_text, cls=TrainCommand, config_cls=CONFIG_CLASSES[kind],
                   context_settings={"show_default": True, "ignore_unknown_options": True,
                                     "max_content_width": 120})
    @click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                  help="YAML config file (isdaa's or TRL's key names)")
    @click.option("--resume", is_flag=True, help="continue from the latest resumable checkpoint")
    @click.option("--overwrite", is_flag=True, help="replace a run already in output_dir")
    @click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
    def command(config_path, resume, overwrite, overrides):
        from isdaa.api import train as run_training
        from isdaa.config import load_config
        from isdaa.train.console import user_warnings

        if resume and overwrite:
            raise click.UsageError("--resume and --overwrite exclude each other")
        with user_warnings(config_path or "command line"):  # isdaa's warnings: one line, blamed on the config
            try:
                cfg = load_config(config_path, overrides_from_args(overrides), kind=kind)
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="config") from None
            from isdaa.train.loop import NonFiniteError

            try:
                summary = run_training(cfg, resume=resume, overwrite=overwrite)
            # refused dir, missing file, missing tracker, bad data or model, the non-finite guard: one line
            except (OSError, ImportError, ValueError, NonFiniteError) as err:
                raise click.ClickException(str(err)) from None
            finally:
                _close_process_group()
        final = summary.get("final_metrics") or {}
        keys = ("loss", "rewards/accuracies", "rewards/margins", "is/weight_mean", "accuracy", "eval/accuracy")
        from isdaa.train.console import _shown

        shown = {k: round(final[k], 4) for k in keys if isinstance(final.get(k), (int, float)) and _shown(cfg, k)}
        push = summary.get("push_to_hub") or {}
        click.echo(json.dumps({"status": summary["status"], "step": summary["step"],
                               "output_dir": cfg.output_dir, **shown, **({"push_to_hub": "failed"} if
                                                                         push.get("error") else {})}))
        if push.get("error"):  # said in one line above (a warning); the model is saved
            raise SystemExit(1)

    return command


def _close_process_group() -> None:
    """Tear the torch.distributed group down before exit: left to interpreter shutdown, gloo's threads
    can abort a process ("terminate called without an active exception") after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@click.group(name="train")
def train():
    """Train a model: supervised fine-tuning, reward model, or preference optimization."""


train.add_command(_command("sft", "Supervised fine-tuning (NLL on completion tokens)."))
train.add_command(_command("rm", "Bradley-Terry reward model (one-label sequence classifier)."))
train.add_command(_command("pref", "Preference optimization with any method of the registry (listed below)."))
