"""MNIST as uint8 arrays: tfds loading, an on-disk cache, fixed splits, preprocessing.

The dataset stays uint8 on the device; `preprocess_images` and `one_hot` run inside the
compiled step, so a batch is converted only when it is used.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
CACHE_FILE = "mnist_uint8_v1.npz"


class DataUnavailableError(RuntimeError):
    """MNIST could be neither read from a prepared copy nor downloaded."""


class Splits(NamedTuple):
    """The three splits as uint8 images (N, 28, 28, 1) and int32 labels (N,)."""

    train_x: np.ndarray | jax.Array
    train_y: np.ndarray | jax.Array
    val_x: np.ndarray | jax.Array
    val_y: np.ndarray | jax.Array
    test_x: np.ndarray | jax.Array
    test_y: np.ndarray | jax.Array


def default_cache_dir() -> pathlib.Path:
    """`$MNIST_JAX_CACHE`, else `$XDG_CACHE_HOME/mnist_jax`, else `~/.cache/mnist_jax`."""
    if os.environ.get("MNIST_JAX_CACHE"):
        return pathlib.Path(os.environ["MNIST_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "mnist_jax"


def _load_with_tfds(data_dir: str | None) -> dict[str, np.ndarray]:
    """Decode MNIST through tensorflow-datasets (imports TensorFlow, CPU only)."""
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - depends on the install
        raise DataUnavailableError(
            "tensorflow-datasets and tensorflow-cpu are needed to prepare MNIST the first "
            f"time ({err}); install the project with `pip install -e .`."
        ) from err
    # TensorFlow must not take accelerator memory from JAX.
    tf.config.set_visible_devices([], "GPU")
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        train, test = tfds.as_numpy(
            tfds.load("mnist", split=["train", "test"], batch_size=-1, data_dir=data_dir)
        )
    except Exception as err:  # tfds raises many types; the user needs one message
        where = data_dir or "tfds' default data dir (~/tensorflow_datasets)"
        raise DataUnavailableError(
            f"MNIST is not prepared in {where} and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Set TFDS_DATA_DIR to a folder holding a prepared copy "
            "(tensorflow_datasets/mnist/3.0.1) or connect to the network."
        ) from err
    return {
        "train_x": np.asarray(train["image"], np.uint8),
        "train_y": np.asarray(train["label"], np.int32),
        "test_x": np.asarray(test["image"], np.uint8),
        "test_y": np.asarray(test["label"], np.int32),
    }


def _check_raw(raw: dict[str, np.ndarray]) -> None:
    expected = {
        "train_x": (TRAIN_SIZE, *IMAGE_SHAPE),
        "train_y": (TRAIN_SIZE,),
        "test_x": (TEST_SIZE, *IMAGE_SHAPE),
        "test_y": (TEST_SIZE,),
    }
    for name, shape in expected.items():
        if name not in raw or raw[name].shape != shape:
            got = raw[name].shape if name in raw else "missing"
            raise ValueError(f"MNIST array {name} has shape {got}, expected {shape}")


def load_mnist(
    cache_dir: str | os.PathLike | None = None, data_dir: str | None = None
) -> dict[str, np.ndarray]:
    """The 60,000 training and 10,000 test images (uint8, NHWC) and labels (int32).

    The first call decodes through tfds and writes an `.npz` cache; later calls read the
    cache and import no TensorFlow. A cache that cannot be read is rebuilt.
    """
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / CACHE_FILE
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
            _check_raw(raw)
            return raw
        except Exception:  # corrupt or foreign cache: rebuild it below
            pass
    raw = _load_with_tfds(data_dir)
    _check_raw(raw)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, **raw)
        os.replace(tmp.name, path)
    except OSError:  # a read-only home still gets the data, just uncached
        pass
    return raw


def make_splits(raw: dict[str, np.ndarray], n_val: int = 5_000, protocol: str = "holdout") -> Splits:
    """Fixed splits.

    `holdout` (default): the last `n_val` training images are the validation set, the test
    set is only reported. `study`: the original study's protocol, training on all 60,000
    images and using the test set as the validation set.
    """
    if protocol == "study":
        return Splits(raw["train_x"], raw["train_y"], raw["test_x"], raw["test_y"],
                      raw["test_x"], raw["test_y"])
    if protocol != "holdout":
        raise ValueError(f"protocol must be 'holdout' or 'study', got {protocol!r}")
    n = raw["train_x"].shape[0]
    if not 0 < n_val < n:
        raise ValueError(f"n_val must be in 1..{n - 1}, got {n_val}")
    cut = n - n_val
    return Splits(raw["train_x"][:cut], raw["train_y"][:cut], raw["train_x"][cut:],
                  raw["train_y"][cut:], raw["test_x"], raw["test_y"])


def load_splits(n_val: int = 5_000, protocol: str = "holdout", on_device: bool = True,
                cache_dir: str | os.PathLike | None = None) -> Splits:
    """`make_splits(load_mnist())`, put on the default device as uint8 / int32."""
    splits = make_splits(load_mnist(cache_dir), n_val, protocol)
    # device_put, not jnp.asarray: jnp.asarray of a NumPy array outside jit compiles a program per shape.
    return Splits(*(jax.device_put(a) for a in splits)) if on_device else splits


def preprocess_images(x: jax.Array) -> jax.Array:
    """uint8 in 0..255 (or float already in [0, 1]) to float32 in [0, 1], channels-last."""
    shape = (*x.shape, 1) if x.ndim == 3 else x.shape
    flat = x.reshape(-1)  # elementwise on a flat view: XLA:CPU vectorizes (B, 28, 28, 1) arrays badly
    if jnp.issubdtype(x.dtype, jnp.integer):
        return (flat.astype(jnp.float32) / 255.0).reshape(shape)
    return flat.astype(jnp.float32).reshape(shape)


def one_hot(labels: jax.Array, num_classes: int = NUM_CLASSES) -> jax.Array:
    """Integer labels (N,) to float32 one-hot (N, num_classes)."""
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
