"""Shared fixtures: a tiny tokenizer trained on generated text and a tiny random-init Llama, saved
locally once per test session (nothing is downloaded)."""

from __future__ import annotations

import random

import pytest
import torch

torch.set_num_threads(1)  # the CI machine has 2 cores; tests run faster single-threaded


def generated_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)] + ["good", "bad", "yes", "no", "the", "a", "is"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Directory holding a tiny Llama + word tokenizer (save_pretrained layout)."""
    from isdaa.tiny import build_tiny_llama, build_word_tokenizer, save_tiny

    tok = build_word_tokenizer(corpus=generated_corpus(), vocab_size=128)
    model = build_tiny_llama(
        vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, seed=0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    return save_tiny(model, tok, tmp_path_factory.mktemp("tiny") / "model")


# Chat template families (as their hub tokenizers have them, reduced to role/content), on the tiny
# word-level tokenizer: (template, special tokens, eos_token, tokenizer adds BOS).
CHAT_FAMILIES = {
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
               ["<|im_start|>", "<|im_end|>"], "<|im_end|>", False),
    "llama3": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
               "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
               ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>", True),
    "gemma": ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
              "else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
              ["<start_of_turn>", "<end_of_turn>"], "<eos>", True),
    "bos": ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}", [], "<eos>", True),
}
CHAT_WORDS = ["user", "assistant", "model", "system", "user:", "assistant:", "system:", "hello", "there", "good",
              "bad", "yes", "no", "fine", "be", "brief"] + [f"w{i}" for i in range(40)]


def chat_family_tokenizer(name: str):
    """A word-level tokenizer with family `name`'s chat template, special tokens and EOS."""
    from isdaa.tiny import build_word_tokenizer

    template, specials, eos, add_bos = CHAT_FAMILIES[name]
    tok = build_word_tokenizer(words=CHAT_WORDS + specials, add_bos=add_bos)
    if specials:
        tok.add_tokens(specials, special_tokens=True)  # split out before the whitespace pre-tokenizer
    tok.chat_template, tok.eos_token = template, eos
    return tok


@pytest.fixture
def torchrun():
    """run(args, timeout=180): `torch.distributed.run --nproc_per_node 2 <args>` on the CPU (gloo), on a free port,
    the children in their own process group (killed together on a timeout); asserts a zero exit."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    def run(args, timeout=180):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), *map(str, args)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        assert proc.returncode == 0, stderr[-3000:]
        return stderr

    return run


@pytest.fixture(scope="module")
def tok(tiny_dir):
    """The tiny model's tokenizer, one per test module."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)
