"""Flax linen modules (definitions only; training lives in `train.py`).

Rates that do not change shapes (dropout) are call arguments, not attributes, so they can be
traced and swept with `jax.vmap`; widths are attributes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def dense_init(keras: bool):
    """Kernel initialiser: Keras' glorot-uniform or Flax's lecun-normal."""
    return nn.initializers.glorot_uniform() if keras else nn.initializers.lecun_normal()


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Inverted dropout with a traced rate in [0, 1): zero with probability `rate`."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / keep, 0.0)


class MLP(nn.Module):
    """Flatten -> [Dense ReLU (dropout)] * len(hidden) -> Dense logits.

    `dropout=True` builds dropout layers whose rates come from the call (traced); with
    `train=False` they are the identity. The study's net is `MLP((64, 64))`: 55,050 params.
    """

    hidden: Sequence[int] = (64, 64)
    num_classes: int = 10
    keras_init: bool = True
    dropout: bool = False

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0, input_dropout_rate=0.0):
        x = x.reshape(x.shape[0], -1)
        use_dropout = self.dropout and train
        if use_dropout:
            x = dropout(x, input_dropout_rate, self.make_rng("dropout"))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=dense_init(self.keras_init))(x))
            if use_dropout:
                x = dropout(x, dropout_rate, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, kernel_init=dense_init(self.keras_init))(x)


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def from_config(cfg) -> nn.Module:
    """The module a config's `model` block describes (`kind` plus that module's fields)."""
    kinds = {"mlp": MLP}
    fields = dict(cfg)
    kind = fields.pop("kind")
    if kind not in kinds:
        raise ValueError(f"model.kind must be one of {sorted(kinds)}, got {kind!r}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return kinds[kind](**fields)
