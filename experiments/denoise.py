"""The study's denoising autoencoder (section 4A/4B): one per salt-and-pepper noise level.

    python -m experiments.denoise --workdir runs/denoise [--config.seeds=N] [--config.epochs=E]
                                  [--config.noise_levels=[0.2,0.4]]

Every (noise level, seed) is one run of a single vmapped program; each training step draws a
fresh corruption of its batch. Writes `denoise.png` (per level a block of original, noisy and
denoised test digits, the same digits in every block), `metrics.json` (per level the test BCE
and the PSNR of noisy vs clean and denoised vs clean, mean and 95 % CI over seeds), the trained
params of every run (`params/`, used by `experiments.evaluate --level`) and checkpoints.

Test images are corrupted with a fixed noise per image (`tasks.eval_noise_key(seed, "test")`),
the same for every seed, so the spread over seeds is the spread of training alone.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from mnist_jax import cli, denoising, models, plots, preflight, results, stats, tasks, trained, training
from mnist_jax.precision import compute_dtype_of
from mnist_jax.report import by_level, ci, figure, mean_std, num, seeds_text, table, timing_line

TEST_METRICS = ("test_bce", "test_psnr_noisy", "test_psnr_denoised")


def figure_indices(test_y: np.ndarray, n: int) -> np.ndarray:
    """Test image indices for the figure: the first of each class 0-9, then the second, ..."""
    test_y = np.asarray(test_y)
    return np.array([np.flatnonzero(test_y == i % 10)[i // 10] for i in range(n)])


def per_level(values: np.ndarray, run_levels: np.ndarray, levels: list[float]) -> dict:
    """{level: {per_seed, n, mean, std, ci_low, ci_high}} of a per-run array."""
    return {f"{lv:g}": {"per_seed": values[run_levels == np.float32(lv)],
                        **stats.summary(values[run_levels == np.float32(lv)])} for lv in levels}


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: the autoencoder's block, its levels, what its task
    and optimizer read, and the figure's digits."""
    task = tasks.denoise_task(denoising.dae_model(config.model, compute_dtype_of(config)))
    return [*preflight.RUN_FIELDS, "model", "noise_levels", "figure_digits",
            *preflight.task_reads(config, task, given=("noise_level",))]


def runs(config: ml_collections.ConfigDict) -> int:
    """Runs in its one grid: one autoencoder per noise level and seed."""
    return len(config.noise_levels) * config.seeds


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    levels = denoising.check_levels(config.noise_levels)
    model = denoising.dae_model(config.model, compute_dtype_of(config))
    data, data_seconds = training.load_data(config)
    result, hp, seeds = denoising.train_denoisers(config, workdir, model, levels, data)
    params = result.state.params
    trained.save_params(workdir, params, declared=trained.grid_declaration(
        model, hp, seeds, result.history, "a denoising autoencoder per noise level and seed", primary=True))
    run_levels = hp["noise_level"]
    test = denoising.test_metrics(model, params, run_levels, data, config.seed)
    diverged = np.asarray(result.history["diverged"], bool)[:, -1]
    test = {k: np.where(diverged, np.nan, np.asarray(v)) for k, v in test.items()}  # left out of the statistics
    gain = test["test_psnr_denoised"] - test["test_psnr_noisy"]

    summary = {name: per_level(test[name], run_levels, levels) for name in TEST_METRICS}
    summary["psnr_gain_db"] = per_level(gain, run_levels, levels)
    summary["val_psnr_denoised"] = per_level(np.where(diverged, np.nan, result.history["val_psnr_denoised"][:, -1]),
                                             run_levels, levels)
    n_params = models.param_count(jax.tree_util.tree_map(lambda a: a[0], params))

    # Figure: the same test digits at every level, denoised by the first seed's autoencoder.
    idx = figure_indices(data.test_y, config.figure_digits)
    key = tasks.eval_noise_key(config.seed, "test")
    clean = np.asarray(data.test_x)[idx]
    first = [int(np.flatnonzero(run_levels == np.float32(lv))[0]) for lv in levels]
    first_params = jax.tree_util.tree_map(lambda a: a[np.array(first)], params)

    def block(p, level, x, index):
        noisy = tasks.corrupted_images(x, index, level, key)
        return noisy, tasks.denoised(model, p, noisy)

    noisy, den = tasks.over_runs(block, (first_params, np.asarray(levels, np.float32)), (clean, idx))
    clean_f = np.broadcast_to(clean[None, ..., 0] / 255.0, (len(levels), *clean.shape[:3]))
    blocks = np.stack([clean_f, np.asarray(noisy)[..., 0], np.asarray(den)[..., 0]], axis=1)
    titles = [f"level {lv:g}: noisy {stats.fmt(summary['test_psnr_noisy'][f'{lv:g}']['mean'], '.1f')} dB -> denoised "
              f"{stats.fmt(summary['test_psnr_denoised'][f'{lv:g}']['mean'], '.1f')} dB" for lv in levels]
    plots.image_blocks(
        blocks, workdir / "denoise.png",
        f"Denoising autoencoder {models.describe(model)} ({n_params:,} params), one per salt-and-pepper level; "
        f"{config.optimizer} lr {config.learning_rate:g}, batch {config.batch_size}, "
        f"{denoising.plural(config.epochs, 'epoch')}, fresh noise every step\n"
        f"test images no. {', '.join(str(i) for i in idx[:10])}{'...' if len(idx) > 10 else ''} (first of each class); "
        f"denoised by seed {config.seed}; PSNR (peak 1) = mean over the {data.test_x.shape[0]:,} test images and "
        f"{denoising.plural(config.seeds, 'seed')}",
        block_titles=titles, row_labels=["original", "noisy", "denoised"],
        xlabel=f"{len(idx)} test digits (the same in every block)")

    lines = [f"{'level':>5} {'BCE/pixel':>9} {'PSNR noisy':>10} {'PSNR denoised':>13} {'gain (95% CI)':>22}"]
    for lv in levels:
        k = f"{lv:g}"
        g = summary["psnr_gain_db"][k]
        lines.append(f"{lv:5.2f} {stats.fmt(summary['test_bce'][k]['mean'], '9.4f')} "
                     f"{stats.fmt(summary['test_psnr_noisy'][k]['mean'], '9.2f')}  "
                     f"{stats.fmt(summary['test_psnr_denoised'][k]['mean'], '12.2f')}  {stats.fmt(g['mean'], '+6.2f')} dB "
                     f"[{stats.fmt(g['ci_low'], '+.2f')}, {stats.fmt(g['ci_high'], '+.2f')}]")
    print("\n".join(lines))
    return {
        "experiment": "denoise",
        "noise_levels": levels,
        "param_count": n_params,
        "seeds": seeds,
        "noise_level": run_levels,
        "runs": results.runs_table(hp, seeds, result.history, ("val_bce", "val_psnr_denoised"),
                                   **{k: test[k] for k in TEST_METRICS}),
        "test": test,
        "per_level": summary,
        "psnr": "mean over test images of 10 log10(1 / MSE), images in [0, 1]; BCE in nats per pixel",
        "eval_noise": f"fixed per test image: tasks.eval_noise_key({config.seed}, 'test') folded with the image index",
        "figure_digits": idx,
        "history": training.history_summary(result.history),
        "diverged_runs": [int(i) for i in np.flatnonzero(result.history["diverged"][:, -1])],
        "timing": training.timing(data_seconds, result),
        "resumed_from_epoch": result.resumed_from_epoch,
    }


# --- REPORT.md section and README row, from metrics.json alone ---

def section(m: dict) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone."""
    levels = m["noise_levels"]
    pl = m["per_level"]
    rows = []
    for lv, noisy, den, gain, bce in zip(levels, by_level(pl["test_psnr_noisy"], levels),
                                         by_level(pl["test_psnr_denoised"], levels),
                                         by_level(pl["psnr_gain_db"], levels), by_level(pl["test_bce"], levels),
                                         strict=True):
        rows.append([f"{lv:g}", num(noisy["mean"]), mean_std(den, 1.0), mean_std(gain, 1.0), ci(gain, 1.0),
                     num(bce["mean"], 4)])
    n_seeds = len(set(m["seeds"]))
    return "\n\n".join([
        "## 4A-4B. Denoising autoencoder 784-128-96-128-784 against salt-and-pepper noise",
        table(["noise level", "PSNR noisy (dB)", f"PSNR denoised (dB), mean ± std over {n_seeds} seeds",
               "gain (dB)", "95 % CI of the gain (dB)", "test BCE (nats per pixel)"], rows),
        "The study: the autoencoder \"performs quite well up to 0.7\"; beyond 0.7 digits are \"virtually "
        "impossible\" to identify. One autoencoder per level and seed, all trained as one vmapped program, "
        "with fresh noise drawn inside every step.",
        timing_line(m),
        figure("denoise", "denoise.png", "Per noise level: originals, noisy and denoised test digits"),
    ])


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    levels = m["noise_levels"]
    pl = m["per_level"]
    gains = by_level(pl["psnr_gain_db"], levels)
    i = levels.index(0.4) if 0.4 in levels else len(levels) // 2
    noisy, den = by_level(pl["test_psnr_noisy"], levels)[i], by_level(pl["test_psnr_denoised"], levels)[i]
    low, high = min(g["mean"] for g in gains), max(g["mean"] for g in gains)
    return [f"denoising AE {m.get('architecture', '784-128-96-128-784')}, one per level "
            f"{levels[0]:g}-{levels[-1]:g}, {seeds_text(c)} each, {c['epochs']} epochs",
            f"at level {levels[i]:g}: PSNR {num(noisy['mean'])} dB noisy -> **{num(den['mean'])} dB** denoised, gain "
            f"**{mean_std(gains[i], 1.0)} dB** (CI {ci(gains[i], 1.0)}); gains of {low:.1f}-{high:.1f} dB at every level",
            "\"quite well up to 0.7\"", "-"]


main = cli.entry_point(run, "configs/denoise.py", __doc__, __name__)
