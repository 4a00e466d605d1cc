"""Fewer programs: what the experiments compile besides their training programs is shared across
runs and calls, and host-side glue compiles nothing (each program costs a compile, or a load from
the persistent cache, in every process: on a GPU that is most of a short stage)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import vae as vae_experiment
from mnist_jax import compilation, generative, models, tasks, training


def programs_of(fn):
    """(fn's result, the programs compiled or loaded while it ran)."""
    before = compilation.counts()["programs"]
    out = jax.block_until_ready(fn())
    return out, compilation.counts()["programs"] - before


def two_vaes():
    model = models.from_config({"kind": "vae", "latent": 3, "hidden": (16, 8)})
    x = jnp.zeros((2, 28, 28, 1))
    params = [model.init(jax.random.key(k), x, jax.random.key(k + 1), jnp.zeros((2,), jnp.int32)) for k in (0, 5)]
    return model, params


def test_loading_data_compiles_nothing(synthetic_mnist):
    config = ml_collections.ConfigDict({"n_val": 5000, "protocol": "holdout", "train_images": 100, "batch_size": 64})
    (splits, _), n = programs_of(lambda: training.load_data(config))
    assert n == 0  # jnp.asarray or slicing a device array would compile a program per array
    assert splits.train_x.shape == (100, 28, 28, 1) and isinstance(splits.test_x, jax.Array)


@pytest.mark.slow
def test_vae_helpers_compile_once_for_every_run():
    model, (p0, p1) = two_vaes()
    labels = np.zeros(7, np.int32)
    x = np.asarray(jax.random.bernoulli(jax.random.key(3), 0.5, (7, 28, 28, 1)), np.float32)
    key = jax.random.key(9)
    first, n_first = programs_of(lambda: vae_experiment.draw(model, p0, key, labels))
    second, n_second = programs_of(lambda: vae_experiment.draw(model, p1, key, labels))
    assert n_first == 1 and n_second == 0  # the params are arguments, not constants of the program
    assert not np.array_equal(first, second)
    for fn, args in ((vae_experiment.posterior_means, (x, labels)),
                     (vae_experiment.decode_means, (np.ones((7, 3), np.float32), labels))):
        programs_of(lambda f=fn, a=args: f(model, p0, *a))
        _, n = programs_of(lambda f=fn, a=args: f(model, p1, *a))
        assert n == 0, fn.__name__


def test_classify_shares_one_program_across_params_and_calls():
    model = models.from_config({"kind": "mlp", "hidden": (8,)})
    params = [model.init(jax.random.key(k), jnp.zeros((1, 28, 28, 1))) for k in (0, 1)]
    images = np.zeros((30, 28, 28, 1), np.uint8)
    programs_of(lambda: generative.classify(model, params[0], images, batch_size=10))
    (probs, feats), n = programs_of(lambda: generative.classify(model, params[1], images + 1, batch_size=10))
    assert n == 0 and probs.shape == (30, 10) and feats.shape == (30, 8)


def test_over_runs_reuses_the_program_of_the_same_function():
    def total(w, x):
        return (w * x).sum()

    w = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    shared = (np.ones(2, np.float32),)
    a, _ = programs_of(lambda: tasks.over_runs(total, (w,), shared))
    b, n = programs_of(lambda: tasks.over_runs(total, (w + 1,), shared))
    assert n == 0
    np.testing.assert_array_equal(np.asarray(b) - np.asarray(a), [2.0, 2.0, 2.0])
