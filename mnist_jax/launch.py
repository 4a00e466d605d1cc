"""Start a command as N processes of one multi-process JAX run on this machine.

    python -m mnist_jax.launch --processes 2 -- python -m experiments.sweep --workdir runs/l2 \\
        --config configs/l2_sweep_quick.py

For trying the multi-process path and for tests: each process gets the environment a cluster
would give it (JAX_COORDINATOR_ADDRESS on a free localhost port, JAX_NUM_PROCESSES,
JAX_PROCESS_ID) and, on a CPU, `--devices-per-process` host devices. The launcher returns the
exit code of the first process that fails (and then stops the others), 0 when all succeed. It
schedules nothing: on a cluster the scheduler (srun, mpirun, a TPU slice) starts the processes
instead, and `mnist_jax.distributed` reads its environment (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port no one listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(base: dict[str, str], index: int, processes: int, port: int, devices: int | None) -> dict[str, str]:
    """The environment of process `index` of `processes`."""
    env = dict(base, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
               JAX_PROCESS_ID=str(index))
    if devices is not None:
        flags = re.sub(rf"{DEVICE_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_FLAG}={devices}"])
    return env


def _code(returncode: int) -> int:
    """A shell-style exit code: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM every process still running, SIGKILL those still there after `grace` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _die_with_parent() -> None:
    """In a started process, before its command runs: ask Linux for SIGTERM when the launcher
    dies, however it dies (elsewhere nothing: the launcher's own handlers stop its processes)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(command: list[str], processes: int, devices: int | None = None, port: int | None = None,
           timeout: float | None = None) -> int:
    """Run `command` as `processes` processes of one JAX run on localhost; the first non-zero
    exit code (124 when `timeout` seconds pass first; 2 when the command cannot be started, after
    stopping any process already started), else 0."""
    port = port or free_port()
    procs: list[subprocess.Popen] = []
    try:
        for i in range(processes):
            procs.append(subprocess.Popen(command, env=process_env(os.environ, i, processes, port, devices),
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None))
    except (OSError, subprocess.SubprocessError) as err:
        _stop(procs)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        print(f"error: launch: cannot start {command[0]!r}: {reason}", file=sys.stderr)
        return 2
    deadline = None if timeout is None else time.monotonic() + timeout

    def on_term(signum, frame):  # the launcher stopped from outside: its processes stop too
        _stop(procs)
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [_code(c) for c in codes if c not in (None, 0)]
            if failed:
                _stop(procs)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                print(f"launch: the processes ran past {timeout:g} s; stopping them", file=sys.stderr)
                _stop(procs)
                return 124
            time.sleep(0.05)
    except KeyboardInterrupt:  # Ctrl-C reached the processes too: give them time to say where to resume
        _stop(procs, grace=30.0)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--" not in args:
        print("usage: python -m mnist_jax.launch --processes N [--devices-per-process D] [--port P] "
              "[--timeout S] -- COMMAND ...", file=sys.stderr)
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="python -m mnist_jax.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="how many processes (default 2)")
    parser.add_argument("--devices-per-process", type=int, default=None,
                        help=f"CPU devices of each process ({DEVICE_FLAG}); default: XLA_FLAGS as it is")
    parser.add_argument("--port", type=int, default=None, help="the coordinator's port (default: a free one)")
    parser.add_argument("--timeout", type=float, default=None, help="stop every process after this many seconds")
    opts = parser.parse_args(args[:split])
    command = args[split + 1:]
    if not command or opts.processes < 1 or (opts.devices_per_process is not None and opts.devices_per_process < 1):
        print("error: --processes and --devices-per-process must be >= 1, and a command must follow --",
              file=sys.stderr)
        return 2
    return launch(command, opts.processes, opts.devices_per_process, opts.port, opts.timeout)


if __name__ == "__main__":
    sys.exit(main())
