"""How close the dense nets' CPU epochs are to the time of their matrix products alone.

    python -m benchmarks.matmul_floor                      # the dense classifier and the autoencoder
    python -m benchmarks.matmul_floor --nets dense --repeats 9

For each net, one epoch's matrix products and nothing else: every training step's forward
products, weight gradients and input gradients (the gradient of a linear chain of the net's
layers: no bias, activation, loss or optimizer), `steps` of them in a `lax.scan`, plus the
forward products of the images evaluated after the epoch. Timed three ways on the same shapes:

- `xla`: one compiled program, as XLA:CPU builds the training step's products by default
  (YNNPACK for the forward products, Eigen for some gradients);
- `xla, YNNPACK off`: the same program compiled with `xla_cpu_experimental_ynn_fusion_type` empty
  (every product to Eigen), a per-program compiler option;
- `numpy`: the same products with `numpy.matmul` (its BLAS, both cores) from a Python loop.

Beside them, the real training epoch of the same net (1 run, the program the experiments
compile), so the share of the epoch that is matrix products, and the floor any formulation that
keeps XLA's engines can reach, are measured on this machine rather than estimated from its peak
arithmetic. The four take turns, call by call (a change in the machine's load touches them
alike); every time is the median of `--repeats` calls after one warm-up call, each blocked until
ready. The products run with a step size of 0 passed at run time, so the weights stay put and
every update is still computed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import grid_epoch, machine, study_workload, subset_or_exit

# net (`benchmarks.common.study_workload`, which gives its batch size): widths, images evaluated after each epoch
NETS = {
    "dense": dict(widths=(784, 64, 64, 10), eval_images=15_000,
                  what="dense 784-64-64-10 as experiments.mlp trains it (SGD, L2 hook; val + test evaluated)"),
    "autoencoder": dict(widths=(784, 128, 96, 128, 784), eval_images=5_000,
                        what="denoising autoencoder 784-128-96-128-784 (Adam, fresh noise each step; val evaluated)"),
}
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int, pause: float = 0.5) -> dict[str, float]:
    """Median seconds of each call over `repeats` rounds, the calls taking turns within a round
    (so a change in the machine's load touches them alike), after one warm-up round. Each call
    starts after a `pause`: a BLAS's worker threads keep spinning for a while after a product
    (OpenBLAS's do, on both cores), which had doubled the time of the training epoch after it."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(repeats + 1):
        for name, call in calls.items():
            time.sleep(pause)
            start = time.perf_counter()
            call()
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def epoch_flops(widths, batch: int, steps: int, eval_images: int) -> float:
    """Floating-point operations of an epoch's products: per step the forward products, every
    weight gradient and the input gradients above the first layer; then the evaluation's forward
    products (a multiply-add counts 2)."""
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    forward = sum(2 * a * b for a, b in pairs)
    step = batch * (2 * forward + sum(2 * a * b for a, b in pairs[1:]))
    return steps * step + eval_images * forward


def peak_gemm(size: int = 2048) -> tuple[Callable[[], object], float]:
    """A large square float32 product compiled by XLA, and its operations: what this machine's
    cores sustain on a product big enough to hide every overhead."""
    a = jnp.ones((size, size), jnp.float32)
    compiled = jax.jit(jnp.matmul).lower(a, a).compile()
    return (lambda: jax.block_until_ready(compiled(a, a))), 2.0 * size**3


def chain_grads(ws, x, t):
    """Gradient of sum(t * x @ w1 @ ... @ wL) with respect to every w: the training step's products."""
    def out(ws):
        h = x
        for w in ws:
            h = h @ w
        return jnp.sum(h * t)
    return jax.grad(out)(ws)


def numpy_grads(ws, x, t):
    """`chain_grads` with numpy: the forward products, then each layer's weight gradient and
    (below the top layer) input gradient."""
    acts, h = [], x
    for w in ws:
        acts.append(h)
        h = h @ w
    grads, g = [None] * len(ws), t
    for i in reversed(range(len(ws))):
        grads[i] = acts[i].T @ g
        if i:
            g = g @ ws[i].T
    return grads


def xla_epoch(widths, batch: int, steps: int, eval_images: int, options: dict | None, lr: float = 0.0):
    """A compiled epoch of products alone, and its arguments."""
    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.normal(0, 0.05, (a, b)), jnp.float32) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    x = jnp.asarray(rng.random((batch, widths[0])), jnp.float32)
    t = jnp.asarray(rng.normal(0, 1, (batch, widths[-1])), jnp.float32)
    ev = jnp.asarray(rng.random((eval_images, widths[0])), jnp.float32)

    def epoch(ws, x, t, ev, lr):
        def step(ws, _):
            grads = chain_grads(ws, x, t)
            return [w - lr * g for w, g in zip(ws, grads, strict=True)], None
        ws, _ = jax.lax.scan(step, ws, None, length=steps)
        h = ev
        for w in ws:
            h = h @ w
        return ws, jnp.sum(h)

    lr = jnp.float32(lr)  # an argument, so a step size of 0 still computes every update
    compiled = jax.jit(epoch).lower(ws, x, t, ev, lr).compile(compiler_options=options)
    return lambda: jax.block_until_ready(compiled(ws, x, t, ev, lr))


def numpy_epoch(widths, batch: int, steps: int, eval_images: int, lr: float = 0.0):
    rng = np.random.default_rng(0)
    ws = [rng.normal(0, 0.05, (a, b)).astype(np.float32) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    x = rng.random((batch, widths[0])).astype(np.float32)
    t = rng.normal(0, 1, (batch, widths[-1])).astype(np.float32)
    ev = rng.random((eval_images, widths[0])).astype(np.float32)

    def epoch():
        for _ in range(steps):
            for w, g in zip(ws, numpy_grads(ws, x, t), strict=True):
                w -= lr * g
        h = ev
        for w in ws:
            h = h @ w
        return ws, np.sum(h)
    return epoch


def training_epoch(workload, splits) -> Callable[[], object]:
    """One more epoch of the real training program per call (up to its spec's epochs)."""
    return grid_epoch(*workload, splits)[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["dense", "autoencoder"])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median), after one warm-up")
    parser.add_argument("--train-images", type=int, default=0, help="epochs of the first N images (0 = all 55,000)")
    args = parser.parse_args(argv)
    splits, _ = subset_or_exit(parser, args.train_images)
    n_train = splits.train_x.shape[0]
    print(f"# machine: {machine()}")
    print(f"# command: python -m benchmarks.matmul_floor {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    peak_call, peak_ops = peak_gemm()
    peak = peak_ops / interleaved_medians({"peak": peak_call}, args.repeats)["peak"] / 1e9
    print(f"# a 2048 x 2048 x 2048 product compiled by XLA: {peak:.0f} GFLOP/s")
    print("| net | what | epoch (s, median) | share of the training epoch | products, GFLOP/s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name in args.nets:
        net, workload = NETS[name], study_workload(name, 1, epochs=args.repeats + 1)
        batch = workload[1].batch_size
        steps = workload[1].steps_per_epoch(n_train)
        shape = (net["widths"], batch, steps, net["eval_images"])
        calls = {f"training epoch ({steps} steps)": training_epoch(workload, splits),
                 "products alone, xla": xla_epoch(*shape, None),
                 "products alone, xla, YNNPACK off": xla_epoch(*shape, NO_YNN),
                 "products alone, numpy": numpy_epoch(*shape)}
        medians = interleaved_medians(calls, args.repeats)
        full = medians[next(iter(calls))]
        flops = epoch_flops(*shape)
        print(f"# {name}: {net['what']}, batch {batch}, {n_train:,} training images; "
              f"{flops / 1e9:.1f} GFLOP of products per epoch, {flops / 1e9 / peak:.3f} s at the large product's rate")
        for what, seconds in medians.items():
            print(f"| {name} | {what} | {seconds:.3f} | {seconds / full:.2f} | {flops / seconds / 1e9:.0f} |", flush=True)


if __name__ == "__main__":
    main()
