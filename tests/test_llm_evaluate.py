"""Evaluation metrics on hand-made examples; MC scoring against a token-by-token loop on a tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

from groupinf.llm.evaluate import (
    canonical_number,
    choice_scores,
    evaluate_task,
    exact_match,
    final_answer,
    load_task,
    normalize_answer,
    render_prompt,
    token_f1,
)
from groupinf.llm.models import load_tokenizer
from groupinf.llm.tiny import save_tiny_model, synthetic_records

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = save_tiny_model(tmp_path_factory.mktemp("model"), synthetic_records(30))
    return AutoModelForCausalLM.from_pretrained(path).eval(), load_tokenizer(str(path))


def test_normalisation_case_punctuation_articles_and_numbers():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("An apple.") == "apple"
    assert normalize_answer("It's 1,000 dollars") == "its 1000 dollars"
    assert normalize_answer("3.50 and -2") == "3.5 and -2"
    assert canonical_number("7.0") == "7"
    assert canonical_number("1,234,567") == "1234567"
    with pytest.raises(ValueError, match="not a number"):
        canonical_number("seven")


def test_exact_match_of_final_answers():
    assert final_answer("3 + 4 = 7. #### 7") == "7"
    assert final_answer("We get 10 apples, so the answer is 1,000.") == "1000"
    assert final_answer("2 then 5 then 12") == "12"
    assert final_answer("no digits here") == "no digits here"
    assert exact_match("The answer is 1,000.", "1000") == 1.0
    assert exact_match("so 12.0", 12) == 1.0
    assert exact_match("The answer is 13", "12") == 0.0
    assert exact_match("I think 7, but #### 8", "7") == 0.0  # the number after #### is the answer
    assert exact_match("Blue", "the blue") == 1.0


def test_token_f1_squad_style():
    assert token_f1("the red cat", "Red cat") == 1.0
    # prediction {red, big, cat}, gold {red, cat}: precision 2/3, recall 1 -> F1 0.8
    assert token_f1("a red big cat", "red cat") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("dog", ["cat", "the dog"]) == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("the", "cat") == 0.0
    # repeated tokens count with multiplicity: pred {cat, cat}, gold {cat}: p = 1/2, r = 1 -> 2/3
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)


def test_choice_scores_equal_a_token_by_token_loop(tiny):
    model, tokenizer = tiny
    context = render_prompt("Sort the words: cat dog", tokenizer, "tulu")
    choices = ["cat dog", "dog", "red river stone"]
    scores = choice_scores(model, tokenizer, context, choices, "tulu")
    for choice, score in zip(choices, scores, strict=True):
        ids = tokenizer(context + choice)["input_ids"]
        prefix = len(tokenizer(context)["input_ids"])
        assert tokenizer.decode(ids[prefix:]) == choice  # the boundary is a token boundary here
        total = 0.0
        for t in range(prefix, len(ids)):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            total += torch.log_softmax(logits, -1)[ids[t]].item()
        assert score == pytest.approx(total / (len(ids) - prefix), abs=1e-5)


def test_mc_accuracy_is_the_argmax_of_the_scores(tiny):
    model, tokenizer = tiny
    records = [
        {"prompt": "Reverse the words: cat dog", "choices": ["dog cat", "cat", "bird tree lamp"], "label": 0},
        {"prompt": "What is 2 plus 3?", "choices": ["2 plus 3 is 5.", "red", "blue"], "label": 2},
    ]
    result = evaluate_task(model, tokenizer, "mc", records, "tulu")
    expected = []
    for record in records:
        scores = choice_scores(
            model, tokenizer, render_prompt(record["prompt"], tokenizer, "tulu"), record["choices"], "tulu"
        )
        expected.append(float(max(range(3), key=scores.__getitem__) == record["label"]))
    assert result["metric"] == "accuracy"
    assert result["score"] == pytest.approx(100 * sum(expected) / 2)


def test_generation_tasks_score_the_decoded_text(tiny):
    model, tokenizer = tiny
    records = [{"prompt": "What is 1 plus 1?", "answer": "2"}, {"prompt": "Repeat cat 2 times.", "answer": "3"}]
    result = evaluate_task(model, tokenizer, "math", records, "tulu", max_new_tokens=6)
    assert result["n"] == 2 and len(result["predictions"]) == 2
    expected = [exact_match(p, r["answer"]) for p, r in zip(result["predictions"], records, strict=True)]
    assert result["score"] == pytest.approx(50 * sum(expected))
    qa = evaluate_task(model, tokenizer, "qa", [{"prompt": "Name a colour.", "answers": ["red", "blue"]}], "tulu", 4)
    assert qa["metric"] == "f1" and qa["score"] == pytest.approx(100 * token_f1(qa["predictions"][0], ["red", "blue"]))


def test_task_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown task type"):
        load_task(tmp_path / "x.jsonl", "essay")
    with pytest.raises(FileNotFoundError, match="no task file"):
        load_task(tmp_path / "x.jsonl", "qa")
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"prompt": "p", "choices": ["a", "b"], "label": 2}) + "\n")
    with pytest.raises(ValueError, match="'label' must be an index"):
        load_task(path, "mc")
    path.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match="needs 'answer'"):
        load_task(path, "math")
    path.write_text("\n")
    with pytest.raises(ValueError, match="no examples"):
        load_task(path, "qa")
