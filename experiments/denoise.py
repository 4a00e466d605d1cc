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
import sys

import jax
import ml_collections
import numpy as np

from mnist_jax import experiment, models, plots, stats, sweep, tasks
from mnist_jax.config import ConfigError
from mnist_jax.data import Splits

TEST_METRICS = ("test_bce", "test_psnr_noisy", "test_psnr_denoised")


def check_levels(levels) -> list[float]:
    """The config's noise levels as floats; ConfigError if any repeats (a level names its runs)."""
    levels = [float(v) for v in levels]
    if len(set(levels)) != len(levels):
        raise ConfigError(f"config.noise_levels={levels}: each level may appear once")
    return levels


def dae_model(block) -> models.DenoisingAutoencoder:
    """The autoencoder of a config block, or ConfigError if the block is not kind 'dae'."""
    if block.get("kind") != "dae":
        raise ConfigError(f"config model kind {block.get('kind')!r}: this experiment trains kind 'dae'")
    try:
        return models.from_config(block)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config model block {dict(block)}: {err}") from None


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def layer_widths(model: models.DenoisingAutoencoder) -> str:
    """e.g. '784-128-96-128-784'."""
    return "-".join(str(w) for w in (784, *model.hidden, model.latent, *reversed(model.hidden), 784))


def train_denoisers(config: ml_collections.ConfigDict, workdir: pathlib.Path, model, levels: list[float],
                    data: Splits, *, name: str = "train", spec=None, learning_rate: float | None = None):
    """Train one autoencoder per (level, seed) as one program: (SweepResult, hp, seeds)."""
    seed_list = [config.seed + i for i in range(config.seeds)]
    lr = config.learning_rate if learning_rate is None else learning_rate
    hp, seeds = sweep.grid(seed_list, noise_level=levels, learning_rate=[lr])
    task = tasks.denoise_task(model, eval_seed=config.seed)
    return experiment.train(config, workdir, task, hp, seeds, data, name=name, spec=spec), hp, seeds


def test_metrics(model, params, levels: np.ndarray, data: Splits, eval_seed: int) -> dict[str, np.ndarray]:
    """`tasks.denoise_metrics` on the fixed-noise test set for every run: {metric: (R,)}."""
    key = tasks.eval_noise_key(eval_seed, "test")
    out = tasks.over_runs(lambda p, level, x: tasks.denoise_metrics(model, p, x, level, key, "test"),
                          (params, np.asarray(levels, np.float32)), (data.test_x,))
    return {k: np.asarray(v) for k, v in out.items()}


def figure_indices(test_y: np.ndarray, n: int) -> np.ndarray:
    """Test image indices for the figure: the first of each class 0-9, then the second, ..."""
    test_y = np.asarray(test_y)
    return np.array([np.flatnonzero(test_y == i % 10)[i // 10] for i in range(n)])


def per_level(values: np.ndarray, run_levels: np.ndarray, levels: list[float]) -> dict:
    """{level: {per_seed, n, mean, std, ci_low, ci_high}} of a per-run array."""
    return {f"{lv:g}": {"per_seed": values[run_levels == np.float32(lv)],
                        **stats.summary(values[run_levels == np.float32(lv)])} for lv in levels}


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    levels = check_levels(config.noise_levels)
    model = dae_model(config.model)
    data, data_seconds = experiment.load_data(config)
    result, hp, seeds = train_denoisers(config, workdir, model, levels, data)
    params = result.state.params
    experiment.save_params(workdir, params)
    run_levels = hp["noise_level"]
    test = test_metrics(model, params, run_levels, data, config.seed)
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
        f"Denoising autoencoder {layer_widths(model)} ({n_params:,} params), one per salt-and-pepper level; "
        f"Adam, batch {config.batch_size}, {plural(config.epochs, 'epoch')}, fresh noise every step\n"
        f"test images no. {', '.join(str(i) for i in idx[:10])}{'...' if len(idx) > 10 else ''} (first of each class); "
        f"denoised by seed {config.seed}; PSNR (peak 1) = mean over the {data.test_x.shape[0]:,} test images and "
        f"{plural(config.seeds, 'seed')}",
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
        "test": test,
        "per_level": summary,
        "psnr": "mean over test images of 10 log10(1 / MSE), images in [0, 1]; BCE in nats per pixel",
        "eval_noise": f"fixed per test image: tasks.eval_noise_key({config.seed}, 'test') folded with the image index",
        "figure_digits": idx,
        "history": experiment.history_summary(result.history),
        "diverged_runs": [int(i) for i in np.flatnonzero(result.history["diverged"][:, -1])],
        "timing": experiment.timing(data_seconds, result),
        "resumed_from_epoch": result.resumed_from_epoch,
    }


def main(argv: list[str] | None = None) -> int:
    return experiment.main(run, argv, "configs/denoise.py", __doc__)


if __name__ == "__main__":
    sys.exit(main())
