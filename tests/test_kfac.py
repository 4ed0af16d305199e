"""K-FAC / EK-FAC against brute force: explicit per-example activations, output gradients and gradients.

Every brute-force quantity here is computed one example at a time without the library's hooks: a manual
forward pass through ``nn.Sequential`` adds a zero perturbation ``ε`` to each covered layer's output, and
``∂(vector · output)/∂ε`` is that layer's output gradient ``s``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from groupinf.curvature import EigenCurvature, gauss_newton
from groupinf.curvature.factored import gradient_products, hooked_gradients, influence_scores
from groupinf.curvature.hooks import backpropagate, find_layers, recording
from groupinf.curvature.kfac import (
    EKFACCurvature,
    KFACCurvature,
    corrected_eigenvalues,
    fit_factors,
    tensor_batches,
)
from groupinf.gradients import per_example_gradients
from groupinf.losses import CrossEntropy, Loss, SquaredError
from groupinf.target import mean_loss
from groupinf.task import Task

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- problems


def _classes(X: Tensor, gen: torch.Generator, num_classes: int = 3) -> Tensor:
    W = torch.randn(X[0].numel(), num_classes, generator=gen, dtype=DT)
    return (X.flatten(1) @ W + torch.randn(len(X), num_classes, generator=gen, dtype=DT)).argmax(1)


def _train(model: nn.Module, X: Tensor, y: Tensor, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()


@pytest.fixture(scope="module")
def mlp() -> tuple[Task, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """8-16-16-3 tanh MLP, softmax CE, float64, 200 training + 40 test examples, briefly trained."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(240, 8, generator=gen, dtype=DT)
    y = _classes(X, gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    _train(model, X[:200], y[:200], 100)
    task = Task(model, CrossEntropy(), 1e-3, mean_loss(X[200:], y[200:]))
    return task, task.theta(), X[:200], y[:200], X[200:], y[200:]


@pytest.fixture(scope="module")
def cnn() -> tuple[Task, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Conv2d(2→4, 3×3, pad 1) + tanh + Linear(100→3) on 2×5×5 inputs (379 parameters), briefly trained."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(240, 2, 5, 5, generator=gen, dtype=DT)
    y = _classes(X, gen)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(100, 3)).double()
    _train(model, X[:200], y[:200], 100)
    task = Task(model, CrossEntropy(), 1e-3, mean_loss(X[200:], y[200:]))
    return task, task.theta(), X[:200], y[:200], X[200:], y[200:]


# ----------------------------------------------------------------------------------------------- brute force


def hand_patches(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Patches ``(L, C·kh·kw)`` of one input ``(1, C, H, W)``, built by slicing (no unfold)."""
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    sh, sw = conv.stride
    if conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    elif conv.padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        ph, pw = conv.padding
        pads = (pw, pw, ph, ph)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, pads, mode=mode)[0]
    out_h = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
            rows.append(patch.reshape(-1))
    return torch.stack(rows)


def _features(module: nn.Module, x: Tensor) -> Tensor:
    """Brute-force layer input features ``(T, d_in + 1)`` of one example (bias column appended)."""
    feats = hand_patches(module, x) if isinstance(module, nn.Conv2d) else x.reshape(-1, x.shape[-1])
    return torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], dim=1)


def manual_forward(model: nn.Sequential, x: Tensor, eps: dict[str, Tensor] | None) -> tuple[Tensor, dict]:
    """Forward one example through ``model``; returns the output and the covered layers' input features."""
    feats, h = {}, x
    for name, module in model.named_children():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            feats[name] = _features(module, h)
            h = module(h) + (0 if eps is None else eps[name])
        else:
            h = module(h)
    return h.reshape(1, -1), feats


def _output_gradient(name: str, model: nn.Sequential, g: Tensor) -> Tensor:
    if isinstance(dict(model.named_children())[name], nn.Conv2d):
        return g.reshape(g.shape[1], -1).T
    return g.reshape(-1, g.shape[-1])


def brute_force_per_example(model: nn.Sequential, loss: Loss, X: Tensor, vectors) -> list[dict]:
    """Per example: ``{layer: (a (T, d_in+1), [(s (T, d_out), weight), …])}``; ``vectors(i, out)`` gives the
    back-propagated vectors ``(C,)`` and their weights."""
    shapes = {}
    with torch.no_grad():
        h = X[:1]
        for name, module in model.named_children():
            h = module(h)
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                shapes[name] = h.shape
    result = []
    for i in range(len(X)):
        eps = {name: torch.zeros(shape, dtype=DT, requires_grad=True) for name, shape in shapes.items()}
        out, feats = manual_forward(model, X[i : i + 1], eps)
        per_layer = {name: (feats[name].detach(), []) for name in shapes}
        for vec, weight in vectors(i, out):
            grads = torch.autograd.grad(out[0], list(eps.values()), grad_outputs=vec, retain_graph=True)
            for name, g in zip(eps, grads, strict=True):
                per_layer[name][1].append((_output_gradient(name, model, g), weight))
        result.append(per_layer)
    return result


def empirical_vectors(loss: Loss, y: Tensor):
    def vectors(i: int, out: Tensor) -> list[tuple[Tensor, float]]:
        leaf = out.detach().requires_grad_(True)
        return [(torch.autograd.grad(loss(leaf, y[i : i + 1]).sum(), leaf)[0][0], 1.0)]

    return vectors


def ggn_vectors(loss: Loss):
    def vectors(i: int, out: Tensor) -> list[tuple[Tensor, float]]:
        root = loss.output_hessian_sqrt(out.detach())[0]
        return [(root[:, c], 1.0) for c in range(root.shape[1])]

    return vectors


def brute_force_factors(per_example: list[dict]) -> tuple[dict, dict]:
    """``A = mean over tokens of ā āᵀ``, ``S = (1/N) Σ_i Σ_vectors w Σ_t s sᵀ``, by explicit loops."""
    A, S, tokens = {}, {}, {}
    for example in per_example:
        for name, (a, ss) in example.items():
            A[name] = A.get(name, 0) + a.T @ a
            tokens[name] = tokens.get(name, 0) + len(a)
            for s, w in ss:
                S[name] = S.get(name, 0) + w * (s.T @ s)
    return {k: v / tokens[k] for k, v in A.items()}, {k: v / len(per_example) for k, v in S.items()}


def layer_gradients(task: Task, grads: Tensor) -> dict[str, Tensor]:
    """Per-example gradients ``(N, p)`` -> per layer ``(N, d_out, d_in + 1)`` (bias as the last column)."""
    named = {n: grads[:, sl] for n, sl in task.space.slices().items()}
    out = {}
    for layer in find_layers(task.model, task.space):
        w = named[layer.weight].reshape(len(grads), layer.out_features, layer.in_features)
        if layer.bias is not None:
            w = torch.cat([w, named[layer.bias].unsqueeze(-1)], dim=-1)
        out[layer.name] = w
    return out


def brute_force_eigenvalues(task: Task, grads: Tensor, factors) -> dict[str, Tensor]:
    """``Λ = mean_i (Q_Sᵀ ∇W_i Q_A)²`` from explicit per-example gradient matrices."""
    out = {}
    for name, gw in layer_gradients(task, grads).items():
        _, q_a, _, q_s = factors.eigenbases[name]
        out[name] = (q_s.T @ gw @ q_a).square().mean(0)
    return out


# ----------------------------------------------------------------------------------------------- factors


def test_single_linear_squared_error_kfac_is_the_exact_gauss_newton():
    """One Linear layer with ½‖h−y‖²: G = (1/n) Σ ā āᵀ ⊗ I exactly, so K-FAC (GGN vectors) equals dense GGN."""
    gen = torch.Generator().manual_seed(3)
    X, Y = torch.randn(50, 4, generator=gen, dtype=DT), torch.randn(50, 3, generator=gen, dtype=DT)
    for bias in (True, False):
        torch.manual_seed(0)
        task = Task(nn.Linear(4, 3, bias=bias).double(), SquaredError(), 0.1, mean_loss(X, Y))
        theta = task.theta()
        dense = EigenCurvature(gauss_newton(task, theta, X, len(X)), damping=0.5)
        kfac = KFACCurvature.fit(task, theta, tensor_batches(X, Y, 16), fisher="ggn", damping=0.5)
        V = torch.randn(6, theta.numel(), generator=gen, dtype=DT)
        torch.testing.assert_close(kfac.matvec(V), dense.matvec(V), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(kfac.solve(V), dense.solve(V), rtol=1e-10, atol=1e-12)
        # the true Fisher with ONE sampled target per example is unbiased: many samples approach S = I
        sampled = fit_factors(task, theta, tensor_batches(X, Y, 16), fisher="true", samples=200, seed=0)
        torch.testing.assert_close(sampled.S[""], torch.eye(3, dtype=DT), atol=0.05, rtol=0)


@pytest.mark.parametrize("fisher", ["empirical", "true", "ggn"])
def test_factors_equal_brute_force_expectations(mlp, fisher):
    task, theta, X, y, _, _ = mlp
    X, y = X[:60], y[:60]
    batches = tensor_batches(X, y, 16)
    factors = fit_factors(task, theta, batches, fisher=fisher, seed=5)
    if fisher == "true":  # replay the sampling: same generator, same batches, same order
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            labels = torch.cat([task.loss.sample_targets(task.model(xb), gen) for xb, _ in batches])
        vectors = empirical_vectors(task.loss, labels)
    elif fisher == "empirical":
        vectors = empirical_vectors(task.loss, y)
    else:
        vectors = ggn_vectors(task.loss)
    A, S = brute_force_factors(brute_force_per_example(task.model, task.loss, X, vectors))
    assert set(factors.A) == {"0", "2", "4"}
    for name in factors.A:
        torch.testing.assert_close(factors.A[name], A[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(factors.S[name], S[name], rtol=1e-10, atol=1e-12)
    assert factors.num_examples == 60 and factors.num_tokens["0"] == 60


@pytest.mark.parametrize("fisher", ["empirical", "ggn"])
def test_batch_size_does_not_change_the_factors(mlp, fisher):
    task, theta, X, y, _, _ = mlp
    small = fit_factors(task, theta, tensor_batches(X, y, 7), fisher=fisher)
    large = fit_factors(task, theta, tensor_batches(X, y, 200), fisher=fisher)
    for name in small.A:
        torch.testing.assert_close(small.A[name], large.A[name], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(small.S[name], large.S[name], rtol=1e-10, atol=1e-10)
    # a DataLoader over a TensorDataset (batches come as lists) gives the same factors
    loader = DataLoader(TensorDataset(X, y), batch_size=33)
    from_loader = fit_factors(task, theta, loader, fisher=fisher)
    for name in small.A:
        torch.testing.assert_close(from_loader.S[name], large.S[name], rtol=1e-10, atol=1e-10)
    lam_small = corrected_eigenvalues(task, theta, tensor_batches(X, y, 7), small)
    lam_large = corrected_eigenvalues(task, theta, tensor_batches(X, y, 200), small)
    for name in lam_small:
        torch.testing.assert_close(lam_small[name], lam_large[name], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------- EK-FAC eigenvalues


class Sequence(nn.Module):
    """Linear on (B, T, d) tokens, mean over tokens, Linear head: a "sequence dimension" layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(x)).mean(1))


class Shared(nn.Module):
    """The same Linear applied twice in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def _small_task(kind: str) -> tuple[Task, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    if kind == "sequence":
        model, X = Sequence(), torch.randn(40, 6, 4, generator=gen, dtype=DT)
    elif kind == "shared":
        model, X = Shared(), torch.randn(40, 4, generator=gen, dtype=DT)
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(27, 3))
        X = torch.randn(40, 2, 6, 6, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (40,), generator=gen)
    task = Task(model.double(), CrossEntropy(), 0.0, mean_loss(X, y))
    return task, task.theta(), X, y


def _task_of_kind(kind: str, mlp: tuple, cnn: tuple) -> tuple[Task, Tensor, Tensor, Tensor]:
    """The first 50 examples of the ``mlp``/``cnn`` fixtures, or a ``_small_task`` (sequence, shared)."""
    if kind in ("mlp", "cnn"):
        task, theta, X, y, _, _ = mlp if kind == "mlp" else cnn
        return task, theta, X[:50], y[:50]
    return _small_task(kind)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "sequence", "shared"])
def test_ekfac_eigenvalues_equal_explicit_per_example_gradients(kind, mlp, cnn):
    """The rank-one matmul (MLP) and the batched (Q_Sᵀ S_iᵀ)(A_i Q_A) path (conv, tokens, shared) vs brute force."""
    task, theta, X, y = _task_of_kind(kind, mlp, cnn)
    batches = tensor_batches(X, y, 16)
    factors = fit_factors(task, theta, batches)
    values = corrected_eigenvalues(task, theta, batches, factors)
    expected = brute_force_eigenvalues(task, per_example_gradients(task, theta, X, y), factors)
    for name in values:
        torch.testing.assert_close(values[name], expected[name], rtol=1e-9, atol=1e-13)


def test_sequence_and_shared_layers_factors_count_tokens(mlp):
    """A: mean over all tokens (T per example, or both calls of a shared layer); S: summed over tokens / N."""
    for kind, tokens in (("sequence", 6), ("shared", 2)):
        task, theta, X, y = _small_task(kind)
        factors = fit_factors(task, theta, tensor_batches(X, y, 16))
        layer = find_layers(task.model, task.space)[0]
        assert factors.num_tokens[layer.name] == tokens * len(X)
        # brute force: per-example input features of every token and output gradients (torch.func-free)
        a_all, s_all = [], []
        for i in range(len(X)):
            with recording([layer]) as rec:
                out = task.outputs(theta.clone().requires_grad_(True), X[i : i + 1])
                leaf_loss = task.loss(out, y[i : i + 1]).sum()
                outs = rec.outputs[layer.name]
                grads = torch.autograd.grad(leaf_loss, outs)
                a_all.append(torch.cat([layer.activations(x) for x in rec.inputs[layer.name]], dim=1)[0])
                s_all.append(torch.cat([layer.output_gradients(g) for g in grads], dim=1)[0])
        A = sum(a.T @ a for a in a_all) / (tokens * len(X))
        S = sum(s.T @ s for s in s_all) / len(X)
        torch.testing.assert_close(factors.A[layer.name], A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(factors.S[layer.name], S, rtol=1e-10, atol=1e-12)
        # and Σ_t s aᵀ over all tokens is the true per-example gradient (both calls summed)
        gw = layer_gradients(task, per_example_gradients(task, theta, X, y))[layer.name]
        torch.testing.assert_close(torch.stack([s.T @ a for s, a in zip(s_all, a_all, strict=True)]), gw)


# ----------------------------------------------------------------------------------------------- Conv2d


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": (2, 3), "stride": (1, 2), "padding": (2, 0), "dilation": (2, 1)},
        {"kernel_size": (2, 4), "padding": "same", "dilation": (1, 2)},
        {"kernel_size": 3, "padding": "valid", "bias": False},
        {"kernel_size": 3, "padding": (1, 2), "padding_mode": "reflect"},
        {"kernel_size": 2, "stride": 3, "padding": 1, "padding_mode": "circular"},
    ],
)
def test_conv2d_patches_and_per_example_gradients(options):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, **options).double()
    X = torch.randn(5, 2, 7, 6, generator=gen, dtype=DT)
    with torch.no_grad():
        flat = conv(X[:1]).numel()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(flat, 2)).double()
    y = torch.randint(0, 2, (5,), generator=gen)
    task = Task(model, CrossEntropy(), 0.0, mean_loss(X, y))
    theta = task.theta()
    layer = find_layers(model, task.space)[0]
    with recording([layer]) as rec:
        out = task.outputs(theta.clone().requires_grad_(True), X)
        leaf = out.detach().requires_grad_(True)
        vec = torch.autograd.grad(task.loss(leaf, y).sum(), leaf)[0]
        seen = backpropagate(rec, out, [vec], len(X))[layer.name]
    for i in range(len(X)):
        patches = hand_patches(conv, X[i : i + 1])
        expected = patches if conv.bias is None else torch.cat([patches, torch.ones(len(patches), 1, dtype=DT)], 1)
        torch.testing.assert_close(seen.a[i], expected)
    per_example = torch.einsum("bto,btc->boc", seen.s[0], seen.a)
    gw = layer_gradients(task, per_example_gradients(task, theta, X, y))[layer.name]
    torch.testing.assert_close(per_example, gw)


# ----------------------------------------------------------------------------------------------- errors


def test_unsupported_layers_and_bad_inputs_are_rejected_clearly():
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(8, 4, generator=gen, dtype=DT), torch.randint(0, 3, (8,), generator=gen)
    data = tensor_batches(X, y, 4)

    def task_of(model: nn.Module, names=None) -> Task:
        return Task(model.double(), CrossEntropy(), 0.0, mean_loss(X, y), param_names=names)

    with_norm = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"layer '1' \(LayerNorm\).*only nn.Linear and nn.Conv2d"):
        fit_factors(task_of(with_norm), task_of(with_norm).theta(), data)
    # covering the Linear layers only: the task must leave the LayerNorm's parameters out
    with pytest.raises(ValueError, match=r"\['1.weight', '1.bias'\] belong to no covered layer"):
        fit_factors(task_of(with_norm), task_of(with_norm).theta(), data, modules=["0", "2"])
    restricted = task_of(with_norm, ["0.weight", "0.bias", "2.weight", "2.bias"])
    factors = fit_factors(restricted, restricted.theta(), data, modules=["0", "2"])
    assert set(factors.A) == {"0", "2"}
    with pytest.raises(ValueError, match="unknown module names"):
        fit_factors(restricted, restricted.theta(), data, modules=["0", "7"])

    grouped = nn.Sequential(nn.Unflatten(1, (2, 2, 1)), nn.Conv2d(2, 2, 1, groups=2), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"layer '1': Conv2d with groups=2 is not supported"):
        fit_factors(task_of(grouped), task_of(grouped).theta(), data)
    conv1d = nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"layer '1' \(Conv1d\)"):
        fit_factors(task_of(conv1d), task_of(conv1d).theta(), data)

    tied = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    tied[2].weight = tied[0].weight
    with pytest.raises(ValueError, match="shared by the modules"):
        fit_factors(task_of(tied), task_of(tied).theta(), data)

    inplace = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="modified in place"):
        fit_factors(task_of(inplace), task_of(inplace).theta(), data)

    plain = task_of(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)))
    with pytest.raises(ValueError, match="re-iterable"):
        EKFACCurvature.fit(plain, plain.theta(), iter(data))
    assert fit_factors(plain, plain.theta(), iter(data)).num_examples == 8  # one pass: an iterator will do
    with pytest.raises(ValueError, match="fisher must be one of"):
        fit_factors(plain, plain.theta(), data, fisher="sampled")
    with pytest.raises(ValueError, match="needs labels"):
        fit_factors(plain, plain.theta(), [X])
    assert fit_factors(plain, plain.theta(), [X], fisher="ggn").num_examples == 8  # labels not needed
    with pytest.raises(ValueError, match="singular"):
        relu = task_of(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))
        with torch.no_grad():
            relu.model[0].bias.fill_(-100.0)  # dead units: zero curvature, no damping, no L2
        KFACCurvature.fit(relu, relu.theta(), data, damping=0.0)
    with pytest.raises(ValueError, match=r"expected row vectors \(k, 43\)"):
        KFACCurvature.fit(plain, plain.theta(), data, damping=0.1).solve(torch.zeros(2, 5, dtype=DT))


# ----------------------------------------------------------------------------------------------- solves


def test_solve_inverts_matvec_and_heuristic_damping(mlp):
    task, theta, X, y, _, _ = mlp
    batches = tensor_batches(X, y, 64)
    factors = fit_factors(task, theta, batches)
    V = torch.randn(5, theta.numel(), generator=torch.Generator().manual_seed(0), dtype=DT)
    curvatures = [KFACCurvature.from_factors(factors, task.l2, damping) for damping in (1e-3, "heuristic")]
    curvatures += [EKFACCurvature.from_factors(factors, task, theta, batches, damping=d) for d in (0.0, "heuristic")]
    for curv in curvatures:
        torch.testing.assert_close(curv.solve(curv.matvec(V)), V, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(curv.matvec(curv.solve(V)), V, rtol=1e-8, atol=1e-10)
    heuristic = curvatures[-1]
    for values, rho in zip(heuristic.eigenvalues, heuristic.layer_damping, strict=True):
        assert rho == pytest.approx(0.1 * (values.mean().item() + task.l2))
    # float32 vectors come back as float32 (the work is done in float64); float32 arithmetic is close
    assert heuristic.solve(V.float()).dtype == torch.float32
    fast = EKFACCurvature.from_factors(factors, task, theta, batches, damping="heuristic", compute_dtype=torch.float32)
    reference = heuristic.solve(V)
    assert ((fast.solve(V.float()).double() - reference).norm() / reference.norm()).item() < 1e-5


def test_float32_model_accumulates_in_float64(mlp):
    task64, theta64, X, y, _, _ = mlp
    model = copy.deepcopy(task64.model).float()
    task = Task(model, task64.loss, task64.l2, task64.target)
    f32 = fit_factors(task, task.theta(), tensor_batches(X.float(), y, 64))
    f64 = fit_factors(task64, theta64, tensor_batches(X, y, 64))
    for name in f64.A:
        assert f32.A[name].dtype == torch.float64
        torch.testing.assert_close(f32.S[name], f64.S[name], rtol=1e-4, atol=1e-7)
    curv = EKFACCurvature.fit(task, task.theta(), tensor_batches(X.float(), y, 64), damping="heuristic")
    V = torch.randn(3, theta64.numel())
    assert curv.solve(V).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        fit_factors(task, task.theta(), tensor_batches(X, y, 64))  # float64 inputs into a float32 model


@pytest.mark.parametrize("problem", ["mlp", "cnn"])
def test_ekfac_is_closer_to_the_dense_gauss_newton_than_kfac(problem, mlp, cnn):
    """Against the dense damped GGN, same damping and L2. Both Kronecker fits use ``fisher="ggn"``, the exact
    expectation of the true Fisher, so their only differences from the dense matrix are the approximations
    themselves (no sampling noise; the empirical Fisher would be a different matrix).

    Asserted: EK-FAC's inverse-HVP error over 200 random vectors is smaller than K-FAC's, and its influence
    scores (20 test gradients × H⁻¹ × 200 train gradients) rank-correlate with the dense ones better than
    K-FAC's and than the curvature-free scores (H = I). Measured at ρ = 0.1 (float64):

    ======  ============  ============  =====================  =====================  ==========
    model   error EK-FAC  error K-FAC   Spearman EK-FAC        Spearman K-FAC         Spearman I
    ======  ============  ============  =====================  =====================  ==========
    MLP     0.175         0.186         0.576                  0.555                  0.467
    CNN     0.177         0.179         0.838                  0.822                  0.788
    ======  ============  ============  =====================  =====================  ==========

    A Spearman of 0.9 with the dense GGN is NOT reached at this damping on these small networks. Both
    approximations cost accuracy: the exact per-layer blocks of the same GGN reach 0.78 (MLP) and 0.95
    (CNN), so for the MLP the cross-layer blocks matter most and for the CNN the Kronecker factorisation.
    0.9 is reached at ρ ≥ 0.3 for the CNN, where the curvature-free scores are already at 0.88.
    """
    task, theta, X, y, Xt, yt = mlp if problem == "mlp" else cnn
    damping = 0.1
    batches = tensor_batches(X, y, 64)
    factors = fit_factors(task, theta, batches, fisher="ggn")
    kfac = KFACCurvature.from_factors(factors, task.l2, damping)
    ekfac = EKFACCurvature.from_factors(factors, task, theta, batches, damping=damping)
    dense = EigenCurvature(gauss_newton(task, theta, X, len(X)), damping)

    V = torch.randn(200, theta.numel(), generator=torch.Generator().manual_seed(0), dtype=DT)
    exact = dense.solve(V)

    def error(curv) -> float:
        return ((curv.solve(V) - exact).norm(dim=1) / exact.norm(dim=1)).mean().item()

    assert error(ekfac) < error(kfac)

    train = per_example_gradients(task, theta, X, y)
    test = per_example_gradients(task, theta, Xt[:20], yt[:20])
    reference = (dense.solve(test) @ train.T).flatten()

    def rank(scores: Tensor) -> float:
        return spearmanr(scores.flatten(), reference).statistic

    ek, kf, identity = rank(ekfac.solve(test) @ train.T), rank(kfac.solve(test) @ train.T), rank(test @ train.T)
    assert ek > kf
    assert ek > identity + 0.03


@pytest.mark.parametrize("kind", ["mlp", "cnn", "sequence", "shared"])
def test_gradient_products_without_per_example_gradients(kind, mlp, cnn):
    task, theta, X, y = _task_of_kind(kind, mlp, cnn)
    M = torch.randn(4, theta.numel(), generator=torch.Generator().manual_seed(1), dtype=DT)
    products = gradient_products(task, theta, tensor_batches(X, y, 16), M)
    grads = per_example_gradients(task, theta, X, y)
    torch.testing.assert_close(products, M @ grads.T)
    torch.testing.assert_close(hooked_gradients(task, theta, tensor_batches(X, y, 16)), grads)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "sequence", "shared"])
@pytest.mark.parametrize("curvature", [EKFACCurvature, KFACCurvature])
def test_influence_scores_in_the_eigenbasis_equal_solving_the_queries(kind, curvature, mlp, cnn):
    """influence_scores (rotated factors, no query gradient, no rotation back) = solve(Q) against the gradients."""
    task, theta, X, y = _task_of_kind(kind, mlp, cnn)
    train, queries = tensor_batches(X, y, 16), tensor_batches(X[:7], y[:7], 4)
    fitted = curvature.fit(task, theta, train, damping=0.05)
    reference = gradient_products(task, theta, train, fitted.solve(hooked_gradients(task, theta, queries)))
    torch.testing.assert_close(influence_scores(task, theta, queries, train, fitted), reference, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="queries yielded no examples"):
        influence_scores(task, theta, [], train, fitted)


def test_float32_scores_in_query_chunks_match_float64(mlp, monkeypatch):
    """In float32 the one-token layers' products run on oneDNN (``groupinf.matmul``) in chunks of queries: the
    scores and products agree with float64 brute force (per-example gradients, a dense solve) to float32
    rounding, chunks of uneven size included."""
    from groupinf.curvature import factored

    monkeypatch.setattr(factored, "QUERY_CHUNK", 3)  # 7 queries: chunks of 3, 3 and 1
    task, theta, X, y, _, _ = mlp
    train, queries = tensor_batches(X, y, 16), tensor_batches(X[:7], y[:7], 4)
    factors = fit_factors(task, theta, train)
    exact = EKFACCurvature.from_factors(factors, task, theta, train, damping="heuristic")
    fast = EKFACCurvature.from_factors(factors, task, theta, train, damping="heuristic", compute_dtype=torch.float32)
    grads = per_example_gradients(task, theta, X, y)
    solved = exact.solve(grads[:7])
    expected = solved @ grads.T
    scores = influence_scores(task, theta, queries, train, fast)
    assert scores.dtype == torch.float32 and scores.shape == (7, len(X))
    for got in (scores, gradient_products(task, theta, train, solved.float())):
        errors = (got.double() - expected).norm(dim=1) / expected.norm(dim=1)  # per query: every chunk checked
        assert errors.max().item() < 1e-5
