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
from groupinf.store import load_store, open_store
from groupinf.target import mean_loss
from groupinf.task import Task

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
    reference = stream_shifts(task, theta, X, y, curvature, 50, tmp_path / "ref" / "shifts.npy", shard_size=8)
    expected = compute_shifts(curvature, per_example_gradients(task, theta, X, y), 50)
    np.testing.assert_allclose(reference, expected.numpy(), rtol=1e-6, atol=1e-9)  # float32 storage
    assert reference.shape == (50, theta.numel()) and reference.dtype == np.float32

    path = tmp_path / "run" / "shifts.npy"

    def stop_after_three(shard: int) -> None:
        if shard == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=8, on_shard=stop_after_three)
    assert not path.exists() and path.with_name("shifts.npy.partial").exists()
    assert json.loads(path.with_suffix(".json").read_text())["done"] == [0, 1, 2]

    computed: list[int] = []
    resumed = stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=8, on_shard=computed.append)
    assert computed == [3, 4, 5, 6]  # 50 rows in shards of 8: the finished shards 0-2 were skipped
    assert np.array_equal(resumed, reference)
    assert not path.with_name("shifts.npy.partial").exists()

    again: list[int] = []  # a complete store is returned as it is
    assert np.array_equal(
        stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=8, on_shard=again.append), reference
    )
    assert again == []
    array, meta = load_shifts(path)
    assert np.array_equal(array, reference) and meta["n"] == 50 and meta["curvature"] == "EigenCurvature"


def test_store_refuses_other_settings_and_float16(problem, tmp_path):
    task, theta, X, y, curvature = problem
    path = tmp_path / "shifts.npy"
    stream_shifts(task, theta, X, y, curvature, 50, path, shard_size=16)
    with pytest.raises(ValueError, match="other settings"):
        stream_shifts(task, theta, X, y, curvature, 60, path, shard_size=16)  # another n
    with pytest.raises(ValueError, match="other settings"):
        stream_shifts(task, theta * 1.01, X, y, curvature, 50, path, shard_size=16)  # another θ
    half = stream_shifts(task, theta, X, y, curvature, 60, path, shard_size=16, dtype="float16", overwrite=True)
    assert half.dtype == np.float16
    full = compute_shifts(curvature, per_example_gradients(task, theta, X, y), 60).numpy()
    np.testing.assert_allclose(half.astype(np.float64), full, rtol=2e-3, atol=1e-7)

    kfac = KFACCurvature.fit(task, theta, tensor_batches(X, y, 25), damping=0.1)
    out = stream_shifts(task, theta, X, y, kfac, 50, tmp_path / "kfac.npy", shard_size=20, batch_size=7)
    np.testing.assert_allclose(out, kfac.solve(per_example_gradients(task, theta, X, y)).numpy() / 50, rtol=1e-6)


def test_store_basics(tmp_path):
    store = open_store(tmp_path / "a.npy", (5, 3), "float32", 2, {"what": "test"})
    assert store.pending() == [0, 1, 2] and store.rows(2) == slice(4, 5)
    with pytest.raises(ValueError, match="shape"):
        store.write(0, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        store.write(0, np.full((2, 3), np.inf))
    with pytest.raises(ValueError, match="not written"):
        store.finish()
    for k in store.pending():
        rows = store.rows(k)
        store.write(k, np.arange(rows.start * 3, rows.stop * 3, dtype=np.float64).reshape(-1, 3))
    array = store.finish()
    assert np.array_equal(array, np.arange(15).reshape(5, 3))
    assert load_store(tmp_path / "a.npy")[1] == {"what": "test"}
    with pytest.raises(ValueError, match="overflow"):
        open_store(tmp_path / "b.npy", (1, 1), "float16", 1).write(0, np.array([[1e6]]))
    with pytest.raises(FileNotFoundError):
        load_store(tmp_path / "missing.npy")
