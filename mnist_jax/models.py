"""Flax linen modules (definitions only; training lives in `train.py`).

Rates that do not change shapes (dropout) are call arguments, not attributes, so they can be
traced and swept with `jax.vmap`; widths are attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax import noise


def dense_init(keras: bool):
    """Kernel initialiser: Keras' glorot-uniform or Flax's lecun-normal."""
    return nn.initializers.glorot_uniform() if keras else nn.initializers.lecun_normal()


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Inverted dropout with a traced rate in [0, 1): zero with probability `rate`.

    Each element gets 16 random bits (four elements per threefry hash, `noise.pixel_bits`)
    instead of a 32-bit uniform of its own, so the rate is resolved to 2^-16; `jax.random.bernoulli`
    spends a whole hash per element, which was a fifth of the CNN's train step on the CPU.
    """
    rate = jnp.asarray(rate, jnp.float32)
    drop_below = jnp.ceil(rate * 2.0**noise.BITS_PER_PIXEL).astype(jnp.int32)
    return jnp.where(noise.pixel_bits(key, x.shape) >= drop_below, x / (1.0 - rate), 0.0)


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


CONV_IMPLS = ("fused", "im2col", "lax")


def default_conv_impl(backend: str | None = None) -> str:
    """The fastest convolution formulation measured on `backend` (default: jax's backend).

    Measured with `benchmarks/cnn_speed.py` (the study CNN, batch 128, Adam, one run, steady-state
    epoch of 430 steps plus evaluation, inside the whole-run scan):
    - cpu: "fused" (im2col, with single-channel layers as one fused loop); XLA:CPU picks a slow
      convolution inside `lax.scan`. 2-core AMD EPYC: fused 10.85 s, im2col 23.11 s, lax about
      218 s per epoch (README, Speed).
    - gpu: "fused". One H100 (jax 0.11.2, CUDA 13, this code's convolutions at commit 9953d09),
      `../shared/measurements/h100-2026-11-27/log.txt`, section `== cnn_speed` (the command is not
      in the log; its header says the study model, 1 run, 55,000 images, median of 2 epochs, i.e.
      `python -m benchmarks.cnn_speed --impls lax,fused --epochs 2`): fused 0.07 s [0.07, 0.07]
      against lax (cuDNN) 0.11 s [0.11, 0.11] per epoch. Not measured there: im2col, cnn_best,
      vmapped runs, and deterministic GPU ops (on by default since; XLA_FLAGS was empty).
    - any other backend (TPU): "lax", the library convolution, not measured.
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
    would read that gradient kh * kw times). With more channels it is `im2col_conv`. Together
    with 16-bit dropout masks this took the study CNN's step from about 87 to 31 ms on the
    shared 2-core box.
    """
    return _fused_forward(x, kernel)


def _fused_forward(x, kernel):
    return _shift_sum_conv(x, kernel) if kernel.shape[2] <= 4 else im2col_conv(x, kernel)


def _fused_fwd(x, kernel):
    return _fused_forward(x, kernel), (x, kernel)


def _fused_bwd(residuals, dy):
    x, kernel = residuals
    kh, kw, c, f = kernel.shape
    d_kernel = jnp.einsum("bhwk,bhwf->kf", _patches(x, kh, kw, dy.shape[1], dy.shape[2]), dy).reshape(kernel.shape)
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


class Conv(nn.Module):
    """Stride-1 2-D convolution, NHWC, with the same params as nn.Conv (kernel HWIO, bias).

    `impl` picks the formulation ("im2col" or "lax"); both give the same outputs for the
    same params, so a model trained with one can be evaluated with the other.
    """

    features: int
    kernel_size: int = 3
    padding: str = "VALID"  # VALID | SAME
    impl: str = "im2col"
    keras_init: bool = True

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", dense_init(self.keras_init), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.padding == "SAME":
            lo = (k - 1) // 2
            x = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
        elif self.padding != "VALID":
            raise ValueError(f"padding must be 'VALID' or 'SAME', got {self.padding!r}")
        if self.impl == "fused":
            y = fused_conv(x, kernel)
        elif self.impl == "im2col":
            y = im2col_conv(x, kernel)
        elif self.impl == "lax":
            y = lax_conv(x, kernel)
        else:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS} or 'auto', got {self.impl!r}")
        return y + bias


class CNN(nn.Module):
    """[Conv ReLU (MaxPool 2x2, Dropout)] per filter count -> Flatten -> [Dense ReLU] -> Dense logits.

    `pool[i]` says whether conv layer i is followed by 2x2 max pooling and dropout (the study
    puts dropout right after its pooling layer); `dense=0` means no hidden dense layer, and
    `dense_dropout` adds dropout after it. The dropout rate is a traced call argument, the
    identity when `train=False`. The study's final net is the default: Conv 32 -> MaxPool ->
    Dropout -> Conv 32 -> Flatten -> Dense 32 -> Dense 10 (133,834 params). `conv_impl="auto"`
    resolves to `default_conv_impl()` when the module is applied.
    """

    filters: Sequence[int] = (32, 32)
    pool: Sequence[bool] = (True, False)
    dense: int = 32
    dense_dropout: bool = False
    kernel_size: int = 3
    padding: str = "VALID"
    num_classes: int = 10
    keras_init: bool = True
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        if len(self.pool) != len(self.filters):
            raise ValueError(f"pool {tuple(self.pool)} needs one entry per conv layer {tuple(self.filters)}")
        impl = default_conv_impl() if self.conv_impl == "auto" else self.conv_impl
        for features, pool in zip(self.filters, self.pool, strict=True):
            x = Conv(features, self.kernel_size, self.padding, impl, self.keras_init)(x)
            if pool:  # max pooling before ReLU gives the same values on a quarter of the elements
                x = nn.relu(max_pool_2x2(x))
                if train:
                    x = dropout(x, dropout_rate, self.make_rng("dropout"))
            else:
                x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        if self.dense:
            x = nn.relu(nn.Dense(self.dense, kernel_init=dense_init(self.keras_init))(x))
            if train and self.dense_dropout:
                x = dropout(x, dropout_rate, self.make_rng("dropout"))
        return nn.Dense(self.num_classes, kernel_init=dense_init(self.keras_init))(x)


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """A draw z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) from `key`: differentiable in mean, logvar."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


class VAEEncoder(nn.Module):
    """Image (B, 28, 28, 1) [+ one-hot label] -> (mean, logvar) of q(z | x), each (B, latent).

    Dense: Flatten -> [Dense ReLU] per `hidden`. Convolutional: Conv 32 3x3 /2 -> Conv 64 3x3 /2
    (7x7) -> Flatten -> Dense hidden[-1] ReLU. A label, when given, is concatenated to the
    flattened input of the dense layers.
    """

    latent: int
    hidden: Sequence[int] = (512, 256)
    conv: bool = False

    @nn.compact
    def __call__(self, x, onehot=None):
        if self.conv:
            x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2), padding="SAME")(x))
            x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2), padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        if onehot is not None:
            x = jnp.concatenate([x, onehot], axis=-1)
        for width in (self.hidden[-1:] if self.conv else self.hidden):
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.latent, name="mean")(x), nn.Dense(self.latent, name="logvar")(x)


class VAEDecoder(nn.Module):
    """Latent (B, latent) [+ one-hot label] -> Bernoulli logits (B, 28, 28, 1) of p(x | z).

    Dense: [Dense ReLU] per reversed `hidden` -> Dense 784. Convolutional: Dense hidden[-1] ReLU
    -> Dense 7x7x64 ReLU -> ConvTranspose 32 3x3 x2 ReLU -> ConvTranspose 1 3x3 x2.
    """

    hidden: Sequence[int] = (512, 256)
    conv: bool = False

    @nn.compact
    def __call__(self, z, onehot=None):
        if onehot is not None:
            z = jnp.concatenate([z, onehot], axis=-1)
        if self.conv:
            z = nn.relu(nn.Dense(self.hidden[-1])(z))
            z = nn.relu(nn.Dense(7 * 7 * 64)(z)).reshape(z.shape[0], 7, 7, 64)
            z = nn.relu(nn.ConvTranspose(32, (3, 3), strides=(2, 2), padding="SAME")(z))
            return nn.ConvTranspose(1, (3, 3), strides=(2, 2), padding="SAME")(z)
        for width in reversed(self.hidden):
            z = nn.relu(nn.Dense(width)(z))
        return nn.Dense(28 * 28)(z).reshape(z.shape[0], 28, 28, 1)


class VAE(nn.Module):
    """Variational autoencoder with a diagonal-Gaussian posterior, N(0, I) prior, Bernoulli decoder.

    `model.apply(params, x, key)` -> (logits (B, 28, 28, 1), mean, logvar): z is drawn from
    q(z | x) with the explicit `key` (reparameterisation). `encode` and `decode` are methods for
    `apply(..., method=...)`. `conditional=True` feeds the one-hot label (int labels (B,), a
    required argument then) into encoder and decoder. The dense default is 784-512-256-latent.
    """

    latent: int = 32
    hidden: Sequence[int] = (512, 256)
    conv: bool = False
    conditional: bool = False
    num_classes: int = 10

    def setup(self):
        self.encoder = VAEEncoder(self.latent, tuple(self.hidden), self.conv)
        self.decoder = VAEDecoder(tuple(self.hidden), self.conv)

    def _onehot(self, labels):
        if not self.conditional:
            return None
        if labels is None:
            raise ValueError("a conditional VAE needs the labels")
        return jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)

    def encode(self, x, labels=None):
        """(mean, logvar) of q(z | x[, label]), each (B, latent)."""
        return self.encoder(x, self._onehot(labels))

    def decode(self, z, labels=None):
        """Bernoulli logits (B, 28, 28, 1) of p(x | z[, label])."""
        return self.decoder(z, self._onehot(labels))

    def __call__(self, x, key, labels=None):
        mean, logvar = self.encode(x, labels)
        return self.decode(reparameterize(key, mean, logvar), labels), mean, logvar


class DenoisingAutoencoder(nn.Module):
    """Dense denoising autoencoder: Flatten -> [Dense ReLU] per `hidden` -> Dense ReLU `latent`
    -> [Dense ReLU] per reversed `hidden` -> Dense to the input size.

    The default is the study's (section 4): 784 -> 128 -> 96 -> 128 -> 784. Returns the output
    *logits* shaped like the input (B, 28, 28, 1), so the loss is binary cross-entropy from
    logits (stable) and `jax.nn.sigmoid(logits)` is the image.
    """

    hidden: Sequence[int] = (128,)
    latent: int = 96
    keras_init: bool = True

    @nn.compact
    def __call__(self, x):
        shape = x.shape
        init = dense_init(self.keras_init)
        h = x.reshape(shape[0], -1)
        for width in (*self.hidden, self.latent, *reversed(self.hidden)):
            h = nn.relu(nn.Dense(width, kernel_init=init)(h))
        return nn.Dense(math.prod(shape[1:]), kernel_init=init)(h).reshape(shape)


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


def from_config(cfg) -> nn.Module:
    """The module a config's `model` block describes (`kind` plus that module's fields)."""
    kinds = {"mlp": MLP, "cnn": CNN, "vae": VAE, "dae": DenoisingAutoencoder}
    fields = dict(cfg)
    kind = fields.pop("kind")
    if kind not in kinds:
        raise ValueError(f"model.kind must be one of {sorted(kinds)}, got {kind!r}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return kinds[kind](**fields)
