"""Tiny synthetic MNIST for tests, and its installation in place of the real MNIST.

`synthetic_splits` makes learnable fake digits. `install` replaces the real MNIST by them wherever
the library loads it (`data.load_mnist`, `data.load_splits`) in this process. A process started
with `subprocess_env(env)` does the same at its start (`tests/synthetic_site/sitecustomize.py`),
so commands, launchers and the processes they start train on the same fake digits.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np

from mnist_jax import data as data_lib

SYNTHETIC_TRAIN, SYNTHETIC_EVAL = 256, 100  # training images; validation and test images each
ENV = "MNIST_JAX_TEST_DATA"  # "synthetic:N": a process started with it trains on `noisy_splits(N)`
INTERRUPT_ENV = "MNIST_JAX_TEST_INTERRUPT"  # "E" or "E:during": such a process is sent SIGINT (`interrupt_at`)
SITE = pathlib.Path(__file__).resolve().parent / "synthetic_site"


def synthetic_splits(n_train: int = 256, n_eval: int = 64, seed: int = 0) -> data_lib.Splits:
    """Learnable fake digits: class k lights up row band k of the image (uint8, NHWC)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        x = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 + 2 * k: 4 + 2 * k, 4:24, 0] = 255
        return x, y

    tx, ty = make(n_train)
    vx, vy = make(n_eval)
    ex, ey = make(n_eval)
    return data_lib.Splits(tx, ty, vx, vy, ex, ey)


def noisy_splits(n_train: int = SYNTHETIC_TRAIN) -> data_lib.Splits:
    """`n_train` training, SYNTHETIC_EVAL validation and test images, a random label on 30 %
    of each split: every model stays imperfect and runs of different seeds apart, as on MNIST (the
    statistics of the experiments divide by spreads)."""
    rng = np.random.default_rng(1)
    s = synthetic_splits(n_train, SYNTHETIC_EVAL)
    return s._replace(**{k: np.where(rng.random(y.shape) < 0.3, rng.integers(0, 10, y.shape), y).astype(np.int32)
                         for k, y in s._asdict().items() if k.endswith("_y")})


def install(setattr: Callable = setattr, n_train: int = SYNTHETIC_TRAIN) -> data_lib.Splits:
    """`noisy_splits(n_train)` in place of MNIST in `mnist_jax.data` (`setattr`: a monkeypatch's, to undo it
    after a test); the validation set is SYNTHETIC_EVAL images whatever `n_val` asks. Returns the splits."""
    s = noisy_splits(n_train)
    raw = {"train_x": np.concatenate([s.train_x, s.val_x]), "train_y": np.concatenate([s.train_y, s.val_y]),
           "test_x": s.test_x, "test_y": s.test_y}

    def load_mnist(cache_dir=None, data_dir=None):
        return {k: v.copy() for k, v in raw.items()}

    def load_splits(n_val=5_000, protocol="holdout", on_device=True, cache_dir=None):
        splits = data_lib.make_splits(load_mnist(), SYNTHETIC_EVAL, protocol)
        return data_lib.Splits(*(jax.device_put(a) for a in splits)) if on_device else splits

    setattr(data_lib, "load_mnist", load_mnist)
    setattr(data_lib, "load_splits", load_splits)
    return s


def with_site(pythonpath: str) -> str:
    """`pythonpath` with SITE first (once), so a process started with it runs `synthetic_site`."""
    return os.pathsep.join([str(SITE), *(p for p in pythonpath.split(os.pathsep) if p and p != str(SITE))])


def subprocess_env(env: dict[str, str] | None = None, n_train: int = SYNTHETIC_TRAIN) -> dict[str, str]:
    """`env` (default: this process's) for a process that trains on `noisy_splits(n_train)` too."""
    env = dict(os.environ if env is None else env)
    env[ENV] = f"synthetic:{n_train}"
    env["PYTHONPATH"] = with_site(env.get("PYTHONPATH", ""))
    return env


PROCESS_TRAIN = 8_192  # training images of `for_processes`: an epoch long enough to be interrupted in


def for_processes(mp, n_train: int = PROCESS_TRAIN) -> None:
    """Every process started after this (`mp`: a pytest MonkeyPatch, which restores the
    environment) trains on `noisy_splits(n_train)`, as `subprocess_env` arranges for one."""
    env = subprocess_env({"PYTHONPATH": os.environ.get("PYTHONPATH", "")}, n_train)
    mp.setenv(ENV, env[ENV])
    mp.setenv("PYTHONPATH", env["PYTHONPATH"])


# XLA flags of every compile in the suite and in the processes it starts (conftest puts them in
# XLA_FLAGS, which a process inherits and JAX keys its persistent cache by): an integration test
# compiles MNIST-sized programs with XLA:CPU's backend at optimization level 1, without LLVM's
# expensive passes, in a fraction of the full compile time (docs/performance.md, "The suite at
# 95f479c"); a light compile sets its own, lower level over them. The programs are the user's,
# compiled by another code generator setting: what these tests check (accuracy bounds,
# bit-identity between processes, resume) holds for both.
SUITE_XLA_FLAGS = ("--xla_backend_optimization_level=1", "--xla_llvm_disable_expensive_passes=true")


def with_suite_xla_flags(flags: str) -> str:
    """`flags` (an XLA_FLAGS value) with SUITE_XLA_FLAGS after it, once; a flag `flags` sets itself
    is kept."""
    names = {f.split("=", 1)[0] for f in flags.split()}
    return " ".join([*flags.split(), *(f for f in SUITE_XLA_FLAGS if f.split("=", 1)[0] not in names)])


@contextlib.contextmanager
def light_compiles(mp) -> Iterator[None]:
    """XLA compiles with little optimization (`jax_disable_most_optimizations`) inside the block,
    here and in the processes started from it (`mp`: a pytest MonkeyPatch, which restores the
    environment; JAX reads JAX_DISABLE_MOST_OPTIMIZATIONS in a process it starts): a fraction of
    the compile time, for programs that run on tiny data. A fixture that trains what a test later
    resumes or compares compiles the same way as the test.

    Nothing is added to JAX's own light options: XLA:CPU without its fusion emitters compiles these
    programs faster, but at backend optimization level 0 it miscompiles the gradient of the study
    CNN's fused first convolution (test_cnn's formulation test, compiled whole, finds it)."""
    mp.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    before = jax.config._read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def interrupt_at(spec: str) -> None:
    """This process sends itself SIGINT at its checkpoint of epoch E (`spec` "E"): right after
    that checkpoint is written, or while it is written ("E:during", from another thread as a
    terminal's Ctrl-C comes). A test interrupts a run at a known moment, however fast its
    epochs and however loaded the machine, instead of racing it from outside."""
    from mnist_jax import checkpoint

    # A blocked signal stays blocked across fork and exec, and an ignored one stays ignored: a process
    # started by a test runner's worker inherits whatever its thread has (in a whole-suite session
    # SIGINT is blocked there, and the run would finish untouched), where a terminal's command does not.
    # This one handles SIGINT as Python does by default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    epoch, _, when = spec.partition(":")
    save = checkpoint.Checkpointer.save

    def interrupting(self, e: int, tree) -> None:
        if e == int(epoch) and when == "during":
            threading.Timer(0.002, os.kill, (os.getpid(), signal.SIGINT)).start()
        save(self, e, tree)
        if e == int(epoch) and when != "during":
            os.kill(os.getpid(), signal.SIGINT)

    checkpoint.Checkpointer.save = interrupting


def interrupted_env(spec: str, n_train: int = PROCESS_TRAIN) -> dict[str, str]:
    """This process's environment for a command that trains on `noisy_splits(n_train)` and is
    interrupted at `spec` (`interrupt_at`)."""
    return {**subprocess_env(n_train=n_train), INTERRUPT_ENV: spec}
