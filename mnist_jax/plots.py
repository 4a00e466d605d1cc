"""Matplotlib figures: labelled axes with units, legends, a title that says what was run,
and mean with a band or error bars wherever there are several seeds."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnist_jax import rehearsal  # noqa: E402


def save(fig, path: str | os.PathLike) -> None:
    """The figure laid out tightly, then written (`write`). A rehearsal skips the layout: it draws
    every text that the layout would draw when it writes the figure."""
    if not rehearsal.active():
        fig.tight_layout()
    write(fig, path)  # a long title line stays inside the image


def write(fig, path: str | os.PathLike) -> None:
    """The figure as a PNG whose bounding box holds every title and label, then closed. A
    rehearsal (`mnist_jax.rehearsal`) draws it once, whole, at a tenth of the resolution."""
    if rehearsal.active():
        fig.savefig(path, dpi=11)
    else:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def mean_band(ax, x, runs_by_x, label: str, color=None, scale: float = 1.0) -> None:
    """Mean over runs (rows) with a +/- 1 std band; runs_by_x has shape (runs, len(x))."""
    y = np.asarray(runs_by_x, np.float64) * scale
    mean = np.nanmean(y, axis=0)
    std = np.nanstd(y, axis=0, ddof=1) if y.shape[0] > 1 else np.zeros_like(mean)
    line, = ax.plot(x, mean, marker="o", ms=3, label=label, color=color)
    if y.shape[0] > 1:
        ax.fill_between(x, mean - std, mean + std, alpha=0.25, color=line.get_color(), linewidth=0)


def _zoom_past_first_epoch(ax, means: dict[str, np.ndarray]) -> str:
    """Fit the y axis to epochs 2.. when epoch 1 lies far below them, and say where epoch 1 is.

    A first-epoch training accuracy of 75 % would otherwise squeeze the last epochs, the part a
    reader compares (99.4 against 99.5 %), into one line. Returns a note for the x label ("" when
    the axis is left as it is).
    """
    if len(next(iter(means.values()))) < 3:
        return ""
    lo = min(float(np.nanmin(m[1:])) for m in means.values())
    hi = max(float(np.nanmax(m)) for m in means.values())
    pad = max(0.08 * (hi - lo), 0.05)
    below = {k: float(m[0]) for k, m in means.items() if m[0] < lo - pad}
    if not below or (hi - lo) > 0.25 * (hi - min(below.values())):
        return ""
    ax.set_ylim(lo - pad, hi + pad)
    return " (epoch 1 below the axis: " + ", ".join(f"{k} {v:.1f} %" for k, v in below.items()) + ")"


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
    note = _zoom_past_first_epoch(ax, {"training": 100 * np.nanmean(train, 0), "validation": 100 * np.nanmean(val, 0)})
    ax.set_xlabel("epoch" + note)
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(epochs if len(epochs) <= 20 else epochs[::max(1, len(epochs) // 10)])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def _mosaic(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """(R, C, H, W) images as one (R*(H+gap)-gap, C*(W+gap)-gap) array with white gaps."""
    r, c, h, w = images.shape
    out = np.ones((r * (h + gap) - gap, c * (w + gap) - gap), np.float32)
    for i in range(r):
        for j in range(c):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = images[i, j]
    return out


def image_grid(images, path: str | os.PathLike, title: str, *, xlabel: str, ylabel: str,
               row_labels=None, col_labels=None, cell: float = 0.55) -> None:
    """A grid of grey images (R, C, 28, 28) in [0, 1] (ink dark on white), with row and column labels."""
    images = np.asarray(images, np.float32)
    r, c, h, w = images.shape
    fig, ax = plt.subplots(figsize=(max(4.0, c * cell + 1.6), max(3.0, r * cell + 1.3)))
    ax.imshow(1.0 - _mosaic(images), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([j * (w + 2) + w / 2 for j in range(c)] if col_labels is not None else [])
    ax.set_yticks([i * (h + 2) + h / 2 for i in range(r)] if row_labels is not None else [])
    if col_labels is not None:
        ax.set_xticklabels([str(v) for v in col_labels], fontsize=7)
    if row_labels is not None:
        ax.set_yticklabels([str(v) for v in row_labels], fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=9)
    save(fig, path)


def latent_map(manifold, grid_values, means, labels, path: str | os.PathLike, title: str) -> None:
    """Two panels of a 2-D latent space: the decoded manifold (G, G, 28, 28) over `grid_values` (G,)
    of z1 (columns) and z2 (rows, increasing upwards), and latent means (N, 2) coloured by label."""
    manifold = np.asarray(manifold, np.float32)
    g = manifold.shape[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 6.2))
    left.imshow(1.0 - _mosaic(manifold[::-1], gap=0), cmap="gray", vmin=0.0, vmax=1.0,
                extent=(-0.5, g - 0.5, -0.5, g - 0.5))
    ticks = np.unique(np.linspace(0, g - 1, 6).round().astype(int))
    left.set_xticks(ticks, [f"{grid_values[i]:.1f}" for i in ticks])
    left.set_yticks(ticks, [f"{grid_values[i]:.1f}" for i in ticks])
    left.set_xlabel("z1 (prior quantiles)")
    left.set_ylabel("z2 (prior quantiles)")
    left.set_title("decoded manifold: Bernoulli means of p(x | z)", fontsize=9)
    means = np.asarray(means)
    labels = np.asarray(labels)
    cmap = plt.get_cmap("tab10")
    for d in range(10):
        sel = labels == d
        right.scatter(means[sel, 0], means[sel, 1], s=2, alpha=0.5, color=cmap(d), label=str(d), rasterized=True)
    right.set_xlabel("z1 (posterior mean)")
    right.set_ylabel("z2 (posterior mean)")
    lim = max(3.5, float(np.percentile(np.abs(means), 99.5)))
    right.set_xlim(-lim, lim)
    right.set_ylim(-lim, lim)
    right.set_aspect("equal")
    right.grid(alpha=0.3)
    right.legend(title="test label", markerscale=5, fontsize=8, loc="upper right", ncol=2)
    right.set_title(f"{len(labels):,} test digits: posterior means coloured by label", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write(fig, path)  # keeps the suptitle and the x labels inside


def elbo_curves(history: dict, path: str | os.PathLike, title: str) -> None:
    """Negative ELBO (nats) per epoch: training (running mean over the epoch), validation, test."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = [("loss", "training (running mean, dynamic binarization)"), ("val_neg_elbo", "validation"),
              ("test_neg_elbo", "test")]
    n = np.asarray(history["loss"]).shape[0]
    band = f" (mean ± 1 std over {n} seeds)" if n > 1 else ""
    for key, label in series:
        runs = np.asarray(history[key])
        mean_band(ax, np.arange(1, runs.shape[1] + 1), runs, label + band)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def _sweep_positions(values) -> tuple[np.ndarray, list[str], bool]:
    """x positions for hyperparameter values on a log axis, with 0 drawn one decade left of the
    smallest positive value (its tick says 0, and a break mark separates it)."""
    values = np.asarray(values, np.float64)
    positive = values[values > 0]
    zero_at = positive.min() / 10 if positive.size else 1.0
    pos = np.where(values > 0, values, zero_at)
    labels = ["0" if v == 0 else f"{v:g}" for v in values]
    return pos, labels, bool((values == 0).any())


def sweep_scatter(values, per_value_runs, summaries, path, title: str, *, xlabel: str, ylabel: str,
                  reference: float | None = None, reference_label: str = "") -> None:
    """Every run as a dot per hyperparameter value (log axis, 0 shown separately), mean with a
    95 % CI error bar, and an optional horizontal reference line."""
    pos, labels, has_zero = _sweep_positions(values)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    rng = np.random.default_rng(0)
    for i, runs in enumerate(per_value_runs):
        runs = np.asarray(runs, np.float64)
        jitter = pos[i] * 10 ** rng.uniform(-0.06, 0.06, runs.size)
        ax.scatter(jitter, runs, s=12, color="0.55", alpha=0.7, zorder=2,
                   label="one run (seed)" if i == 0 else None)
    means = np.array([s["mean"] for s in summaries], np.float64)
    low = means - np.array([s["ci_low"] for s in summaries], np.float64)
    high = np.array([s["ci_high"] for s in summaries], np.float64) - means
    ax.errorbar(pos, means, yerr=[low, high], fmt="o", color="C0", ms=6, capsize=4, lw=1.5, zorder=3,
                label="mean with 95 % CI (Student t)")
    if reference is not None:
        ax.axhline(reference, color="C3", ls="--", lw=1.2, label=reference_label, zorder=1)
    ax.set_xscale("log")
    ax.set_xticks(pos, labels)
    ax.minorticks_off()
    if has_zero and (np.asarray(values) > 0).any():
        ax.axvline(pos[np.asarray(values) > 0].min() / 10 ** 0.5, color="0.8", lw=4, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def sweep_std(values, summaries, path, title: str, *, xlabel: str, ylabel: str) -> None:
    """Run-to-run standard deviation per hyperparameter value, as bars."""
    _, labels, _ = _sweep_positions(values)
    stds = [s["std"] or 0.0 for s in summaries]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    bars = ax.bar(range(len(labels)), stds, color="C0")
    for bar, s in zip(bars, summaries, strict=True):
        ax.annotate(f"n={s['n']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=10)
    save(fig, path)


def curves_by_value(values, per_value_histories, path, title: str, *, name: str, ylabel: str,
                    scale: float = 100.0) -> None:
    """A per-epoch metric for each hyperparameter value: mean over seeds with a 1-std band."""
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    cmap = plt.get_cmap("viridis")
    for i, (v, runs) in enumerate(zip(values, per_value_histories, strict=True)):
        runs = np.asarray(runs)
        mean_band(ax, np.arange(1, runs.shape[1] + 1), runs, f"{name} = {v:g}", color=cmap(i / max(1, len(values) - 1)),
                  scale=scale)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    save(fig, path)


def image_blocks(blocks, path: str | os.PathLike, title: str, *, block_titles, row_labels, xlabel: str,
                 ncols: int = 3, cell: float = 0.36) -> None:
    """Panels of image rows: blocks (K, R, C, 28, 28) in [0, 1], one panel per block (titled),
    R labelled rows of C images each (ink dark on white), `ncols` panels per figure row."""
    blocks = np.asarray(blocks, np.float32)
    k, r, c, h, w = blocks.shape
    ncols = min(ncols, k)
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * (c * cell + 0.9), nrows * (r * cell + 0.75) + 0.5),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        ax.imshow(1.0 - _mosaic(blocks[i]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_yticks([j * (h + 2) + h / 2 for j in range(r)], row_labels, fontsize=7)
        ax.set_xticks([])
        ax.tick_params(length=0)
        ax.set_title(block_titles[i], fontsize=8)
        if i >= k - ncols:
            ax.set_xlabel(xlabel, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write(fig, path)  # keeps a wide suptitle inside


def curves_with_ci(x, curves: dict, path: str | os.PathLike, title: str, *, xlabel: str, ylabel: str,
                   scale: float = 100.0, note: str = "") -> None:
    """Mean curves with 95 % CI bands over seeds and every run as a faint dot.

    curves: {label: (runs (S, len(x)), summaries [stats.summary per x])}.
    """
    x = np.asarray(x, np.float64)
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for i, (label, (runs, summaries)) in enumerate(curves.items()):
        color = f"C{i}"
        runs = np.asarray(runs, np.float64) * scale
        mean = np.array([s["mean"] for s in summaries], np.float64) * scale
        low = np.array([s["ci_low"] for s in summaries], np.float64) * scale
        high = np.array([s["ci_high"] for s in summaries], np.float64) * scale
        ax.plot(x, mean, marker="o", ms=3.5, color=color, label=label)
        ax.fill_between(x, low, high, color=color, alpha=0.22, linewidth=0)
        ax.scatter(np.broadcast_to(x, runs.shape), runs, s=5, color=color, alpha=0.45, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", title=note or None, title_fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    write(fig, path)  # keeps a long title inside


def confusion_matrix(counts, path: str | os.PathLike, title: str, *, n_runs: int = 1) -> None:
    """A 10x10 confusion matrix (rows: true digit, columns: predicted digit), summed over
    `n_runs` runs: off-diagonal cells coloured by the mean error count per run, every cell
    annotated; the diagonal shows each digit's recall (%) instead of its count."""
    counts = np.asarray(counts, np.float64)
    k = counts.shape[0]
    per_run = counts / max(n_runs, 1)
    errors = per_run.copy()
    np.fill_diagonal(errors, np.nan)
    recall = 100 * np.diag(counts) / np.maximum(counts.sum(axis=1), 1)
    fig, ax = plt.subplots(figsize=(7.0, 6.0))
    im = ax.imshow(errors, cmap="Reds", vmin=0, vmax=max(np.nanmax(errors), 1e-9))
    top = np.nanmax(errors)
    for i in range(k):
        for j in range(k):
            if i == j:
                ax.text(j, i, f"{recall[i]:.1f}%", ha="center", va="center", fontsize=7, color="C0", weight="bold")
            elif per_run[i, j] > 0:
                ax.text(j, i, f"{per_run[i, j]:.1f}" if n_runs > 1 else f"{per_run[i, j]:.0f}", ha="center",
                        va="center", fontsize=7, color="white" if per_run[i, j] > 0.6 * top else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    what = f"mean count per run over {n_runs} runs" if n_runs > 1 else "count"
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=f"misclassified test images ({what})")
    ax.set_title(_wrap(title) + "\n(diagonal, blue: recall of the digit in %)", fontsize=8)
    save(fig, path)


def candidate_scatter(labels, per_candidate_runs, summaries, path: str | os.PathLike, title: str, *,
                      xlabel: str, ylabel: str, chosen: int | None = None, scale: float = 100.0) -> None:
    """Categorical comparison: every run as a dot per candidate, mean with a 95 % CI error bar,
    the chosen candidate marked."""
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    rng = np.random.default_rng(0)
    for i, runs in enumerate(per_candidate_runs):
        runs = np.asarray(runs, np.float64) * scale
        ax.scatter(i + rng.uniform(-0.08, 0.08, runs.size), runs, s=14, color="0.55", alpha=0.8, zorder=2,
                   label="one run (seed)" if i == 0 else None)
    means = np.array([s["mean"] for s in summaries], np.float64) * scale
    low = means - np.array([s["ci_low"] for s in summaries], np.float64) * scale
    high = np.array([s["ci_high"] for s in summaries], np.float64) * scale - means
    ax.errorbar(np.arange(len(labels)), means, yerr=[low, high], fmt="o", color="C0", ms=6, capsize=5, lw=1.5,
                zorder=3, label="mean with 95 % CI (Student t)")
    if chosen is not None:
        ax.scatter([chosen], [means[chosen]], s=160, facecolors="none", edgecolors="C3", lw=1.8, zorder=4,
                   label="chosen (highest mean)")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(_wrap(title), fontsize=8)
    save(fig, path)


def _wrap(title: str, width: int = 100) -> str:
    """Each line of a title wrapped at `width` characters, so it stays inside the figure."""
    return "\n".join(textwrap.fill(line, width) for line in title.split("\n"))


def variance_sources(labels, stds, disagreements, path, title: str, *, all_label: str = "all",
                     sampling_std: float | None = None, std_by_epoch: dict | None = None) -> None:
    """Panels per source of randomness: the std of test accuracy over runs with its 95 % CI
    (chi-square), the CI of `all_label` as a band, one model's test-set sampling std as a line;
    the mean pairwise disagreement of test predictions with its 95 % CI (jackknife); and, given
    `std_by_epoch` {label: (epochs,)}, the std of test accuracy after each epoch per source.
    `stds` and `disagreements` hold {std or mean, ci_low, ci_high} in % points / %."""
    x = np.arange(len(labels))
    if std_by_epoch:
        fig, (left, right, third) = plt.subplots(1, 3, figsize=(16.0, 4.4))
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.4))

    def bars(ax, rows, key, color, label):
        mid = np.array([r[key] if r[key] is not None else np.nan for r in rows], np.float64)
        lo = np.array([r["ci_low"] if r["ci_low"] is not None else np.nan for r in rows], np.float64)
        hi = np.array([r["ci_high"] if r["ci_high"] is not None else np.nan for r in rows], np.float64)
        ax.bar(x, np.nan_to_num(mid), color=[("C1" if lab == all_label else color) for lab in labels], alpha=0.85,
               label=label)
        ax.errorbar(x, mid, yerr=[np.nan_to_num(mid - lo), np.nan_to_num(hi - mid)], fmt="none", color="k", capsize=4,
                    lw=1.2, label="95 % CI")
        if all_label in labels:
            i = labels.index(all_label)
            if rows[i]["ci_low"] is not None:
                ax.axhspan(rows[i]["ci_low"], rows[i]["ci_high"], color="C1", alpha=0.15, zorder=0,
                           label=f"95 % CI of '{all_label}'")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # room for the legend above the bars
        ax.set_xticks(x, labels)
        ax.set_xlabel("source of randomness varied (the others held fixed)")
        ax.grid(alpha=0.3, axis="y")

    bars(left, stds, "std", "C0", "std over runs")
    if sampling_std is not None:
        left.axhline(sampling_std, color="C3", ls="--", lw=1.2, label="test-set sampling std of one model (bootstrap)")
    left.set_ylabel("std of test accuracy over runs (% points)")
    left.set_title("Spread of test accuracy", fontsize=9)
    left.legend(fontsize=7, loc="upper left", ncol=2)
    bars(right, disagreements, "mean", "C2", "mean over pairs of runs")
    right.set_ylabel("test images two runs label differently (%)")
    right.set_title("Disagreement between the predictions of two runs", fontsize=9)
    right.legend(fontsize=7, loc="upper left", ncol=2)
    if std_by_epoch:
        for i, (label, curve) in enumerate(std_by_epoch.items()):
            curve = np.asarray(curve, np.float64)
            curve = np.where(curve > 0, curve, np.nan)  # identical runs: no point on the log axis
            third.plot(np.arange(1, curve.size + 1), curve, marker="o", ms=3, label=label,
                       color="C1" if label == all_label else f"C{[0, 2, 3, 4, 5, 6, 7, 8, 9][i % 9]}",
                       lw=2.2 if label == all_label else 1.2)
        third.set_xlabel("epoch")
        third.set_ylabel("std of test accuracy over runs (% points)")
        third.set_yscale("log")
        third.set_title("How the spread grows during training", fontsize=9)
        third.grid(alpha=0.3, which="both")
        third.legend(fontsize=7, title="source varied", title_fontsize=7)
    fig.suptitle(_wrap(title, 130), fontsize=9)
    save(fig, path)


def ensemble_size(block: dict, path: str | os.PathLike, title: str) -> None:
    """Test accuracy (%) of ensembles of k runs against k (metrics.json's `ensemble` block): the mean
    over subsets of size k with the percentile interval of the subsets as a band, the mean member
    with its 95 % CI, and the full ensemble."""
    rows = block["by_size"]
    k = np.array([r["k"] for r in rows])
    mean, lo, hi = (100.0 * np.array([r[key] for r in rows], np.float64) for key in ("mean", "ci_low", "ci_high"))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(k, mean, marker="o", ms=3.5, color="C0", label="ensemble of k runs (softmax averaged), mean over subsets")
    ax.fill_between(k, lo, hi, color="C0", alpha=0.22, linewidth=0, label="95 % of the subsets of size k")
    member = block["members"]["accuracy"]
    ax.axhline(100.0 * member["mean"], color="C3", ls="--", lw=1.2,
               label=f"mean member ({member['n']} runs)" + (", 95 % CI" if member["n"] > 2 else ""))
    if member["n"] > 2:
        ax.axhspan(100.0 * member["ci_low"], 100.0 * member["ci_high"], color="C3", alpha=0.12, linewidth=0)
    ax.scatter([k[-1]], [100.0 * block["ensemble"]["accuracy"]], color="C1", zorder=3, s=30,
               label=f"all {block['runs']} runs")
    ax.set_xlabel("runs in the ensemble, k")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(k if len(k) <= 20 else k[::max(1, len(k) // 10)])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(_wrap(title, 90), fontsize=9)
    save(fig, path)


def unstable_digits(block: dict, images, path: str | os.PathLike, title: str, columns: int = 8) -> None:
    """The most unstable test images of metrics.json's `flips` block (`images`: the test images,
    uint8 NHWC): each with its label, the share of runs that get it wrong, and the runs' votes."""
    shown = block["most_unstable"]
    if not shown:
        fig, ax = plt.subplots(figsize=(6.0, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, f"every run agrees on every one of the {block['examples']:,} test images", ha="center")
        ax.set_title(_wrap(title, 90), fontsize=9)
        save(fig, path)
        return
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.55 * columns, 1.9 * rows + 0.9), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    images = np.asarray(images)
    for ax, r in zip(axes.ravel(), shown, strict=False):
        ax.imshow(images[r["index"]].reshape(images.shape[1], images.shape[2]), cmap="gray_r", interpolation="nearest")
        votes = sorted(((n, c) for c, n in enumerate(r["votes"]) if n), key=lambda nc: (-nc[0], nc[1]))
        ax.set_title(f"#{r['index']}, label {r['label']}\nwrong in {100 * r['wrong_fraction']:.0f} %\nvotes "
                     + " ".join(f"{c}:{n}" for n, c in votes[:4]), fontsize=6.5)
    fig.suptitle(_wrap(title, 110), fontsize=9)
    save(fig, path)


def seed_variance(metrics: dict, images, workdir, what: str) -> None:
    """ensemble.png and unstable_digits.png (the names the REPORT's `report.seed_variance` shows) of
    metrics.json's `ensemble` and `flips` blocks, where it has them; `images`: the test images;
    `what`: the trained runs for the titles."""
    e, f = metrics.get("ensemble"), metrics.get("flips")
    of = (lambda b: "" if not b.get("of") else " of " + ", ".join(f"{n} = {v:g}" for n, v in b["of"].items()))
    if e:
        ensemble_size(e, Path(workdir) / "ensemble.png",
                      f"Ensembles of the {e['runs']} seeds{of(e)}: test accuracy against ensemble size\n{what}")
    if f:
        err = f["test_error"]["mean"]
        unstable_digits(f, images, Path(workdir) / "unstable_digits.png",
                        f"The {len(f['most_unstable'])} test images the {f['runs']} runs{of(f)} disagree on most "
                        f"({f['unstable']:,} of {f['examples']:,} flip; mean test error {100 * err:.2f} %)\n{what}")
