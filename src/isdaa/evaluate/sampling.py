"""Batched, seeded sampling of responses from a causal LM, returning the exact sampled token ids.

Log-probs (KL, behavior log-probs of labelled pairs) are computed on these ids, never on re-tokenized
text: decoding then re-encoding can change the tokens and silently bias every estimator.

Backends: Hugging Face `generate` (default; left padding, KV cache) and an optional vLLM backend
(imported only when asked for; needs a model path and a GPU). Both return the same `Sample` list.

Sharded models (FSDP2 `fully_shard`, DeepSpeed ZeRO-3): every forward all-gathers parameters, a
collective, so every process must run the same sequence of forwards. `sample_responses` then generates
with `synced_gpus` (a process whose sequences are done keeps stepping until all are), and the caller
runs the same calls (same number of batches) on every process (`collective_forwards`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from isdaa.padding import pad_batch


@dataclass
class Sample:
    """One sampled response.

    prompt_index: index into the `prompts` given to `sample_responses`.
    response_ids: sampled token ids, cut after the first EOS (EOS included when it was generated).
    text: the response as emitted, decoded WITH special tokens except the terminating EOS (`response_text`):
        a sampled <unk> or <bos> stays visible to a reward and re-tokenizes to the same ids.
    finished: True when the response ended with EOS (False: cut at `max_new_tokens`).
    logp: summed log pi(y_t | x, y_<t) of the response under the UNTEMPERED model (raw logits, before
        temperature/top-p), recorded during generation (HF backend); None otherwise.
    """

    prompt_index: int
    response_ids: list[int]
    text: str
    finished: bool
    logp: float | None = None

    @property
    def length(self) -> int:
        """|y|: number of response tokens, EOS included (ARCHITECTURE.md tokenization rule)."""
        return len(self.response_ids)


def encode_prompts(tokenizer, prompts: Sequence) -> list[list[int]]:
    """Prompt token ids by the trainer's rule (`isdaa.data.encode_prompts`: a string with the
    tokenizer's special tokens unless it starts with BOS, a `ChatText` or a message list through the
    chat template without a second BOS). Prompts given as lists of ints are taken as already tokenized."""
    from isdaa.data import encode_prompts as encode

    prompts = list(prompts)
    first = prompts[0] if prompts else ""
    if not isinstance(first, str) and not (len(first) and isinstance(first[0], dict)):  # token ids
        return [list(map(int, p)) for p in prompts]
    return encode(tokenizer, prompts)


def collective_forwards(model) -> bool:
    """Whether a forward of `model` is collective across processes: its parameters are sharded (FSDP2's
    `fully_shard`, DeepSpeed ZeRO-3) in a distributed run. An FSDP1-wrapped model is refused: its unwrapped
    module holds flattened shards and cannot generate."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise ValueError("sampling from an FSDP1 model is not supported (its parameters are flattened shards "
                         "outside the wrapper's forward); use FSDP2: fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    try:
        from torch.distributed.fsdp import FSDPModule  # torch >= 2.6
    except ImportError:
        FSDPModule = ()  # noqa: N806 -- no FSDP2 in this torch
    if FSDPModule and any(isinstance(m, FSDPModule) for m in model.modules()):
        return True
    return any(hasattr(p, "ds_id") for p in model.parameters())  # ZeRO-3 partitioned parameters


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = eos if isinstance(eos, (list, tuple)) else [eos]
    return {int(e) for e in eos if e is not None}


def _cut_at_eos(ids: list[int], eos: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1], True
    return ids, False


class _RawLogpRecorder:
    """A logits processor that leaves the scores unchanged and records, for the token sampled at each
    step, its log-prob under the raw logits (it runs before the temperature / top-p warpers, which
    `generate` appends after custom processors). At call k, input_ids[:, -1] is the token sampled at
    step k-1, scored with the log-softmax kept from call k-1; `finish` scores the last token."""

    def __init__(self):
        self.prev: torch.Tensor | None = None  # (B, V) log-softmax of the previous step
        self.steps: list[torch.Tensor] = []    # per generated token: (B,)

    def __call__(self, input_ids, scores):
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """new_tokens (B, L) generated ids -> (B, L) per-token raw log-probs."""
        if self.prev is not None and new_tokens.shape[1] > len(self.steps):
            self.steps.append(self.prev.gather(1, new_tokens[:, -1:]).squeeze(1))
        if not self.steps:
            return new_tokens.new_zeros(new_tokens.shape, dtype=torch.float)
        return torch.stack(self.steps, dim=1)


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    n: int = 2,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 256,
    backend: str = "hf",
    progress: bool = False,
) -> list[Sample]:
    """Sample `n` responses per prompt; returns `len(prompts) * n` `Sample`s ordered by prompt, then
    sample (`prompt_index` = i // n).

    Deterministic for a given (seed, batch_size, model): each batch runs under
    `torch.random.fork_rng` seeded with `seed + batch index`, so the global RNG is untouched and a
    batch's samples do not depend on the batches before it. `temperature == 0` is greedy decoding.
    Prompts of different lengths are left-padded (fixed-length prompts need no padding).
    Each HF sample carries `logp`, its log-prob under the untempered model (pi_theta at T = 1), read
    from the raw logits during generation: the policy log-probs of KL samples need no second forward.
    A sharded model (`collective_forwards`) generates with `synced_gpus`: every process must make this
    call with the same number of batches (e.g. the same prompts, as the live evaluator does).
    The model's own generation_config is set aside during the call (no hidden repetition penalty etc.).
    `backend="vllm"` needs `model` to be a path (or a vllm.LLM); see `sample_responses_vllm`.
    `progress`: a tqdm bar over the HF backend's batches.
    """
    if backend == "vllm":
        return sample_responses_vllm(model, tokenizer, prompts, n, temperature, top_p, max_new_tokens, seed)
    if backend != "hf":
        raise ValueError(f"unknown sampling backend {backend!r} (hf | vllm)")
    prompt_ids = encode_prompts(tokenizer, prompts)
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    flat = [(i, p) for i, p in enumerate(prompt_ids) for _ in range(n)]  # each prompt n times, consecutively
    gen_kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "eos_token_id": sorted(eos),
                  "synced_gpus": collective_forwards(model)}
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:
        gen_kwargs.update(do_sample=False)
    from tqdm.auto import tqdm

    samples: list[Sample] = []
    bar = tqdm(total=len(flat), desc=f"sampling (T={temperature})", unit="seq", disable=not progress, leave=False)
    with _sampling_mode(model), bar:
        for b, start in enumerate(range(0, len(flat), batch_size)):
            chunk = flat[start: start + batch_size]
            samples += _generate(model, chunk, pad_id, eos, seed + b, gen_kwargs)
            bar.update(len(chunk))
    for s in samples:
        s.text = response_text(tokenizer, s.response_ids, s.finished)
    return samples


@contextmanager
def _sampling_mode(model):
    """Eval mode and a clean generation config for the call (a checkpoint's own defaults, e.g.
    repetition_penalty or top_k, would otherwise be merged in by `generate` and change the sampling
    distribution: KL estimates assume samples of pi_theta at exactly the given temperature / top-p)."""
    from transformers import GenerationConfig

    was_training, saved_config = model.training, model.generation_config
    model.eval()
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved_config
        model.train(was_training)


def _generate(model, chunk, pad_id: int, eos: set, seed: int, gen_kwargs: dict) -> list[Sample]:
    """One batch of `chunk` = [(prompt index, prompt ids)], left-padded, under a forked RNG seeded with `seed`;
    each sample with its untempered log-prob read from the raw logits (`_RawLogpRecorder`)."""
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    # fork_rng also saves/restores the CUDA generator of the model's GPU (untested here: CPU-only CI)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    padded = pad_batch([p for _, p in chunk], pad_id, side="left")
    input_ids, mask = padded["input_ids"], padded["attention_mask"]  # (B, P) each
    recorder = _RawLogpRecorder()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                             logits_processor=LogitsProcessorList([recorder]), **gen_kwargs)
    new_t = out[:, input_ids.shape[1]:]  # (B, L <= max_new_tokens)
    token_logps = recorder.finish(new_t).double().cumsum(dim=1).cpu()  # (B, L) running sums
    samples = []
    for row, ((i, _), ids) in enumerate(zip(chunk, new_t.tolist())):
        ids, finished = _cut_at_eos(ids, eos)
        samples.append(Sample(i, ids, "", finished, float(token_logps[row, len(ids) - 1]) if ids else 0.0))
    return samples


def response_text(tokenizer, ids: Sequence[int], finished: bool) -> str:
    """The text of a sampled response: every emitted token, special ones included, but not the
    terminating EOS (the tokenization rule appends it again), so that the text re-tokenizes to exactly
    the sampled ids and a reward scores what the policy actually emitted."""
    return tokenizer.decode(list(ids[:-1] if finished else ids), skip_special_tokens=False)


def sample_logps(model, prompt_ids, samples: Sequence[Sample], batch_size: int = 256, pad_id: int = 0,
                 mode: str = "auto"):
    """(S,) float64 log pi_model (T = 1) of `samples` (drawn from `model`): recorded during generation
    ("generate") or from a forward on the exact ids ("forward"). "auto": generate only for float32
    models (in bf16 the cached-generation and full-forward logits differ by round-off that would show
    up as spurious KL against a reference scored by a forward)."""
    import numpy as np

    from isdaa.logprobs import score_responses

    if mode == "auto":
        mode = "generate" if next(model.parameters()).dtype == torch.float32 else "forward"
    if mode == "generate" and all(s.logp is not None for s in samples):
        return np.array([s.logp for s in samples], dtype=np.float64)
    return score_responses(model, [prompt_ids[s.prompt_index] for s in samples],
                           [s.response_ids for s in samples], batch_size, pad_id=pad_id)


def sample_responses_vllm(model, tokenizer, prompts, n=2, temperature=0.7, top_p=0.95,
                          max_new_tokens=128, seed=0) -> list[Sample]:
    """vLLM backend (optional; `pip install vllm`, GPU). `model` is a model path or a `vllm.LLM`.
    Same output format as the HF backend; determinism is vLLM's per-request seed."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as err:  # optional dependency
        raise ImportError("the vLLM sampling backend needs `pip install vllm` and a GPU") from err
    llm = model if isinstance(model, LLM) else LLM(model=str(model), seed=seed)
    prompt_ids = encode_prompts(tokenizer, prompts)
    eos = {int(tokenizer.eos_token_id)}
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                            max_tokens=max_new_tokens, seed=seed)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params)
    samples = []
    for i, out in enumerate(outputs):
        for comp in out.outputs:
            ids, finished = _cut_at_eos(list(comp.token_ids), eos)
            if not finished and comp.finish_reason == "stop" and tokenizer.eos_token_id is not None:
                ids, finished = ids + [int(tokenizer.eos_token_id)], True  # vLLM strips the stop token
            samples.append(Sample(i, ids, response_text(tokenizer, ids, finished), finished))
    return samples
