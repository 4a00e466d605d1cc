"""Data augmentation on the device, inside the compiled training step.

An augmentation is `augment(key, x, hp) -> x` on a float batch (B, H, W, C); it is passed as
`tasks.classifier_task(model, augment=...)` and runs on every training batch, never on the
validation or test images.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def shift_images(x: jax.Array, dy: jax.Array, dx: jax.Array, max_shift: int) -> jax.Array:
    """Each image x[b] (B, H, W, C) moved by (dy[b], dx[b]) pixels, |d| <= max_shift, zeros filled in."""
    _, h, w, c = x.shape
    m = max_shift
    padded = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))

    def one(img, oy, ox):
        # image content moves by +d when the window starts d pixels before the original origin
        return jax.lax.dynamic_slice(img, (m - oy, m - ox, 0), (h, w, c))

    return jax.vmap(one)(padded, dy, dx)


def random_shift(max_shift: int) -> Callable[[jax.Array, jax.Array, dict], jax.Array]:
    """An augmentation shifting each image by an independent uniform integer offset in
    [-max_shift, max_shift] on both axes (zero padding, the label is unchanged)."""
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an integer >= 0, got {max_shift!r}")

    def augment(key: jax.Array, x: jax.Array, hp: dict) -> jax.Array:
        if max_shift == 0:
            return x
        d = jax.random.randint(key, (2, x.shape[0]), -max_shift, max_shift + 1)
        return shift_images(x, d[0], d[1], max_shift)

    return augment


def from_config(config) -> Callable | None:
    """The augmentation a config asks for (`max_shift` > 0), or None."""
    shift = config.get("max_shift", 0)
    return random_shift(shift) if shift else None
