"""VAE math and sample-quality measures, as pure functions.

Binarization of MNIST (dynamic for training, fixed for evaluation), the importance-weighted
bound on log p(x) (IWAE, Burda et al. 2016), prior samples, a classifier's penultimate
features, and the Frechet distance between two sets of features (FID-style, with MNIST
classifier features instead of Inception ones).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax import rehearsal, stats
from mnist_jax.data import preprocess_images

# The key of the one fixed binarization of the validation and test sets, shared by every run,
# epoch and model, so their negative ELBOs are computed on the same binary images.
EVAL_BINARIZATION_SEED = 0
LOG_2PI = math.log(2.0 * math.pi)

Encode = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]  # (x, labels) -> (mean, logvar)
Decode = Callable[[jax.Array, jax.Array], jax.Array]  # (z, labels) -> logits (B, 28, 28, 1)


def binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """A Bernoulli draw of each pixel with its intensity as probability: float32 {0, 1}, NHWC."""
    p = preprocess_images(x)
    return jax.random.bernoulli(key, p).astype(jnp.float32)


def fixed_binarization(x: jax.Array) -> jax.Array:
    """The evaluation binarization of x: `binarize` with the key of EVAL_BINARIZATION_SEED."""
    return binarize(jax.random.key(EVAL_BINARIZATION_SEED), x)


def map_batches(fn: Callable[..., Any], arrays: tuple, batch_size: int) -> Any:
    """fn(*batch) over the leading axis of `arrays` in batches (lax.map), the last one padded.

    Returns fn's outputs (a pytree of arrays with a leading batch axis) for the N real rows.
    """
    n = arrays[0].shape[0]
    steps = -(-n // batch_size)
    pad = steps * batch_size - n

    def split(a):
        if pad:
            a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(steps, batch_size, *a.shape[1:])

    out = jax.lax.map(lambda xs: fn(*xs), tuple(split(a) for a in arrays))
    return jax.tree_util.tree_map(lambda o: o.reshape(steps * batch_size, *o.shape[2:])[:n], out)


def vae_functions(model: nn.Module, params) -> tuple[Encode, Decode]:
    """(encode, decode) of a `models.VAE` with these params; labels are ignored unless conditional."""

    def encode(x, labels):
        return model.apply(params, x, labels, method=model.encode)

    def decode(z, labels):
        return model.apply(params, z, labels, method=model.decode)

    return encode, decode


def log_normal(z: jax.Array, mean: jax.Array | float, logvar: jax.Array | float) -> jax.Array:
    """log N(z; mean, diag(exp(logvar))) summed over the last axis."""
    return -0.5 * jnp.sum(LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def log_weights(encode: Encode, decode: Decode, x: jax.Array, labels: jax.Array, key: jax.Array,
                k: int) -> jax.Array:
    """log p(x, z_i) - log q(z_i | x) for k draws z_i ~ q(z | x) of each binary image x: (k, B)."""
    mean, logvar = encode(x, labels)
    b, latent = mean.shape
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (k, b, latent), mean.dtype)
    logits = decode(z.reshape(k * b, latent), jnp.tile(labels, k)).reshape(k, b, -1)
    log_px_z = -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x.reshape(1, b, -1)), axis=-1)
    return log_px_z + log_normal(z, 0.0, 0.0) - log_normal(z, mean, logvar)


def iwae_bounds(encode: Encode, decode: Decode, x: jax.Array, labels: jax.Array, key: jax.Array,
                k: int) -> tuple[jax.Array, jax.Array]:
    """(IWAE bound log (1/k) sum_i w_i, k-sample ELBO estimate mean_i log w_i) per image, in nats: (B,) each.

    Both are lower bounds on log p(x) in expectation; the IWAE bound tightens as k grows.
    """
    lw = log_weights(encode, decode, x, labels, key, k)
    return jax.nn.logsumexp(lw, axis=0) - math.log(k), lw.mean(axis=0)


def iwae_log_likelihood(encode: Encode, decode: Decode, x: jax.Array, labels: jax.Array, key: jax.Array,
                        k: int = 1000, batch_size: int = 10) -> tuple[jax.Array, jax.Array]:
    """`iwae_bounds` of every binary image in x (N, 28, 28, 1), `batch_size` images (x k draws) at a time.

    Memory grows with batch_size * k, not with N. Each batch draws from its own key.
    """
    batch_index = jnp.arange(x.shape[0]) // batch_size

    def one(xb, yb, ib):
        return iwae_bounds(encode, decode, xb, yb, jax.random.fold_in(key, ib[0]), k)

    return map_batches(one, (x, labels, batch_index), batch_size)


def sample_prior(decode: Decode, key: jax.Array, labels: jax.Array, latent: int,
                 batch_size: int = 1000, temperature: float = 1.0) -> jax.Array:
    """Bernoulli means (pixel probabilities) (N, 28, 28) of one z ~ N(0, T^2 I) per label in `labels` (N,),
    T the sampling `temperature` (1: the prior itself; below 1 the draws stay nearer its mode)."""
    z = jax.random.normal(key, (labels.shape[0], latent))
    if temperature != 1.0:
        z = temperature * z
    probs = map_batches(lambda zb, yb: jax.nn.sigmoid(decode(zb, yb)), (z, labels), batch_size)
    return probs.reshape(-1, 28, 28)


def penultimate_features(model: nn.Module, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits, features) of a classifier in evaluation mode; features = the input of its last Dense layer.

    For the MLP and the CNN that is the last hidden layer's activations (after ReLU), the
    penultimate activations, found by intercepting the module calls rather than by editing
    the model.
    """
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        logits = model.apply(params, preprocess_images(x))
    if not seen:
        raise ValueError(f"{type(model).__name__} has no Dense layer whose input could serve as features")
    return logits, seen[-1].reshape(x.shape[0], -1)


def classify(model: nn.Module, params, x: jax.Array, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities (N, 10), penultimate features (N, F)) of images x, in batches."""

    probs, feats = _classify(model, params, x, batch_size)
    return np.asarray(probs), np.asarray(feats)


@functools.partial(rehearsal.jit, static_argnums=(0, 3))
def _classify(model: nn.Module, params, x: jax.Array, batch_size: int):
    """`classify`'s program: one per model and input shape, shared by every call (params are arguments)."""
    return map_batches(lambda b: _probs_features(model, params, b), (x,), batch_size)


def _probs_features(model, params, xb):
    logits, feats = penultimate_features(model, params, xb)
    return jax.nn.softmax(logits, axis=-1), feats


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_moments(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)): the Frechet (2-Wasserstein squared)
    distance between two Gaussians.

    Tr (cov1 cov2)^(1/2) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix cov1^(1/2) cov2 cov1^(1/2) (same eigenvalues), which stays real and
    finite for singular covariances (dead ReLU units) where a general `sqrtm` does not.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    half = _psd_sqrt(cov1)
    middle = half @ cov2 @ half
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
    return float(np.sum(np.square(mu1 - mu2)) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted (mean, covariance) to two feature sets (N, F)."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    return frechet_from_moments(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def label_entropy_bits(labels: np.ndarray, num_classes: int = 10) -> float:
    """Entropy in bits of the empirical label distribution (log2(10) = 3.32 bits when uniform)."""
    p = np.bincount(np.asarray(labels), minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def sample_quality(probs: np.ndarray, feats: np.ndarray, reference_feats: np.ndarray,
                   threshold: float = 0.9) -> dict:
    """How digit-like images are, judged by a classifier: its softmax `probs` (N, 10) and features
    (N, F) of the images, against the features of real digits.

    {confident_share (max prob >= threshold), mean_confidence, label_histogram (counts 0-9),
    label_entropy_bits, frechet_distance (to the reference features)}.
    """
    labels = probs.argmax(-1)
    conf = probs.max(-1)
    return {
        "n": int(len(labels)),
        "confidence_threshold": threshold,
        "confident_share": float(np.mean(conf >= threshold)),
        "mean_confidence": float(conf.mean()),
        "label_histogram": np.bincount(labels, minlength=probs.shape[-1]).tolist(),
        "label_entropy_bits": label_entropy_bits(labels, probs.shape[-1]),
        "frechet_distance": frechet_distance(feats, reference_feats),
    }


def conditional_shares(predicted: list[np.ndarray | None], requested: np.ndarray, confidence: float = 0.95) -> list[dict]:
    """For each requested digit of a conditional model's samples: the share of them the judge labels
    as that digit, per run (`predicted`: the judge's labels of each run's samples, None for a run
    left out), with its interval: Student t over the runs when there are two or more, else the
    Wilson score interval of the one run's count.

    [{digit, samples_per_run, per_seed, interval, n, mean, std, ci_low, ci_high}], one per digit in
    `requested`."""
    requested = np.asarray(requested)
    kept = [np.asarray(p) for p in predicted if p is not None]
    out = []
    for digit in np.unique(requested):
        asked = requested == digit
        shares = [float(np.mean(p[asked] == digit)) for p in kept]
        summary = stats.summary(shares, confidence)
        interval = "t over seeds"
        if len(kept) == 1:
            low, high = stats.wilson(int(np.sum(kept[0][asked] == digit)), int(asked.sum()), confidence)
            summary |= {"ci_low": low, "ci_high": high}
            interval = "Wilson (one run)"
        out.append({"digit": int(digit), "samples_per_run": int(asked.sum()), "per_seed": shares, "interval": interval,
                    **summary})
    return out
