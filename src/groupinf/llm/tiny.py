"""A tiny random Llama, a byte-level BPE tokenizer and synthetic instruction data, all built locally.

For tests, benchmarks and smoke runs of the pipeline without downloading anything:
``save_tiny_model(dir, records)`` writes a directory that ``AutoModelForCausalLM``/``AutoTokenizer`` (and so
``--model dir``) load like any Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from groupinf.files import atomic_write_bytes
from groupinf.llm.data import render_tulu, to_messages

WORDS = ("red", "blue", "green", "cat", "dog", "bird", "tree", "stone", "river", "cloud", "apple", "lamp")
SYSTEM = "You are a helpful assistant."
SPECIAL = ("<pad>", "<s>", "</s>")
UNK = "<unk>"


def _example(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(20), rng.randrange(20)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    words = rng.choices(WORDS, k=rng.randrange(2, 6))
    if kind == 1:
        return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))
    if kind == 2:
        count = rng.randrange(1, 4)
        return f"Repeat {words[0]} {count} times.", " ".join([words[0]] * count)
    return f"Sort the words: {' '.join(words)}", " ".join(sorted(words))


def synthetic_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` instruction examples in both formats: ``messages`` (some with a system turn, some with two
    exchanges) and ``prompt``/``completion``; each has an ``id``."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        prompt, answer = _example(rng)
        if i % 3 == 2:
            records.append({"id": f"ex{i}", "prompt": prompt, "completion": answer})
            continue
        messages = [{"role": "system", "content": SYSTEM}] if i % 3 == 1 else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.3:
            follow, reply = _example(rng)
            messages += [{"role": "user", "content": follow}, {"role": "assistant", "content": reply}]
        records.append({"id": f"ex{i}", "messages": messages})
    return records


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return path


def train_tokenizer(texts: Sequence[str], vocab_size: int = 400, words: bool = False):
    """A BPE ``PreTrainedTokenizerFast`` trained on ``texts``; it prepends ``<s>`` like Llama's.

    Byte-level (GPT-2/Llama style: a word's token depends on whether a space precedes it), or with
    ``words`` split at whitespace and punctuation first, every piece marked with a leading ``▁``: a word is
    the same token at the start of a line and after a space, decoding puts one space between pieces, and
    ``<unk>`` stands for characters never seen in ``texts``. The ids do not depend on the process: the
    trainer starts from a sorted alphabet (symbols it collects itself are numbered, and equally frequent
    pairs merged, in hash-map order, which Rust seeds per process).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if words:
        special = [*SPECIAL, UNK]
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        mark = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), mark])
        tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
        alphabet = sorted({c for text in texts for c in text if not c.isspace()} | {"▁"})
    else:
        special = list(SPECIAL)
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    extra = {"unk_token": UNK} if words else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", **extra
    )


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_positions: int = 512,
    initializer_range: float = 0.2,
    seed: int = 0,
):
    """A randomly initialised ``LlamaForCausalLM`` (float32) of the given size.

    Weights are drawn with std ``initializer_range`` (Llama's default 0.02 gives a tiny model almost
    uniform predictions that LoRA can hardly move).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(out: str | Path, records: Sequence[dict[str, Any]], vocab_size: int = 400, **sizes: int) -> Path:
    """Train a tokenizer on the Tulu rendering of ``records``, build a tiny Llama (``sizes``: arguments of
    ``tiny_llama``) and save both to ``out``."""
    out = Path(out)
    texts = [render_tulu(to_messages(r, i), SPECIAL[2])[0] for i, r in enumerate(records)]
    tokenizer = train_tokenizer(texts, vocab_size)
    model = tiny_llama(len(tokenizer), **sizes)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out
