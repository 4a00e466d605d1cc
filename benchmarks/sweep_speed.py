"""An L2 sweep as one vmapped program against a Python loop of single runs, and how the cost of
the vmapped sweep grows with the number of runs.

    python benchmarks/sweep_speed.py [--hidden 500 300] [--factors 7] [--seeds 2] [--epochs 2]
                                     [--runs 1 4 16 64]

(a) `--factors x --seeds` runs trained for `--epochs` epochs as ONE program (sweep.train_grid);
(b) the same runs one after the other, each its own call of the (already compiled) single-run
program. Compile time is reported apart; the times compared are steady-state wall times.
Then the per-epoch cost of S vmapped runs for each S in `--runs` (benchmarks/train_speed.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from benchmarks.train_speed import bench  # noqa: E402
from mnist_jax import data, models, regularizers, sweep, tasks, train  # noqa: E402


def timed_grid(task, spec, hp, seeds, splits, trainer) -> float:
    start = time.perf_counter()
    result = sweep.train_grid(task, spec, hp, seeds, splits, chunk_epochs=spec.epochs, trainer=trainer)
    jax.block_until_ready(result.history)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[500, 300])
    parser.add_argument("--factors", type=int, default=7)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--runs", type=int, nargs="*", default=[1, 4, 16, 64])
    args = parser.parse_args(argv)
    splits = data.load_splits()
    hidden = tuple(args.hidden)
    task = tasks.classifier_task(models.MLP(hidden)).with_hooks(regularizers.L2)  # the L2 sweep reads l2
    spec = train.TrainSpec(epochs=args.epochs, batch_size=128)
    factors = np.concatenate([[0.0], np.logspace(-6, -3, args.factors - 1)])
    hp, seeds = sweep.grid(list(range(args.seeds)), learning_rate=[0.1], l2=factors)
    n = len(seeds)
    widths = "-".join(map(str, (784, *hidden, 10)))
    print(f"# L2 sweep of MLP {widths}: {args.factors} factors x {args.seeds} seeds = {n} runs, "
          f"{args.epochs} epochs each, SGD batch 128")
    print(f"# machine: {machine()}")
    print(f"# command: python benchmarks/sweep_speed.py {' '.join(sys.argv[1:])}")

    grid_trainer = sweep.GridTrainer(task, spec)
    timed_grid(task, spec, hp, seeds, splits, grid_trainer)  # compile + warm-up
    vmapped = timed_grid(task, spec, hp, seeds, splits, grid_trainer)
    single_trainer = sweep.GridTrainer(task, spec)
    one = lambda r: ({k: v[r:r + 1] for k, v in hp.items()}, seeds[r:r + 1])  # noqa: E731
    timed_grid(task, spec, *one(0), splits, single_trainer)  # compile + warm-up
    loop = sum(timed_grid(task, spec, *one(r), splits, single_trainer) for r in range(n))
    print("| how | wall (s) | runs per second | run-epochs per second |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| (a) one vmapped program, {n} runs | {vmapped:.2f} | {n / vmapped:.3f} | {n * args.epochs / vmapped:.3f} |")
    print(f"| (b) Python loop of {n} single runs | {loop:.2f} | {n / loop:.3f} | {n * args.epochs / loop:.3f} |")
    print(f"\nratio (b) / (a): {loop / vmapped:.2f}x\n")

    if args.runs:
        print("| runs S vmapped | compile (s) | epoch, S runs (s, median) | per run-epoch (s) | per-run cost vs S=1 |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        base = None
        for s in args.runs:
            r = bench(hidden, s, 3, 128, "sgd", splits)
            base = base or r["per_run_epoch_s"]
            print(f"| {s} | {r['compile_s']:.2f} | {r['epoch_s']:.3f} | {r['per_run_epoch_s']:.4f} | "
                  f"{r['per_run_epoch_s'] / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
