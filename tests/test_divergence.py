"""A diverged run is left out of the statistics of every experiment that summarizes runs.

Each stage of the job runs as `test_experiments` shrinks it, on synthetic digits (`synthetic_mnist`), with run 0
of every training marked diverged (as the compiled program marks a run whose loss stops being finite): the same
programs as that test's, loaded from the persistent compilation cache once one of them has built them. Its
summaries must count one run fewer where run 0 belongs, and its runs table must say so.
"""

import importlib
import json

import numpy as np
import pytest
from test_experiments import shrunk_args

from mnist_jax import registry, training

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


def run(name: str, tmp_path) -> tuple[dict, dict]:
    """Stage `name` shrunk, with run 0 of each training diverged: (its metrics, its config)."""
    stage = registry.stage(name)
    with pytest.warns(RuntimeWarning, match="diverged") if stage.entry in DIVERGENCE_WARNS else _nothing():
        assert importlib.import_module(stage.entry).main(shrunk_args(stage, tmp_path)) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["runs"][0]["diverged"]
    return m, json.loads((tmp_path / "config.json").read_text())


DIVERGENCE_WARNS = {"experiments.mlp", "experiments.cnn", "experiments.sweep", "experiments.variance_sources"}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def level(v: float) -> str:
    return f"{v:g}"


def test_mlp(planted, tmp_path):
    m, c = run("mlp", tmp_path)
    assert c["seeds"] == 2 and m["test_accuracy"]["n"] == 1 and m["val_accuracy"]["n"] == 1


def test_l2_sweep(planted, tmp_path):
    m, c = run("l2_sweep", tmp_path)
    values = c["sweep"]["l2"]
    assert [r["test_error_pct"]["n"] for r in m["per_value"]] == [c["seeds"] - 1] + [c["seeds"]] * (len(values) - 1)
    assert m["per_value"][0]["diverged_runs"] == 1


def test_cnn(planted, tmp_path):
    m, c = run("cnn", tmp_path)
    assert m["test_accuracy"]["n"] == c["seeds"] - 1 and m["diverged_seeds"] == [0]


def test_cnn_search(planted, tmp_path):
    m, c = run("cnn_search", tmp_path)
    assert [r["diverged"] for r in m["runs"]] == [True, False] * (len(m["runs"]) // 2)  # run 0 of each program
    for rnd in m["rounds"].values():  # every candidate's program lost its run 0: one run of two left
        assert [cand["val_accuracy"]["n"] for cand in rnd["candidates"]] == [1] * len(rnd["candidates"]), rnd["title"]
        assert all(cand["diverged_runs"] == 1 for cand in rnd["candidates"])


def test_denoise(planted, tmp_path):
    m, c = run("denoise", tmp_path)
    first, *others = c["noise_levels"]
    assert m["per_level"]["test_bce"][level(first)]["n"] == c["seeds"] - 1
    assert all(m["per_level"]["test_bce"][level(v)]["n"] == c["seeds"] for v in others)


def test_noise_accuracy(planted, tmp_path):
    m, c = run("noise_accuracy", tmp_path)
    acc = {k: v["per_level"] for k, v in m["test_accuracy"].items()}
    first, *others = (level(v) for v in c["noise_levels"])
    for curve in ("noisy", "denoised"):  # run 0 trains at the first level
        assert acc[curve][first]["n"] == c["seeds"] - 1 and all(acc[curve][v]["n"] == c["seeds"] for v in others)
    assert all(acc["clean"][v]["n"] == c["seeds"] - 1 for v in (first, *others))  # the clean run 0 at every level


def test_vae(planted, tmp_path):
    m, c = run("vae", tmp_path)
    assert m["test_neg_elbo"]["n"] == c["seeds"] - 1 and m["diverged_seeds"] == [0]


def test_variance_sources(planted, tmp_path):
    m, _ = run("variance_sources", tmp_path)
    first = m["runs"][0]["source"]
    assert m["per_source"][first]["std_pct"]["n"] == m["runs_per_source"] - 1
