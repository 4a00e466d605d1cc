"""Performance kernels of the models: bit-level dropout, convolution formulations (stride 1,
strided and transposed), 2x2 max pooling with a one-pass gradient. Each computes what its plain
JAX counterpart does (the tests compare them); what each formulation costs is measured by
`benchmarks/cnn_speed.py` and `benchmarks/vae_speed.py`.
"""

from __future__ import annotations

import functools

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


def default_strided_conv_impl(backend: str | None = None) -> str:
    """The fastest formulation of the strided and transposed convolutions (the convolutional
    VAE's) measured on `backend` (default: jax's backend) by `benchmarks/vae_speed.py`: "fused"
    on a CPU, where the library's strided convolutions take XLA:CPU's slow generic path; "lax"
    elsewhere (not measured)."""
    return {"cpu": "fused"}.get(backend or jax.default_backend(), "lax")


def _patches(x: jax.Array, kh: int, kw: int, ho: int, wo: int, stride: int = 1) -> jax.Array:
    """The kh * kw shifted (ho, wo) views of x (B, H, W, C), every `stride`-th row and column,
    concatenated on channels, (i, j, c) order."""
    s = stride
    if x.shape[-1] == 1:  # stacked without the size-1 axis, which XLA:CPU vectorizes badly
        return jnp.stack([x[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, 0]
                          for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.concatenate([x[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s, :]
                            for i in range(kh) for j in range(kw)], axis=-1)


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


def lax_conv(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: str = "VALID") -> jax.Array:
    """Convolution with `lax.conv_general_dilated` (what nn.Conv runs): 'VALID' stride 1 unless told."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of one spatial axis that 'SAME' means for `lax.conv_general_dilated`
    (and so nn.Conv): ceil(size / stride) outputs, the odd pad at the high end."""
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _scatter_patches(p: jax.Array, kh: int, kw: int, h: int, w: int, stride: int = 1) -> jax.Array:
    """The adjoint of `_patches`: p (B, ho, wo, kh * kw * C) in (i, j, c) order summed into
    (B, h, w, C), view (i, j) of output (m, n) landing at (stride * m + i, stride * n + j); what
    lands past (h, w) is dropped.

    Output row stride * m' + r (phase r) receives view i = r + stride * q from input row m' - q,
    so each of the stride^2 phases is a sum of shifted (ho, wo) arrays with no zeros inserted,
    and the phases interleave into the output by one reshape.
    """
    s = stride
    b, ho, wo, _ = p.shape
    c = p.shape[-1] // (kh * kw)
    p = p.reshape(b, ho, wo, kh, kw, c)
    mh, mw = -(-h // s), -(-w // s)

    def shifted(i, j):
        qi, qj = i // s, j // s
        view = jnp.pad(p[:, :, :, i, j, :], ((0, 0), (qi, max(0, mh - ho - qi)), (qj, max(0, mw - wo - qj)), (0, 0)))
        return view[:, :mh, :mw]

    phases = []
    for ri in range(s):
        row = []
        for rj in range(s):
            terms = [shifted(i, j) for i in range(ri, kh, s) for j in range(rj, kw, s)]
            row.append(sum(terms[1:], terms[0]) if terms else jnp.zeros((b, mh, mw, c), p.dtype))
        phases.append(jnp.stack(row, axis=3))  # (B, mh, mw, s, C)
    return jnp.stack(phases, axis=2).reshape(b, mh * s, mw * s, c)[:, :h, :w]


def _pad_same(x, kh: int, kw: int, stride: int) -> tuple[jax.Array, int, int]:
    """x padded as 'SAME' pads it for a (kh, kw) kernel at `stride`, and its low padding (rows, columns)."""
    (lo_h, hi_h), (lo_w, hi_w) = same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)
    return jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0))), lo_h, lo_w


def _strided_forward(x, kernel, stride):
    kh, kw, c, f = kernel.shape
    xp, _, _ = _pad_same(x, kh, kw, stride)
    ho, wo = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    return _patches(xp, kh, kw, ho, wo, stride) @ kernel.reshape(kh * kw * c, f)


def strided_conv_im2col(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """'SAME' convolution of x (B, H, W, C) with kernel (kh, kw, C, F) at `stride`, as
    `lax.conv_general_dilated` pads it: the kh * kw strided views of the padded input times
    `kernel.reshape(kh * kw * C, F)` in one matmul, differentiated by autodiff."""
    return _strided_forward(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def strided_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`strided_conv_im2col` with its gradients as products too: the kernel's is the patches
    contracted with the output gradient, the input's the output gradient times the kernel's
    transpose scattered back onto the strided views (`_scatter_patches`, a transposed
    convolution), where autodiff of the strided slices pads each view with zeros."""
    return _strided_forward(x, kernel, stride)


def _strided_fwd(x, kernel, stride):
    return _strided_forward(x, kernel, stride), (x, kernel)


def _strided_bwd(stride, residuals, dy):
    x, kernel = residuals
    kh, kw, c, f = kernel.shape
    ho, wo = dy.shape[1], dy.shape[2]
    xp, lo_h, lo_w = _pad_same(x, kh, kw, stride)
    d_kernel = jnp.einsum("bhwk,bhwf->kf", _patches(xp, kh, kw, ho, wo, stride), dy).reshape(kernel.shape)
    d_patches = dy @ kernel.reshape(kh * kw * c, f).T
    dxp = _scatter_patches(d_patches, kh, kw, xp.shape[1], xp.shape[2], stride)  # unused for the input images: XLA drops it
    return dxp[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2]], d_kernel


strided_conv.defvjp(_strided_fwd, _strided_bwd)


def _transpose_offset(k: int, stride: int) -> int:
    """Where the 'SAME' output of `lax.conv_transpose` starts in the full scatter of the kernel
    (length (H - 1) * stride + k): k - 1 less its padding of the dilated input."""
    pad_len = k + stride - 2
    return k - 1 - (k - 1 if stride > k - 1 else -(-pad_len // 2))


def _transpose_operands(kernel):
    """kernel (kh, kw, C, F) as the (C, kh * kw * F) matrix whose column (i, j, f) is
    kernel[kh - 1 - i, kw - 1 - j, :, f]: `lax.conv_transpose` without `transpose_kernel`
    correlates the dilated input with the unflipped kernel, so input (m, n) reaches full
    output (stride * m + i, stride * n + j) through the flipped one."""
    kh, kw, c, f = kernel.shape
    return kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(c, kh * kw * f)


def _transpose_forward(x, kernel, stride):
    kh, kw, c, f = kernel.shape
    oh, ow = _transpose_offset(kh, stride), _transpose_offset(kw, stride)
    h, w = x.shape[1] * stride, x.shape[2] * stride
    full = _scatter_patches(x @ _transpose_operands(kernel), kh, kw, oh + h, ow + w, stride)
    return full[:, oh:, ow:]


def conv_transpose_scatter(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`lax.conv_transpose(x, kernel, (stride, stride), 'SAME')` (nn.ConvTranspose's default,
    `transpose_kernel=False`) of x (B, H, W, C) with kernel (kh, kw, C, F), (B, stride * H,
    stride * W, F): one product of x with every kernel tap, then the kh * kw contributions
    summed at their strided offsets (`_scatter_patches`), differentiated by autodiff."""
    return _transpose_forward(x, kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`conv_transpose_scatter` with its gradients as products: the output gradient's strided
    patches (a strided convolution) times the kernel for the input, contracted with the input
    for the kernel."""
    return _transpose_forward(x, kernel, stride)


def _transpose_fwd(x, kernel, stride):
    return _transpose_forward(x, kernel, stride), (x, kernel)


def _transpose_bwd(stride, residuals, dy):
    x, kernel = residuals
    kh, kw, c, f = kernel.shape
    b, h, w, _ = x.shape
    oh, ow = _transpose_offset(kh, stride), _transpose_offset(kw, stride)
    full_h, full_w = (h - 1) * stride + kh, (w - 1) * stride + kw
    dfull = jnp.pad(dy, ((0, 0), (oh, max(0, full_h - oh - dy.shape[1])), (ow, max(0, full_w - ow - dy.shape[2])), (0, 0)))
    d_patches = _patches(dfull, kh, kw, h, w, stride)  # (B, H, W, kh * kw * F)
    operands = _transpose_operands(kernel)
    d_operands = jnp.einsum("bhwc,bhwk->ck", x, d_patches)
    d_kernel = d_operands.reshape(c, kh, kw, f).transpose(1, 2, 0, 3)[::-1, ::-1]
    return d_patches @ operands.T, d_kernel


conv_transpose.defvjp(_transpose_fwd, _transpose_bwd)


def lax_conv_transpose(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """'SAME' transposed convolution with `lax.conv_transpose` (what nn.ConvTranspose runs)."""
    return jax.lax.conv_transpose(x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


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
