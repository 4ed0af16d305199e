"""The toy world learns: fine-tuning the locally pre-trained base model on the whole pool lifts a target task
far above the base model. A change that breaks learning anywhere (world, tokenizer, pre-training, LoRA
fine-tuning, evaluation) fails here."""

from __future__ import annotations

import json

import pytest
import torch

from groupinf.llm.config import WarmupConfig
from groupinf.llm.evaluate import evaluate_task, load_task
from groupinf.llm.models import load_model, load_tokenizer
from groupinf.llm.toy import ToyConfig, build_world
from groupinf.llm.warmup import warmup

#: a miniature of configs/llm-toy.json's world: a smaller model, pool and pre-training
TINY_WORLD = ToyConfig(
    pool_size=350,
    dev_size=4,
    val_size=4,
    eval_size=40,
    pretrain_documents=10000,
    pretrain_steps=2000,
    vocab_size=600,
    hidden_size=96,
    intermediate_size=192,
)
#: the demo's fine-tuning recipe with a smaller rank, fewer epochs and a larger learning rate
RECIPE = WarmupConfig(
    fraction=1.0,
    lora_rank=16,
    lora_alpha=32,
    lora_dropout=0.0,
    learning_rate=5e-3,
    epochs=6,
    batch_size=8,
    micro_batch_size=8,
    max_length=96,
    template="tulu",
    precision="fp32",
)


@pytest.mark.slow
def test_full_pool_fine_tuning_clears_a_floor_above_the_base_model(tmp_path, one_thread):
    record = build_world(tmp_path / "world", TINY_WORLD)
    world, model = tmp_path / "world", str(tmp_path / "world" / "model")
    warmup(model, world / record["pool"], tmp_path / "full", RECIPE, "cpu", progress=False)
    assert json.loads((tmp_path / "full" / "warmup.json").read_text())["train_size"] == TINY_WORLD.pool_size
    tokenizer, scores = load_tokenizer(model), {}
    for name, spec in record["targets"].items():
        task = load_task(world / spec["eval"], spec["type"])
        for row, adapter in (("base", None), ("full", tmp_path / "full" / "adapter")):
            network = load_model(model, torch.float32, torch.device("cpu"), adapter)
            scores[row, name] = evaluate_task(network, tokenizer, spec["type"], task, "tulu", 12)["score"]
    # measured on 2026-11-29 (commit ba7d98a): base 32.5 / 0.0 / 10.0, full pool 92.5 / 20.0 / 70.0
    # (classify_mc accuracy, math exact match, capital_qa F1; 40 examples each), a mean gain of 46.7 points
    gains = {name: scores["full", name] - scores["base", name] for name in record["targets"]}
    assert gains["capital_qa"] >= 30, scores
    assert sum(gains.values()) / len(gains) >= 15, scores
