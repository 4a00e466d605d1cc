"""The mlp experiment end to end on the real MNIST, and `experiments.evaluate` on its workdir."""

import json

import numpy as np
import pytest

from experiments import evaluate, mlp
from mnist_jax import data as data_lib

# its module fixture is built once: every test of this file runs on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("test_mlp_experiment")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mlp_workdir(tmp_path_factory):
    """The study's default setup (784-64-64-10, SGD 0.1, batch 128, 10 epochs), 3 seeds."""
    workdir = tmp_path_factory.mktemp("mlp")
    assert mlp.main(["--workdir", str(workdir), "--config.seeds=3"]) == 0
    return workdir


@pytest.mark.integration
def test_default_mlp_reaches_96_percent_and_writes_its_outputs(mlp_workdir):
    metrics = json.loads((mlp_workdir / "metrics.json").read_text())
    config = json.loads((mlp_workdir / "config.json").read_text())
    assert config["epochs"] == 10 and config["learning_rate"] == 0.1
    assert metrics["param_count"] == 55_050
    acc = metrics["test_accuracy"]
    assert len(acc["per_seed"]) == 3
    assert min(acc["per_seed"]) >= 0.96, acc
    assert acc["ci_low"] <= acc["mean"] <= acc["ci_high"]
    hist = metrics["history"]
    assert np.array(hist["val_accuracy"]).shape == (3, 10)
    assert np.all(np.diff(np.array(hist["loss"]).mean(0)) < 0.05)  # training loss keeps falling
    assert metrics["test_errors"] == [round((1 - a) * 10_000) for a in acc["per_seed"]]
    timing = metrics["timing"]
    for key in ("data_seconds", "compile_seconds", "train_seconds", "steady_epoch_seconds"):
        assert timing[key] > 0
    assert (mlp_workdir / "accuracy.png").read_bytes()[:8] == PNG


@pytest.mark.integration
def test_rerun_of_a_complete_workdir_resumes_with_identical_metrics(mlp_workdir, capsys):
    before = json.loads((mlp_workdir / "metrics.json").read_text())
    assert mlp.main(["--workdir", str(mlp_workdir), "--config.seeds=3"]) == 0
    after = json.loads((mlp_workdir / "metrics.json").read_text())
    assert after["resumed_from_epoch"] == 10
    assert after["history"] == before["history"]
    assert "resumed from the checkpoint of epoch 10" in capsys.readouterr().out


@pytest.mark.integration
def test_evaluate_predicts_labels_in_every_accepted_format(mlp_workdir, tmp_path):
    raw = data_lib.load_mnist()
    x, y = raw["test_x"][:500], raw["test_y"][:500]
    formats = {"u8_nhw": x[..., 0], "u8_nhwc": x, "flat": x.reshape(500, 784),
               "float": x.astype(np.float32) / 255}
    results = []
    for name, arr in formats.items():
        np.save(tmp_path / f"{name}.npy", arr)
        out = tmp_path / f"{name}_labels.npy"
        assert evaluate.main(["--workdir", str(mlp_workdir), "--images", str(tmp_path / f"{name}.npy"),
                              "--out", str(out), "--seed", "1"]) == 0
        labels = np.load(out)
        assert labels.dtype == np.int64 and labels.shape == (500,)
        results.append(labels)
    assert all(np.array_equal(results[0], r) for r in results)
    assert (results[0] == y).mean() >= 0.94


@pytest.mark.integration
@pytest.mark.parametrize("make, message", [
    (lambda: np.zeros((3, 27, 28), np.uint8), "expected shape"),
    (lambda: np.zeros((0, 28, 28), np.uint8), "no images"),
    (lambda: np.full((2, 28, 28), np.nan, np.float32), "NaN"),
    (lambda: np.full((2, 28, 28), 2.0, np.float32), "must be in [0, 1]"),
    (lambda: np.full((2, 28, 28), 300, np.int64), "0..255"),
    (lambda: np.array([{"a": 1}], dtype=object), "not a plain numeric .npy"),
])
def test_evaluate_rejects_bad_images_with_one_message(mlp_workdir, tmp_path, capsys, make, message):
    path = tmp_path / "bad.npy"
    np.save(path, make(), allow_pickle=True)
    assert evaluate.main(["--workdir", str(mlp_workdir), "--images", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.integration
def test_evaluate_rejects_bad_workdirs_and_seeds(mlp_workdir, tmp_path, capsys):
    images = tmp_path / "ok.npy"
    np.save(images, np.zeros((2, 28, 28), np.uint8))
    assert evaluate.main(["--workdir", str(tmp_path / "none"), "--images", str(images)]) == 2
    assert "not an experiment workdir" in capsys.readouterr().err
    assert evaluate.main(["--workdir", str(mlp_workdir), "--images", str(images), "--seed", "7"]) == 2
    assert "runs 0..2" in capsys.readouterr().err
    assert evaluate.main(["--workdir", str(mlp_workdir), "--images", str(tmp_path / "missing.npy")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.integration
def test_evaluate_reports_a_corrupt_checkpoint(mlp_workdir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(mlp_workdir, broken)
    for f in (broken / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name and f.name != "model.json":
            f.write_bytes(b"garbage")
    images = tmp_path / "ok.npy"
    np.save(images, np.zeros((2, 28, 28), np.uint8))
    assert evaluate.main(["--workdir", str(broken), "--images", str(images)]) == 1
    err = capsys.readouterr().err
    assert "cannot be used" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_changed_config_trains_from_the_start_instead_of_resuming_stale_checkpoints(tmp_path, capsys, synthetic_mnist):
    args = ["--config.seeds=1", "--config.schedule=cosine", "--config.n_val=1000"]
    assert mlp.main(["--workdir", str(tmp_path / "a"), *args, "--config.epochs=2"]) == 0
    assert mlp.main(["--workdir", str(tmp_path / "a"), *args, "--config.epochs=3"]) == 0
    assert "discarding them and training from the start" in capsys.readouterr().out
    assert mlp.main(["--workdir", str(tmp_path / "b"), *args, "--config.epochs=3"]) == 0
    changed, fresh = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert changed["resumed_from_epoch"] is None
    assert changed["history"] == fresh["history"]
