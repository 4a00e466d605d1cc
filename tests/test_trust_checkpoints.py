"""Issue #26: a damaged checkpoint never becomes a result, a checkpoint restores onto any device
count, checkpoints land at the promised interval, and a fuzzed workdir ends well or in one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import synthetic
from conftest import synthetic_splits

from experiments import evaluate, mlp
from mnist_jax import data as data_lib
from mnist_jax import models, sweep, tasks, trained
from mnist_jax.checkpoint import Checkpointer, CheckpointError
from mnist_jax.config import ConfigError
from mnist_jax.train import TrainSpec

# its module fixture is built once: every test of this file runs on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("test_trust_checkpoints")

REPO = pathlib.Path(__file__).resolve().parents[1]


class Stop(Exception):
    """Stands in for a kill between two chunks of epochs (after the checkpoint of the chunk)."""


def stop_after(epochs: int):
    done = []

    def progress(n, metrics):
        done.append(n)
        if sum(done) >= epochs:
            raise Stop

    return progress


def xor_bytes(path: pathlib.Path, count: int = 200, seed: int = 0) -> None:
    """Flip `count` bytes of `path` (XOR 0xFF) at random offsets."""
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for i in rng.sample(range(len(data)), min(count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def largest_data_file(step: pathlib.Path) -> pathlib.Path:
    """The largest file of orbax's array data of one checkpoint step (OCDBT's d/ folder)."""
    files = [f for f in step.glob("default/ocdbt.process_0/d/*") if f.is_file()]
    assert files, sorted(str(p) for p in step.rglob("*"))
    return max(files, key=lambda f: f.stat().st_size)


def mlp_grid(n_seeds: int = 2):
    task = tasks.classifier_task(models.MLP((16,)))
    hp, seeds = sweep.grid(list(range(n_seeds)), learning_rate=[0.1])
    return task, hp, seeds


# -- finding 2: a damaged checkpoint becomes a result ------------------------------------------------


@pytest.mark.slow
def test_a_damaged_checkpoint_falls_back_to_the_older_one_and_ends_with_the_uninterrupted_numbers(tmp_path, tiny, capsys):
    task, hp, seeds = mlp_grid()
    spec = TrainSpec(epochs=4, batch_size=64)
    straight = sweep.train_grid(task, spec, hp, seeds, tiny)
    with pytest.raises(Stop):
        sweep.train_grid(task, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path), progress=stop_after(3))
    xor_bytes(largest_data_file(tmp_path / "runs_0-2" / "3"))
    capsys.readouterr()
    resumed = sweep.train_grid(task, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path))
    err = capsys.readouterr().err
    assert resumed.resumed_from_epoch == 2
    assert [line for line in err.splitlines() if line] == [
        f"warning: checkpoint 3 in {tmp_path}/runs_0-2 is damaged (the checksum of "
        f"{err.split('the checksum of ')[1].split(' does not match')[0]} does not match); trying an older checkpoint"]
    for k in straight.history:
        np.testing.assert_array_equal(resumed.history[k], straight.history[k])
    for a, b in zip(*(sweep.jax.tree_util.tree_leaves(r.state.params) for r in (resumed, straight)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_grid_whose_every_checkpoint_is_damaged_is_one_error(tmp_path, tiny):
    task, hp, seeds = mlp_grid()
    spec = TrainSpec(epochs=3, batch_size=64)
    with pytest.raises(Stop):
        sweep.train_grid(task, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path), progress=stop_after(2))
    for step in ("1", "2"):
        xor_bytes(largest_data_file(tmp_path / "runs_0-2" / step))
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*runs_0-2 can be restored \(tried epochs 2, 1\)"):
        sweep.train_grid(task, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path))


def test_checksums_lie_beside_each_kept_step_and_a_missing_or_damaged_one_is_refused(tmp_path):
    ckpt = Checkpointer(tmp_path / "c", max_to_keep=2)
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int32)}
    for epoch in (1, 2, 3):
        (tmp_path / "c" / f".{epoch + 1}.checksums.json.tmp").write_text("{")  # what a kill mid-write leaves
        ckpt.save(epoch, tree)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["2", "2.checksums.json", "3", "3.checksums.json"]
    restored = ckpt.restore(tree)
    assert all(np.array_equal(restored[k], tree[k]) for k in tree)
    (tmp_path / "c" / "3.checksums.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="has a damaged 3.checksums.json"):
        ckpt.restore(tree, 3)
    (tmp_path / "c" / "2.checksums.json").unlink()
    with pytest.raises(CheckpointError, match="has no 2.checksums.json"):
        ckpt.restore(tree, 2)
    ckpt.close()


@pytest.mark.slow
def test_checkpoints_without_checksums_are_never_resumed(tmp_path, tiny, capsys):
    """What older code left (no checksums at all) cannot be verified: these runs train from the
    start, with one line, and end with the uninterrupted numbers."""
    task, hp, seeds = mlp_grid()
    spec = TrainSpec(epochs=3, batch_size=64)
    straight = sweep.train_grid(task, spec, hp, seeds, tiny)
    with pytest.raises(Stop):
        sweep.train_grid(task, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path), progress=stop_after(2))
    for sums in (tmp_path / "runs_0-2").glob("*.checksums.json"):
        sums.unlink()
    xor_bytes(largest_data_file(tmp_path / "runs_0-2" / "2"))
    capsys.readouterr()
    fresh = sweep.train_grid(task, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path))
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path}/runs_0-2: its checkpoints have no checksums (older code wrote them), so they cannot be verified; "
        "training these runs from the start"]
    assert fresh.resumed_from_epoch is None
    np.testing.assert_array_equal(fresh.history["loss"], straight.history["loss"])
    assert sorted(p.name for p in (tmp_path / "runs_0-2").iterdir()) == ["2", "2.checksums.json", "3", "3.checksums.json"]


def test_a_restored_healthy_run_with_non_finite_params_is_refused():
    task, hp, seeds = mlp_grid()
    trainer = sweep.GridTrainer(task, TrainSpec(epochs=1, batch_size=64))
    state = sweep.jax.tree_util.tree_map(np.array, trainer.init(*trainer.place(hp, seeds, synthetic_splits())))
    sweep.check_restored({"state": state}, 2)
    first = sweep.jax.tree_util.tree_leaves(state.params)[0]
    first[1].flat[0] = np.nan
    with pytest.raises(CheckpointError, match="non-finite params of run 1, which is not marked as diverged"):
        sweep.check_restored({"state": state}, 2)
    sweep.check_restored({"state": state._replace(diverged_epoch=np.array([-1, 0], np.int32))}, 2)


def synthetic_data(monkeypatch_or_context, n_train: int = 512) -> None:
    """experiments train on synthetic digits instead of MNIST (fast, offline)."""
    splits = synthetic_splits(n_train=n_train, n_eval=128)
    monkeypatch_or_context.setattr(data_lib, "load_splits", lambda **kw: splits)


TINY = ["--config.seeds=2", "--config.epochs=2", "--config.model.hidden=[16]",
        "--config.checkpoint_seconds=0"]


def images(tmp_path: pathlib.Path) -> pathlib.Path:
    x = synthetic_splits(n_train=8, n_eval=8, seed=3).test_x
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


@pytest.mark.slow
def test_evaluate_of_damaged_params_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    synthetic_data(monkeypatch)
    w = tmp_path / "w"
    assert mlp.main(["--workdir", str(w), *TINY]) == 0
    x = images(tmp_path)
    assert evaluate.main(["--workdir", str(w), "--images", str(x), "--seed", "1"]) == 0
    xor_bytes(largest_data_file(w / "params" / "0"))
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(w), "--images", str(x), "--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: the trained params in {str(w / 'params')!r} cannot be used")
    assert "Traceback" not in err
    # the rerun rewrites them from the checkpoints, with the same numbers
    before = json.loads((w / "metrics.json").read_text())["history"]
    assert mlp.main(["--workdir", str(w), *TINY]) == 0
    assert json.loads((w / "metrics.json").read_text())["history"] == before
    assert evaluate.main(["--workdir", str(w), "--images", str(x), "--seed", "1"]) == 0


@pytest.mark.slow
def test_non_finite_params_of_a_run_its_metrics_call_healthy_are_called_damaged(tmp_path, monkeypatch, capsys):
    synthetic_data(monkeypatch)
    w = tmp_path / "w"
    assert mlp.main(["--workdir", str(w), *TINY]) == 0
    model = models.from_config(trained.read_json(w / "config.json")["model"])
    params = trained.load_params(w, models.init_shapes(model, runs=2))
    params = sweep.jax.tree_util.tree_map(lambda a: np.where(np.arange(2).reshape(-1, *[1] * (a.ndim - 1)) == 1, np.nan, a),
                                          params)
    shutil.rmtree(w / "params")
    trained.save_params(w, params)  # sound checksums of params that contradict metrics.json
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(w), "--images", str(images(tmp_path)), "--seed", "1"]) == 1
    assert "not finite although its metrics say it did not diverge" in capsys.readouterr().err


# -- finding 4: a checkpoint does not restore onto another device count ---------------------------------

MESHES = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    sys.path.insert(0, "tests")
    from conftest import synthetic_splits
    from mnist_jax import models, sweep, tasks
    from mnist_jax.train import TrainSpec

    out = sys.argv[1]
    task = tasks.classifier_task(models.MLP((16,)))
    spec = TrainSpec(epochs=3, batch_size=64)
    hp, seeds = sweep.grid([0, 1, 2], learning_rate=[0.1])
    data = synthetic_splits()

    class Stop(Exception):
        pass

    def stop(n, metrics):
        raise Stop

    def train(devices, **kw):
        trainer = sweep.GridTrainer(task, spec, sweep.runs_mesh(jax.devices()[:devices]))
        return sweep.train_grid(task, spec, hp, seeds, data, trainer=trainer, **kw)

    def arrays(r):
        return {**r.history, **{f"param{i}": a for i, a in enumerate(jax.tree_util.tree_leaves(r.state.params))}}

    for devices in (1, 2):
        np.savez(f"{out}/straight{devices}.npz", **arrays(train(devices)))
    for order in ((1, 2, 1), (2, 1, 2)):
        ckpt = f"{out}/ckpt{order}"
        for devices in order[:2]:  # one epoch on each mesh, then stopped as a kill would stop it
            try:
                train(devices, checkpoint_dir=ckpt, progress=stop)
            except Stop:
                pass
        r = train(order[2], checkpoint_dir=ckpt)
        assert r.resumed_from_epoch == 2, r.resumed_from_epoch
        np.savez(f"{out}/resumed{order[0]}{order[1]}{order[2]}.npz", **arrays(r))
""")


@pytest.mark.slow
def test_a_checkpoint_restores_onto_another_device_count_and_padding(tmp_path):
    """3 runs on meshes of 1 device (no padding) and 2 devices (one padding run): 1 -> 2 -> 1
    and 2 -> 1 -> 2, one epoch on each, end with the numbers of an uninterrupted run bit for bit:
    params and every training metric equal both meshes' (on a CPU a run's training arithmetic does
    not depend on how many runs share a device), and each epoch's evaluation losses equal those of
    the mesh that epoch ran on (their sums are reassociated across device counts by about 1e-7,
    which the README allows). The meshes are subsets of one process's two host devices, whose
    count is fixed when JAX starts: hence the subprocess."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "MNIST_JAX_COMPILE_AHEAD": "0"}
    done = subprocess.run([sys.executable, "-c", MESHES, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = {d: np.load(tmp_path / f"straight{d}.npz") for d in (1, 2)}
    assert straight[1]["loss"].shape == (3, 3)
    for order in ((1, 2, 1), (2, 1, 2)):
        resumed = np.load(tmp_path / f"resumed{''.join(map(str, order))}.npz")
        assert sorted(resumed.files) == sorted(straight[1].files)
        for k in resumed.files:
            if k.startswith("param"):
                np.testing.assert_array_equal(resumed[k], straight[order[2]][k], err_msg=f"{k}, {order}")
                continue
            for epoch, devices in enumerate(order):
                np.testing.assert_array_equal(resumed[k][:, epoch], straight[devices][k][:, epoch],
                                              err_msg=f"{k} of epoch {epoch + 1}, {order}")
    for k in straight[1].files:  # what differs between the meshes: evaluation sums only, by float32 rounding
        if k in ("val_loss", "test_loss"):
            np.testing.assert_allclose(straight[1][k], straight[2][k], rtol=1e-6)
        else:
            np.testing.assert_array_equal(straight[1][k], straight[2][k], err_msg=k)


@pytest.mark.slow  # two meshes: four programs
def test_checkpoints_of_runs_grouped_otherwise_are_named_not_silently_skipped(tmp_path, tiny, capsys):
    """A run_chunk is rounded up to the device count, so another mesh may group the runs into
    other checkpoint folders: those are not resumed, and one line says so."""
    task, hp, seeds = mlp_grid()
    spec = TrainSpec(epochs=1, batch_size=64)
    sweep.train_grid(task, spec, hp, seeds, tiny, run_chunk=1, checkpoint_dir=str(tmp_path))
    capsys.readouterr()
    sweep.train_grid(task, spec, hp, seeds, tiny, run_chunk=2, checkpoint_dir=str(tmp_path))
    assert capsys.readouterr().err.splitlines() == [
        f"{tmp_path}: checkpoints of runs grouped otherwise (runs_0-1, runs_1-2: another device count with "
        "config.run_chunk) are not resumed; this mesh trains 2 runs at a time"]


# -- finding 9: checkpoints come later than promised --------------------------------------------------------


def test_chunks_end_on_checkpoint_epochs():
    assert [sweep.chunk_length(d, 7, 2, 3) for d in (0, 2, 3, 5, 6)] == [2, 1, 2, 1, 1]
    assert sweep.epoch_chunks(7, 2, 3) == [1, 2]
    assert sweep.epoch_chunks(7, 2) == [1, 2] and sweep.epoch_chunks(8, 4) == [4]
    assert sweep.epoch_chunks(10, 5, 1) == [1]  # a chunk never runs past a checkpoint epoch
    assert sweep.epoch_chunks(10, 5, 5) == [5]


@pytest.mark.slow
def test_a_kill_loses_at_most_one_checkpoint_interval_whatever_chunk_epochs_is(tmp_path, tiny, monkeypatch):
    task, hp, seeds = mlp_grid()
    spec = TrainSpec(epochs=7, batch_size=64)
    straight = sweep.train_grid(task, spec, hp, seeds, tiny)
    saved = []
    real_save = Checkpointer.save

    def save(self, epoch, tree):
        saved.append(epoch)
        real_save(self, epoch, tree)

    monkeypatch.setattr(sweep.Checkpointer, "save", save)
    with pytest.raises(Stop):  # killed during epoch 6: epochs 1-5 are done
        sweep.train_grid(task, spec, hp, seeds, tiny, chunk_epochs=2, checkpoint_dir=str(tmp_path),
                         checkpoint_every=3, progress=stop_after(5))
    assert saved == [3]
    resumed = sweep.train_grid(task, spec, hp, seeds, tiny, chunk_epochs=2, checkpoint_dir=str(tmp_path),
                               checkpoint_every=3)
    assert saved == [3, 6, 7] and resumed.resumed_from_epoch == 3
    for k in straight.history:  # chunking never changes the numbers
        np.testing.assert_array_equal(resumed.history[k], straight.history[k])


# -- the fuzz test: random bytes of random files of a finished workdir ---------------------------------

FUZZ_CASES = 30
FUZZ_TARGETS = ("marker", "metrics", "config", "checkpoints", "params")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny mlp workdir (synthetic data), with the numbers and evaluate output it holds."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp, synthetic.light_compiles(mp):  # as the tests that resume it
        synthetic_data(mp)
        assert mlp.main(["--workdir", str(root / "w"), *TINY]) == 0
        x = images(root)
        assert evaluate.main(["--workdir", str(root / "w"), "--images", str(x), "--seed", "1",
                              "--out", str(root / "labels.npy")]) == 0
    return root


def fuzz_files(w: pathlib.Path, target: str) -> list[pathlib.Path]:
    if target == "marker":
        return [w / ".mnist_jax" / "workdir.json"]
    if target in ("metrics", "config"):
        return [w / f"{target}.json"]
    return sorted(p for p in (w / target).rglob("*") if p.is_file() and p.stat().st_size > 0)


def healthy_params_are_finite(w: pathlib.Path) -> None:
    """No run that metrics.json calls healthy has non-finite params in the committed params/
    (params whose checksums fail are never used, so they count as not committed)."""
    try:
        metrics = json.loads((w / "metrics.json").read_text())
        config = json.loads((w / "config.json").read_text())
        params = trained.load_params(w, models.init_shapes(models.from_config(config["model"]), runs=2))
    except (OSError, ValueError, KeyError, TypeError, CheckpointError, ConfigError):
        return
    for r, record in enumerate(metrics.get("runs", [])):
        if record.get("diverged") is False:
            for leaf in sweep.jax.tree_util.tree_leaves(params):
                assert np.all(np.isfinite(np.asarray(leaf)[r])), f"run {r} is marked healthy but its params are not finite"


@pytest.mark.slow
@pytest.mark.parametrize("case", range(FUZZ_CASES))
def test_fuzzed_workdir_ends_with_its_numbers_or_one_line(finished, tmp_path, monkeypatch, capfd, case):
    rng = random.Random(2600 + case)
    target = FUZZ_TARGETS[case % len(FUZZ_TARGETS)]
    action = "rerun" if case % 2 == 0 else "evaluate"
    box = tmp_path / "box"
    box.mkdir()
    (box / "sentinel.txt").write_text("untouched")
    w = box / "w"
    shutil.copytree(finished / "w", w, symlinks=True)
    victim = rng.choice(fuzz_files(w, target))
    data = bytearray(victim.read_bytes())
    for i in rng.sample(range(len(data)), min(rng.choice([1, 8, 200]), len(data))):
        data[i] ^= rng.randint(1, 255)
    victim.write_bytes(bytes(data))
    synthetic_data(monkeypatch)
    capfd.readouterr()
    try:
        if action == "rerun":
            rc = mlp.main(["--workdir", str(w), *TINY])
        else:
            rc = evaluate.main(["--workdir", str(w), "--images", str(images(tmp_path)), "--seed", "1",
                                "--out", str(tmp_path / "labels.npy")])
    except Exception as err:  # noqa: BLE001 - what a command line would print as a traceback
        pytest.fail(f"{action} after damage to {victim.relative_to(w)}: uncaught {type(err).__name__}: {err}")
    err = capfd.readouterr().err
    where = f"{action} after damage to {victim.relative_to(w)}: rc {rc}, stderr {err[-1500:]!r}"
    assert "Traceback" not in err, where
    assert rc in (0, 1, 2), where
    if rc == 0:
        if action == "rerun":
            assert (json.loads((w / "metrics.json").read_text())["history"]
                    == json.loads((finished / "w" / "metrics.json").read_text())["history"]), where
        else:
            np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), np.load(finished / "labels.npy"), err_msg=where)
    else:
        assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, where
    assert sorted(p.name for p in box.iterdir()) == ["sentinel.txt", "w"], where
    assert (box / "sentinel.txt").read_text() == "untouched"
    healthy_params_are_finite(w)
