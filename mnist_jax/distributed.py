"""Several processes as one run: JAX's multi-controller runtime, one writer.

A run of N processes (one per host, or several on one host for trying it: `mnist_jax.launch`)
is the same program in every process. `initialize` joins them (`jax.distributed.initialize`:
a coordinator, collectives over NCCL on GPUs and gloo on CPUs), after which `jax.devices()` holds
every process's devices and the run axis of a sweep is sharded over all of them as one mesh
(`mnist_jax.sweep`). Inputs are built from the same host data in every process into global
arrays (`global_array`); histories and final states come back to every process (`gather`).

Process 0 is the writer: it alone holds the workdir's lock and writes config.json,
metrics.json, figures and REPORT.md, and it alone prints. Checkpoints are the exception: every
process calls orbax's save and restore on the same directory (orbax coordinates them), so the
processes must share a file system. Steps only the writer does (`on_writer`) tell the others
how they ended, so a failure there stops every process with the writer's exit code; a process
that fails on its own exits at once (`exit_now`), and the others' next collective fails.

A single process (no launcher, no cluster) never touches any of this: every helper is then the
plain single-process operation.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

# Set by `initialize`; read without touching JAX, so a single process never starts a backend here.
_STATE = {"initialized": False, "index": 0, "count": 1}


class WriterFailed(Exception):
    """A step only process 0 does failed there (it printed why): stop with its exit code."""

    def __init__(self, code: int):
        super().__init__(f"process 0 stopped with exit code {code}")
        self.code = code


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def requested() -> bool:
    """Whether the environment asks for a multi-process run: the launcher's or your own
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES, a SLURM step or an Open MPI job of several
    tasks, a TPU slice of several hosts, or MNIST_JAX_DISTRIBUTED=1 (any cluster JAX detects).
    MNIST_JAX_DISTRIBUTED=0 turns it off."""
    flag = os.environ.get("MNIST_JAX_DISTRIBUTED", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("JAX_NUM_PROCESSES"):
        return True
    for name in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        if (_env_int(name) or 1) > 1:
            return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host TPU slice


def initialize() -> bool:
    """Join the other processes of this run when the environment asks for it (`requested`);
    returns whether this is a multi-process run. Call it before anything uses JAX devices;
    calling it again does nothing."""
    if _STATE["initialized"]:
        return _STATE["count"] > 1
    _STATE["initialized"] = True
    if not requested():
        return False
    import jax

    # gloo is the CPU default since jax 0.5.1; named here so that an older default never leaves a
    # CPU run without cross-process collectives. GPUs use NCCL, TPUs their interconnect.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID"))
    _STATE["index"], _STATE["count"] = jax.process_index(), jax.process_count()
    if _STATE["count"] > 1 and _STATE["index"] != 0:
        _quiet()
    return _STATE["count"] > 1


def process_index() -> int:
    return _STATE["index"]


def process_count() -> int:
    return _STATE["count"]


def is_multiprocess() -> bool:
    return _STATE["count"] > 1


def is_writer() -> bool:
    """Whether this process writes the workdir and prints: process 0 (or the only process)."""
    return _STATE["index"] == 0


def _quiet() -> None:
    """A process other than 0 prints nothing on stdout, warns nothing and draws no figure file:
    process 0 says and writes it all. Its stderr stays open for its own errors."""
    import warnings

    import matplotlib.figure

    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # Python's prints and the runtime's own (gloo, XLA) alike
    os.close(devnull)
    warnings.simplefilter("ignore")
    matplotlib.figure.Figure.savefig = lambda self, *args, **kwargs: None


def barrier(name: str) -> None:
    """Every process waits here for the others (nothing in a single process)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _broadcast(code: int) -> int:
    """Process 0's `code` in every process."""
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.array(code, np.int32)))


def exit_code_of(err: BaseException) -> int:
    """The exit code `experiment.main` gives an exception (see its docstring)."""
    from mnist_jax.config import ConfigError

    if isinstance(err, WriterFailed):
        return err.code
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, ConfigError):
        return 2
    return 1  # DataUnavailableError, CheckpointError, and anything unexpected


def on_writer(fn: Callable[[], Any]) -> Any:
    """Run `fn` in process 0 only and tell every process how it ended: its result in process 0
    (None elsewhere); where it raised, process 0 raises that error and the others WriterFailed
    with its exit code. In a single process: `fn()`."""
    if not is_multiprocess():
        return fn()
    result, error = None, None
    if is_writer():
        try:
            result = fn()
        except BaseException as err:  # told to the others, then raised here
            error = err
    code = _broadcast(exit_code_of(error) if error is not None else 0)
    if error is not None:
        raise error
    if code:
        raise WriterFailed(code)
    return result


def global_array(host: Any, sharding) -> Any:
    """A global jax.Array with `sharding` from the host array `host` (the same in every process:
    each process places the parts its own devices hold)."""
    import jax
    import numpy as np

    host = np.asarray(host)
    if sharding.is_fully_addressable:
        return jax.device_put(host, sharding)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather(tree: Any) -> Any:
    """Every array of `tree` as a numpy array of its global value, in every process."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(jax.device_get(a))

    return jax.tree_util.tree_map(one, tree)


def _collective_failed(err: BaseException) -> bool:
    import jax

    return isinstance(err, jax.errors.JaxRuntimeError) and any(
        word in str(err) for word in ("Gloo", "NCCL", "Connection", "coordination", "peer"))


def exit_now(code: int, err: BaseException | None = None) -> None:
    """End this process of a multi-process run at once with `code`, after printing `err` (an
    unexpected error, with its traceback) to stderr. A normal exit would wait at JAX's shutdown
    barrier for processes that may be stuck in a collective with this one; leaving now makes
    their collective fail instead, so the whole run stops."""
    if err is not None and _collective_failed(err):  # the usual sign that another process stopped first
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        print(f"error: process {process_index()}: a collective with the other processes failed ({first}); "
              "another process of this run has stopped, and its message says why", file=sys.stderr)
    elif err is not None:
        print(f"process {process_index()} of {process_count()} stopped:", file=sys.stderr)
        traceback.print_exception(err, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
