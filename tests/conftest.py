"""Shared fixtures: tiny synthetic data for most tests, the real MNIST for integration tests.

The suite has two tiers:

    python -m pytest -m "not integration"   # fast tier: synthetic data, every experiment end to end
    python -m pytest -m integration         # the slower tier (needs TFDS_DATA_DIR or the cache)

`python -m pytest` runs both. The slower tier holds two kinds of test:

- `@pytest.mark.integration`: trains on or loads the real MNIST (the `mnist` fixture,
  `load_splits`, an experiment on its default data), compiled with XLA's optimization, its
  backend at level 1 (`synthetic.SUITE_XLA_FLAGS`);
- `@pytest.mark.slow`: seconds of synthetic data each (processes, kills, fuzzing, bit-identity
  over several programs); it counts as `integration` for `-m`, and is treated as a fast test.

A fast or slow test compiles with little XLA optimization (`light_compiles`), here and in the
processes it starts: its programs run on a few hundred images, so compiling them is nearly all
their cost. In such a test, loading the real MNIST from the default cache is an error
(`no_real_mnist`); the `synthetic_mnist` fixture stands tiny synthetic splits in for MNIST
wherever the library loads it, so experiments run end to end.
"""

from __future__ import annotations

import os

import pytest
import synthetic
from jax._src import xla_bridge
from synthetic import SYNTHETIC_EVAL, SYNTHETIC_TRAIN, synthetic_splits  # noqa: F401 - tests import them from here

from mnist_jax import data as data_lib
from mnist_jax.cli import REHEARSAL_ENV

# A command rehearses its experiment before it trains (`cli.rehearse`). The tests of the rehearsal
# (tests/test_rehearsal.py) turn it on; every other test, and every process a test starts, runs
# without it: each end-to-end test would otherwise pay seconds for a rehearsal that the rehearsal
# tests already make of every registered config.
os.environ.setdefault(REHEARSAL_ENV, "0")
# Every compile here and in the processes the tests start takes the suite's XLA flags (before JAX
# starts its backend, which reads them).
assert not xla_bridge.backends_are_initialized(), "a backend started before the suite's XLA flags were set"
os.environ["XLA_FLAGS"] = synthetic.with_suite_xla_flags(os.environ.get("XLA_FLAGS", ""))


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
    Returns the holdout splits."""
    return synthetic.install(monkeypatch.setattr)


@pytest.fixture
def synthetic_processes(monkeypatch) -> None:
    """Every process the test starts trains on `synthetic.PROCESS_TRAIN` synthetic digits
    (`synthetic.for_processes`), enough for each epoch to last a moment that can be interrupted."""
    synthetic.for_processes(monkeypatch)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_auto_num_workers(config) -> int | None:
    """`-n auto` starts one pytest-xdist worker per core and one more: a worker often waits
    without using its core (on a process it started, a file, a lock, a timeout it tests), and
    the extra worker uses that core meanwhile (docs/performance.md, "The suite's workers").
    PYTEST_XDIST_AUTO_NUM_WORKERS, where set, is xdist's own choice and is kept."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return len(os.sched_getaffinity(0)) + 1


def on_synthetic_data(node) -> bool:
    """Whether a test is a fast or `slow` one: no real MNIST, light compiles."""
    return node.get_closest_marker("slow") is not None or node.get_closest_marker("integration") is None


# The job's test that trains every stage and checks each as test_experiments checks one config
# (tests/test_reproduce.py); a test marked `in_the_job` checks one stage that way on its own.
JOB_CHECKS_EVERY_STAGE = ("test_reproduce.py", "test_every_stage_writes_what_its_experiment_promises")  # file, test


def covered_by_the_job(items: list) -> list:
    """The tests marked `in_the_job` when `items` hold the job's check of every stage
    (JOB_CHECKS_EVERY_STAGE, found by file and name: pytest-xdist adds its group to a node id);
    none otherwise."""
    if not any((item.path.name, item.name) == JOB_CHECKS_EVERY_STAGE for item in items):
        return []
    return [item for item in items if item.get_closest_marker("in_the_job")]


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """A `slow` test is in the slower tier: `-m integration` selects it, `-m "not integration"` does not.

    Once `-m` and `-k` have chosen: a session that runs the job's check of every stage
    (JOB_CHECKS_EVERY_STAGE) deselects the tests marked `in_the_job`, since the job trains each of
    those stages and checks it the same way (the whole suite trains it once; the fast tier, which
    does not run the job, still runs them).

    The tests of a module that shares a module fixture run on one pytest-xdist worker (its
    `xdist_group`), one unit of work that takes minutes in the slower tier: those units go first,
    so that no worker starts one while the others are running out of work."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)
    yield
    covered = covered_by_the_job(items)
    if covered:
        config.hook.pytest_deselected(items=covered)
        items[:] = [item for item in items if item not in covered]
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)  # stable: each part keeps its order


@pytest.fixture(autouse=True)
def no_real_mnist(request, monkeypatch):
    """In a fast or slow test, loading MNIST from the default cache (or through tfds) fails the
    test: it belongs in the integration tier or on synthetic data. A test may still load from a
    folder of its own (`load_mnist(cache_dir=...)`)."""
    if not on_synthetic_data(request.node):
        return
    real = data_lib.load_mnist

    def guarded(cache_dir=None, data_dir=None):
        if cache_dir is None:
            pytest.fail("a fast test loads the real MNIST: mark it @pytest.mark.integration or use the "
                        "synthetic_mnist fixture")
        return real(cache_dir, data_dir)

    monkeypatch.setattr(data_lib, "load_mnist", guarded)


@pytest.fixture(autouse=True)
def light_compiles(request, monkeypatch):
    """A fast or slow test compiles with little XLA optimization (`synthetic.light_compiles`), here
    and in the processes it starts; a module fixture it uses that trains does the same itself."""
    if not on_synthetic_data(request.node):
        yield
        return
    with synthetic.light_compiles(monkeypatch):
        yield
