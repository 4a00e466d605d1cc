"""Shared fixtures: tiny synthetic data for unit tests, the real MNIST for integration tests.

The suite has two tiers:

    python -m pytest -m "not integration"   # fast tier (about 3 minutes on 2 cores): no real MNIST
    python -m pytest -m integration         # trains on the real MNIST (needs TFDS_DATA_DIR or the cache)

`python -m pytest` runs both. A session with no integration test compiles with little XLA
optimization (`light_compiles`): its programs run on a few hundred images, so compiling them is
nearly all their cost. A test that loads the real MNIST (the `mnist` fixture, `load_splits`,
an experiment on its default data) is marked `@pytest.mark.integration`; in a fast test, loading
it from the default cache is an error (`no_real_mnist`). The `synthetic_mnist` fixture stands tiny
synthetic splits in for MNIST wherever the library loads it, so experiments run end to end in the
fast tier.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from mnist_jax import data as data_lib

SYNTHETIC_TRAIN, SYNTHETIC_EVAL = 256, 100  # training images; validation and test images each


def synthetic_splits(n_train: int = 256, n_eval: int = 64, seed: int = 0) -> data_lib.Splits:
    """Learnable fake digits: class k lights up row band k of the image (uint8, NHWC)."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.int32)
        x = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, 2 + 2 * k: 4 + 2 * k, 4:24, 0] = 255
        return x, y

    tx, ty = make(n_train)
    vx, vy = make(n_eval)
    ex, ey = make(n_eval)
    return data_lib.Splits(tx, ty, vx, vy, ex, ey)


@pytest.fixture
def tiny():
    return synthetic_splits()


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST splits on the device (needs TFDS_DATA_DIR or the cache)."""
    return data_lib.load_splits()


@pytest.fixture
def synthetic_mnist(monkeypatch) -> data_lib.Splits:
    """MNIST replaced by `synthetic_splits` wherever the library loads it (`data.load_mnist`,
    `data.load_splits`): SYNTHETIC_TRAIN training images, SYNTHETIC_EVAL validation images (whatever
    `n_val` asks) and SYNTHETIC_EVAL test images. A random label on 30 % of the images of each split
    keeps every model imperfect and runs of different seeds apart, as on MNIST (the statistics of
    the experiments divide by spreads). Returns the holdout splits."""
    rng = np.random.default_rng(1)
    s = synthetic_splits(SYNTHETIC_TRAIN, SYNTHETIC_EVAL)
    s = s._replace(**{k: np.where(rng.random(y.shape) < 0.3, rng.integers(0, 10, y.shape), y).astype(np.int32)
                      for k, y in s._asdict().items() if k.endswith("_y")})
    raw = {"train_x": np.concatenate([s.train_x, s.val_x]), "train_y": np.concatenate([s.train_y, s.val_y]),
           "test_x": s.test_x, "test_y": s.test_y}

    def load_mnist(cache_dir=None, data_dir=None):
        return {k: v.copy() for k, v in raw.items()}

    def load_splits(n_val=5_000, protocol="holdout", on_device=True, cache_dir=None):
        splits = data_lib.make_splits(load_mnist(), SYNTHETIC_EVAL, protocol)
        return data_lib.Splits(*(jax.device_put(a) for a in splits)) if on_device else splits

    monkeypatch.setattr(data_lib, "load_mnist", load_mnist)
    monkeypatch.setattr(data_lib, "load_splits", load_splits)
    return s


@pytest.fixture(autouse=True)
def no_real_mnist(request, monkeypatch):
    """In a fast test, loading MNIST from the default cache (or through tfds) fails the test: it
    belongs in the integration tier or on synthetic data. A test may still load from a folder of
    its own (`load_mnist(cache_dir=...)`)."""
    if request.node.get_closest_marker("integration"):
        return
    real = data_lib.load_mnist

    def guarded(cache_dir=None, data_dir=None):
        if cache_dir is None:
            pytest.fail("a fast test loads the real MNIST: mark it @pytest.mark.integration or use the "
                        "synthetic_mnist fixture")
        return real(cache_dir, data_dir)

    monkeypatch.setattr(data_lib, "load_mnist", guarded)


def light_compiles() -> None:
    """XLA compiles with little optimization (`jax_disable_most_optimizations`), here and in the
    processes tests start: about half the compile time, for programs that run on tiny data."""
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    jax.config.update("jax_disable_most_optimizations", True)


def pytest_collection_finish(session):
    if not any(item.get_closest_marker("integration") for item in session.items):
        light_compiles()
