"""LoRA warmup, and the whole pipeline through the command line with the shipped tiny config."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from groupinf.cli import main
from groupinf.llm.config import WarmupConfig
from groupinf.llm.models import LORA_LAYER, load_model
from groupinf.llm.warmup import warmup, warmup_indices
from llm_helpers import make_world

pytestmark = pytest.mark.usefixtures("one_thread", "private_datasets_cache")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_WARMUP = WarmupConfig(
    fraction=0.5,
    lora_rank=4,
    lora_alpha=8,
    lora_dropout=0.0,
    target_modules=("q_proj", "v_proj", "down_proj"),
    learning_rate=3e-2,
    warmup_ratio=0.1,
    epochs=4,
    batch_size=8,
    micro_batch_size=4,
    max_length=48,
    precision="fp32",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("warmup"), pool_size=32, target_sizes={"math": 5, "words": 4})


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_warmup_trains_a_lora_adapter_on_a_random_fraction_and_saves_its_state(world, tmp_path):
    record = warmup(str(world.model), world.pool, tmp_path, TINY_WARMUP, device="cpu", progress=False)
    assert record["train_size"] == 16 and record["pool_size"] == 32
    assert record["indices"] == warmup_indices(32, 0.5, seed=0) and len(set(record["indices"])) == 16
    assert record["indices"] != warmup_indices(32, 0.5, seed=1)
    assert record["steps"] == 4 * 2
    losses = record["epoch_losses"]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))
    assert losses[-1] < 0.85 * losses[0]
    assert json.loads((tmp_path / "warmup.json").read_text()) == record
    state = torch.load(tmp_path / "optimizer.pt")
    assert len(state["parameter_names"]) == 2 * 3 * 2  # 2 blocks x (q, v, down) x (A, B)
    assert all(LORA_LAYER.search(name.rsplit(".", 1)[0]) for name in state["parameter_names"])
    assert {"exp_avg", "exp_avg_sq"} <= set(state["optimizer"]["state"][0])
    assert state["scheduler"]["last_epoch"] == 8
    trained = lora_weights(load_model(str(world.model), torch.float32, torch.device("cpu"), tmp_path / "adapter"))
    assert len(trained) == 12
    assert all(w.abs().sum() > 0 for name, w in trained.items() if "lora_B" in name)  # B starts at zero


def test_gradient_accumulation_matches_one_full_batch(world, tmp_path):
    one_step = replace(TINY_WARMUP, fraction=0.25, epochs=1, precision="fp64")
    warmup(str(world.model), world.pool, tmp_path / "micro", one_step, device="cpu", progress=False)
    warmup(str(world.model), world.pool, tmp_path / "full", replace(one_step, micro_batch_size=8), "cpu", False)
    a = lora_weights(load_model(str(world.model), torch.float64, torch.device("cpu"), tmp_path / "micro/adapter"))
    b = lora_weights(load_model(str(world.model), torch.float64, torch.device("cpu"), tmp_path / "full/adapter"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-7, atol=1e-9)


def test_pipeline_through_the_command_line_with_the_tiny_config(world, tmp_path):
    config = ["--config", str(CONFIGS / "llm-tiny.json")]
    model = ["--model", str(world.model)]
    assert main(["llm", "warmup", *model, "--data", str(world.pool), "--out", str(tmp_path / "warm"), *config]) == 0
    adapter = ["--adapter", str(tmp_path / "warm" / "adapter")]
    for name, data in {"pool": world.pool, **world.targets}.items():
        out = ["--data", str(data), "--out", str(tmp_path / name)]
        assert main(["llm", "extract", *model, *adapter, *out, *config]) == 0
    targets = [arg for name in world.targets for arg in ("--target", f"{name}={tmp_path / name}")]
    out = ["--out", str(tmp_path / "sel")]
    assert main(["llm", "select", "--pool", str(tmp_path / "pool"), *targets, *out, *config]) == 0
    run = json.loads((tmp_path / "sel" / "run.json").read_text())
    assert (run["n"], run["k"], run["pool_size"]) == (8, 8, 32)  # n from warmup.json: 25% of the pool
    pool_ids = [json.loads(line)["id"] for line in world.pool.read_text().splitlines()]
    for name in world.targets:
        methods = json.loads((tmp_path / "sel" / name / "selection.json").read_text())["methods"]
        assert set(methods) == {"greedy", "topk", "random"}
        for chosen in methods.values():
            assert len(set(chosen["indices"])) == 8
            assert chosen["ids"] == [pool_ids[i] for i in chosen["indices"]]
    store = json.loads((tmp_path / "pool" / "store.json").read_text())
    meta = store["meta"]
    assert store["dtype"] == "bfloat16" and meta["fisher"] == "true" and meta["source"]["train_size"] == 8
