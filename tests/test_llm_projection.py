"""LoGra projected per-example gradients against autograd on a tiny random Llama (float64, no download)."""

from __future__ import annotations

import pytest
import torch

from groupinf.llm.data import IGNORE_INDEX, collate, encode, pad_id
from groupinf.llm.models import linear_layers, load_model, load_tokenizer
from groupinf.llm.objective import example_seed, response_nll, sample_labels
from groupinf.llm.projection import Projector, projection_matrix
from groupinf.llm.tiny import synthetic_records
from llm_helpers import (
    make_world,
    random_adapter,
)

pytestmark = pytest.mark.usefixtures("one_thread", "private_datasets_cache")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A float64 tiny Llama with a random LoRA adapter, its tokenizer and 7 encoded examples of mixed lengths."""
    world = make_world(tmp_path_factory.mktemp("world"))
    adapter = random_adapter(world.model, world.root / "adapter")
    tokenizer = load_tokenizer(str(world.model))
    model = load_model(str(world.model), torch.float64, CPU, adapter)
    examples = encode(synthetic_records(7, seed=3), tokenizer, "tulu", max_length=48)
    assert len({len(e.input_ids) for e in examples}) > 2  # the batch really is padded
    return world, model, tokenizer, examples


def autograd_gradients(model, layers, example, padding, labels=None):
    """Full per-example weight gradients of ``layers`` for one unpadded example (a batch-size-1 autograd)."""
    batch = collate([example], padding)
    weights = [module.weight for module in layers.values()]
    for w in weights:
        w.requires_grad_(True)
    try:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = response_nll(logits, batch["labels"] if labels is None else labels).sum()
        return logits.detach(), batch, torch.autograd.grad(loss, weights)
    finally:
        for w in weights:
            w.requires_grad_(False)


def project(projector, grads):
    return torch.cat(
        [
            (projector.p_out[s.name].double() @ g @ projector.p_in[s.name].double().T).flatten()
            for s, g in zip(projector.specs, grads, strict=True)
        ]
    )


@pytest.mark.parametrize("fisher", ["empirical", "true"])
def test_projected_gradients_equal_projected_autograd_gradients(tiny, fisher):
    """A padded batch through the hooks gives, per example, P_o (Σ_t s_t x_tᵀ) P_iᵀ of the example alone."""
    _, model, tokenizer, examples = tiny
    layers = linear_layers(model)
    assert all(".lora_" in name for name in layers) and len(layers) == 12  # 3 modules x 2 blocks x (A, B)
    projector = Projector(model, layers, "gaussian", r_out=2, r_in=2, seed=5)
    indices = [40 + i for i in range(len(examples))]
    result = projector.compute(collate(examples, pad_id(tokenizer)), fisher, indices)
    assert result.gradients.shape == (len(examples), projector.dim) == (len(examples), 12 * 4)
    for row, example in enumerate(examples):
        logits, single, grads = autograd_gradients(model, layers, example, pad_id(tokenizer))
        expected = project(projector, grads)
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(result.gradients[row], expected, rtol=1e-9, atol=1e-12)
        if fisher == "true":
            drawn = sample_labels(logits, single["labels"], [example_seed(5, indices[row])])
            _, _, drawn_grads = autograd_gradients(model, layers, example, pad_id(tokenizer), drawn)
            torch.testing.assert_close(result.fisher[row], project(projector, drawn_grads), rtol=1e-9, atol=1e-12)
            assert not torch.allclose(result.fisher[row], result.gradients[row])
    assert (result.fisher is None) == (fisher == "empirical")


def test_identity_projection_gives_the_full_gradient_of_chosen_layers(tiny):
    _, model, tokenizer, examples = tiny
    layers = linear_layers(model, r"layers\.1\.mlp\.down_proj\.base_layer$")
    projector = Projector(model, layers, "identity", r_out=1, r_in=1, seed=0)
    result = projector.compute(collate(examples[:3], pad_id(tokenizer)), "empirical", [0, 1, 2])
    for row, example in enumerate(examples[:3]):
        _, _, (grad,) = autograd_gradients(model, layers, example, pad_id(tokenizer))
        torch.testing.assert_close(result.gradients[row], grad.flatten(), rtol=1e-9, atol=1e-12)


def test_moments_and_tokens_ignore_padding(tiny):
    """Sums over a padded batch equal the sums over its examples run one at a time."""
    _, model, tokenizer, examples = tiny
    projector = Projector(model, linear_layers(model), "gaussian", r_out=3, r_in=2, seed=1)
    batched = projector.compute(collate(examples, pad_id(tokenizer)), "true", range(len(examples)))
    singles = [projector.compute(collate([e], pad_id(tokenizer)), "true", [i]) for i, e in enumerate(examples)]
    assert batched.tokens == sum(len(e.input_ids) for e in examples) == sum(s.tokens for s in singles)
    for name in batched.input_moments:
        torch.testing.assert_close(batched.input_moments[name], sum(s.input_moments[name] for s in singles))
        torch.testing.assert_close(batched.output_moments[name], sum(s.output_moments[name] for s in singles))
        assert batched.input_moments[name].shape == (2, 2) and batched.output_moments[name].shape == (3, 3)


def test_results_hold_no_autograd_graph(tiny):
    """Nothing a batch yields requires grad: a graph there kept every batch's activations alive (the moment sums
    of a shard chained them, memory grew with the number of batches)."""
    _, model, tokenizer, examples = tiny
    projector = Projector(model, linear_layers(model), "gaussian", r_out=3, r_in=2, seed=1)
    result = projector.compute(collate(examples, pad_id(tokenizer)), "true", range(len(examples)))
    tensors = [result.gradients, result.fisher, *result.input_moments.values(), *result.output_moments.values()]
    assert not any(t.requires_grad for t in tensors)


def test_sampled_labels_replace_response_tokens_only_and_do_not_depend_on_the_batch(tiny):
    _, model, tokenizer, examples = tiny
    batch = collate(examples, pad_id(tokenizer))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    seeds = [example_seed(0, i) for i in range(len(examples))]
    drawn = sample_labels(logits, batch["labels"], seeds)
    response = batch["labels"] != IGNORE_INDEX
    response[:, 0] = False  # the first position has no prediction
    assert (drawn[~response] == batch["labels"][~response]).all()
    assert (drawn[response] != batch["labels"][response]).any()
    single = collate([examples[2]], pad_id(tokenizer))
    alone = model(input_ids=single["input_ids"], attention_mask=single["attention_mask"]).logits
    length = len(examples[2].input_ids)
    assert length < batch["labels"].shape[1]
    assert torch.equal(sample_labels(alone, single["labels"], seeds[2:3])[0], drawn[2, :length])
    assert not torch.equal(sample_labels(logits, batch["labels"], [s + 1 for s in seeds]), drawn)


def test_projections_are_seeded_per_layer(tiny):
    _, model, _, _ = tiny
    a = Projector(model, linear_layers(model), "gaussian", 2, 2, seed=7)
    b = Projector(model, linear_layers(model), "gaussian", 2, 2, seed=7)
    c = Projector(model, linear_layers(model), "gaussian", 2, 2, seed=8)
    first, second = a.specs[0], a.specs[1]
    assert torch.equal(a.p_in[first.name], b.p_in[first.name])
    assert not torch.equal(a.p_in[first.name], c.p_in[first.name])
    assert first.d_out == second.d_in  # lora_A's output feeds lora_B: same widths, yet other matrices
    assert not torch.equal(a.p_out[first.name], a.p_in[second.name][: first.r_out])
    assert projection_matrix(first, "in", "gaussian", 0).shape == (first.r_in, first.d_in)


def test_bad_layer_choices_raise(tiny):
    _, model, _, _ = tiny
    layers = linear_layers(model)
    with pytest.raises(ValueError, match="larger than layer"):
        Projector(model, layers, "gaussian", r_out=2, r_in=5, seed=0)  # lora_B has d_in = 4
    with pytest.raises(ValueError, match="no Linear layer matches"):
        linear_layers(model, "no_such_layer")
    with pytest.raises(ValueError, match="gaussian' or 'identity"):
        Projector(model, layers, "sparse", 2, 2, seed=0)
    with pytest.raises(ValueError, match="fisher"):
        Projector(model, layers, "gaussian", 1, 1, seed=0).compute({}, "exact", [])


def test_response_nll_is_the_sum_over_response_tokens_of_the_next_token_nll():
    """Position t predicts token t + 1; prompt and padding tokens (-100) count nothing; bf16 logits in float32."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[:, :2], labels[2, 5:] = IGNORE_INDEX, IGNORE_INDEX
    log_p = torch.log_softmax(logits, dim=-1)
    expected = torch.stack(
        [-sum(log_p[b, t, labels[b, t + 1]] for t in range(6) if labels[b, t + 1] != IGNORE_INDEX) for b in range(3)]
    )
    torch.testing.assert_close(response_nll(logits, labels), expected)
    half = response_nll(logits.bfloat16(), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, response_nll(logits.bfloat16().double(), labels).float())
