"""The ``groupinf`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from groupinf.curvature import Damping
from groupinf.training import ConvergenceError


def parse_damping(text: str) -> Damping:
    """A number >= 0, or "heuristic" (0.1 × mean eigenvalue)."""
    if text == "heuristic":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"damping must be a number or 'heuristic', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"damping must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupinf", description="Interaction-aware group influence.")
    commands = parser.add_subparsers(dest="command", required=True)

    faith = commands.add_parser(
        "faithfulness",
        help="rank-correlate group estimators with leave-group-out retraining (paper §4)",
        description="Train to convergence, retrain without each nearest-neighbour group and report the "
        "Spearman correlation of F, F+I, F+B and F+I+B with the true change in mean test loss.",
    )
    faith.add_argument(
        "--data",
        default="digits",
        help="digits | fashion-mnist | mnist | cifar10 | concrete | parkinsons | PATH.npz | PATH.csv (default: digits)",
    )
    faith.add_argument("--data-dir", default=None, help="directory holding the data set's files")
    faith.add_argument("--model", default="lr", choices=["lr"], help="lr: logistic / linear regression")
    faith.add_argument("--groups", type=int, default=50, help="number of groups (default 50)")
    faith.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="examples per group, anchor included (default: 5%% of the training set)",
    )
    faith.add_argument("--seed", type=int, default=0, help="seed for the anchors (default 0)")
    faith.add_argument(
        "--damping",
        type=parse_damping,
        default=0.0,
        help="damping ρ added to the Hessian: a number or 'heuristic' (default 0)",
    )
    faith.add_argument(
        "--curvature",
        choices=["exact", "ggn"],
        default="exact",
        help="training curvature: exact Hessian or Gauss-Newton (default exact)",
    )
    faith.add_argument("--l2", type=float, default=0.01, help="L2 strength λ of the objective (default 0.01)")
    faith.add_argument("--out", type=Path, required=True, help="output directory (resumable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "faithfulness":
        from groupinf.experiments.faithfulness import FaithfulnessConfig, format_table, run_faithfulness

        options = {k: v for k, v in vars(args).items() if k not in ("command", "out")}
        try:
            config = FaithfulnessConfig(**options)
            results = run_faithfulness(config, args.out)
        except (ValueError, FileNotFoundError, ConvergenceError) as error:
            print(f"groupinf: error: {error}", file=sys.stderr)
            return 2
        print(
            f"\n{config.data} / {config.model}: {config.groups} groups of {results['group_size']} "
            f"(n = {results['n_train']}), curvature {config.curvature}, damping {results['damping']:.3g}"
        )
        print(format_table(results))
        print(f"\nwrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
