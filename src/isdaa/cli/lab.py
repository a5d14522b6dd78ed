"""`isdaa lab`: the controlled over-optimization study end to end (isdaa.lab.pipeline)."""

from __future__ import annotations

import time

import click

from isdaa.lab.presets import PRESETS


def _floats(text):
    return [float(x) for x in text.split(",") if x.strip()] if text else None


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()] if text else None


def _strs(text):
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


class _Bars:
    """One tqdm bar per stage (stderr), closed when the stage moves on."""

    def __init__(self, enabled: bool):
        self.enabled, self.stage, self.bar = enabled, None, None

    def __call__(self, stage, done, total, info):
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=max(total, 0), desc=f"{stage:>6}", unit="run" if stage == "sweep" else "it",
                            dynamic_ncols=True, leave=True)
        if done < 0:  # the stage's end (a cached stage ends before it reports progress: shown as 1/1)
            self.bar.total = self.bar.total or 1
            self.bar.n = self.bar.total
        else:
            self.bar.total = total
            self.bar.n = min(done, total)
        if stage == "sweep" and info is not None:
            self.bar.set_postfix_str(getattr(info, "run_id", str(info)), refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command(name="lab")
@click.option("--preset", "preset_name", default="quick", show_default=True,
              type=click.Choice(list(PRESETS)),
              help="Sizes and grid of the study (isdaa.lab.presets).")
@click.option("--task", "task_spec", default=None,
              help="The environment: a built-in task (key-token, length) or module:Name for your own "
                   "(a subclass of isdaa.lab.task.Task; the working directory is importable). Default key-token.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--jobs", type=int, default=None, help="Parallel worker processes for the sweep (default: CPU cores).")
@click.option("--only", default=None,
              help="Comma-separated stage names (task, sft, label, sweep, report: run only those) and/or "
                   "substrings of run ids (keep only matching runs).")
@click.option("--methods", default=None, help="Comma-separated methods to keep (e.g. dpo,is-dpo,online-dpo).")
@click.option("--betas", default=None, help="Comma-separated betas to keep.")
@click.option("--seeds", default=None, help="Comma-separated seeds to keep.")
@click.option("--compare", "compare", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Another lab folder (e.g. the other task's, its report written) whose Table 1 the report sets "
                   "side by side with this one's; repeatable.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--list-runs", is_flag=True, help="Print the selected runs and exit.")
def lab(preset_name, task_spec, out, jobs, only, methods, betas, seeds, compare, no_progress, list_runs):
    """Run the lab: SFT pi_ref, label D_golden, sweep methods x beta x seeds, evaluate, report.

    Every stage is cached in OUT; running again skips what is finished (an interrupted run restarts).
    """
    import os
    import sys

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no per-load bars (workers inherit it)
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    import torch

    from isdaa.lab.pipeline import STAGES, default_jobs, run_lab
    from isdaa.lab.presets import get_preset, select_runs, with_runs
    from isdaa.lab.task import load_task

    torch.set_num_threads(1)
    try:
        task = load_task(task_spec) if task_spec else None
    except (ValueError, TypeError) as err:
        raise click.BadParameter(str(err), param_hint="--task") from None
    preset = get_preset(preset_name, task)
    only = _strs(only) or []
    stages = tuple(s for s in STAGES if s in only) or STAGES
    run_filter = [o for o in only if o not in STAGES]
    runs = select_runs(preset.runs, _strs(methods), _floats(betas), _ints(seeds), run_filter)
    if not runs:
        raise click.UsageError("the selection keeps no run of the preset")
    preset = with_runs(preset, runs)
    if list_runs:
        for r in runs:
            click.echo(r.run_id)
        return
    bars = _Bars(not no_progress)
    t0 = time.perf_counter()
    try:
        result = run_lab(out, preset, jobs or default_jobs(), reporter=bars, stages=stages, compare=compare)
    finally:
        bars.close()
    if result["report"]:
        click.echo(f"report: {result['report']}  ({time.perf_counter() - t0:.0f} s)")
        for line in result["summary_lines"]:
            click.echo(f"  {line}")
    else:
        click.echo(f"stages {', '.join(stages)} done ({time.perf_counter() - t0:.0f} s)")
    if result["failed"]:
        for rec in result["failed"]:
            click.echo(f"FAILED {rec['run']['run_id']}: {rec['error']} (see {rec['traceback']})", err=True)
        raise SystemExit(1)
