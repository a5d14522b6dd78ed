"""`isdaa train sft|rm|pref --config FILE.yaml [key=value ...] [--resume | --overwrite]`.

Overrides use dotted keys (`optim.lr=1e-5`, `method=is-dpo`, `loss.is_clip=0.5`), values parsed
with yaml.safe_load; the resolved config is written to OUTPUT_DIR/config.yaml. Works unchanged under
`accelerate launch -m isdaa.cli train pref ...`.
"""

from __future__ import annotations

import json

import click


class _PrefCommand(click.Command):
    """Lists the registry's methods and loss options under --help (imported only when help is shown)."""

    def format_epilog(self, ctx, formatter):
        from isdaa.losses import OPTIONS, methods_help

        with formatter.section("Methods (method=NAME)"):
            formatter.write_text(methods_help())
        with formatter.section("Loss options (loss.NAME=VALUE)"):
            formatter.write_dl([(o.name, f"{o.doc} [default: {o.default}]") for o in OPTIONS.values()])


def _command(kind: str, help_text: str):
    @click.command(name=kind, help=help_text, context_settings={"show_default": True},
                   cls=_PrefCommand if kind == "pref" else click.Command)
    @click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True,
                  help="YAML config file")
    @click.option("--resume", is_flag=True, help="continue from the latest resumable checkpoint")
    @click.option("--overwrite", is_flag=True, help="replace a run already in output_dir")
    @click.argument("overrides", nargs=-1)
    def command(config_path, resume, overwrite, overrides):
        from isdaa.config import load_config
        from isdaa.train import train as run_training

        if resume and overwrite:
            raise click.UsageError("--resume and --overwrite exclude each other")
        try:
            cfg = load_config(config_path, overrides, kind=kind)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="config") from None
        from isdaa.train.loop import NonFiniteError

        try:
            summary = run_training(cfg, resume=resume, overwrite=overwrite)
        # refused dir, missing file, missing tracker, bad data or model, the non-finite guard: one line
        except (OSError, ImportError, ValueError, NonFiniteError) as err:
            raise click.ClickException(str(err)) from None
        final = summary.get("final_metrics") or {}
        keys = ("loss", "rewards/accuracies", "rewards/margins", "is/weight_mean", "accuracy", "eval/accuracy")
        shown = {k: round(final[k], 4) for k in keys if isinstance(final.get(k), (int, float))}
        click.echo(json.dumps({"status": summary["status"], "step": summary["step"],
                               "output_dir": cfg.output_dir, **shown}))

    return command


@click.group(name="train")
def train():
    """Train a model: supervised fine-tuning, reward model, or preference optimization."""


train.add_command(_command("sft", "Supervised fine-tuning (NLL on completion tokens)."))
train.add_command(_command("rm", "Bradley-Terry reward model (one-label sequence classifier)."))
train.add_command(_command("pref", "Preference optimization with any method of the registry (listed below)."))
