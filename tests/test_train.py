"""The functional core on tiny synthetic data: params, losses, masking, determinism, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import losses, models, regularizers, sweep, tasks, train

SPEC = train.TrainSpec(epochs=3, batch_size=48)  # 256 examples: 5 full batches and one of 16


def mlp_task(hidden=(32,), l2=False):
    task = tasks.classifier_task(models.MLP(hidden))
    return task.with_hooks(regularizers.L2) if l2 else task


def hp1(lr=0.1):
    return {"learning_rate": jnp.float32(lr)}


def test_study_mlp_has_55050_parameters():
    params = jax.eval_shape(models.MLP((64, 64)).init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert models.param_count(params) == 55_050
    shapes = [p.shape for p in jax.tree_util.tree_leaves(params)]
    assert (784, 64) in shapes and (64, 10) in shapes


def test_hinton_mlp_parameter_count_and_output_shape():
    model = models.MLP((500, 300))
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))  # shapes only: nothing runs
    assert models.param_count(params) == 784 * 500 + 500 + 500 * 300 + 300 + 300 * 10 + 10
    assert jax.eval_shape(model.apply, params, jnp.zeros((7, 784))).shape == (7, 10)


def test_keras_init_is_glorot_uniform_with_zero_biases():
    params = models.MLP((64, 64)).init(jax.random.key(1), jnp.zeros((1, 784)))["params"]
    k = np.asarray(params["Dense_0"]["kernel"])
    limit = np.sqrt(6 / (784 + 64))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    assert not np.any(np.asarray(params["Dense_0"]["bias"]))


def test_cross_entropy_matches_definition_and_stays_finite():
    logits = jnp.array([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    expected = -np.log(np.exp([2.0, 0.0]) / np.exp(np.asarray(logits)).sum(1))
    cross_entropy = jax.jit(losses.cross_entropy)  # one program per input shape, not one per operation
    np.testing.assert_allclose(cross_entropy(logits, labels), expected, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy(logits, jax.nn.one_hot(labels, 3)), expected, rtol=1e-6)
    huge = jnp.array([[1e4, -1e4, 0.0]])
    assert np.isfinite(cross_entropy(huge, jnp.array([1])))[0]
    np.testing.assert_allclose(cross_entropy(huge, jnp.array([1])), [2e4], rtol=1e-6)


def test_l2_penalty_is_factor_times_sum_of_squared_kernels_only():
    params = {"params": {"Dense_0": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 100.0)}}}
    np.testing.assert_allclose(losses.l2_penalty(params, 1e-3), 1e-3 * 6 * 4.0, rtol=1e-6)


def test_epoch_batches_use_every_example_once():
    idx, mask = jax.jit(train.epoch_batches, static_argnums=(1, 2))(jax.random.key(3), 10, 4)
    assert idx.shape == (3, 4) and mask.shape == (3, 4)
    used = np.asarray(idx)[np.asarray(mask) > 0]
    assert sorted(used.tolist()) == list(range(10))
    assert np.asarray(mask).sum() == 10


def test_masked_partial_batch_counts_every_example_once(tiny):
    # A task whose per-example "loss" is the label: the epoch mean must be the mean label of
    # the training set, which it is only if every example counts exactly once.
    def init(key, hp):
        return {"w": jnp.zeros(())}

    def loss(params, batch, key, hp):
        return batch.y.astype(jnp.float32) + params["w"], {"ones": jnp.ones_like(batch.mask)}

    task = train.Task(init, loss, lambda params, data, hp, key: {})
    _, hist = train.run(task, train.TrainSpec(epochs=2, batch_size=100), {"learning_rate": jnp.float32(0.0)}, 0, tiny)
    np.testing.assert_allclose(hist["loss"], [tiny.train_y.mean()] * 2, rtol=1e-6)
    np.testing.assert_allclose(hist["train_ones"], [1.0, 1.0], rtol=1e-6)


def test_loss_goes_down_and_accuracy_up(tiny):
    _, hist = jax.jit(lambda: train.run(mlp_task(), train.TrainSpec(epochs=5, batch_size=32), hp1(), 0, tiny))()
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["val_accuracy"][-1] > 0.9


def test_same_seed_is_bit_identical_and_other_seed_differs(tiny):
    fn = jax.jit(lambda seed: train.run(mlp_task(), SPEC, hp1(), seed, tiny))
    a, ha = fn(0)
    b, hb = fn(0)
    c, _ = fn(1)
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True):
        assert np.array_equal(x, y)
    assert all(np.array_equal(ha[k], hb[k]) for k in ha)
    assert not np.array_equal(jax.tree_util.tree_leaves(a.params)[0], jax.tree_util.tree_leaves(c.params)[0])


@pytest.mark.slow
def test_vmapped_runs_match_single_runs(tiny):
    hp, seeds = sweep.grid([0, 1, 2], learning_rate=[0.05, 0.2], l2=[1e-4])
    many = sweep.train_grid(mlp_task(l2=True), SPEC, hp, seeds, tiny)
    init_many = jax.vmap(lambda h, s: train.init_state(mlp_task(l2=True), SPEC, h, s, 256))(
        {k: jnp.asarray(v) for k, v in hp.items()}, jnp.asarray(seeds))
    for r in range(len(seeds)):
        one_hp = {k: v[r:r + 1] for k, v in hp.items()}
        one = sweep.train_grid(mlp_task(l2=True), SPEC, one_hp, seeds[r:r + 1], tiny)
        init_one = train.init_state(mlp_task(l2=True), SPEC, {k: jnp.float32(v[r]) for k, v in hp.items()}, seeds[r], 256)
        for x, y in zip(jax.tree_util.tree_leaves(init_many.params), jax.tree_util.tree_leaves(init_one.params), strict=True):
            assert np.array_equal(np.asarray(x)[r], np.asarray(y))  # same initial params exactly
        np.testing.assert_allclose(many.history["loss"][r], one.history["loss"][0], rtol=1e-4)
        assert abs(many.history["test_errors"][r, -1] - one.history["test_errors"][0, -1]) <= 2


def test_grid_is_values_by_seeds_seed_fastest():
    hp, seeds = sweep.grid([5, 6], l2=[0.0, 1e-4])
    assert seeds.tolist() == [5, 6, 5, 6]
    np.testing.assert_allclose(hp["l2"], [0, 0, 1e-4, 1e-4])


@pytest.mark.slow
def test_chunked_epochs_equal_one_scan(tiny):
    hp, seeds = sweep.grid([0, 1], learning_rate=[0.1])
    one = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny, chunk_epochs=3)
    chunked = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny, chunk_epochs=1)
    for k in one.history:
        assert np.array_equal(one.history[k], chunked.history[k]), k


@pytest.mark.slow
def test_run_chunks_equal_all_runs_at_once(tiny):
    hp, seeds = sweep.grid([0, 1, 2], learning_rate=[0.1])
    together = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny)
    apart = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny, run_chunk=2)  # 2 + 1 (padded)
    assert apart.history["loss"].shape == (3, 3)
    np.testing.assert_allclose(together.history["loss"], apart.history["loss"], rtol=1e-5)


@pytest.mark.slow  # three trainings of one grid, bit for bit
def test_resume_after_interruption_gives_identical_history(tiny, tmp_path):
    hp, seeds = sweep.grid([0, 1], learning_rate=[0.1])
    straight = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny)

    class Interrupt(Exception):
        pass

    def stop_after_two(n, metrics, seen=[]):  # noqa: B006 - counts calls
        seen.append(n)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny, checkpoint_dir=str(tmp_path), progress=stop_after_two)
    resumed = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny, checkpoint_dir=str(tmp_path))
    assert resumed.resumed_from_epoch == 2
    for k in straight.history:
        assert np.array_equal(straight.history[k], resumed.history[k]), k


def test_divergence_is_marked_per_run(tiny):
    hp, seeds = sweep.grid([0], learning_rate=[0.1, 1e6])
    result = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny)
    assert not result.history["diverged"][0].any()
    assert result.history["diverged"][1, -1]
    assert result.history["val_accuracy"][0, -1] > 0.5


def test_max_norm_caps_incoming_weight_norms():
    params = {"Dense_0": {"kernel": jnp.array([[3.0, 0.1], [4.0, 0.1]]), "bias": jnp.array([10.0, 10.0])}}
    out = regularizers.max_norm(params, 2.0)
    norms = np.linalg.norm(np.asarray(out["Dense_0"]["kernel"]), axis=0)
    np.testing.assert_allclose(norms, [2.0, np.sqrt(0.02)], rtol=1e-5)
    assert np.array_equal(out["Dense_0"]["bias"], params["Dense_0"]["bias"])
    off = regularizers.max_norm(params, 0.0)
    assert np.array_equal(off["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


def test_dropout_mlp_is_identity_at_eval_and_random_in_training():
    model = models.MLP((16,), dropout=True)
    x = jnp.ones((4, 784))
    params = jax.jit(model.init)(jax.random.key(0), x)
    evaluate = jax.jit(lambda params, rate: model.apply(params, x, dropout_rate=rate))  # each compiled once
    training = jax.jit(lambda params, key: model.apply(params, x, train=True, dropout_rate=0.5, rngs={"dropout": key}))
    a = evaluate(params, 0.5)
    b = evaluate(params, 0.9)
    assert np.array_equal(a, b)
    t1 = training(params, jax.random.key(1))
    t2 = training(params, jax.random.key(2))
    assert not np.array_equal(t1, t2)


def test_batched_eval_matches_unbatched():
    fn = lambda xb: xb.sum(axis=(1, 2, 3))  # noqa: E731
    x = jnp.arange(7 * 2 * 2 * 1, dtype=jnp.float32).reshape(7, 2, 2, 1)
    np.testing.assert_allclose(tasks.batched(fn, x, 3), fn(x))


def test_unknown_optimizer_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train.run(mlp_task(), train.TrainSpec(epochs=1, optimizer="lbfgs"), hp1(), 0, tiny)


def test_empty_grid_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="empty"):
        sweep.train_grid(mlp_task(), SPEC, {"learning_rate": np.zeros(0, np.float32)}, np.zeros(0, np.int32), tiny)


@pytest.mark.slow
def test_traced_dropout_rate_reaches_the_model(tiny):
    task = tasks.classifier_task(models.MLP((32,), dropout=True))
    hp, seeds = sweep.grid([0], learning_rate=[0.1], dropout_rate=[0.0, 0.5], input_dropout_rate=[0.0])
    result = sweep.train_grid(task, SPEC, hp, seeds, tiny)
    assert not np.array_equal(result.history["loss"][0], result.history["loss"][1])
    assert task.hparams == ("dropout_rate", "input_dropout_rate")


@pytest.mark.slow
def test_timing_counts_the_runs_each_program_call_trains(tiny):
    hp, seeds = sweep.grid([0, 1, 2, 3], learning_rate=[0.1])
    together = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny).timing
    one_by_one = sweep.train_grid(mlp_task(), SPEC, hp, seeds, tiny, run_chunk=1).timing
    assert (together["runs_per_call"], one_by_one["runs_per_call"]) == (4, 1)
    assert together["steady_run_epoch_seconds"] == together["steady_epoch_seconds"] / 4
    assert one_by_one["steady_run_epoch_seconds"] == one_by_one["steady_epoch_seconds"]
    assert one_by_one["epochs_timed"] == 4 * SPEC.epochs
