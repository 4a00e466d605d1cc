"""Each speed-up of the CPU training step computes what the formulation it replaced computed,
bit for bit (the speeds themselves are measured by `benchmarks/`, never asserted here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models, regularizers, tasks, train

SPEC = train.TrainSpec(epochs=2, batch_size=48)


@pytest.mark.parametrize("n", [1, 2, 3, 127, 1000, 55_000, 60_000, 2**16])
def test_permutation_is_jax_permutation_bit_for_bit(n):
    for seed in (0, 1, 12345):
        key = jax.random.key(seed)
        expected = jax.random.permutation(key, n)
        got = jax.jit(train.permutation, static_argnums=1)(key, n)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_permutation_under_vmap_and_beyond_its_fast_range():
    keys = jax.random.split(jax.random.key(3), 4)
    np.testing.assert_array_equal(jax.vmap(lambda k: train.permutation(k, 5000))(keys),
                                  jax.vmap(lambda k: jax.random.permutation(k, 5000))(keys))
    key = jax.random.key(4)  # past 2^16 elements it is jax's own shuffle
    np.testing.assert_array_equal(train.permutation(key, 2**16 + 5), jax.random.permutation(key, 2**16 + 5))


def test_stable_argsort_breaks_ties_by_position():
    rng = np.random.default_rng(0)
    # few distinct keys, sharing low or high halves: every tie and half-tie the two passes meet
    keys = rng.choice(np.array([0, 1, 0xFFFF, 0x10000, 0x10001, 0xFFFF0000, 0xFFFFFFFF], np.uint32), 3000)
    got = train._stable_argsort_u32(jnp.asarray(keys))
    np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))


@pytest.mark.slow
def test_train_epoch_equals_the_jax_permutation_and_clamped_gather_formulation(tiny, monkeypatch):
    """One epoch with the fast shuffle and unclamped row gather gives the params, optimizer state
    and metrics of the same epoch with `jax.random.permutation` and `jnp.take(mode="clip")`."""
    task = tasks.classifier_task(models.MLP((32,))).with_hooks(regularizers.L2)
    hp = {"learning_rate": jnp.float32(0.1), "l2": jnp.float32(0.0)}
    data = train.Splits(*(jnp.asarray(a) for a in tiny))
    state = train.init_state(task, SPEC, hp, 7, data.train_x.shape[0])
    fast = jax.jit(lambda s: train.train_epoch(task, SPEC, s, hp, 7, data))(state)

    monkeypatch.setattr(train, "permutation", jax.random.permutation)
    slow = jax.jit(lambda s: train.train_epoch(task, SPEC, s, hp, 7, data))(state)
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(slow), strict=True):
        np.testing.assert_array_equal(a, b)

    idx, _ = train.epoch_batches(jax.random.key(1), data.train_x.shape[0], SPEC.batch_size)
    rows = data.train_x.reshape(data.train_x.shape[0], -1)
    np.testing.assert_array_equal(rows.at[idx].get(mode="promise_in_bounds"), jnp.take(rows, idx, axis=0, mode="clip"))


@pytest.mark.parametrize("model", [models.CNN(conv_impl="fused"),
                                   models.CNN(filters=(32, 64), pool=(True, True), padding="SAME", dense=128,
                                              dense_dropout=True, conv_impl="fused")],
                         ids=["study_cnn", "best_cnn"])
@pytest.mark.slow
def test_conv_eval_batch_gives_the_logits_of_batches_of_1000(model, tiny):
    """Convolutional nets evaluate in smaller batches on the CPU; every image's logits are those
    of the batches of 1,000 they were computed in before, bit for bit (a partial batch too)."""
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = jnp.asarray(np.concatenate([tiny.train_x] * 5))[:1100]  # 1,100 images: a partial last batch either way
    small = tasks.classifier_logits(model, params, x)
    assert models.eval_batch_size(model, "cpu") == 250 < models.EVAL_BATCH
    np.testing.assert_array_equal(small, tasks.classifier_logits(model, params, x, models.EVAL_BATCH))
    assert models.eval_batch_size(models.MLP((64, 64)), "cpu") == models.eval_batch_size(model, "gpu") == models.EVAL_BATCH


@pytest.mark.parametrize("vmapped", [False, True])
def test_first_layer_kernel_gradient_is_the_einsum_of_stacked_patches(vmapped):
    """The one-channel conv's kernel gradient from patch rows (kh * kw, B * H * W) is the
    contraction of the (B, H, W, kh * kw) patches it replaced, bit for bit (alone and vmapped)."""
    from mnist_jax import kernels

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((32, 28, 28, 1), np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 32), np.float32))
    dy = jnp.asarray(rng.standard_normal((32, 26, 26, 32), np.float32))

    def new(x, dy):
        return kernels._fused_bwd((x, kernel), dy)[1]

    def old(x, dy):
        return jnp.einsum("bhwk,bhwf->kf", kernels._patches(x, 3, 3, 26, 26), dy).reshape(kernel.shape)

    if vmapped:
        new, old, x, dy = jax.vmap(new), jax.vmap(old), x[None], dy[None]
    np.testing.assert_array_equal(jax.jit(new)(x, dy), jax.jit(old)(x, dy))
