"""Divergence, batched evaluation and fuzzed inputs (a run killed at any moment: test_workdir's chaos
test; determinism across processes: test_provenance)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from experiments import evaluate, mlp
from mnist_jax.config import ConfigError, load_config_file, parse_args
from mnist_jax.data import preprocess_images
from mnist_jax.train import OPTIMIZERS


@pytest.mark.integration
def test_diverged_runs_are_reported_and_left_out_of_the_statistics(tmp_path):
    with pytest.warns(RuntimeWarning, match=r"run \d \(seed \d, learning_rate=1e\+10, l2=0\) diverged in epoch 1") as caught:
        assert mlp.main(["--workdir", str(tmp_path), "--config.seeds=2", "--config.epochs=2",
                         "--config.model.hidden=[16]", "--config.learning_rate=1e10"]) == 0
    assert sorted(str(w.message)[:5] for w in caught) == ["run 0", "run 1"]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert [d["seed"] for d in m["diverged"]] == [0, 1]
    assert all(d["epoch"] == 1 for d in m["diverged"])
    assert m["test_accuracy"]["n"] == 0 and m["test_accuracy"]["mean"] is None


@pytest.mark.integration
def test_evaluate_batches_large_inputs_to_the_same_result(tmp_path):
    workdir = tmp_path / "w"
    assert mlp.main(["--workdir", str(workdir), "--config.seeds=1", "--config.epochs=1",
                     "--config.model.hidden=[16]"]) == 0
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (evaluate.BATCH * 2 + 5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    assert evaluate.main(["--workdir", str(workdir), "--images", str(tmp_path / "x.npy"),
                          "--out", str(tmp_path / "y.npy")]) == 0
    config = json.loads((workdir / "config.json").read_text())
    model, params = evaluate.trained.restore_run(workdir, config["model"], 0)
    expected = np.asarray(jnp.argmax(model.apply(params, preprocess_images(jnp.asarray(x))), -1))
    assert np.array_equal(np.load(tmp_path / "y.npy"), expected)


preprocess_compiled = jax.jit(preprocess_images)  # one program per shape of x, not one per operation


@pytest.mark.slow
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=6)))
def test_preprocessing_fuzz_maps_any_uint8_into_unit_interval(x):
    out = np.asarray(preprocess_compiled(x))
    assert out.dtype == np.float32 and out.ndim == 4
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out.reshape(x.shape), x.astype(np.float32) / 255.0, rtol=1e-6)


FIELDS = ["epochs", "learning_rate", "seeds", "batch_size", "optimizer", "model.hidden", "l2", "nope", "model.kind"]


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIELDS), st.text(max_size=12))
def test_config_parser_fuzz_gives_a_valid_config_or_one_config_error(field, text):
    try:
        _, config = parse_args(["--workdir", "unused", f"--config.{field}={text}"], "configs/mlp.py")
    except ConfigError as err:
        assert str(err)  # one message, nothing else escapes
        return
    default = load_config_file("configs/mlp.py")
    assert type(config.epochs) is int and config.epochs >= 1
    assert config.learning_rate > 0 and config.seeds >= 1 and 1 <= config.batch_size <= 55_000
    assert config.optimizer in OPTIMIZERS
    assert len(config.model.hidden) >= 1
    assert set(config.keys()) == set(default.keys())


@jax.jit
def salt_and_pepper_traced(seed, x, level):
    """`salt_and_pepper` of x with `key(seed)` at a traced level: one compiled program per shape of x."""
    from mnist_jax.noise import salt_and_pepper

    return salt_and_pepper(jax.random.key(seed), x, level)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=8),
                  elements=st.floats(0, 1, width=32)),
       st.floats(0, 1), st.integers(0, 2**31 - 1))
@pytest.mark.slow
def test_salt_and_pepper_fuzz_keeps_or_saturates_every_pixel(x, level, seed):
    out = np.asarray(salt_and_pepper_traced(seed, x, level))
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = out != x
    assert np.all(np.isin(out[changed], [0.0, 1.0]))  # a changed pixel is salt or pepper
    if level == 0:
        assert not changed.any()
    again = np.asarray(salt_and_pepper_traced(seed, x, level))
    assert np.array_equal(out, again)  # pure: same key, same corruption


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-6), st.just(float("nan"))))
def test_salt_and_pepper_fuzz_rejects_levels_outside_unit_interval(level):
    from mnist_jax.noise import salt_and_pepper

    with pytest.raises(ValueError):
        salt_and_pepper(jax.random.key(0), jnp.zeros((2, 2)), level)
