"""Kronfluence's EK-FAC driven the same way by every benchmark that compares with it.

Kronfluence is a peer, never a dependency: it is imported only inside these functions, and
``available()`` says whether the running interpreter has it (``.venv-bench`` does, the project's
``.venv`` does not). The model is a classifier on ``(inputs, labels)`` batches with the unscaled
per-example cross-entropy, summed over a batch (the training loss and the query measurement alike),
so ``score[q, i] = ∇l_qᵀ (G + δI)⁻¹ ∇l_i`` with ``G`` the EK-FAC of the empirical Fisher (real labels)
or of the true Fisher (one label per example drawn from the model, ``torch.multinomial`` on the global
generator) and ``δ`` Kronfluence's ``damping_factor`` added to every eigenvalue (``None``: its heuristic
``0.1 · mean(Λ)`` per module).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def available() -> bool:
    """Whether ``kronfluence`` can be imported here."""
    return importlib.util.find_spec("kronfluence") is not None


def classification_task():  # -> kronfluence.task.Task
    """Kronfluence task: summed unscaled cross-entropy; ``sample=True`` draws labels from the model."""
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model: nn.Module, sample: bool = False) -> torch.Tensor:
            inputs, labels = batch
            logits = model(inputs)
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")  # unscaled per-example losses, summed

        def compute_measurement(self, batch, model: nn.Module) -> torch.Tensor:
            inputs, labels = batch
            return F.cross_entropy(model(inputs), labels, reduction="sum")

    return Classification()


def analyzer(model: nn.Module, workdir: Path, name: str = "bench"):  # -> kronfluence.analyzer.Analyzer
    """An Analyzer on CPU writing under ``workdir``. ``model`` is wrapped IN PLACE (Kronfluence installs its
    tracked modules and freezes the parameters): pass a copy if the model is used elsewhere."""
    from kronfluence.analyzer import Analyzer, prepare_model

    task = classification_task()
    model = prepare_model(model, task)
    return Analyzer(name, model, task, cpu=True, disable_tqdm=True, output_dir=str(Path(workdir) / "kronfluence"))


def fit_ekfac(
    analyzer,
    train_set: torch.utils.data.Dataset,
    batch_size: int,
    *,
    empirical: bool = True,
    dtype: torch.dtype | None = None,
    name: str = "ekfac",
) -> dict[str, float]:
    """Fit EK-FAC factors ``name`` over ``train_set``: the three stages of ``fit_all_factors`` one by one.

    ``dtype`` sets every covariance, eigendecomposition, per-sample-gradient and Λ dtype (``None``:
    Kronfluence's defaults, float32 sums and float64 eigendecompositions). Returns the seconds per stage.
    """
    from kronfluence.arguments import FactorArguments

    extra = {}
    if dtype is not None:
        for key in ("activation_covariance", "gradient_covariance", "eigendecomposition", "per_sample_gradient"):
            extra[f"{key}_dtype"] = dtype
        extra["lambda_dtype"] = dtype
    factor_args = FactorArguments(strategy="ekfac", use_empirical_fisher=empirical, **extra)
    options = {"factor_args": factor_args, "overwrite_output_dir": True}
    start = time.perf_counter()
    analyzer.fit_covariance_matrices(name, dataset=train_set, per_device_batch_size=batch_size, **options)
    covariances = time.perf_counter()
    analyzer.perform_eigendecomposition(name, **options)
    eigen = time.perf_counter()
    analyzer.fit_lambda_matrices(name, dataset=train_set, per_device_batch_size=batch_size, **options)
    fitted = time.perf_counter()
    return {"covariances": covariances - start, "eigh": eigen - covariances, "lambda": fitted - eigen}


def pairwise_scores(
    analyzer,
    query_set: torch.utils.data.Dataset,
    train_set: torch.utils.data.Dataset,
    batch_size: int,
    *,
    damping: float | None,
    dtype: torch.dtype | None = None,
    factors: str = "ekfac",
    name: str = "scores",
) -> np.ndarray:
    """``(queries, train)`` scores with the fitted ``factors``; ``damping`` is Kronfluence's ``damping_factor``
    (``None``: its heuristic); ``dtype`` the per-sample-gradient, preconditioning and score dtype."""
    from kronfluence.arguments import ScoreArguments

    extra = {}
    if dtype is not None:
        extra = {"per_sample_gradient_dtype": dtype, "precondition_dtype": dtype, "score_dtype": dtype}
    analyzer.compute_pairwise_scores(
        name,
        factors,
        query_dataset=query_set,
        train_dataset=train_set,
        per_device_query_batch_size=len(query_set),
        per_device_train_batch_size=batch_size,
        score_args=ScoreArguments(damping_factor=damping, **extra),
        overwrite_output_dir=True,
    )
    return analyzer.load_pairwise_scores(name)["all_modules"].double().numpy()
