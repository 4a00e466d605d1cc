"""Tasks: what a run trains and how it is evaluated, built from a Flax module.

Each task is a `train.Task` of pure functions; its hyperparameters come from the traced
`hp` dict, so every task can be vmapped over seeds and continuous hyperparameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax import losses
from mnist_jax.data import IMAGE_SHAPE, Splits, preprocess_images
from mnist_jax.train import Batch, HParams, Task

EVAL_BATCH = 1000

# Call arguments a model may take from hp (traced), by name.
MODEL_HPARAMS = ("dropout_rate", "input_dropout_rate")


def model_kwargs(model: nn.Module, hp: HParams) -> dict:
    """The traced call arguments of `model` that `hp` provides."""
    # inspect.signature follows the wrapper Flax puts around __call__ (its __code__ is the wrapper's)
    names = set(inspect.signature(type(model).__call__).parameters)
    return {k: hp[k] for k in MODEL_HPARAMS if k in hp and k in names}


def batched(fn: Callable[[jax.Array], jax.Array], x: jax.Array, batch_size: int = EVAL_BATCH) -> jax.Array:
    """fn over x in batches (lax.map), padding the last one, so memory stays bounded."""
    n = x.shape[0]
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    out = jax.lax.map(fn, xp.reshape(steps, batch_size, *x.shape[1:]))
    return out.reshape(steps * batch_size, *out.shape[2:])[:n]


def classifier_logits(model: nn.Module, params, x: jax.Array, batch_size: int = EVAL_BATCH) -> jax.Array:
    """Evaluation-mode logits (N, 10) of images x (uint8 or float, NHWC), in batches."""
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


def classifier_task(model: nn.Module, augment: Callable | None = None) -> Task:
    """Softmax classification with categorical cross-entropy (the study's sections 2-3).

    `augment(key, x_float, hp) -> x_float` runs on each training batch inside the step.
    """

    def init(key, hp):
        return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))

    def loss(params, batch: Batch, key, hp):
        aug_key, drop_key = jax.random.split(key)
        x = preprocess_images(batch.x)
        if augment is not None:
            x = augment(aug_key, x, hp)
        logits = model.apply(params, x, train=True, rngs={"dropout": drop_key}, **model_kwargs(model, hp))
        return losses.cross_entropy(logits, batch.y), {"accuracy": losses.correct(logits, batch.y)}

    def evaluate(params, data: Splits, hp, key):
        return {**classification_metrics(model, params, data.val_x, data.val_y, "val"),
                **classification_metrics(model, params, data.test_x, data.test_y, "test")}

    return Task(init, loss, evaluate)
