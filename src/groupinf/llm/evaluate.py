"""Zero-shot evaluation of a fine-tuned causal LM on local JSONL task files.

Task types and their files (one JSON object per line; other fields are ignored):

- ``mc`` (multiple choice): ``{"prompt": str, "choices": [str, ...], "label": int}``; the prediction is the
  choice with the highest length-normalised log-likelihood ``(1/T_c) Σ_t log p(c_t | prompt, c_<t)``, ``T_c``
  the number of the choice's tokens, given the prompt in the chat template; metric: accuracy;
- ``math`` (word problems): ``{"prompt": str, "answer": str | number}``; greedy decoding, then exact match
  of the final answer (``final_answer``: the number after the last ``####``, else after the last
  "answer is", else the last number of the text) with the gold answer's; metric: exact match;
- ``qa`` (extractive QA): ``{"prompt": str, "answer": str}`` or ``{"prompt": str, "answers": [str, ...]}``;
  greedy decoding, SQuAD-style token F1 (the best over the gold answers); metric: F1.

Every prompt is one user turn rendered with the chat template (``tulu`` or the tokenizer's, as in
``data.py``) followed by the assistant tag, with no examples (0-shot). Scores are reported in percent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupinf.llm.data import TULU_TAGS, render_tulu, resolve_template

TASK_TYPES = {"mc": "accuracy", "math": "exact_match", "qa": "f1"}
ARTICLES = frozenset(("a", "an", "the"))
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[^\W_]+")


def canonical_number(text: str) -> str:
    """``"1,000"`` -> ``"1000"``, ``"3.50"`` -> ``"3.5"``, ``"7.0"`` -> ``"7"``, ``"-0"`` -> ``"0"``."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation as error:
        raise ValueError(f"not a number: {text!r}") from error
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD-style normalised tokens: lower case, thousands separators and punctuation removed (decimal
    points and minus signs of numbers kept), numbers in canonical form, articles dropped.

    Apostrophes are removed within words (``"don't"`` -> ``"dont"``); other punctuation separates tokens.
    """
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower())
    text = re.sub(r"[^\w\s.\-]", "", text)
    tokens = [canonical_number(t) if NUMBER.fullmatch(t) else t for t in TOKEN.findall(text)]
    return [t for t in tokens if t not in ARTICLES]


def normalize_answer(text: str) -> str:
    """The normalised tokens joined by single spaces."""
    return " ".join(normalize_tokens(text))


def final_answer(text: str) -> str:
    """The final answer of a worked solution: the number after the last ``####``, else after the last
    "answer is", else the last number in the text, canonical; the normalised text when it has no number."""
    lowered = text.lower()
    for marker in ("####", "answer is"):
        if marker in lowered:
            lowered = lowered.rsplit(marker, 1)[1]
            break
    numbers = NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3})", "", lowered))
    return canonical_number(numbers[-1]) if numbers else normalize_answer(lowered)


def exact_match(prediction: str, gold: str | int | float) -> float:
    """1.0 when the final answers of ``prediction`` and ``gold`` agree, else 0.0."""
    return float(final_answer(prediction) == final_answer(str(gold)))


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD token F1 between normalised tokens, the best over ``golds``; 1.0 when both are empty."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("token_f1 needs at least one gold answer")
    predicted = normalize_tokens(prediction)
    best = 0.0
    for gold in golds:
        expected = normalize_tokens(gold)
        if not predicted or not expected:
            best = max(best, float(predicted == expected))
            continue
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def load_task(path: str | Path, task_type: str) -> list[dict[str, Any]]:
    """The records of a task file, checked for the fields its ``task_type`` needs."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; known: {sorted(TASK_TYPES)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no task file at {path}; see groupinf.llm.evaluate for the JSONL fields of {task_type}"
        )
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no examples")
    for i, record in enumerate(records):
        if not isinstance(record.get("prompt"), str):
            raise ValueError(f"{path}:{i + 1}: needs a string 'prompt'")
        if task_type == "mc":
            choices, label = record.get("choices"), record.get("label")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise ValueError(f"{path}:{i + 1}: 'choices' must be a list of at least two strings")
            if not isinstance(label, int) or not 0 <= label < len(choices):
                raise ValueError(f"{path}:{i + 1}: 'label' must be an index into 'choices', got {label!r}")
        elif "answer" not in record and not (task_type == "qa" and isinstance(record.get("answers"), list)):
            raise ValueError(f"{path}:{i + 1}: needs 'answer'" + (" or 'answers'" if task_type == "qa" else ""))
    return records


def render_prompt(prompt: str, tokenizer, template: str) -> str:
    """One user turn and the assistant tag in the chat template (``data.resolve_template``'s choices)."""
    messages = [{"role": "user", "content": prompt}]
    if resolve_template(tokenizer, template) == "tulu":
        return render_tulu(messages, tokenizer.eos_token)[0] + TULU_TAGS["assistant"]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _special_tokens(tokenizer, template: str) -> bool:
    # as in data.encode: the Tulu text gets the tokenizer's special tokens, a native template has its own
    return resolve_template(tokenizer, template) == "tulu"


@torch.no_grad()
def choice_scores(model: nn.Module, tokenizer, context: str, choices: Sequence[str], template: str) -> list[float]:
    """Length-normalised log-likelihood of each choice after ``context`` (already rendered): the mean over
    the choice's tokens (those starting at or after ``len(context)`` in ``context + choice``) of
    ``log p(token | everything before it)``."""
    texts = [context + choice for choice in choices]
    batch = tokenizer(texts, add_special_tokens=_special_tokens(tokenizer, template), return_offsets_mapping=True)
    scores = []
    for ids, offsets in zip(batch["input_ids"], batch["offset_mapping"], strict=True):
        positions = [t for t, (start, end) in enumerate(offsets) if start >= len(context) and end > start and t > 0]
        if not positions:
            raise ValueError(f"a choice after {context[-40:]!r} has no tokens of its own")
        tokens = torch.tensor([ids], device=model.device)
        logprobs = torch.log_softmax(model(input_ids=tokens, use_cache=False).logits[0].float(), dim=-1)
        where = torch.tensor(positions, device=model.device)
        scores.append(logprobs[where - 1, tokens[0, where]].mean().item())
    return scores


@torch.no_grad()
def generate(
    model: nn.Module, tokenizer, contexts: Sequence[str], template: str, max_new_tokens: int, batch_size: int = 16
) -> list[str]:
    """Greedy continuations of rendered ``contexts`` (left-padded batches), cut at EOS and at the next chat
    tag (``<|``), stripped."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs = []
    try:
        for first in range(0, len(contexts), batch_size):
            chunk = list(contexts[first : first + batch_size])
            batch = tokenizer(
                chunk, add_special_tokens=_special_tokens(tokenizer, template), padding=True, return_tensors="pt"
            ).to(model.device)
            tokens = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in tokens[:, batch["input_ids"].shape[1] :]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                outputs.append(text.split("<|", 1)[0].strip())
    finally:
        tokenizer.padding_side = side
    return outputs


def evaluate_task(
    model: nn.Module,
    tokenizer,
    task_type: str,
    records: Sequence[dict[str, Any]],
    template: str = "auto",
    max_new_tokens: int = 32,
) -> dict[str, Any]:
    """``{"metric", "score" (percent), "n", "predictions"}`` of ``model`` on a task (see the module docstring)."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; known: {sorted(TASK_TYPES)}")
    if not records:
        raise ValueError("the task has no examples")
    model.eval()
    contexts = [render_prompt(r["prompt"], tokenizer, template) for r in records]
    if task_type == "mc":
        predictions: list[Any] = []
        values = []
        for context, record in zip(contexts, records, strict=True):
            scores = choice_scores(model, tokenizer, context, record["choices"], template)
            predictions.append(max(range(len(scores)), key=scores.__getitem__))
            values.append(float(predictions[-1] == record["label"]))
    else:
        predictions = generate(model, tokenizer, contexts, template, max_new_tokens)
        if task_type == "math":
            values = [exact_match(p, r["answer"]) for p, r in zip(predictions, records, strict=True)]
        else:
            golds = [r.get("answers", [r.get("answer")]) for r in records]
            values = [token_f1(p, [str(g) for g in gold]) for p, gold in zip(predictions, golds, strict=True)]
    return {
        "metric": TASK_TYPES[task_type],
        "score": 100.0 * sum(values) / len(values),
        "n": len(values),
        "predictions": predictions,
    }
