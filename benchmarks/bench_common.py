"""Shared pieces of the training benchmark: model sizes, generated preference data, matmul rate.

Imported by `bench_train.py` (the driver) and `bench_worker.py` (one contender in one process). Nothing here
imports TRL; only the worker does, and only for the TRL contender.
"""

from __future__ import annotations

import json
import os
import random
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Random-init Llamas. Parameter counts with the default vocabulary (8192, untied head):
#   10m: 6 layers x 1.05M + 2 x 2.1M (embedding + LM head) = 10.5M
#   40m: 8 layers x 4.2M  + 2 x 4.2M                        = 41.9M
#  200m: 12 layers x 16.8M + 2 x 8.4M                       = 218M (GPU runs)
# At a real vocabulary the embedding and the head dominate: 10m at 128,256 is 72M parameters, 66M of them in
# the embedding and the head. `100m` is the 100M class at a 128k vocabulary (tied embeddings, as Llama 3.2
# ties them): 8 layers x 4.2M + 65.7M = 99.3M at 128,256. `800m` (GPU runs) is the 0.5B-1B class: 16 layers of
# 1536 (12 heads of 128), tied: 16 x 37.7M + 197M = 0.80B at 128,256.
SIZES = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),  # smoke tests only
    "10m": dict(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=1024),
    "40m": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048),
    "100m": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048, tie_word_embeddings=True),
    "200m": dict(hidden_size=1024, num_layers=12, num_heads=16, intermediate_size=4096),
    "800m": dict(hidden_size=1536, num_layers=16, num_heads=12, intermediate_size=6144, tie_word_embeddings=True),
}
# Vocabularies of the models people align (`--vocab-size NAME`): the `vocab_size` of their configs.
VOCABS = {"8k": 8192, "llama2": 32000, "mistral": 32768, "llama3": 128256, "qwen2.5": 151936, "gemma2": 256000}


def vocab_size(value: str | int) -> int:
    """A vocabulary size from a number or a VOCABS name (`llama3` -> 128256)."""
    if str(value).lower() in VOCABS:
        return VOCABS[str(value).lower()]
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"vocabulary {value!r}: a number or one of {', '.join(VOCABS)}") from None
    if n <= SPECIALS:
        raise ValueError(f"vocabulary {n}: must exceed the {SPECIALS} special tokens")
    return n


SPECIALS = 4  # <pad> <eos> <bos> <unk> come first in build_word_tokenizer's vocabulary


@dataclass(frozen=True)
class Workload:
    """Everything every contender must share. One JSON-able record, passed to each worker."""

    size: str = "10m"
    vocab_size: int = 8192
    prompt_len: int = 128  # prompt tokens (no BOS)
    response_len: int = 128  # response tokens, EOS included
    vary_lengths: bool = False  # responses of uniform random length in [response_len/2, response_len]
    batch_size: int = 8  # preference pairs per optimizer step
    warmup_steps: int = 2
    measure_steps: int = 5
    threads: int = 2
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 (mixed precision on the device)
    compile: bool = False  # torch.compile in both trainers (isdaa: compile, its layers; TRL: torch_compile)
    gradient_checkpointing: bool = False  # both trainers recompute activations in the backward (non-reentrant)
    lr: float = 1e-6
    beta: float = 0.1
    seed: int = 0

    @property
    def steps(self) -> int:
        return self.warmup_steps + self.measure_steps

    @property
    def n_pairs(self) -> int:
        return self.batch_size * self.steps

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls(**json.loads(text))


def build_assets(work: Workload, out_dir: Path) -> dict:
    """Save the random-init model + tokenizer and the generated dataset once; every worker loads these files."""
    from isdaa.tiny import build_tiny_llama, build_word_tokenizer, save_tiny

    out_dir.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(work.vocab_size - SPECIALS)]
    tok = build_word_tokenizer(words=words)
    model = build_tiny_llama(
        vocab_size=len(tok), max_position_embeddings=work.prompt_len + work.response_len + 8,
        seed=work.seed, **SIZES[work.size],
    )
    model_dir = save_tiny(model, tok, out_dir / f"model-{work.size}")
    data_path = out_dir / "pairs.jsonl"
    rows = generate_pairs(work, words)
    with open(data_path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    n = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    n_embed = 0 if tied else model.get_input_embeddings().weight.numel()  # a tied table is the head's matmul
    return {"model_dir": str(model_dir), "data_path": str(data_path), "params": n, "matmul_params": n - n_embed,
            "vocab_size": len(tok)}


def generate_pairs(work: Workload, words: list[str]) -> list[dict]:
    """Preference pairs of exactly `prompt_len` prompt tokens and `response_len` response tokens (EOS included,
    appended by the trainers), or random response lengths with `vary_lengths`. Words are separated by spaces and
    responses start with a space, so `prompt + chosen` tokenizes to the concatenation of the two (TRL's rule) and
    to `tokenizer(prompt) + tokenizer(chosen)` (isdaa's rule). Behavior log-probs are not given: pi_b = pi_ref."""
    rng = random.Random(work.seed)

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    def resp_len():
        if not work.vary_lengths:
            return work.response_len
        return rng.randint(max(1, work.response_len // 2), work.response_len)

    return [
        {"prompt": text(work.prompt_len), "chosen": " " + text(resp_len() - 1), "rejected": " " + text(resp_len() - 1)}
        for _ in range(work.n_pairs)
    ]


def step_tokens(work: Workload) -> int:
    """Tokens in one optimizer step, both sequences of every pair, prompt included (the unit of tokens/s).
    With `vary_lengths` this is the nominal maximum; workers report the real count."""
    return 2 * work.batch_size * (work.prompt_len + work.response_len)


def necessary_fraction(work: Workload) -> float:
    """The share of `step_tokens` a trainer must run through the model: each pair's prompt once, then both
    responses (the chosen and rejected rows share the prompt's activations). The FLOP count of the
    "% matmul rate" column uses it, so that a trainer that skips the prompt's second pass is not credited
    with work it does not do."""
    return (work.prompt_len + 2 * work.response_len) / (2 * (work.prompt_len + work.response_len))


def set_threads(threads: int) -> None:
    """Threads for torch's intra-op pool; set before the first parallel op. Inter-op kept at 1."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started
        pass


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("WANDB_DISABLED", "true")
    return env


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def square_n(device: str, dtype: str, n: int = 2048) -> int:
    """The n of the n^3 matmul timed for the matmul rate: bf16 on CPUs at most 1024 (CPUs without bf16 matmul
    units run it ~100x slower than fp32; a smaller matmul there, the same rate)."""
    return n if dtype == "float32" or device.startswith("cuda") else min(n, 1024)


def matmul_rate(device: str, dtype: str, n: int = 2048, reps: int = 5) -> float:
    """Measured dense matmul rate in FLOP/s (median over reps of an n^3 matmul, 2 n^3 FLOPs each)."""
    import torch

    dt = getattr(torch, dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dt)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dt)
    c = a @ b  # warm-up (and library initialisation)
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * n**3 / times[len(times) // 2]


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class MemoryProbe:
    """What a training step holds for its backward: autograd's saved tensors (`saved_tensors_hooks`; each
    storage once; the weights themselves, saved by every matmul, excluded), by kind: `logits` (last dimension
    = the vocabulary: logits, their softmax), `attention` (4D with square last dimensions: scores, probabilities,
    masks) and `activations` (the rest). Counted over one step's forwards, reset at its end (`end_step`); the
    step with the largest total among the measured ones is kept. Under gradient checkpointing the checkpointed
    layers save nothing here (their inputs are kept outside autograd's hooks and not counted)."""

    KINDS = ("logits", "attention", "activations")

    def __init__(self, vocab: int):
        self.vocab = vocab
        self.step = dict.fromkeys(self.KINDS, 0)
        self.peak = dict.fromkeys(self.KINDS, 0)
        self._seen: set[int] = set()

    def _pack(self, t):
        base = t if t._base is None else t._base
        if not (base.is_leaf and base.requires_grad):
            storage = t.untyped_storage()
            if storage.data_ptr() not in self._seen:
                self._seen.add(storage.data_ptr())
                kind = ("logits" if t.dim() and t.shape[-1] == self.vocab else
                        "attention" if t.dim() == 4 and t.shape[-1] == t.shape[-2] > 1 else "activations")
                self.step[kind] += storage.nbytes()
        return t

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def end_step(self, measured: bool) -> None:
        if measured and sum(self.step.values()) > sum(self.peak.values()):
            self.peak = dict(self.step)
        self.step = dict.fromkeys(self.KINDS, 0)
        self._seen.clear()

    def peak_mb(self) -> dict:
        return {k: v / 2**20 for k, v in self.peak.items()}


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux /proc; the peak where it is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()
