"""Tasks: what a run trains and how it is evaluated, built from a Flax module.

Each task is a `train.Task` of pure functions; its hyperparameters come from the traced
`hp` dict, so every task can be vmapped over seeds and continuous hyperparameters.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from mnist_jax import augment as augment_lib
from mnist_jax import generative, losses, models, noise, regularizers, rehearsal
from mnist_jax.config import ConfigError
from mnist_jax.data import IMAGE_SHAPE, Splits, preprocess_images
from mnist_jax.train import Batch, Task, stream_key

EVAL_BATCH = models.EVAL_BATCH


def batched(fn: Callable[[jax.Array], jax.Array], x: jax.Array, batch_size: int = EVAL_BATCH) -> jax.Array:
    """fn over x in batches (lax.map), padding the last one, so memory stays bounded."""
    n = x.shape[0]
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    out = jax.lax.map(fn, xp.reshape(steps, batch_size, *x.shape[1:]))
    return out.reshape(steps * batch_size, *out.shape[2:])[:n]


def classifier_logits(model: nn.Module, params, x: jax.Array, batch_size: int | None = None) -> jax.Array:
    """Evaluation-mode logits (N, 10) of images x (uint8 or float, NHWC), in batches
    (`models.eval_batch_size(model)` images unless given)."""
    batch_size = batch_size or models.eval_batch_size(model)
    return batched(lambda xb: model.apply(params, preprocess_images(xb)), x, batch_size)


def classification_metrics(model: nn.Module, params, x: jax.Array, y: jax.Array, prefix: str) -> dict:
    """{prefix_accuracy, prefix_loss, prefix_errors} of the model on (x, y)."""
    logits = classifier_logits(model, params, x)
    right = losses.correct(logits, y)
    return {
        f"{prefix}_accuracy": right.mean(),
        f"{prefix}_loss": losses.cross_entropy(logits, y).mean(),
        f"{prefix}_errors": (y.shape[0] - right.sum()).astype(jnp.int32),
    }


def classifier_task(model: nn.Module, augment: Callable | None = None, augment_stream: str = "augment",
                    augment_hparams: tuple[str, ...] = (), label_smoothing: bool = False) -> Task:
    """Softmax classification with categorical cross-entropy (the study's sections 2-3).

    `augment(key, x_float, hp) -> x_float` runs on each training batch inside the step, with a key
    of the stream `augment_stream` ("noise" where it corrupts), reading `augment_hparams` from hp;
    dropout draws from "dropout". `label_smoothing=True` trains against targets (1 - s) one-hot +
    s / 10 with s = hp["label_smoothing"] (traced); evaluation reports the plain cross-entropy.
    Hyperparameters: the model's traced ones, the augmentation's, and label_smoothing if on.
    """
    traced = models.traced_hparams(model)
    mode = {"train": True} if models.takes_train(model) else {}

    def init(key, hp):
        return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))

    def loss(params, batch: Batch, keys, hp):
        # the halves a single step key has always been split into, each from its own stream
        aug_key = jax.random.split(stream_key(keys, augment_stream))[0]
        drop_key = jax.random.split(stream_key(keys, "dropout"))[1]
        x = preprocess_images(batch.x)
        if augment is not None:
            x = augment(aug_key, x, hp)
        logits = model.apply(params, x, rngs={"dropout": drop_key}, **mode, **{k: hp[k] for k in traced})
        targets = batch.y
        if label_smoothing:
            s = hp["label_smoothing"]
            targets = (1.0 - s) * jax.nn.one_hot(batch.y, logits.shape[-1]) + s / logits.shape[-1]
        return losses.cross_entropy(logits, targets), {"accuracy": losses.correct(logits, batch.y)}

    def evaluate(params, data: Splits, hp, key):
        return {**classification_metrics(model, params, data.val_x, data.val_y, "val"),
                **classification_metrics(model, params, data.test_x, data.test_y, "test")}

    smoothing = ("label_smoothing",) if label_smoothing else ()
    return Task(init, loss, evaluate, hparams=(*traced, *augment_hparams, *smoothing),
                vmap_slow_on=models.vmap_slow_on(model))


def check_classifier(model: nn.Module, kind: str | None) -> None:
    """ConfigError unless `model` maps images to 10 class scores (`models.is_classifier`, from
    shapes alone: a denoiser or a VAE is refused before training)."""
    if not models.is_classifier(model):
        raise ConfigError(f"config.model.kind={kind!r} is not allowed here: this experiment trains a classifier, and "
                          "that model does not map an image to 10 class scores")


def classifier_from_config(config, model_cfg=None, compute_dtype: str | None = None) -> tuple[nn.Module, Task]:
    """(model, task) of a classifier config: its `model` block (or `model_cfg`), the random-shift
    augmentation when `max_shift` > 0, label smoothing when it has a `label_smoothing` field, and
    the regularizers it names (`regularizers.from_config`); the model computes in `compute_dtype`,
    by default the config's (`mnist_jax.precision`)."""
    block = model_cfg if model_cfg is not None else config.model
    model = models.from_config(block, compute_dtype or config.get("compute_dtype", "float32"))
    check_classifier(model, block.get("kind"))
    task = classifier_task(model, augment=augment_lib.from_config(config), label_smoothing="label_smoothing" in config)
    return model, task.with_hooks(*regularizers.from_config(config))


def vae_negative_elbo(model: nn.Module, params, x_bin: jax.Array, labels: jax.Array, key: jax.Array,
                      batch_size: int = EVAL_BATCH) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Single-sample negative ELBO of a VAE on binary images, per image: (total, reconstruction, KL), nats."""

    def one(xb, yb, ib):
        logits, mean, logvar = model.apply(params, xb, jax.random.fold_in(key, ib[0]), yb)
        return losses.negative_elbo(logits, xb, mean, logvar)

    return generative.map_batches(one, (x_bin, labels, jnp.arange(x_bin.shape[0]) // batch_size), batch_size)


def kl_weight(epoch: jax.Array | float, warmup_epochs: jax.Array | float) -> jax.Array:
    """The weight of the KL term at `epoch` (fractional) of training: rising linearly from 0 to 1
    over the first `warmup_epochs` epochs, 1 after them and throughout when `warmup_epochs` is 0."""
    warmup = jnp.asarray(warmup_epochs, jnp.float32)
    ramp = jnp.minimum(1.0, jnp.asarray(epoch, jnp.float32) / jnp.maximum(warmup, 1e-30))
    return jnp.where(warmup > 0, ramp, 1.0)


def iwae_training_loss(model: nn.Module, params, x: jax.Array, labels: jax.Array, key: jax.Array, k: int,
                       beta: jax.Array | float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The negative IWAE bound -log (1/k) sum_i w_i with k draws z_i ~ q(z | x) per binary image,
    log w_i = log p(x | z_i) + beta (log p(z_i) - log q(z_i | x)) (beta: the KL weight of a warm-up),
    per image: (loss, reconstruction -log p(x | z_i) averaged over the draws, analytic KL), nats."""
    mean, logvar = model.apply(params, x, labels, method=model.encode)
    b, latent = mean.shape
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (k, b, latent), mean.dtype)
    logits = model.apply(params, z.reshape(k * b, latent), jnp.tile(labels, k), method=model.decode)
    rec = losses.binary_cross_entropy(logits, jnp.tile(x, (k, 1, 1, 1))).reshape(k, b)
    log_w = -rec + beta * (generative.log_normal(z, 0.0, 0.0) - generative.log_normal(z, mean, logvar))
    bound = jax.nn.logsumexp(log_w, axis=0) - jnp.log(jnp.float32(k))
    return -bound, rec.mean(axis=0), losses.gaussian_kl(mean, logvar)


def vae_task(model: nn.Module, kl_warmup: bool = False, iwae_k: int = 1) -> Task:
    """A `models.VAE` trained on the negative ELBO (nats per image) of dynamically binarized MNIST.

    Every time a training image is seen, inside the step, each pixel is drawn afresh as a
    Bernoulli variable with the pixel's intensity as probability. Validation and test use one
    fixed binarization (`generative.fixed_binarization`), the same for every run and epoch;
    their negative ELBO is a one-sample Monte Carlo estimate per image. Streams: the binarization
    draws from "augment", the latent samples (training and evaluation) from "noise".

    `kl_warmup=True` weighs the KL term by `kl_weight(batch.epoch, hp["kl_warmup_epochs"])`
    (traced; 0 = no warm-up). `iwae_k` > 1 trains on the IWAE bound with that many importance
    samples (`iwae_training_loss`, Burda et al. 2016) instead of the single-sample ELBO (1).
    Evaluation is the same for every objective: the single-sample negative ELBO.
    """

    def init(key, hp):
        init_key, z_key = jax.random.split(key)
        return model.init(init_key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), z_key, jnp.zeros((1,), jnp.int32))

    def loss(params, batch: Batch, keys, hp):
        bin_key = jax.random.split(stream_key(keys, "augment"))[0]
        z_key = jax.random.split(stream_key(keys, "noise"))[1]
        x = generative.binarize(bin_key, batch.x)
        beta = kl_weight(batch.epoch, hp["kl_warmup_epochs"]) if kl_warmup else 1.0
        if iwae_k > 1:
            total, rec, kl = iwae_training_loss(model, params, x, batch.y, z_key, iwae_k, beta)
            return total, {"reconstruction": rec, "kl": kl}
        logits, mean, logvar = model.apply(params, x, z_key, batch.y)
        total, rec, kl = losses.negative_elbo(logits, x, mean, logvar)
        if kl_warmup:
            total = rec + beta * kl
        return total, {"reconstruction": rec, "kl": kl}

    def evaluate(params, data: Splits, hp, keys):
        val_key, test_key = jax.random.split(stream_key(keys, "noise"))
        val, _, _ = vae_negative_elbo(model, params, generative.fixed_binarization(data.val_x), data.val_y, val_key)
        test, rec, kl = vae_negative_elbo(model, params, generative.fixed_binarization(data.test_x), data.test_y,
                                          test_key)
        return {"val_neg_elbo": val.mean(), "test_neg_elbo": test.mean(), "test_reconstruction": rec.mean(),
                "test_kl": kl.mean()}

    return Task(init, loss, evaluate, hparams=("kl_warmup_epochs",) if kl_warmup else (),
                vmap_slow_on=models.vmap_slow_on(model))


def vae_from_config(model: nn.Module, config) -> Task:
    """`vae_task` of a config: the KL warm-up when it has a `kl_warmup_epochs` field, the training
    objective's importance samples from `train_iwae_k` (1, the ELBO, when it has none)."""
    return vae_task(model, kl_warmup="kl_warmup_epochs" in config, iwae_k=int(config.get("train_iwae_k", 1)))


# --- Salt-and-pepper noise and denoising (the study's section 4) ---

EVAL_SPLITS = {"val": 0, "test": 1}


def eval_noise_key(seed: int, split: str) -> jax.Array:
    """The fixed key of a split's evaluation noise: every run, epoch and experiment that uses
    the same seed sees the same corrupted images at a given level."""
    return jax.random.fold_in(jax.random.key(seed), EVAL_SPLITS[split])


def with_frozen(hp: dict, name: str, params) -> dict:
    """hp plus the leaves of a frozen params tree (leading run axis) as `name/<path>` entries.

    That is how one trained model per run (e.g. the autoencoder of the run's noise level and
    seed) rides along a vmapped grid: `sweep.train_grid` shards every hp entry on its run axis.
    """
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return {**hp, **{f"{name}/{k}": v for k, v in flat.items()}}


def frozen(hp: dict, name: str):
    """The params tree stored in hp by `with_frozen(hp, name, ...)`."""
    prefix = f"{name}/"
    return flax.traverse_util.unflatten_dict({k[len(prefix):]: v for k, v in hp.items() if k.startswith(prefix)},
                                             sep="/")


def denoised(model: nn.Module, params, x: jax.Array) -> jax.Array:
    """The autoencoder's output image in [0, 1] (sigmoid of its logits), shaped like x."""
    return jax.nn.sigmoid(model.apply(params, x))


def corrupted_images(x: jax.Array, index: jax.Array, level, key: jax.Array) -> jax.Array:
    """uint8 (or [0, 1] float) images x with their fixed evaluation noise (image `index[i]`)."""
    return noise.salt_and_pepper_each(key, preprocess_images(x), level, index)


def denoise_metrics(model: nn.Module, params, x: jax.Array, level, key: jax.Array, prefix: str) -> dict:
    """{prefix_bce, prefix_psnr_noisy, prefix_psnr_denoised} of the autoencoder on images x
    corrupted at `level` with the fixed noise of `key`: BCE per pixel (nats) of the output
    against the clean image, mean PSNR (dB) of the noisy and the denoised images."""

    def fn(idx):
        clean = preprocess_images(x[idx])
        noisy = noise.salt_and_pepper_each(key, clean, level, idx)
        logits = model.apply(params, noisy)
        bce = losses.binary_cross_entropy(logits, clean) / logits[0].size
        return jnp.stack([bce, noise.psnr(clean, noisy), noise.psnr(clean, jax.nn.sigmoid(logits))], axis=1)

    m = batched(fn, jnp.arange(x.shape[0])).mean(axis=0)
    return {f"{prefix}_bce": m[0], f"{prefix}_psnr_noisy": m[1], f"{prefix}_psnr_denoised": m[2]}


def denoise_task(model: nn.Module, eval_seed: int = 0, corrupt: Callable = noise.salt_and_pepper) -> Task:
    """A denoising autoencoder: noisy image in, binary cross-entropy against the clean image.

    The noise level is `hp["noise_level"]` (traced); every step draws a fresh corruption of
    its batch. The loss is BCE from logits, mean per pixel (as Keras reports it). Evaluation
    after each epoch: `denoise_metrics` on the validation set with the fixed noise of
    `eval_seed`. `corrupt(key, x, level)` swaps the noise formulation (benchmarks). The training
    noise draws from the run's "noise" stream.
    """

    def init(key, hp):
        return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))

    def loss(params, batch: Batch, keys, hp):
        clean = preprocess_images(batch.x)
        logits = model.apply(params, corrupt(stream_key(keys, "noise"), clean, hp["noise_level"]))
        return losses.binary_cross_entropy(logits, clean) / logits[0].size, {}

    def evaluate(params, data: Splits, hp, key):
        return denoise_metrics(model, params, data.val_x, hp["noise_level"], eval_noise_key(eval_seed, "val"), "val")

    return Task(init, loss, evaluate, hparams=("noise_level",), vmap_slow_on=models.vmap_slow_on(model))


def noisy_classification_metrics(model: nn.Module, params, x: jax.Array, y: jax.Array, level, key: jax.Array,
                                 prefix: str, denoiser: nn.Module | None = None, denoiser_params=None) -> dict:
    """`classification_metrics` on images x corrupted at `level` with the fixed noise of `key`,
    first denoised by `denoiser` when one is given."""

    def fn(idx):
        xb = corrupted_images(x[idx], idx, level, key)
        if denoiser is not None:
            xb = denoised(denoiser, denoiser_params, xb)
        logits = model.apply(params, xb)
        return jnp.concatenate([logits, losses.cross_entropy(logits, y[idx])[:, None]], axis=1)

    out = batched(fn, jnp.arange(x.shape[0]), models.eval_batch_size(model))
    right = losses.correct(out[:, :-1], y)
    return {f"{prefix}_accuracy": right.mean(), f"{prefix}_loss": out[:, -1].mean(),
            f"{prefix}_errors": (y.shape[0] - right.sum()).astype(jnp.int32)}


def noisy_classifier_task(model: nn.Module, denoiser: nn.Module | None = None, eval_seed: int = 0) -> Task:
    """A classifier trained on salt-and-pepper images at `hp["noise_level"]` (fresh noise every
    step), optionally denoised first by `denoiser` with the frozen params `frozen(hp, "denoiser")`
    of the run (see `with_frozen`). Evaluation: noisy (and denoised) validation accuracy with the
    fixed noise of `eval_seed`. The training noise draws from the run's "noise" stream."""

    def corrupt(key, x, hp):
        x = noise.salt_and_pepper(key, x, hp["noise_level"])
        return denoised(denoiser, frozen(hp, "denoiser"), x) if denoiser is not None else x

    base = classifier_task(model, augment=corrupt, augment_stream="noise", augment_hparams=("noise_level",))

    def evaluate(params, data: Splits, hp, key):
        dparams = frozen(hp, "denoiser") if denoiser is not None else None
        return noisy_classification_metrics(model, params, data.val_x, data.val_y, hp["noise_level"],
                                            eval_noise_key(eval_seed, "val"), "val", denoiser, dparams)

    return dataclasses.replace(base, evaluate=evaluate)


def over_runs(fn: Callable, runs: tuple, shared: tuple = (), chunk: int = 4):
    """`fn(*run_slice, *shared)` for every run of `runs` (pytrees with a leading run axis), jitted;
    `chunk` runs are vmapped at a time, so memory stays bounded for any number of runs. Arrays
    like the test set go in `shared` (arguments, not constants baked into the program). Calls with
    the same `fn` and `chunk` share one jitted program (compiled once per input shape)."""
    return _over_runs_program(fn, chunk)(runs, shared)


@functools.lru_cache(maxsize=64)
def _over_runs_program(fn: Callable, chunk: int) -> Callable:
    return rehearsal.jit(lambda runs, shared: jax.lax.map(lambda r: fn(*r, *shared), runs, batch_size=chunk))
