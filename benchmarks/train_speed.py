"""Compile time and steady-state epoch time of the study's MLP, 1 run and S runs vmapped.

    python benchmarks/train_speed.py [--runs 1 4 16 64] [--epochs 5] [--hidden 64 64] [--batch 128]

Each row: S runs of the whole-run program (one epoch per call, inside the epoch/batch scans,
evaluation on validation and test included), the compile time of that program, the median
epoch time over `--epochs` calls after one warm-up call, and the cost per run-epoch. Run it on
a quiet machine: the numbers are medians, not best cases.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from benchmarks.common import machine, time_grid_epochs  # noqa: E402
from mnist_jax import data, models, regularizers, sweep, tasks, train  # noqa: E402


def bench(hidden: tuple[int, ...], runs: int, epochs: int, batch: int, optimizer: str, splits) -> dict:
    # as experiments.mlp trains it: the L2 hook with a traced factor (0 for the study's baseline)
    task = tasks.classifier_task(models.MLP(hidden)).with_hooks(regularizers.L2)
    spec = train.TrainSpec(epochs=epochs + 1, batch_size=batch, optimizer=optimizer)
    hp, seeds = sweep.grid(list(range(runs)), learning_rate=[0.1], l2=[0.0])
    timing, _ = time_grid_epochs(task, spec, hp, seeds, splits, epochs)
    epoch = timing["median_epoch_seconds"]
    return {"runs": runs, "compile_s": timing["compile_seconds"], "epoch_s": epoch, "per_run_epoch_s": epoch / runs}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per row (after one warm-up)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--optimizer", default="sgd")
    args = parser.parse_args(argv)
    splits = data.load_splits()
    widths = "-".join(map(str, (784, *args.hidden, 10)))
    print(f"# MLP {widths}, batch {args.batch}, {args.optimizer}, 55,000 training images per epoch, "
          f"validation + test evaluated every epoch")
    print(f"# machine: {machine()}")
    print(f"# command: python benchmarks/train_speed.py {' '.join(sys.argv[1:])}")
    print("| runs S | compile (s) | epoch, S runs (s, median) | per run-epoch (s) | per-run cost vs S=1 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    base = None
    for s in args.runs:
        r = bench(tuple(args.hidden), s, args.epochs, args.batch, args.optimizer, splits)
        base = base or r["per_run_epoch_s"]
        print(f"| {s} | {r['compile_s']:.2f} | {r['epoch_s']:.3f} | {r['per_run_epoch_s']:.4f} | "
              f"{r['per_run_epoch_s'] / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
