"""`isdaa merge RUN_OR_ADAPTER --out DIR`: a LoRA adapter merged into its base model (peft's
`merge_and_unload`), saved with safetensors, the tokenizer and a model card: a plain transformers
checkpoint (AutoModelForCausalLM loads it). `--push-to-hub REPO` uploads the merged folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click


def _adapter_dir(path: Path) -> Path:
    """A run directory (its root, TRL's layout, or a legacy final/) or an adapter folder itself."""
    for candidate in (path, path / "final"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise click.ClickException(f"{path}: no LoRA adapter (adapter_config.json) here or in {path / 'final'}")


def merge_adapter(adapter: Path, out: Path, base: str | None = None, dtype: str = "fp32") -> Path:
    """Merge `adapter` into `base` (default: the adapter's base_model_name_or_path) and save to `out`
    atomically (a temporary folder renamed at the end). Weights load from safetensors only."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.train.models import DTYPES, safe_from_pretrained

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():  # peft would fall back to a pickle adapter_model.bin
        raise ValueError(f"{adapter}: no adapter_model.safetensors (pickle adapters are not loaded)")
    peft_config = PeftConfig.from_pretrained(str(adapter))
    base = base or peft_config.base_model_name_or_path
    model = get_peft_model(safe_from_pretrained(AutoModelForCausalLM, base, dtype=DTYPES[dtype]), peft_config)
    result = set_peft_model_state_dict(model, load_file(weights))
    if result.unexpected_keys:
        raise ValueError(f"{weights}: keys that fit no adapter module, e.g. {result.unexpected_keys[:3]}")
    merged = model.merge_and_unload()
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer_from = adapter if (adapter / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@click.command(name="merge")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="folder for the merged model")
@click.option("--base", default=None, help="base model (default: the adapter's base_model_name_or_path)")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--push-to-hub", "repo", default=None, help="upload the merged folder to this hub repo")
def merge(path, out, base, dtype, repo):
    """Merge a run's LoRA adapter (RUN, a legacy RUN/final, or an adapter folder) into its base model."""
    adapter = _adapter_dir(path)
    try:
        merge_adapter(adapter, out, base, dtype)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    run = next((r for r in (adapter, adapter.parent) if (r / "config.yaml").exists()), None)  # root or final/
    if run is not None:
        from isdaa.config import load_run_config
        from isdaa.hub import write_card

        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        write_card(out, load_run_config(run / "config.yaml"), summary, merged=True)
    if repo:
        from isdaa.hub import push_folder

        click.echo(f"pushed to {repo}: {push_folder(out, repo, message=f'isdaa merge of {adapter}')}")
    click.echo(json.dumps({"merged": str(out), "adapter": str(adapter)}))
