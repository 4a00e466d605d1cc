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

Joining fails fast and says why: a bad JAX_NUM_PROCESSES, JAX_PROCESS_ID or
JAX_COORDINATOR_ADDRESS is one line and exit code 2; a process still waiting for the others after
a few seconds says what it waits for, and gives up with one line (exit code 1) after
MNIST_JAX_INIT_TIMEOUT seconds (default 300). A process that dies mid-run is declared dead by the
others after MNIST_JAX_HEARTBEAT_TIMEOUT seconds without its heartbeat (default 100, JAX's), at the
latest; that ends their run. Once joined, the processes compare a hash of their
command lines, config files and code (`check_same_run`) and stop with one line where they differ,
before any of them loads data or compiles.

A single process (no launcher, no cluster) never touches any of this: every helper is then the
plain single-process operation.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

# Set by `initialize`; read without touching JAX, so a single process never starts a backend here.
_STATE = {"initialized": False, "index": 0, "count": 1, "checked": False}


class WriterFailed(Exception):
    """A step only process 0 does failed there (it printed why): stop with its exit code."""

    def __init__(self, code: int):
        super().__init__(f"process 0 stopped with exit code {code}")
        self.code = code


INIT_TIMEOUT_ENV = "MNIST_JAX_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 300.0  # seconds a process waits for the others to join
HEARTBEAT_TIMEOUT_ENV = "MNIST_JAX_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT = 100.0  # seconds without a heartbeat before a process is declared dead (JAX's default)
NOTICE_AFTER = 5.0  # seconds of waiting before a process says what it waits for


class SetupError(Exception):
    """An environment that cannot start a multi-process run; the message says why (exit code 2)."""


def _cluster_detected(environ) -> bool:
    """Whether a scheduler JAX detects by itself describes the processes (MNIST_JAX_DISTRIBUTED=1:
    any cluster JAX knows; a SLURM step or an Open MPI job of several tasks; a TPU slice of
    several hosts)."""

    def count(name):
        try:
            return int(environ.get(name, "").strip() or 1)
        except ValueError:
            return 1
    return (environ.get("MNIST_JAX_DISTRIBUTED", "").strip() == "1" or count("SLURM_STEP_NUM_TASKS") > 1
            or count("OMPI_COMM_WORLD_SIZE") > 1 or "," in environ.get("TPU_WORKER_HOSTNAMES", ""))


def settings(environ=None) -> dict:
    """How this process joins the others: {num_processes, process_id, coordinator_address,
    timeout, heartbeat} from the environment (None: left to JAX's cluster detection). SetupError names the
    variable that is wrong and what it must be."""
    environ = os.environ if environ is None else environ

    def integer(name, low, high, what):
        raw = environ.get(name, "").strip()
        if not raw:
            return None
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            span = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
            raise SetupError(f"{name}={raw!r} is not allowed: expected {what}, {span}")
        return value

    num = integer("JAX_NUM_PROCESSES", 1, None, "the number of processes of this run")
    pid = integer("JAX_PROCESS_ID", 0, None if num is None else num - 1, "the index of this process")
    address = environ.get("JAX_COORDINATOR_ADDRESS", "").strip() or None
    if address is not None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise SetupError(f"JAX_COORDINATOR_ADDRESS={address!r} is not allowed: expected HOST:PORT of process 0 "
                             "(e.g. localhost:1234 or 10.0.0.1:1234)")
    def seconds(name, default, what):
        raw = environ.get(name, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = math.nan
        if not 0 < value <= 86_400:
            raise SetupError(f"{name}={raw!r} is not allowed: expected {what}, a number in (0, 86400]")
        return value

    timeout = seconds(INIT_TIMEOUT_ENV, DEFAULT_INIT_TIMEOUT, "the seconds a process waits for the others to join")
    heartbeat = seconds(HEARTBEAT_TIMEOUT_ENV, DEFAULT_HEARTBEAT_TIMEOUT,
                        "the seconds without a heartbeat after which a process is declared dead")
    if not _cluster_detected(environ):  # nothing but these variables describes the run: all of them are needed
        start = "set all three in every process, or start them with python -m mnist_jax.launch"
        if num is None and (address is not None or pid is not None):
            raise SetupError(f"JAX_{'COORDINATOR_ADDRESS' if address else 'PROCESS_ID'} is set but JAX_NUM_PROCESSES "
                             f"is not: {start}")
        if num > 1 and pid is None:
            raise SetupError(f"JAX_NUM_PROCESSES={num} but JAX_PROCESS_ID is not set: {start}")
        if num > 1 and address is None:
            raise SetupError(f"JAX_NUM_PROCESSES={num} but JAX_COORDINATOR_ADDRESS (HOST:PORT of process 0) "
                             f"is not set: {start}")
    return {"num_processes": num, "process_id": pid, "coordinator_address": address, "timeout": timeout,
            "heartbeat": heartbeat}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _watch_join(s: dict, joined: threading.Event) -> None:
    """While this process joins the others: after a few seconds, say what it waits for; after
    `s["timeout"]` seconds, give up with one line and exit code 1 (the join itself blocks in
    JAX's runtime, which would otherwise wait in silence and then abort with a C++ stack)."""
    me = "this process" if s["process_id"] is None else f"process {s['process_id']}"
    of = "" if s["num_processes"] is None else f" of {s['num_processes']}"
    at = f" at {s['coordinator_address']}" if s["coordinator_address"] else ""
    start = time.monotonic()
    if joined.wait(min(NOTICE_AFTER, s["timeout"] / 2)):
        return
    _say(f"{me}{of}: waiting for the other processes of this run to join{at} (coordinator: process 0); "
         f"giving up after {s['timeout']:g} s ({INIT_TIMEOUT_ENV})")
    if joined.wait(max(0.0, s["timeout"] - (time.monotonic() - start))):
        return
    _say(f"error: {me}{of}: the other processes did not join{at} within {s['timeout']:g} s; start all of them with "
         f"the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, or wait longer with {INIT_TIMEOUT_ENV}=SECONDS")
    os._exit(1)


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
    return _cluster_detected(os.environ)


def initialize() -> bool:
    """Join the other processes of this run when the environment asks for it (`requested`);
    returns whether this is a multi-process run. Call it before anything uses JAX devices;
    calling it again does nothing."""
    if _STATE["initialized"]:
        return _STATE["count"] > 1
    _STATE["initialized"] = True
    if not requested():
        return False
    try:
        s = settings()
    except SetupError as err:
        _say(f"error: {err}")
        sys.exit(2)
    if s["num_processes"] == 1:  # a run of one process: nothing to join
        return False
    import jax

    # gloo is the CPU default since jax 0.5.1; named here so that an older default never leaves a
    # CPU run without cross-process collectives. GPUs use NCCL, TPUs their interconnect.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    joined = threading.Event()
    threading.Thread(target=_watch_join, args=(s, joined), daemon=True).start()
    try:
        # JAX's own deadline comes after the watcher's, which ends the process with one line first
        jax.distributed.initialize(coordinator_address=s["coordinator_address"], num_processes=s["num_processes"],
                                   process_id=s["process_id"], initialization_timeout=math.ceil(s["timeout"]) + 30,
                                   heartbeat_timeout_seconds=math.ceil(s["heartbeat"]))
    except Exception as err:  # noqa: BLE001 - JAX's checks of the environment and its cluster detection
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        _say(f"error: cannot join the other processes of this run: {first}")
        sys.exit(2 if isinstance(err, ValueError) else 1)
    finally:
        joined.set()
    _STATE["index"], _STATE["count"] = jax.process_index(), jax.process_count()
    if _STATE["count"] > 1 and _STATE["index"] != 0:
        _quiet()
    return _STATE["count"] > 1


def check_same_run(inputs: str) -> None:
    """ConfigError (in every process) when the processes of this run were given different
    inputs (`inputs`: the command line and config file a config is made of) or different code
    (`provenance.code_id`): they would build different programs and fail inside a collective, or
    one would stop alone. Once per process: the first command line it parses is the run's (the
    stages `reproduce` parses next follow from it, and a parse that only some processes make must
    not wait for the others). Nothing in a single process."""
    if not is_multiprocess() or _STATE["checked"]:
        return
    _STATE["checked"] = True
    import numpy as np
    from jax.experimental import multihost_utils

    from mnist_jax import provenance
    from mnist_jax.config import ConfigError

    texts = {"command line or config file": inputs, "code": provenance.code_id()}
    mine = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest(), np.int32) for t in texts.values()])
    everyone = np.asarray(multihost_utils.process_allgather(mine))  # (processes, what, 8)
    for index in range(1, everyone.shape[0]):
        differ = [what for j, what in enumerate(texts) if (everyone[index, j] != everyone[0, j]).any()]
        if differ:
            raise ConfigError(f"process {index} of this run has another {' and '.join(differ)} than process 0 "
                              "(their hashes differ): start every process with the same command line, config files "
                              "and code")


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
    """The exit code `cli.main` gives an exception (see its docstring)."""
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
