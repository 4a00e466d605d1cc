"""Steady-state epoch time of each convolution formulation inside the whole-run `lax.scan`.

    python -m benchmarks.cnn_speed                              # study CNN, every formulation, full epochs
    python -m benchmarks.cnn_speed --impls lax --train-images 6400   # a slow formulation on a subset
    python -m benchmarks.cnn_speed --json runs/cnn_speed.json

Each formulation trains the study's final CNN (batch 128, Adam; or `--model best`) with the
real compiled program of `mnist_jax.sweep.GridTrainer`: one call = one epoch of minibatch
steps as a `lax.scan` plus the validation and test evaluation. The first call (compile) is
timed apart; then `--epochs` more calls are timed with `block_until_ready`, and their median
is the steady-state epoch time. With `--train-images N` below the 55,000 training images the
epoch covers N images, and the time per full epoch is extrapolated linearly in the number of
steps (evaluation included in what is scaled, so the estimate errs high). The study MLP
(784-64-64-10, same batch and optimizer) is timed alongside for comparison (`--no-mlp` skips it).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.common import machine, subset_or_exit, time_grid_epochs, write_json
from mnist_jax import data as data_lib
from mnist_jax import kernels, models, tasks
from mnist_jax.sweep import grid
from mnist_jax.train import TrainSpec

MODELS = {
    "study": dict(filters=(32, 32), pool=(True, False), dense=32),
    "best": dict(filters=(32, 64), pool=(True, True), padding="SAME", dense=128, dense_dropout=True),
}


def time_epochs(model, data: data_lib.Splits, spec: TrainSpec, hp: dict, n_runs: int, epochs: int) -> dict:
    """Compile time and per-epoch times of `epochs` steady-state epochs of `n_runs` vmapped runs."""
    hp_grid, seeds = grid(list(range(n_runs)), **{k: [v] for k, v in hp.items()})
    timing, hist = time_grid_epochs(tasks.classifier_task(model), spec, hp_grid, seeds, data, epochs)
    return {**timing, "val_accuracy_after": float(np.mean(np.asarray(hist["val_accuracy"])))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", default=",".join(kernels.CONV_IMPLS), help="comma-separated conv formulations")
    parser.add_argument("--model", choices=sorted(MODELS), default="study")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the first call (median)")
    parser.add_argument("--train-images", type=int, default=0, help="train on the first N images (0 = all 55,000)")
    parser.add_argument("--runs", type=int, default=1, help="seeds vmapped in one program")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--no-mlp", action="store_true", help="skip the MLP reference")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    data, full = subset_or_exit(parser, args.train_images)
    n_train = data.train_x.shape[0]
    spec = TrainSpec(epochs=1 + args.epochs, batch_size=args.batch_size, optimizer=args.optimizer)
    steps, steps_full = spec.steps_per_epoch(n_train), spec.steps_per_epoch(full)
    print(f"machine: {machine()}")
    print(f"model {args.model}, batch {args.batch_size}, {args.optimizer}, {args.runs} run(s) vmapped, "
          f"{n_train} training images ({steps} steps; a full epoch is {steps_full}), "
          f"evaluation of {data.val_x.shape[0]} val + {data.test_x.shape[0]} test images per epoch")

    candidates = [(impl, models.CNN(**MODELS[args.model], conv_impl=impl)) for impl in args.impls.split(",")]
    if not args.no_mlp:
        candidates.append(("mlp", models.MLP((64, 64))))
    results = {}
    for name, model in candidates:
        hp = {"learning_rate": 1e-3, **({"dropout_rate": 0.5} if isinstance(model, models.CNN) else {})}
        r = time_epochs(model, data, spec, hp, args.runs, args.epochs)
        r["full_epoch_seconds"] = r["median_epoch_seconds"] * steps_full / steps
        r["step_ms"] = 1000 * r["median_epoch_seconds"] / steps
        results[name] = r
        label = "" if n_train == full else f" (extrapolated from {steps} steps)"
        print(f"{name:7s} compile {r['compile_seconds']:6.1f} s | epoch {r['median_epoch_seconds']:7.2f} s median of "
              f"{args.epochs} [{', '.join(f'{t:.2f}' for t in r['epoch_seconds'])}] | {r['step_ms']:6.1f} ms/step | "
              f"full epoch {r['full_epoch_seconds']:7.2f} s{label} | per run {r['full_epoch_seconds'] / args.runs:.2f} s")
    default = kernels.default_conv_impl()
    if default not in results:
        verdict = "not measured in this call"
    else:
        verdict = "the fastest measured" if default_impl_ok(results) else "NOT the fastest measured here"
    print(f"default conv_impl on {jax.default_backend()}: {default} ({verdict})")
    write_json(args.json, args=vars(args), n_train=n_train, steps=steps, steps_full=steps_full, default_conv_impl=default,
               default_is_fastest=default_impl_ok(results), results=results)
    return 0


def default_impl_ok(results: dict) -> bool:
    """True when the backend's default formulation was the fastest CNN measured."""
    cnn = {k: v["full_epoch_seconds"] for k, v in results.items() if k != "mlp"}
    return bool(cnn) and min(cnn, key=cnn.get) == kernels.default_conv_impl()


if __name__ == "__main__":
    raise SystemExit(main())
