"""`isdaa eval`, `isdaa label`, `isdaa judge`: golden-reward evaluation, golden labelling, LLM judge."""

from __future__ import annotations

import json
from pathlib import Path

import click

# ---------------------------------------------------------------- data helpers

def load_rows(path: str, split: str = "test") -> list[dict]:
    """Rows of a .jsonl / .json / .parquet file, or of a hub dataset `name` (its `split`); a bad file is
    one clean `Error: ...` naming the file and line (isdaa.data.load_rows does the checking)."""
    from isdaa.data import load_rows as load

    try:
        return load(path, split=split)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err)) from None


def _read_samples(path: Path) -> list[dict]:
    from isdaa.io import read_jsonl

    try:
        return read_jsonl(path)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err)) from None


def prompts_and_chosen(rows: list[dict], tokenizer, need_chosen: bool = True, render: bool = True):
    """`isdaa.data.prompts_and_chosen` (the one row parser); a bad row is one clean `Error: ...`."""
    from isdaa.data import DataError
    from isdaa.data import prompts_and_chosen as parse

    try:
        return parse(rows, tokenizer, need_chosen, render)
    except DataError as err:
        raise click.ClickException(str(err)) from None


def _load_lm(path):
    from transformers import AutoTokenizer

    from isdaa.evaluate.evaluator import _load_causal_lm

    return _load_causal_lm(path), AutoTokenizer.from_pretrained(path)


def _protocol_options(f):
    opts = [
        click.option("--n-prompts", type=int, default=512, show_default=True, help="first N prompts (0: all)"),
        click.option("--n-samples", type=int, default=2, show_default=True, help="samples per prompt"),
        click.option("--temperature", type=float, default=0.7, show_default=True),
        click.option("--top-p", type=float, default=0.95, show_default=True),
        click.option("--max-new-tokens", type=int, default=128, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--batch-size", type=int, default=64, show_default=True),
        click.option("--kl-source", type=click.Choice(["separate", "eval"]), default="separate", show_default=True,
                     help="separate: fresh samples at --kl-temperature (unbiased at 1.0); eval: reuse the "
                          "win-rate samples (the authors' evaluator)"),
        click.option("--kl-samples", type=int, default=1, show_default=True, help="KL samples per prompt"),
        click.option("--kl-temperature", type=float, default=1.0, show_default=True),
        click.option("--plot-kl", type=click.Choice(["k1", "k3"]), default="k1", show_default=True,
                     help="KL estimator behind sqrt KL in tables, fits and plots"),
        click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _cfg(kw):
    from isdaa.evaluate.evaluator import EvalConfig

    return EvalConfig(
        n_prompts=kw["n_prompts"] or None, n_samples=kw["n_samples"], temperature=kw["temperature"],
        top_p=kw["top_p"], max_new_tokens=kw["max_new_tokens"], seed=kw["seed"], batch_size=kw["batch_size"],
        kl_source=kw["kl_source"], kl_n_samples=kw["kl_samples"], kl_temperature=kw["kl_temperature"],
        plot_kl=kw["plot_kl"], backend=kw["backend"],
    )


# ---------------------------------------------------------------- isdaa eval

@click.command("eval")
@click.option("--policy", type=click.Path(exists=True), help="policy to evaluate (save_pretrained dir)")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="evaluate every checkpoint of a training run (RUN/checkpoint-*, and the final model)")
@click.option("--ref", required=True, type=click.Path(exists=True), help="reference policy pi_ref")
@click.option("--reward", required=True, help="golden reward: reward-model dir or `module:function`")
@click.option("--data", required=True, help="evaluation set (.jsonl/.json/.parquet or hub name) with prompt, chosen")
@click.option("--split", default="test", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="output folder (single policy)")
@click.option("--alpaca", type=click.Path(dir_okay=False), help="also export generations in AlpacaEval JSON")
@click.option("--generator", default=None, help="generator name in the AlpacaEval export")
@click.option("--fit/--no-fit", default=True, show_default=True, help="--run: fit Gao curves and plot")
@_protocol_options
def eval_cmd(policy, run_dir, ref, reward, data, split, out, alpaca, generator, fit, **kw):
    """Golden win rate vs the chosen responses, KL(pi_theta || pi_ref) (k1, k3), per METHOD.md."""
    from isdaa.evaluate.evaluator import evaluate_policy, evaluate_run, export_alpaca, summary_markdown
    from isdaa.evaluate.rewards import load_reward

    if bool(policy) == bool(run_dir):
        raise click.UsageError("give exactly one of --policy and --run")
    cfg = _cfg(kw)
    ref_model, tok = _load_lm(ref)
    prompts, chosen = prompts_and_chosen(load_rows(data, split), tok)
    reward_fn = load_reward(reward)
    if run_dir:
        rows = evaluate_run(run_dir, ref_model, tok, prompts, chosen, reward_fn, cfg, include_final=True,
                            progress=lambda r: click.echo(f"{r['name']}: win rate {r['win_rate']:.3f}, "
                                                          f"sqrt KL {r['sqrt_kl']:.3f}", err=True))
        eval_dir = Path(run_dir) / "eval"
        click.echo((eval_dir / "table.md").read_text())
        if fit and len(rows) >= 2:
            _fit_and_plot(eval_dir, cfg.plot_kl)
        return
    if not out:
        raise click.UsageError("--policy needs --out")
    policy_model, _ = _load_lm(policy)
    res = evaluate_policy(policy_model, ref_model, tok, prompts, chosen, reward_fn, cfg, out_dir=out)
    if alpaca:
        n = len(prompts) if cfg.n_prompts is None else min(cfg.n_prompts, len(prompts))
        export_alpaca(res["samples"], prompts[:n], generator or Path(policy).name, alpaca)
    click.echo(summary_markdown(res))


def _fit_and_plot(eval_dir: Path, kl: str) -> None:
    """Fit both Gao forms to the run's checkpoints (minus the reference) and draw the figure."""
    from isdaa.evaluate.fits import fit_results
    from isdaa.io import atomic_write_json
    from isdaa.plots import load_eval_points, plot_winrate_vs_sqrt_kl

    ref = json.loads((eval_dir / "reference.json").read_text())
    results = [json.loads(p.read_text()) for p in sorted(eval_dir.glob("step-*.json"))]
    fits = {}
    for form in ("rl", "bon"):
        f = fit_results(results, ref, form=form, n_boot=200, kl=kl)
        f.pop("boot")
        fits[form] = f
    atomic_write_json(eval_dir / "fits.json", fits)
    points = load_eval_points([eval_dir.parent])
    plot_winrate_vs_sqrt_kl(points, eval_dir / "winrate_vs_sqrt_kl.png", fit_form="rl")
    click.echo(f"fits: {json.dumps({k: {'alpha': v['alpha'], 'beta': v['beta']} for k, v in fits.items()})}")


# ---------------------------------------------------------------- isdaa label

@click.command("label")
@click.option("--policy", required=True, type=click.Path(exists=True), help="sampler pi_b (usually the SFT policy)")
@click.option("--ref", type=click.Path(exists=True), help="reference policy (default: the sampler)")
@click.option("--reward", required=True, help="golden reward: reward-model dir or `module:function`")
@click.option("--data", required=True, help="prompts (.jsonl/.json/.parquet or hub name) with a prompt column")
@click.option("--split", default="train", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder (shards, pairs.jsonl)")
@click.option("--n", type=int, default=2, show_default=True, help="samples per prompt (n/2 pairs)")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--labeling", type=click.Choice(["bt", "argmax"]), default="bt", show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--max-length", type=int, default=640, show_default=True,
              help="the trainer's data.max_length: log-probs are stored for the ids it will see")
@click.option("--max-prompt-length", type=int, default=512, show_default=True,
              help="the trainer's data.max_prompt_length")
@click.option("--n-prompts", type=int, default=0, help="first N prompts (0: all)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--shard-size", type=int, default=1024, show_default=True)
def label(policy, ref, reward, data, split, out, n, temperature, labeling, max_new_tokens, max_length,
          max_prompt_length, n_prompts, seed, batch_size, shard_size):
    """Golden-labelled preference pairs (D_golden) with behavior and reference log-probs; resumable."""
    from isdaa.evaluate.label import label_pairs
    from isdaa.evaluate.rewards import load_reward

    model, tok = _load_lm(policy)
    ref_model = _load_lm(ref)[0] if ref else None
    prompts, _ = prompts_and_chosen(load_rows(data, split), tok, need_chosen=False, render=False)
    prompts = prompts[:n_prompts] if n_prompts else prompts
    rows = label_pairs(model, tok, prompts, load_reward(reward), n=n, temperature=temperature,
                       labeling=labeling, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       ref=ref_model, out_dir=out, shard_size=shard_size,
                       progress=lambda k, m: click.echo(f"shard {k}/{m}", err=True), max_length=max_length,
                       max_prompt_length=max_prompt_length, behavior_name=policy)
    click.echo(f"{len(rows)} pairs -> {Path(out) / 'pairs.jsonl'}")


# ---------------------------------------------------------------- isdaa judge

@click.command("judge")
@click.option("--samples", required=True, type=click.Path(exists=True),
              help="samples.jsonl of `isdaa eval` (prompt_idx, response), or its output folder")
@click.option("--data", required=True, help="the evaluation set used by `isdaa eval` (prompt, chosen)")
@click.option("--split", default="test", show_default=True)
@click.option("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
@click.option("--model", required=True, help="judge model name")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="name of the environment variable holding the API key (the key is never written)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="judge.json")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="default: next to --out")
@click.option("--workers", type=int, default=8, show_default=True)
@click.option("--max-retries", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the A/B position flips")
def judge(samples, data, split, base_url, model, api_key_env, out, cache_dir, workers, max_retries, seed):
    """LLM-judge win rate of the policy's samples against the chosen responses (paper Table 2 prompt)."""
    from isdaa.evaluate.judge import JudgeClient, judge_pairs
    from isdaa.io import atomic_write_json

    path = Path(samples)
    recs = _read_samples(path / "samples.jsonl" if path.is_dir() else path)
    rows = load_rows(data, split)
    if any("prompt" not in r or "chosen" not in r for r in rows):
        raise click.ClickException(f"{data}: the judge needs `prompt` and `chosen` in every row")
    prompts = [r["prompt"] for r in rows]
    chosen = [r["chosen"] for r in rows]
    bad = [i for i, r in enumerate(recs)
           if not (isinstance(r.get("prompt_idx"), int) and 0 <= r["prompt_idx"] < len(rows)
                   and isinstance(r.get("response"), str))]
    if bad:
        raise click.ClickException(f"{path}: sample record {bad[0]} needs `prompt_idx` (0..{len(rows) - 1}) and a "
                                   "string `response`")
    client = JudgeClient(base_url, model, api_key_env=api_key_env,
                         cache_dir=cache_dir or Path(out).with_suffix("").as_posix() + "-cache",
                         max_retries=max_retries)
    res = judge_pairs(client, [prompts[r["prompt_idx"]] for r in recs], [r["response"] for r in recs],
                      [chosen[r["prompt_idx"]] for r in recs], seed=seed, workers=workers)
    atomic_write_json(out, res)
    click.echo(f"judge win rate {res['win_rate']:.3f} +- {res['se']:.3f} ({res['n_parsed']} parsed, "
               f"{res['n_unparseable']} unparseable, {res['n_errors']} failed)")
