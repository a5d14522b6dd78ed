"""Model cards and pushes to the Hugging Face Hub (huggingface_hub's ModelCardData / HfApi).

At the end of every run, the final model's folder (the output root, TRL's layout; a legacy run's final/)
gets README.md (the model card: method, beta, the IS settings, the data, the final metrics and how to
reproduce) and isdaa_config.yaml (the resolved config); with `push_to_hub: true` the model's files, the
card, the config and trainer_state.json are uploaded to `hub_model_id` (default: output_dir's folder
name; checkpoints, metrics and tracker logs stay local). A failed push (no network, no token) is one
line that says where the model is saved and how to push it later; the run stays finished
(summary.json records the error under `push_to_hub`). The token comes from the environment (HF_TOKEN)
or `huggingface-cli login`, never from a config.
"""

from __future__ import annotations

import math
from pathlib import Path

from isdaa.io import atomic_write_text
from isdaa.registry import METHODS
from isdaa.train.callbacks import TrainerCallback

CARD_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                "is/weight_mean", "is/ess", "is/clip_frac", "drift/ratio_mean", "accuracy", "eval/loss",
                "eval/rewards/accuracies", "eval/win_rate", "eval/win_rate_se", "eval/kl_k1", "eval/sqrt_kl")


def _is_hub_name(spec) -> bool:
    return isinstance(spec, str) and not Path(spec).exists() and spec.count("/") == 1 and "*" not in spec


def _method_lines(cfg) -> list[str]:
    method = getattr(cfg, "method", None)
    if method is None:
        return [f"- Objective: {'supervised fine-tuning' if cfg.kind == 'sft' else 'Bradley-Terry reward model'}"]
    entry = METHODS[method]
    lines = [f"- Method: `{method}` ({entry.family} DAA, base `{entry.base}`), beta = {cfg.beta}"]
    if METHODS[method].importance_weighted:
        o = cfg.loss
        lines.append(f"- Importance sampling (IS-DAA, arXiv 2506.08681 Eq. 11-13): clip eps = {o.is_clip} "
                     f"(log-weights <= 2 eps), self-normalized = {o.is_self_normalize}, "
                     f"length-normalized = {o.is_length_normalize}")
    lines.append(f"- Reference log-probs: {cfg.ref_logps}; reference model: {cfg.ref_model or cfg.model.name_or_path}")
    return lines


def _method_tags(method: str) -> list[str]:
    """Hub tags of a run's objective: its config name, its base DAA and `is-daa` for an importance-weighted
    method (registry facts); sft / rm runs are tagged with their kind."""
    entry = METHODS.get(method)
    if entry is None:
        return [method]
    return list(dict.fromkeys([method, entry.base, *(["is-daa"] if entry.importance_weighted else [])]))


def model_card(cfg, summary: dict, config_yaml: str, merged: bool = False) -> str:
    """README.md text for a run's final model (or, `merged`, its LoRA adapter merged into the base)."""
    from huggingface_hub import ModelCardData

    method = getattr(cfg, "method", cfg.kind)
    train = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
    names = [d for d in train if _is_hub_name(d)]
    base = cfg.model.name_or_path
    data = ModelCardData(library_name="peft" if cfg.model.lora and not merged else "transformers",
                         base_model=base if _is_hub_name(base) else None, datasets=names or None,
                         tags=["isdaa", *_method_tags(method), *(["lora"] if cfg.model.lora else [])],
                         pipeline_tag="text-generation" if cfg.kind != "rm" else "text-classification")
    name = cfg.hub_model_id or Path(cfg.output_dir).name
    adapter = cfg.model.lora is not None
    what = ("LoRA adapter merged into the base weights (`isdaa merge`)" if merged and adapter
            else "LoRA adapter (merge it with `isdaa merge`)" if adapter else "full model")
    final = summary.get("final_metrics") or {}
    rows = [f"| {k} | {final[k]:.4g} |" for k in CARD_METRICS if isinstance(final.get(k), (int, float))
            and math.isfinite(final[k])]
    lines = [
        "---", data.to_yaml(), "---", "", f"# {name}", "",
        f"{cfg.kind} training of `{base}` with isdaa (IS-DAAs, arXiv 2506.08681): {what}.", "",
        "## Training", "", *_method_lines(cfg),
        f"- Data: {', '.join(f'`{d}`' for d in train)} (split `{cfg.data.train_split}`), max_length "
        f"{cfg.data.max_length}, max_prompt_length {cfg.data.max_prompt_length}",
        f"- Optimizer: {cfg.optim.optimizer}, lr {cfg.optim.lr}, {cfg.optim.scheduler} schedule; global batch "
        f"{cfg.batch_size}, seed {cfg.seed}",
        f"- Run: {summary.get('status')} at step {summary.get('step')} of {summary.get('total_steps')}"
        + (f" ({summary['stop_reason']})" if summary.get("stop_reason") else ""), "",
        "## Final metrics", "", "| metric | value |", "|---|---:|", *rows, "",
        "## Reproduce", "", "```bash", "pip install isdaa",
        f"isdaa train {cfg.kind} --config isdaa_config.yaml", "```", "",
        "`isdaa_config.yaml` (next to this card) is the run's resolved config:", "",
        "```yaml", config_yaml.rstrip(), "```", "",
    ]
    return "\n".join(lines)


def write_card(folder, cfg, summary: dict, merged: bool = False) -> Path:
    """README.md + isdaa_config.yaml into `folder` (atomic writes)."""
    from isdaa.config import to_yaml

    folder = Path(folder)
    text = to_yaml(cfg)
    atomic_write_text(folder / "isdaa_config.yaml", text)
    atomic_write_text(folder / "README.md", model_card(cfg, summary, text, merged=merged))
    return folder / "README.md"


def push_folder(folder, repo_id: str, private: bool | None = None, message: str = "isdaa: upload model",
                allow_patterns: list[str] | None = None) -> str:
    """Create `repo_id` (if needed) and upload `folder` (only `allow_patterns`, when given); returns the
    commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()  # token: HF_TOKEN or the cached login
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, repo_type="model",
                             allow_patterns=allow_patterns)
    return getattr(info, "commit_url", str(info))


def push_error(err: BaseException, repo: str, folder) -> str:
    """One line for a failed push: the first line of the error, where the model is, how to push it later."""
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return (f"push_to_hub to {repo} failed ({type(err).__name__}: {first}); the model is saved in {folder}: push "
            f"it later with `huggingface-cli upload {repo} {folder}`")


class HubCallback(TrainerCallback):
    """At the end of a run (finished or stopped): the model card next to the final model, then the push.
    A failed push is recorded in the summary (`push_to_hub.error`) and warned about in one line."""

    def on_train_end(self, ctx):
        if not ctx.is_main_process:
            return
        from isdaa.train import checkpoint as ckpt

        cfg, folder = ctx.cfg, ckpt.final_model_dir(ctx.output_dir)
        if folder is None:
            return
        write_card(folder, cfg, ctx.summary or {})
        if not cfg.push_to_hub:
            return
        repo = cfg.hub_model_id or Path(cfg.output_dir).name
        files = ckpt.read_state(folder).get("files") if (Path(folder) / ckpt.STATE).is_file() else None
        allow = None if files is None else [*files, "README.md", "isdaa_config.yaml", ckpt.HF_STATE]
        try:
            url = push_folder(folder, repo, cfg.hub_private, f"isdaa: {getattr(cfg, 'method', cfg.kind)} run "
                                                               f"{Path(cfg.output_dir).name}, step {ctx.step}", allow)
        except Exception as err:  # network, token, permissions: the run itself is done and saved
            import warnings

            from isdaa.io import atomic_write_json

            message = push_error(err, repo, folder)
            if ctx.summary is not None:
                ctx.summary["push_to_hub"] = {"repo_id": repo, "error": message}
                atomic_write_json(Path(ctx.output_dir) / "summary.json", ctx.summary)
            warnings.warn(message, stacklevel=2)
            return
        if ctx.summary is not None:
            ctx.summary["push_to_hub"] = {"repo_id": repo, "url": url}
        print(f"pushed {folder} to {repo}: {url}")
