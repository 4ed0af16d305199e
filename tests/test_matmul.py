"""FixedMatrix: x Wᵀ on oneDNN for float32 CPU matrices, torch.mm otherwise; same numbers to rounding."""

from __future__ import annotations

import pytest
import torch

from groupinf.matmul import FixedMatrix, onednn_applies


def _draw(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)


def test_float32_products_run_on_onednn_and_match_float64():
    W, x = _draw(48, 37), _draw(29, 37)
    assert torch.backends.mkldnn.is_available()  # the project's CPU wheel has oneDNN: the fast path is exercised
    assert onednn_applies(W)
    exact = x.double() @ W.double().T
    product = FixedMatrix(W)(x)
    assert product.dtype == torch.float32 and product.shape == (29, 48)
    assert ((product.double() - exact).abs().max() / exact.abs().max()).item() < 1e-6
    # a non-contiguous batch (a column slice) is multiplied as its values
    wide = _draw(29, 50)
    torch.testing.assert_close(FixedMatrix(W)(wide[:, 5:42]), wide[:, 5:42] @ W.T, rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_disabled_onednn_are_plain_products(monkeypatch):
    W, x = _draw(12, 9, dtype=torch.float64), _draw(5, 9, dtype=torch.float64)
    assert not onednn_applies(W)
    assert torch.equal(FixedMatrix(W)(x), x @ W.T)
    W32, x32 = W.float(), x.float()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not onednn_applies(W32)
    assert torch.equal(FixedMatrix(W32)(x32), x32 @ W32.T)


def test_products_that_need_gradients_are_differentiated():
    W, x = _draw(4, 3).requires_grad_(True), _draw(2, 3).requires_grad_(True)
    FixedMatrix(W)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2, 4) @ W.detach())
    torch.testing.assert_close(W.grad, torch.ones(4, 2) @ x.detach())
    with torch.no_grad():  # no gradient wanted: the oneDNN path, a result without history
        assert not FixedMatrix(W)(x).requires_grad


def test_bad_shapes_and_dtypes_are_refused():
    with pytest.raises(ValueError, match=r"expected a matrix \(m, c\)"):
        FixedMatrix(_draw(2, 3, 4))
    fixed = FixedMatrix(_draw(4, 3))
    with pytest.raises(ValueError, match=r"expected rows \(B, 3\)"):
        fixed(_draw(5, 4))
    with pytest.raises(ValueError, match="do not match the matrix"):
        fixed(_draw(5, 3, dtype=torch.float64))
