"""Instruction data: formats, chat templates, response-only labels, truncation, config files, bad input."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from groupinf.llm.config import ExtractConfig, SelectConfig, WarmupConfig, add_options, load_config
from groupinf.llm.data import IGNORE_INDEX, collate, encode, load_records
from groupinf.llm.tiny import SPECIAL, synthetic_records, train_tokenizer, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread", "private_datasets_cache")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": " 2 plus 3 is 5. "},
        {"role": "user", "content": "Reverse the words: cat dog"},
        {"role": "assistant", "content": "dog cat"},
    ]
}
SIMPLE_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]: {% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    texts = [json.dumps(r) for r in synthetic_records(40)] + [json.dumps(CONVERSATION)]
    return train_tokenizer(texts, vocab_size=300)


def labelled_text(tokenizer, example) -> str:
    pairs = zip(example.input_ids, example.labels, strict=True)
    return tokenizer.decode([token for token, label in pairs if label != IGNORE_INDEX])


def test_tulu_template_labels_exactly_the_responses(tokenizer):
    (example,) = encode([CONVERSATION], tokenizer, "auto", max_length=1000)
    eos = SPECIAL[2]
    assert labelled_text(tokenizer, example) == f"2 plus 3 is 5.{eos}\ndog cat{eos}\n"
    full = tokenizer.decode(example.input_ids)
    expected = (
        "<|system|>\nBe brief.\n<|user|>\nWhat is 2 plus 3?\n<|assistant|>\n2 plus 3 is 5." + eos + "\n"
        "<|user|>\nReverse the words: cat dog\n<|assistant|>\ndog cat" + eos + "\n"
    )
    assert full == "<s>" + expected  # the tokenizer's own BOS, added once
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(example.input_ids, example.labels, strict=True))


def test_word_tokenizer_gives_a_word_one_token_wherever_it_stands():
    texts = [json.dumps(r) for r in synthetic_records(40)] + ["red cat\nred dog", "<|user|>\nWhat is red?"]
    words = train_tokenizer(texts, vocab_size=300, words=True)
    ids = words("red cat\nred dog")["input_ids"]
    assert ids[0] == words.bos_token_id and ids[1] == ids[3]  # "red" after BOS and after a newline
    assert words.decode(ids, skip_special_tokens=True) == "red cat red dog"
    assert "<unk>" in words.convert_ids_to_tokens(words("zebra!")["input_ids"])  # "z" never seen
    # the Tulu responses are labelled by character offsets, as with the byte-level tokenizer
    (example,) = encode([{"prompt": "What is red?", "completion": "red cat"}], words, "tulu", max_length=100)
    labelled = [token for token, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert words.convert_ids_to_tokens(labelled) == ["▁red", "▁cat", SPECIAL[2]]


@pytest.mark.parametrize("words", [True, False])
def test_tokenizer_ids_are_the_same_in_every_process(words):
    """The token ids, and with them a model pre-trained on them, do not depend on the process (a BPE trainer
    that numbers its starting symbols in hash-map order, which Rust seeds per process, fails this)."""
    code = (
        "import sys; from groupinf.llm.tiny import train_tokenizer; "
        "texts = ['a cat is red.', 'the dog is blue!', 'my 3 pigs: 1 + 2 = 3', 'zebra quilt jovial'] * 20; "
        f"sys.stdout.write(train_tokenizer(texts, 80, words={words}).backend_tokenizer.to_str())"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(4)]
    assert len({run.stdout for run in runs}) == 1
    vocab = json.loads(runs[0].stdout)["model"]["vocab"]
    assert [vocab[token] for token in SPECIAL] == [0, 1, 2]


def test_prompt_completion_is_one_user_and_one_assistant_turn(tokenizer):
    pair = {"prompt": "Sort the words: dog cat", "completion": "cat dog"}
    messages = {"messages": [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": "cat dog"}]}
    a, b = encode([pair, messages], tokenizer, "tulu", max_length=1000)
    assert a == b
    assert labelled_text(tokenizer, a) == f"cat dog{SPECIAL[2]}\n"


def test_tokenizer_chat_template_is_used_when_present(tokenizer):
    own = train_tokenizer([json.dumps(CONVERSATION)], vocab_size=300)
    own.chat_template = SIMPLE_TEMPLATE
    (auto,) = encode([CONVERSATION], own, "auto", max_length=1000)
    (explicit,) = encode([CONVERSATION], own, "tokenizer", max_length=1000)
    assert auto == explicit
    assert own.decode(auto.input_ids).startswith("[system]: Be brief.\n[user]: What is 2 plus 3?\n[assistant]: ")
    assert labelled_text(own, auto) == " 2 plus 3 is 5. \ndog cat\n"  # the template does not strip
    (tulu,) = encode([CONVERSATION], own, "tulu", max_length=1000)
    assert labelled_text(own, tulu) == f"2 plus 3 is 5.{SPECIAL[2]}\ndog cat{SPECIAL[2]}\n"
    with pytest.raises(ValueError, match="no chat_template"):
        encode([CONVERSATION], tokenizer, "tokenizer", max_length=1000)


def test_template_that_rewrites_prefixes_is_refused(tokenizer):
    own = train_tokenizer([json.dumps(CONVERSATION)], vocab_size=300)
    own.chat_template = "{{ messages | length }}" + SIMPLE_TEMPLATE
    with pytest.raises(ValueError, match="prefixes"):
        encode([CONVERSATION], own, "auto", max_length=1000)


def test_truncation_keeps_the_first_tokens(tokenizer):
    (full,) = encode([CONVERSATION], tokenizer, "tulu", max_length=1000)
    (cut,) = encode([CONVERSATION], tokenizer, "tulu", max_length=20)
    assert len(full.input_ids) > 20
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]


def test_collate_pads_on_the_right_without_labels(tokenizer):
    short, long = encode([{"prompt": "hi", "completion": "yo"}, CONVERSATION], tokenizer, "tulu", 1000)
    batch = collate([short, long], padding=0)
    width = len(long.input_ids)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * (width - len(short.input_ids))
    assert (batch["labels"][0, len(short.input_ids) :] == IGNORE_INDEX).all()
    assert batch["labels"][1].tolist() == long.labels


def test_load_records_reads_mixed_formats(tmp_path, tokenizer):
    records = synthetic_records(9)
    assert {"messages", "prompt"} <= {key for r in records for key in r}
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    loaded = load_records(path)
    assert len(loaded) == 9
    assert encode(loaded, tokenizer, "tulu", 1000) == encode(records, tokenizer, "tulu", 1000)


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, FileNotFoundError, "no data file.*JSONL"),
        ("\n  \n", ValueError, "empty"),
        ('{"question": "q", "answer": "a"}\n', ValueError, "unknown format"),
        ('{"messages": [1, 2}\n', ValueError, "not a JSONL file"),
    ],
)
def test_load_records_rejects_bad_files(tmp_path, content, error, match):
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=match):
        load_records(path)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"messages": [{"role": "user", "content": "no answer"}]}, "no assistant turn"),
        ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "role in"),
        ({"messages": []}, "non-empty list"),
        ({"prompt": "only a prompt"}, "unknown format"),
    ],
)
def test_encode_rejects_bad_records(tokenizer, record, match):
    with pytest.raises(ValueError, match=match):
        encode([record], tokenizer, "tulu", 100)


def test_config_file_then_command_line_over_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"extract": {"r_in": 8, "layers": "mlp"}, "select": {"methods": ["greedy"]}}))
    parser = argparse.ArgumentParser()
    add_options(parser, ExtractConfig)
    args = parser.parse_args(["--r-out", "16", "--layers", "down_proj"])
    config = load_config("extract", path, args)
    assert (config.r_in, config.r_out, config.layers, config.shard_size) == (8, 16, "down_proj", 1024)
    assert load_config("select", path).methods == ("greedy",)
    assert load_config("warmup", None) == WarmupConfig()
    parser = argparse.ArgumentParser()
    add_options(parser, SelectConfig)
    assert load_config("select", None, parser.parse_args(["--damping", "0.5"])).damping == 0.5
    assert load_config("select", None, parser.parse_args(["--damping", "heuristic"])).damping == "heuristic"


def test_every_shipped_config_loads():
    paths = sorted(CONFIGS.glob("llm-*.json"))
    assert {p.name for p in paths} >= {"llm-paper.json", "llm-tiny.json"}
    for path in paths:
        for section in ("warmup", "extract", "select"):
            load_config(section, path)


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ({"extract": {"rank": 4}}, "unknown settings"),
        ({"extracts": {}}, "unknown sections"),
        ({"extract": {"fisher": "exact"}}, "fisher must be one of"),
        ({"extract": {"r_in": 0}}, "r_in must be > 0"),
        ({"warmup": {"batch_size": 10, "micro_batch_size": 4}}, "multiple of micro_batch_size"),
        ({"select": {"damping": "large"}}, "damping must be"),
    ],
)
def test_bad_config_files_raise(tmp_path, document, match):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    section = next(iter(document)) if next(iter(document)) in ("warmup", "extract", "select") else "extract"
    with pytest.raises(ValueError, match=match):
        load_config(section, path)
