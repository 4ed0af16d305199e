"""Figures of the paper's style: Spearman bars (Fig. 1), class-pair interactions (Fig. 2),
damping sweeps (App. F). Each is written to a PNG with write-then-rename."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from groupinf.files import atomic_path


def figure(width: float, height: float, columns: int = 1) -> tuple[Figure, np.ndarray]:
    """A figure with ``columns`` axes, drawn without pyplot (no GUI backend, no global state)."""
    fig = Figure(figsize=(width, height))
    return fig, np.atleast_1d(fig.subplots(1, columns))


def save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def spearman_bars(results: dict[str, dict[str, float]], path: Path) -> None:
    """Grouped bars: one group per setting, one bar per method."""
    settings = list(results)
    methods = list(dict.fromkeys(m for r in results.values() for m in r))
    width = 0.8 / len(methods)
    fig, (ax,) = figure(max(5, 1.6 * len(settings) + 2), 3.5)
    for j, method in enumerate(methods):
        values = [results[s].get(method, np.nan) for s in settings]
        ax.bar(np.arange(len(settings)) + (j - (len(methods) - 1) / 2) * width, values, width, label=method)
    ax.set_xticks(np.arange(len(settings)), settings)
    ax.set_ylabel("Spearman with retraining")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(ncol=min(len(methods), 6), fontsize="small", loc="lower left")
    save(fig, path)


def damping_sweep_plot(sweep: dict[str, dict[str, float]], title: str, path: Path) -> None:
    """Spearman of each method against the damping value (log scale)."""
    dampings = sorted(sweep, key=float)
    fig, (ax,) = figure(5, 3.5)
    for method in next(iter(sweep.values())):
        ax.plot([float(d) for d in dampings], [sweep[d][method] for d in dampings], marker="o", label=method)
    ax.set(xscale="log", xlabel="damping ρ", ylabel="Spearman with retraining", title=title)
    ax.legend(fontsize="small")
    save(fig, path)


def class_pair_figure(
    average: np.ndarray,
    class_names: list[str],
    pairs: dict[str, list[tuple[int, int, float]]],
    images: np.ndarray | None,
    labels: np.ndarray,
    path: Path,
) -> None:
    """Heat map of the average ``J_ab`` per class pair, and (for image data) the lowest- and highest-J
    example pairs with their labels."""
    rows = 1 if images is None else 3
    fig = Figure(figsize=(10, 4 + 2.2 * (rows - 1)))
    grid = fig.add_gridspec(rows, 6)
    ax = fig.add_subplot(grid[0, :3] if images is not None else grid[0, :])
    bound = np.abs(average).max()
    shown = ax.imshow(average, cmap="coolwarm", vmin=-bound, vmax=bound)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize="small")
    ax.set_yticks(range(len(class_names)), class_names, fontsize="small")
    ax.set_title("average pairwise interaction J_ab")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    if images is not None:
        for row, (name, chosen) in enumerate(pairs.items(), start=1):
            for col, (i, j, value) in enumerate(chosen[:3]):
                for half, idx in enumerate((i, j)):
                    axis = fig.add_subplot(grid[row, 2 * col + half])
                    axis.imshow(images[idx], cmap="gray")
                    axis.set_xticks([])
                    axis.set_yticks([])
                    title = f"{class_names[labels[idx]]}" + (f"  (J={value:.1e})" if half == 0 else "")
                    axis.set_title(title, fontsize="small")
                    if half == 0 and col == 0:
                        axis.set_ylabel(name, fontsize="small")
    save(fig, path)


def image_view(X: np.ndarray) -> np.ndarray | None:
    """Features as displayable images: ``(n, h, w)`` gray or ``(n, h, w, 3)`` colour; None if not images."""
    flat = X.reshape(len(X), -1)
    side = math.isqrt(flat.shape[1])
    if side * side == flat.shape[1] and side >= 8:
        return flat.reshape(len(X), side, side)
    if flat.shape[1] == 3 * 32 * 32:
        images = flat.reshape(len(X), 3, 32, 32).transpose(0, 2, 3, 1)
        low, high = images.min(), images.max()
        return (images - low) / (high - low + 1e-12)
    return None
