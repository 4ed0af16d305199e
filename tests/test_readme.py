"""The README's library example runs as written, and its numbers are those of the parts it wraps."""

import re
import subprocess
import sys
from pathlib import Path

import torch

import groupinf
from groupinf.curvature import EigenCurvature, exact_hessian
from groupinf.influence import GroupInfluence
from groupinf.selection import InteractionFactors, greedy_select


def test_readme_library_example_runs_verbatim():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "GroupInfluence" in block]
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    estimates, J, chosen = ns["estimates"], ns["J"], ns["chosen"]
    assert set(estimates) == {"F", "I", "F+I", "F+B", "F+I+B"}
    assert all(value.shape == (2,) for value in estimates.values())
    torch.testing.assert_close(J, J.T)
    assert len(chosen.indices) == len(set(chosen.indices.tolist())) == 50
    assert 0 <= int(chosen.indices.min()) and int(chosen.indices.max()) < len(ns["X_pool"])

    # The same numbers from the parts, as the README wrote them before GroupInfluence.fit existed.
    task, theta, X, y = ns["task"], ns["theta"], ns["X_train"], ns["y_train"]
    H = EigenCurvature(exact_hessian(task, theta, X, y, n=len(X)), damping=0.0)
    by_hand = GroupInfluence(task, theta, X, y, H, hf="exact")
    for name, value in by_hand.estimate([[0, 5, 9], [3, 4]]).items():
        torch.testing.assert_close(estimates[name], value)
    torch.testing.assert_close(J, by_hand.pairwise([0, 5, 9]))
    shifts = by_hand.shifts_for(ns["X_pool"], ns["y_pool"])
    factors = InteractionFactors.dense(shifts, by_hand.hf)
    old = greedy_select(shifts @ by_hand.grad_f, k=50, interactions=factors)
    assert torch.equal(chosen.indices, old.indices)
    torch.testing.assert_close(chosen.scores, old.scores)


def test_package_api_names_resolve_without_hugging_face():
    assert all(hasattr(groupinf, name) for name in groupinf.__all__)
    assert {"Task", "GroupInfluence", "greedy_select", "fit_curvature", "compute_features", "run_method"} <= set(
        groupinf.__all__
    )
    probe = "import sys, groupinf; print(sorted({'transformers', 'peft', 'datasets', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
