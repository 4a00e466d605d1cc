"""Image corruptions as pure jax functions of (key, x, level).

`salt_and_pepper` is the study's corruption: each pixel is kept with probability 1 - level,
otherwise set to 0 or 1 with equal probability. `level` may be traced (swept with `jax.vmap`).

Random bits are what this costs. One threefry2x32 hash gives 64 random bits; `jax.random`
(partitionable threefry, jax's default) spends one hash per drawn element whatever its width
and keeps 32 bits of it. The naive corruption draws two uniforms per pixel (keep? salt?): two
hashes. Both decisions fit in one number: with u uniform in 0..2^16 - 1, the pixel is
corrupted when u < level * 2^16, and among those it is salt (1) when u < level * 2^15 (given
corruption u is uniform below the first threshold, so salt and pepper are equally likely).
`salt_and_pepper` gives every pixel 16 bits and takes them straight from the threefry hash
(`threefry_2x32_unrolled`, bit for bit jax's hash but fused on the CPU), so one hash serves four
pixels: an eighth of the naive draw. Levels are thereby resolved to 2^-16 (a level of 0.1
corrupts with probability 0.100006); 0 and 1 are exact. Keys of another PRNG implementation fall back to
`jax.random.bits` (two pixels per 32-bit word). `benchmarks/denoise_speed.py` times them all.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

BITS_PER_PIXEL = 16


def check_level(level) -> None:
    """Raise ValueError if a concrete `level` is outside [0, 1] or not finite; traced levels pass.

    A traced level cannot be inspected: there, values below 0 act as 0 and above 1 as 1.
    Configs are checked before training (`config.RULES["noise_level"]`).
    """
    try:
        values = np.asarray(level, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= 1):
        shown = values.item() if values.size == 1 else values
        raise ValueError(f"noise level must be in [0, 1], got {shown!r}")


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry_2x32_unrolled(keypair: jax.Array, count: jax.Array) -> jax.Array:
    """`jax.extend.random.threefry_2x32(keypair, count)`, bit for bit, as straight-line jnp code.

    On the CPU jax lowers the hash with its 20 rounds rolled into a 5-step while loop (smaller
    code), which costs a loop and its buffer copies at every call inside a training step.
    Unrolled, XLA fuses the whole hash into one elementwise loop: the salt-and-pepper noise of an
    autoencoder epoch fell from 0.23 s to a few hundredths (benchmarks/denoise_speed.py). A test
    checks equality with jax's function.
    """
    key1, key2 = (jnp.asarray(k, jnp.uint32) for k in keypair)
    flat = count.ravel().astype(jnp.uint32)
    odd = flat.shape[0] % 2
    if odd:
        flat = jnp.concatenate([flat, jnp.zeros(1, jnp.uint32)])
    x = list(jnp.split(flat, 2))
    ks = [key1, key2, key1 ^ key2 ^ jnp.uint32(0x1BD11BDA)]
    x[0], x[1] = x[0] + ks[0], x[1] + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x[0] = x[0] + x[1]
            x[1] = x[0] ^ ((x[1] << jnp.uint32(r)) | (x[1] >> jnp.uint32(32 - r)))
        x[0] = x[0] + ks[(i + 1) % 3]
        x[1] = x[1] + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    out = jnp.concatenate(x)
    return (out[:-1] if odd else out).reshape(count.shape)


def pixel_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform integers in 0..2^16 - 1 (int32) of `shape`: two per 32-bit word, four per threefry hash."""
    size = math.prod(shape)
    n_words = -(-size // 2)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and str(jax.random.key_impl(key)) == "threefry2x32":
        words = threefry_2x32_unrolled(jax.random.key_data(key), jnp.arange(n_words, dtype=jnp.uint32))
    else:
        words = jax.random.bits(key, (n_words,), jnp.uint32)
    halves = jnp.concatenate([words >> 16, words & 0xFFFF])[:size]
    return halves.astype(jnp.int32).reshape(shape)


def bits16_pixel_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """As `pixel_bits` but through `jax.random.bits`: two pixels per 32-bit word, one hash per word."""
    size = math.prod(shape)
    words = jax.random.bits(key, (-(-size // 2),), jnp.uint32)
    return jnp.concatenate([words >> 16, words & 0xFFFF])[:size].astype(jnp.int32).reshape(shape)


def _from_bits(u: jax.Array, x: jax.Array, level) -> jax.Array:
    # u < level * 2^16 <=> u < ceil(level * 2^16) for integer u: exact integer thresholds
    level = jnp.clip(jnp.asarray(level, jnp.float32), 0.0, 1.0)  # a traced level cannot be checked
    corrupt = u < jnp.ceil(level * 2.0**BITS_PER_PIXEL).astype(jnp.int32)
    salt = u < jnp.ceil(level * 2.0 ** (BITS_PER_PIXEL - 1)).astype(jnp.int32)
    return jnp.where(corrupt, salt.astype(x.dtype), x)


def salt_and_pepper(key: jax.Array, x: jax.Array, level: jax.Array | float) -> jax.Array:
    """x with each pixel kept with probability 1 - level, else set to 0 or 1 (equally likely).

    x: float images in [0, 1] of any shape; level: scalar (or broadcastable to x) in [0, 1],
    traced or concrete. Level 0 returns x unchanged, level 1 pure noise. Pure: the same key
    gives the same corruption. 16 random bits per pixel (see the module docstring).
    """
    check_level(level)
    if jnp.ndim(level) == 0:  # on a flat view: XLA:CPU vectorizes (B, 28, 28, 1) arrays badly
        return _from_bits(pixel_bits(key, (x.size,)), x.reshape(-1), level).reshape(x.shape)
    return _from_bits(pixel_bits(key, x.shape), x, level)


def salt_and_pepper_bits16(key: jax.Array, x: jax.Array, level: jax.Array | float) -> jax.Array:
    """`salt_and_pepper` with its 16 bits per pixel drawn through `jax.random.bits`; for comparison."""
    check_level(level)
    return _from_bits(bits16_pixel_bits(key, x.shape), x, level)


def salt_and_pepper_two_draws(key: jax.Array, x: jax.Array, level: jax.Array | float) -> jax.Array:
    """The naive formulation (two uniform draws per pixel), same distribution; for comparison."""
    check_level(level)
    keep_key, salt_key = jax.random.split(key)
    corrupt = jax.random.uniform(keep_key, x.shape) < level
    salt = jax.random.bernoulli(salt_key, 0.5, x.shape)
    return jnp.where(corrupt, salt.astype(x.dtype), x)


def salt_and_pepper_one_draw(key: jax.Array, x: jax.Array, level: jax.Array | float) -> jax.Array:
    """One 32-bit uniform per pixel holding both decisions; same distribution; for comparison."""
    check_level(level)
    u = jax.random.uniform(key, x.shape)
    return jnp.where(u < level, (u < 0.5 * jnp.asarray(level, jnp.float32)).astype(x.dtype), x)


def salt_and_pepper_each(key: jax.Array, x: jax.Array, level: jax.Array | float,
                         index: jax.Array | None = None) -> jax.Array:
    """`salt_and_pepper` of each image i of x (N, ...) drawn with `fold_in(key, index[i])`.

    `index` (default 0..N-1) names the images, so an image's corruption does not depend on
    how a set is batched: fixed evaluation sets and figures show the same noisy digits.
    """
    check_level(level)
    index = jnp.arange(x.shape[0]) if index is None else index
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    return jax.vmap(lambda k, xi: salt_and_pepper(k, xi, level))(keys, x)


def psnr(clean: jax.Array, other: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image (peak 1): 10 log10(1 / MSE), shape (N,).

    MSE is floored at 1e-10, so identical images give 100 dB rather than infinity.
    """
    diff = (clean.astype(jnp.float32) - other.astype(jnp.float32)).reshape(clean.shape[0], -1)
    return -10.0 * jnp.log10(jnp.maximum(jnp.mean(jnp.square(diff), axis=1), 1e-10))
