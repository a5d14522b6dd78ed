"""Tiny Hugging Face models and tokenizers built locally (no hub): for tests, the lab and benchmarks.

They are real `LlamaForCausalLM` / `PreTrainedTokenizerFast` objects saved with `save_pretrained`, so
everything that loads them goes through exactly the code path of a hub model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}

# A minimal chat template (role: content lines), enough for the conversational format.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_word_tokenizer(
    words: Iterable[str] | None = None,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 512,
    add_bos: bool = False,
):
    """A whitespace word-level tokenizer (`tokenizers` WordLevel) wrapped as `PreTrainedTokenizerFast`.

    Give either a fixed list of `words` (the lab's exact vocabulary, ids in the given order after the
    special tokens) or a `corpus` to train the vocabulary on (tests). `add_bos` prepends BOS to
    every encoded text with special tokens (like Llama's tokenizer).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    if words is not None:
        vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    elif corpus is not None:
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=specials)
        tok.train_from_iterator(corpus, trainer=trainer)
    else:
        raise ValueError("build_word_tokenizer needs `words` or `corpus`")
    if add_bos:
        bos_id = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
        )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_tiny_llama(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    pad_token_id: int | None = 0,
    eos_token_id: int | None = 1,
    bos_token_id: int | None = 2,
):
    """A random-init `LlamaForCausalLM` from a config, seeded without touching the global RNG."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def save_tiny(model, tokenizer, out_dir: str | Path) -> Path:
    """Save a model and tokenizer side by side (safetensors), like a hub checkpoint."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
