"""The VAE: its loss by hand, KL, IWAE against an exact likelihood, samples, reproducibility,
sample-quality measures and a short training on the real MNIST. What the experiment writes, and a
conditional run that reuses its classifier: test_reproduce, on the job's vae stage."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_splits

from experiments import vae as vae_experiment
from mnist_jax import data as data_lib
from mnist_jax import generative, losses, models, sweep, tasks
from mnist_jax.train import Batch, TrainSpec

TINY = {"kind": "vae", "latent": 3, "hidden": (16, 8)}


def tiny_vae(**overrides) -> models.VAE:
    return models.from_config(TINY | overrides)


def init(model, key=0, batch=2):
    """The model's params, built by one compiled program (not one per operation)."""
    labels = jnp.zeros((batch,), jnp.int32)
    return jax.jit(model.init)(jax.random.key(key), jnp.zeros((batch, 28, 28, 1)), jax.random.key(key + 1), labels)


def test_negative_elbo_is_reconstruction_plus_kl_by_hand():
    logits = jnp.array([[0.0, math.log(3.0)]])
    targets = jnp.array([[1.0, 0.0]])
    mean = jnp.array([[1.0, 0.0]])
    logvar = jnp.array([[0.0, math.log(2.0)]])
    total, rec, kl = jax.jit(losses.negative_elbo)(logits, targets, mean, logvar)
    # -log sigmoid(0) - log(1 - sigmoid(ln 3)) = ln 2 + ln 4
    assert rec[0] == pytest.approx(math.log(2) + math.log(4), rel=1e-6)
    # 0.5 (1 + 1 - 1 - 0) + 0.5 (2 + 0 - 1 - ln 2)
    assert kl[0] == pytest.approx(0.5 + 0.5 * (1 - math.log(2)), rel=1e-6)
    assert total[0] == pytest.approx(3 * math.log(2) + 1 - 0.5 * math.log(2), rel=1e-6)


def loss_on_four_images(model, seed: int) -> tuple:
    """vae_task's training loss of `model` on 4 synthetic images with key `seed`: (params, batch,
    loss, parts, binarization key, latent key), the keys as the task splits them."""
    task = tasks.vae_task(model)
    data = synthetic_splits(n_train=4)
    params = jax.jit(task.init)(jax.random.key(0), {})
    key = jax.random.key(seed)
    batch = Batch(jnp.asarray(data.train_x), jnp.asarray(data.train_y), jnp.ones(4))
    loss, parts = jax.jit(task.loss)(params, batch, key, {})
    return params, batch, loss, parts, *jax.random.split(key)


@pytest.mark.slow
def test_task_loss_is_bce_of_the_decoded_draw_plus_kl():
    """vae_task's per-image loss, recomputed from encode / reparameterise / decode by hand."""
    model = tiny_vae()
    params, batch, loss, parts, bin_key, z_key = loss_on_four_images(model, 7)

    @jax.jit  # the hand computation as one program, not one per operation
    def by_hand(params, images, bin_key, z_key):
        x = generative.binarize(bin_key, images)
        mean, logvar = model.apply(params, x, method=model.encode)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_key, mean.shape)
        p = jax.nn.sigmoid(model.apply(params, z, method=model.decode)).reshape(4, -1)
        xf = x.reshape(4, -1)
        rec = -jnp.sum(xf * jnp.log(p) + (1 - xf) * jnp.log1p(-p), axis=1)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, axis=1)
        return x, rec, kl

    x, rec, kl = by_hand(params, batch.x, bin_key, z_key)
    assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}
    np.testing.assert_allclose(parts["reconstruction"], rec, rtol=1e-4)
    np.testing.assert_allclose(parts["kl"], kl, rtol=1e-4)
    np.testing.assert_allclose(loss, rec + kl, rtol=1e-4)


def test_kl_is_zero_when_posterior_equals_prior_and_matches_monte_carlo_otherwise():
    gaussian_kl = jax.jit(losses.gaussian_kl)
    assert float(gaussian_kl(np.zeros((1, 5), np.float32), np.zeros((1, 5), np.float32))[0]) == 0.0
    mean, logvar = jnp.array([[0.7, -1.2]]), jnp.array([[-0.5, 0.8]])
    kl = float(gaussian_kl(mean, logvar)[0])
    assert kl > 0

    @jax.jit
    def monte_carlo(mean, logvar, key):
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (200_000, 2))
        return jnp.mean(generative.log_normal(z, mean, logvar) - generative.log_normal(z, 0.0, 0.0))

    mc = float(monte_carlo(mean, logvar, jax.random.key(0)))
    assert mc == pytest.approx(kl, abs=0.01)


def test_bernoulli_loss_is_finite_for_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 1e4]])
    rec = jax.jit(losses.binary_cross_entropy)(logits, jnp.array([[1.0, 0.0, 0.0]]))
    assert np.isfinite(rec[0]) and float(rec[0]) == pytest.approx(1e4)


@pytest.mark.slow
def test_samples_are_pixel_probabilities_of_the_right_shape():
    model = tiny_vae()
    params = init(model)
    decode = generative.vae_functions(model, params)[1]
    labels = np.zeros(250, np.int32)

    def sample(batch_size):  # one program per batch size, not one per operation
        return jax.jit(lambda key, labels: generative.sample_prior(decode, key, labels, model.latent,
                                                                   batch_size=batch_size))(jax.random.key(0), labels)

    samples = sample(100)
    assert samples.shape == (250, 28, 28) and samples.dtype == jnp.float32
    samples = np.asarray(samples)
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    assert float(samples.std()) > 0  # not one constant image
    again = sample(50)
    np.testing.assert_allclose(samples, again, atol=1e-6)  # batching does not change the draws


@pytest.mark.slow
def test_a_seed_reproduces_and_another_seed_differs():
    task = tasks.vae_task(tiny_vae())
    spec = TrainSpec(epochs=2, batch_size=32, optimizer="adam")
    hp, seeds = sweep.grid([3, 3, 4], learning_rate=[1e-3])
    result = sweep.train_grid(task, spec, hp, seeds, synthetic_splits())
    hist = result.history["test_neg_elbo"]
    np.testing.assert_array_equal(hist[0], hist[1])
    assert not np.allclose(hist[0], hist[2])
    for leaf in jax.tree_util.tree_leaves(result.state.params):
        np.testing.assert_array_equal(leaf[0], leaf[1])
    # and a second call of the whole program (its executable from the compilation cache) gives
    # the same numbers again
    again = sweep.train_grid(task, spec, hp, seeds, synthetic_splits())
    np.testing.assert_array_equal(again.history["test_neg_elbo"], hist)


@pytest.mark.slow
def test_conv_and_conditional_models():
    conv = tiny_vae(conv=True)
    params = init(conv)
    logits, mean, logvar = jax.jit(conv.apply)(params, jnp.zeros((2, 28, 28, 1)), jax.random.key(0))
    assert logits.shape == (2, 28, 28, 1) and mean.shape == logvar.shape == (2, 3)
    cond = tiny_vae(conditional=True)
    params = init(cond)
    z = np.zeros((2, 3), np.float32)
    decode = jax.jit(lambda params, z, labels: cond.apply(params, z, labels, method=cond.decode))
    a = decode(params, z, np.array([1, 1], np.int32))
    b = decode(params, z, np.array([1, 7], np.int32))
    np.testing.assert_allclose(a[0], b[0])
    assert not np.allclose(a[1], b[1])  # the label changes the image
    with pytest.raises(ValueError, match="needs the labels"):
        cond.apply(params, z, method=cond.decode)


def tiny_linear_vae():
    """A 1-D latent, 4-pixel model with an exactly computable likelihood: logits = w z + b."""
    w, b = jnp.array([2.0, -1.5, 0.5, 3.0]), jnp.array([0.3, -0.2, 1.0, -1.0])

    def decode(z, labels):
        return z * w + b  # (N, 1) -> (N, 4)

    def encode(x, labels):  # a deliberately imperfect posterior
        return 0.4 * x.sum(-1, keepdims=True) - 0.8, jnp.full((x.shape[0], 1), math.log(0.5))

    def exact_log_px(x):
        zs = np.linspace(-10, 10, 20_001)
        logits = zs[:, None] * np.asarray(w) + np.asarray(b)
        log_px_z = np.sum(np.asarray(x) * logits - np.logaddexp(0, logits), axis=1)
        log_joint = log_px_z - 0.5 * zs**2 - 0.5 * math.log(2 * math.pi)
        m = log_joint.max()
        return m + math.log(np.trapezoid(np.exp(log_joint - m), zs))

    return encode, decode, exact_log_px


@pytest.mark.slow
def test_iwae_bound_approaches_the_exact_log_likelihood_from_below():
    encode, decode, exact = tiny_linear_vae()
    x = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]], np.float32)
    labels = np.zeros(3, np.int32)
    iwae, elbo = jax.jit(lambda x, labels, key: generative.iwae_log_likelihood(
        encode, decode, x, labels, key, k=5000, batch_size=2))(x, labels, jax.random.key(0))
    truth = np.array([exact(xi) for xi in x])
    np.testing.assert_allclose(iwae, truth, atol=0.02)
    assert np.all(np.asarray(elbo) < truth - 0.05)  # the ELBO of an imperfect posterior is strictly looser
    one, elbo_one = jax.jit(lambda x, labels, key: generative.iwae_bounds(encode, decode, x, labels, key, k=1))(
        x, labels, jax.random.key(1))
    np.testing.assert_allclose(one, elbo_one, rtol=1e-6)  # k = 1: the IWAE bound is the ELBO


def test_frechet_distance_of_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
    fd = generative.frechet_from_moments(mu1, np.diag(sd1**2), mu2, np.diag(sd2**2))
    assert fd == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2))
    feats = np.random.default_rng(0).normal(size=(400, 6))
    assert generative.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    singular = np.c_[feats, np.zeros(400)]  # a dead unit: singular covariance, still finite
    assert np.isfinite(generative.frechet_distance(singular, singular + 1.0))


def test_label_entropy():
    assert generative.label_entropy_bits(np.arange(1000) % 10) == pytest.approx(math.log2(10))
    assert generative.label_entropy_bits(np.full(50, 3)) == 0.0


def test_penultimate_features_are_the_last_hidden_activations():
    model = models.MLP(hidden=(8, 6))
    x = np.asarray(jax.random.uniform(jax.random.key(0), (5, 28, 28, 1)))
    params = jax.jit(model.init)(jax.random.key(1), x)
    logits, feats = jax.jit(lambda params, x: generative.penultimate_features(model, params, x))(params, x)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    h = np.maximum(x.reshape(5, -1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0.0)
    h = np.maximum(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0.0)
    np.testing.assert_allclose(feats, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, jax.jit(model.apply)(params, x), rtol=1e-5)
    probs, feats2 = generative.classify(model, params, x, batch_size=2)
    np.testing.assert_allclose(feats2, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_bad_configs_stop_before_training(tmp_path, capsys):
    assert vae_experiment.main(["--workdir", str(tmp_path), "--config.iwae_images=0"]) == 2
    assert vae_experiment.main(["--workdir", str(tmp_path), "--config.digits=[3, 12]"]) == 2
    assert vae_experiment.main(["--workdir", str(tmp_path), "--config.model.kind=mlp"]) == 2
    assert vae_experiment.main(["--workdir", str(tmp_path), f"--config.classifier.workdir={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert "iwae_images" in err and "digits" in err and "classifier.workdir" in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.integration
def test_brief_training_on_mnist_drives_the_negative_elbo_far_below_its_start(mnist):
    m = data_lib.Splits(*(np.asarray(a) for a in mnist))  # host copies: slicing a device array eagerly compiles a program
    data = data_lib.Splits(m.train_x[:12_000], m.train_y[:12_000], m.val_x[:1000], m.val_y[:1000], m.test_x[:2000],
                           m.test_y[:2000])
    task = tasks.vae_task(models.VAE(latent=16))
    hp = {"learning_rate": jnp.float32(1e-3)}
    start = float(jax.jit(task.evaluate)(jax.jit(task.init)(jax.random.key(0), hp), data, hp,
                                         jax.random.key(1))["test_neg_elbo"])
    assert start == pytest.approx(784 * math.log(2), rel=0.1)  # an untrained decoder: p ~ 0.5 per pixel
    result = sweep.train_grid(task, TrainSpec(epochs=2, batch_size=128, optimizer="adam"),
                              *sweep.grid([0], learning_rate=[1e-3]), data)
    test = result.history["test_neg_elbo"][0]
    assert np.all(np.diff(test) < 0), test
    assert test[-1] < 0.4 * start, (start, test)
    assert result.history["test_kl"][0, -1] > 1.0  # the latent is used, not collapsed onto the prior
