"""The CNN: shapes, parameter counts, dropout, convolution formulations, augmentation, and a
short real training run (integration)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mnist_jax import augment, kernels, models, sweep, tasks
from mnist_jax.config import ConfigError, load_config_file, validate
from mnist_jax.train import TrainSpec

STUDY = dict(filters=(32, 32), pool=(True, False), dense=32)
BEST = dict(filters=(32, 64), pool=(True, True), padding="SAME", dense=128, dense_dropout=True)


def images(n: int = 4, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, 28, 28, 1))


def shapes(params) -> dict:
    return jax.tree_util.tree_map(lambda a: a.shape, params)["params"]


def test_study_cnn_shapes_and_parameter_count():
    model = models.CNN(**STUDY)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images(1)))  # shapes only: nothing compiled
    # conv 3*3*1*32 + 32, conv 3*3*32*32 + 32, dense 11*11*32*32 + 32, dense 32*10 + 10 (Keras' summary)
    assert models.param_count(params) == 320 + 9248 + 123_936 + 330 == 133_834
    assert shapes(params)["Conv_1"]["kernel"] == (3, 3, 32, 32)
    assert shapes(params)["Dense_0"]["kernel"] == (11 * 11 * 32, 32)
    assert jax.eval_shape(lambda p: model.apply(p, images(5)), params).shape == (5, 10)


@pytest.mark.slow
@pytest.mark.parametrize("fields, count, flat", [
    (dict(filters=(64, 64), pool=(True, False), dense=0), 640 + 36_928 + 7744 * 10 + 10, 11 * 11 * 64),
    (dict(filters=(128, 128), pool=(True, False), dense=128), 1280 + 147_584 + 15_488 * 128 + 128 + 1290, 11 * 11 * 128),
    (BEST, 320 + 18_496 + 3136 * 128 + 128 + 1290, 7 * 7 * 64),
])
def test_search_and_best_shapes(fields, count, flat):
    model = models.CNN(**fields)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images(1)))  # shapes only: nothing compiled
    assert models.param_count(params) == count
    first_dense = shapes(params)["Dense_0"]["kernel"]
    assert first_dense[0] == flat
    assert jax.eval_shape(lambda p: model.apply(p, images(3)), params).shape == (3, 10)


def test_from_config_builds_the_cnn():
    model = models.from_config(load_config_file("configs/cnn.py").model)
    assert isinstance(model, models.CNN)
    assert model.filters == (32, 32) and model.pool == (True, False) and model.dense == 32
    best = models.from_config(load_config_file("configs/cnn_best.py").model)
    assert best.padding == "SAME" and best.dense_dropout


def test_mismatched_pool_is_an_error():
    with pytest.raises(ValueError, match="one entry per conv layer"):
        models.CNN(filters=(32, 32), pool=(True,)).init(jax.random.key(0), images(1))


@pytest.mark.parametrize("fields", [STUDY, BEST])
def test_dropout_off_at_evaluation_and_on_in_training(fields):
    model = models.CNN(**fields)
    x = images(8)
    params = jax.jit(model.init)(jax.random.key(0), x)
    apply = jax.jit(model.apply, static_argnames="train")  # each mode one compiled program (the rate traced)
    a = apply(params, x, dropout_rate=0.5)
    b = apply(params, x, dropout_rate=0.5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, apply(params, x))  # the rate does nothing at evaluation
    t1 = apply(params, x, train=True, dropout_rate=0.5, rngs={"dropout": jax.random.key(1)})
    t2 = apply(params, x, train=True, dropout_rate=0.5, rngs={"dropout": jax.random.key(2)})
    assert np.abs(np.asarray(t1) - np.asarray(a)).max() > 1e-3
    assert np.abs(np.asarray(t1) - np.asarray(t2)).max() > 1e-3
    t0 = apply(params, x, train=True, dropout_rate=0.0, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(t0, a, rtol=1e-5, atol=1e-6)  # rate 0 in training = evaluation


def test_dropout_rate_is_traced_and_vmaps():
    model = models.CNN(**STUDY)
    x = images(4)
    params = jax.jit(model.init)(jax.random.key(0), x)
    rates = jnp.array([0.0, 0.5, 0.8])
    out = np.asarray(jax.jit(jax.vmap(lambda r: model.apply(params, x, train=True, dropout_rate=r,
                                                            rngs={"dropout": jax.random.key(3)})))(rates))
    assert out.shape == (3, 4, 10)
    np.testing.assert_allclose(out[0], jax.jit(model.apply)(params, x), rtol=1e-5, atol=1e-6)
    assert np.abs(out[1] - out[2]).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["fused", "im2col"])
@pytest.mark.parametrize("fields", [STUDY, BEST, dict(filters=(8, 16, 4), pool=(False, True, True), dense=0, kernel_size=5)])
def test_every_convolution_formulation_agrees_with_lax(fields, impl):
    x = images(6, seed=3)
    a_model = models.CNN(**fields, conv_impl=impl)
    b_model = models.CNN(**fields, conv_impl="lax")
    # compiled whole (jax.jit), not as the hundreds of single operations an eager call compiles
    params = jax.jit(a_model.init)(jax.random.key(1), x)
    like = jax.eval_shape(b_model.init, jax.random.key(1), x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(like)
    a, b = jax.jit(a_model.apply)(params, x), jax.jit(b_model.apply)(params, x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(a)).max() > 1e-2  # not trivially zero
    # gradients agree too: both formulations train the same model
    loss = lambda m: lambda p: jnp.sum(jnp.square(m.apply(p, x)))  # noqa: E731
    ga, gb = jax.jit(jax.grad(loss(a_model)))(params), jax.jit(jax.grad(loss(b_model)))(params)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3, 8])
def test_fused_conv_gradients_match_lax_for_input_and_kernel(channels):
    rng = np.random.default_rng(channels)
    x = rng.normal(size=(3, 9, 8, channels)).astype(np.float32)
    k = rng.normal(size=(3, 3, channels, 5)).astype(np.float32)
    w = rng.normal(size=(3, 7, 6, 5)).astype(np.float32)

    # compiled whole (jax.jit), not as the single operations an eager call compiles
    @jax.jit
    def convolutions(x, k, w):
        g = jax.grad(lambda x, k: jnp.sum(kernels.fused_conv(x, k) * w), argnums=(0, 1))(x, k)
        g_ref = jax.grad(lambda x, k: jnp.sum(kernels.lax_conv(x, k) * w), argnums=(0, 1))(x, k)
        # vmapped over runs (the sweep's case) it is still the same convolution
        runs = jax.vmap(kernels.fused_conv, (None, 0))(x, jnp.stack([k, 2 * k]))
        return kernels.fused_conv(x, k), kernels.lax_conv(x, k), g, g_ref, runs[1]

    fused, lax, g, g_ref, second_run = convolutions(x, k, w)
    np.testing.assert_allclose(fused, lax, rtol=1e-4, atol=1e-4)
    for u, v in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second_run, 2 * np.asarray(lax), rtol=1e-4, atol=1e-4)


def test_dropout_zeroes_the_rate_and_keeps_the_mean():
    x = np.ones((200, 1000), np.float32)
    dropout = jax.jit(kernels.dropout)  # one compiled program for every rate (traced)
    for rate in (0.0, 0.2, 0.5, 0.8):
        y = np.asarray(dropout(x, rate, jax.random.key(7)))
        dropped = np.mean(y == 0)
        assert abs(dropped - rate) < 0.005, (rate, dropped)
        assert abs(y.mean() - 1.0) < 0.02
        np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)
    a, b = dropout(x, 0.5, jax.random.key(1)), dropout(x, 0.5, jax.random.key(2))
    assert np.any(np.asarray(a) != np.asarray(b))
    np.testing.assert_array_equal(a, dropout(x, 0.5, jax.random.key(1)))


def test_im2col_conv_matches_a_direct_sum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    k = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    direct = np.zeros((2, 4, 5, 4), np.float32)
    for i in range(4):
        for j in range(5):
            direct[:, i, j] = np.einsum("bhwc,hwcf->bf", x[:, i:i + 3, j:j + 3], k)
    np.testing.assert_allclose(jax.jit(kernels.im2col_conv)(x, k), direct, rtol=1e-4, atol=1e-4)


def test_max_pool_values_and_gradient():
    @jax.jit  # one compiled program, not one per operation
    def pools():
        x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3) % 7.3
        ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        w = jax.random.normal(jax.random.key(0), ref.shape)
        g = jax.grad(lambda x: jnp.sum(kernels.max_pool_2x2(x) * w))(x)
        g_ref = jax.grad(lambda x: jnp.sum(jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                                                   (1, 2, 2, 1), "VALID") * w))(x)
        return kernels.max_pool_2x2(x), ref, g, g_ref

    pooled, ref, g, g_ref = pools()
    np.testing.assert_array_equal(pooled, ref)
    np.testing.assert_allclose(g, g_ref)


def test_default_conv_impl_per_backend():
    assert kernels.default_conv_impl("cpu") == "fused"
    assert kernels.default_conv_impl("gpu") == "fused"  # measured on an H100: fused 0.07 s, lax 0.11 s per epoch
    assert kernels.default_conv_impl("tpu") == "lax"  # not measured: the library convolution
    assert kernels.default_conv_impl() in kernels.CONV_IMPLS


def test_random_shift_keeps_labels_shapes_and_pixels():
    aug = augment.random_shift(2)

    @jax.jit  # one compiled program, not one per operation
    def bordered_and_shifted(key):
        x = images(16, seed=5)
        x = x * (jnp.arange(28)[None, :, None, None] >= 3) * (jnp.arange(28)[None, :, None, None] < 25)  # empty 3-px border
        x = x * (jnp.arange(28)[None, None, :, None] >= 3) * (jnp.arange(28)[None, None, :, None] < 25)
        return x, aug(key, x, {})

    x, y = (np.asarray(a) for a in bordered_and_shifted(jax.random.key(0)))
    assert y.shape == x.shape and y.dtype == x.dtype
    # a shift inside the empty border only moves pixels: the ink of each image is preserved
    np.testing.assert_allclose(y.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)), rtol=1e-5)
    assert not np.allclose(y, x)  # some images moved
    again = bordered_and_shifted(jax.random.key(0))[1]
    np.testing.assert_array_equal(y, again)  # a function of its key


def test_shift_images_moves_by_the_offset():
    x = np.zeros((3, 6, 6, 1), np.float32)
    x[:, 2, 3, 0] = 1.0
    y = np.asarray(jax.jit(augment.shift_images, static_argnums=3)(x, np.array([1, -2, 0]), np.array([0, 1, -2]), 2))
    assert [tuple(np.argwhere(y[b, ..., 0])[0]) for b in range(3)] == [(3, 3), (0, 4), (2, 1)]


@pytest.mark.slow
def test_augmentation_in_the_task_keeps_labels(tiny):
    """The task's loss sees augmented images but the batch's labels: train on synthetic data."""
    model = models.CNN(filters=(4, 4), pool=(True, False), dense=8)
    task = tasks.classifier_task(model, augment=augment.random_shift(1))
    hp, seeds = sweep.grid([0, 1], learning_rate=[3e-3], dropout_rate=[0.0])
    result = sweep.train_grid(task, TrainSpec(epochs=4, batch_size=32, optimizer="adam"), hp, seeds, tiny)
    assert result.history["val_accuracy"].shape == (2, 4)
    assert result.history["val_accuracy"][:, -1].min() > 0.5  # 10 classes: chance is 0.1


def test_augment_from_config():
    assert augment.from_config(ml_collections.ConfigDict({"max_shift": 0})) is None
    assert callable(augment.from_config(ml_collections.ConfigDict({"max_shift": 2})))
    with pytest.raises(ValueError):
        augment.random_shift(-1)


def test_config_rules_reject_bad_cnn_fields():
    c = load_config_file("configs/cnn.py")
    validate(c)
    for field, bad in [("max_shift", 9), ("dropout_rate", 1.0)]:
        c2 = load_config_file("configs/cnn.py")
        c2[field] = bad
        with pytest.raises(ConfigError, match=field):
            validate(c2)
    c3 = load_config_file("configs/cnn.py")
    c3.model.conv_impl = "fft"
    with pytest.raises(ConfigError, match="conv_impl"):
        validate(c3)


@pytest.mark.integration
def test_one_real_epoch_passes_97(mnist):
    """One epoch of the study's CNN with Adam and a cosine decay on the real MNIST (one seed) passes
    97 % on the test set and on the validation set."""
    model = models.CNN(**STUDY)
    task = tasks.classifier_task(model)
    hp, seeds = sweep.grid([0], learning_rate=[2e-3], dropout_rate=[0.25])
    spec = TrainSpec(epochs=1, batch_size=128, optimizer="adam", schedule="cosine")
    result = sweep.train_grid(task, spec, hp, seeds, mnist)
    test_acc = result.history["test_accuracy"][:, -1]
    assert np.all(test_acc >= 0.97), test_acc
    assert np.all(result.history["val_accuracy"][:, -1] >= 0.97), result.history["val_accuracy"]


@pytest.mark.slow
def test_evaluate_applies_a_cnn_workdir(tmp_path):
    """experiments.evaluate restores a CNN workdir's params and predicts with them."""
    from experiments import evaluate
    from mnist_jax import trained

    config = load_config_file("configs/cnn.py")
    config.model.filters = (4, 4)
    config.model.dense = 8
    model = models.from_config(config.model)
    init_runs = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))))
    params = jax.jit(lambda key: init_runs(jax.random.split(key, 2)))(jax.random.key(0))  # one program
    trained.write_json(tmp_path / "config.json", config.to_dict())
    trained.write_json(tmp_path / "metrics.json", {"seeds": [0, 1]})
    trained.save_params(tmp_path, params)
    x = (np.random.default_rng(0).random((37, 28, 28)) * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    assert evaluate.main(["--workdir", str(tmp_path), "--images", str(tmp_path / "x.npy"),
                          "--out", str(tmp_path / "y.npy"), "--seed", "1"]) == 0
    apply_run_1 = jax.jit(lambda params, x: model.apply(jax.tree_util.tree_map(lambda a: a[1], params), x))
    expected = np.argmax(apply_run_1(params, x[..., None] / 255.0), -1)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_search_judge_picks_highest_mean_and_flags_only_real_differences():
    from experiments.cnn_search import judge

    def row(label, vals):
        return {"label": label, "value": label, "val_accuracy": {"per_seed": np.array(vals), "mean": float(np.mean(vals))}}

    clear = judge([row("a", [0.90, 0.901, 0.899]), row("b", [0.98, 0.981, 0.979]), row("c", [0.95, 0.951, 0.949])], 0.05)
    assert clear["chosen"] == "b" and clear["chosen_index"] == 1
    assert clear["matters_beyond_seed_noise"]
    assert all(t["significant"] for t in clear["welch_vs_chosen"])
    noisy = judge([row("a", [0.97, 0.99, 0.98]), row("b", [0.985, 0.975, 0.982])], 0.05)
    assert noisy["chosen"] == "b" and not noisy["matters_beyond_seed_noise"]


def test_cnn_figures_are_written(tmp_path):
    from mnist_jax import plots, stats

    cm = np.diag(np.full(10, 95)) + np.eye(10, k=1, dtype=int) * 3
    plots.confusion_matrix(cm, tmp_path / "cm.png", "test matrix", n_runs=2)
    runs = [np.array([0.98, 0.981, 0.979]), np.array([0.985, 0.984, 0.986])]
    plots.candidate_scatter(["a", "b"], runs, [stats.summary(r) for r in runs], tmp_path / "c.png", "test",
                            xlabel="candidate", ylabel="accuracy (%)", chosen=1)
    assert (tmp_path / "cm.png").stat().st_size > 10_000 and (tmp_path / "c.png").stat().st_size > 10_000


@pytest.mark.slow
def test_best_config_builds_an_augmented_task_that_trains(tiny):
    from mnist_jax import training

    config = load_config_file("configs/cnn_best.py")
    model, task = tasks.classifier_from_config(config)
    assert models.describe(model) == "Conv32s-Pool-Drop-Conv64s-Pool-Drop-Dense128-Drop"
    hp, seeds = sweep.grid([0], **training.hparams(config, task))
    assert sorted(hp) == ["dropout_rate", "learning_rate"]
    spec = TrainSpec(epochs=2, batch_size=64, optimizer=config.optimizer, schedule=config.schedule)
    history = sweep.train_grid(task, spec, hp, seeds, tiny).history
    assert np.all(np.isfinite(history["loss"])) and history["loss"][0, 1] < history["loss"][0, 0]


def test_automatic_run_chunk_trains_conv_nets_one_run_at_a_time_on_a_cpu():
    from mnist_jax import training

    config = load_config_file("configs/cnn.py")
    assert config.run_chunk == 0
    _, conv = tasks.classifier_from_config(config)
    dense = tasks.classifier_task(models.MLP((8,)))
    conv_vae = tasks.vae_task(models.VAE(latent=2, hidden=(8,), conv=True))
    assert training.run_chunk(config, conv, backend="cpu") == 1
    assert training.run_chunk(config, conv_vae, backend="cpu") == 1  # the model says so, whatever the experiment
    assert training.run_chunk(config, conv, backend="gpu") is None
    assert training.run_chunk(config, dense, backend="cpu") is None
    config.run_chunk = 3
    assert training.run_chunk(config, conv, backend="cpu") == 3


def test_accuracy_figure_zooms_past_a_far_first_epoch_and_says_so():
    import matplotlib.pyplot as plt

    from mnist_jax.plots import _zoom_past_first_epoch

    far = {"training": np.array([75.3, 95.0, 98.0, 99.1]), "validation": np.array([97.0, 98.5, 99.2, 99.5])}
    fig, ax = plt.subplots()
    note = _zoom_past_first_epoch(ax, far)
    assert "training 75.3 %" in note and "validation" not in note
    lo, hi = ax.get_ylim()
    assert 94 < lo < 95 and 99.5 < hi < 100
    near = {"training": np.array([92.7, 97.6, 99.5]), "validation": np.array([97.5, 98.3, 99.0])}
    assert _zoom_past_first_epoch(ax, near) == ""
    plt.close(fig)
