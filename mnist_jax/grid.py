"""A trained grid as a value of the library: the model, every run's params (leading run axis),
and the hyperparameters and seeds each run was trained with.

Its per-run logits and predictions on any images, in bounded batches, are what the confusion
matrices, the agreement between runs, ensembles and `evaluate` are built on:

    grid = TrainedGrid(model, result.state.params, hp, seeds)
    logits_RxNxC = grid.logits(data.test_x)          # every run, every image
    labels_RxN = grid.predictions(data.test_x)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import tasks


@dataclasses.dataclass(frozen=True)
class TrainedGrid:
    """A classifier trained for every run of a grid: `params` has a leading run axis; `hp`
    ({name: (R,)}) and `seeds` ((R,) or {stream: (R,)}) say how each run was trained."""

    model: nn.Module
    params: Any
    hp: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    seeds: Any = None

    @property
    def runs(self) -> int:
        """How many runs the grid holds."""
        return int(jax.tree_util.tree_leaves(self.params)[0].shape[0])

    def run_params(self, run: int) -> Any:
        """The params of run `run` (no run axis)."""
        return jax.tree_util.tree_map(lambda a: a[run], self.params)

    def select(self, runs) -> TrainedGrid:
        """The grid of the runs `runs` (indices) of this one, in that order."""
        idx = np.asarray(runs, np.int64)
        pick = (lambda a: None if a is None else (a[idx] if isinstance(a, jax.Array) else np.asarray(a)[idx]))
        return dataclasses.replace(self, params=jax.tree_util.tree_map(pick, self.params),
                                   hp={k: pick(v) for k, v in self.hp.items()},
                                   seeds=({k: pick(v) for k, v in self.seeds.items()} if isinstance(self.seeds, dict)
                                          else pick(self.seeds)))

    def logits(self, x: jax.Array | np.ndarray, runs_at_once: int = 4) -> np.ndarray:
        """Evaluation-mode logits (R, N, 10) of every run on images x (uint8 or float, NHWC):
        `runs_at_once` runs vmapped at a time, each in batches of the model's evaluation batch,
        so memory stays bounded for any grid and any number of images."""
        fn = _logits_fn(self.model)
        return np.asarray(tasks.over_runs(fn, (self.params,), (jnp.asarray(x),), chunk=runs_at_once))

    def predictions(self, x: jax.Array | np.ndarray, runs_at_once: int = 4) -> np.ndarray:
        """Predicted labels (R, N) of every run on images x."""
        fn = _predictions_fn(self.model)
        return np.asarray(tasks.over_runs(fn, (self.params,), (jnp.asarray(x),), chunk=runs_at_once))


@functools.lru_cache(maxsize=64)
def _logits_fn(model: nn.Module):
    """One function object per model, so repeated calls share one compiled program."""
    return lambda p, x: tasks.classifier_logits(model, p, x)


@functools.lru_cache(maxsize=64)
def _predictions_fn(model: nn.Module):
    return lambda p, x: jnp.argmax(tasks.classifier_logits(model, p, x), axis=-1)
