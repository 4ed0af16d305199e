"""Run every benchmark: `python -m benchmarks [name ...]` (default: all)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("greedy_selection", "ekfac_vs_kronfluence", "curvature_agreement", "llm_extraction")


def main(names: list[str]) -> int:
    for name in names or BENCHMARKS:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; choose from {BENCHMARKS}", file=sys.stderr)
            return 2
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
