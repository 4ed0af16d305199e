"""The ``groupinf`` command line: faithfulness, select, selection-eval, llm.

Every expected failure (bad arguments, settings or input files, OS errors, an interrupt) ends the command
with one line on stderr, ``groupinf: error: …`` naming the option, setting or file, and exit code 2 (130
for an interrupt, after which the same command resumes). Arguments are checked before the first expensive
stage, and a failed run leaves no empty directories behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import NoReturn

from groupinf.checks import check_device, option
from groupinf.curvature import CURVATURES, Damping, parse_damping
from groupinf.llm.cli import add_llm, run_llm
from groupinf.selection import InteractionScale, parse_interaction_scale
from groupinf.target import TARGET_KINDS
from groupinf.training import ConvergenceError

#: failures a user can cause and fix, reported in one line; anything else is a bug and keeps its traceback
EXPECTED_ERRORS = (ValueError, OSError, ConvergenceError, ImportError)

DATA_HELP = "digits | fashion-mnist | mnist | cifar10 | concrete | parkinsons | PATH.npz | PATH.csv"


def damping_option(text: str) -> Damping:
    """``--damping``: a finite number >= 0, or "heuristic" (0.1 × mean eigenvalue)."""
    try:
        return parse_damping(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class Parser(argparse.ArgumentParser):
    """Argument errors in one line, ``groupinf: error: …``, as every other failure (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"groupinf: error: {message} (see `{self.prog} --help`)\n")


def parse_ints(text: str) -> tuple[int, ...]:
    """``"64,64"`` -> ``(64, 64)``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parse_floats(text: str) -> tuple[float, ...]:
    """``"1e-3,1e-2"`` -> ``(0.001, 0.01)``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


#: faithfulness options that ``--suite`` applies to every setting when given
SUITE_OVERRIDES = ("target_curvature", "damping_sweep", "workers")


def add_faithfulness(commands: argparse._SubParsersAction) -> None:
    faith = commands.add_parser(
        "faithfulness",
        help="rank-correlate group estimators with leave-group-out retraining (paper §4)",
        description="Train, retrain without each nearest-neighbour group and report the Spearman correlation "
        "of F, F+I, F+B, F+I+B, TRAK and TracIn with the true change in mean test loss.",
    )
    faith.add_argument(
        "--suite",
        choices=["cpu"],
        default=None,
        help="run every setting with data on this machine (of the other options only --data-dir, "
        "--target-curvature, --damping-sweep and --workers apply, to every setting)",
    )
    faith.add_argument("--data", default="digits", help=f"{DATA_HELP} (default: digits)")
    faith.add_argument("--data-dir", default=None, help="directory holding the data set's files")
    faith.add_argument("--model", default="lr", choices=["lr", "mlp", "resnet9"], help="lr: logistic/linear regression")
    faith.add_argument("--hidden", type=parse_ints, default=(32, 32), help="MLP hidden widths (default 32,32)")
    faith.add_argument("--width", type=int, default=64, help="ResNet-9 base width (default 64)")
    faith.add_argument("--groups", type=int, default=50, help="number of groups (default 50)")
    faith.add_argument(
        "--group-size", type=int, default=None, help="examples per group, anchor included (default: 5%% of n)"
    )
    faith.add_argument("--distinct-groups", action="store_true", help="redraw anchors whose group repeats")
    faith.add_argument("--seed", type=int, default=0, help="seed for the anchors (default 0)")
    faith.add_argument(
        "--draws",
        type=int,
        default=1,
        help="independent anchor draws (seeds SEED, SEED+1, …): Spearman per draw and its mean (default 1)",
    )
    faith.add_argument(
        "--damping", type=damping_option, default=0.0, help="damping ρ: a number or 'heuristic' (default 0)"
    )
    faith.add_argument("--curvature", choices=CURVATURES, default="exact", help="training curvature")
    faith.add_argument(
        "--target-curvature",
        choices=TARGET_KINDS,
        default=None,
        help="H_f products, whole or per-layer blocks (default: exact for lr, block-ggn for networks)",
    )
    faith.add_argument("--l2", type=float, default=0.01, help="L2 strength λ (SGD weight decay) (default 0.01)")
    faith.add_argument("--epochs", type=int, default=200, help="MLP: SGD epochs (default 200, Table 3)")
    faith.add_argument("--lr", type=float, default=0.01, help="MLP: SGD learning rate (default 0.01)")
    faith.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (ResNet-9 in the paper: 0.9)")
    faith.add_argument("--cosine", action="store_true", help="cosine learning-rate schedule (ResNet-9)")
    faith.add_argument("--seeds", type=int, default=3, help="MLP: retraining seeds (default 3)")
    faith.add_argument("--workers", type=int, default=None, help="MLP: retraining processes (default 2)")
    faith.add_argument("--max-train", type=int, default=None, help="use at most this many training examples")
    faith.add_argument("--max-test", type=int, default=None, help="use at most this many test examples")
    faith.add_argument("--trak-dim", type=int, default=512, help="TRAK projection dimension (default 512)")
    faith.add_argument("--damping-sweep", type=parse_floats, default=(), help="e.g. 1e-4,1e-3,1e-2,1e-1")
    faith.add_argument("--class-pairs", action="store_true", help="class-pair analysis of J (Fig. 2)")
    faith.add_argument("--out", type=Path, required=True, help="output directory (resumable)")


def parse_scale(text: str) -> InteractionScale:
    """``--interaction-scale``: a number > 0 or "auto"."""
    try:
        return parse_interaction_scale(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_fraction(text: str) -> float:
    """A fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def parse_labels(text: str) -> tuple[int, ...]:
    """``"0,2,4"`` -> ``(0, 2, 4)``: class labels, 0 allowed."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated class labels, got {text!r}") from None
    if min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct class labels >= 0, got {text!r}")
    return values


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    """Options that describe the selection problem and θ* (shared by select and selection-eval)."""
    parser.add_argument("--preset", choices=["cpu", "paper"], default="cpu", help="settings preset (default cpu)")
    parser.add_argument("--data", default=None, help=f"{DATA_HELP} (default: fashion-mnist)")
    parser.add_argument("--data-dir", default=None, help="directory holding the data set's files")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="candidates drawn from the training set (default: the preset's 2000 / 10000, or all of X for an "
        ".npz with X_target)",
    )
    parser.add_argument("--target-size", type=int, default=None, help="validation examples defining the target")
    regime = parser.add_argument_group("pool regime (docs/selection.md)")
    regime.add_argument(
        "--target-classes",
        type=parse_labels,
        default=None,
        help="targeted: the target and test sets hold only these classes, e.g. 0,2,4,6 (the pool keeps all)",
    )
    regime.add_argument(
        "--duplicates", type=parse_fraction, default=None, help="redundant: this fraction of the pool is near copies"
    )
    regime.add_argument("--duplicate-sources", type=int, default=None, help="examples the duplicates copy (default 10)")
    regime.add_argument(
        "--duplicate-noise", type=float, default=None, help="std of the duplicates' noise, standardised units (0.1)"
    )
    regime.add_argument(
        "--label-noise", type=parse_fraction, default=None, help="noisy: this fraction of the pool has a wrong label"
    )
    parser.add_argument("--hidden", type=parse_ints, default=None, help="MLP hidden widths, e.g. 64,64")
    parser.add_argument("--curvature", choices=CURVATURES, default=None, help="training curvature")
    parser.add_argument("--damping", type=damping_option, default=None, help="damping ρ or 'heuristic'")
    parser.add_argument(
        "--target-curvature",
        choices=TARGET_KINDS,
        default=None,
        help="H_f products, whole or per-layer blocks (default: block-ggn, as for every network)",
    )
    parser.add_argument(
        "--interaction-scale",
        type=parse_scale,
        default=None,
        help="α of the interaction term (F+I: −Σa_c + α·½δ_SᵀH_fδ_S): a number > 0 (1: the paper's), or 'auto', "
        "chosen per budget by 5-fold cross-fitting on the target set with retraining (the default, except for "
        "select --features, which cannot retrain and uses 1)",
    )
    parser.add_argument("--scale-grid", type=parse_floats, default=None, help="the α values 'auto' chooses from")
    parser.add_argument("--scale-folds", type=int, default=None, help="target-set folds for 'auto' (default 5)")
    parser.add_argument("--scale-seeds", type=int, default=None, help="retraining seeds per α and fold for 'auto'")
    parser.add_argument("--epochs", type=int, default=None, help="SGD epochs of θ* and every retraining")
    parser.add_argument("--lr", type=float, default=None, help="SGD learning rate of θ* and every retraining")
    parser.add_argument(
        "--cosine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cosine learning-rate schedule, or (--no-cosine) a constant rate (default: the preset's)",
    )


def add_select(commands: argparse._SubParsersAction) -> None:
    select = commands.add_parser(
        "select",
        help="choose k training examples that most reduce a target (greedy F+I, top-k, random)",
        description="Select from a saved feature file (--features) or from a pool built from --data, where "
        "θ* is trained on the pool (or loaded from --checkpoint) and the features are saved for reuse.",
    )
    select.add_argument("--features", type=Path, default=None, help="a features.safetensors file to select from")
    select.add_argument("--checkpoint", type=Path, default=None, help="θ* as a safetensors state dict")
    add_pool_options(select)
    select.add_argument("--k", type=int, required=True, help="number of examples to select")
    select.add_argument("--method", choices=["greedy", "topk", "random"], default="greedy")
    select.add_argument("--terms", choices=["F+I", "F", "F+B", "F+I+B"], default="F+I")
    select.add_argument("--seed", type=int, default=0, help="seed of random selection")
    select.add_argument(
        "--device", type=option(check_device), default="cpu", help="torch device for the selection loop (cpu, cuda, …)"
    )
    select.add_argument("--out", type=Path, required=True, help="output directory")


def add_selection_eval(commands: argparse._SubParsersAction) -> None:
    from groupinf.methods import METHODS

    evaluate = commands.add_parser(
        "selection-eval",
        help="retrain on each method's selections: test loss, class entropy and purity vs budget (paper §5.1)",
    )
    add_pool_options(evaluate)
    evaluate.add_argument("--budgets", type=parse_ints, default=None, help="budgets, e.g. 20,40,80")
    evaluate.add_argument("--seeds", type=int, default=None, help="retraining seeds per subset")
    evaluate.add_argument(
        "--methods",
        type=lambda text: tuple(text.split(",")),
        default=None,
        help=f"comma-separated, from {', '.join(METHODS)} (default: all)",
    )
    evaluate.add_argument(
        "--scale-sweep", type=parse_floats, default=None, help="extra F+I rows at these fixed α, e.g. 1,4,16"
    )
    evaluate.add_argument("--workers", type=int, default=None, help="retraining processes")
    evaluate.add_argument("--out", type=Path, required=True, help="output directory (resumable)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="groupinf", description="Interaction-aware group influence.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_faithfulness(commands)
    add_select(commands)
    add_selection_eval(commands)
    add_llm(commands)
    return parser


def pool_config(args: argparse.Namespace, **extra: object):
    from dataclasses import replace

    from groupinf.experiments.pools import PoolRegime
    from groupinf.experiments.selection_eval import PRESETS, with_overrides

    changes = {k: getattr(args, k) for k in ("epochs", "lr") if getattr(args, k) is not None}
    if args.cosine is not None:
        changes["cosine"] = args.cosine
    sgd = replace(PRESETS[args.preset].sgd, **changes) if changes else None
    regime_keys = ("target_classes", "duplicates", "duplicate_sources", "duplicate_noise", "label_noise")
    regime = PoolRegime(**{k: getattr(args, k) for k in regime_keys if getattr(args, k) is not None})
    return with_overrides(
        args.preset,
        data=args.data,
        data_dir=args.data_dir,
        pool_size=args.pool_size,
        target_size=args.target_size,
        hidden=args.hidden,
        curvature=args.curvature,
        damping=args.damping,
        target_curvature=args.target_curvature,
        sgd=sgd,
        regime=regime,
        interaction_scale=args.interaction_scale,
        scale_grid=args.scale_grid,
        scale_folds=args.scale_folds,
        scale_seeds=args.scale_seeds,
        **extra,
    )


def run_faithfulness(args: argparse.Namespace) -> None:
    from groupinf.experiments.faithfulness import FaithfulnessConfig, format_table, run_faithfulness
    from groupinf.experiments.suite import run_suite
    from groupinf.training import SGDConfig

    if args.suite is not None:
        overrides = {k: getattr(args, k) for k in SUITE_OVERRIDES if getattr(args, k)}
        print(run_suite(args.suite, args.out, args.data_dir, **overrides))
        return
    sgd_keys = ("epochs", "lr", "momentum", "cosine")
    options = {k: v for k, v in vars(args).items() if k not in ("command", "out", "suite", *sgd_keys)}
    options = {k: v for k, v in options.items() if k not in SUITE_OVERRIDES or v is not None}
    sgd = SGDConfig(args.epochs, args.lr, args.l2, momentum=args.momentum, cosine=args.cosine)
    config = FaithfulnessConfig(**options, sgd=sgd)
    results = run_faithfulness(config, args.out)
    print(
        f"\n{config.data} / {config.model}: {config.draws} × {config.groups} groups of {results['group_size']} "
        f"(n = {results['n_train']}), curvature {config.curvature}, damping {results['damping']:.3g}, "
        f"H_f {results['target_curvature']}"
    )
    print(format_table(results))
    print(f"\nwrote {args.out / 'results.json'}, results.md and figures")


def run_select(args: argparse.Namespace) -> None:
    import numpy as np

    from groupinf.digests import file_digest
    from groupinf.experiments.jobs import run_jobs
    from groupinf.experiments.selection_eval import (
        PoolAnalysis,
        choose_interaction_scale,
        prepare_problem,
        shared_data,
        train_model,
    )
    from groupinf.features import SelectionFeatures, select_from_features
    from groupinf.files import atomic_save_npy, atomic_write_json

    scale = args.interaction_scale
    if scale is not None and ("I" not in args.terms or args.method == "random"):
        raise ValueError("--interaction-scale scales the interaction term: use it with --terms F+I or F+I+B")
    if scale == "auto" and args.method != "greedy":
        raise ValueError("--interaction-scale auto chooses α for greedy selection: use --method greedy or a number")
    if scale is None:  # auto where it can retrain (docs/selection.md), the paper's 1 from a feature file
        greedy_with_interactions = args.method == "greedy" and "I" in args.terms
        scale = "auto" if args.features is None and greedy_with_interactions else 1.0
    if args.k < 1:
        raise ValueError(f"k must be >= 1, got {args.k}")
    pool_indices, scale_choice = None, None
    if args.features is not None:
        if scale == "auto":
            raise ValueError(
                "--interaction-scale auto chooses α by retraining on folds of the target set, which a feature "
                "file does not hold: select with --data (and --checkpoint), or give α as a number"
            )
        features = SelectionFeatures.load(args.features, args.device)
    else:
        config = pool_config(args)
        problem, fingerprint = prepare_problem(config)
        if args.k > len(problem.X_pool):
            raise ValueError(f"k = {args.k} is larger than the pool ({len(problem.X_pool)} candidates)")
        root = args.out / "work" / config.model_fingerprint(fingerprint)
        if args.checkpoint is not None:  # features of a given θ* live apart from those of a trained one
            root = root / f"checkpoint-{file_digest(args.checkpoint)[:16] if args.checkpoint.is_file() else 'missing'}"
        analysis = PoolAnalysis(config, problem, root, args.checkpoint)
        if scale == "auto":
            shared = shared_data(config, problem)

            def retrain(jobs: dict) -> dict:
                return run_jobs(train_model, jobs, root / "retrain", shared, config.workers, desc="choosing α")

            scale_choice = choose_interaction_scale(analysis, (args.k,), retrain)[str(args.k)]
            scale = float(scale_choice["chosen"])
        features = analysis.features().to(args.device)
        pool_indices = problem.train_indices
    selection = select_from_features(
        features, args.k, args.method, args.terms, args.seed, progress=True, interaction_scale=scale
    )
    indices = selection.indices.cpu().numpy()
    record = {
        "method": selection.method,
        "terms": selection.terms,
        "k": args.k,
        "interaction_scale": selection.interaction_scale,
        "indices": indices.tolist(),
        "scores": selection.scores.cpu().tolist(),
    }
    if scale_choice is not None:
        record["interaction_scale_auto"] = scale_choice
    if pool_indices is not None:
        record["train_indices"] = pool_indices[indices].tolist()
        record["target_curvature"] = config.target_curvature
    atomic_save_npy(args.out / "selection.npy", indices.astype(np.int64))
    atomic_write_json(args.out / "selection.json", record)
    alpha = f", α = {selection.interaction_scale:g}" if "I" in selection.terms else ""
    print(f"selected {args.k} of {features.num_candidates} candidates ({selection.method}, {selection.terms}{alpha})")
    print(f"wrote {args.out / 'selection.json'} and {args.out / 'selection.npy'}")


def run_selection_eval(args: argparse.Namespace) -> None:
    from groupinf.experiments.selection_eval import format_table, run_selection_eval

    config = pool_config(
        args,
        budgets=args.budgets,
        seeds=args.seeds,
        workers=args.workers,
        methods=args.methods,
        scale_sweep=args.scale_sweep,
    )
    results = run_selection_eval(config, args.out)
    print(format_table(results))
    print(f"wrote {results['out']}/results.json, results.md and selection.png")


COMMANDS = {
    "faithfulness": run_faithfulness,
    "select": run_select,
    "selection-eval": run_selection_eval,
    "llm": run_llm,
}


def check_output_directory(out: Path) -> None:
    """A ``ValueError`` naming ``--out`` unless a run can write there (it need not exist yet)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory; pass a new or existing directory")
    existing = next(path for path in (out, *out.parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, so no directory can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: no permission to create files in {existing}")


def directories(out: Path) -> set[Path]:
    """``out``, its ancestors and its subdirectories that exist now."""
    found = {path for path in (out, *out.parents) if path.is_dir()}
    return found | {Path(d) for d, _, _ in os.walk(out)}


def remove_new_empty_directories(out: Path, before: set[Path]) -> None:
    """Remove the directories at, under or above ``out`` that are not in ``before`` and are empty."""
    for directory in [*(Path(d) for d, _, _ in os.walk(out, topdown=False)), *out.parents]:
        if directory not in before:
            with suppress(OSError):  # not empty
                directory.rmdir()


def report(message: str) -> None:
    """Print ``message`` to stderr on a line of its own: the progress bars a failure cut short are closed first."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        bar.close()
    print(message, file=sys.stderr)


def describe(error: BaseException) -> str:
    """The error as one line; an OS error names its file first."""
    text = str(error)
    if isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.filename}: {error.strerror}" + (f" (-> {error.filename2})" if error.filename2 else "")
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command: 0, or 2 after printing an expected failure in one line. An interrupt propagates (after
    the same clean-up), for ``entry`` or an interactive caller to handle."""
    args = build_parser().parse_args(argv)
    before, failed = directories(args.out), True
    try:
        check_output_directory(args.out)
        COMMANDS[args.command](args)
        failed = False
        return 0
    except EXPECTED_ERRORS as error:
        report(f"groupinf: error: {describe(error)}")
        return 2
    finally:
        if failed:
            remove_new_empty_directories(args.out, before)


def entry() -> int:
    """The ``groupinf`` program: ``main``, with Ctrl-C ending it with a short message and exit code 130."""
    try:
        return main()
    except KeyboardInterrupt:
        report("groupinf: interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(entry())
