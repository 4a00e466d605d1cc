"""Shared fixtures: tiny synthetic data for unit tests, the real MNIST for integration tests."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_jax import data as data_lib


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
