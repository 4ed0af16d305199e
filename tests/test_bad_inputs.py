"""Bad inputs, one row each: every one ends in a single clear line (exit code 2) or a ValueError/TypeError naming
what is wrong, before any expensive work, leaving no empty output directories (docs/errors.md)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from groupinf import cli
from groupinf.curvature import (
    EigenCurvature,
    KFACCurvature,
    KroneckerCurvature,
    exact_hessian,
    gauss_newton,
    resolve_damping,
)
from groupinf.experiments.faithfulness import FaithfulnessConfig
from groupinf.files import exclusive
from groupinf.influence import GroupInfluence
from groupinf.llm.config import SelectConfig, WarmupConfig
from groupinf.llm.curvature import projected_layout
from groupinf.losses import CrossEntropy
from groupinf.models import linear_model
from groupinf.shifts import compute_shifts
from groupinf.target import mean_loss
from groupinf.task import Task
from groupinf.training import ConvergenceError, SGDConfig, fit_convex
from llm_helpers import LAYERS, make_world, subprocess_env, synthetic_store

pytestmark = pytest.mark.usefixtures("one_thread", "private_datasets_cache")

DIGITS = ["--data", "digits", "--pool-size", "60", "--target-size", "30", "--hidden", "4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Llama with its tokenizer and a 12-example pool (no adapter)."""
    return make_world(tmp_path_factory.mktemp("bad-inputs"), pool_size=12)


def cli_run(capsys, argv: list[object]) -> tuple[int, str]:
    """``groupinf ARGV`` in this process: its exit code (argument errors exit through argparse) and stderr."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def write_npz(path: Path, rows: int = 40, labels: int | None = None, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.normal(size=(rows, 3)), y=np.arange(labels or rows) % 2, **extra)
    return path


def write_json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def features_file(tmp_path: Path) -> Path:
    """A small selection-features file (10 candidates)."""
    from groupinf.features import SelectionFeatures
    from groupinf.selection import InteractionFactors

    gen = torch.Generator().manual_seed(0)
    left, right = torch.randn(2, 10, 3, generator=gen)
    features = SelectionFeatures(torch.randn(10, generator=gen), InteractionFactors(left, right))
    features.save(tmp_path / "f.safetensors")
    return tmp_path / "f.safetensors"


def pool_and_target(tmp_path: Path) -> list[str]:
    synthetic_store(tmp_path / "pool", 40, seed=0)
    synthetic_store(tmp_path / "t", 5, seed=1)
    return ["llm", "select", "--pool", str(tmp_path / "pool"), "--target", f"t={tmp_path / 't'}", "--n", "10"]


def not_called(what: str) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{what} ran before the bad input was reported")

    return fail


# Each case: (tmp_path, world, monkeypatch) -> the arguments after `groupinf`; then the text the one error line
# must contain. Every case writes to OUT = tmp_path/new/out unless it is about --out itself, and OUT's
# parent must not exist afterwards: a failed run leaves no empty directories.
OUT = Path("new") / "out"


def out_is_file(tmp, world, mp):
    (tmp / "file").write_text("x")
    return ["select", "--features", features_file(tmp), "--k", 1, "--out", tmp / "file"]


def out_under_file(tmp, world, mp):
    (tmp / "file").write_text("x")
    return ["select", "--features", features_file(tmp), "--k", 1, "--out", tmp / "file" / "sub"]


def out_not_writable(tmp, world, mp):
    locked = tmp / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the OS say what it says to other users
        real = os.access
        mp.setattr(os, "access", lambda path, mode: False if Path(path) == locked else real(path, mode))
    return ["select", "--features", features_file(tmp), "--k", 1, "--out", locked / "out"]


def checkpoint_random_bytes(tmp, world, mp):
    (tmp / "junk.safetensors").write_bytes(os.urandom(64))
    mp.setattr("groupinf.experiments.selection_eval.train_sgd", not_called("training"))
    return ["select", *DIGITS, "--k", 2, "--checkpoint", tmp / "junk.safetensors", "--out", tmp / OUT]


def device_unknown(tmp, world, mp):
    return ["select", "--features", features_file(tmp), "--k", 1, "--device", "gpu9", "--out", tmp / OUT]


def device_without_cuda(tmp, world, mp):
    mp.setattr("groupinf.experiments.selection_eval.train_sgd", not_called("training θ*"))
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    return ["select", *DIGITS, "--k", 2, "--device", device, "--out", tmp / OUT]


def warmup_config(document: dict) -> Callable:
    def case(tmp, world, mp):
        mp.setattr("groupinf.llm.warmup.load_model", not_called("loading the model"))
        config = write_json(tmp / "c.json", document)
        return ["llm", "warmup", "--model", world.model, "--data", world.pool, "--config", config, "--out", tmp / OUT]

    return case


def warmup_model(name: Callable[[Path], Path]) -> Callable:
    def case(tmp, world, mp):
        (tmp / "empty-dir").mkdir()
        return ["llm", "warmup", "--model", name(tmp), "--data", world.pool, "--out", tmp / OUT]

    return case


def npz_unreadable(tmp, world, mp):
    path = write_npz(tmp / "secret.npz")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: raise what open() raises for other users
        real = open

        def denied(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real(file, *args, **kwargs)

        mp.setattr("groupinf.data.files.open", denied, raising=False)
    return ["faithfulness", "--data", path, "--out", tmp / OUT]


def faithfulness_on(make: Callable[[Path], Path], *options: object) -> Callable:
    def case(tmp, world, mp):
        mp.setattr("groupinf.experiments.faithfulness.fit_convex", not_called("training"))
        return ["faithfulness", "--data", make(tmp), *options, "--groups", 3, "--out", tmp / OUT]

    return case


def toy_npz(tmp):
    return write_npz(tmp / "toy.npz")


def regression_npz(tmp):
    rng = np.random.default_rng(0)
    np.savez(tmp / "regression.npz", X=rng.normal(size=(40, 3)), y=rng.normal(size=40))
    return tmp / "regression.npz"


def garbage_npz(tmp):
    (tmp / "garbage.npz").write_bytes(b"\x93NUMPY this is not an archive")
    return tmp / "garbage.npz"


def pickled_npz(tmp):
    return write_npz(tmp / "objects.npz", X_test=np.array([{"a": 1}, None], dtype=object))


def short_npz(tmp):
    return write_npz(tmp / "short.npz", rows=10, labels=9)


def latin1_csv(tmp):
    (tmp / "latin1.csv").write_bytes("a,b,label\n1,2,0\ncaf\xe9,3,1\n".encode("latin-1"))
    return tmp / "latin1.csv"


def jsonl_pool(tmp, lines: list[str]) -> Path:
    path = tmp / "pool.jsonl"
    path.write_bytes(b"".join(line.encode("latin-1") + b"\n" for line in lines))
    return path


GOOD = json.dumps({"prompt": "2 + 2?", "completion": "4"})


def warmup_on(lines: list[str]) -> Callable:
    def case(tmp, world, mp):
        mp.setattr("groupinf.llm.warmup.load_model", not_called("loading the model"))
        data = jsonl_pool(tmp, lines)
        return ["llm", "warmup", "--model", world.model, "--data", data, "--fraction", 1, "--out", tmp / OUT]

    return case


def features_missing(tmp, world, mp):
    return ["select", "--features", tmp / "none.safetensors", "--k", 1, "--out", tmp / OUT]


def shard_overwritten(tmp, world, mp):
    args = pool_and_target(tmp)
    shard = tmp / "pool" / "shards" / "00001.gradients.bin"
    shard.write_bytes(os.urandom(shard.stat().st_size))  # the same size: only the checksum tells
    return [*args, "--k", 3, "--out", tmp / OUT]


def store_of_an_earlier_version(tmp, world, mp):
    args = pool_and_target(tmp)
    write_json(tmp / "pool" / "store.json", {"format": "groupinf-llm-gradients/1", "num_examples": 40})
    return [*args, "--k", 3, "--out", tmp / OUT]


def select_k_zero(tmp, world, mp):
    mp.setattr("groupinf.experiments.selection_eval.prepare_problem", not_called("loading the pool"))
    return ["select", *DIGITS, "--k", 0, "--out", tmp / OUT]


def llm_select_k_too_big(tmp, world, mp):
    mp.setattr("groupinf.llm.select.fit_curvature", not_called("fitting the curvature"))
    return [*pool_and_target(tmp), "--k", 41, "--out", tmp / OUT]


def llm_select_n_zero(tmp, world, mp):
    mp.setattr("groupinf.llm.select.fit_curvature", not_called("fitting the curvature"))
    return [*pool_and_target(tmp)[:-1], "0", "--k", 3, "--out", tmp / OUT]


def extract_with(*options: object) -> Callable:
    def case(tmp, world, mp):
        mp.setattr("groupinf.llm.extract.load_model", not_called("loading the model"))
        return ["llm", "extract", "--model", world.model, "--data", world.pool, *options, "--out", tmp / OUT]

    return case


def garbage_adapter(tmp, world, mp):
    adapter = tmp / "adapter"
    adapter.mkdir()
    write_json(adapter / "adapter_config.json", {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]})
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(64))
    return ["llm", "extract", "--model", world.model, "--data", world.pool, "--adapter", adapter, "--out", tmp / OUT]


def extract_running(tmp, world, mp):
    store = tmp / "store"
    partial = store / "shards" / ".00000.gradients.bin.1a2b.tmp"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"being written")
    lock = exclusive(store, "extracting gradients")
    lock.__enter__()  # the first extraction, still running
    mp.setattr(extract_running, "lock", lock, raising=False)  # held until the test ends
    mp.setattr("groupinf.llm.extract.load_records", not_called("reading the data"))
    return ["llm", "extract", "--model", world.model, "--data", world.pool, "--out", store]


def experiment(section: str, values: dict) -> Callable:
    def case(tmp, world, mp):
        mp.setattr("groupinf.llm.warmup.warmup", not_called("the warmup"))
        document = {
            "experiment": {
                "model": str(world.model),
                "pool": str(world.pool),
                "targets": {"math": {"type": "math", "dev": str(world.targets["math"]), "eval": "e.jsonl"}},
            }
        }
        document.setdefault(section, {}).update(values)
        return ["llm", "experiment", "--config", write_json(tmp / "c.json", document), "--out", tmp / OUT]

    return case


def llm_select_config(document: dict) -> Callable:
    def case(tmp, world, mp):
        config = write_json(tmp / "c.json", document)
        return [*pool_and_target(tmp), "--config", config, "--out", tmp / OUT]

    return case


def not_json(tmp, world, mp):
    (tmp / "c.json").write_text('{"select": {"k": 2,}')
    return [*pool_and_target(tmp), "--config", tmp / "c.json", "--out", tmp / OUT]


CLI_CASES: dict[str, tuple[Callable, list[str]]] = {
    # 3: OS errors on --out, bad checkpoints and devices, config types, missing models, unreadable files
    "out is a file": (out_is_file, ["--out", "is a file, not a directory"]),
    "out under a file": (out_under_file, ["file is a file, so no directory can be made under it"]),
    "out not writable": (out_not_writable, ["no permission to create files in", "locked"]),
    "checkpoint of random bytes": (checkpoint_random_bytes, ["junk.safetensors is not a readable safetensors"]),
    "device gpu9": (device_unknown, ["--device", "unknown device 'gpu9'"]),
    "device cuda without one": (device_without_cuda, ["--device", "cuda"]),
    'config "lora_rank": "four"': (
        warmup_config({"warmup": {"lora_rank": "four"}}),
        ["c.json [warmup]: lora_rank must be an integer, got 'four'"],
    ),
    'config "epochs": 2.7': (
        warmup_config({"warmup": {"epochs": 2.7}}),
        ["c.json [warmup]: epochs must be an integer, got 2.7"],
    ),
    'config "lora_rank": true': (
        warmup_config({"warmup": {"lora_rank": True}}),
        ["c.json [warmup]: lora_rank must be an integer, got True"],
    ),
    "--model a missing directory": (warmup_model(lambda t: t / "no-model"), ["no model directory at", "no-model"]),
    "--model a directory without a model": (warmup_model(lambda t: t / "empty-dir"), ["has no config.json"]),
    "unreadable .npz": (npz_unreadable, ["secret.npz: Permission denied"]),
    # 4: damping
    "--damping nan": (faithfulness_on(toy_npz, "--damping", "nan"), ["--damping", "finite number >= 0", "nan"]),
    "--damping -1": (faithfulness_on(toy_npz, "--damping", "-1"), ["--damping", "got -1.0"]),
    "llm select --damping inf": (
        lambda t, w, m: [*pool_and_target(t), "--damping", "inf", "--out", t / OUT],
        ["--damping", "got inf"],
    ),
    'config "damping": NaN': (llm_select_config({"select": {"damping": float("nan")}}), ["damping must be", "nan"]),
    # 5: misleading messages
    "garbage .npz": (faithfulness_on(garbage_npz), ["garbage.npz is not an .npz archive", "numpy.savez"]),
    ".npz of Python objects": (faithfulness_on(pickled_npz), ["objects.npz holds Python objects"]),
    ".npz with X and y of other lengths": (faithfulness_on(short_npz), ["short.npz: X has 10 rows but y has 9"]),
    "non-UTF-8 CSV": (faithfulness_on(latin1_csv), ["latin1.csv, line 3: not UTF-8"]),
    "non-UTF-8 JSONL": (warmup_on([GOOD, GOOD.replace("4", "\xe9")]), ["pool.jsonl, line 2: not UTF-8"]),
    "bad record after blank lines": (
        warmup_on([GOOD, "", GOOD, "", json.dumps({"messages": [{"role": "user", "content": "hi"}]}), GOOD]),
        ["pool.jsonl, line 5: no assistant turn"],
    ),
    "missing features file": (features_missing, ["no feature file", "groupinf select --data"]),
    "--max-train -5": (faithfulness_on(toy_npz, "--max-train", "-5"), ["max_train must be an integer >= 1"]),
    "--group-size above the data": (faithfulness_on(toy_npz, "--group-size", 500), ["group_size must be in [1, 28]"]),
    "--class-pairs on regression data": (
        faithfulness_on(regression_npz, "--class-pairs"),
        ["class-pair analysis needs a classification data set; ", "regression.npz is regression"],
    ),
    "--layers not a regular expression": (extract_with("--layers", "q_proj("), ["layers must be a regular expression"]),
    "--adapter missing": (extract_with("--adapter", "no-adapter"), ["no LoRA adapter at no-adapter"]),
    "--adapter of random bytes": (garbage_adapter, ["the weights of the LoRA adapter at", "not readable safetensors"]),
    "shard overwritten at the same size": (shard_overwritten, ["00001.gradients.bin does not match the checksum"]),
    "store of an earlier version": (
        store_of_an_earlier_version,
        ["pool is a store of an earlier version of groupinf", "delete it and rerun the same `groupinf llm extract`"],
    ),
    # 7: checks that ran too late
    "select --k 0": (select_k_zero, ["k must be >= 1, got 0"]),
    "llm select --k larger than the pool": (llm_select_k_too_big, ["k must be in [1, 40]"]),
    "llm select --n 0": (llm_select_n_zero, ["n (the number of examples θ* was trained on) must be an integer >= 1"]),
    "second llm extract into the same store": (extract_running, ["another process is extracting gradients", "store"]),
    "llm experiment k larger than the pool": (experiment("select", {"k": 13}), ["k must be in [1, 12]"]),
    # config files
    'experiment "seeds": [0, "a"]': (
        experiment("experiment", {"seeds": [0, "a"]}),
        ["[experiment]: seeds must be a list of integers"],
    ),
    'experiment "finetune": {"epochs": 2.5}': (
        experiment("experiment", {"finetune": {"epochs": 2.5}}),
        ["[experiment] finetune: epochs must be an integer, got 2.5"],
    ),
    'experiment "threads": 0': (experiment("experiment", {"threads": 0}), ["threads must be an integer >= 1"]),
    "experiment target without a dev set": (
        experiment("experiment", {"targets": {"math": {"type": "math", "eval": "e.jsonl"}}}),
        ["target 'math' needs ['dev']"],
    ),
    "config section not an object": (llm_select_config({"select": [1, 2]}), ["[select] must be an object"]),
    "config file not JSON": (not_json, ["c.json is not valid JSON"]),
    "select --lr nan": (
        lambda t, w, m: ["select", *DIGITS, "--k", 2, "--lr", "nan", "--out", t / OUT],
        ["lr must be a finite number, got nan"],
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_reports_a_bad_input_in_one_line(case, tmp_path, world, monkeypatch, capsys):
    make, expected = CLI_CASES[case]
    monkeypatch.chdir(tmp_path)
    code, err = cli_run(capsys, make(tmp_path, world, monkeypatch))
    errors = [line for line in err.splitlines() if line.startswith("groupinf")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith("groupinf: error: ") and errors == err.strip().splitlines()[-1:]
    for text in expected:
        assert text in errors[0], errors[0]
    assert "--save-features" not in err
    assert not (tmp_path / OUT.parent).exists()  # no directory left behind


def test_extract_leaves_the_running_extractions_files_alone(tmp_path, world, monkeypatch, capsys):
    argv = extract_running(tmp_path, world, monkeypatch)
    assert cli_run(capsys, argv)[0] == 2
    assert (tmp_path / "store" / "shards" / ".00000.gradients.bin.1a2b.tmp").read_bytes() == b"being written"


def test_interrupt_exits_130_with_a_short_message(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        (args.out / "work").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "select", interrupted)
    monkeypatch.setattr(sys, "argv", ["groupinf", "select", "--k", "1", "--out", str(tmp_path / OUT)])
    assert cli.entry() == 130
    assert capsys.readouterr().err == "groupinf: interrupted; rerun the same command to resume\n"
    assert not (tmp_path / OUT.parent).exists()


def test_ctrl_c_stops_worker_processes_without_a_traceback(tmp_path):
    """A real SIGINT to the process group (as a terminal sends it) while retrainings run in two workers."""
    write_npz(tmp_path / "toy.npz", rows=600)
    out = tmp_path / "out"
    argv = ["faithfulness", "--data", tmp_path / "toy.npz", "--model", "mlp", "--hidden", "8", "--groups", 400]
    argv += ["--seeds", 1, "--workers", 2, "--epochs", 100, "--out", out]
    env = subprocess_env(tmp_path / "hf-cache")
    command = [sys.executable, "-m", "groupinf.cli", *map(str, argv)]
    # a foreground command in a terminal starts with Ctrl-C's default action; a background job of a script
    # (as `cmd &` in a non-interactive shell runs this suite) would inherit "ignore" without this
    default_sigint = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    process = subprocess.Popen(
        command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 300
    while len(list(out.glob("work/*/retrain/g*.json"))) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, "no retraining finished in time"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.splitlines()[-1] == "groupinf: interrupted; rerun the same command to resume"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    for _ in range(50):  # the workers are gone with the main process
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("worker processes outlived the interrupted command")
    assert not (out / "results.json").exists()


@pytest.fixture
def logistic():
    """Logistic regression on 30 random examples (float64)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=gen)
    model, loss = linear_model(3, 2, "classification")
    task = Task(model.double(), loss, 0.1, mean_loss(X, y))
    return task, X, y


class NaNModel(nn.Module):
    """A model whose outputs, and so every gradient, are NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * torch.tensor(float("nan"), dtype=x.dtype)


def nan_weights(task, X, y):
    weights = torch.ones(30, dtype=torch.float64)
    weights[4] = float("nan")
    return fit_convex(task, task.theta(), X, y, 30, weights=weights)


def nan_gradient(task, X, y):
    bad = Task(NaNModel(), CrossEntropy(), 0.1, task.target)
    return fit_convex(bad, bad.theta(), X, y, 30)


LIBRARY_CASES: dict[str, tuple[Callable, type[Exception], str]] = {
    # 2: library entry points
    "fit_convex n=0": (lambda t, X, y: fit_convex(t, t.theta(), X, y, 0), ValueError, r"n \(the training-set size\)"),
    "fit_convex n=2.5": (lambda t, X, y: fit_convex(t, t.theta(), X, y, 2.5), ValueError, "an integer >= 1, got 2.5"),
    "fit_convex NaN weight": (nan_weights, ValueError, "weights contain NaN"),
    "fit_convex weights of another length": (
        lambda t, X, y: fit_convex(t, t.theta(), X, y, 30, weights=torch.ones(29, dtype=torch.float64)),
        ValueError,
        r"weights must have shape \(30,\)",
    ),
    "fit_convex numpy θ0": (lambda t, X, y: fit_convex(t, t.theta().numpy(), X, y, 30), TypeError, "torch tensors"),
    "fit_convex gtol=0": (lambda t, X, y: fit_convex(t, t.theta(), X, y, 30, gtol=0.0), ValueError, "gtol"),
    "fit_convex NaN gradient": (nan_gradient, ConvergenceError, "max-norm nan"),
    "exact_hessian n=0": (lambda t, X, y: exact_hessian(t, t.theta(), X, y, 0), ValueError, "must be an integer >= 1"),
    "gauss_newton n=-1": (lambda t, X, y: gauss_newton(t, t.theta(), X, -1), ValueError, "must be an integer >= 1"),
    "compute_shifts n=True": (
        lambda t, X, y: compute_shifts(EigenCurvature(torch.eye(2)), torch.ones(1, 2), True),
        ValueError,
        "got True",
    ),
    "GroupInfluence n=0": (
        lambda t, X, y: GroupInfluence(t, t.theta(), X, y, EigenCurvature(torch.eye(6)), n=0),
        ValueError,
        "must be an integer >= 1",
    ),
    "Task l2=NaN": (lambda t, X, y: Task(t.model, t.loss, float("nan"), t.target), ValueError, "l2 must be a finite"),
    "SGDConfig lr=NaN": (lambda t, X, y: SGDConfig(lr=float("nan")), ValueError, "lr must be a finite number"),
    "WarmupConfig lora_rank=True": (lambda t, X, y: WarmupConfig(lora_rank=True), ValueError, "must be an integer"),
    # 4: one check of the damping
    "resolve_damping inf": (lambda t, X, y: resolve_damping(float("inf"), 1.0), ValueError, "finite number >= 0"),
    "heuristic damping of NaN eigenvalues": (
        lambda t, X, y: resolve_damping("heuristic", float("nan")),
        ValueError,
        "NaN or inf",
    ),
    "SelectConfig damping NaN": (lambda t, X, y: SelectConfig(damping=float("nan")), ValueError, "finite number >= 0"),
    "EigenCurvature damping NaN": (
        lambda t, X, y: EigenCurvature(torch.eye(2), float("nan")),
        ValueError,
        "finite number >= 0",
    ),
    "KFACCurvature.fit damping -0.5": (
        lambda t, X, y: KFACCurvature.fit(t, t.theta(), [(X, y)], damping=-0.5),
        ValueError,
        "finite number >= 0",
    ),
    "damping sweep with NaN": (
        lambda t, X, y: FaithfulnessConfig(damping_sweep=(0.1, float("nan"))),
        ValueError,
        "finite number >= 0",
    ),
    "NaN eigenvalues with a fixed damping": (
        lambda t, X, y: KroneckerCurvature(
            projected_layout(LAYERS[:1]), [(torch.eye(2), torch.eye(3))], [torch.full((2, 3), float("nan"))], 0.0, 0.1
        ),
        ValueError,
        "singular",
    ),
}


@pytest.mark.parametrize("case", list(LIBRARY_CASES))
def test_library_rejects_a_bad_argument(case, logistic):
    call, error, match = LIBRARY_CASES[case]
    with pytest.raises(error, match=match):
        call(*logistic)
