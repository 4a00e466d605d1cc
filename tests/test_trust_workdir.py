"""Issue #26: a workdir's own files cannot delete elsewhere, no progress is thrown away before
the new run stands, faults are one line each, and `compare` can show that a resume kept the numbers.

Unit tests drive `experiment.main` with the fake runs of test_workdir (no training); the
integration tests train tiny real runs in subprocesses and interrupt them at checkpoints.
"""

import json
import pathlib

import numpy as np
import pytest
from test_workdir import S, committed, fake_run, main, snapshot

from experiments import evaluate
from mnist_jax import experiment
from mnist_jax import workdir as workdir_lib

MARKER = pathlib.Path(".mnist_jax") / "workdir.json"


def one_line_error(err: str) -> str:
    """The one error line of a command's stderr (the test fails on a traceback or several lines)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- finding 1 and 8: a marker's entries are names inside the workdir, a damaged marker is one line -----


def marker_of(w: pathlib.Path) -> dict:
    return json.loads((w / MARKER).read_text())


def write_marker(w: pathlib.Path, marker) -> None:
    (w / MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))


def test_evaluate_on_a_marker_that_names_a_file_beside_the_workdir_deletes_nothing(tmp_path, capsys):
    box = tmp_path / "box"
    box.mkdir()
    (box / "victim.txt").write_text("precious")
    w = box / "w"
    assert main(fake_run, w, *S) == 0
    capsys.readouterr()
    write_marker(w, {**marker_of(w), "state": "committing", "replacing": ["../victim.txt"]})
    before = snapshot(box)
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    assert evaluate.main(["--workdir", str(w), "--images", str(tmp_path / "x.npy")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(w / MARKER) in line and "../victim.txt" in line and "another --workdir" in line
    assert snapshot(box) == before


@pytest.mark.parametrize("edit, why", [
    (lambda m: {**m, "files": [*m["files"], "/VICTIM"]}, "'files' entry \"/"),
    (lambda m: {**m, "state": "committing", "replacing": ["../victim.txt"]}, "'replacing' entry \"../victim.txt\""),
    (lambda m: {**m, "state": "committing", "replacing": [".."]}, "'replacing' entry \"..\""),
    (lambda m: {**m, "state": "committing", "files": ["sub/config.json"], "replacing": []}, "'files' entry"),
    (lambda m: {**m, "state": "committing"}, "'replacing' is null"),
    (lambda m: {**m, "files": None}, "'files' is null"),
    (lambda m: {**m, "files": "config.json"}, "'files' is \"config.json\""),
    (lambda m: {**m, "files": [1]}, "'files' entry 1"),
    (lambda m: {**m, "state": "half"}, "state 'half'"),
    (lambda m: {**m, "experiment": "../mlp"}, "experiment '../mlp'"),
    (lambda m: [], "it holds []"),
    (lambda m: None, "it holds null"),
    (lambda m: '{"made_by": "mnist-jax", "files": [', "is not valid JSON"),
])
def test_a_damaged_marker_is_one_line_and_deletes_nothing(tmp_path, capsys, edit, why):
    box = tmp_path / "box"
    box.mkdir()
    (box / "victim.txt").write_text("precious")
    w = box / "w"
    assert main(fake_run, w, *S) == 0
    capsys.readouterr()
    marker = edit(marker_of(w))
    write_marker(w, marker.replace("VICTIM", str(box / "victim.txt")) if isinstance(marker, str)
                 else json.loads(json.dumps(marker).replace("/VICTIM", str(box / "victim.txt"))))
    before = snapshot(box)
    assert main(fake_run, w, *S, "--config.learning_rate=0.2") == 2  # would commit over the marker's entries
    line = one_line_error(capsys.readouterr().err)
    assert str(w / MARKER) in line and why in line, line
    assert snapshot(box) == before
    with pytest.raises(workdir_lib.WorkdirError, match="damaged|not valid JSON"):
        workdir_lib.discard(w, "mlp")  # reproduce --force
    with pytest.raises(workdir_lib.WorkdirError, match="damaged|not valid JSON"):
        workdir_lib.committed_state(w)
    assert snapshot(box) == before


# -- finding 3: the run a new config replaces stays resumable until the new run has a checkpoint -----


def checkpointed_then_interrupted(config, run_dir):
    """A run that writes checkpoints 1 and 2 and then sees Ctrl-C."""
    for epoch in (1, 2):
        (pathlib.Path(run_dir) / "checkpoints" / "train" / "runs_0-2" / str(epoch)).mkdir(parents=True, exist_ok=True)
    raise KeyboardInterrupt


def crashes_while_building(config, run_dir):
    raise TypeError("DenoisingAutoencoder.__call__() got an unexpected keyword argument 'train'")


def resume_epoch(config, run_dir):
    """A run that reports the epoch it would resume from."""
    return {"experiment": config.experiment, "learning_rate": config.learning_rate,
            "resumed_from": workdir_lib.checkpoint_epoch(pathlib.Path(run_dir))}


@pytest.mark.parametrize("failure", ["crash", "ctrl-c", "config error", "kill"])
def test_a_new_config_that_fails_before_its_first_checkpoint_keeps_the_unfinished_run(tmp_path, capsys, failure):
    w = tmp_path / "w"
    assert main(fake_run, w, *S) == 0
    assert main(checkpointed_then_interrupted, w, *S, "--config.learning_rate=0.3") == 130
    assert capsys.readouterr().err.strip() == "interrupted; run again to resume from epoch 2"
    committed_before = {k: v for k, v in snapshot(w).items() if not k.startswith(".mnist_jax")}
    other = [*S, "--config.learning_rate=0.05"]
    if failure == "crash":
        with pytest.raises(TypeError):
            main(crashes_while_building, w, *other)
    elif failure == "ctrl-c":
        def interrupted(config, run_dir):
            raise KeyboardInterrupt
        assert main(interrupted, w, *other) == 130
        assert capsys.readouterr().err.strip() == "interrupted; run again to resume from epoch 0"
    elif failure == "config error":
        def rejects(config, run_dir):
            raise experiment.ConfigError("rejected inside run")
        assert main(rejects, w, *other) == 2
    else:  # SIGKILL after `begin` set the unfinished run aside: the next process finds it so
        wd = workdir_lib.Workdir.open(w, "mlp")
        wd.begin(experiment.to_jsonable(experiment.parse_args(["--workdir", str(w), *other], "configs/mlp.py")[1].to_dict()))
        wd.close()
    assert {k: v for k, v in snapshot(w).items() if not k.startswith(".mnist_jax")} == committed_before
    assert main(resume_epoch, w, *S, "--config.learning_rate=0.3") == 0
    assert committed(w)[1]["resumed_from"] == 2


def test_the_replaced_run_is_dropped_once_the_new_one_has_a_checkpoint(tmp_path, capsys):
    w = tmp_path / "w"
    assert main(checkpointed_then_interrupted, w, *S, "--config.learning_rate=0.3") == 130
    assert main(checkpointed_then_interrupted, w, *S, "--config.learning_rate=0.05") == 130
    out = capsys.readouterr().out
    assert "unfinished run (epoch 2)" in out and "kept, resumable, until this one writes its first checkpoint" in out
    workdir_lib.Workdir.open(w, "mlp").close()
    assert sorted(p.name for p in (w / ".mnist_jax").iterdir()) == ["lock", "run", "workdir.json"]
    assert json.loads((w / ".mnist_jax" / "run" / "config.json").read_text())["learning_rate"] == 0.05
