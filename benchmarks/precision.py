"""Steady-state epoch time of variance_sources' MLP computing in float32 against bfloat16.

    python benchmarks/precision.py [--runs 10] [--repeats 5] [--dtypes float32 bfloat16] [--train-images 0]

The task is the experiment's own (`configs/variance_sources.py`: 784-64-64-10, SGD 0.1, batch 128,
validation and test evaluated every epoch), built for each compute dtype (params and optimizer
state stay float32). Each row: `--runs` runs vmapped in one whole-run program, its compile time,
the median of `--repeats` one-epoch calls after one warm-up call (each blocked until ready), the
cost per run-epoch and its ratio to the first dtype's. Run it on a quiet machine: the header
prints the load average.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine, subset_or_exit, time_grid_epochs  # noqa: E402
from mnist_jax import precision, sweep, tasks, training  # noqa: E402
from mnist_jax.config import REPO_ROOT, load_config_file  # noqa: E402


def bench(config, compute_dtype: str, runs: int, repeats: int, splits) -> dict:
    """Compile time and median steady epoch of `runs` vmapped runs of the config's classifier in
    `compute_dtype`, and the mean final test accuracy of the timed epochs' last one."""
    _, task = tasks.classifier_from_config(config, compute_dtype=compute_dtype)
    spec = training.train_spec(config)  # config.epochs: the warm-up and timed calls
    hp, seeds = sweep.grid(list(range(runs)), **training.hparams(config, task))
    timing, hist = time_grid_epochs(task, spec, hp, seeds, splits, repeats)
    epoch = timing["median_epoch_seconds"]
    return {"compile_s": timing["compile_seconds"], "epoch_s": epoch, "per_run_epoch_s": epoch / runs,
            "test_accuracy": float(hist["test_accuracy"].mean())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="runs vmapped in one program (the bfloat16 arm's size)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per dtype (after one warm-up)")
    parser.add_argument("--dtypes", nargs="+", default=list(precision.COMPUTE_DTYPES), choices=precision.COMPUTE_DTYPES)
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden widths (default: the config's)")
    parser.add_argument("--train-images", type=int, default=0, help="first N training images (0 = all)")
    args = parser.parse_args(argv)
    config = load_config_file(REPO_ROOT / "configs/variance_sources.py")
    config.epochs = args.repeats + 1
    if args.hidden:
        config.model.hidden = tuple(args.hidden)
    splits, _ = subset_or_exit(parser, args.train_images)
    widths = "-".join(map(str, (784, *config.model.hidden, 10)))
    print(f"# variance_sources' MLP {widths}, {config.optimizer} lr {config.learning_rate:g}, batch {config.batch_size}, "
          f"{splits.train_x.shape[0]:,} training images per epoch, validation + test evaluated every epoch; "
          f"{args.runs} runs vmapped; matmul precision {jax_precision()}")
    print(f"# machine: {machine()}")
    print(f"# command: python benchmarks/precision.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"| compute dtype | compile (s) | epoch, {args.runs} runs (s, median of {args.repeats}) | per run-epoch (s) | "
          "vs the first | mean test accuracy after the last epoch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    out, first = {}, None
    for dtype in args.dtypes:
        r = bench(config, dtype, args.runs, args.repeats, splits)
        first = first or r["per_run_epoch_s"]
        out[dtype] = r
        print(f"| {dtype} | {r['compile_s']:.2f} | {r['epoch_s']:.3f} | {r['per_run_epoch_s']:.4f} | "
              f"{r['per_run_epoch_s'] / first:.2f}x | {100 * r['test_accuracy']:.2f} % |", flush=True)
    return {"seconds_per_epoch": {d: r["epoch_s"] for d, r in out.items()}, "rows": out}


def jax_precision() -> str:
    """JAX's default matmul precision in this process ('default' when unset)."""
    import jax

    return jax.config.jax_default_matmul_precision or "default"


if __name__ == "__main__":
    main()
