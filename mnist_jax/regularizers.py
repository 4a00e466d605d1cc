"""Regularizers as hooks of a `train.Task`: penalties on the params added to the loss, and
constraints applied to the params after each update. Each reads one traced hyperparameter, so
its strength can be swept with `jax.vmap`; a new regularizer is a function here (or anywhere)
and a hook on a task, never an edit of the generic train step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mnist_jax import losses
from mnist_jax.train import Constraint, Params, Penalty


def max_norm(params: Params, limit: jax.Array | float) -> Params:
    """Rescale each unit's incoming weights to norm <= limit (no-op where limit <= 0)."""

    def clip(path, leaf):
        if getattr(path[-1], "key", None) != "kernel":
            return leaf
        norms = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=tuple(range(leaf.ndim - 1)), keepdims=True))
        scale = jnp.where((limit > 0) & (norms > limit), limit / jnp.maximum(norms, 1e-12), 1.0)
        return leaf * scale

    return jax.tree_util.tree_map_with_path(clip, params)


L2 = Penalty("l2", losses.l2_penalty)  # Keras' L2: factor * sum of squared kernel weights
MAX_NORM = Constraint("max_norm", max_norm)  # Hinton et al.'s cap on each unit's incoming weights

HOOKS = {hook.hparam: hook for hook in (L2, MAX_NORM)}


def from_config(config: ml_collections.ConfigDict) -> tuple[Penalty | Constraint, ...]:
    """The hooks a config asks for: L2 when it has an `l2` field (0 trains with a zero penalty,
    as the study's unregularized baseline does), max-norm when `max_norm` > 0."""
    hooks = []
    if "l2" in config:
        hooks.append(L2)
    if config.get("max_norm", 0.0) > 0:
        hooks.append(MAX_NORM)
    return tuple(hooks)
