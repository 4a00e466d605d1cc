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
import pytest
import synthetic
from synthetic import SYNTHETIC_EVAL, SYNTHETIC_TRAIN, synthetic_splits  # noqa: F401 - tests import them from here

from mnist_jax import data as data_lib


@pytest.fixture
def tiny():
    return synthetic_splits()


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST splits on the device (needs TFDS_DATA_DIR or the cache)."""
    return data_lib.load_splits()


@pytest.fixture
def synthetic_mnist(monkeypatch) -> data_lib.Splits:
    """MNIST replaced by `synthetic.noisy_splits` wherever the library loads it in this process
    (`synthetic.install`): SYNTHETIC_TRAIN training images, SYNTHETIC_EVAL validation images
    (whatever `n_val` asks) and SYNTHETIC_EVAL test images, 30 % of them with a random label.
    Returns the holdout splits. XLA compiles the test's programs with little optimization
    (`light_compiles`): on a few hundred images, compiling is nearly all their cost."""
    before = jax.config._read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield synthetic.install(monkeypatch.setattr)
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def synthetic_processes(synthetic_mnist, monkeypatch) -> data_lib.Splits:
    """`synthetic_mnist` here and in every process started from this test with the environment of
    this process (commands, launchers and the processes they start)."""
    for name, value in {**synthetic.subprocess_env(), "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}.items():
        monkeypatch.setenv(name, value)
    return synthetic_mnist


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
