"""Flax linen modules (definitions only: training lives in `train.py`, the performance kernels
they call, such as im2col and fused convolutions, in `kernels.py`).

Rates that do not change shapes (dropout) are call arguments, not attributes, so they can be
traced and swept with `jax.vmap`; widths are attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.kernels import (  # noqa: F401  (CONV_IMPLS and default_conv_impl: part of this module's API)
    CONV_IMPLS,
    default_conv_impl,
    dropout,
    fused_conv,
    im2col_conv,
    lax_conv,
    max_pool_2x2,
)


def dense_init(keras: bool):
    """Kernel initialiser: Keras' glorot-uniform or Flax's lecun-normal."""
    return nn.initializers.glorot_uniform() if keras else nn.initializers.lecun_normal()


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


def architecture(model: CNN) -> str:
    """e.g. 'Conv32-Pool-Drop-Conv32-Dense32' (SAME padding and dense dropout marked)."""
    parts = []
    for f, pool in zip(model.filters, model.pool, strict=True):
        parts.append(f"Conv{f}" + ("s" if model.padding == "SAME" else ""))
        if pool:
            parts += ["Pool", "Drop"]
    if model.dense:
        parts.append(f"Dense{model.dense}" + ("-Drop" if model.dense_dropout else ""))
    return "-".join(parts)


def traced_hparams(model: nn.Module) -> tuple[str, ...]:
    """The traced call arguments (hyperparameters) `model` reads when it trains."""
    if isinstance(model, MLP):
        return ("dropout_rate", "input_dropout_rate") if model.dropout else ()
    if isinstance(model, CNN):
        return ("dropout_rate",) if any(model.pool) or model.dense_dropout else ()
    return ()


def vmap_slow_on(model: nn.Module) -> tuple[str, ...]:
    """Backends on which a vmapped training step of `model` costs more per run than one run's.

    XLA:CPU runs a vmapped convolutional step slower per run than a single one, while dense
    nets gain from vmapping (`benchmarks/cnn_speed.py --runs 5` measures it; numbers in the README).
    """
    convolutional = isinstance(model, CNN) or (isinstance(model, VAE) and model.conv)
    return ("cpu",) if convolutional else ()


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


KINDS = {"mlp": MLP, "cnn": CNN, "vae": VAE, "dae": DenoisingAutoencoder}  # a model block's `kind` -> its module


def from_config(cfg) -> nn.Module:
    """The module a config's `model` block describes (`kind` plus that module's fields)."""
    fields = dict(cfg)
    kind = fields.pop("kind")
    if kind not in KINDS:
        raise ValueError(f"model.kind must be one of {sorted(KINDS)}, got {kind!r}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return KINDS[kind](**fields)
