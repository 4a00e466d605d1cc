"""Where one training epoch's time goes on the CPU: XLA's own trace of every operation it ran.

    python -m benchmarks.step_profile --net autoencoder --runs 18
    python -m benchmarks.step_profile --net dense --top 15
    python -m benchmarks.step_profile --net cnn --train-images 12800

Compiles the real training program of a net (`runs` vmapped runs, one epoch per call, the
program the experiments compile) with XLA:CPU's per-operation trace annotations on
(`xla_cpu_enable_xprof_traceme`, a per-program compiler option, so the numbers are those of
the default program), runs one warm-up epoch, then one epoch under `jax.profiler.trace`, and
reads the trace back (`jax.profiler.ProfileData`). Prints:

- the epoch's wall time under the profiler, and the thread time XLA's worker threads spent
  running it: their ratio is how many of the cores the step keeps busy;
- that thread time by kind of operation, each counted for its own time (without what nests in
  it): matrix products (YNNPACK fusions, Eigen dots), elementwise and reduction loops, copies,
  gathers, sorts, loops, waiting for the thread pool, and the executor between operations;
- the `--top` operations by time, with how often each ran and its mean time: the names are
  those of the optimized HLO (`jax.jit(...).lower(...).compile().as_text()`).

Times under the profiler run a few percent slower than without it. CPU only: on another backend
the per-operation events come from the device's own tracer, which this script does not read.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import tempfile
import time

import jax

from benchmarks.common import machine, study_workload, subset_or_exit
from mnist_jax import sweep

TRACE_OPTION = {"xla_cpu_enable_xprof_traceme": True}
WORKER_PREFIX = "tf_XLAEigen"  # XLA:CPU's worker threads, as the trace names them
EXECUTOR = "ThunkExecutor::Execute"  # an executor's run of a program or a loop body: operations nest in it

# (name prefix or part, kind), first match wins
KINDS = [
    (("ynn_fusion", "xnn_fusion", "onednn"), "matrix products (library fusions)"),
    (("dot", "convolution"), "matrix products (Eigen)"),
    (("copy",), "copies"),
    (("gather", "scatter", "dynamic-slice", "dynamic_slice", "dynamic-update-slice"), "gathers and slices"),
    (("sort",), "sorts"),
    (("while", "conditional", "call"), "loops and calls"),
    (("SlinkyThreadPool", "Await"), "waiting for the thread pool"),
    ((EXECUTOR,), "running the program (between its operations)"),
]


def kind_of(name: str) -> str:
    for parts, kind in KINDS:
        if any(name.startswith(p) or p in name for p in parts):
            return kind
    return "elementwise and reduction loops"


class TracedTrainer(sweep.GridTrainer):
    """A GridTrainer whose programs carry XLA:CPU's per-operation trace annotations."""

    def _build(self, fn, args, in_shardings, donate=()):
        start = time.perf_counter()
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=self.run_sharding, donate_argnums=donate)
        return jitted.lower(*args).compile(compiler_options=TRACE_OPTION), time.perf_counter() - start


def profile_epoch(task, spec, hp, seeds, data) -> tuple[float, pathlib.Path]:
    """(wall seconds of the profiled epoch, the trace file) after one warm-up epoch."""
    trainer = TracedTrainer(task, spec)
    hp, seeds = sweep.pad_runs((hp, seeds), trainer.n_devices)[0]
    hp_d, seeds_d, data_d = trainer.place(hp, seeds, data)
    state = jax.block_until_ready(trainer.init(hp_d, seeds_d, data_d))
    program = trainer.epochs_program(1, state, hp_d, seeds_d, data_d)
    state, _ = jax.block_until_ready(program(state, hp_d, seeds_d, data_d))
    folder = pathlib.Path(tempfile.mkdtemp(prefix="step_profile_"))
    with jax.profiler.trace(str(folder)):
        start = time.perf_counter()
        jax.block_until_ready(program(state, hp_d, seeds_d, data_d))
        wall = time.perf_counter() - start
    return wall, next(folder.rglob("*.xplane.pb"))


def self_times(events) -> list[tuple[str, float]]:
    """(name, seconds of its own) of one thread's events: an event's own time leaves out the
    events nested in it (a loop's body, an executor's operations), so nothing counts twice and
    the seconds add up to the time the thread was busy."""
    out, stack = [], []  # stack: [end_ns, index into out] of the open events
    for event in sorted(events, key=lambda e: (e.start_ns, -e.duration_ns)):
        while stack and stack[-1][0] <= event.start_ns:
            stack.pop()
        if stack:
            parent = out[stack[-1][1]]
            out[stack[-1][1]] = (parent[0], parent[1] - event.duration_ns / 1e9)
        out.append((event.name, event.duration_ns / 1e9))
        stack.append([event.end_ns, len(out) - 1])
    return out


def summarize(trace: pathlib.Path) -> tuple[float, dict[str, float], dict[str, list]]:
    """(busy thread seconds, {kind: seconds}, {operation: [seconds, count]}) of XLA's worker
    threads in a trace, each event counted for its own time (`self_times`)."""
    busy, kinds, ops = 0.0, collections.Counter(), collections.defaultdict(lambda: [0.0, 0])
    for plane in jax.profiler.ProfileData.from_file(str(trace)).planes:
        for line in plane.lines:
            if not line.name.startswith(WORKER_PREFIX):
                continue
            timed = self_times(list(line.events))
            for name, seconds in timed:
                kinds[kind_of(name)] += seconds
                ops[name][0] += seconds
                ops[name][1] += 1
            busy += sum(seconds for _, seconds in timed)
    if not ops:
        raise RuntimeError(f"no events of XLA:CPU's worker threads ({WORKER_PREFIX}*) in {trace}: this jaxlib "
                           "names its threads, or traces its operations, differently from jax 0.10")
    return busy, dict(kinds), dict(ops)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=["dense", "autoencoder", "cnn"], default="autoencoder")
    parser.add_argument("--runs", type=int, default=1, help="runs vmapped in the program")
    parser.add_argument("--top", type=int, default=12, help="operations listed by time")
    parser.add_argument("--train-images", type=int, default=0, help="epochs of the first N images (0 = all 55,000)")
    args = parser.parse_args(argv)
    if jax.default_backend() != "cpu":
        parser.error(f"this reads XLA:CPU's trace; the default backend here is {jax.default_backend()}")
    data, _ = subset_or_exit(parser, args.train_images)
    task, spec, hp, seeds = study_workload(args.net, args.runs)
    wall, trace = profile_epoch(task, spec, hp, seeds, data)
    busy, kinds, ops = summarize(trace)
    total = sum(kinds.values())
    print(f"# machine: {machine()}")
    print(f"# command: python -m benchmarks.step_profile {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"# {args.net}, {args.runs} run(s), {spec.steps_per_epoch(data.train_x.shape[0])} steps: epoch {wall:.3f} s "
          f"under the profiler; XLA's worker threads ran it for {busy:.3f} s of thread time "
          f"({busy / wall:.2f} cores busy on average)")
    print("| kind of operation | thread time (s) | share |")
    print("| --- | ---: | ---: |")
    for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {seconds:.3f} | {seconds / total:.0%} |")
    print("\n| operation (optimized HLO) | kind | thread time (s) | runs | mean (us) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, (seconds, count) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"| {name} | {kind_of(name)} | {seconds:.3f} | {count} | {seconds / count * 1e6:.1f} |")


if __name__ == "__main__":
    main()
