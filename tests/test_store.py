"""The sharded store: writing and reading, resumption after an interruption, checksums, settings, several
writers, stores of earlier versions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import groupinf.store
from groupinf.store import ShardedStore, StoreLayout
from store_helpers import store_bytes

#: 10 rows in shards of 4 (the last one short), two arrays and an extra file per shard
LAYOUT = StoreLayout("test", 10, 4, "float32", {"a": 3, "b": 2}, ("extra.txt",), {"what": "test"})


def shard_content(shard: int) -> tuple[dict[str, np.ndarray], dict[str, bytes], dict[str, str]]:
    """Arrays, extra files and info of ``shard`` of ``LAYOUT``, made from the shard's rows."""
    start, stop = LAYOUT.rows(shard)
    rows = np.arange(start, stop, dtype=np.float64)[:, None]
    arrays = {"a": rows * [1.0, 2.0, 3.0] + 0.5, "b": -rows * [1.0, 0.25]}
    return arrays, {"extra.txt": f"shard {shard}".encode()}, {"note": f"rows {start}-{stop}"}


def write(store: ShardedStore, shards) -> None:
    for shard in shards:
        store.write_shard(shard, *shard_content(shard))


@pytest.fixture
def reference(tmp_path) -> ShardedStore:
    """``LAYOUT`` written in one go."""
    store = ShardedStore.prepare(tmp_path / "reference", LAYOUT)
    write(store, range(LAYOUT.num_shards))
    return store


def test_store_basics(tmp_path):
    layout = StoreLayout("test", 5, 2, "float32", {"x": 3}, meta={"what": "test"})
    store = ShardedStore.prepare(tmp_path / "a", layout)
    assert store.missing_shards() == [0, 1, 2] and layout.rows(2) == (4, 5)
    with pytest.raises(ValueError, match="shape"):
        store.write_shard(0, {"x": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="NaN or inf"):
        store.write_shard(0, {"x": np.full((2, 3), np.inf)})
    with pytest.raises(ValueError, match="arrays must be"):
        store.write_shard(0, {"y": np.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"incomplete \(3 of 3 shards missing\)"):
        ShardedStore.open(tmp_path / "a", "test")
    for shard in store.missing_shards():
        start, stop = layout.rows(shard)
        store.write_shard(shard, {"x": np.arange(start * 3, stop * 3, dtype=np.float64).reshape(-1, 3)})
    opened = ShardedStore.open(tmp_path / "a", "test")
    assert torch.equal(opened.read("x"), torch.arange(15, dtype=torch.float32).reshape(5, 3))
    assert [start for start, _ in opened.shards("x")] == [0, 2, 4]
    assert opened.layout == layout
    with pytest.raises(ValueError, match="holds test, not shifts"):
        ShardedStore.open(tmp_path / "a", "shifts")
    half = StoreLayout("test", 1, 1, "float16", {"x": 1})
    with pytest.raises(ValueError, match=r"not finite in float16.*overflow\?\); use a wider dtype"):
        ShardedStore.prepare(tmp_path / "b", half).write_shard(0, {"x": np.array([[1e6]])})
    with pytest.raises(FileNotFoundError, match="no store at"):
        ShardedStore.open(tmp_path / "missing", "test")
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_every_dtype_reads_back_as_written(tmp_path, dtype):
    values = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    values[0, 0] = 1 + 2**-11 + 2**-40  # rounds up to float16 directly, down through float32 (torch's way)
    store = ShardedStore.prepare(tmp_path, StoreLayout("test", 7, 3, dtype, {"x": 5}))
    for shard in range(3):
        start, stop = store.layout.rows(shard)
        store.write_shard(shard, {"x": values[start:stop] if shard % 2 else values[start:stop].numpy()})
    stored = ShardedStore.open(tmp_path, "test").read("x")
    rounded = values.to(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(values.numpy().astype(dtype))
    assert stored.dtype == rounded.dtype and torch.equal(stored, rounded)
    if dtype == "float16":
        assert stored[0, 0].item() == 1 + 2**-10  # rounded once, as numpy does


def test_interrupted_writer_resumes_with_the_identical_files(tmp_path, reference):
    path = tmp_path / "store"
    store = ShardedStore.prepare(path, LAYOUT)
    write(store, [0, 2])
    # what a writer killed in shard 1 leaves: files without a .json, a temporary file; shard 0's file cut short
    arrays = shard_content(1)[0]
    (path / "shards" / "00001.a.bin").write_bytes(np.asarray(arrays["a"], dtype=np.float32).tobytes())
    (path / "shards" / ".00001.b.bin.1a2b.tmp").write_bytes(b"being written")
    (path / "shards" / "00000.b.bin").write_bytes(b"\0" * 4)

    resumed = ShardedStore.prepare(path, LAYOUT)
    assert resumed.missing_shards() == [0, 1]
    with pytest.raises(ValueError, match=r"incomplete \(2 of 3 shards missing\)"):
        ShardedStore.open(path, "test")
    resumed.discard_partial_files()
    before = {p: p.stat().st_mtime_ns for p in (path / "shards").glob("00002.*")}
    write(resumed, resumed.missing_shards())
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the finished shard is untouched
    assert len(store_bytes(path)) == 1 + 3 * 4
    assert store_bytes(path) == store_bytes(reference.path)


def test_two_writers_of_disjoint_shards_write_the_single_writers_store(tmp_path, reference):
    first, second = (ShardedStore.prepare(tmp_path / "store", LAYOUT) for _ in range(2))
    write(second, [2])
    write(first, [0])
    write(second, [1])
    assert first.missing_shards() == second.missing_shards() == []
    assert store_bytes(tmp_path / "store") == store_bytes(reference.path)
    opened = ShardedStore.open(tmp_path / "store", "test")
    assert torch.equal(opened.read("a"), reference.read("a")) and opened.shard_info(2)["note"] == "rows 8-10"


def test_a_changed_file_is_reported_once_read(tmp_path, reference, monkeypatch):
    shard = reference.path / "shards" / "00001.a.bin"
    shard.write_bytes(os.urandom(shard.stat().st_size))  # the same size: only the checksum tells
    store = ShardedStore.open(reference.path, "test")  # complete: the sizes match
    with pytest.raises(ValueError, match=r"00001.a.bin does not match the checksum.*delete 00001.json beside it"):
        store.read("a")
    (reference.path / "shards" / "00002.extra.txt").write_text("shard 9")
    with pytest.raises(ValueError, match=r"00002\.extra\.txt does not match the checksum"):
        store.verified_file(2, "extra.txt")
    assert store.verified_file(0, "extra.txt").read_text() == "shard 0"

    digests = []
    digest = groupinf.store.file_digest
    monkeypatch.setattr(groupinf.store, "file_digest", lambda path: digests.append(path.name) or digest(path))
    fresh = ShardedStore.open(reference.path, "test")
    for _ in range(2):
        fresh.read("b")
    assert digests == ["00000.b.bin", "00001.b.bin", "00002.b.bin"]  # checked once per store object


def test_other_settings_are_refused_and_named(tmp_path, reference):
    other = StoreLayout("test", 10, 4, "float16", {"a": 3, "b": 2}, ("extra.txt",), {"what": "other"})
    with pytest.raises(ValueError, match=r"other settings \(dtype, meta.what differ\).*same settings.*another path"):
        ShardedStore.prepare(reference.path, other)
    assert ShardedStore.open(reference.path, "test").layout == LAYOUT  # left as it was
    replaced = ShardedStore.prepare(reference.path, other, overwrite=True)
    assert replaced.missing_shards() == [0, 1, 2] and list((reference.path / "shards").iterdir()) == []
    assert ShardedStore.open(reference.path, "test", complete=False).layout == other


@pytest.mark.parametrize("old", ["groupinf-array-store/1", "groupinf-llm-gradients/1"])
def test_stores_of_earlier_versions_are_refused_with_advice(tmp_path, old):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "store.json").write_text(json.dumps({"format": old, "num_examples": 3}))
    for attempt in (
        lambda: ShardedStore.prepare(tmp_path / "store", LAYOUT, overwrite=True),
        lambda: ShardedStore.open(tmp_path / "store", "test"),
    ):
        with pytest.raises(ValueError, match=rf"earlier version of groupinf \({old}\).*delete it and run what"):
            attempt()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "store.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a groupinf store"):
        ShardedStore.open(tmp_path / "other", "test")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a store directory"):
        ShardedStore.prepare(tmp_path / "file", LAYOUT)
