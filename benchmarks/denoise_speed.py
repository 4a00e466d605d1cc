"""Steady-state epoch time of the denoising autoencoder, and what drawing the noise costs.

    python -m benchmarks.denoise_speed
    python -m benchmarks.denoise_speed --runs 1,9 --noise threefry16,two_draws --json runs/denoise_speed.json
    python -m benchmarks.denoise_speed --train-images 6400 --epochs 2      # a quick look

Two measurements, both with the real compiled programs:

1. The noise alone: one epoch's worth of corruption (every training image once, in batches of
   `--batch-size`, as a `lax.scan` like the training step) for each formulation:
   `two_draws` (a uniform for keep, another for salt: two threefry hashes per pixel),
   `one_draw` (one 32-bit uniform per pixel holds both decisions: one hash per pixel),
   `bits16` (16 bits per pixel from `jax.random.bits`: one hash per two pixels), and
   `threefry16` (16 bits per pixel straight from the 64-bit threefry output: one hash per four
   pixels; `mnist_jax.noise.salt_and_pepper`, the one the experiments use).
2. Training: the autoencoder (784-128-96-128-784, Adam, batch 64, fresh noise drawn inside
   every step, validation metrics after the epoch) with `sweep.GridTrainer`, for each number
   of vmapped runs in `--runs` and each formulation. The first call (compile) is timed apart,
   then the median of `--epochs` calls is the steady-state epoch time; "per run" divides it by
   the number of runs. With `--train-images N` the epoch time is extrapolated to the full
   55,000 images linearly in the number of steps (evaluation included, so it errs high).

Timings on a shared machine are only meaningful when nothing else runs: serialise benchmarks
(for example under one `flock` lock file) and report medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine, subset_or_exit, time_grid_epochs, write_json
from mnist_jax import data as data_lib
from mnist_jax import models, noise, tasks
from mnist_jax.sweep import grid
from mnist_jax.train import TrainSpec, epoch_batches

NOISE = {
    "threefry16": noise.salt_and_pepper,
    "bits16": noise.salt_and_pepper_bits16,
    "one_draw": noise.salt_and_pepper_one_draw,
    "two_draws": noise.salt_and_pepper_two_draws,
}


def median_time(fn, args, repeats: int) -> tuple[float, list[float]]:
    """Median wall time of `repeats` calls of a compiled fn after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def time_noise(corrupt, train_x: jax.Array, batch_size: int, level: float, repeats: int) -> dict:
    """Seconds to corrupt one epoch of training images, batch by batch inside a scan."""

    def epoch(key, x, level):
        idx, _ = epoch_batches(key, x.shape[0], batch_size)

        def step(acc, xs):
            i, ib = xs
            xb = corrupt(jax.random.fold_in(key, i), data_lib.preprocess_images(x[ib]), level)
            return acc + xb.sum(), None  # consume the result so nothing is optimised away

        return jax.lax.scan(step, jnp.float32(0), (jnp.arange(idx.shape[0]), idx))[0]

    fn = jax.jit(epoch)
    med, times = median_time(fn, (jax.random.key(0), train_x, jnp.float32(level)), repeats)
    return {"epoch_seconds": med, "all_seconds": times}


def time_training(corrupt, data: data_lib.Splits, spec: TrainSpec, n_runs: int, epochs: int) -> dict:
    """Compile time and median steady-state epoch time of `n_runs` vmapped autoencoder runs."""
    task = tasks.denoise_task(models.DenoisingAutoencoder(), corrupt=corrupt)
    levels = np.linspace(0.1, 0.9, n_runs).round(3).tolist()
    hp, seeds = grid([0], noise_level=levels, learning_rate=[1e-3])
    timing, hist = time_grid_epochs(task, spec, hp, seeds, data, epochs)
    return {**timing, "val_psnr_denoised_after": float(np.mean(hist["val_psnr_denoised"]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="1,9", help="comma-separated numbers of vmapped runs")
    parser.add_argument("--noise", default="threefry16,bits16,one_draw,two_draws",
                        help=f"comma-separated noise formulations among {sorted(NOISE)}")
    parser.add_argument("--train-noise", default="threefry16,two_draws",
                        help="the formulations to time training with (default: threefry16,two_draws)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first call (median)")
    parser.add_argument("--train-images", type=int, default=0, help="train on the first N images (0 = all 55,000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--level", type=float, default=0.4, help="noise level of the noise-only timing")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    names = args.noise.split(",")
    train_names = args.train_noise.split(",")
    unknown = [n for n in names + train_names if n not in NOISE]
    if unknown:
        parser.error(f"--noise: unknown {unknown}; choose among {sorted(NOISE)}")
    run_counts = [int(r) for r in args.runs.split(",")]

    data, full = subset_or_exit(parser, args.train_images)
    n_train = data.train_x.shape[0]
    spec = TrainSpec(epochs=1 + args.epochs, batch_size=args.batch_size, optimizer="adam")
    steps, steps_full = spec.steps_per_epoch(n_train), spec.steps_per_epoch(full)
    scale = steps_full / steps
    print(f"machine: {machine()}")
    print(f"autoencoder 784-128-96-128-784, Adam, batch {args.batch_size}, {n_train} training images "
          f"({steps} steps; a full epoch is {steps_full}), validation metrics on {data.val_x.shape[0]} images per epoch")

    results: dict = {"noise_only": {}, "training": {}}
    pixels = n_train * 784
    for name in names:
        r = time_noise(NOISE[name], data.train_x, args.batch_size, args.level, max(args.epochs, 3))
        r["full_epoch_seconds"] = r["epoch_seconds"] * scale
        r["ns_per_pixel"] = 1e9 * r["epoch_seconds"] / pixels
        results["noise_only"][name] = r
        print(f"noise only  {name:9s}: {r['full_epoch_seconds']:6.3f} s per epoch of corruption "
              f"({r['ns_per_pixel']:.2f} ns per pixel)")
    for n_runs in run_counts:
        for name in train_names:
            r = time_training(NOISE[name], data, spec, n_runs, args.epochs)
            r["full_epoch_seconds"] = r["median_epoch_seconds"] * scale
            r["per_run_epoch_seconds"] = r["full_epoch_seconds"] / n_runs
            results["training"][f"{n_runs}_runs/{name}"] = {"runs": n_runs, "noise": name, **r}
            print(f"training {n_runs:2d} run(s) {name:9s}: compile {r['compile_seconds']:5.1f} s | epoch "
                  f"{r['full_epoch_seconds']:6.2f} s [{', '.join(f'{t * scale:.2f}' for t in r['epoch_seconds'])}] | "
                  f"per run {r['per_run_epoch_seconds']:.3f} s")
    write_json(args.json, args=vars(args), n_train=n_train, steps=steps, steps_full=steps_full, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
