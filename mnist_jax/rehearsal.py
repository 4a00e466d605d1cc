"""Stand-in programs: an experiment rehearsed before it trains.

Inside `rehearsing()`, a program built with `rehearsal.jit` (every program of the library and
the experiments, the training programs of `sweep.GridTrainer` included) is traced but neither
compiled nor run: a call returns arrays of the shapes, dtypes and shardings the program returns,
filled with stand-in numbers (`stand_in`). Everything an experiment does with those arrays on
the host (its metrics, figures, REPORT section, README row and TensorBoard events) then runs as
it runs after training, so `cli.rehearse` finds what cannot be rendered for a config in seconds,
before anything compiles.

The stand-in numbers are fixed (a seeded generator) and plausible for what experiments read
from programs: floats in (0.05, 0.95) (accuracies, losses, probabilities, images), integers in
[0, 10) (labels, counts), False for flags (no run diverged).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

_lock = threading.Lock()
_active = 0  # rehearsals under way in this process (they nest: the job rehearses its stages)
_filled: dict = {}  # (shape, dtype, sharding) -> stand-in array, for the rehearsal under way


def active() -> bool:
    """Whether programs are stand-ins now."""
    return _active > 0


@contextlib.contextmanager
def rehearsing() -> Iterator[None]:
    """Programs built with `jit` (and `GridTrainer`'s) return stand-ins inside this block."""
    global _active
    with _lock:
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if not _active:
                _filled.clear()


def stand_in(shapes: Any) -> Any:
    """Arrays of the shapes, dtypes and shardings of a tree of `jax.ShapeDtypeStruct`s, filled
    with the stand-in numbers of the module docstring. Outputs of one shape, dtype and sharding
    share one array (no program takes them: a program's input is a stand-in's shape), so a
    training loop of many calls fills its state once."""

    def fill(s):
        sharding = getattr(s, "sharding", None)
        key = (tuple(s.shape), str(s.dtype), sharding)
        if key not in _filled:
            rng = np.random.default_rng(len(_filled))
            dtype = np.dtype(s.dtype)
            if dtype == np.bool_:
                a = np.zeros(s.shape, bool)
            elif np.issubdtype(dtype, np.integer):
                a = rng.integers(0, 10, s.shape).astype(dtype)
            else:
                a = rng.uniform(0.05, 0.95, s.shape).astype(dtype)
            if sharding is not None and not sharding.is_fully_addressable:
                from mnist_jax import distributed
                _filled[key] = distributed.global_array(a, sharding)
            else:
                _filled[key] = jax.device_put(a, sharding)
        return _filled[key]

    return jax.tree_util.tree_map(fill, shapes)


class Program:
    """A jitted function that returns stand-ins while `rehearsing()`; otherwise it is the jitted
    function itself (its other attributes, `lower` and `trace`, pass through)."""

    def __init__(self, jitted: Callable):
        self._jitted = jitted

    def __call__(self, *args, **kwargs):
        if active():
            return stand_in(self._jitted.eval_shape(*args, **kwargs))
        return self._jitted(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._jitted, name)


def jit(fun: Callable, **kwargs) -> Program:
    """`jax.jit(fun, **kwargs)`, rehearsed as a stand-in inside `rehearsing()`."""
    return Program(jax.jit(fun, **kwargs))
