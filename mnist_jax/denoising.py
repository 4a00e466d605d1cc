"""What the denoising experiments share: checking noise levels, building the autoencoder of a
config block, training one autoencoder per (noise level, seed) as one program, and testing them
on the fixed-noise test set."""

from __future__ import annotations

import pathlib

import flax.linen as nn
import ml_collections
import numpy as np

from mnist_jax import models, sweep, tasks, training
from mnist_jax.config import ConfigError
from mnist_jax.data import Splits


def check_levels(levels) -> list[float]:
    """The config's noise levels as floats; ConfigError if any repeats (a level names its runs)."""
    levels = [float(v) for v in levels]
    if len(set(levels)) != len(levels):
        raise ConfigError(f"config.noise_levels={levels}: each level may appear once")
    return levels


def dae_model(block, compute_dtype: str = "float32") -> nn.Module:
    """The autoencoder of a config block (any model from images to images, such as kind 'dae'),
    computing in `compute_dtype`, or ConfigError."""
    try:
        model = models.from_config(block, compute_dtype)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config model block {dict(block)}: {err}") from None
    if models.role(model) != "denoiser":
        raise ConfigError(f"config model kind {block.get('kind')!r}: this experiment trains a denoiser, a model from "
                          "images to images (such as kind 'dae')")
    return model


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def train_denoisers(config: ml_collections.ConfigDict, workdir: pathlib.Path, model, levels: list[float],
                    data: Splits, *, name: str = "train", spec=None, learning_rate: float | None = None):
    """Train one autoencoder per (level, seed) as one program: (SweepResult, hp, seeds)."""
    seed_list = [config.seed + i for i in range(config.seeds)]
    lr = config.learning_rate if learning_rate is None else learning_rate
    task = tasks.denoise_task(model, eval_seed=config.seed)
    values = training.hparams(config, task, spec, noise_level=levels, learning_rate=[lr])
    hp, seeds = sweep.grid(seed_list, noise_level=values.pop("noise_level"), **values)
    return training.train(config, workdir, task, hp, seeds, data, name=name, spec=spec), hp, seeds


def test_metrics(model, params, levels: np.ndarray, data: Splits, eval_seed: int) -> dict[str, np.ndarray]:
    """`tasks.denoise_metrics` on the fixed-noise test set for every run: {metric: (R,)}."""
    key = tasks.eval_noise_key(eval_seed, "test")
    out = tasks.over_runs(lambda p, level, x: tasks.denoise_metrics(model, p, x, level, key, "test"),
                          (params, np.asarray(levels, np.float32)), (data.test_x,))
    return {k: np.asarray(v) for k, v in out.items()}
