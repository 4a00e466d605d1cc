"""Compiling ahead: `GridTrainer.precompile` compiles a training's programs in background threads,
from shapes alone, and `train_grid` then uses them: the same programs, the same numbers, and no
program compiled twice."""

from __future__ import annotations

import threading

import jax
import ml_collections
import numpy as np
import pytest

from mnist_jax import models, regularizers, sweep, tasks, train, training


@pytest.fixture
def builds(monkeypatch):
    """The name of the thread each GridTrainer program was built in, in order."""
    seen = []
    build = sweep.GridTrainer._build

    def recording(self, *args, **kwargs):
        seen.append(threading.current_thread().name)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(sweep.GridTrainer, "_build", recording)
    monkeypatch.setenv(sweep.AHEAD_ENV, "2")
    return seen


def settle(trainer: sweep.GridTrainer) -> sweep.GridTrainer:
    """Wait until the trainer's queued programs are built (a program still queued when training
    asks for it is built by the caller instead)."""
    for future in list(trainer._ahead.values()):
        future.exception()
    return trainer


def dense_grid():
    task = tasks.classifier_task(models.MLP((16,))).with_hooks(regularizers.L2)
    hp, seeds = sweep.grid([0, 1], l2=[0.0, 1e-3], learning_rate=[0.1])
    return task, hp, seeds


def same_result(a: sweep.SweepResult, b: sweep.SweepResult) -> None:
    for x, y in zip(jax.tree_util.tree_leaves((a.state, a.history)), jax.tree_util.tree_leaves((b.state, b.history)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_precompiled_programs_are_used_and_give_the_same_numbers(tiny, builds):
    task, hp, seeds = dense_grid()
    spec = train.TrainSpec(epochs=3, batch_size=64)
    plain = sweep.train_grid(task, spec, hp, seeds, tiny, chunk_epochs=2)
    # on its own, train_grid builds the initial state here while its 2 epoch programs (2 epochs,
    # the last epoch) compile in the background
    assert builds.count("MainThread") == 1 and len(builds) == 3, builds
    builds.clear()

    trainer = settle(sweep.GridTrainer(task, spec).precompile(hp, seeds, tiny, chunk_epochs=2))
    ahead = sweep.train_grid(task, spec, hp, seeds, tiny, chunk_epochs=2, trainer=trainer)
    assert len(builds) == 3 and all(name.startswith("mnist_jax-compile-ahead") for name in builds), builds
    same_result(plain, ahead)
    assert ahead.timing["compile_seconds"] > 0 and ahead.timing["compile_wait_seconds"] >= 0


@pytest.mark.slow
def test_hyperparameters_given_as_shapes_and_run_chunks(tiny, builds):
    """hp another training will produce (here: all of it) is given as ShapeDtypeStructs; 4 runs in
    chunks of 3 are padded to two calls of one 3-run program."""
    task, hp, seeds = dense_grid()
    spec = train.TrainSpec(epochs=1, batch_size=64)
    shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in hp.items()}
    trainer = settle(sweep.GridTrainer(task, spec).precompile(shapes, seeds, tiny, run_chunk=3))
    result = sweep.train_grid(task, spec, hp, seeds, tiny, run_chunk=3, trainer=trainer)
    assert len(builds) == 2 and "MainThread" not in builds, builds
    same_result(result, sweep.train_grid(task, spec, hp, seeds, tiny, run_chunk=3))


@pytest.mark.slow
def test_the_experiment_layer_prepares_what_train_runs(tiny, builds, tmp_path):
    task, hp, seeds = dense_grid()
    config = ml_collections.ConfigDict({"epochs": 2, "batch_size": 64, "optimizer": "sgd", "schedule": "constant",
                                        "chunk_epochs": 1, "checkpoint_every": 1, "checkpoint_seconds": 0.0})
    planned = training.Training(config, task, hp, seeds).prepare(tiny)
    settle(planned.trainer)
    result = planned.train(tmp_path, tiny, "train")
    assert len(builds) == 2 and "MainThread" not in builds, builds
    assert result.history["loss"].shape == (4, 2)
    # the same grid trained without preparing: the same numbers
    same_result(result, training.train(config, tmp_path / "plain", task, hp, seeds, tiny))


def test_off_compiles_on_first_use(tiny, builds, monkeypatch):
    monkeypatch.setenv(sweep.AHEAD_ENV, "0")
    task, hp, seeds = dense_grid()
    spec = train.TrainSpec(epochs=1, batch_size=64)
    trainer = sweep.GridTrainer(task, spec).precompile(hp, seeds, tiny)
    assert builds == []
    sweep.train_grid(task, spec, hp, seeds, tiny, trainer=trainer)
    assert builds == ["MainThread"] * 2


def test_bad_settings_get_clear_errors(tiny, monkeypatch):
    task, hp, seeds = dense_grid()
    spec = train.TrainSpec(epochs=1, batch_size=64)
    for value in ("two", "-1"):
        with pytest.raises(ValueError, match=sweep.AHEAD_ENV):
            sweep.ahead_threads({sweep.AHEAD_ENV: value})
    assert sweep.ahead_threads({sweep.AHEAD_ENV: "3"}) == 3 and 1 <= sweep.ahead_threads({}) <= 4
    with pytest.raises(train.HParamError):  # checked before anything compiles
        sweep.GridTrainer(task, spec).precompile({"l2": hp["l2"]}, seeds, tiny)
    other = sweep.GridTrainer(task, train.TrainSpec(epochs=2, batch_size=64))
    with pytest.raises(ValueError, match="another task or TrainSpec"):
        sweep.train_grid(task, spec, hp, seeds, tiny, trainer=other)


def test_a_compile_cancelled_with_its_experiment_is_done_on_first_use(tiny, builds, monkeypatch):
    monkeypatch.setenv(sweep.AHEAD_ENV, "1")
    task, hp, seeds = dense_grid()
    spec = train.TrainSpec(epochs=1, batch_size=64)
    busy = threading.Event()
    sweep._ahead_pool().submit(busy.wait, 60)  # the one thread is busy: both programs stay queued
    trainer = sweep.GridTrainer(task, spec).precompile(hp, seeds, tiny)
    sweep.cancel_ahead()  # what the end of an experiment does: queued compiles are dropped
    busy.set()
    result = sweep.train_grid(task, spec, hp, seeds, tiny, trainer=trainer)
    assert builds == ["MainThread"] * 2  # built on first use instead
    same_result(result, sweep.train_grid(task, spec, hp, seeds, tiny))


def test_a_program_still_queued_when_needed_is_built_by_the_caller(tiny, builds, monkeypatch):
    """With one thread busy on other programs, training does not wait behind them in the queue."""
    monkeypatch.setenv(sweep.AHEAD_ENV, "1")
    task, hp, seeds = dense_grid()
    spec = train.TrainSpec(epochs=1, batch_size=64)
    busy = threading.Event()
    blocker = sweep._ahead_pool().submit(busy.wait, 60)
    trainer = sweep.GridTrainer(task, spec).precompile(hp, seeds, tiny)
    result = sweep.train_grid(task, spec, hp, seeds, tiny, trainer=trainer)
    busy.set()
    blocker.result()
    assert builds == ["MainThread"] * 2
    same_result(result, sweep.train_grid(task, spec, hp, seeds, tiny))


def test_reports_say_how_much_of_the_compile_time_training_waited_for():
    from mnist_jax import report

    ahead = {"compile_seconds": 10.0, "compile_wait_seconds": 3.25}
    assert report.waited(ahead) == ", of which training waited 3.2 s"
    assert report.waited({"compile_seconds": 10.0, "compile_wait_seconds": 10.0}) == ""  # all on first use
    assert report.waited({"compile_seconds": 10.0}) == ""  # metrics.json of code before compiling ahead
    line = report.timing_line({"timing": {"wall_seconds": 20.0, "device": "cpu", "runs_per_call": 2,
                                          "steady_epoch_seconds": 1.0, "steady_run_epoch_seconds": 0.5, **ahead}})
    assert "(compile 10.0 s, of which training waited 3.2 s; one epoch" in line
