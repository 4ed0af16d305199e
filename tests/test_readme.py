"""The README's library example runs as written."""

import re
from pathlib import Path

import torch
from torch import nn


def test_readme_library_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "GroupInfluence" in block]
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(80, 4, generator=gen, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    namespace = {
        "model": nn.Linear(4, 3).double(),
        "X": X[:50],
        "y": y[:50],
        "X_test": X[50:65],
        "y_test": y[50:65],
        "X_pool": X[65:],
        "y_pool": y[65:],
    }
    code = code.replace("k=100", "k=10")
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["estimates"]) == {"F", "I", "F+I", "F+B", "F+I+B"}
    assert namespace["J"].shape == (3, 3)
    assert len(namespace["chosen"].indices) == 10
