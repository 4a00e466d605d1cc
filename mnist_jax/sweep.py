"""Many runs as one program: `jax.vmap` of whole runs, the run axis sharded over devices.

A grid of R runs (seeds x continuous hyperparameters, flattened) is padded to a multiple of
the device count, placed with a `NamedSharding` over a mesh with one axis, "runs", and trained
by one compiled program; the padding is dropped from every result. The same call runs on one
CPU, on `XLA_FLAGS=--xla_force_host_platform_device_count=N`, or on several GPUs. A grid too
large for memory is trained `run_chunk` runs at a time. In a multi-process run
(`mnist_jax.distributed`) the mesh holds every process's devices: inputs become global arrays
built from the same host data in every process, and results are gathered into every process.

The driver calls the compiled program one chunk of epochs at a time, so progress, checkpoints
and resume live between chunks, never inside compiled code.

Compiling ahead: `GridTrainer.precompile` starts compiling a training's programs in a background
thread (from the grid's shapes alone), so an experiment that trains several grids one after the
other compiles the next ones while the current one trains, or several at once; `train_grid` then
takes the finished program, or waits for it. The programs are the ones `train_grid` would compile
itself, so the numbers are the same bit for bit (tested). `MNIST_JAX_COMPILE_AHEAD` sets the
number of background compile threads (0: off, every program compiled when first needed).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mnist_jax import distributed, rehearsal
from mnist_jax.checkpoint import Checkpointer, CheckpointError
from mnist_jax.data import Splits
from mnist_jax.train import STREAMS, RunState, Task, TrainSpec, check_hparams, init_state, train_epochs


def grid(seeds: list[int] | np.ndarray, **values: list[float]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The full grid values x seeds, flattened seed-fastest: (hp {name: (R,)}, seeds (R,)).

    `grid([0, 1], l2=[0, 1e-4])` gives runs (l2=0, seed 0), (0, 1), (1e-4, 0), (1e-4, 1).
    """
    names = list(values)
    rows = list(itertools.product(*(values[n] for n in names), seeds))
    hp = {n: np.array([r[i] for r in rows], np.float32) for i, n in enumerate(names)}
    return hp, np.array([r[-1] for r in rows], np.int32)


def stream_grid(seeds: list[int] | np.ndarray, **streams: list[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Per-run seeds of every stream (each (R,), int32): a stream takes `seeds` (the run seed, so
    today's numbers) unless given here; `one_bit=` and `bootstrap=` add those perturbations.

    `stream_grid([0, 0, 0], order=[1, 2, 3])`: three runs with the same initial weights (and every
    other draw), each with its own batch order.
    """
    base = np.asarray(seeds, np.int32)
    out = {s: base for s in STREAMS}
    out.update({k: np.broadcast_to(np.asarray(v, np.int32), base.shape).copy() for k, v in streams.items()})
    return out


def num_runs(seeds: Any) -> int:
    """How many runs a seeds array (R,) or a dict of them {stream: (R,)} holds."""
    return len(jax.tree_util.tree_leaves(seeds)[0])


def _runs_shape(seeds: Any) -> tuple:
    """A hashable description of the seeds' structure and shapes (one compiled program each)."""
    leaves, treedef = jax.tree_util.tree_flatten(seeds)
    return str(treedef), tuple(np.shape(a) for a in leaves)


def default_run_chunk(task: Task, backend: str | None = None) -> int | None:
    """How many runs of `task` share one program when nothing else says: one at a time on the
    backends where the task's vmapped step is slower per run (`Task.vmap_slow_on`), else all at
    once (None). The one place the execution policy is decided."""
    return 1 if (backend or jax.default_backend()) in task.vmap_slow_on else None


AHEAD_ENV = "MNIST_JAX_COMPILE_AHEAD"
MAX_AHEAD_THREADS = 4
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def ahead_threads(environ: dict | None = None) -> int:
    """Background compile threads: `MNIST_JAX_COMPILE_AHEAD` (0 turns compiling ahead off), else
    one fewer than this machine's CPU cores, at least 1 and at most `MAX_AHEAD_THREADS`. Off in a
    multi-process run (every process would compile in its own order)."""
    environ = os.environ if environ is None else environ
    value = environ.get(AHEAD_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{AHEAD_ENV}={value!r}: expected a whole number of threads (0 turns it off)") from None
        if threads < 0:
            raise ValueError(f"{AHEAD_ENV}={value!r}: expected 0 or more threads")
    else:
        threads = min(MAX_AHEAD_THREADS, max(1, (os.cpu_count() or 1) - 1))
    return threads if jax.process_count() == 1 else 0


def _ahead_pool() -> concurrent.futures.ThreadPoolExecutor | None:
    """The process's background compile threads (None when compiling ahead is off)."""
    global _pool
    threads = ahead_threads()
    if threads == 0:
        return None
    with _pool_lock:
        if _pool is None or _pool._max_workers != threads:
            _pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="mnist_jax-compile-ahead")
        return _pool


def cancel_ahead() -> None:
    """Drop the background compilations that have not started (those running finish): the end of
    an experiment, or an error, leaves no compile queued for a later one."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None


def runs_per_call(n_runs: int, run_chunk: int | None, n_devices: int) -> int:
    """Runs one call of a training program trains: `run_chunk` (all `n_runs` when None), at most
    n_runs, rounded up to a multiple of the device count (the padding repeats the last run)."""
    per_call = min(run_chunk or n_runs, n_runs)
    return -(-per_call // n_devices) * n_devices


def chunk_length(done: int, epochs: int, chunk_epochs: int, checkpoint_every: int | None = None) -> int:
    """Epochs the next call trains after `done`: `chunk_epochs`, cut at the last epoch and, when
    checkpointing every `checkpoint_every` epochs, at the next checkpoint epoch (so a checkpoint
    is never skipped because a chunk ran past its epoch; chunking never changes the numbers)."""
    n = min(chunk_epochs, epochs - done)
    return min(n, checkpoint_every - done % checkpoint_every) if checkpoint_every else n


def epoch_chunks(epochs: int, chunk_epochs: int, checkpoint_every: int | None = None) -> list[int]:
    """The distinct numbers of epochs one call trains (`chunk_length`) from epoch 0 to `epochs`;
    a resume starts at a checkpoint epoch, where the same lengths repeat."""
    sizes, done = set(), 0
    while done < epochs:
        n = chunk_length(done, epochs, chunk_epochs, checkpoint_every)
        sizes.add(n)
        done += n
    return sorted(sizes)


def runs_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh ("runs",) over `devices` (all of `jax.devices()` by default)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), ("runs",))


def pad_runs(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad every leaf's run axis to a multiple of `multiple` by repeating the last run."""
    n = len(jax.tree_util.tree_leaves(tree)[0])
    pad = -n % multiple
    if pad:
        tree = jax.tree_util.tree_map(lambda a: np.concatenate([a, np.repeat(a[-1:], pad, 0)]), tree)
    return tree, n


@dataclasses.dataclass
class SweepResult:
    """Final states (leading axis R), per-epoch history {metric: (R, epochs)} and timing."""

    state: RunState
    history: dict[str, np.ndarray]
    timing: dict[str, float]
    resumed_from_epoch: int | None = None


class GridTrainer:
    """Compiled, vmapped and sharded programs for one (task, spec), reused across calls."""

    def __init__(self, task: Task, spec: TrainSpec, mesh: Mesh | None = None):
        self.task, self.spec = task, spec
        self.mesh = mesh or runs_mesh()
        self.run_sharding = NamedSharding(self.mesh, PartitionSpec("runs"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._compiled: dict = {}
        self._ahead: dict = {}  # key -> Future of (compiled program, compile seconds)
        self.compile_seconds = 0.0  # compiling this trainer's programs, here or in the background
        self.compile_wait_seconds = 0.0  # how long training waited for them

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    def _init_fn(self, n_train: int) -> Callable:
        return jax.vmap(lambda hp, seed: init_state(self.task, self.spec, hp, seed, n_train))

    def _epochs_fn(self, n_epochs: int) -> Callable:
        fn = lambda state, hp, seed, data: train_epochs(self.task, self.spec, n_epochs, state, hp, seed, data)  # noqa: E731
        return jax.vmap(fn, in_axes=(0, 0, 0, None))

    def _build(self, fn, args, in_shardings, donate=()) -> tuple[Any, float]:
        """(compiled program, seconds): `args` may be arrays or `jax.ShapeDtypeStruct`s. While
        `rehearsal.rehearsing()`, the program is a stand-in: traced, not compiled."""
        start = time.perf_counter()
        # Explicit shardings: every run-axis input and output is split over "runs", the data
        # replicated, so the state a program returns is exactly what the next call takes.
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=self.run_sharding, donate_argnums=donate)
        if rehearsal.active():
            return rehearsal.Program(jitted), 0.0
        return jitted.lower(*args).compile(), time.perf_counter() - start

    def _compile(self, key, fn, args, in_shardings, donate=()) -> Any:
        key = (*key, rehearsal.active())  # a stand-in never serves a real call, nor the other way round
        if key not in self._compiled:
            start = time.perf_counter()
            ahead = self._ahead.pop(key, None)
            # Still queued (behind other programs), or cancelled with its experiment: built here and
            # now; the caller only ever waits for a compile that is already running.
            if ahead is not None and not ahead.cancel():
                self._compiled[key], seconds = ahead.result()
            else:
                self._compiled[key], seconds = self._build(fn, args, in_shardings, donate)
            self.compile_seconds += seconds
            self.compile_wait_seconds += time.perf_counter() - start
        return self._compiled[key]

    def _compile_ahead(self, key, fn, args, in_shardings, donate=()) -> None:
        pool = None if rehearsal.active() else _ahead_pool()
        key = (*key, False)
        if pool is not None and key not in self._compiled and key not in self._ahead:
            self._ahead[key] = pool.submit(self._build, fn, args, in_shardings, donate)

    def precompile(self, hp: dict, seeds: Any, data: Splits, *, run_chunk: int | None = None,
                   chunk_epochs: int = 1, init: bool = True, checkpoint_every: int | None = None) -> GridTrainer:
        """Start compiling, in background threads, the programs `train_grid(..., trainer=self)`
        will call for this grid (the same `run_chunk`, `chunk_epochs` and, when it checkpoints,
        `checkpoint_every`; `init=False`: not the init program); returns self.

        Only shapes are read: hp and seeds may hold `jax.ShapeDtypeStruct`s (hyperparameters that
        another training will produce). Nothing happens when compiling ahead is off
        (`ahead_threads`). A failed compile raises where `train_grid` takes the program."""
        check_hparams(self.task, self.spec, hp)
        if _ahead_pool() is None:
            return self
        per_call = runs_per_call(num_runs(seeds), run_chunk, self.n_devices)

        def like(a, dtype, sharding):
            return jax.ShapeDtypeStruct((per_call, *np.shape(a)[1:]), dtype, sharding=sharding)

        hp_a = {k: like(v, np.float32, self.run_sharding) for k, v in hp.items()}
        seeds_a = jax.tree_util.tree_map(lambda a: like(a, np.int32, self.run_sharding), seeds)
        data_a = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=self.replicated),
                                        data)
        init_fn = self._init_fn(data.train_x.shape[0])
        if init:
            self._compile_ahead(("init", _runs_shape(seeds_a)), init_fn, (hp_a, seeds_a),
                                (self.run_sharding, self.run_sharding))
        state = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.run_sharding, weak_type=a.weak_type),
            jax.eval_shape(init_fn, hp_a, seeds_a))
        for n in epoch_chunks(self.spec.epochs, chunk_epochs, checkpoint_every):
            self._compile_ahead(("epochs", n, _runs_shape(seeds_a)), self._epochs_fn(n), (state, hp_a, seeds_a, data_a),
                                (self.run_sharding, self.run_sharding, self.run_sharding, self.replicated), donate=(0,))
        return self

    def place(self, hp: dict, seeds: Any, data: Splits):
        """Put run-axis inputs sharded over "runs" and the data replicated on the mesh."""
        if not self.run_sharding.is_fully_addressable:  # several processes: global arrays from host data
            place = lambda a, dtype, s: distributed.global_array(np.asarray(a, dtype), s)  # noqa: E731
            hp = {k: place(v, np.float32, self.run_sharding) for k, v in hp.items()}
            seeds = jax.tree_util.tree_map(lambda a: place(a, np.int32, self.run_sharding), seeds)
            return hp, seeds, jax.tree_util.tree_map(lambda a: place(a, np.asarray(a).dtype, self.replicated), data)
        hp = {k: jax.device_put(np.asarray(v, np.float32), self.run_sharding) for k, v in hp.items()}
        seeds = jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a, np.int32), self.run_sharding), seeds)
        return hp, seeds, jax.device_put(data, self.replicated)

    def init(self, hp, seeds, data: Splits) -> RunState:
        fn = self._init_fn(data.train_x.shape[0])
        shardings = (self.run_sharding, self.run_sharding)
        return self._compile(("init", _runs_shape(seeds)), fn, (hp, seeds), shardings)(hp, seeds)

    def epochs_program(self, n_epochs: int, state: RunState, hp, seeds, data: Splits) -> Callable:
        """The compiled `(state, hp, seeds, data) -> (state, history)` for `n_epochs` epochs."""
        args = (state, hp, seeds, data)
        shardings = (self.run_sharding, self.run_sharding, self.run_sharding, self.replicated)
        return self._compile(("epochs", n_epochs, _runs_shape(seeds)), self._epochs_fn(n_epochs), args, shardings, donate=(0,))

    def put_runs(self, tree: Any) -> Any:
        """Host arrays with a leading run axis, split over "runs" on the mesh."""
        return jax.tree_util.tree_map(lambda a: distributed.global_array(a, self.run_sharding), tree)

    def abstract(self, hp, seeds, data: Splits, epochs_done: int) -> dict:
        """Shapes of {"state", "history"} after `epochs_done` epochs (for restoring), each array
        replicated on this mesh: a checkpoint restores whatever devices, processes and run
        padding wrote it (`Checkpointer.restore(..., runs_axis=True)`)."""
        state = jax.eval_shape(self._init_fn(data.train_x.shape[0]), hp, seeds)
        _, hist = jax.eval_shape(self._epochs_fn(1), state, hp, seeds, data)
        history = {k: jax.ShapeDtypeStruct((v.shape[0], epochs_done), v.dtype) for k, v in hist.items()}
        replicated = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.replicated)  # noqa: E731
        return {"state": jax.tree_util.tree_map(replicated, state), "history": jax.tree_util.tree_map(replicated, history)}


def check_restored(tree: dict, n_real: int) -> None:
    """CheckpointError when a restored {"state", "history"} cannot be the state of a training of
    `n_real` runs: fewer runs, or a run whose params are not finite although it is not marked as
    diverged (a healthy run's checkpoint never holds NaN or inf)."""
    state = tree["state"]
    rows = len(np.asarray(state.diverged_epoch))
    if rows < n_real:
        raise CheckpointError(f"the checkpoint holds {rows} runs, this training {n_real}: it belongs to another config")
    healthy = np.asarray(state.diverged_epoch) < 0
    for leaf in jax.tree_util.tree_leaves(state.params):
        leaf = np.asarray(leaf)
        finite = np.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1)
        if np.any(healthy & ~finite):
            raise CheckpointError(f"the checkpoint holds non-finite params of run {int(np.argmax(healthy & ~finite))}, "
                                  "which is not marked as diverged: it is damaged")


def _concat(chunks: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([np.asarray(c[k]) for c in chunks], axis=1) for k in chunks[0]}


def train_grid(task: Task, spec: TrainSpec, hp: dict[str, np.ndarray], seeds: Any, data: Splits, *,
               chunk_epochs: int = 1, run_chunk: int | None = None, checkpoint_dir: str | None = None,
               checkpoint_every: int = 1, checkpoint_seconds: float = 0.0,
               progress: Callable[[int, dict], None] | None = None,
               trainer: GridTrainer | None = None) -> SweepResult:
    """Train R runs (hp {name: (R,)}, seeds (R,)) for `spec.epochs` epochs as one program.

    `seeds` may also be a dict of per-stream seeds {stream: (R,)} (`stream_grid`, `train.STREAMS`).

    `run_chunk` bounds how many runs are trained at once (rounded up to the device count).
    With `checkpoint_dir`, the state is saved every `checkpoint_every` epochs, but not sooner than
    `checkpoint_seconds` after the last save (0: every time), and always after the last epoch; a
    later call resumes from the newest checkpoint, ending with the same numbers as an
    uninterrupted run. A kill loses at most about `checkpoint_seconds` plus one chunk of training.
    `progress(epochs_done_in_this_call, metrics)` is called after every chunk of epochs.
    """
    check_hparams(task, spec, hp)  # before anything compiles
    trainer = trainer or GridTrainer(task, spec)
    if trainer.task is not task or trainer.spec != spec:
        raise ValueError("train_grid: the trainer was made for another task or TrainSpec")
    n_runs = num_runs(seeds)
    if n_runs == 0:
        raise ValueError("the grid is empty: at least one run is needed")
    per_call = runs_per_call(n_runs, run_chunk, trainer.n_devices)
    # The epoch programs compile in the background while this thread builds (or restores) the
    # initial state, unless they were prepared earlier or compiling ahead is off.
    every = checkpoint_every if checkpoint_dir else None  # chunks end on checkpoint epochs only when there are any
    trainer.precompile(hp, seeds, data, run_chunk=run_chunk, chunk_epochs=chunk_epochs, init=False, checkpoint_every=every)
    states, histories, epoch_times, resumed = [], [], [], None
    train_seconds = 0.0
    compile_before, wait_before = trainer.compile_seconds, trainer.compile_wait_seconds
    if checkpoint_dir and os.path.isdir(checkpoint_dir) and distributed.is_writer():
        layout = {f"runs_{a}-{min(a + per_call, n_runs)}" for a in range(0, n_runs, per_call)}
        other = sorted(n for n in os.listdir(checkpoint_dir) if n.startswith("runs_") and n not in layout)
        if other:  # a run_chunk rounded up to another device count groups the runs otherwise
            print(f"{checkpoint_dir}: checkpoints of runs grouped otherwise ({', '.join(other)}: another device count "
                  f"with config.run_chunk) are not resumed; this mesh trains {per_call} runs at a time", file=sys.stderr)
    for start in range(0, n_runs, per_call):
        stop = min(start + per_call, n_runs)
        part = slice(start, stop)
        runs = ({k: v[part] for k, v in hp.items()}, jax.tree_util.tree_map(lambda a, p=part: a[p], seeds))
        (hp_c, seeds_c), n_real = pad_runs(runs, per_call)
        hp_d, seeds_d, data_d = trainer.place(hp_c, seeds_c, data)
        ckpt = None
        if checkpoint_dir:
            ckpt = Checkpointer(os.path.join(checkpoint_dir, f"runs_{start}-{stop}"))
        done, chunks = 0, []
        if ckpt is not None and ckpt.unverifiable():  # nothing to verify them against: never resumed
            if distributed.is_writer():
                print(f"{ckpt.directory}: its checkpoints have no checksums (older code wrote them), so they cannot be "
                      "verified; training these runs from the start", file=sys.stderr)
            ckpt.clear()
        if ckpt is not None and ckpt.latest_epoch() is not None:
            if ckpt.latest_epoch() > spec.epochs:
                raise CheckpointError(f"{ckpt.directory} holds a checkpoint of epoch {ckpt.latest_epoch()}, past this "
                                      f"training's {spec.epochs} epochs: it belongs to another config")
            done, tree = ckpt.restore_newest(lambda e, a=(hp_d, seeds_d, data_d): trainer.abstract(*a, e),
                                             lambda t, n=n_real: check_restored(t, n), runs_axis=True)
            # The real runs, padded for this mesh as an uninterrupted run on it pads them.
            tree, _ = pad_runs(jax.tree_util.tree_map(lambda a, n=n_real: a[:n], tree), per_call)
            state = trainer.put_runs(tree["state"])
            chunks = [tree["history"]] if done else []
            resumed = done if resumed is None else min(resumed, done)
        else:
            state = trainer.init(hp_d, seeds_d, data_d)
        last_save = time.perf_counter()
        while done < spec.epochs:
            n = chunk_length(done, spec.epochs, chunk_epochs, every)
            program = trainer.epochs_program(n, state, hp_d, seeds_d, data_d)  # compiles once
            t0 = time.perf_counter()
            state, hist = program(state, hp_d, seeds_d, data_d)
            hist = jax.block_until_ready(hist)
            elapsed = time.perf_counter() - t0
            chunks.append(distributed.gather(hist))
            done += n
            due = done % checkpoint_every == 0 and time.perf_counter() - last_save >= checkpoint_seconds
            if ckpt is not None and (due or done == spec.epochs):
                ckpt.save(done, {"state": state, "history": _concat(chunks)})
                last_save = time.perf_counter()
            if progress is not None:
                progress(n, {k: v[:n_real, -1] for k, v in chunks[-1].items()})
            train_seconds += elapsed
            epoch_times.extend([elapsed / n] * n)
        if ckpt is not None:
            ckpt.close()
        states.append(jax.tree_util.tree_map(lambda a, n=n_real: a[:n], distributed.gather(state)))
        histories.append({k: v[:n_real] for k, v in _concat(chunks).items()})
    state = jax.tree_util.tree_map(lambda *a: np.concatenate(a), *states)
    history = {k: np.concatenate([h[k] for h in histories]) for k in histories[0]}
    timing = {
        "compile_seconds": trainer.compile_seconds - compile_before,
        "compile_wait_seconds": trainer.compile_wait_seconds - wait_before,  # less where compiled ahead
        "train_seconds": train_seconds,
        "epochs_timed": len(epoch_times),
        "steady_epoch_seconds": statistics.median(epoch_times[1:] or epoch_times) if epoch_times else 0.0,
        "runs_per_call": per_call,  # runs one call of the program trains (padding included)
    }
    # steady_epoch_seconds is one call's epoch: per_call runs, however many calls there were.
    timing["steady_run_epoch_seconds"] = timing["steady_epoch_seconds"] / per_call
    return SweepResult(state, history, timing, resumed)
