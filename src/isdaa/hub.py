"""Model cards and pushes to the Hugging Face Hub (huggingface_hub's ModelCardData / HfApi).

At the end of every run, RUN/final/ gets README.md (the model card: method, beta, the IS settings, the
data, the final metrics and how to reproduce) and isdaa_config.yaml (the resolved config); with
`push_to_hub: true` the folder is uploaded to `hub_model_id` (default: output_dir's folder name). The
token comes from the environment (HF_TOKEN) or `huggingface-cli login`, never from a config.
"""

from __future__ import annotations

import math
from pathlib import Path

from isdaa.io import atomic_write_text
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
    lines = [f"- Method: `{method}`, beta = {cfg.beta}"]
    if method.startswith("is-"):
        o = cfg.loss
        lines.append(f"- Importance sampling (IS-DAA, arXiv 2506.08681 Eq. 11-13): clip eps = {o.is_clip} "
                     f"(log-weights <= 2 eps), self-normalized = {o.is_self_normalize}, "
                     f"length-normalized = {o.is_length_normalize}")
    lines.append(f"- Reference log-probs: {cfg.ref_logps}; reference model: {cfg.ref_model or cfg.model.name_or_path}")
    return lines


def model_card(cfg, summary: dict, config_yaml: str, merged: bool = False) -> str:
    """README.md text for a run's final model (or, `merged`, its LoRA adapter merged into the base)."""
    from huggingface_hub import ModelCardData

    method = getattr(cfg, "method", cfg.kind)
    train = cfg.data.train if isinstance(cfg.data.train, list) else [cfg.data.train]
    names = [d for d in train if _is_hub_name(d)]
    base = cfg.model.name_or_path
    data = ModelCardData(library_name="peft" if cfg.model.lora and not merged else "transformers",
                         base_model=base if _is_hub_name(base) else None, datasets=names or None,
                         tags=["isdaa", method, *(["lora"] if cfg.model.lora else [])],
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


def push_folder(folder, repo_id: str, private: bool | None = None, message: str = "isdaa: upload model") -> str:
    """Create `repo_id` (if needed) and upload `folder`; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()  # token: HF_TOKEN or the cached login
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, repo_type="model")
    return getattr(info, "commit_url", str(info))


class HubCallback(TrainerCallback):
    """At the end of a run (finished or stopped): the model card into RUN/final/, then the push."""

    def on_train_end(self, ctx):
        if not ctx.is_main_process:
            return
        cfg, final = ctx.cfg, Path(ctx.output_dir) / "final"
        if not final.is_dir():
            return
        write_card(final, cfg, ctx.summary or {})
        if cfg.push_to_hub:
            repo = cfg.hub_model_id or Path(cfg.output_dir).name
            url = push_folder(final, repo, cfg.hub_private, f"isdaa: {getattr(cfg, 'method', cfg.kind)} run "
                                                              f"{Path(cfg.output_dir).name}, step {ctx.step}")
            print(f"pushed {final} to {repo}: {url}")
