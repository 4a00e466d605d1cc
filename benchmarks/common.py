"""Shared helpers of the benchmarks: the machine's description and a steady-state timer."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

import jax

from mnist_jax import provenance
from mnist_jax.trained import to_jsonable


def write_json(path: str | None, **fields) -> None:
    """A benchmark's results as JSON at `path` (--json), beside the machine they were measured on;
    nothing without a path."""
    if path:
        with open(path, "w") as f:
            json.dump(to_jsonable({"machine": machine(), **fields}), f, indent=1)


def machine() -> str:
    """CPU model, cores, load average, jax version, devices and XLA_FLAGS, for a benchmark header.

    The load average matters: a timing taken while other jobs run is only an upper bound.
    """
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{provenance.cpu_model()}, {os.cpu_count()} cores, load avg {load:.2f}; jax {jax.__version__}; "
            f"{provenance.describe_devices()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def grid_epoch(task, spec, hp: dict, seeds, data) -> tuple[float, Callable[[], dict]]:
    """(compile seconds, `call`) for the vmapped runs (hp, seeds) of `task`: each `call()` runs
    one more epoch of the compiled whole-run program, blocked until ready, and returns its
    history."""
    from mnist_jax.sweep import GridTrainer, pad_runs

    trainer = GridTrainer(task, spec)
    hp, seeds = pad_runs((hp, seeds), trainer.n_devices)[0]
    hp_d, seeds_d, data_d = trainer.place(hp, seeds, data)
    state = [jax.block_until_ready(trainer.init(hp_d, seeds_d, data_d))]
    start = time.perf_counter()
    program = trainer.epochs_program(1, state[0], hp_d, seeds_d, data_d)
    compile_s = time.perf_counter() - start

    def call() -> dict:
        state[0], hist = jax.block_until_ready(program(state[0], hp_d, seeds_d, data_d))
        return hist
    return compile_s, call


def time_grid_epochs(task, spec, hp: dict, seeds, data, epochs: int) -> tuple[dict, dict]:
    """Compile time and steady-state epoch times of the vmapped runs (hp, seeds) of `task`.

    One-epoch calls of the compiled whole-run program: the first call warms caches and is
    reported apart; `epochs` more are timed, each blocked until ready. Returns the timings and
    the history of the last epoch.
    """
    compile_s, call = grid_epoch(task, spec, hp, seeds, data)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        hist = call()
        times.append(time.perf_counter() - start)
    return {"compile_seconds": compile_s, "epoch_seconds": times[1:], "first_call_seconds": times[0],
            "median_epoch_seconds": statistics.median(times[1:])}, hist


def study_workload(net: str, runs: int, epochs: int = 2):
    """(task, spec, hp, seeds) of `runs` vmapped runs of one of the study's nets as the experiments
    train it: "dense" (784-64-64-10, SGD, the L2 hook), "autoencoder" (the denoising autoencoder,
    Adam, noise levels spread over 0.1-0.9) or "cnn" (the study's CNN, Adam)."""
    import numpy as np

    from mnist_jax import models, noise, regularizers, sweep, tasks
    from mnist_jax.train import TrainSpec

    if net == "dense":
        task = tasks.classifier_task(models.MLP((64, 64))).with_hooks(regularizers.L2)
        hp, seeds = sweep.grid(list(range(runs)), learning_rate=[0.1], l2=[0.0])
        return task, TrainSpec(epochs=epochs, batch_size=128), hp, seeds
    if net == "autoencoder":
        task = tasks.denoise_task(models.DenoisingAutoencoder(), corrupt=noise.salt_and_pepper)
        hp, seeds = sweep.grid([0], noise_level=np.linspace(0.1, 0.9, runs).round(3).tolist(), learning_rate=[1e-3])
        return task, TrainSpec(epochs=epochs, batch_size=64, optimizer="adam"), hp, seeds
    if net == "cnn":
        task = tasks.classifier_task(models.CNN(filters=(32, 32), pool=(True, False), dense=32))
        hp, seeds = sweep.grid(list(range(runs)), learning_rate=[2e-3], dropout_rate=[0.5])
        return task, TrainSpec(epochs=epochs, batch_size=128, optimizer="adam"), hp, seeds
    raise ValueError(f"unknown net {net!r}: dense, autoencoder or cnn")


def subset_or_exit(parser, n_train: int):
    """`load_training_subset(n_train)`, a bad --train-images ending the command through `parser`."""
    try:
        return load_training_subset(n_train)
    except ValueError as err:
        parser.error(str(err))


def load_training_subset(n_train: int):
    """The MNIST splits with only the first `n_train` training images (0 = all), and the full count.

    Raises ValueError when n_train is outside 0..full.
    """
    from mnist_jax import data as data_lib

    splits = data_lib.load_splits()
    full = splits.train_x.shape[0]
    n_train = n_train or full
    if not 0 < n_train <= full:
        raise ValueError(f"--train-images must be in 1..{full}")
    return splits._replace(train_x=splits.train_x[:n_train], train_y=splits.train_y[:n_train]), full
