"""`make gpu-check` (benchmarks/gpu_check.py): its skip line without CUDA and, on the CPU, the same code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT / "src"), env.get("PYTHONPATH"))))
    command = [sys.executable, "-m", "benchmarks.gpu_check", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_without_cuda_it_prints_one_line_and_exits_0():
    done = gpu_check()
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()] and done.stdout.startswith("gpu-check: skipped, no CUDA")


@pytest.mark.slow
def test_tiny_dry_run_warms_up_extracts_and_selects_on_the_cpu(tmp_path):
    done = gpu_check("--tiny", "--out", str(tmp_path / "report.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["stages"]) == {"warmup", "extract pool", "extract target", "select"}
    assert report["device"] == "cpu" and all(stage["examples_per_s"] > 0 for stage in report["stages"].values())
