"""Flax linen modules (definitions only: training lives in `train.py`, the performance kernels
they call, such as im2col and fused convolutions, in `kernels.py`).

Rates that do not change shapes (dropout) are call arguments, not attributes, so they can be
traced and swept with `jax.vmap`; widths are attributes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

try:  # jax's dead-code elimination of a jaxpr: which inputs an output needs (no public API has it)
    from jax._src.interpreters.partial_eval import dce_jaxpr
except ImportError:  # another jax: every call argument counts as used
    dce_jaxpr = None

from mnist_jax import precision as precision_lib
from mnist_jax.config import ConfigError
from mnist_jax.data import IMAGE_SHAPE
from mnist_jax.kernels import (  # noqa: F401  (CONV_IMPLS and default_conv_impl: part of this module's API)
    CONV_IMPLS,
    conv_transpose,
    conv_transpose_scatter,
    default_conv_impl,
    default_strided_conv_impl,
    dropout,
    fused_conv,
    im2col_conv,
    lax_conv,
    lax_conv_transpose,
    max_pool_2x2,
    strided_conv,
    strided_conv_im2col,
)
from mnist_jax.precision import DEFAULT_COMPUTE_DTYPE, dtype_of, is_reduced

EVAL_BATCH = 1000  # images per evaluation batch unless a model says otherwise


def float32_out(y: jax.Array, dtype: Any) -> jax.Array:
    """A module's output in float32 (losses, softmax and argmax stay float32) when it computes in
    a reduced `dtype`; unchanged otherwise, so the float32 program is the one without a dtype."""
    return y.astype(jnp.float32) if is_reduced(dtype) else y


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
    dtype: Any = None  # compute dtype (None: float32); params stay float32

    def describe(self) -> str:
        """'MLP 784-64-64-10', with ', dropout' when it has dropout layers."""
        return "MLP " + "-".join(str(w) for w in (784, *self.hidden, self.num_classes)) + (", dropout" if self.dropout else "")

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0, input_dropout_rate=0.0):
        x = x.reshape(x.shape[0], -1)
        use_dropout = self.dropout and train
        if use_dropout:
            x = dropout(x, input_dropout_rate, self.make_rng("dropout"))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=dense_init(self.keras_init), dtype=self.dtype)(x))
            if use_dropout:
                x = dropout(x, dropout_rate, self.make_rng("dropout"))
        return float32_out(nn.Dense(self.num_classes, kernel_init=dense_init(self.keras_init), dtype=self.dtype)(x),
                           self.dtype)


def _check_impl(impl: str) -> None:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS} or 'auto', got {impl!r}")


class Conv(nn.Module):
    """2-D convolution, NHWC, with the same params as nn.Conv (kernel HWIO, bias).

    `impl` picks the formulation ("fused", "im2col" or "lax"); all give the same outputs for
    the same params, so a model trained with one can be evaluated with another. A `stride`
    above 1 pads 'SAME' as nn.Conv does (`kernels.same_padding`).
    """

    features: int
    kernel_size: int = 3
    padding: str = "VALID"  # VALID | SAME
    impl: str = "im2col"
    keras_init: bool = True
    dtype: Any = None  # compute dtype (None: float32); params stay float32
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", dense_init(self.keras_init), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if is_reduced(self.dtype):
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.stride != 1:
            if self.padding != "SAME":
                raise ValueError(f"a strided Conv pads 'SAME', got {self.padding!r}")
            _check_impl(self.impl)
            if self.impl == "lax":
                return lax_conv(x, kernel, self.stride, "SAME") + bias
            return {"fused": strided_conv, "im2col": strided_conv_im2col}[self.impl](x, kernel, self.stride) + bias
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
            _check_impl(self.impl)
        return y + bias


class ConvTranspose(nn.Module):
    """Transposed 2-D convolution padded 'SAME', NHWC: what nn.ConvTranspose(features, (k, k),
    strides=(stride, stride)) computes, with its params (kernel HWIO, lecun-normal; bias) and
    its name in a params tree. `impl` picks the formulation ("fused", "im2col" or "lax")."""

    features: int
    kernel_size: int = 3
    stride: int = 2
    impl: str = "fused"
    dtype: Any = None  # compute dtype (None: float32); params stay float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if is_reduced(self.dtype):
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        _check_impl(self.impl)
        conv = {"fused": conv_transpose, "im2col": conv_transpose_scatter, "lax": lax_conv_transpose}[self.impl]
        return conv(x, kernel, self.stride) + bias


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
    dtype: Any = None  # compute dtype (None: float32); params stay float32

    # XLA:CPU runs a vmapped convolutional step slower per run than a single run's
    # (`benchmarks/cnn_speed.py --runs 5`), so its runs train one at a time there.
    vmap_slow_on = ("cpu",)

    def describe(self) -> str:
        """e.g. 'Conv32-Pool-Drop-Conv32-Dense32' (SAME padding and dense dropout marked)."""
        parts = []
        for f, pool in zip(self.filters, self.pool, strict=True):
            parts.append(f"Conv{f}" + ("s" if self.padding == "SAME" else ""))
            if pool:
                parts += ["Pool", "Drop"]
        if self.dense:
            parts.append(f"Dense{self.dense}" + ("-Drop" if self.dense_dropout else ""))
        return "-".join(parts)

    def eval_batch(self, backend: str) -> int:
        """Images per evaluation batch: on a CPU the im2col patches of a batch of 1,000 are far
        larger than the caches, so it evaluates 250 at a time (docs/performance.md)."""
        return 250 if backend == "cpu" else EVAL_BATCH

    def conv_formulation(self) -> str:
        """The convolution formulation this model computes with on jax's backend."""
        return default_conv_impl() if self.conv_impl == "auto" else self.conv_impl

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        if len(self.pool) != len(self.filters):
            raise ValueError(f"pool {tuple(self.pool)} needs one entry per conv layer {tuple(self.filters)}")
        impl = self.conv_formulation()
        for features, pool in zip(self.filters, self.pool, strict=True):
            x = Conv(features, self.kernel_size, self.padding, impl, self.keras_init, self.dtype)(x)
            if pool:  # max pooling before ReLU gives the same values on a quarter of the elements
                x = nn.relu(max_pool_2x2(x))
                if train:
                    x = dropout(x, dropout_rate, self.make_rng("dropout"))
            else:
                x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        if self.dense:
            x = nn.relu(nn.Dense(self.dense, kernel_init=dense_init(self.keras_init), dtype=self.dtype)(x))
            if train and self.dense_dropout:
                x = dropout(x, dropout_rate, self.make_rng("dropout"))
        return float32_out(nn.Dense(self.num_classes, kernel_init=dense_init(self.keras_init), dtype=self.dtype)(x),
                           self.dtype)


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
    dtype: Any = None  # compute dtype (None: float32); params stay float32
    conv_impl: str = "lax"  # the convolution formulation (`Conv`); "lax" is nn.Conv itself

    @nn.compact
    def __call__(self, x, onehot=None):
        if self.conv:
            for features in (32, 64):
                if self.conv_impl == "lax":
                    layer = nn.Conv(features, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype)
                else:  # the same params and the same name ("Conv_<i>") as nn.Conv's
                    layer = Conv(features, 3, "SAME", self.conv_impl, keras_init=False, dtype=self.dtype, stride=2)
                x = nn.relu(layer(x))
        x = x.reshape(x.shape[0], -1)
        if onehot is not None:
            x = jnp.concatenate([x, onehot], axis=-1)
        for width in (self.hidden[-1:] if self.conv else self.hidden):
            x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
        return (float32_out(nn.Dense(self.latent, name="mean", dtype=self.dtype)(x), self.dtype),
                float32_out(nn.Dense(self.latent, name="logvar", dtype=self.dtype)(x), self.dtype))


class VAEDecoder(nn.Module):
    """Latent (B, latent) [+ one-hot label] -> Bernoulli logits (B, 28, 28, 1) of p(x | z).

    Dense: [Dense ReLU] per reversed `hidden` -> Dense 784. Convolutional: Dense hidden[-1] ReLU
    -> Dense 7x7x64 ReLU -> ConvTranspose 32 3x3 x2 ReLU -> ConvTranspose 1 3x3 x2.
    """

    hidden: Sequence[int] = (512, 256)
    conv: bool = False
    dtype: Any = None  # compute dtype (None: float32); params stay float32
    conv_impl: str = "lax"  # the transposed convolution's formulation (`ConvTranspose`); "lax" is nn.ConvTranspose

    def _up(self, features: int) -> nn.Module:
        if self.conv_impl == "lax":
            return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype)
        return ConvTranspose(features, 3, 2, self.conv_impl, self.dtype)  # nn.ConvTranspose's params and name

    @nn.compact
    def __call__(self, z, onehot=None):
        if onehot is not None:
            z = jnp.concatenate([z, onehot], axis=-1)
        if self.conv:
            z = nn.relu(nn.Dense(self.hidden[-1], dtype=self.dtype)(z))
            z = nn.relu(nn.Dense(7 * 7 * 64, dtype=self.dtype)(z)).reshape(z.shape[0], 7, 7, 64)
            z = nn.relu(self._up(32)(z))
            return float32_out(self._up(1)(z), self.dtype)
        for width in reversed(self.hidden):
            z = nn.relu(nn.Dense(width, dtype=self.dtype)(z))
        return float32_out(nn.Dense(28 * 28, dtype=self.dtype)(z), self.dtype).reshape(z.shape[0], 28, 28, 1)


class VAE(nn.Module):
    """Variational autoencoder with a diagonal-Gaussian posterior, N(0, I) prior, Bernoulli decoder.

    `model.apply(params, x, key)` -> (logits (B, 28, 28, 1), mean, logvar): z is drawn from
    q(z | x) with the explicit `key` (reparameterisation). `encode` and `decode` are methods for
    `apply(..., method=...)`. `conditional=True` feeds the one-hot label (int labels (B,), a
    required argument then) into encoder and decoder. The dense default is 784-512-256-latent.
    `conv_impl` is the formulation of the convolutional model's strided and transposed
    convolutions ("lax": nn.Conv and nn.ConvTranspose); "auto" resolves to
    `default_strided_conv_impl()` when the module is applied. Every formulation has the same params.
    """

    latent: int = 32
    hidden: Sequence[int] = (512, 256)
    conv: bool = False
    conditional: bool = False
    num_classes: int = 10
    dtype: Any = None  # compute dtype (None: float32); params stay float32
    conv_impl: str = "auto"

    @property
    def vmap_slow_on(self) -> tuple[str, ...]:
        """Convolutional: one run per program on a CPU, where a vmapped step of its convolutions
        costs as much per run as one run's or more (`benchmarks/vae_speed.py`)."""
        return ("cpu",) if self.conv else ()

    def describe(self) -> str:
        """e.g. 'dense VAE 784-512-256-32' or 'conditional convolutional VAE ... latent 32'."""
        body = ("convolutional VAE Conv32/2-Conv64/2-Dense" + str(self.hidden[-1]) if self.conv
                else "dense VAE " + "-".join(str(w) for w in (784, *self.hidden)))
        return ("conditional " if self.conditional else "") + f"{body}-{self.latent}"

    def init_inputs(self, x: jax.Array) -> tuple:
        """The arguments `init` takes besides the key: images, a latent key and labels."""
        return x, jax.random.key(1), jnp.zeros((x.shape[0],), jnp.int32)

    def conv_formulation(self) -> str | None:
        """The formulation of the strided and transposed convolutions on jax's backend (None: dense)."""
        if not self.conv:
            return None
        return default_strided_conv_impl() if self.conv_impl == "auto" else self.conv_impl

    def setup(self):
        impl = self.conv_formulation()
        if self.conv:
            _check_impl(impl)
        self.encoder = VAEEncoder(self.latent, tuple(self.hidden), self.conv, self.dtype, impl)
        self.decoder = VAEDecoder(tuple(self.hidden), self.conv, self.dtype, impl)

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
    dtype: Any = None  # compute dtype (None: float32); params stay float32

    def describe(self) -> str:
        """e.g. '784-128-96-128-784'."""
        return "-".join(str(w) for w in (784, *self.hidden, self.latent, *reversed(self.hidden), 784))

    @nn.compact
    def __call__(self, x):
        shape = x.shape
        init = dense_init(self.keras_init)
        h = x.reshape(shape[0], -1)
        for width in (*self.hidden, self.latent, *reversed(self.hidden)):
            h = nn.relu(nn.Dense(width, kernel_init=init, dtype=self.dtype)(h))
        return float32_out(nn.Dense(math.prod(shape[1:]), kernel_init=init, dtype=self.dtype)(h), self.dtype).reshape(shape)


# --- What a model says about itself ---
#
# A model is any flax module; it may declare, as attributes or methods of its own class:
#   describe() -> str               a one-line description for figures and reports
#   vmap_slow_on: tuple[str, ...]   backends where a vmapped training step costs more per run
#   eval_batch(backend) -> int      images per evaluation batch
#   init_inputs(x) -> tuple         what `init` takes besides the key (default: the images)
#   traced: tuple[str, ...]         its traced call arguments (default: the keyword arguments of
#                                   `__call__` with a numeric default, such as dropout_rate)
#   dtype: Any = None               a field: the dtype it computes in, which `from_config` sets from
#                                   config.compute_dtype (passed on to its flax layers' `dtype`; params
#                                   stay float32). A model without it computes in float32 only.
# The functions below give each capability with its default, so no other module asks what
# class a model is.

BUILTIN = {"mlp": MLP, "cnn": CNN, "vae": VAE, "dae": DenoisingAutoencoder}


def model_class(kind: str) -> type[nn.Module]:
    """The module class of `kind`: a built-in name (`BUILTIN`) or `package.module:Class`
    importable from sys.path (a researcher's own file). ConfigError says what is wrong."""
    if kind in BUILTIN:
        return BUILTIN[kind]
    module_name, sep, class_name = str(kind).partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"model.kind={kind!r}: expected one of {sorted(BUILTIN)} or 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # a researcher's module is user code: any failure to import it is theirs
        raise ConfigError(f"model.kind={kind!r}: cannot import {module_name!r} ({type(err).__name__}: {err}); "
                          "is its folder on PYTHONPATH?") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model.kind={kind!r}: {module_name} has no flax module {class_name!r}")
    return cls


def kind_of(model: nn.Module) -> str:
    """The `model.kind` that builds this model's class: its built-in name or `module:Class`."""
    cls = type(model)
    name = next((k for k, c in BUILTIN.items() if c is cls), None)
    return name or f"{cls.__module__}:{cls.__qualname__}"


def fields_of(cls: type[nn.Module]) -> tuple[str, ...]:
    """The fields a config block can set on a module class (its dataclass fields)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def from_config(cfg, compute_dtype: str = DEFAULT_COMPUTE_DTYPE) -> nn.Module:
    """The module a config's `model` block describes (`kind` plus that module's fields), computing
    in `compute_dtype` (the config's top-level field, `mnist_jax.precision`).

    The compute dtype is the module's `dtype` field, as in flax's own layers: every built-in model
    has one, and a researcher's model that declares `dtype` gets it too. "float32" builds the
    model as its class defines it unless that default computes in less; a reduced dtype for a
    model without a `dtype` field is a ConfigError (it could not honour it)."""
    fields = dict(cfg)
    kind = fields.pop("kind")
    cls = model_class(kind)
    if "dtype" in fields:
        raise ConfigError(f"model.dtype: the compute dtype is the top-level config.compute_dtype "
                          f"(one of {', '.join(precision_lib.COMPUTE_DTYPES)}), not a field of the model block")
    unknown = sorted(set(fields) - set(fields_of(cls)))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: the model {kind!r} has no field {unknown[0]!r} "
                          f"(its fields: {', '.join(fields_of(cls))})")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    has_dtype = "dtype" in fields_of(cls)
    default = next((f.default for f in dataclasses.fields(cls) if f.name == "dtype"), None)
    if compute_dtype != DEFAULT_COMPUTE_DTYPE or (has_dtype and default is not dataclasses.MISSING and is_reduced(default)):
        if not has_dtype:
            raise ConfigError(f"config.compute_dtype={compute_dtype!r}: the model {kind!r} has no `dtype` field to compute "
                              "in it (a flax module declares `dtype: Any = None` and passes it to its layers)")
        fields["dtype"] = dtype_of(compute_dtype)
    return cls(**fields)


def split_block(block) -> tuple[dict, dict]:
    """(model block, traced call arguments) of a config block that may give both, e.g.
    {"kind": "cnn", "filters": (32, 32), "dropout_rate": 0.5} -> the CNN's block and {"dropout_rate": 0.5}."""
    fields = dict(block)
    traced = call_hparams(model_class(fields["kind"]))
    return {k: v for k, v in fields.items() if k not in traced}, {k: v for k, v in fields.items() if k in traced}


def describe(model: nn.Module) -> str:
    """The model's one-line description (its `describe()`, else its kind and fields)."""
    if callable(getattr(model, "describe", None)):
        return model.describe()
    fields = ", ".join(f"{k}={getattr(model, k)!r}" for k in fields_of(type(model)))
    return f"{kind_of(model)}({fields})"


def conv_formulation(model: nn.Module) -> str | None:
    """The convolution formulation the model computes with here (None: it offers no choice of one)."""
    method = getattr(model, "conv_formulation", None)
    return method() if callable(method) else None


def vmap_slow_on(model: nn.Module) -> tuple[str, ...]:
    """Backends on which a vmapped training step of `model` costs more per run than one run's
    (the model's `vmap_slow_on`, else none): its runs train one at a time there."""
    return tuple(getattr(model, "vmap_slow_on", ()))


def eval_batch_size(model: nn.Module, backend: str | None = None) -> int:
    """Images per evaluation batch (the model's `eval_batch(backend)`, else `EVAL_BATCH`); a
    divisor of 5,000 and 10,000, so no batch is padded."""
    size = getattr(model, "eval_batch", None)
    return int(size(backend or jax.default_backend())) if callable(size) else EVAL_BATCH


def init_inputs(model: nn.Module, x: jax.Array) -> tuple:
    """What `model.init` takes besides its key, for images x."""
    inputs = getattr(model, "init_inputs", None)
    return tuple(inputs(x)) if callable(inputs) else (x,)


def init_shapes(model: nn.Module, runs: int | None = None) -> Any:
    """Shapes of one run's params of `model`, or of `runs` runs stacked on a leading run axis
    (nothing is allocated)."""
    x = jnp.zeros((1, *IMAGE_SHAPE))
    one = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model, x)))
    if runs is None:
        return one
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((runs, *a.shape), a.dtype), one)


def call_hparams(model: nn.Module | type[nn.Module]) -> tuple[str, ...]:
    """The traced call arguments a model class (or a model's) takes: its `traced` declaration,
    else the keyword arguments of `__call__` with a numeric default (`train` is not one)."""
    cls = model if isinstance(model, type) else type(model)
    declared = getattr(cls, "traced", None)
    if declared is not None:
        return tuple(declared)
    params = inspect.signature(cls.__call__).parameters.values()
    return tuple(p.name for p in params
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "train"
                 and isinstance(p.default, (int, float)) and not isinstance(p.default, bool))


def takes_train(model: nn.Module) -> bool:
    """Whether the model's `__call__` takes `train` (its training-mode switch: dropout and the like)."""
    return "train" in inspect.signature(type(model).__call__).parameters


@functools.lru_cache(maxsize=256)
def _used_hparams(model: nn.Module, names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of `names` the training-mode output of `model` depends on: traced abstractly, each
    argument an input of the program, and kept where the output needs it (nothing compiles)."""
    x = jnp.zeros((1, *IMAGE_SHAPE))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *init_inputs(model, x)))

    def apply(params, values):
        kwargs = dict(zip(names, values, strict=True))
        if takes_train(model):
            kwargs["train"] = True
        return model.apply(params, x, rngs={"dropout": jax.random.key(0)}, **kwargs)

    if dce_jaxpr is None:
        return names
    scalars = [jax.ShapeDtypeStruct((), jnp.float32)] * len(names)
    jaxpr = jax.make_jaxpr(apply)(params, scalars).jaxpr
    _, used = dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return tuple(n for n, u in zip(names, used[-len(names):], strict=True) if u)


def traced_hparams(model: nn.Module) -> tuple[str, ...]:
    """The traced call arguments (hyperparameters) `model` reads when it trains in its
    configuration: a dropout rate of a model with no dropout layer is not among them."""
    names = call_hparams(model)
    return _used_hparams(model, names) if names else ()


def unused_hparams(model: nn.Module) -> tuple[str, ...]:
    """The call arguments the model's class takes but this configuration of it never reads."""
    used = traced_hparams(model)
    return tuple(n for n in call_hparams(model) if n not in used)


def role(model: nn.Module) -> str | None:
    """What the model does, from shapes alone: "classifier" (images -> logits (B, 10)),
    "denoiser" (images -> images), "generative" (it has `encode` and `decode`), else None."""
    if callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)):
        return "generative"
    x = jnp.zeros((2, *IMAGE_SHAPE))
    try:
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
        out = jax.eval_shape(lambda p: model.apply(p, x), params)
    except Exception:  # noqa: BLE001 - a model that cannot take images alone has no role here
        return None
    shape = getattr(out, "shape", None)
    return "classifier" if shape == (2, 10) else "denoiser" if shape == x.shape else None


def is_classifier(model: nn.Module) -> bool:
    """Whether the model maps images (B, 28, 28, 1) to class logits (B, 10)."""
    return role(model) == "classifier"


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
