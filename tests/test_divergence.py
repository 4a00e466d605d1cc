"""A diverged run is left out of the statistics of every experiment that summarizes runs.

Each experiment trains a tiny version of itself on synthetic digits (`synthetic_mnist`) with run 0 of every training
marked diverged (as the compiled program marks a run whose loss stops being finite); its
summaries must count one run fewer where run 0 belongs, and its runs table must say so.
"""

import json

import numpy as np
import pytest

from mnist_jax import training

pytestmark = pytest.mark.slow


@pytest.fixture
def planted(monkeypatch, synthetic_mnist):
    """Run 0 of every `training.train` call diverges in its first epoch."""
    real = training.train

    def train(*args, **kwargs):
        result = real(*args, **kwargs)
        flags = np.asarray(result.history["diverged"], bool).copy()
        flags[0, :] = True
        result.history["diverged"] = flags
        return result

    monkeypatch.setattr(training, "train", train)


def run(module: str, tmp_path, *overrides: str, config: str | None = None) -> dict:
    import importlib

    argv = ["--workdir", str(tmp_path), *(["--config", config] if config else []), *overrides]
    with pytest.warns(RuntimeWarning, match="diverged") if module in DIVERGENCE_WARNS else _nothing():
        assert importlib.import_module(module).main(argv) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["runs"][0]["diverged"]
    return m


DIVERGENCE_WARNS = {"experiments.mlp", "experiments.cnn", "experiments.sweep", "experiments.variance_sources"}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_mlp(planted, tmp_path):
    m = run("experiments.mlp", tmp_path, "--config.seeds=2", "--config.epochs=1", "--config.model.hidden=[16]")
    assert m["test_accuracy"]["n"] == 1 and m["val_accuracy"]["n"] == 1


def test_l2_sweep(planted, tmp_path):
    m = run("experiments.sweep", tmp_path, "--config.seeds=2", "--config.epochs=1", "--config.sweep.l2=[0, 1e-4]",
            "--config.model.hidden=[16]")
    assert [r["test_error_pct"]["n"] for r in m["per_value"]] == [1, 2]
    assert m["per_value"][0]["diverged_runs"] == 1


def test_cnn(planted, tmp_path):
    m = run("experiments.cnn", tmp_path, "--config.seeds=2", "--config.epochs=1", "--config.model.filters=[4, 4]",
            "--config.model.dense=8")
    assert m["test_accuracy"]["n"] == 1 and m["diverged_seeds"] == [0]


def test_cnn_search(planted, tmp_path):
    m = run("experiments.cnn_search", tmp_path, "--config.seeds=2", "--config.epochs=1",
            "--config.filters_candidates=[4]", "--config.dense_candidates=[0]", "--config.dropout_rates=[0.5, 0.8]")
    assert [r["diverged"] for r in m["runs"]] == [True, False] * (len(m["runs"]) // 2)  # run 0 of each program
    for rnd in m["rounds"].values():  # every candidate's program lost its run 0: one run of two left
        assert [c["val_accuracy"]["n"] for c in rnd["candidates"]] == [1] * len(rnd["candidates"]), rnd["title"]
        assert all(c["diverged_runs"] == 1 for c in rnd["candidates"])


def test_denoise(planted, tmp_path):
    m = run("experiments.denoise", tmp_path, "--config.seeds=2", "--config.epochs=1", "--config.noise_levels=[0.2, 0.4]")
    assert m["per_level"]["test_bce"]["0.2"]["n"] == 1 and m["per_level"]["test_bce"]["0.4"]["n"] == 2


def test_noise_accuracy(planted, tmp_path):
    m = run("experiments.noise_accuracy", tmp_path, "--config.seeds=2", "--config.epochs=1",
            "--config.noise_levels=[0.0, 0.5]", "--config.denoiser_epochs=0", "--config.classifier.mlp.hidden=[16]")
    acc = {k: v["per_level"] for k, v in m["test_accuracy"].items()}
    assert acc["noisy"]["0"]["n"] == 1 and acc["noisy"]["0.5"]["n"] == 2
    assert acc["denoised"]["0"]["n"] == 1 and acc["denoised"]["0.5"]["n"] == 2
    assert acc["clean"]["0"]["n"] == 1 and acc["clean"]["0.5"]["n"] == 1  # the clean run 0 is tested at every level


def test_vae(planted, tmp_path):
    m = run("experiments.vae", tmp_path, "--config.epochs=1", "--config.map_epochs=0", "--config.iwae_k=10",
            "--config.iwae_images=20", "--config.n_samples=100", config="configs/vae.py:quick")
    assert m["test_neg_elbo"]["n"] == 1 and m["diverged_seeds"] == [0]


def test_variance_sources(planted, tmp_path):
    m = run("experiments.variance_sources", tmp_path, "--config.seeds=3", "--config.epochs=1",
            "--config.model.hidden=[16]", "--config.test_resamples=100")
    first = m["runs"][0]["source"]
    assert m["per_source"][first]["std_pct"]["n"] == m["runs_per_source"] - 1
