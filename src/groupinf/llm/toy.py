"""The toy instruction-tuning world of ``configs/llm-toy.json``: generated pool, targets and a tiny base model.

Knowledge (fixed tables): 40 nouns of four kinds (animal, fruit, colour, tool), 24 made-up countries with
their capitals, and sums of two digits.

Base model: a tiny Llama (``tiny.tiny_llama``) with a word-level BPE tokenizer (``tiny.train_tokenizer``
with ``words=True``, so a word is one token wherever it stands), pre-trained (all weights, AdamW) on
generated documents of plain sentences that state the knowledge in several phrasings ("A cat is an
animal.", "The capital of Babaria is Nebaton.", "Tom has 3 apples and gets 4 more. Now Tom has 7
apples."), in-context facts and word lists. Some documents are one exchange in the Tulu chat format: in a
``chat_fraction`` of them the assistant turn copies one word of a user statement, which trains the chat
tags and makes the assistant's first word attend to the user's words; a ``quiz_fraction`` are "quiz pages"
that answer a pool-style ``classify`` question with a random kind (without them the base model picks the
right kind among the listed ones by association alone). So the base model knows the facts but
answers questions at chance (it never writes "3 + 4 = 7" or a capital in reply to a question), and a
modest number of examples of a skill teaches it to answer that skill's questions from what it knows.

Pool skills (field ``"skill"``): ``arithmetic`` (sums as word problems, answered "3 + 4 = 7"),
``capital``, ``classify`` (the kind of a noun), and the off-target ``lookup`` (read a colour off in-context
facts), ``string`` (reverse/sort/repeat words), ``count`` (count words) and ``compare`` (the larger of two
digits). Impurities: near-duplicates of two correct examples of each on-target skill (field
``"duplicate_of"``), and wrong answers on a fraction of the on-target examples (``"mislabelled": true``).

Target tasks, phrased unlike the pool, each with a ``dev`` set in the instruction format (the selection
target) and disjoint ``val`` and ``eval`` sets in the task format of ``evaluate.py``: ``classify_mc`` (mc
over the four kinds), ``math`` (word problems, final-answer exact match), ``capital_qa`` (qa, token F1).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from groupinf.checks import check_count
from groupinf.files import atomic_write_json
from groupinf.llm.data import render_tulu, to_messages
from groupinf.llm.tiny import SPECIAL, tiny_llama, train_tokenizer, write_jsonl

NAMES = ("Tom", "Ana", "Lee", "Mia", "Sam", "Kim", "Bob", "Eva")
OBJECTS = ("apples", "books", "coins", "stones", "cards", "cups")
CLASSES = {
    "animal": ("cat", "dog", "bird", "horse", "fish", "cow", "duck", "goat", "frog", "bear"),
    "fruit": ("apple", "pear", "plum", "grape", "lemon", "mango", "peach", "melon", "lime", "kiwi"),
    "colour": ("red", "blue", "green", "black", "white", "pink", "brown", "grey", "gold", "tan"),
    "tool": ("hammer", "saw", "drill", "spade", "knife", "rake", "wrench", "axe", "file", "chisel"),
}
KINDS = tuple(CLASSES)
ARTICLE = {"animal": "an animal", "fruit": "a fruit", "colour": "a colour", "tool": "a tool"}
WORDS = tuple(word for words in CLASSES.values() for word in words)
ADJECTIVES = ("small", "big", "old", "new", "nice", "odd", "tiny", "huge", "fine", "plain", "young", "clean")
_SYLLABLES = ("ba", "do", "ki", "lu", "mo", "ne", "ra", "si", "tu", "vo")
COUNTRIES = tuple(
    f"{a}{b}{end}".capitalize() for a in _SYLLABLES[:2] for b in _SYLLABLES[:6] for end in ("ria", "land")
)
CAPITALS = tuple(f"{a}{b}ton".capitalize() for a in _SYLLABLES[5:9] for b in _SYLLABLES[4:10])
CAPITAL = dict(zip(COUNTRIES, CAPITALS, strict=True))
SKILLS = ("arithmetic", "capital", "classify", "lookup", "string", "count", "compare")
#: the pool skill that serves each target task, and the task type
TARGETS = {"classify_mc": ("classify", "mc"), "math": ("arithmetic", "math"), "capital_qa": ("capital", "qa")}
ON_TARGET = frozenset(skill for skill, _ in TARGETS.values())

#: the version of the generators below: part of the world's stage key, so that a run directory built by
#: other generators is reported stale instead of reused (2: classify_mc lists the kinds with articles)
GENERATOR_VERSION = 2

#: words a copying assistant turn in pre-training never repeats
STOP_WORDS = frozenset(("the", "a", "an", "is", "and"))

Example = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class ToyConfig:
    """Sizes of the toy world, its base model and its pre-training."""

    pool_size: int = 1200
    duplicate_fraction: float = 0.1
    mislabel_fraction: float = 0.1
    dev_size: int = 48
    val_size: int = 200
    eval_size: int = 200
    pretrain_documents: int = 40000
    pretrain_steps: int = 3000
    chat_fraction: float = 0.3
    quiz_fraction: float = 0.15
    vocab_size: int = 1000
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        counts = ("pool_size", "dev_size", "val_size", "eval_size", "pretrain_documents", "pretrain_steps")
        for name in (*counts, "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            check_count(getattr(self, name), name)
        for name in ("duplicate_fraction", "mislabel_fraction", "chat_fraction", "quiz_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.chat_fraction + self.quiz_fraction >= 1:
            raise ValueError("chat_fraction + quiz_fraction must be < 1 (the rest are plain documents)")


def arithmetic(rng: random.Random) -> Example:
    a, b = rng.randrange(10), rng.randrange(10)
    name, thing = rng.choice(NAMES), rng.choice(OBJECTS)
    prompt = rng.choice(
        (
            f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have?",
            f"What is {a} plus {b}?",
            f"Add {a} and {b}.",
            f"{name} had {a} {thing}. {name} found {b} {thing}. How many {thing} now?",
            f"A bag holds {a} {thing}. We add {b} {thing}. How many {thing} are in the bag?",
        )
    )
    return prompt, f"{a} + {b} = {a + b}", {"a": a, "b": b}


def capital(rng: random.Random) -> Example:
    country = rng.choice(COUNTRIES)
    prompt = rng.choice(
        (
            f"What is the capital of {country}?",
            f"Name the capital city of {country}.",
            f"Which city is the capital of {country}?",
            f"Tell me the capital of {country}.",
        )
    )
    return prompt, CAPITAL[country], {"answer": CAPITAL[country]}


def classify(rng: random.Random) -> Example:
    kind = rng.choice(KINDS)
    word = rng.choice(CLASSES[kind])
    prompt = rng.choice(
        (
            f"Is {word} an animal, a fruit, a colour or a tool?",
            f"What kind of thing is {word}?",
            f"Name the category of the word {word}.",
            f"What kind of thing is the {rng.choice(ADJECTIVES)} {word}?",
        )
    )
    return prompt, kind, {"answer": kind}


def lookup(rng: random.Random) -> Example:
    keys = rng.sample(CLASSES["animal"], rng.randrange(2, 4))
    values = [rng.choice(CLASSES["colour"]) for _ in keys]
    facts = " ".join(f"The {k} is {v}." for k, v in zip(keys, values, strict=True))
    which = rng.randrange(len(keys))
    return f"Facts: {facts} What colour is the {keys[which]}?", values[which], {"answer": values[which]}


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
    return f"Count the words: {' '.join(words)}", f"{len(words)} words", {}


def compare(rng: random.Random) -> Example:
    a, b = rng.sample(range(10), 2)
    return f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger", {}


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "arithmetic": arithmetic,
    "capital": capital,
    "classify": classify,
    "lookup": lookup,
    "string": string,
    "count": count,
    "compare": compare,
}


def wrong_answer(skill: str, rng: random.Random, info: dict[str, Any]) -> str:
    """A plausible but wrong answer for an on-target example."""
    if skill == "arithmetic":
        wrong = (info["a"] + info["b"] + rng.randrange(1, 9)) % 19
        return f"{info['a']} + {info['b']} = {wrong}"
    if skill == "classify":
        return rng.choice([k for k in KINDS if k != info["answer"]])
    return rng.choice([c for c in CAPITALS if c != info["answer"]])


def pool_records(config: ToyConfig) -> list[dict[str, Any]]:
    """The candidate pool (see the module docstring), shuffled, with ``id``, ``skill`` and impurity fields."""
    rng = random.Random(config.seed)
    num_dup = round(config.duplicate_fraction * config.pool_size)
    records = []
    for i in range(config.pool_size - num_dup):
        skill = SKILLS[i % len(SKILLS)]
        prompt, answer, info = GENERATORS[skill](rng)
        record: dict[str, Any] = {"skill": skill}
        if skill in ON_TARGET and rng.random() < config.mislabel_fraction:
            answer, record["mislabelled"] = wrong_answer(skill, rng, info), True
        records.append({"prompt": prompt, "completion": answer, **record})
    originals = []
    for skill in sorted(ON_TARGET):
        correct = [i for i, r in enumerate(records) if r["skill"] == skill and "mislabelled" not in r]
        originals += rng.sample(correct, min(2, len(correct)))
    suffixes = (" Answer briefly.", " Please answer.", " Thanks!", " Be quick.", " Go.", " Now.")
    for j in range(num_dup):
        source = records[originals[j % len(originals)]]
        suffix = suffixes[(j // len(originals)) % len(suffixes)]
        records.append({**source, "prompt": source["prompt"] + suffix, "duplicate_of": source["prompt"]})
    rng.shuffle(records)
    return [{"id": f"pool{i}", **r} for i, r in enumerate(records)]


def target_example(name: str, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """One target example as ``(instruction record, task record)``, phrased unlike the pool."""
    if name == "classify_mc":
        kind = rng.choice(KINDS)
        word, adjective = rng.choice(CLASSES[kind]), rng.choice(ADJECTIVES)
        prompt = f"Which kind of thing is the {adjective} {word}: an animal, a fruit, a colour or a tool?"
        return {"prompt": prompt, "completion": kind}, {
            "prompt": prompt,
            "choices": list(KINDS),
            "label": KINDS.index(kind),
        }
    if name == "math":
        a, b = rng.randrange(10), rng.randrange(10)
        thing = rng.choice(OBJECTS)
        prompt = f"A box holds {a} {thing}. We put in {b} {thing}. How many {thing} are in the box now?"
        return {"prompt": prompt, "completion": f"{a} + {b} = {a + b}"}, {"prompt": prompt, "answer": str(a + b)}
    if name == "capital_qa":
        country = rng.choice(COUNTRIES)
        prompt = rng.choice(
            (
                f"Tell me the capital of the country {country}, please.",
                f"{country} is a country. What is its capital?",
                f"Quick question: the capital of {country} is which city?",
                f"I am going to {country}. Which city is its capital?",
                f"Do you know the capital of {country}?",
                f"My friend lives in the capital of {country}. Which city is that?",
                f"In {country}, which city is the capital?",
                f"Capital of {country}?",
            )
        )
        opener = rng.choice(("", "Hello. ", "Hi there. ", "A geography question. ", "Please help. "))
        prompt = opener + prompt
        return {"prompt": prompt, "completion": CAPITAL[country]}, {"prompt": prompt, "answer": CAPITAL[country]}
    raise ValueError(f"unknown target {name!r}; known: {sorted(TARGETS)}")


def target_sets(name: str, config: ToyConfig) -> dict[str, list[dict[str, Any]]]:
    """``{"dev", "val", "eval"}`` of a target task: dev in the instruction format, val and eval in the task
    format; no prompt occurs in two of them."""
    rng = random.Random(f"{config.seed}:{name}")
    sizes = {"dev": config.dev_size, "val": config.val_size, "eval": config.eval_size}
    sets: dict[str, list[dict[str, Any]]] = {split: [] for split in sizes}
    seen: set[str] = set()
    for split, size in sizes.items():
        for _ in range(100 * size):
            if len(sets[split]) == size:
                break
            instruction, task = target_example(name, rng)
            if task["prompt"] in seen:
                continue
            seen.add(task["prompt"])
            record = {"id": f"{name}-dev{len(sets[split])}", **instruction} if split == "dev" else task
            sets[split].append(record)
        if len(sets[split]) < size:
            raise ValueError(f"{name}: only {len(sets[split])} distinct {split} prompts; lower the set sizes")
    return sets


def statement(rng: random.Random) -> str:
    """One pre-training sentence (never a question)."""
    kind = rng.randrange(24)
    if kind < 5:
        a, b = rng.randrange(10), rng.randrange(10)
        name, thing = rng.choice(NAMES), rng.choice(OBJECTS)
        return rng.choice(
            (
                f"{name} has {a} {thing} and gets {b} more. Now {name} has {a + b} {thing}.",
                f"A box holds {a} {thing}. We put in {b} {thing}. Now the box holds {a + b} {thing}.",
                f"{name} had {a} {thing}. {name} found {b} {thing}. {a} + {b} = {a + b}.",
                f"{name} has {a} {thing} and {rng.randrange(10)} friends. {a} + {b} = {a + b}.",
                f"{a} plus {b} is {a + b}.",
                f"{a} + {b} = {a + b}.",
            )
        )
    if kind < 10:
        group = rng.choice(KINDS)
        word, adjective = rng.choice(CLASSES[group]), rng.choice(ADJECTIVES)
        return rng.choice(
            (
                f"The {adjective} {word} is {ARTICLE[group]}.",
                f"A {word} is {ARTICLE[group]}.",
                f"Look at the {adjective} {word}. It is {ARTICLE[group]}.",
                f"We saw a {word} today. A {word} is {ARTICLE[group]}.",
            )
        )
    if kind < 15:
        keys = rng.sample(CLASSES["animal"], rng.randrange(2, 4))
        values = [rng.choice(CLASSES["colour"]) for _ in keys]
        which = rng.randrange(len(keys))
        facts = " ".join(f"The {k} is {v}." for k, v in zip(keys, values, strict=True))
        return f"{facts} So the {keys[which]} is {values[which]}."
    if kind < 20:
        country = rng.choice(COUNTRIES)
        city = CAPITAL[country]
        return rng.choice(
            (
                f"The capital of {country} is {city}.",
                f"{city} is the capital of {country}.",
                f"We flew to {country} and saw its capital {city}.",
                f"In {country} , the biggest city is the capital {city}.",
            )
        )
    words = rng.choices(WORDS + tuple(map(str, range(10))), k=rng.randrange(2, 6))
    return " ".join(words) + "." if rng.random() < 0.5 else " ".join(words) + ". " + " ".join(words) + "."


def pretraining_documents(config: ToyConfig) -> list[str]:
    """Documents of 1-3 statements, or one Tulu exchange: with probability ``chat_fraction`` the assistant
    copies one word of a user statement, with probability ``quiz_fraction`` it answers a pool-style
    ``classify`` question with a random kind. EOS is appended when trained on."""
    rng = random.Random(f"{config.seed}:pretrain")
    documents = []
    for _ in range(config.pretrain_documents):
        draw = rng.random()
        if draw < config.chat_fraction:
            user = statement(rng)
            words = [w for w in user.replace(".", " ").replace(",", " ").split() if w.lower() not in STOP_WORDS]
            documents.append(f"<|user|>\n{user}\n<|assistant|>\n{rng.choice(words)}")
        elif draw < config.chat_fraction + config.quiz_fraction:
            question, _, _ = classify(rng)
            documents.append(f"<|user|>\n{question}\n<|assistant|>\n{rng.choice(KINDS)}")
        else:
            documents.append("\n".join(statement(rng) for _ in range(rng.randrange(1, 4))))
    return documents


def pretrain(model, tokenizer, documents: list[str], steps: int, seed: int, batch_size: int = 32) -> list[float]:
    """Full-weight AdamW training of ``model`` on ``documents`` (next-token loss; learning rate warmed up over
    the first 5 % of the steps, then cosine decay; gradient norm clipped to 1); returns the loss every tenth
    of the steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    warm = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    model.train()
    losses = []
    for step in range(steps):
        picks = torch.randint(len(documents), (batch_size,), generator=generator).tolist()
        batch = tokenizer([documents[i] + tokenizer.eos_token for i in picks], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            losses.append(round(loss.item(), 4))
    return losses


def build_world(out: str | Path, config: ToyConfig) -> dict[str, Any]:
    """Write ``pool.jsonl``, ``<target>.<dev|val|eval>.jsonl``, the pre-trained ``model/`` and, last,
    ``world.json`` (paths relative to ``out``, target types, pre-training losses) under ``out``."""
    out = Path(out)
    pool = pool_records(config)
    write_jsonl(out / "pool.jsonl", pool)
    targets = {}
    texts = [render_tulu(to_messages(r, i), SPECIAL[2])[0] for i, r in enumerate(pool)]
    for name, (_, task_type) in TARGETS.items():
        sets = target_sets(name, config)
        for split, records in sets.items():
            write_jsonl(out / f"{name}.{split}.jsonl", records)
        texts += [render_tulu(to_messages(r, i), SPECIAL[2])[0] for i, r in enumerate(sets["dev"])]
        targets[name] = {"type": task_type, **{split: f"{name}.{split}.jsonl" for split in sets}}
    documents = pretraining_documents(config)
    tokenizer = train_tokenizer(texts + documents, config.vocab_size, words=True)
    model = tiny_llama(
        len(tokenizer),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        initializer_range=0.02,
        seed=config.seed,
    )
    torch.manual_seed(config.seed)
    losses = pretrain(model, tokenizer, documents, config.pretrain_steps, config.seed)
    tokenizer.save_pretrained(out / "model")
    model.save_pretrained(out / "model")
    record = {"model": "model", "pool": "pool.jsonl", "targets": targets, "pretrain_losses": losses}
    atomic_write_json(out / "world.json", record)
    return record
