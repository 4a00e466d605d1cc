"""The convolutional VAE stage and the VAE ablations: the conv VAE's ELBO terms by hand, the KL
warm-up and the IWAE objective against the plain ELBO training, the conditional model's
per-digit share, and the comparison table of the vae stages against the literature."""

from __future__ import annotations

import copy
import json
import types
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import synthetic
from conftest import synthetic_splits
from test_vae import loss_on_four_images

from experiments import vae as vae_experiment
from mnist_jax import generative, models, registry, report, stats, sweep, tasks
from mnist_jax.config import ConfigError, load_config_file, validate
from mnist_jax.train import TrainSpec

# its module fixture is built once: every test of this file runs on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("test_vae_conv")

TINY_CONV = {"kind": "vae", "latent": 3, "hidden": (8,), "conv": True}
TINY_DENSE = {"kind": "vae", "latent": 3, "hidden": (16, 8)}


def numpy_sigmoid_bce(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """-sum log Bernoulli(x; sigmoid(logits)) per image, in float64 numpy."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return -np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=1)


@pytest.mark.slow  # compiles the convolutional VAE's programs: seconds each
def test_conv_vae_elbo_terms_equal_a_numpy_hand_computation():
    model = models.from_config(TINY_CONV)
    params, batch, loss, parts, bin_key, z_key = loss_on_four_images(model, 5)

    @jax.jit  # the model's parts of the hand computation as one program each, not one per operation
    def encode(params, images, bin_key, z_key):
        x = generative.binarize(bin_key, images)
        mean, logvar = model.apply(params, x, method=model.encode)
        return x, mean, logvar, jax.random.normal(z_key, mean.shape)

    x, mean, logvar, eps = (np.asarray(a, np.float64) for a in encode(params, batch.x, bin_key, z_key))
    x = x.reshape(4, -1)
    z = mean + np.exp(0.5 * logvar) * eps
    logits = np.asarray(jax.jit(partial(model.apply, method=model.decode))(params, np.asarray(z, np.float32))).reshape(4, -1)
    rec = numpy_sigmoid_bce(logits, x)
    kl = 0.5 * np.sum(np.exp(logvar) + mean**2 - 1.0 - logvar, axis=1)
    assert np.all(kl > 0) and np.all(rec > 0)
    np.testing.assert_allclose(parts["reconstruction"], rec, rtol=1e-4)
    np.testing.assert_allclose(parts["kl"], kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, rec + kl, rtol=1e-4)


def test_kl_weight_rises_linearly_and_is_one_without_warm_up():
    kl_weight = jax.jit(tasks.kl_weight)
    w = kl_weight(np.array([0.0, 0.5, 1.0, 2.0, 3.0, 50.0], np.float32), 2.0)
    np.testing.assert_allclose(w, [0.0, 0.25, 0.5, 1.0, 1.0, 1.0])
    assert float(kl_weight(0.0, 0.0)) == 1.0 and float(kl_weight(7.3, 0.0)) == 1.0


def train_tiny(task, **hp):
    """Two epochs of two seeds of `task` on tiny synthetic data: (history, params), as numpy."""
    spec = TrainSpec(epochs=2, batch_size=32, optimizer="adam")
    result = sweep.train_grid(task, spec, *sweep.grid([0, 1], learning_rate=[1e-3], **hp),
                              synthetic_splits(n_train=96, n_eval=32))
    return ({k: np.asarray(v) for k, v in result.history.items()},
            [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(result.state.params)])


def assert_same(a, b) -> None:
    for key in a[0]:
        np.testing.assert_array_equal(a[0][key], b[0][key], err_msg=key)
    for x, y in zip(a[1], b[1], strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def plain_training():
    """The plain ELBO training, compiled as the tests that compare with it compile."""
    with pytest.MonkeyPatch.context() as mp, synthetic.light_compiles(mp):
        return train_tiny(tasks.vae_task(models.from_config(TINY_DENSE)))


@pytest.mark.slow  # compiles the convolutional VAE's programs: seconds each
def test_kl_warm_up_of_zero_is_bit_identical_to_the_elbo_and_changes_the_numbers_when_set(plain_training):
    model = models.from_config(TINY_DENSE)
    warm = tasks.vae_task(model, kl_warmup=True)
    assert warm.hparams == ("kl_warmup_epochs",)
    assert_same(train_tiny(warm, kl_warmup_epochs=[0.0]), plain_training)
    # one program trains both values (traced): the warm-up changes the loss and the params
    values = [0.0, 3.0]
    history, _ = train_tiny(warm, kl_warmup_epochs=values)
    off = np.asarray(sweep.grid([0, 1], learning_rate=[1e-3], kl_warmup_epochs=values)[0]["kl_warmup_epochs"]) == 0
    np.testing.assert_array_equal(history["test_neg_elbo"][off], plain_training[0]["test_neg_elbo"])
    on = history["test_neg_elbo"][~off]
    assert on.shape == (2, 2) and not np.allclose(on, plain_training[0]["test_neg_elbo"])
    # in the first epoch the warm-up's KL weight stays below 1/3: reconstruction <= loss < reconstruction + KL / 2
    first = {k: history[k][~off, 0] for k in ("loss", "train_reconstruction", "train_kl")}
    assert np.all(first["train_kl"] > 0.01)
    assert np.all(first["loss"] < first["train_reconstruction"] + 0.5 * first["train_kl"])
    assert np.all(first["loss"] >= first["train_reconstruction"] - 1e-3)


@pytest.mark.slow  # compiles the convolutional VAE's programs: seconds each
def test_iwae_objective_with_one_sample_equals_the_elbo_training_and_more_samples_differ(plain_training):
    model = models.from_config(TINY_DENSE)
    config = ml_collections.ConfigDict({"train_iwae_k": 1})
    assert_same(train_tiny(tasks.vae_from_config(model, config)), plain_training)
    history, _ = train_tiny(tasks.vae_task(model, iwae_k=4))
    assert np.all(np.isfinite(history["test_neg_elbo"]))
    assert not np.allclose(history["test_neg_elbo"], plain_training[0]["test_neg_elbo"])


@pytest.mark.slow  # compiles the convolutional VAE's programs: seconds each
def test_iwae_training_loss_by_hand():
    """k = 1: rec + log q(z) - log p(z) of the one draw; k > 1: -log mean exp(log w_i) of the k draws."""
    model = models.from_config(TINY_CONV)
    params = jax.jit(tasks.vae_task(model).init)(jax.random.key(0), {})
    x = jax.jit(generative.binarize)(jax.random.key(1), synthetic_splits(n_train=3).train_x)
    labels = np.zeros(3, np.int32)
    key = jax.random.key(2)
    # each a compiled program, not one per operation
    training_loss = jax.jit(partial(tasks.iwae_training_loss, model), static_argnums=4)
    encode = jax.jit(partial(model.apply, method=model.encode))
    normal = jax.jit(jax.random.normal, static_argnums=1)
    decode = jax.jit(partial(model.apply, method=model.decode))
    for k in (1, 5):
        loss, rec, kl = training_loss(params, x, labels, key, k)
        mean, logvar = (np.asarray(a, np.float64) for a in encode(params, x))
        z = mean + np.exp(0.5 * logvar) * np.asarray(normal(key, (k, *mean.shape)), np.float64)
        logits = np.asarray(decode(params, np.asarray(z.reshape(k * 3, -1), np.float32)))
        xr = np.tile(np.asarray(x, np.float64).reshape(3, -1), (k, 1))
        bce = numpy_sigmoid_bce(logits.reshape(k * 3, -1), xr).reshape(k, 3)
        log_q = -0.5 * np.sum(np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar), axis=-1)
        log_p = -0.5 * np.sum(np.log(2 * np.pi) + z**2, axis=-1)
        log_w = -bce + log_p - log_q
        top = log_w.max(0)
        np.testing.assert_allclose(loss, -(top + np.log(np.mean(np.exp(log_w - top), axis=0))), rtol=1e-4)
        np.testing.assert_allclose(rec, bce.mean(0), rtol=1e-4)
        np.testing.assert_allclose(kl, 0.5 * np.sum(np.exp(logvar) + mean**2 - 1 - logvar, -1), rtol=1e-4, atol=1e-6)


def test_sampling_temperature_scales_the_prior_draws():
    model = models.from_config(TINY_DENSE)
    params = jax.jit(tasks.vae_task(model).init)(jax.random.key(0), {})
    labels = np.zeros(10, np.int32)

    def decode(z, labels):  # the latent itself as the first logits of the image
        return jnp.pad(z, ((0, 0), (0, 28 * 28 - z.shape[1]))).reshape(-1, 28, 28, 1)

    @partial(jax.jit, static_argnums=2)  # one program per temperature, not one per operation
    def latents(key, labels, t):
        return jax.scipy.special.logit(generative.sample_prior(decode, key, labels, 3, temperature=t).reshape(10, -1)[:, :3])

    z = {t: np.asarray(latents(jax.random.key(3), labels, t)) for t in (1.0, 0.5)}
    assert float(np.std(z[1.0])) > 0.3
    np.testing.assert_allclose(z[0.5], 0.5 * z[1.0], rtol=1e-3, atol=1e-4)
    hot = vae_experiment.draw(model, params, jax.random.key(3), labels)
    np.testing.assert_array_equal(hot, vae_experiment.draw(model, params, jax.random.key(3), labels, 1.0))
    assert not np.allclose(hot, vae_experiment.draw(model, params, jax.random.key(3), labels, 0.5))


def test_new_fields_have_rules():
    config = load_config_file("configs/vae_conv.py")
    for field, bad in (("kl_warmup_epochs", -1.0), ("train_iwae_k", 0), ("sample_temperature", 0.0)):
        broken = copy.deepcopy(config)
        broken[field] = bad
        with pytest.raises(ConfigError, match=field):
            validate(broken)


def test_conditional_share_is_one_for_a_judge_that_always_agrees(monkeypatch, tmp_path):
    """judge_samples with a stub judge that labels every sample as the digit it was drawn for."""
    config = load_config_file("configs/vae_conv.py:quick")
    config.model.conditional = True
    config.n_samples = 200
    data = synthetic_splits(n_train=32, n_eval=16)
    model = models.from_config({**TINY_DENSE, "conditional": True})  # the share does not look at the model

    def fake_draw(model, params, key, labels, temperature=1.0):  # each sample carries its label in pixel 0
        images = np.zeros((len(labels), 28, 28), np.float32)
        images[:, 0, 0] = labels
        return images

    def judge(model, params, x, batch_size=1000):
        x = np.asarray(x, np.float32)
        label = x.reshape(len(x), -1)[:, 0].astype(int) if x.ndim == 3 else np.zeros(len(x), int)
        return np.eye(10, dtype=np.float32)[label], np.random.default_rng(len(x)).normal(size=(len(x), 4))

    monkeypatch.setattr(vae_experiment, "draw", fake_draw)
    monkeypatch.setattr(vae_experiment, "get_classifier", lambda *a: (None, None, {"kind": "stub"}))
    monkeypatch.setattr(generative, "classify", judge)
    # two runs' params of the model's shapes (their values go unread: nothing is compiled for them)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *models.init_inputs(model, np.zeros((1, 28, 28, 1), np.float32)))
    result = types.SimpleNamespace(history={"diverged": np.zeros((2, 1), bool)},
                                   state=types.SimpleNamespace(params=jax.tree_util.tree_map(
                                       lambda a: np.zeros((2, *a.shape), a.dtype), shapes)))
    _, quality, _ = vae_experiment.judge_samples(config, tmp_path, data, model, result, jax.random.key(0))
    shares = quality["per_digit"]
    assert [d["digit"] for d in shares] == list(range(10))
    for d in shares:
        assert d["samples_per_run"] == 20 and d["per_seed"] == [1.0, 1.0] and d["interval"] == "t over seeds"
        assert d["mean"] == d["ci_low"] == d["ci_high"] == 1.0
    assert quality["label_agreement"]["mean"] == 1.0


def test_conditional_shares_use_wilson_for_one_run_and_t_over_several():
    requested = np.arange(40) % 4
    wrong_on_zero = np.where((requested == 0) & (np.arange(40) < 20), 9, requested)  # 5 of the 10 zeros mislabelled
    one = generative.conditional_shares([wrong_on_zero], requested)
    assert one[0]["mean"] == 0.5 and one[0]["interval"] == "Wilson (one run)"
    assert (one[0]["ci_low"], one[0]["ci_high"]) == pytest.approx(stats.wilson(5, 10))
    assert one[0]["ci_low"] == pytest.approx(0.2366, abs=1e-4) and one[0]["ci_high"] == pytest.approx(0.7634, abs=1e-4)
    assert one[1]["mean"] == 1.0 and one[1]["ci_low"] < 1.0  # 10 of 10 is not certainty
    several = generative.conditional_shares([wrong_on_zero, requested, None], requested)
    assert several[0]["per_seed"] == [0.5, 1.0] and several[0]["interval"] == "t over seeds"
    assert several[0]["ci_low"] < 0.5 < 1.0 < several[0]["ci_high"]


def test_vae_conv_is_the_stage_right_after_the_dense_vae():
    names = [s.name for s in registry.stages()]
    assert names[names.index("vae") + 1] == "vae_conv"
    assert registry.stage("vae_conv").entry == registry.stage("vae").entry == vae_experiment.ENTRY
    full, quick = load_config_file("configs/vae_conv.py"), load_config_file("configs/vae_conv.py:quick")
    assert full.model.conv and full.seeds == 3 and full.epochs == 40 and full.train_images == 0
    assert quick.model.conv and quick.seeds >= 2 and 0 < quick.train_images < 55_000 and quick.map_epochs == 0
    # its seeds are vmapped, or one run per program on the backends where the model says vmapping is slow
    model = models.from_config(full.model)
    for backend in ("cpu", "gpu"):
        expected = 1 if backend in models.vmap_slow_on(model) else None
        assert sweep.default_run_chunk(tasks.vae_from_config(model, full), backend) == expected


def fake_vae_metrics(experiment: str, conv: bool, nll: float) -> dict:
    """The fields of a vae metrics.json that the report and the README row read."""
    def summary(values):
        return {"per_seed": values, **stats.summary(values)}
    quality = {k: summary(v) for k, v in (("confident_share", [0.6, 0.62]), ("label_entropy_bits", [3.2, 3.3]),
                                           ("frechet_distance", [60.0, 70.0]))}
    return {"experiment": experiment, "model": {"kind": "vae", "latent": 32, "hidden": [256] if conv else [512, 256],
                                                "conv": conv, "conditional": False},
            "param_count": 1000, "seeds": [0, 1], "test_neg_elbo": summary([nll + 4, nll + 4.2]),
            "objective": {"train_iwae_k": 1, "kl_warmup_epochs": 0.0, "bound": "ELBO"},
            "iwae": {"k": 1000, "images": 10_000, "nll": summary([nll, nll + 0.1])},
            "history": {"test_neg_elbo": [[1.0, 2.0, 3.0]] * 2},
            "sample_quality": {**quality, "max_entropy_bits": 3.32, "temperature": 1.0,
                               "classifier": {"kind": "cnn", "test_accuracy": 0.99}},
            "timing": {"wall_seconds": 1.0, "device": "cpu"}}


def test_comparison_table_rows_come_from_each_stage_and_anchors_from_the_config():
    dense, conv = fake_vae_metrics("vae", False, 89.81), fake_vae_metrics("vae_conv", True, 84.5)
    stages = {"mlp": None, "vae": dense, "vae_conv": conv, "variance_sources": None}
    text = vae_experiment.section(conv, stages)
    assert "Dense against convolutional" in text
    table_lines = [line for line in text.splitlines() if line.startswith("| dense 784-512-256-32")
                   or line.startswith("| convolutional Conv32/2-Conv64/2-Dense256-32")]
    assert len(table_lines) == 2 and "89.86 ± 0.07" in table_lines[0] and "84.55 ± 0.07" in table_lines[1]
    anchors = load_config_file("configs/vae_conv.py").study
    for key in vae_experiment.ANCHORS:
        value = vae_experiment.anchor_text(anchors[key])
        assert any(line.startswith(f"| {vae_experiment.ANCHORS[key][0]} |") and f"| {value} |" in line
                   for line in text.splitlines()), key
    assert report.section("vae_conv", conv, stages) == text  # REPORT.md hands every stage's metrics to the vae sections
    assert "Dense against convolutional" not in vae_experiment.section(dense, stages)  # the last vae stage shows it
    assert "Dense against convolutional" in vae_experiment.section(dense)  # alone: itself and the anchors
    row = vae_experiment.row(conv, {"epochs": 40, "seeds": 2})
    assert row[0].startswith("beyond the study: VAE, convolutional") and row[1].startswith("n = 2: ")
    assert "**84.55 ± 0.07 nats** [" in row[1]  # mean ± std and its CI
    assert row[3] == f"conv and hierarchical VAEs, nats NLL: {vae_experiment.anchor_text(anchors.conv_hierarchical_vae_nll_nats)}"
    dense_row = vae_experiment.row(dense, {"epochs": 40, "seeds": 2})
    assert dense_row[3] == "85-90 nats NLL for such models (Burda et al. 2016: 85.3)"
    json.dumps(row)


def test_ablations_are_named_in_the_report():
    m = fake_vae_metrics("vae_conv", True, 84.5)
    m["objective"] = vae_experiment.objective(ml_collections.ConfigDict({"train_iwae_k": 5, "kl_warmup_epochs": 10.0}))
    m["sample_quality"]["temperature"] = 0.7
    text = vae_experiment.section(m)
    assert "IWAE bound, k = 5" in text and "over the first 10 epochs" in text and "temperature 0.7" in text
    assert "the sampling temperature changes only the samples" in text
