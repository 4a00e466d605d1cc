"""The denoising autoencoder, its tasks and experiments: tiny arrays, plus one real MNIST run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import denoise, evaluate, noise_accuracy
from mnist_jax import denoising, losses, models, noise, sweep, tasks
from mnist_jax.data import Splits, load_mnist
from mnist_jax.train import Batch, TrainSpec


def tiny_splits(n_train=192, n_eval=48, seed=0) -> Splits:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_train + 2 * n_eval, 28, 28, 1)) < 0.2).astype(np.uint8) * 255
    y = rng.integers(0, 10, n_train + 2 * n_eval).astype(np.int32)
    a, b = n_train, n_train + n_eval
    return Splits(*(jnp.asarray(v) for v in (x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])))


def test_autoencoder_shapes_range_and_size():
    model = models.from_config({"kind": "dae", "hidden": [128], "latent": 96})
    assert isinstance(model, models.DenoisingAutoencoder)
    x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1))
    params = jax.jit(model.init)(jax.random.key(1), x)  # one program each, not one per operation
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == x.shape
    images = np.asarray(jax.jit(lambda params, x: tasks.denoised(model, params, x))(params, x))
    assert images.min() >= 0 and images.max() <= 1
    widths = [784, 128, 96, 128, 784]
    assert models.param_count(params) == sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
    assert models.describe(model) == "-".join(map(str, widths))


def test_binary_cross_entropy_matches_optax_and_stays_finite():
    z = jnp.array([[-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4]])
    ours_and_ref = jax.jit(lambda z, t: (losses.binary_cross_entropy(z, t),  # one program for every t
                                         optax.sigmoid_binary_cross_entropy(z, t).sum(axis=1),
                                         jax.grad(lambda z, t: losses.binary_cross_entropy(z, t).sum())(z, t)))
    for t in (jnp.zeros_like(z), jnp.ones_like(z), jnp.full_like(z, 0.3)):
        ours, ref, grad = ours_and_ref(z, t)
        np.testing.assert_allclose(ours, ref, rtol=1e-6)
        assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.slow
def test_denoise_loss_draws_fresh_noise_per_key_and_none_at_level_zero():
    model = models.DenoisingAutoencoder()
    task = tasks.denoise_task(model)
    data = tiny_splits()
    params = task.init(jax.random.key(0), {})
    batch = Batch(data.train_x[:8], data.train_y[:8], jnp.ones(8))
    for level, same in ((0.0, True), (0.5, False)):
        hp = {"noise_level": jnp.float32(level)}
        a, _ = task.loss(params, batch, jax.random.key(1), hp)
        b, _ = task.loss(params, batch, jax.random.key(2), hp)
        assert a.shape == (8,)
        assert bool(jnp.allclose(a, b)) == same


@pytest.mark.slow
def test_frozen_params_ride_along_the_hp_dict():
    model = models.DenoisingAutoencoder(hidden=(8,), latent=4)
    params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))))(jax.random.split(jax.random.key(0), 3))
    hp = tasks.with_frozen({"noise_level": np.zeros(3, np.float32)}, "denoiser", params)
    back = tasks.frozen(hp, "denoiser")
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_denoisers_and_classifiers_train_as_one_vmapped_grid():
    data = tiny_splits()
    dae = models.DenoisingAutoencoder(hidden=(16,), latent=8)
    hp, seeds = sweep.grid([0], noise_level=[0.0, 0.6], learning_rate=[1e-3])
    ae = sweep.train_grid(tasks.denoise_task(dae), TrainSpec(epochs=1, batch_size=64, optimizer="adam"), hp, seeds, data)
    assert ae.history["val_bce"].shape == (2, 1) and np.isfinite(ae.history["loss"]).all()
    # at level 0 the noisy validation images are the clean ones; at 0.6 far from them
    np.testing.assert_allclose(ae.history["val_psnr_noisy"][0], 100.0, atol=1e-3)
    assert (ae.history["val_psnr_noisy"][1] < 10).all()
    clf = models.MLP((16,))
    hp_b = tasks.with_frozen({**hp, "learning_rate": np.full(2, 0.1, np.float32)}, "denoiser", ae.state.params)
    res = sweep.train_grid(tasks.noisy_classifier_task(clf, dae), TrainSpec(epochs=1, batch_size=64), hp_b, seeds, data)
    assert res.history["val_accuracy"].shape == (2, 1) and np.isfinite(res.history["loss"]).all()
    metrics = denoising.test_metrics(dae, ae.state.params, hp["noise_level"], data, eval_seed=0)
    np.testing.assert_allclose(metrics["test_psnr_noisy"][0], 100.0, atol=1e-3)


def test_conclusion_names_where_denoising_helps():
    levels = [0.0, 0.4, 0.8]
    diff = {"0": {"mean": -0.001}, "0.4": {"mean": 0.05}, "0.8": {"mean": 0.001}}
    welch = {"0": {"p_value": 0.5}, "0.4": {"p_value": 0.001}, "0.8": {"p_value": 0.6}}
    verdict = noise_accuracy.conclusion(levels, diff, welch)
    assert verdict["helps_levels"] == [0.4] and verdict["hurts_levels"] == []
    assert "Above level 0.4 it no longer helps" in verdict["text"]


@pytest.mark.parametrize("argv, message", [
    (["--config.noise_levels=[0.2,1.5]"], "noise_levels"),
    (["--config.noise_levels=[0.2,0.2]"], "0.2 is given twice"),
    (["--config.figure_digits=0"], "figure_digits"),
])
def test_denoise_bad_config_stops_before_training(tmp_path, capsys, argv, message):
    assert denoise.main(["--workdir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--config.classifier.kind=resnet"], "config.classifier.kind='resnet'"),
    (["--config.denoiser_epochs=-1"], "denoiser_epochs"),
    (["--config.noise_levels=[-0.1]"], "noise_levels"),
])
def test_noise_accuracy_bad_config_stops_before_training(tmp_path, capsys, argv, message):
    assert noise_accuracy.main(["--workdir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.integration
def test_denoising_raises_psnr_at_level_0_4(tmp_path, capsys):
    """One real epoch at level 0.4: the denoised test images are much closer to the clean ones."""
    workdir = tmp_path / "denoise"
    argv = ["--workdir", str(workdir), "--config.noise_levels=[0.4]", "--config.seeds=1", "--config.epochs=1"]
    assert denoise.main(argv) == 0
    metrics = json.loads((workdir / "metrics.json").read_text())
    level = metrics["per_level"]
    assert level["psnr_gain_db"]["0.4"]["mean"] > 3.0
    assert (workdir / "denoise.png").stat().st_size > 10_000

    # experiments.evaluate --level 0.4 denoises images given in a file
    clean = load_mnist()["test_x"][:200, ..., 0].astype(np.float32) / 255.0
    noisy = np.asarray(jax.jit(noise.salt_and_pepper)(jax.random.key(123), jnp.asarray(clean), 0.4))  # one program
    np.save(tmp_path / "noisy.npy", noisy)
    out = tmp_path / "denoised.npy"
    assert evaluate.main(["--workdir", str(workdir), "--images", str(tmp_path / "noisy.npy"), "--out", str(out),
                          "--level", "0.4"]) == 0
    den = np.load(out)
    assert den.shape == noisy.shape and den.dtype == np.float32 and 0 <= den.min() and den.max() <= 1
    psnr_noisy, psnr_den = (np.asarray(a).mean() for a in jax.jit(jax.vmap(noise.psnr, in_axes=(None, 0)))(
        clean, np.stack([noisy, den])))
    assert psnr_den > psnr_noisy + 3.0
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(workdir), "--images", str(tmp_path / "noisy.npy"), "--level", "0.5"]) == 2
    assert "no autoencoder was trained at that level" in capsys.readouterr().err
    assert evaluate.main(["--workdir", str(workdir), "--images", str(tmp_path / "noisy.npy")]) == 2
    assert math.isfinite(metrics["timing"]["steady_run_epoch_seconds"])
