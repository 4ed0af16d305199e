"""The toy instruction-tuning world of ``configs/llm-toy.json``: generated pool, targets and a tiny base model.

Pool skills (field ``"skill"`` of each record): ``arithmetic`` (sums as short word problems), ``lookup``
(read a value off a list of facts), ``classify`` (is a word an animal, a fruit or a colour), and the
off-skill ``string`` (reverse/sort/repeat words) and ``count`` (count words). Impurities: a fraction of
the pool is near-duplicates of a handful of examples (field ``"duplicate_of"``), and a fraction of the
on-skill examples has a wrong answer (``"mislabelled": true``).

Target tasks (their phrasing differs from the pool's), each with a small ``dev`` set in the instruction
format (the selection target) and a disjoint held-out ``eval`` set in the task format of ``evaluate.py``:
``classify_mc`` (mc), ``math`` (math, final-answer exact match), ``lookup_qa`` (qa, token F1).

The base model is a tiny Llama (``tiny.tiny_llama``) with a BPE tokenizer trained on the generated text,
pre-trained briefly (all weights, AdamW) on plain sentences stating the same kinds of facts, without chat
template; instruction following is left to fine-tuning.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from groupinf.files import atomic_write_json
from groupinf.llm.data import render_tulu, to_messages
from groupinf.llm.tiny import SPECIAL, tiny_llama, train_tokenizer, write_jsonl

NAMES = ("Tom", "Ana", "Lee", "Mia", "Sam", "Kim")
OBJECTS = ("apples", "books", "coins", "stones", "cards")
CLASSES = {
    "animal": ("cat", "dog", "bird", "horse", "fish", "cow", "duck", "goat"),
    "fruit": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "melon"),
    "colour": ("red", "blue", "green", "black", "white", "pink", "brown", "grey"),
}
KINDS = tuple(CLASSES)
ADJECTIVES = ("small", "big", "old", "fresh", "nice", "odd")
WORDS = CLASSES["animal"] + CLASSES["fruit"] + CLASSES["colour"]
SKILLS = ("arithmetic", "lookup", "classify", "string", "count")
#: the pool skill that serves each target task, and the task type
TARGETS = {"classify_mc": ("classify", "mc"), "math": ("arithmetic", "math"), "lookup_qa": ("lookup", "qa")}

Example = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy world."""

    pool_size: int = 600
    duplicate_fraction: float = 0.25
    mislabel_fraction: float = 0.1
    dev_size: int = 12
    eval_size: int = 60
    pretrain_sentences: int = 3000
    pretrain_steps: int = 300
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    intermediate_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("pool_size", "dev_size", "eval_size", "pretrain_steps", "vocab_size", "hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("duplicate_fraction", "mislabel_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def arithmetic(rng: random.Random) -> Example:
    a, b = rng.randrange(10), rng.randrange(10)
    name, thing = rng.choice(NAMES), rng.choice(OBJECTS)
    prompt = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have?"
    return prompt, f"{a} + {b} = {a + b}. The answer is {a + b}.", {"answer": a + b}


def lookup(rng: random.Random) -> Example:
    keys = rng.sample(CLASSES["animal"], 3)
    values = [rng.choice(CLASSES["colour"]) for _ in keys]
    facts = " ".join(f"The {k} is {v}." for k, v in zip(keys, values, strict=True))
    which = rng.randrange(3)
    return f"Facts: {facts} What colour is the {keys[which]}?", values[which], {"answer": values[which]}


def classify(rng: random.Random) -> Example:
    kind = rng.choice(KINDS)
    word = rng.choice(CLASSES[kind])
    return f"Is {word} an animal, a fruit or a colour?", kind, {"answer": kind}


def string(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randrange(2, 5))
    task = rng.randrange(3)
    if task == 0:
        return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words)), {}
    if task == 1:
        return f"Sort the words: {' '.join(words)}", " ".join(sorted(words)), {}
    return f"Repeat {words[0]} {len(words)} times.", " ".join([words[0]] * len(words)), {}


def count(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randrange(1, 7))
    return f"How many words are in: {' '.join(words)}", str(len(words)), {}


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "arithmetic": arithmetic,
    "lookup": lookup,
    "classify": classify,
    "string": string,
    "count": count,
}


def wrong_answer(skill: str, rng: random.Random, info: dict[str, Any], prompt: str) -> str:
    """A plausible but wrong answer for an on-skill example."""
    if skill == "arithmetic":
        wrong = (info["answer"] + rng.randrange(1, 9)) % 19
        return f"The answer is {wrong}."
    if skill == "classify":
        return rng.choice([k for k in KINDS if k != info["answer"]])
    return rng.choice([c for c in CLASSES["colour"] if c != info["answer"]])


def pool_records(config: ToyConfig) -> list[dict[str, Any]]:
    """The candidate pool (see the module docstring), shuffled, with ``id``, ``skill`` and impurity fields."""
    rng = random.Random(config.seed)
    num_dup = round(config.duplicate_fraction * config.pool_size)
    records = []
    for i in range(config.pool_size - num_dup):
        skill = SKILLS[i % len(SKILLS)]
        prompt, answer, info = GENERATORS[skill](rng)
        record: dict[str, Any] = {"skill": skill}
        if skill in ("arithmetic", "lookup", "classify") and rng.random() < config.mislabel_fraction:
            answer, record["mislabelled"] = wrong_answer(skill, rng, info, prompt), True
        records.append({"prompt": prompt, "completion": answer, **record})
    originals = rng.sample(range(len(records)), min(6, len(records)))
    suffixes = ("", " Answer briefly.", " Please answer.", "  ", " Thanks!", " Be quick.")
    for j in range(num_dup):
        source = records[originals[j % len(originals)]]
        copy = {**source, "prompt": source["prompt"] + suffixes[j % len(suffixes)], "duplicate_of": source["prompt"]}
        records.append(copy)
    rng.shuffle(records)
    return [{"id": f"pool{i}", **r} for i, r in enumerate(records)]


def target_example(name: str, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """One target example as ``(instruction record, task record)``, phrased unlike the pool."""
    if name == "classify_mc":
        kind = rng.choice(KINDS)
        word = rng.choice(CLASSES[kind])
        prompt = f"Which kind of thing is the {rng.choice(ADJECTIVES)} {word}: animal, fruit or colour?"
        return {"prompt": prompt, "completion": kind}, {
            "prompt": prompt,
            "choices": list(KINDS),
            "label": KINDS.index(kind),
        }
    if name == "math":
        a, b = rng.randrange(10), rng.randrange(10)
        thing = rng.choice(OBJECTS)
        prompt = f"A box holds {a} {thing}. We put in {b} {thing}. How many {thing} are in the box now?"
        return {"prompt": prompt, "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."}, {
            "prompt": prompt,
            "answer": str(a + b),
        }
    keys = rng.sample(CLASSES["animal"], 2)
    values = [rng.choice(CLASSES["colour"]) for _ in keys]
    which = rng.randrange(2)
    facts = f"the {keys[0]} is {values[0]} and the {keys[1]} is {values[1]}"
    prompt = f"Read: {facts}. Question: the {keys[which]} is what colour?"
    return {"prompt": prompt, "completion": values[which]}, {"prompt": prompt, "answer": values[which]}


def target_sets(name: str, config: ToyConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(dev, eval)`` of a target task: dev in the instruction format, eval in the task format, no prompt
    of eval in dev."""
    rng = random.Random(f"{config.seed}:{name}")
    dev: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(dev) < config.dev_size:
        instruction, _ = target_example(name, rng)
        if instruction["prompt"] not in seen:
            seen.add(instruction["prompt"])
            dev.append({"id": f"{name}-dev{len(dev)}", **instruction})
    for _ in range(100 * config.eval_size):
        if len(held) == config.eval_size:
            break
        _, task = target_example(name, rng)
        if task["prompt"] not in seen:
            seen.add(task["prompt"])
            held.append(task)
    if len(held) < config.eval_size:
        raise ValueError(f"{name}: only {len(held)} distinct held-out prompts; lower eval_size or dev_size")
    return dev, held


def pretraining_sentences(config: ToyConfig) -> list[str]:
    """Plain sentences about sums, kinds, colours and word lists (no chat template)."""
    rng = random.Random(f"{config.seed}:pretrain")
    sentences = []
    for _ in range(config.pretrain_sentences):
        kind = rng.randrange(4)
        if kind == 0:
            a, b = rng.randrange(10), rng.randrange(10)
            sentences.append(f"{a} + {b} = {a + b}. {a} and {b} make {a + b}.")
        elif kind == 1:
            group = rng.choice(KINDS)
            sentences.append(f"A {rng.choice(CLASSES[group])} is a {group}.")
        elif kind == 2:
            sentences.append(f"The {rng.choice(CLASSES['animal'])} is {rng.choice(CLASSES['colour'])}.")
        else:
            sentences.append(" ".join(rng.sample(WORDS, rng.randrange(2, 6))) + ".")
    return sentences


def pretrain(model, tokenizer, sentences: list[str], steps: int, seed: int, batch_size: int = 32) -> list[float]:
    """Full-weight AdamW training of ``model`` on ``sentences`` (next-token loss); returns the loss every
    tenth of the steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    losses = []
    for step in range(steps):
        picks = torch.randint(len(sentences), (batch_size,), generator=generator).tolist()
        batch = tokenizer([sentences[i] + tokenizer.eos_token for i in picks], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    return losses


def build_world(out: str | Path, config: ToyConfig) -> dict[str, Any]:
    """Write ``pool.jsonl``, ``<target>.dev.jsonl``, ``<target>.eval.jsonl``, the pre-trained ``model/`` and,
    last, ``world.json`` (paths relative to ``out``, target types, pre-training losses) under ``out``."""
    out = Path(out)
    pool = pool_records(config)
    write_jsonl(out / "pool.jsonl", pool)
    targets = {}
    texts = [render_tulu(to_messages(r, i), SPECIAL[2])[0] for i, r in enumerate(pool)]
    for name, (_, task_type) in TARGETS.items():
        dev, held = target_sets(name, config)
        write_jsonl(out / f"{name}.dev.jsonl", dev)
        write_jsonl(out / f"{name}.eval.jsonl", held)
        texts += [render_tulu(to_messages(r, i), SPECIAL[2])[0] for i, r in enumerate(dev)]
        targets[name] = {"type": task_type, "dev": f"{name}.dev.jsonl", "eval": f"{name}.eval.jsonl"}
    sentences = pretraining_sentences(config)
    tokenizer = train_tokenizer(texts + sentences, config.vocab_size)
    model = tiny_llama(
        len(tokenizer),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        intermediate_size=config.intermediate_size,
        initializer_range=0.02,
        seed=config.seed,
    )
    torch.manual_seed(config.seed)
    losses = pretrain(model, tokenizer, sentences, config.pretrain_steps, config.seed)
    tokenizer.save_pretrained(out / "model")
    model.save_pretrained(out / "model")
    record = {"model": "model", "pool": "pool.jsonl", "targets": targets, "pretrain_losses": losses}
    atomic_write_json(out / "world.json", record)
    return record
