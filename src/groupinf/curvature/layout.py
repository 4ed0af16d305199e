"""Matrices laid out one after another in flat row vectors: the blocks of a Kronecker-factored curvature.

A projected LLM layer's ``(r_out, r_in)`` gradient is stored row-major; a network layer's weight ``(d_out, d_in)``
row-major followed by its bias ``(d_out,)`` (the order of the flat parameter vector) is read as the matrix
``(d_out, d_in + 1)`` with the bias as its last column (``Block.bias``). Blocks of one shape form a group, whose
matrices are read from and written to row vectors ``(k, d)`` at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

import torch
from torch import Tensor


@dataclass(frozen=True)
class Block:
    """A matrix ``shape = (out, in)`` of the flat vector, named ``name``: stored row-major, or with ``bias`` as its
    first ``in − 1`` columns row-major followed by its last column (a layer's weight, then its bias)."""

    name: str
    shape: tuple[int, int]
    bias: bool = False

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def positions(self) -> Tensor:
        """``(out, in)``: where each entry of the matrix lies in the block's stretch of the vector."""
        out, columns = self.shape
        if not self.bias:
            return torch.arange(self.size).reshape(out, columns)
        weight = torch.arange(out * (columns - 1)).reshape(out, columns - 1)
        return torch.cat([weight, out * (columns - 1) + torch.arange(out)[:, None]], dim=1)


@dataclass(frozen=True, eq=False)
class BlockGroup:
    """The blocks of one shape, handled together: their indices in the layout and the positions of their entries
    in the flat vector, block after block, each matrix row-major (``(L·out·in,)``); ``span`` is the stretch of
    the vector they fill when those positions are consecutive (read as a view, without gathering)."""

    members: list[int]
    columns: Tensor
    shape: tuple[int, int]
    span: slice | None

    @classmethod
    def of(cls, members: list[int], columns: Tensor, shape: tuple[int, int]) -> BlockGroup:
        """The group of ``members`` at ``columns``, with its ``span`` when they are consecutive."""
        start = int(columns[0])
        consecutive = torch.equal(columns, torch.arange(start, start + len(columns)))
        return cls(members, columns, shape, slice(start, start + len(columns)) if consecutive else None)

    @property
    def size(self) -> int:
        return len(self.columns)

    def _where(self, device: torch.device) -> slice | Tensor:
        return self.span if self.span is not None else self.columns.to(device)

    def matrices(self, rows: Tensor) -> Tensor:
        """``(k, L, out, in)``: each member's matrix in each row vector of ``rows`` ``(k, d)``."""
        return rows[:, self._where(rows.device)].reshape(len(rows), len(self.members), *self.shape)

    def place(self, out: Tensor, matrices: Tensor) -> None:
        """Write ``matrices`` ``(k, L, out, in)`` into the row vectors ``out`` ``(k, d)``: undoes ``matrices``."""
        out[:, self._where(out.device)] = matrices.flatten(1)


@dataclass(frozen=True)
class BlockLayout:
    """Blocks laid out one after another in a flat vector ``(dim,)``."""

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("a block layout needs at least one block")

    @property
    def dim(self) -> int:
        return sum(block.size for block in self.blocks)

    @cached_property
    def groups(self) -> list[BlockGroup]:
        """The blocks grouped by shape (in order of first appearance), so that each group is rotated at once."""
        offsets = [0, *accumulate(block.size for block in self.blocks)]
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, block in enumerate(self.blocks):
            by_shape.setdefault(block.shape, []).append(index)
        return [
            BlockGroup.of(
                members, torch.cat([offsets[i] + self.blocks[i].positions().flatten() for i in members]), shape
            )
            for shape, members in by_shape.items()
        ]

    def split(self, rows: Tensor) -> list[Tensor]:
        """Each block's matrices ``(k, out, in)`` in the row vectors ``rows`` ``(k, dim)``, in layout order."""
        out: list[Tensor] = [torch.empty(0)] * len(self.blocks)
        for group in self.groups:
            matrices = group.matrices(rows)
            for position, index in enumerate(group.members):
                out[index] = matrices[:, position]
        return out

    def join(self, matrices: Sequence[Tensor]) -> Tensor:
        """The row vectors ``(k, dim)`` holding each block's ``matrices`` ``(k, out, in)``: undoes ``split``."""
        first = matrices[0]
        out = first.new_empty(len(first), self.dim)
        for group in self.groups:
            group.place(out, torch.stack([matrices[i] for i in group.members], dim=1))
        return out
