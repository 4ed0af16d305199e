import pytest
import torch

from groupinf.losses import CrossEntropy
from groupinf.models import mlp
from groupinf.training import ConvergenceError, SGDConfig, train_sgd


def toy(seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(96, 6, generator=gen)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    return X, y


def test_sgd_is_reproducible_and_decreases_the_loss():
    X, y = toy()
    config = SGDConfig(epochs=60, lr=0.1, batch_size=16)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = mlp(6, 3, hidden=(16, 16), dropout=0.1)
        history = train_sgd(model, CrossEntropy(), X, y, config, seed=5)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert not model.training
    assert torch.equal(runs[0], runs[1])
    assert history[-1] < 0.7 * history[0]


def test_sgd_reports_divergence_and_bad_settings():
    X, y = toy()
    X[0, 0] = 1e30
    with pytest.raises(ConvergenceError, match="diverged"):
        train_sgd(mlp(6, 3, hidden=(8,)), CrossEntropy(), X, y, SGDConfig(epochs=2, lr=10.0))
    with pytest.raises(ValueError, match="invalid SGD"):
        SGDConfig(epochs=0)
    with pytest.raises(ValueError, match="dropout"):
        mlp(6, 3, dropout=1.0)
