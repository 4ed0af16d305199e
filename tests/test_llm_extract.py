"""The gradient store: its content, resumption after an interruption, torchrun ranks, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from groupinf.llm.data import collate, encode, load_records, pad_id
from groupinf.llm.extract import extract, length_batches
from groupinf.llm.models import linear_layers, load_model, load_tokenizer
from groupinf.llm.projection import LayerSpec, Projector
from groupinf.llm.store import GradientStore, StoreSpec
from llm_helpers import (
    TINY_EXTRACT,
    extract_args,
    make_world,
    random_adapter,
    run_module,
    subprocess_env,
)
from store_helpers import store_bytes

pytestmark = pytest.mark.usefixtures("one_thread", "private_datasets_cache")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 20-example pool (3 shards of 8) and a tiny Llama with a random LoRA adapter."""
    world = make_world(tmp_path_factory.mktemp("extract"), pool_size=20)
    return world, random_adapter(world.model, world.root / "adapter")


def run_extract(world, out, config=TINY_EXTRACT):
    world, adapter = world
    return extract(str(world.model), world.pool, out, config, adapter, device="cpu", progress=False)


@pytest.mark.parametrize("config", [TINY_EXTRACT, replace(TINY_EXTRACT, batch_size=8, batch_tokens=100)])
def test_store_holds_each_examples_projected_gradients(world, tmp_path, config):
    done = run_extract(world, tmp_path / "store", config)
    store = done.store
    assert (done.computed, done.rank, done.world_size) == ([0, 1, 2], 0, 1)
    assert (store.spec.num_examples, store.spec.num_shards, store.spec.dim) == (20, 3, 12 * 3 * 2)
    gradients, fisher = store.read("gradients"), store.read("fisher")
    assert gradients.dtype == torch.float32 and gradients.shape == (20, 72)
    # the same examples, one at a time, straight through the projector
    w, adapter = world
    model = load_model(str(w.model), torch.float32, torch.device("cpu"), adapter)
    tokenizer = load_tokenizer(str(w.model))
    projector = Projector(model, linear_layers(model), "gaussian", r_out=3, r_in=2, seed=TINY_EXTRACT.seed)
    records = load_records(w.pool)
    examples = encode(records, tokenizer, "auto", TINY_EXTRACT.max_length)
    for i, example in enumerate(examples):
        single = projector.compute(collate([example], pad_id(tokenizer)), "true", [i])
        torch.testing.assert_close(gradients[i], single.gradients[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fisher[i], single.fisher[0], rtol=1e-4, atol=1e-5)
    assert store.ids() == records["id"]
    moments = store.moments()
    assert moments["examples"].item() == 20
    assert moments["tokens"].item() == sum(len(e.input_ids) for e in examples)
    info = store.shard_info(2)
    assert (info["start"], info["stop"], info["ids"]) == (16, 20, records["id"][16:])
    assert info["response_tokens"] == [e.num_response_tokens for e in examples[16:]]
    meta = json.loads((tmp_path / "store" / "store.json").read_text())["meta"]
    assert meta["source"]["adapter_sha256"] and meta["source"]["data_sha256"]
    assert [layer["name"] for layer in meta["layers"]] == list(linear_layers(model))


def test_length_batches_respect_both_limits():
    lengths = [5, 30, 7, 12, 30, 2, 50, 9]
    batches = length_batches(lengths, batch_size=3, batch_tokens=40)
    order = [i for batch in batches for i in batch]
    assert [lengths[i] for i in order] == sorted(lengths) and sorted(order) == list(range(8))
    assert all(len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40) for b in batches)
    assert batches == [[5, 0, 2], [7, 3], [1], [4], [6]]
    assert length_batches(lengths, batch_size=8) == [order]


def test_interrupted_extraction_resumes_at_the_first_unfinished_shard(world, tmp_path, monkeypatch):
    reference = run_extract(world, tmp_path / "reference").store
    written = []
    write = GradientStore.write_shard

    def interrupt_after_two(self, shard, *args):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(shard)
        write(self, shard, *args)

    monkeypatch.setattr(GradientStore, "write_shard", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_extract(world, tmp_path / "store")
    monkeypatch.setattr(GradientStore, "write_shard", write)
    with pytest.raises(ValueError, match=r"incomplete \(1 of 3 shards missing\).*rerun"):
        GradientStore.open(tmp_path / "store")
    shards = tmp_path / "store" / "shards"
    finished = {p: p.stat().st_mtime_ns for p in shards.iterdir()}
    assert len(finished) == 2 * 4  # two shards of gradients, fisher, moments and json
    # what a writer killed mid-shard leaves: a temporary file and an array without its .json
    (shards / ".00002.fisher.bin.x1y2.tmp").write_bytes(b"partial")
    (shards / "00002.gradients.bin").write_bytes(b"\0" * 12)

    resumed = run_extract(world, tmp_path / "store")
    assert resumed.computed == [2]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished shards untouched
    assert store_bytes(tmp_path / "store") == store_bytes(reference.path)


def test_torchrun_two_processes_write_the_single_process_store(world, tmp_path):
    w, adapter = world
    env = subprocess_env(tmp_path / "hf-cache")
    single = run_module(["-m", "groupinf.cli", *extract_args(w, w.pool, tmp_path / "one", TINY_EXTRACT, adapter)], env)
    assert "rank 0 of 1: computed shards [0, 1, 2]" in single.stdout
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "groupinf.cli"]
    both = run_module([*torchrun, *extract_args(w, w.pool, tmp_path / "two", TINY_EXTRACT, adapter)], env)
    assert "rank 0 of 2: computed shards [0, 2]" in both.stdout
    assert "rank 1 of 2: computed shards [1]" in both.stdout
    one_files, two_files = store_bytes(tmp_path / "one"), store_bytes(tmp_path / "two")
    assert len(one_files) == 1 + 3 * 4
    assert one_files == two_files


def test_resuming_with_other_settings_is_refused(world, tmp_path):
    run_extract(world, tmp_path / "store", replace(TINY_EXTRACT, shard_size=100))
    with pytest.raises(ValueError, match=r"other settings.*settings"):
        run_extract(world, tmp_path / "store", replace(TINY_EXTRACT, shard_size=100, r_in=1))


def test_missing_inputs_name_the_command_that_makes_them(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="groupinf llm extract --out"):
        GradientStore.open(tmp_path / "nothing")
    w, _ = world
    with pytest.raises(FileNotFoundError, match="groupinf llm warmup"):
        extract(str(w.model), w.pool, tmp_path / "s", TINY_EXTRACT, tmp_path / "no-adapter", "cpu", False)


def test_a_store_of_an_earlier_version_is_refused_with_advice(world, tmp_path):
    old = tmp_path / "store"
    old.mkdir()
    (old / "store.json").write_text(json.dumps({"format": "groupinf-llm-gradients/1", "num_examples": 20}))
    advice = (
        r"earlier version of groupinf \(groupinf-llm-gradients/1\).*delete it and rerun the same `groupinf llm extract`"
    )
    with pytest.raises(ValueError, match=advice):
        GradientStore.open(old)
    with pytest.raises(ValueError, match=advice):
        run_extract(world, old)
    assert [p.name for p in old.iterdir()] == ["store.json"]  # left as it was


def test_overflowing_float16_is_refused(tmp_path):
    layers = (LayerSpec("l", d_out=4, d_in=4, r_out=1, r_in=2),)
    spec = StoreSpec(num_examples=2, shard_size=2, dtype="float16", fisher="empirical", layers=layers)
    store = GradientStore.prepare(tmp_path, spec)
    moments = {"tokens": torch.tensor(1.0, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"not finite in float16.*bfloat16"):
        store.write_shard(0, {"gradients": torch.tensor([[1.0, 2.0], [1e6, 0.0]])}, moments, {"ids": [0, 1]})
    store.write_shard(0, {"gradients": torch.tensor([[1.0, 2.0], [3.0, 0.5]])}, moments, {"ids": [0, 1]})
    assert GradientStore.open(tmp_path).read().tolist() == [[1.0, 2.0], [3.0, 0.5]]
    with pytest.raises(ValueError, match="arrays must be"):
        store.write_shard(0, {"fisher": torch.zeros(2, 2)}, moments, {})
