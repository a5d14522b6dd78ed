"""Loading models and tokenizers: any AutoModelForCausalLM name or local path (a one-label
AutoModelForSequenceClassification for reward models), dtype, gradient checkpointing, LoRA.

Security: weights load from safetensors only (`use_safetensors=True`; a folder with only pickle
weights is refused with an explanation); `trust_remote_code` is passed through from the config,
where it defaults to False."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto", "fp64": torch.float64}


def load_tokenizer(mcfg):
    """Tokenizer; without a pad token, EOS is reused as pad (embeddings are never resized: padded
    positions are masked out of attention and of every loss)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mcfg.tokenizer or mcfg.name_or_path, revision=mcfg.revision,
                                        trust_remote_code=mcfg.trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_weights(name_or_path: str) -> None:
    """Weights load only from safetensors: a pickle checkpoint (pytorch_model.bin, ...) can run code
    when unpickled, so a folder holding one without safetensors is refused with the way out."""
    path = Path(name_or_path)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{path} holds pickle weights ({', '.join(pickles)}) and no .safetensors file; isdaa "
                         "does not unpickle model files (loading a pickle can execute arbitrary code). If you "
                         "trust it, convert it once: AutoModel.from_pretrained(path).save_pretrained(path, "
                         "safe_serialization=True)")


def safe_from_pretrained(auto_cls, name_or_path: str, **kw):
    """`auto_cls.from_pretrained` from safetensors only; a folder of pickle weights is refused."""
    refuse_pickle_weights(name_or_path)
    try:
        return auto_cls.from_pretrained(name_or_path, use_safetensors=True, **kw)
    except OSError as err:  # e.g. a hub repo without safetensors, or a wrong path
        raise ValueError(f"cannot load model {name_or_path!r} from safetensors weights: {err}") from None


def _kwargs(mcfg) -> dict:
    kw = {"revision": mcfg.revision, "trust_remote_code": mcfg.trust_remote_code, "dtype": DTYPES[mcfg.dtype]}
    if mcfg.attn_implementation:
        kw["attn_implementation"] = mcfg.attn_implementation
    return kw


def _finish(model, mcfg, tokenizer, task_type: str, trainable: bool = True):
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if trainable and mcfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if trainable and mcfg.lora is not None:
        try:
            import peft
        except ImportError as err:
            raise ImportError("model.lora needs peft: pip install 'isdaa[peft]'") from err
        lcfg = peft.LoraConfig(r=mcfg.lora.r, lora_alpha=mcfg.lora.alpha, lora_dropout=mcfg.lora.dropout,
                               target_modules=mcfg.lora.target_modules, task_type=task_type)
        if mcfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = peft.get_peft_model(model, lcfg)
    return model


def disable_dropout(model) -> int:
    """Dropout off in place (TRL's `disable_dropout`): every `nn.Dropout` gets p = 0, and every float
    module attribute named `*dropout*` (attention dropout read at forward time, e.g. Llama's
    `attention_dropout`, which TRL's version misses) is set to 0. The config is left as saved.
    Returns how many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed


@contextlib.contextmanager
def loading_unprepared():
    """Models loaded inside are whole on every process: for a model that accelerate never prepares (a frozen
    reference, the live evaluator's reference and reward models). Under an FSDP launch with
    `fsdp_cpu_ram_efficient_loading`, transformers 4.x loads weights on local rank 0 only (the other
    processes get uninitialized tensors) expecting FSDP's `prepare` to broadcast rank 0's (5.25 loads them
    everywhere; the guard is kept for the versions pyproject allows); under DeepSpeed ZeRO-3 with
    `zero3_init_flag`, `from_pretrained` partitions the model (`zero.Init`) for an engine it never gets."""
    import os

    from isdaa.train.accel_compat import zero3_init_off

    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        with zero3_init_off():
            yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_causal_lm(mcfg, tokenizer, name_or_path: str | None = None, trainable: bool = True,
                   no_dropout: bool = False):
    """A causal LM; `no_dropout`: `disable_dropout` on the base model (before LoRA: the adapter keeps
    lora.dropout, which has no effect before the first update since B = 0). A frozen model (`trainable`
    false: never prepared by accelerate) loads its weights on every process (`loading_unprepared`)."""
    from transformers import AutoModelForCausalLM

    with contextlib.nullcontext() if trainable else loading_unprepared():
        model = safe_from_pretrained(AutoModelForCausalLM, name_or_path or mcfg.name_or_path, **_kwargs(mcfg))
    if no_dropout:
        disable_dropout(model)
    model = _finish(model, mcfg, tokenizer, "CAUSAL_LM", trainable)
    if not trainable:
        model.eval().requires_grad_(False)
    return model


def load_reward_model(mcfg, tokenizer):
    from transformers import AutoModelForSequenceClassification

    model = safe_from_pretrained(AutoModelForSequenceClassification, mcfg.name_or_path, num_labels=1, **_kwargs(mcfg))
    return _finish(model, mcfg, tokenizer, "SEQ_CLS")


def compile_unavailable() -> str | None:
    """Why `compile: true` cannot work here (None: it can): torch < 2.6, or no C++ compiler for inductor's
    CPU kernels (CUDA kernels need triton, which CUDA builds of torch ship)."""
    import os
    import shutil

    if not hasattr(torch.compiler, "set_stance"):
        return f"torch >= 2.6 is needed (installed: {torch.__version__})"
    if not (torch.cuda.is_available() or any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++",
                                                                           "clang++"))):
        return "no C++ compiler (g++, c++, clang++ or $CXX) for inductor's CPU kernels"
    return None


def compile_blocks(model) -> int:
    """`torch.compile` each repeated block (the decoder layers: every ModuleList whose children share one
    class) in place, with dynamic shapes (batches change length every step). This is accelerate's regional
    compilation (`compile_regions`) without its copy of the model: one compiled graph serves every layer, and
    parameter names, checkpoints, DDP and peft wrappers are untouched. Returns the number of blocks."""
    if reason := compile_unavailable():
        raise ValueError(f"compile: true cannot work here: {reason}")
    lists = [name for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1
             and len({type(c) for c in m}) == 1]
    outer = [n for n in lists if not any(n.startswith(o + ".") for o in lists if o != n)]  # not MoE experts inside
    blocks = [block for name in outer for block in model.get_submodule(name)]
    if not blocks:
        raise ValueError(f"compile: true found no repeated blocks (decoder layers) in {type(model).__name__}")
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


@contextlib.contextmanager
def eager():
    """Compiled blocks run eagerly inside: sampling and evaluation (other shapes, no gradient) must not
    trigger compilations of their own."""
    if not hasattr(torch.compiler, "set_stance"):  # torch < 2.6: nothing can be compiled (compile_blocks)
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield
