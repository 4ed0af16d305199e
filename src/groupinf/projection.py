"""The seeded Gaussian random projection shared by TRAK, the LESS baseline and LoGra.

``P`` ``(rank, dim)`` has independent entries ``N(0, 1/rank)``, so ``E[PᵀP] = I``: inner products, and
therefore the influence scores built from them, are preserved in expectation (Johnson–Lindenstrauss).

Conventions, all explicit so that a caller's matrices never change when this module does:

- **Seeding.** One ``torch.Generator`` on ``device``, seeded by ``seed`` alone, draws the matrix with one
  ``torch.randn`` call. How a seed is derived is the caller's business: TRAK uses ``seed + s`` for model ``s``
  of its ensemble, the LESS baseline the extraction's seed, LoGra a seed mixed from the run's seed and the
  layer's name (``groupinf.llm.projection``), so every process draws the same matrices.
- **Device and dtype.** The generator lives on ``device`` and the matrix is drawn there in ``dtype``
  (``None``: torch's default dtype). CPU and CUDA generators, and float32 and float64 draws, give different
  numbers for the same seed; TRAK draws on its parameters' device and dtype, LESS on the CPU in float64,
  LoGra on the CPU in torch's default dtype (float32).
- **Layout.** ``transposed=True`` draws ``Pᵀ`` ``(dim, rank)`` directly, filling that shape in row-major
  order (TRAK's ``φ = ∇m @ Pᵀ``). It is not the transpose of the ``transposed=False`` draw of the same seed.
- **Scaling.** Entries are divided by ``divisor``, by default ``math.sqrt(rank)``. TRAK passes
  ``rank ** 0.5``, which it has always used: Python's ``**`` is not correctly rounded, and for a few ranks
  (the smallest is 2921) it differs from ``math.sqrt`` in the last bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_projection(
    rank: int,
    dim: int,
    seed: int,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    transposed: bool = False,
    divisor: float | None = None,
) -> Tensor:
    """A Gaussian projection from ``dim`` to ``rank`` dimensions with entries ``N(0, 1/rank)``.

    Returns ``P`` ``(rank, dim)``, or ``Pᵀ`` ``(dim, rank)`` when ``transposed``, drawn by one ``torch.randn``
    of that shape from ``torch.Generator(device).manual_seed(seed)`` in ``dtype`` on ``device``, then divided
    by ``divisor`` (default ``math.sqrt(rank)``). The same arguments give the same matrix in every process.
    Raises ValueError unless ``rank >= 1``.
    """
    if rank < 1:
        raise ValueError(f"projection dim must be >= 1, got {rank}")
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (dim, rank) if transposed else (rank, dim)
    matrix = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    matrix /= math.sqrt(rank) if divisor is None else divisor
    return matrix
