import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import data as data_lib


def test_preprocess_scales_uint8_to_unit_interval_channels_last():
    x = np.array([[[0, 255], [51, 102]]], np.uint8)  # (1, 2, 2)
    out = data_lib.preprocess_images(jnp.asarray(x))
    assert out.dtype == jnp.float32
    assert out.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(np.asarray(out)[0, :, :, 0], [[0.0, 1.0], [0.2, 0.4]], rtol=1e-6)


def test_preprocess_keeps_float_images():
    x = jnp.full((2, 28, 28, 1), 0.5, jnp.float32)
    assert np.array_equal(np.asarray(data_lib.preprocess_images(x)), np.asarray(x))


def test_one_hot():
    out = np.asarray(data_lib.one_hot(jnp.array([0, 3, 9])))
    assert out.shape == (3, 10)
    assert np.array_equal(out.argmax(1), [0, 3, 9])
    assert np.array_equal(out.sum(1), [1, 1, 1])


def test_holdout_split_is_fixed_and_disjoint():
    raw = {"train_x": np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), "train_y": np.arange(100, dtype=np.int32),
           "test_x": np.zeros((10, 1, 1, 1), np.uint8), "test_y": np.zeros(10, np.int32)}
    s = data_lib.make_splits(raw, n_val=20)
    assert s.train_y.tolist() == list(range(80))
    assert s.val_y.tolist() == list(range(80, 100))
    study = data_lib.make_splits(raw, protocol="study")
    assert study.train_x.shape[0] == 100 and study.val_x is raw["test_x"]
    with pytest.raises(ValueError, match="n_val"):
        data_lib.make_splits(raw, n_val=0)
    with pytest.raises(ValueError, match="protocol"):
        data_lib.make_splits(raw, protocol="nope")


@pytest.mark.slow
def test_missing_data_without_network_is_one_clear_error(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(data_lib.DataUnavailableError, match="TFDS_DATA_DIR") as err:
        data_lib.load_mnist(cache_dir=tmp_path / "cache", data_dir=str(tmp_path / "nothing"))
    assert "connect" in str(err.value)


@pytest.mark.integration
def test_real_mnist_shapes_and_cache_needs_no_tensorflow(mnist):
    assert mnist.train_x.shape == (55_000, 28, 28, 1) and mnist.train_x.dtype == jnp.uint8
    assert mnist.val_x.shape == (5_000, 28, 28, 1)
    assert mnist.test_x.shape == (10_000, 28, 28, 1)
    assert sorted(np.unique(np.asarray(mnist.test_y)).tolist()) == list(range(10))
    # The fixture filled the cache; a new process reads it without importing TensorFlow.
    code = ("import sys; from mnist_jax.data import load_mnist; raw = load_mnist(); "
            "assert raw['train_x'].shape == (60000, 28, 28, 1); "
            "assert 'tensorflow' not in sys.modules, 'cache load imported TensorFlow'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_synthetic_mnist_has_the_layout_of_mnist(synthetic_mnist):
    raw = data_lib.load_mnist()
    assert sorted(raw) == ["test_x", "test_y", "train_x", "train_y"]
    for protocol in ("holdout", "study"):
        splits = data_lib.load_splits(protocol=protocol, on_device=False)
        for x, y in zip(splits[::2], splits[1::2], strict=True):
            assert x.dtype == np.uint8 and x.shape[1:] == data_lib.IMAGE_SHAPE and x.shape[0] == y.shape[0]
            assert y.dtype == np.int32 and sorted(set(y.tolist())) == list(range(data_lib.NUM_CLASSES))
    assert np.array_equal(splits.val_x, splits.test_x)  # the study's protocol validates on the test set


def test_a_fast_test_cannot_load_the_real_mnist():
    with pytest.raises(pytest.fail.Exception, match="integration"):
        data_lib.load_mnist()
