"""Issue #14: a workdir never lies and never loses a file.

Unit tests drive `cli.main` with a fake `run` (no training) to check the transaction,
the marker, the lock and the one-line errors; integration tests train tiny real runs, and the
chaos test kills one with SIGKILL at random moments.
"""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import synthetic
from test_experiments import shrunk_args

from experiments import evaluate, mlp, reproduce, vae
from experiments import sweep as sweep_experiment
from mnist_jax import cli, models, plots, preflight, registry, stats, sweep, tasks, trained, training
from mnist_jax import workdir as workdir_lib
from mnist_jax.checkpoint import Checkpointer, CheckpointError
from mnist_jax.config import ConfigError, parse_args
from mnist_jax.train import TrainSpec

S = ["--config.seeds=2", "--config.epochs=6", "--config.model.hidden=[32]", "--config.checkpoint_seconds=0"]


def fake_run(config, run_dir):
    """Stands in for an experiment's run: writes what a run writes, from its config alone."""
    run_dir = pathlib.Path(run_dir)
    (run_dir / "checkpoints" / "train" / "runs_0-2" / str(config.epochs)).mkdir(parents=True, exist_ok=True)
    (run_dir / "params").mkdir(exist_ok=True)
    (run_dir / "params" / "p").write_text(str(config.learning_rate))
    (run_dir / f"{config.get('figure', 'accuracy')}.png").write_text(str(config.learning_rate))
    return {"experiment": config.experiment, "learning_rate": config.learning_rate, "seeds": [0, 1]}


def interrupted_run(config, run_dir):
    (pathlib.Path(run_dir) / "checkpoints" / "train" / "runs_0-2" / "1").mkdir(parents=True)
    raise KeyboardInterrupt


def must_not_run(config, run_dir):
    raise AssertionError("the run started although the command should have been rejected")


def reads(config):
    """The fake runs of these tests read every field of their config (the read check has its own tests)."""
    return preflight.leaf_fields(config)


def main(run, workdir, *args, default="configs/mlp.py"):
    return call_main(run, ["--workdir", str(workdir), *args], default)


def call_main(run, argv, default):
    """cli.main's exit code ("escaped" when a Ctrl-C got through it)."""
    try:
        return cli.main(run, argv, default)
    except KeyboardInterrupt:
        return "escaped"


def snapshot(root: pathlib.Path) -> dict:
    """Every path under root with its content (files) or None (folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def committed(workdir):
    return (json.loads((workdir / "config.json").read_text()), json.loads((workdir / "metrics.json").read_text()))


# -- case 1: results that no config produced ------------------------------------------------------


def test_interrupted_run_leaves_the_committed_config_and_results_together(tmp_path, capsys):
    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    assert main(interrupted_run, w, *S, "--config.learning_rate=0.01") == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted; run again to resume from epoch 1"
    config, metrics = committed(w)
    assert config["learning_rate"] == metrics["learning_rate"] == 0.1
    assert (w / "params" / "p").read_text() == "0.1"


def test_reproduce_does_not_take_an_interrupted_run_of_another_profile_for_complete(tmp_path):
    sub = tmp_path / "mlp"
    quick = reproduce.stage_args(registry.stage("mlp"), "quick", sub)
    full = reproduce.stage_args(registry.stage("mlp"), "full", sub)
    assert call_main(fake_run, quick, "configs/mlp.py") == 0
    assert call_main(interrupted_run, full, "configs/mlp.py") in (130, "escaped")
    assert reproduce.is_complete(quick, sub)
    assert not reproduce.is_complete(full, sub)


def test_a_rejected_run_changes_nothing(tmp_path, capsys):
    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    before = snapshot(w)
    assert main(must_not_run, w, *S, "--config.n_val=59000", "--config.batch_size=5000") == 2
    assert "larger than the training set" in capsys.readouterr().err
    assert snapshot(w) == before
    fresh = tmp_path / "fresh"
    assert main(must_not_run, fresh, "--config.batch_size=5000", "--config.n_val=59000") == 2
    assert not fresh.exists()


def test_a_run_that_fails_before_training_leaves_the_workdir_as_it_was(tmp_path):
    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    before = snapshot(w)

    def rejects(config, run_dir):
        raise ConfigError("rejected inside run")

    assert main(rejects, w, *S, "--config.learning_rate=0.3") == 2
    assert snapshot(w) == before


# -- case 2: deleting what it did not create --------------------------------------------------------


def test_a_folder_with_foreign_files_is_refused_and_kept(tmp_path, capsys):
    d = tmp_path / "D"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "important.txt").write_text("precious")
    assert main(must_not_run, d, *S) == 2
    assert "holds files mnist-jax did not make (checkpoints)" in capsys.readouterr().err
    assert (d / "checkpoints" / "important.txt").read_text() == "precious"
    assert sorted(p.name for p in d.iterdir()) == ["checkpoints"]


def test_another_experiments_workdir_is_refused(tmp_path, capsys):
    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    before = snapshot(w)
    assert main(must_not_run, w, "--config.seeds=2", default="configs/denoise.py") == 2
    assert "is a workdir of experiment 'mlp'; use another folder for 'denoise'" in capsys.readouterr().err
    assert snapshot(w) == before


def test_a_new_run_replaces_exactly_what_the_old_one_made(tmp_path):
    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    (w / "notes.txt").write_text("mine")
    (w / "mydata").mkdir()
    (w / "mydata" / "thesis.tex").write_text("mine too")
    fig_b = tmp_path / "mlp_b.py"
    fig_b.write_text("from configs import mlp\n\ndef get_config():\n    c = mlp.get_config()\n"
                     "    c.figure = 'other'\n    return c\n")
    assert main(fake_run, w, *S, "--config", str(fig_b), "--config.learning_rate=0.2") == 0
    assert not (w / "accuracy.png").exists()  # made by the old run only
    assert (w / "other.png").read_text() == "0.2"
    assert (w / "notes.txt").read_text() == "mine" and (w / "mydata" / "thesis.tex").read_text() == "mine too"
    config, metrics = committed(w)
    assert config["learning_rate"] == metrics["learning_rate"] == 0.2


def test_discard_for_force_removes_only_what_mnist_jax_made(tmp_path):
    from mnist_jax import workdir as workdir_lib

    sub = tmp_path / "X" / "mlp"
    assert main(fake_run, sub, *S) == 0
    (sub / "mydata").mkdir()
    (sub / "mydata" / "thesis.tex").write_text("precious")
    workdir_lib.discard(sub, "mlp")
    assert (sub / "mydata" / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in sub.iterdir()) == [".mnist_jax", "mydata"]


def test_an_empty_workdir_argument_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(must_not_run, ["--workdir=", *S], "configs/mlp.py") == 2
    assert "--workdir is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- case 3: two processes, one workdir -------------------------------------------------------------


def test_a_workdir_in_use_is_refused(tmp_path, capsys):
    from mnist_jax import workdir as workdir_lib

    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    before = snapshot(w)
    holder = workdir_lib.Workdir.open(w, "mlp")
    try:
        assert main(must_not_run, w, *S, "--config.epochs=2") == 2
        assert f"is in use by another mnist-jax process (pid {os.getpid()})" in capsys.readouterr().err
    finally:
        holder.close()
    assert snapshot(w) == before
    assert main(fake_run, w, *S, "--config.epochs=2") == 0  # released with the holder


@pytest.mark.slow
def test_train_grid_refuses_a_checkpoint_past_its_epochs(tmp_path, tiny):
    task = tasks.classifier_task(models.MLP((8,)))
    hp, seeds = sweep.grid([0], learning_rate=[0.1])
    sweep.train_grid(task, TrainSpec(epochs=3, batch_size=64), hp, seeds, tiny, checkpoint_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="past this training's 2 epochs"):
        sweep.train_grid(task, TrainSpec(epochs=2, batch_size=64), hp, seeds, tiny, checkpoint_dir=str(tmp_path))


# -- case 8: writing outside the workdir ------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escaped", "/abs/name", "a/b", "..", ""])
def test_the_experiment_name_must_be_a_plain_name(tmp_path, name, capsys):
    assert main(must_not_run, tmp_path / "w", f"--config.experiment={name}") == 2
    assert "config.experiment" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- case 4: divergence ------------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["--config.dropout_rate=0.99999999999", "--config.learning_rate=1e39",
                                 "--config.l2=1e39", "--config.sweep.dropout_rate=[0.5, 0.99999999999]"])
def test_values_that_float32_turns_into_1_or_inf_are_refused(tmp_path, arg):
    field = arg[len("--config."):].split("=")[0]
    config_file = {"l2": "configs/mlp.py", "sweep.dropout_rate": "configs/dropout_sweep.py"}.get(field, "configs/cnn.py")
    with pytest.raises(ConfigError, match="not allowed"):
        parse_args(["--workdir", str(tmp_path), arg], config_file)


def test_evaluate_refuses_a_diverged_run(tmp_path, capsys):
    from mnist_jax.config import load_config_file

    config = load_config_file("configs/mlp.py")
    config.model.hidden = (8,)
    model = models.from_config(config.model)
    init_runs = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))))
    params = jax.jit(lambda key: jax.tree_util.tree_map(lambda a: a.at[1].set(jnp.nan), init_runs(jax.random.split(key, 2))))(
        jax.random.key(0))  # one program, not one per operation
    trained.write_json(tmp_path / "config.json", config.to_dict())
    trained.write_json(tmp_path / "metrics.json", {"seeds": [0, 1], "history": {"diverged": [[False], [True]]}})
    trained.save_params(tmp_path, params)
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.uint8))
    args = ["--workdir", str(tmp_path), "--images", str(tmp_path / "x.npy")]
    assert evaluate.main([*args, "--seed", "1"]) == 1
    assert "run 1 of this workdir diverged" in capsys.readouterr().err
    assert evaluate.main([*args, "--seed", "0"]) == 0


def test_stats_describe_has_no_spread_for_one_run_and_a_note_when_all_diverged():
    assert stats.describe(stats.summary([0.97])) == "97.00 % (one run: no spread)"
    assert stats.describe(stats.summary([np.nan, np.nan])) == "n/a (every run diverged)"
    assert "±" in stats.describe(stats.summary([0.97, 0.98]))


DIVERGE = "--config.learning_rate=1e30"  # every run's loss stops being finite in its first steps


def diverging(name: str, workdir, *more: str) -> list[str]:
    """Stage `name` as `test_experiments` shrinks it (the same programs: the learning rate is traced), every
    run diverging."""
    return [*shrunk_args(registry.stage(name), workdir), DIVERGE, *more]


@pytest.mark.slow
def test_l2_sweep_where_every_run_diverges_writes_metrics_and_reruns(tmp_path, synthetic_mnist):
    args = diverging("l2_sweep", tmp_path / "w")
    with pytest.warns(RuntimeWarning, match="diverged"):
        assert sweep_experiment.main(args) == 0
        assert sweep_experiment.main(args) == 0
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert all(r["diverged"] for r in m["runs"]) and m["chosen_on_validation"]["test_error_pct"]["n"] == 0


@pytest.mark.slow
def test_a_diverged_cnn_run_is_left_out_of_its_statistics(tmp_path, synthetic_mnist):
    from experiments import cnn

    with pytest.warns(RuntimeWarning, match="diverged"):
        assert cnn.main(diverging("cnn", tmp_path / "w")) == 0
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert m["test_accuracy"]["n"] == 0 and m["test_accuracy"]["mean"] is None
    assert m["diverged_seeds"] == list(range(len(m["runs"]))) and not m["target"]["met"]


# -- case 5: errors found after the expensive part ---------------------------------------------------


@pytest.fixture
def no_data(monkeypatch):
    """Loading data (the first expensive step of every run) fails the test."""
    def fail(*a, **k):
        raise AssertionError("data was loaded: the error was not found before the expensive part")
    monkeypatch.setattr(training, "load_data", fail)


def test_vae_refuses_a_non_classifier_before_training(tmp_path, no_data, capsys):
    assert vae.main(["--workdir", str(tmp_path / "v"), "--config.classifier.model.kind=dae"]) == 2
    assert "config.classifier.model.kind='dae' is not allowed" in capsys.readouterr().err
    den = tmp_path / "den"
    (den / "params").mkdir(parents=True)
    trained.write_json(den / "config.json", {"experiment": "denoise", "model": {"kind": "dae"}})
    assert vae.main(["--workdir", str(tmp_path / "v2"), f"--config.classifier.workdir={den}"]) == 2
    assert "not a classifier" in capsys.readouterr().err


def test_sweep_plot_of_a_single_zero_value(tmp_path):
    summary = stats.summary([1.0, 2.0])
    plots.sweep_scatter([0.0], [[1.0, 2.0]], [summary], tmp_path / "s.png", "t", xlabel="x", ylabel="y")
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.parametrize("out, message", [("missing/labels.npy", "does not exist"), ("labels", "must end in .npy"),
                                          (".", "must end in .npy"), ("RO/labels.npy", "cannot write there")])
def test_evaluate_checks_out_before_any_compute(tmp_path, monkeypatch, capsys, out, message):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trained, "restore_run", lambda *a: pytest.fail("restored before checking --out"))
    # a folder nobody can write into: read-only for a user; for root (who writes anyway), /proc
    out = out.replace("RO", "/proc" if os.geteuid() == 0 and os.path.isdir("/proc") else "ro")
    assert evaluate.main(["--workdir", "nowhere", "--images", "x.npy", "--out", out]) == 2
    assert message in capsys.readouterr().err


# -- case 6: no bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--config.seeds=100000000000000000000000000000"], "seeds=100000000000000000000000000000 is not allowed"),
    (["--config.seed=2147483647", "--config.seeds=2"], "must be below 2**31"),
])
def test_seed_ranges_are_bounded(tmp_path, args, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        parse_args(["--workdir", str(tmp_path), *args], "configs/mlp.py")


def test_a_model_too_large_for_memory_is_refused_before_training(tmp_path, capsys):
    assert main(must_not_run, tmp_path / "w", "--config.model.hidden=[100000000]") == 2
    err = capsys.readouterr().err
    assert "GiB is free" in err and err.count("\n") == 1


# -- case 7: tracebacks for user errors ------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("def get_config(:\n", "line 1"),
    ("def get_config():\n    raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
    ("def get_config():\n    return {'epochs': 1}\n", "returned a dict"),
    ("import nonexistent_module_xyz\n", "cannot be loaded"),
])
def test_broken_config_files_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "c.py"
    path.write_text(text)
    assert mlp.main(["--workdir", str(tmp_path / "w"), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_another_experiments_config_file_is_refused(tmp_path, capsys):
    assert mlp.main(["--workdir", str(tmp_path / "w"), "--config", "configs/cnn.py"]) == 2
    assert ("is a config of experiment 'cnn', which is run by experiments.cnn; this command is experiments.mlp"
            in capsys.readouterr().err)


@pytest.mark.parametrize("args, message", [
    (["--config.model.kind=resnet"], "model.kind='resnet' is not allowed: expected a built-in model"),
    (["--config.model.pool=[True]"], "needs one entry per conv layer"),
    (["--config.model.filters=[4, 4, 4, 4, 4, 4]", "--config.model.pool=[True, True, True, True, True, True]"],
     "too many conv or pooling layers"),
])
def test_models_that_cannot_be_built_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(must_not_run, tmp_path / "w", *args, default="configs/cnn.py") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sweeping_a_hyperparameter_the_task_does_not_read_is_a_one_line_error(tmp_path, no_data, capsys):
    assert mlp.main(["--workdir", str(tmp_path / "w"), "--config.sweep.dropout_rate=[0.1, 0.2]"]) == 2
    err = capsys.readouterr().err
    assert "config.sweep.dropout_rate" in err and err.count("\n") == 1


def test_truncated_json_in_a_workdir_is_a_one_line_error(tmp_path, capsys):
    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    text = (w / "config.json").read_text()
    (w / "config.json").write_text(text[: len(text) // 2])
    assert main(must_not_run, w, *S, "--config.learning_rate=0.3") == 2
    assert "is not valid JSON" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    assert evaluate.main(["--workdir", str(w), "--images", str(tmp_path / "x.npy")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_a_corrupt_checkpoint_falls_back_to_the_older_one(tmp_path, tiny, capsys):
    task = tasks.classifier_task(models.MLP((8,)))
    hp, seeds = sweep.grid([0], learning_rate=[0.1])
    spec = TrainSpec(epochs=3, batch_size=64)
    straight = sweep.train_grid(task, spec, hp, seeds, tiny)
    sweep.train_grid(task, TrainSpec(epochs=2, batch_size=64), hp, seeds, tiny, checkpoint_dir=str(tmp_path))
    for f in (tmp_path / "runs_0-1" / "2").rglob("*"):
        if f.is_file() and "metadata" not in f.name.lower() and "commit" not in f.name:
            f.write_bytes(b"garbage")
    resumed = sweep.train_grid(task, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path))
    assert [line for line in capsys.readouterr().err.splitlines() if "trying an older checkpoint" in line]
    assert resumed.resumed_from_epoch == 1
    np.testing.assert_array_equal(resumed.history["loss"], straight.history["loss"])


def test_a_corrupt_checkpoint_message_is_short(tmp_path):
    ckpt = Checkpointer(tmp_path / "c")
    ckpt.save(1, {"a": np.zeros(3, np.float32)})
    for f in (tmp_path / "c" / "1").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name.lower() and "commit" not in f.name:
            f.write_bytes(b"garbage")  # the arrays, not the metadata: orbax's error is then a page long
    with pytest.raises(CheckpointError) as err:
        ckpt.restore({"a": np.zeros(3, np.float32)})
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)


# -- case 9: smaller ------------------------------------------------------------------------------------


def test_only_with_no_names_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce.registry.Experiment, "module", lambda self: pytest.fail(f"would run {self.name}"))
    assert reproduce.main(["--workdir", str(tmp_path / "r"), "--config.only=,"]) == 2
    assert "names no experiment" in capsys.readouterr().err


def test_a_bool_is_not_an_integer(tmp_path):
    with pytest.raises(ConfigError, match="expected int, got bool"):
        parse_args(["--workdir", str(tmp_path), "--config.epochs=True"], "configs/mlp.py")


def test_a_killed_json_write_leaves_no_file_in_the_committed_workdir(tmp_path):
    w = tmp_path / "w"

    def leaves_a_temp(config, run_dir):
        (pathlib.Path(run_dir) / ".metrics.json.tmp").write_text("")  # what a kill mid-write leaves
        return fake_run(config, run_dir)

    assert main(leaves_a_temp, w, *S) == 0
    assert not [p for p in w.rglob("*") if p.name.endswith(".tmp")]
    assert workdir_lib.temp_path(w / "metrics.json") == w / ".metrics.json.tmp"  # fixed, overwritten


def test_evaluate_batches_hold_the_output_once(tmp_path):
    x = np.zeros((20_000, 28, 28, 1), np.uint8)
    tracemalloc.start()
    out = evaluate.in_batches(lambda c: c.astype(np.float32), x, batch=1000, dtype=np.float32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.shape == x.shape and out.dtype == np.float32
    assert peak < 1.3 * out.nbytes, peak / out.nbytes


# -- integration: real processes -----------------------------------------------------------------------


def mlp_cmd(workdir, *extra):
    return [sys.executable, "-m", "experiments.mlp", "--workdir", str(workdir), *S, *extra]


def wait_for_checkpoint(workdir, proc, epoch, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            steps = [p for p in workdir.rglob("*") if p.is_dir() and p.name.isdigit() and p.parent.name.startswith("runs_")]
        except FileNotFoundError:  # a folder renamed while it was walked (orbax's temporary ones, the run's own)
            steps = []
        if any(int(p.name) >= epoch for p in steps):
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_a_second_process_is_refused_while_the_first_trains(tmp_path, synthetic_processes, capsys):
    w = tmp_path / "w"
    # more epochs than it can train before it is killed, however fast they are
    a = subprocess.Popen(mlp_cmd(w, "--config.epochs=100000"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_checkpoint(w, a, 2)
        # this test's process is the second one
        assert mlp.main(["--workdir", str(w), *S[:1], "--config.epochs=2", "--config.learning_rate=0.05"]) == 2
        assert f"in use by another mnist-jax process (pid {a.pid})" in capsys.readouterr().err
    finally:
        a.kill()
        a.wait()


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    w = tmp_path / "w"
    proc = subprocess.run(mlp_cmd(w, "--config.epochs=30"), env=synthetic.interrupted_env("2"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "interrupted; run again to resume from epoch 2" and "Traceback" not in proc.stderr


@pytest.mark.integration
def test_reproduce_force_keeps_files_it_did_not_make(tmp_path, monkeypatch):
    small = tmp_path / "small_mlp.py"
    small.write_text("from configs import mlp\n\nENTRY = 'experiments.mlp'\n\n\ndef get_config(profile='full'):\n"
                     "    c = mlp.get_config(profile)\n    c.seeds, c.epochs, c.model.hidden = 1, 1, (8,)\n    return c\n")
    stage = registry.Experiment("mlp", "experiments.mlp", small, 1)
    monkeypatch.setattr(reproduce.registry, "stages", lambda: [stage])
    x = tmp_path / "X"
    assert reproduce.main(["--workdir", str(x), "--config.only=mlp"]) == 0
    (x / "mlp" / "mydata").mkdir()
    (x / "mlp" / "mydata" / "thesis.tex").write_text("precious")
    (x / "notes.md").write_text("mine")
    assert reproduce.main(["--workdir", str(x), "--config.only=mlp", "--config.force=True"]) == 0
    assert (x / "mlp" / "mydata" / "thesis.tex").read_text() == "precious"
    assert (x / "notes.md").read_text() == "mine"
    assert (x / "REPORT.md").exists() and (x / "mlp" / "metrics.json").exists()


def tree_shape(root: pathlib.Path) -> set[str]:
    """Paths under root, with orbax's content-addressed file names folded (they differ run to run)."""
    out = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        out.add("/".join(part if not (len(part) == 32 and all(c in "0123456789abcdef" for c in part)) else "<hash>"
                         for part in rel).split(".tfevents.")[0])  # TensorBoard's event file names hold the time
    return out


def newest_checkpoint(w: pathlib.Path) -> int:
    runs = w / ".mnist_jax" / "run" / "checkpoints" / "train" / "runs_0-2"
    try:
        return max((int(n) for n in os.listdir(runs) if n.isdigit()), default=0)
    except OSError:
        return 0


def checkpoint_in_flight(w: pathlib.Path) -> bool:
    runs = w / ".mnist_jax" / "run" / "checkpoints" / "train" / "runs_0-2"
    try:
        return any("tmp" in n for n in os.listdir(runs))
    except OSError:
        return False


def committing(w: pathlib.Path) -> bool:
    try:
        return '"committing"' in (w / ".mnist_jax" / "workdir.json").read_text()
    except OSError:
        return False


# The moments of the chaos test: (what to wait for, the most seconds to wait after it).
MOMENTS = {
    "startup": lambda w, start: True,
    "training": lambda w, start: newest_checkpoint(w) > start,
    "checkpointing": lambda w, start: checkpoint_in_flight(w),
    "params": lambda w, start: (w / ".mnist_jax" / "run" / "params").exists(),
    "figures": lambda w, start: (w / ".mnist_jax" / "run" / "accuracy.png").exists(),
    "metrics write": lambda w, start: any((w / ".mnist_jax" / "run" / n).exists() for n in (".metrics.json.tmp", "metrics.json")),
    "commit": lambda w, start: committing(w),
}


@pytest.mark.slow
def test_chaos_sigkill_at_random_moments_ends_like_an_uninterrupted_run(tmp_path, synthetic_processes):
    """A run SIGKILLed at each moment of its life (`MOMENTS`), each time rerun: it ends with the
    numbers and files of a run never killed, and leaves its neighbours alone."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "neighbour.txt").write_text("untouched")
    straight = tmp_path / "straight"
    subprocess.run(mlp_cmd(straight), check=True, capture_output=True)

    w = box / "w"
    rng = random.Random(14)
    plan = ["startup", "training", "checkpointing", "params", "figures", "metrics write", "commit",
            rng.choice(list(MOMENTS))]
    killed, said = [], []
    for i, moment in enumerate(plan):
        start = newest_checkpoint(w)
        out = tmp_path / f"stdout_{i}.txt"  # unbuffered (-u): what it printed before the kill is there
        with out.open("w") as f:
            proc = subprocess.Popen([sys.executable, "-u", *mlp_cmd(w)[1:]], stdout=f, stderr=subprocess.DEVNULL)
            while proc.poll() is None and not MOMENTS[moment](w, start):
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 3.0 if moment == "startup" else 0.3 if moment == "training" else 0.005))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed.append(moment)
            proc.wait()
        said.append(out.read_text())
        # whatever the moment, the committed state is consistent: config.json only beside its metrics
        if (w / "config.json").exists():
            config, metrics = committed(w)
            assert config["epochs"] == 6 and len(metrics["history"]["loss"][0]) == 6
        if moment == "training" and killed[-1:] == ["training"]:  # mid-training: no result yet, the run's config whole
            assert not (w / "metrics.json").exists() and not (w / "config.json").exists()
            assert json.loads((w / ".mnist_jax" / "run" / "config.json").read_text())["epochs"] == 6
    print("killed at:", killed)
    assert len(killed) >= 6, killed
    if "training" in killed:  # a later process trained on from a checkpoint written mid-training
        resumed = [int(n) for text in said for n in re.findall(r"resumed from the checkpoint of epoch (\d+)", text)]
        assert any(1 <= n < 6 for n in resumed), (resumed, killed)
    subprocess.run(mlp_cmd(w), check=True, capture_output=True)

    assert json.loads((w / "metrics.json").read_text())["history"] == json.loads(
        (straight / "metrics.json").read_text())["history"]
    assert sorted(p.name for p in box.iterdir()) == ["neighbour.txt", "w"]
    assert (box / "neighbour.txt").read_text() == "untouched"
    assert tree_shape(w) == tree_shape(straight)  # no stray file, temporary or half-written
    assert sorted(p.name for p in (w / ".mnist_jax").iterdir()) == ["lock", "workdir.json"]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, not even `except Exception` handlers."""


@pytest.mark.slow
@pytest.mark.parametrize("crash_after", range(18))
def test_a_commit_killed_at_any_rename_is_finished_by_the_next_process(tmp_path, monkeypatch, crash_after):
    from mnist_jax import workdir as workdir_lib

    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if pathlib.Path(w) in pathlib.Path(dst).parents or pathlib.Path(dst) == w:
            calls.append(dst)
            if len(calls) > crash_after:
                raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(workdir_lib.os, "replace", replace)
    try:
        main(fake_run, w, *S, "--config.learning_rate=0.2")
    except Killed:
        pass
    monkeypatch.setattr(workdir_lib.os, "replace", real_replace)
    workdir_lib.Workdir.open(w, "mlp").close()  # the next process recovers
    config, metrics = committed(w)
    assert config["learning_rate"] == metrics["learning_rate"] == float((w / "params" / "p").read_text())
    assert float((w / "accuracy.png").read_text()) == config["learning_rate"]
    assert sorted(p.name for p in (w / ".mnist_jax").iterdir()) in (["lock", "run", "workdir.json"],
                                                                     ["lock", "workdir.json"])


DIVERGING = {  # what else diverges, per experiment that summarizes runs, and the summary it leaves empty
    "denoise": ([], lambda m: m["per_level"]["test_psnr_denoised"].values()),
    "noise_accuracy": (["--config.denoiser.learning_rate=1e30"], lambda m: m["test_accuracy"]["noisy"]["per_level"].values()),
    "cnn_search": ([], lambda m: [c["val_accuracy"] for c in m["rounds"]["round1_filters"]["candidates"]]),
    "vae": ([], lambda m: [m["test_neg_elbo"]]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DIVERGING))
def test_an_experiment_where_every_run_diverges_finishes_with_empty_statistics(tmp_path, name, synthetic_mnist):
    import importlib

    more, summaries = DIVERGING[name]
    assert importlib.import_module(registry.stage(name).entry).main(diverging(name, tmp_path / "w", *more)) == 0
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert [s["n"] for s in summaries(m)] == [0] * len(list(summaries(m)))


def test_evaluate_after_an_interrupted_run_uses_the_finished_run_and_says_so(tmp_path, capsys):
    from mnist_jax.config import load_config_file

    model = models.from_config(load_config_file("configs/mlp.py").model)

    def real_params_run(config, run_dir):
        init_runs = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))))
        params = jax.jit(lambda key: init_runs(jax.random.split(key, 2)))(jax.random.key(0))  # one program
        trained.save_params(run_dir, params)
        return {"seeds": [0, 1]}

    w = tmp_path / "w"
    assert main(real_params_run, w) == 0
    assert main(interrupted_run, w, "--config.learning_rate=0.01") == 130
    capsys.readouterr()
    np.save(tmp_path / "x.npy", np.zeros((3, 28, 28), np.uint8))
    assert evaluate.main(["--workdir", str(w), "--images", str(tmp_path / "x.npy")]) == 0
    assert "also holds an unfinished run" in capsys.readouterr().err
    assert json.loads((w / "config.json").read_text())["learning_rate"] == 0.1  # the config of these params


def test_ctrl_c_in_a_reproduce_stage_exits_130_with_the_stages_line_only(tmp_path, monkeypatch, capsys):
    class Stage:
        @staticmethod
        def main(args):
            print("interrupted; run again to resume from epoch 3", file=sys.stderr)
            return 130

    class FakeStage:
        name = "mlp"

        def config_arg(self, profile):
            return "configs/mlp.py"

        def module(self):
            return Stage

    monkeypatch.setattr(reproduce.registry, "stages", lambda: [FakeStage()])
    assert reproduce.main(["--workdir", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted; run again to resume from epoch 3"


def test_train_images_are_checked_before_data_is_loaded(tmp_path):
    with pytest.raises(ConfigError, match="train_images=60000 is larger than the training split"):
        parse_args(["--workdir", str(tmp_path), "--config.train_images=60000"], "configs/cnn_search.py")


@pytest.mark.parametrize("command", [mlp.main, evaluate.main])
def test_command_line_errors_are_one_line(command, capsys):
    assert command(["--images", "x.npy"]) == 2  # no --workdir
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--workdir" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_workdir_whose_checkpoints_are_all_corrupt_stops_with_one_line(tmp_path, synthetic_processes):
    w = tmp_path / "w"
    small = ["--config.seeds=1", "--config.epochs=2", "--config.model.hidden=[8]", "--config.checkpoint_seconds=0"]
    cmd = [sys.executable, "-m", "experiments.mlp", "--workdir", str(w), *small]
    subprocess.run(cmd, check=True, capture_output=True)
    for f in (w / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name.lower() and "commit" not in f.name:
            f.write_bytes(b"garbage")
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 1
    err = rerun.stderr
    assert "Traceback" not in err and "asyncio" not in err, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        f"error: no checkpoint in {w.resolve()}/.mnist_jax/run/checkpoints/train/runs_0-1 can be restored (tried epochs 2, 1); "
        "delete it or run with a fresh --workdir"]
    assert len(err) < 2000
