"""`groupinf faithfulness --suite`: one table row per setting, with draws, Spearman and truth reliability."""

import numpy as np

from groupinf.experiments import suite
from groupinf.experiments.faithfulness import FaithfulnessConfig
from groupinf.training import SGDConfig


def test_suite_tabulates_every_setting(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(np.int64)
    np.savez(tmp_path / "toy.npz", X=X, y=y)
    data = str(tmp_path / "toy.npz")
    settings = {
        "toy-LR": FaithfulnessConfig(data=data, model="lr", groups=4, group_size=4, draws=2),
        "toy-MLP": FaithfulnessConfig(
            data=data,
            model="mlp",
            hidden=(4,),
            curvature="ggn",
            damping=0.01,
            groups=4,
            group_size=4,
            seeds=2,
            sgd=SGDConfig(epochs=3),
        ),
    }
    monkeypatch.setattr(suite, "CPU_SUITE", settings)
    text = suite.run_suite("cpu", tmp_path / "out")
    header, _, lr_row, mlp_row = text.strip().splitlines()
    assert header.startswith("| setting | draws | H_f | F | F+I |")
    assert header.endswith("| truth reliability | seconds |")
    assert lr_row.startswith("| toy-LR | 2 | exact |") and lr_row.split("|")[-3].strip() == "exact"
    assert mlp_row.startswith("| toy-MLP | 1 | block-ggn |")  # each model kind's default H_f
    assert len(lr_row.split("|")) == len(header.split("|")) == len(mlp_row.split("|"))
    assert (tmp_path / "out" / "suite.md").read_text() == text and (tmp_path / "out" / "suite.png").is_file()

    text = suite.run_suite("cpu", tmp_path / "out", target_curvature="ggn", workers=1)  # retrainings cached
    assert [row.split("|")[3].strip() for row in text.strip().splitlines()[2:]] == ["ggn", "ggn"]
