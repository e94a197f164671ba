"""Static figures (PNG) for DVC plots and the report. matplotlib with the Agg backend:
no display needed, and the files render in `dvc plots show` and in markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    """matplotlib, imported on first use (0.3 s that every other `smoe` call would pay)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # format named, not read from the suffix: stages write under a scratch name first
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def heatmap(matrix: np.ndarray, rows: list[str], columns: list[str], title: str, path: str | Path, *,
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis", fmt: str = "{:.2f}") -> Path:
    """A labelled heatmap with the value printed in each cell."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(columns), 1.0 + 0.5 * len(rows)), dpi=120)
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title, fontsize=10)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if image.norm(matrix[i, j]) < 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(plt, fig, path)


def line_plot(x: list[float], series: dict[str, list[float]], title: str, path: str | Path, *, xlabel: str,
              ylabel: str, errors: dict[str, list[float]] | None = None, ylim: tuple[float, float] | None = None) -> Path:
    """One line per series (optionally with error bars), markers at each x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=120)
    for name, ys in series.items():
        err = (errors or {}).get(name)
        ax.errorbar(x, ys, yerr=err, marker="o", capsize=3 if err is not None else 0, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def histogram(values: dict[str, np.ndarray], title: str, path: str | Path, *, xlabel: str, bins: int = 40) -> Path:
    """Overlaid histograms of a few groups of values on shared bins, with a line at 0."""
    plt = _pyplot()
    finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in values.values()]
    edges = np.histogram_bin_edges(np.concatenate(finite) if any(len(v) for v in finite) else [0.0], bins=bins)
    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=120)
    for name, v in zip(values, finite):
        ax.hist(v, bins=edges, alpha=0.6, label=f"{name} ({len(v)})")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pairs")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
