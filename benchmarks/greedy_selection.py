"""Greedy selection (Algorithm 1) against its memory-bandwidth limit.

Each greedy step must read the whole candidate factor matrix once (the accumulator update is one
matrix-vector product), so k steps can be no faster than k streaming matrix-vector passes over the
same ``(C, d)`` matrix. Both are timed in turn in one run (best of ``--repeats``) and the ratio is
reported, for the dense form (``--dim``) and the low-rank form at each of ``--rank`` (r = 64 is the rank
of an LLM target's ``H_f`` with a 64-example dev set).

One thread by default (``--threads``), as in ``ekfac_vs_kronfluence``: on the shared 2-core machine with
other jobs running, every intra-op parallel region of ATen could wait a scheduler tick (~16 ms measured)
for its second thread, which timed the scheduler, not the code.
"""

from __future__ import annotations

import argparse
import platform

import torch

from benchmarks._timing import interleaved
from groupinf.selection import InteractionFactors, greedy_select


def streaming_passes(matrix: torch.Tensor, k: int) -> None:
    """``k`` matrix-vector passes over ``matrix`` (each with a different row as vector): the limit."""
    out = torch.empty(len(matrix), dtype=matrix.dtype)
    for step in range(k):
        torch.mv(matrix, matrix[step % len(matrix)], out=out)


def run(candidates: int, dim: int, ranks: list[int], k: int, repeats: int) -> dict[str, dict[str, float]]:
    """Prints and returns, per form, the greedy time, the k-pass time and their ratio."""
    gen = torch.Generator().manual_seed(0)
    shifts = torch.randn(candidates, dim, generator=gen) / dim**0.5
    left = torch.randn(candidates, dim, generator=gen) / dim**0.5
    a = torch.randn(candidates, generator=gen)
    forms = {f"dense d={dim}": (InteractionFactors(left, shifts), left)}
    for rank in ranks:
        low_rank = torch.randn(candidates, rank, generator=gen) / rank**0.5
        forms[f"low-rank r={rank}"] = (InteractionFactors(low_rank, low_rank), low_rank)
    print(
        f"C = {candidates}, k = {k}, float32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"{'form':<16} {'greedy s':>9} {'k passes s':>11} {'ratio':>6}")
    results = {}
    for name, (factors, matrix) in forms.items():
        timed = interleaved(
            repeats,
            {
                "greedy": lambda factors=factors: greedy_select(a, k, factors),
                "limit": lambda matrix=matrix: streaming_passes(matrix, k),
            },
        )
        greedy, limit = timed["greedy"][0], timed["limit"][0]
        results[name] = {"greedy_s": greedy, "limit_s": limit, "ratio": greedy / limit}
        print(f"{name:<16} {greedy:>9.2f} {limit:>11.2f} {greedy / limit:>6.2f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rank", default="16,64", help="comma-separated ranks of the low-rank form")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(args.candidates, args.dim, [int(r) for r in args.rank.split(",")], args.k, args.repeats)


if __name__ == "__main__":
    main()
