"""Matplotlib figures: labelled axes with units, legends, a title that says what was run,
and mean with a band or error bars wherever there are several seeds."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_band(ax, x, runs_by_x, label: str, color=None, scale: float = 1.0) -> None:
    """Mean over runs (rows) with a +/- 1 std band; runs_by_x has shape (runs, len(x))."""
    y = np.asarray(runs_by_x, np.float64) * scale
    mean = np.nanmean(y, axis=0)
    std = np.nanstd(y, axis=0, ddof=1) if y.shape[0] > 1 else np.zeros_like(mean)
    line, = ax.plot(x, mean, marker="o", ms=3, label=label, color=color)
    if y.shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, alpha=0.25, color=line.get_color(), linewidth=0)


def accuracy_curves(history: dict, path: str | os.PathLike, title: str) -> None:
    """Training and validation accuracy (%) per epoch: mean over seeds with a 1-std band."""
    train = np.asarray(history["train_accuracy"])
    val = np.asarray(history["val_accuracy"])
    epochs = np.arange(1, train.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n = train.shape[0]
    band = f" (mean ± 1 std over {n} seeds)" if n > 1 else ""
    mean_band(ax, epochs, train, "training (running mean over the epoch)" + band, scale=100)
    mean_band(ax, epochs, val, "validation" + band, scale=100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(epochs if len(epochs) <= 20 else epochs[::max(1, len(epochs) // 10)])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    save(fig, path)
