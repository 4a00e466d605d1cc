"""Named random streams of a run (init, order, dropout, noise, augment), one_bit and bootstrap,
on tiny synthetic data: the default reproduces the single-seed numbers bit for bit, and each
stream moves only its own draws."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import augment, losses, models, sweep, tasks, train

SPEC = train.TrainSpec(epochs=2, batch_size=48)
HP = {"learning_rate": jnp.float32(0.1)}
HP_DROP = {**HP, "dropout_rate": jnp.float32(0.3), "input_dropout_rate": jnp.float32(0.1)}


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def same_tree(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def seeds(base=0, **streams):
    """One run's seed dict: every stream `base` unless given."""
    return {**{s: base for s in train.STREAMS}, **streams}


def key_bits(k):
    return np.asarray(jax.random.key_data(k))


def test_epoch_keys_are_the_single_seed_chain():
    # the keys a run drew before streams existed: split(fold_in(split(key(seed))[1], epoch))
    for seed, epoch in [(0, 0), (3, 1), (17, 5)]:
        legacy_perm, legacy_step = jax.random.split(jax.random.fold_in(jax.random.split(jax.random.key(seed))[1], epoch))
        for given in (seed, seeds(seed)):
            perm, steps = train.epoch_keys(given, epoch)
            assert np.array_equal(key_bits(perm), key_bits(legacy_perm))
            assert set(steps) == set(train.STEP_STREAMS)
            for k in steps.values():
                assert np.array_equal(key_bits(k), key_bits(legacy_step))


@pytest.mark.slow
def test_tasks_take_the_same_pieces_of_a_key_as_before():
    # a plain key stands for every stream, so a dict of equal keys gives the same loss
    rng = np.random.default_rng(0)
    batch = train.Batch(rng.integers(0, 255, (8, 28, 28, 1)).astype(np.uint8), np.arange(8, dtype=np.int32) % 10,
                        np.ones(8, np.float32))
    key = jax.random.key(5)
    same = {s: key for s in train.STEP_STREAMS}
    shift = augment.random_shift(2)

    def plain_and_dict(task, params, batch, key, same, hp):
        return task.loss(params, batch, key, hp)[0], task.loss(params, batch, same, hp)[0]

    for task, hp in [(tasks.classifier_task(models.MLP((16,), dropout=True), augment=shift), HP_DROP),
                     (tasks.denoise_task(models.DenoisingAutoencoder()), {"noise_level": jnp.float32(0.3)}),
                     (tasks.vae_task(models.VAE(hidden=(16,), latent=2)), {})]:
        # each task's init and its two losses compiled whole (jax.jit), not as single operations
        params = jax.jit(task.init)(jax.random.key(0), hp)
        a, b = jax.jit(functools.partial(plain_and_dict, task))(params, batch, key, same, hp)
        assert np.array_equal(a, b)
    # the classifier: augmentation from split(key)[0], dropout from split(key)[1], as before streams
    model = models.MLP((16,), dropout=True)
    task = tasks.classifier_task(model, augment=shift)
    params = jax.jit(task.init)(jax.random.key(0), HP_DROP)

    def both(params, batch, key, same, hp):
        aug_key, drop_key = jax.random.split(key)
        x = shift(aug_key, batch.x.astype(jnp.float32) / 255.0, hp)
        logits = model.apply(params, x, train=True, rngs={"dropout": drop_key}, dropout_rate=hp["dropout_rate"],
                             input_dropout_rate=hp["input_dropout_rate"])
        return task.loss(params, batch, same, hp)[0], losses.cross_entropy(logits, batch.y)

    np.testing.assert_array_equal(*jax.jit(both)(params, batch, key, same, HP_DROP))  # both sides compiled alike


@pytest.mark.slow
@pytest.mark.parametrize("name", ["classifier", "denoiser", "vae", "noisy_classifier"])
def test_default_streams_reproduce_the_single_seed_run_bit_for_bit(tiny, name):
    if name == "classifier":
        task, hp = tasks.classifier_task(models.MLP((16,), dropout=True), augment=augment.random_shift(1)), HP_DROP
    elif name == "denoiser":
        task, hp = tasks.denoise_task(models.DenoisingAutoencoder()), {**HP, "noise_level": jnp.float32(0.3)}
    elif name == "vae":
        task, hp = tasks.vae_task(models.VAE(hidden=(16,), latent=2)), {**HP, "learning_rate": jnp.float32(1e-3)}
    else:
        task, hp = tasks.noisy_classifier_task(models.MLP((16,))), {**HP, "noise_level": jnp.float32(0.3)}
    fn = jax.jit(lambda s: train.run(task, SPEC, hp, s, tiny))
    one, hist_one = fn(jnp.int32(3))
    many, hist_many = fn(seeds(jnp.int32(3), one_bit=jnp.int32(-1), bootstrap=jnp.int32(-1)))
    assert same_tree(one.params, many.params)
    assert all(np.array_equal(hist_one[k], hist_many[k]) for k in hist_one)


@pytest.mark.slow
def test_train_grid_with_stream_seeds_equals_run_seeds(tiny):
    task = tasks.classifier_task(models.MLP((16,), dropout=True))
    hp, run_seeds = sweep.grid([0, 1, 2], learning_rate=[0.1], dropout_rate=[0.3], input_dropout_rate=[0.0])
    a = sweep.train_grid(task, SPEC, hp, run_seeds, tiny)
    b = sweep.train_grid(task, SPEC, hp, sweep.stream_grid(run_seeds), tiny)
    assert same_tree(a.state.params, b.state.params)
    assert all(np.array_equal(a.history[k], b.history[k]) for k in a.history)


@jax.jit
def classifier_draws(seed):
    """An MLP classifier run's initial params and, for epochs 0 and 1, its batch order and step
    keys (their bits): one compiled program for every run, not one per operation."""
    task = tasks.classifier_task(models.MLP((16,)))
    epochs = [train.epoch_keys(seed, epoch) for epoch in (0, 1)]
    return (train.init_state(task, SPEC, HP, seed, 256).params,
            [(train.epoch_batches(perm, 256, 48)[0], jax.tree_util.tree_map(jax.random.key_data, steps))
             for perm, steps in epochs])


@pytest.mark.parametrize("stream", train.STREAMS)
def test_changing_one_stream_moves_only_its_draws(stream):
    base, other = seeds(0), seeds(0, **{stream: 7})
    (init_a, epochs_a), (init_b, epochs_b) = classifier_draws(base), classifier_draws(other)
    assert same_tree(init_a, init_b) == (stream != "init")
    for (order_a, steps_a), (order_b, steps_b) in zip(epochs_a, epochs_b, strict=True):
        assert np.array_equal(order_a, order_b) == (stream != "order")
        for s in train.STEP_STREAMS:
            assert np.array_equal(steps_a[s], steps_b[s]) == (s != stream)


@pytest.mark.slow
def test_a_stream_moves_the_run_only_where_the_task_draws_from_it(tiny):
    # a dropout classifier without augmentation: init, order and dropout move it; noise and augment do not.
    # Run 0 is the base run, run k + 1 varies stream k alone; one program trains them all.
    task = tasks.classifier_task(models.MLP((16,), dropout=True))
    n = 1 + len(train.STREAMS)
    hp = {k: jnp.full((n,), v) for k, v in HP_DROP.items()}
    seeds = {s: jnp.array([0] + [7 if t == s else 0 for t in train.STREAMS], jnp.int32) for s in train.STREAMS}
    result = sweep.train_grid(task, SPEC, hp, seeds, tiny)
    runs = [jax.tree_util.tree_map(lambda x, r=r: x[r], result.state.params) for r in range(n)]
    for k, stream in enumerate(train.STREAMS):
        assert same_tree(runs[0], runs[k + 1]) == (stream in ("noise", "augment")), stream


def test_one_bit_flips_one_initial_weight_by_one_ulp():
    task = tasks.classifier_task(models.MLP((16,)))
    init_params = jax.jit(lambda seeds: train.init_state(task, SPEC, HP, seeds, 256).params)  # one program, every seed
    base = init_params(seeds(0, one_bit=-1))
    flipped = init_params(seeds(0, one_bit=1234))
    a, b = leaves(base), leaves(flipped)
    differ = [i for i in range(len(a)) if not np.array_equal(a[i], b[i])]
    assert len(differ) == 1
    kernel_a, kernel_b = a[differ[0]], b[differ[0]]
    assert kernel_a.shape == (784, 16)  # the first kernel
    where = np.flatnonzero(kernel_a.ravel() != kernel_b.ravel())
    assert where.tolist() == [1234]
    x, y = kernel_a.ravel()[1234], kernel_b.ravel()[1234]
    assert y in (np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf)))
    assert int(x.view(np.uint32)) ^ int(y.view(np.uint32)) == 1
    assert same_tree(base, jax.jit(lambda: train.init_state(task, SPEC, HP, 0, 256).params)())  # -1: unchanged


def test_bootstrap_indices_have_the_training_set_size_and_repeat():
    idx = np.asarray(train.bootstrap_indices(jnp.int32(4), 1000))
    assert idx.shape == (1000,) and idx.min() >= 0 and idx.max() < 1000
    assert 550 < len(np.unique(idx)) < 710  # about 1 - 1/e = 63 % distinct
    assert np.array_equal(idx, train.bootstrap_indices(jnp.int32(4), 1000))
    assert not np.array_equal(idx, train.bootstrap_indices(jnp.int32(5), 1000))


@pytest.mark.slow
def test_bootstrap_trains_on_the_resampled_set_every_epoch(tiny):
    # per-example loss = label: the epoch's mean loss is the mean label of the examples it used
    def loss(params, batch, keys, hp):
        return batch.y.astype(jnp.float32) + params["w"], {}

    task = train.Task(lambda key, hp: {"w": jnp.zeros(())}, loss, lambda params, data, hp, keys: {})
    n = tiny.train_x.shape[0]
    hp = {"learning_rate": jnp.float32(0.0)}
    _, on = train.run(task, SPEC, hp, seeds(0, bootstrap=9), tiny)
    _, off = train.run(task, SPEC, hp, seeds(0, bootstrap=-1), tiny)
    expected = tiny.train_y[np.asarray(train.bootstrap_indices(jnp.int32(9), n))].mean()
    np.testing.assert_allclose(on["loss"], [expected] * SPEC.epochs, rtol=1e-6)
    np.testing.assert_allclose(off["loss"], [tiny.train_y.mean()] * SPEC.epochs, rtol=1e-6)
    assert abs(expected - tiny.train_y.mean()) > 1e-3


def test_unknown_or_missing_stream_is_a_clear_error():
    with pytest.raises(ValueError, match="missing: \\['order'"):
        train.stream_seeds({"init": 0})
    with pytest.raises(ValueError, match="unknown: \\['shuffle'\\]"):
        train.stream_seeds({**seeds(0), "shuffle": 1})
