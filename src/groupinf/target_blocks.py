"""Block-diagonal target curvature: the per-layer blocks of ``H_f``, as products, never formed.

For blocks ``B_1..B_L`` partitioning the parameters, ``H_f^{bd} = Σ_ℓ P_ℓ H_f P_ℓ`` with ``P_ℓ`` the
projection onto block ``ℓ`` (zero every other coordinate). Its product with ``v`` is computed from ``L``
products of the full operator: ``v H_f^{bd} = Σ_ℓ P_ℓ (H_f (P_ℓ v))``, the ``L`` masked copies of every
vector stacked into one batch of Hessian- (or GGN-) vector products.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from groupinf.curvature_ops import TargetCurvature
from groupinf.params import ParamSpace
from groupinf.task import Task


def layer_blocks(space: ParamSpace) -> list[list[str]]:
    """Parameter names grouped by the module that owns them (``"net.0.weight"`` -> module ``"net.0"``), in order."""
    groups: dict[str, list[str]] = {}
    for name in space.names:
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    return list(groups.values())


class BlockDiagonalCurvature(TargetCurvature):
    """``H_f`` with every block outside the diagonal blocks ``blocks`` (lists of parameter names) set to zero.

    ``product(V)`` is the full operator ``V H_f`` for ``V`` ``(k, p)``; it is called on at most ``chunk``
    stacked vectors at a time. Default blocks: one per layer (``layer_blocks``).
    """

    def __init__(
        self,
        product: Callable[[Tensor], Tensor],
        space: ParamSpace,
        blocks: Sequence[Sequence[str]] | None = None,
        chunk: int = 256,
    ) -> None:
        blocks = layer_blocks(space) if blocks is None else [list(b) for b in blocks]
        flat = [n for b in blocks for n in b]
        if sorted(flat) != sorted(space.names) or len(set(flat)) != len(flat):
            raise ValueError(
                f"blocks must partition the parameters {list(space.names)} (each name exactly once), got {blocks}"
            )
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        slices = space.slices()
        self.masks = torch.zeros(len(blocks), space.numel, dtype=torch.bool)
        for i, block in enumerate(blocks):
            for name in block:
                self.masks[i, slices[name]] = True
        self.product, self.blocks, self.chunk = product, blocks, chunk

    def matmul(self, V: Tensor) -> Tensor:
        masks = self.masks.to(V.device)
        num_blocks = len(masks)
        out = torch.zeros_like(V)
        step = max(1, self.chunk // num_blocks)
        for start in range(0, len(V), step):
            part = V[start : start + step]  # (k, p)
            stacked = (part.unsqueeze(0) * masks.unsqueeze(1)).reshape(-1, V.shape[1])  # (L·k, p)
            prods = self.product(stacked).reshape(num_blocks, len(part), V.shape[1])
            out[start : start + step] = (prods * masks.unsqueeze(1)).sum(0)
        return out

    @classmethod
    def of_target(
        cls,
        task: Task,
        theta: Tensor,
        kind: Literal["exact", "ggn"] = "exact",
        blocks: Sequence[Sequence[str]] | None = None,
        chunk: int = 256,
    ) -> BlockDiagonalCurvature:
        """The block-diagonal exact Hessian ("exact") or Gauss–Newton matrix ("ggn") of the task's target."""
        if kind == "exact":
            return cls(lambda V: task.target.hvp(task, theta, V), task.space, blocks, chunk)
        if kind == "ggn":
            return cls(lambda V: task.target.ggn_vp(task, theta, V), task.space, blocks, chunk)
        raise ValueError(f"kind must be 'exact' or 'ggn', got {kind!r}")
