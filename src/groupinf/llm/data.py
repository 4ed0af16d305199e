"""Instruction data: JSONL records -> chat text -> token ids, with labels on the response tokens only.

Formats, one JSON object per line (a file may mix them; other fields such as ``"id"`` are kept):

- ``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}``: every assistant
  turn is a response;
- ``{"prompt": "...", "completion": "..."}``: read as one user turn and one assistant turn.

Chat templates:

- ``tulu`` (open-instruct's, used by LESS and the paper): ``<|system|>\\n…\\n<|user|>\\n…\\n<|assistant|>\\n…</s>\\n``
  with each content stripped; a response is the assistant content, the EOS token and the newline after it;
  the tokenizer adds its own special tokens (e.g. BOS);
- ``tokenizer``: the tokenizer's ``chat_template``; a response is the text that rendering the
  conversation up to and including the turn adds to its rendering before the turn with the generation
  prompt (the template must render prefixes of a conversation as prefixes of its text);
- ``auto``: ``tokenizer`` when the tokenizer has a chat template, else ``tulu``.

A token is a response token (its label is its own id; every other label is -100) when it starts inside
a response's characters. Truncation keeps the first ``max_length`` tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from groupinf.files import utf8_lines

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
TULU_TAGS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
FORMAT_HINT = "each line needs 'messages' (a list of {'role', 'content'}) or 'prompt' and 'completion'"

Span = tuple[int, int]


@dataclass(frozen=True)
class Encoded:
    """One tokenised example: ``input_ids`` and ``labels`` (the id on response tokens, -100 elsewhere)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_response_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class RecordError(ValueError):
    """A record in no known format; ``index`` is its position in its data set."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"example {index}: {reason}")
        self.index, self.reason = index, reason


def record_lines(path: str | Path) -> list[int]:
    """The line number (from 1) of each record of a JSONL file: its non-blank lines, which must be UTF-8."""
    return [number for number, line in enumerate(utf8_lines(path), start=1) if line.strip()]


@contextmanager
def naming_lines(path: str | Path) -> Iterator[None]:
    """Report a ``RecordError`` raised in the block as a ``ValueError`` naming ``path`` and the record's line."""
    try:
        yield
    except RecordError as error:
        raise ValueError(f"{path}, line {record_lines(path)[error.index]}: {error.reason}") from None


def load_records(path: str | Path):
    """The JSONL file as a Hugging Face ``datasets.Dataset`` (checked to be UTF-8, non-empty and of a known
    format)."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}; pass a JSONL file with one example per line ({FORMAT_HINT})")
    if not record_lines(path):
        raise ValueError(f"{path} holds no examples: the data set is empty")
    try:
        records = load_dataset("json", data_files=str(path), split="train")
    except DatasetGenerationError as error:
        raise ValueError(f"{path} is not a JSONL file of objects: {error.__cause__ or error}") from error
    columns = set(records.column_names)
    if "messages" not in columns and not {"prompt", "completion"} <= columns:
        raise ValueError(f"{path}: unknown format, fields {sorted(columns)}; {FORMAT_HINT}")
    return records


def to_messages(record: dict[str, Any], index: int) -> list[dict[str, str]]:
    """The record as a list of ``{"role", "content"}`` turns with at least one assistant turn; a
    ``RecordError`` for record number ``index`` otherwise."""
    messages = record.get("messages")
    if messages is None:
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise RecordError(index, f"unknown format, fields {sorted(record)}; {FORMAT_HINT}")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if not isinstance(messages, list) or not messages:
        raise RecordError(index, "'messages' must be a non-empty list of turns")
    turns = []
    for turn in messages:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise RecordError(index, f"each turn needs a role in {ROLES} and a string content, got {turn!r}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" for t in turns):
        raise RecordError(index, "no assistant turn, so no response tokens to compute a loss on")
    return turns


def resolve_template(tokenizer, template: str) -> str:
    """``"tulu"`` or ``"tokenizer"`` for the setting ``template`` (auto | tulu | tokenizer)."""
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "tokenizer" if has_own else "tulu"
    if template == "tokenizer" and not has_own:
        raise ValueError("template 'tokenizer' asked for, but the tokenizer has no chat_template; use 'tulu'")
    if template not in ("tulu", "tokenizer"):
        raise ValueError(f"template must be auto, tulu or tokenizer, got {template!r}")
    return template


def render_tulu(messages: Sequence[dict[str, str]], eos_token: str) -> tuple[str, list[Span]]:
    """The Tulu text of a conversation and the character spans of its responses."""
    text, spans = "", []
    for turn in messages:
        text += TULU_TAGS[turn["role"]]
        if turn["role"] == "assistant":
            start = len(text)
            text += turn["content"].strip() + eos_token + "\n"
            spans.append((start, len(text)))
        else:
            text += turn["content"].strip() + "\n"
    return text, spans


def render_native(messages: Sequence[dict[str, str]], tokenizer) -> tuple[str, list[Span]]:
    """The tokenizer's chat-template text of a conversation and the character spans of its responses."""

    def render(turns: Sequence[dict[str, str]], prompt: bool) -> str:
        return tokenizer.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=prompt)

    text = render(messages, False)
    spans = []
    for k, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before, upto = render(messages[:k], True), render(messages[: k + 1], False)
        if not (upto.startswith(before) and text.startswith(upto)):
            raise ValueError(
                "the tokenizer's chat template does not render a conversation's prefixes as prefixes of its "
                "text, so response tokens cannot be located; use template 'tulu'"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def encode(
    records: Sequence[dict[str, Any]],
    tokenizer,
    template: str,
    max_length: int,
    indices: Sequence[int] | None = None,
) -> list[Encoded]:
    """Tokenise records with response-only labels; ``indices`` are their positions in their data set (default
    0, 1, …), which a ``RecordError`` reports."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("locating response tokens needs a fast tokenizer (character offsets)")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    kind = resolve_template(tokenizer, template)
    if kind == "tulu" and tokenizer.eos_token is None:
        raise ValueError("the Tulu template ends responses with the EOS token, but the tokenizer has none")
    texts, all_spans = [], []
    for i, record in enumerate(records):
        messages = to_messages(record, i if indices is None else indices[i])
        if kind == "tulu":
            text, spans = render_tulu(messages, tokenizer.eos_token)
        else:
            text, spans = render_native(messages, tokenizer)
        texts.append(text)
        all_spans.append(spans)
    batch = tokenizer(texts, add_special_tokens=kind == "tulu", return_offsets_mapping=True)
    out = []
    for ids, offsets, spans in zip(batch["input_ids"], batch["offset_mapping"], all_spans, strict=True):
        labels = [
            token if end > start and any(lo <= start < hi for lo, hi in spans) else IGNORE_INDEX
            for token, (start, end) in zip(ids, offsets, strict=True)
        ]
        out.append(Encoded(list(ids[:max_length]), labels[:max_length]))
    return out


def pad_id(tokenizer) -> int:
    """The id used for padding (never attended to and never labelled): pad, else EOS, else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def collate(examples: Sequence[Encoded], padding: int, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` ``(B, T)``, ``T`` the longest example."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), padding, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        mask[row, :length] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
