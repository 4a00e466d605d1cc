"""Performance kernels of the models: bit-level dropout, convolution formulations, 2x2 max
pooling with a one-pass gradient. Each computes what its plain JAX counterpart does (the tests
compare them); what each formulation costs is measured by `benchmarks/cnn_speed.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mnist_jax import noise


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Inverted dropout with a traced rate in [0, 1): zero with probability `rate`.

    Each element gets 16 random bits (four elements per threefry hash, `noise.pixel_bits`)
    instead of a 32-bit uniform of its own, so the rate is resolved to 2^-16; `jax.random.bernoulli`
    spends a whole hash per element, which was a fifth of the CNN's train step on the CPU.
    """
    rate = jnp.asarray(rate, jnp.float32)
    drop_below = jnp.ceil(rate * 2.0**noise.BITS_PER_PIXEL).astype(jnp.int32)
    keep = 1.0 - rate
    if x.dtype != keep.dtype:  # a model computing in bfloat16 keeps its activations bfloat16
        keep = keep.astype(x.dtype)
    return jnp.where(noise.pixel_bits(key, x.shape) >= drop_below, x / keep, 0.0)


CONV_IMPLS = ("fused", "im2col", "lax")


def default_conv_impl(backend: str | None = None) -> str:
    """The fastest convolution formulation measured on `backend` (default: jax's backend), by
    `benchmarks/cnn_speed.py` (numbers, machines and commits in the docs' performance page):
    "fused" on a CPU (im2col, single-channel layers as one fused loop: XLA:CPU picks a slow
    convolution inside `lax.scan`) and on a GPU; "lax", the library convolution, elsewhere (TPU,
    not measured).
    """
    return {"cpu": "fused", "gpu": "fused"}.get(backend or jax.default_backend(), "lax")


def _patches(x: jax.Array, kh: int, kw: int, ho: int, wo: int) -> jax.Array:
    """The kh * kw shifted (ho, wo) views of x (B, H, W, C) concatenated on channels, (i, j, c) order."""
    if x.shape[-1] == 1:  # stacked without the size-1 axis, which XLA:CPU vectorizes badly
        return jnp.stack([x[:, i:i + ho, j:j + wo, 0] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' stride-1 convolution of x (B, H, W, C) with kernel (kh, kw, C, F) as one matmul.

    The kh * kw shifted views of x are concatenated on the channel axis in (i, j, c) order,
    which is the row order of `kernel.reshape(kh * kw * C, F)`.
    """
    kh, kw, c, f = kernel.shape
    return _patches(x, kh, kw, x.shape[1] - kh + 1, x.shape[2] - kw + 1) @ kernel.reshape(kh * kw * c, f)


def _shift_sum_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' convolution as a sum of kh * kw shifted views of x times their kernel slice
    (elementwise products, for few input channels: XLA fuses the whole sum into one loop)."""
    kh, kw, c, f = kernel.shape
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    if c == 1:
        terms = [x[:, i:i + ho, j:j + wo, 0, None] * kernel[i, j, 0] for i in range(kh) for j in range(kw)]
    else:
        terms = [(x[:, i:i + ho, j:j + wo, :, None] * kernel[i, j]).sum(axis=-2) for i in range(kh) for j in range(kw)]
    return sum(terms[1:], terms[0])


@jax.custom_vjp
def fused_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' stride-1 convolution, the fastest formulation measured on XLA:CPU inside a scan.

    With few input channels (the first layer: C = 1) the shifted products are summed in one
    fused loop, so the (B, H, W, kh * kw) patch matrix is never written, and the kernel's
    gradient is one contraction of the patches with the output gradient (autodiff of the sum
    would read that gradient kh * kw times). With more channels it is `im2col_conv`. What it
    gains over the others on a backend: `benchmarks/cnn_speed.py`.
    """
    return _fused_forward(x, kernel)


def _fused_forward(x, kernel):
    return _shift_sum_conv(x, kernel) if kernel.shape[2] <= 4 else im2col_conv(x, kernel)


def _fused_fwd(x, kernel):
    return _fused_forward(x, kernel), (x, kernel)


def _fused_bwd(residuals, dy):
    x, kernel = residuals
    kh, kw, c, f = kernel.shape
    ho, wo = dy.shape[1], dy.shape[2]
    if c == 1:
        # The patches as (kh * kw, B * ho * wo) rows, the layout XLA gives the contraction's operand
        # anyway: stacked on the last axis they were built as kh * kw size-1 slices, then
        # transposed (about 3 of the 25 ms of a CNN step on the CPU); built as rows the same dot reads the
        # same numbers, bit for bit (tested).
        cols = jnp.stack([x[:, i:i + ho, j:j + wo, 0].reshape(-1) for i in range(kh) for j in range(kw)])
        d_kernel = jnp.einsum("kn,nf->kf", cols, dy.reshape(-1, f)).reshape(kernel.shape)
    else:
        d_kernel = jnp.einsum("bhwk,bhwf->kf", _patches(x, kh, kw, ho, wo), dy).reshape(kernel.shape)
    _, x_vjp = jax.vjp(lambda x: _fused_forward(x, kernel), x)  # unused for the input images: XLA drops it
    return x_vjp(dy)[0], d_kernel


fused_conv.defvjp(_fused_fwd, _fused_bwd)


def lax_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' stride-1 convolution with `lax.conv_general_dilated` (what nn.Conv runs)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, odd edges dropped (Keras' MaxPooling2D), as reshape + max."""
    b, h, w, c = x.shape
    return _pool_windows(x[:, :h - h % 2, :w - w % 2])


@jax.custom_vjp
def _pool_windows(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


# The gradient flows to the window's maximum in one fused select; autodiff of the reduction
# takes several passes and was about half the cost of the first conv layer's step on the CPU.
# Exact ties (which need equal pre-activations) send the gradient to every tied entry.
def _pool_windows_fwd(x):
    b, h, w, c = x.shape
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c)
    y = windows.max(axis=(2, 4))
    return y, windows == y[:, :, None, :, None, :]


def _pool_windows_bwd(is_max, g):
    gx = jnp.where(is_max, g[:, :, None, :, None, :], 0.0)
    b, h, _, w, _, c = gx.shape
    return (gx.reshape(b, 2 * h, 2 * w, c),)


_pool_windows.defvjp(_pool_windows_fwd, _pool_windows_bwd)
