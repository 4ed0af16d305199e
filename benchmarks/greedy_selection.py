"""Greedy selection (Algorithm 1) against its memory-bandwidth limit.

Each greedy step must read the whole candidate factor matrix once (the accumulator update is one
matrix-vector product), so k steps can be no faster than k streaming matrix-vector passes over the
same ``(C, d)`` matrix. We time both in one run and report the ratio, for the dense form
(d = 1024) and the low-rank form (r = 128).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from groupinf.selection import InteractionFactors, greedy_select


def streaming_limit(matrix: torch.Tensor, k: int) -> float:
    """Seconds for ``k`` matrix-vector passes over ``matrix`` (each with a different row as vector)."""
    out = torch.empty(len(matrix), dtype=matrix.dtype)
    start = time.perf_counter()
    for step in range(k):
        torch.mv(matrix, matrix[step % len(matrix)], out=out)
    return time.perf_counter() - start


def time_greedy(factors: InteractionFactors, a: torch.Tensor, k: int) -> float:
    start = time.perf_counter()
    greedy_select(a, k, factors)
    return time.perf_counter() - start


def run(candidates: int, dim: int, rank: int, k: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    shifts = torch.randn(candidates, dim, generator=gen) / dim**0.5
    left = torch.randn(candidates, dim, generator=gen) / dim**0.5
    a = torch.randn(candidates, generator=gen)
    low_rank = torch.randn(candidates, rank, generator=gen) / rank**0.5
    sign = torch.ones(rank)
    forms = {
        f"dense d={dim}": (InteractionFactors(left, shifts), left),
        f"low-rank r={rank}": (InteractionFactors(low_rank * sign, low_rank), low_rank),
    }
    print(
        f"C = {candidates}, k = {k}, float32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'form':<16} {'greedy s':>9} {'k passes s':>11} {'ratio':>6}")
    for name, (factors, matrix) in forms.items():
        greedy = min(time_greedy(factors, a, k) for _ in range(repeats))
        limit = min(streaming_limit(matrix, k) for _ in range(repeats))
        print(f"{name:<16} {greedy:>9.2f} {limit:>11.2f} {greedy / limit:>6.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--k", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    run(args.candidates, args.dim, args.rank, args.k, args.repeats)


if __name__ == "__main__":
    main()
