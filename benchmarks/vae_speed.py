"""Seconds per run-epoch of the convolutional VAE's training step, per convolution formulation,
one run per program and several seeds vmapped in one.

    python -m benchmarks.vae_speed                                   # lax, fused, im2col; 1 and 3 runs
    python -m benchmarks.vae_speed --impls fused --runs 1 --steps 8 --repeats 1     # a quick look
    python -m benchmarks.vae_speed --json runs/vae_speed.json

Each case trains the convolutional VAE (Conv 32/2 -> Conv 64/2 -> Dense 256 -> latent 32 and back
through ConvTranspose 32 x2, ConvTranspose 1 x2; Adam, batch 128, dynamically binarized MNIST)
with the real compiled program of `mnist_jax.sweep.GridTrainer` (`tasks.vae_task`, its
per-epoch evaluation left out: this times the training step). One call is one epoch of
`--steps` minibatch steps as a `lax.scan` over the first steps x batch training images. Every
case is compiled (timed apart) and called once to warm up; then `--repeats` rounds call each case
once in turn, blocked until ready, so a change of the machine's load falls on every case alike.
A case's median call is scaled linearly to a run-epoch of 469 steps (60,000 images at batch 128;
the holdout protocol's 55,000 take 430) and divided by the number of runs. "vmapped / single" is the cost per
run-epoch of the vmapped program over the one-run program's: above 1, the model's
`vmap_slow_on` should name the backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax

from benchmarks.common import grid_epoch, machine, subset_or_exit, write_json
from mnist_jax import kernels, models, tasks
from mnist_jax.sweep import grid
from mnist_jax.train import TrainSpec

EPOCH_STEPS = 469  # 60,000 images at batch 128


def conv_vae_task(impl: str, latent: int):
    """The convolutional VAE's task with formulation `impl`, without its per-epoch evaluation."""
    task = tasks.vae_task(models.VAE(latent=latent, conv=True, conv_impl=impl))
    return dataclasses.replace(task, evaluate=lambda params, data, hp, keys: {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", default=",".join(kernels.CONV_IMPLS), help="comma-separated conv formulations")
    parser.add_argument("--runs", default="1,3", help="comma-separated numbers of seeds vmapped in one program")
    parser.add_argument("--steps", type=int, default=40, help="minibatch steps per timed call (scaled to 469)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first (median)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")

    data, _ = subset_or_exit(parser, args.steps * args.batch_size)
    spec = TrainSpec(epochs=1 + args.repeats, batch_size=args.batch_size, optimizer="adam")
    runs = [int(r) for r in args.runs.split(",")]
    print(f"machine: {machine()}")
    print(f"convolutional VAE, latent {args.latent}, batch {args.batch_size}, adam; {args.steps} steps per call, "
          f"median of {args.repeats}, scaled to {EPOCH_STEPS} steps; training step only (no evaluation)")
    print("| conv_impl | runs | compile s | call s (median) | s per run-epoch | vmapped / single |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    cases = {}
    for impl in args.impls.split(","):
        task = conv_vae_task(impl, args.latent)
        for n in runs:
            hp, seeds = grid(list(range(n)), learning_rate=[1e-3])
            compile_s, call = grid_epoch(task, spec, hp, seeds, data)
            start = time.perf_counter()
            call()
            cases[impl, n] = {"call": call, "compile_seconds": compile_s, "first_call_seconds": time.perf_counter() - start,
                              "epoch_seconds": []}
    for _ in range(args.repeats):
        for case in cases.values():
            start = time.perf_counter()
            case["call"]()
            case["epoch_seconds"].append(time.perf_counter() - start)
    results = {}
    for (impl, n), case in cases.items():
        case.pop("call")
        median = statistics.median(case["epoch_seconds"])
        per_run_epoch = median * EPOCH_STEPS / args.steps / n
        single = results.get(f"{impl}/1", {}).get("run_epoch_seconds")
        ratio = per_run_epoch / single if single and n > 1 else None
        results[f"{impl}/{n}"] = {**case, "impl": impl, "runs": n, "median_epoch_seconds": median,
                                  "run_epoch_seconds": per_run_epoch, "vmapped_over_single": ratio}
        print(f"| {impl} | {n} | {case['compile_seconds']:.1f} | {median:.2f} "
              f"[{', '.join(f'{t:.2f}' for t in case['epoch_seconds'])}] | {per_run_epoch:.1f} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} |")
    default = kernels.default_strided_conv_impl()
    print(f"default conv_impl of the VAE on {jax.default_backend()}: {default}; "
          f"vmap_slow_on of the convolutional VAE: {models.VAE(conv=True).vmap_slow_on}")
    write_json(args.json, args=vars(args), epoch_steps=EPOCH_STEPS, default_conv_impl=default, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
