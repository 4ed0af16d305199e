"""Streaming per-example shifts into the resumable on-disk store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from groupinf.curvature import EigenCurvature, KFACCurvature, gauss_newton, tensor_batches
from groupinf.gradients import per_example_gradients
from groupinf.losses import CrossEntropy
from groupinf.shifts import compute_shifts, load_shifts, stream_shifts
from groupinf.store import ShardedStore
from groupinf.target import mean_loss
from groupinf.task import Task
from store_helpers import store_bytes

DT = torch.float64


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 5, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (50,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    task = Task(model, CrossEntropy(), 0.01, mean_loss(X[:10], y[:10]))
    theta = task.theta()
    return task, theta, X, y, EigenCurvature(gauss_newton(task, theta, X, len(X)), damping=0.1)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_and_gives_the_identical_file(problem, tmp_path):
    task, theta, X, y, curvature = problem
    reference = stream_shifts(task, theta, X, y, curvature, 50, tmp_path / "ref", shard_size=8).read("shifts")
    expected = compute_shifts(curvature, per_example_gradients(task, theta, X, y), 50)
    np.testing.assert_allclose(reference.numpy(), expected.numpy(), rtol=1e-6, atol=1e-9)  # float32 storage
    assert reference.shape == (50, theta.numel()) and reference.dtype == torch.float32

    path = tmp_path / "run"

    def stop_after_three(shard: int) -> None:
        if shard == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=8, on_shard=stop_after_three)
    with pytest.raises(ValueError, match=r"incomplete \(4 of 7 shards missing\); call stream_shifts again"):
        load_shifts(path)  # never shown as complete
    assert ShardedStore.open(path, "shifts", complete=False).missing_shards() == [3, 4, 5, 6]
    (path / "shards" / ".00003.shifts.bin.1a2b.tmp").write_bytes(b"being written when killed")

    computed: list[int] = []
    resumed = stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=8, on_shard=computed.append)
    assert computed == [3, 4, 5, 6]  # 50 rows in shards of 8: the finished shards 0-2 were skipped
    assert torch.equal(resumed.read("shifts"), reference)
    assert store_bytes(path) == store_bytes(tmp_path / "ref")  # the same files, no temporary one left

    again: list[int] = []  # a complete store is returned as it is
    rerun = stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=8, on_shard=again.append)
    assert torch.equal(rerun.read("shifts"), reference)
    assert again == []
    store = load_shifts(path)
    meta = store.layout.meta
    assert torch.equal(store.read("shifts"), reference) and meta["n"] == 50 and meta["curvature"] == "EigenCurvature"


def test_store_refuses_other_settings_and_float16(problem, tmp_path):
    task, theta, X, y, curvature = problem
    path = tmp_path / "shifts"
    stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=16)
    with pytest.raises(ValueError, match=r"other settings \(meta.n differ\).*overwrite=True"):
        stream_shifts(task, theta, X, y, curvature, 60, path, shard_size=16)  # another n
    with pytest.raises(ValueError, match=r"other settings \(meta.theta differ\)"):
        stream_shifts(task, theta * 1.01, X, y, curvature, 50, path, shard_size=16)  # another θ
    store = stream_shifts(task, theta, X, y, curvature, 60, path, shard_size=16, dtype="float16", overwrite=True)
    half = store.read("shifts")
    assert half.dtype == torch.float16
    full = compute_shifts(curvature, per_example_gradients(task, theta, X, y), 60).numpy()
    np.testing.assert_allclose(half.double().numpy(), full, rtol=2e-3, atol=1e-7)

    kfac = KFACCurvature.fit(task, theta, tensor_batches(X, y, 25), damping=0.1)
    out = stream_shifts(task, theta, X, y, kfac, 50, tmp_path / "kfac", shard_size=20, batch_size=7).read("shifts")
    np.testing.assert_allclose(
        out.numpy(), kfac.solve(per_example_gradients(task, theta, X, y)).numpy() / 50, rtol=1e-6
    )


def test_shifts_refuse_a_store_of_an_earlier_version(problem, tmp_path):
    """The single ``.npy`` with its ``.json`` beside it, as earlier versions wrote shifts."""
    task, theta, X, y, curvature = problem
    path = tmp_path / "shifts.npy"
    np.save(path, np.zeros((50, theta.numel()), dtype=np.float32))
    old = {"format": "groupinf-array-store/1", "shape": [50, theta.numel()], "dtype": "float32", "complete": True}
    path.with_suffix(".json").write_text(json.dumps(old))
    advice = r"earlier version.*delete its files \(shifts.npy, shifts.json, shifts.npy.partial\) and call stream_shifts"
    for attempt in (
        lambda: stream_shifts(task, theta, X, y, curvature, 50, path, overwrite=True),
        lambda: load_shifts(path),
    ):
        with pytest.raises(ValueError, match=advice):
            attempt()
    assert np.load(path).shape == (50, theta.numel())  # left as it was
