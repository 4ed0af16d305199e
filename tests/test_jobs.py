import json

import pytest

from groupinf.experiments.jobs import run_jobs


def square_plus(shared, job):
    return job * job + shared


def test_jobs_run_cache_and_resume(tmp_path):
    jobs = {f"j{i}": i for i in range(5)}
    assert run_jobs(square_plus, jobs, tmp_path, shared=10) == {f"j{i}": i * i + 10 for i in range(5)}
    (tmp_path / "j3.json").unlink()
    (tmp_path / "j1.json").write_text(json.dumps({"key": "j1", "result": -1}))  # a cached value is reused
    calls = []

    def counting(shared, job):
        calls.append(job)
        return square_plus(shared, job)

    again = run_jobs(counting, jobs, tmp_path, shared=10)
    assert calls == [3] and again["j1"] == -1 and again["j3"] == 19


def test_jobs_in_worker_processes(tmp_path):
    jobs = {f"j{i}": i for i in range(4)}
    assert run_jobs(square_plus, jobs, tmp_path, shared=1, workers=2) == {f"j{i}": i * i + 1 for i in range(4)}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"j{i}.json" for i in range(4)]
    with pytest.raises(ValueError, match="workers"):
        run_jobs(square_plus, jobs, tmp_path, workers=0)
