"""Sweeps: sharding over devices, padding, statistics, and the quick L2 sweep end to end."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import cnn_search
from experiments import sweep as sweep_experiment
from mnist_jax import report, stats, sweep

SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import synthetic_splits
    from mnist_jax import models, regularizers, sweep, tasks, train
    task = tasks.classifier_task(models.MLP((16,))).with_hooks(regularizers.L2)
    spec = train.TrainSpec(epochs=2, batch_size=64)
    hp, seeds = sweep.grid([0, 1, 2], l2=[0.0, 1e-3], learning_rate=[0.1])   # 6 runs
    hp = {k: v[:5] for k, v in hp.items()}; seeds = seeds[:5]                 # 5 runs: padding needed on 4 devices
    for run_chunk in sys.argv[1:]:
        r = sweep.train_grid(task, spec, hp, seeds, synthetic_splits(), run_chunk=int(run_chunk) or None)
        print(json.dumps({"devices": jax.device_count(), "loss": r.history["loss"].tolist(),
                          "errors": r.history["test_errors"].tolist(), "n": len(r.history["loss"])}))
""")


def run_sharded(devices: int, *run_chunks: int) -> list[dict]:
    """The grid trained on `devices` host devices, once per run chunk (0: all runs at once), in one process."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED, *map(str, run_chunks)], env=env, check=True,
                         capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(run_chunks):]]


@pytest.mark.slow
def test_sharded_over_four_host_devices_matches_one_device_and_drops_padding():
    """4 devices against 1, up to float32 reassociation; test_multiprocess finds 2 processes of 2
    devices equal to one process of 4, so they match one device the same way."""
    (one,) = run_sharded(1, 0)
    four, chunked = run_sharded(4, 0, 4)  # all 5 runs at once; 4 + 1 runs, the second chunk padded to 4
    assert (one["devices"], four["devices"]) == (1, 4)
    for result in (four, chunked):
        assert result["n"] == 5  # padding never reaches the results
        np.testing.assert_allclose(result["loss"], one["loss"], rtol=1e-4)
        assert np.abs(np.array(result["errors"]) - np.array(one["errors"])).max() <= 2


def test_pad_runs_repeats_the_last_run():
    (hp, seeds), n = sweep.pad_runs(({"l2": np.array([1.0, 2.0, 3.0])}, np.array([7, 8, 9])), 4)
    assert n == 3 and seeds.tolist() == [7, 8, 9, 9] and hp["l2"].tolist() == [1, 2, 3, 3]


def test_summary_matches_student_t_by_hand():
    s = stats.summary([1.0, 2.0, 3.0, 4.0])
    assert s["n"] == 4 and s["mean"] == 2.5
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    half = 3.182446305284263 * s["std"] / 2.0  # t_{0.975, 3} * s / sqrt(4)
    assert s["ci_low"] == pytest.approx(2.5 - half) and s["ci_high"] == pytest.approx(2.5 + half)
    assert stats.summary([np.nan, 5.0])["n"] == 1  # non-finite (diverged) values are dropped
    assert stats.summary([])["mean"] is None


def test_welch_separates_real_differences_from_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(1.6, 0.05, 10)
    assert stats.welch(a, a + 0.5)["p_value"] < 1e-6
    assert stats.welch(a, rng.normal(1.6, 0.05, 10))["p_value"] > 0.01
    # by hand: means 2 and 4, variances 1 and 1, n = 3 each -> t = -2 / sqrt(2/3)
    w = stats.welch([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert w["t"] == pytest.approx(-2 / np.sqrt(2 / 3)) and w["dof"] == pytest.approx(4.0)


@pytest.mark.integration
def test_quick_l2_sweep_end_to_end(tmp_path):
    assert sweep_experiment.main(["--workdir", str(tmp_path), "--config", "configs/l2_sweep_quick.py"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["l2_factors"] == [0.0, 1e-4, 1e-3] and len(m["runs"]) == 9
    assert [r["l2"] for r in m["runs"]] == pytest.approx([0.0] * 3 + [1e-4] * 3 + [1e-3] * 3)
    for row, factor in zip(m["per_value"], m["l2_factors"], strict=True):
        errs = [100 * (1 - r["test_accuracy"]) for r in m["runs"] if r["l2"] == pytest.approx(factor)]
        assert row["test_error_pct"]["mean"] == pytest.approx(np.mean(errs), rel=1e-6)
        assert row["test_error_pct"]["n"] == 3
    assert all(r["test_accuracy"] > 0.9 for r in m["runs"])
    assert m["chosen_on_validation"]["l2"] in m["l2_factors"]
    assert m["reference"]["test_error_pct"] == pytest.approx(1.6)
    for r in m["runs"]:  # the study's protocol (best over epochs) can only be >= the final accuracy
        assert r["study_protocol_best_test_accuracy"] >= r["test_accuracy"]
    for name in ("l2_sweep.png", "l2_sweep_std.png", "l2_sweep_curves.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    # P(A > B) beside the Welch p-values: a run at the value beats a run at the first one
    errs = [[100 * (1 - r["test_accuracy"]) for r in m["runs"] if r["l2"] == f] for f in m["l2_factors"]]
    for row, e in zip(m["per_value"], errs, strict=True):
        assert row["vs_first_value_p_better"]["p"] == pytest.approx(stats.prob_greater(errs[0], e)["p"])
    assert [(p["a"], p["b"]) for p in m["pairwise_p_better"]] == [(0.0, 1e-4), (0.0, 1e-3), (1e-4, 1e-3)]
    d = m["detectable"]
    assert d["seeds_per_value"] == 3 and d["difference_pct"] == pytest.approx(
        stats.detectable_difference(d["pooled_std_pct"], 3))
    text = report.section("l2_sweep", m)
    assert "P(a run beats a run at the first value)" in text and "is detected with power 0.8" in text


def test_cnn_search_judge_gives_p_of_the_chosen_beating_each_other():
    rows = [{"label": "a", "value": 1, "val_accuracy": {"mean": 0.98, "per_seed": [0.979, 0.980, 0.981]}},
            {"label": "b", "value": 2, "val_accuracy": {"mean": 0.97, "per_seed": [0.969, 0.970, 0.971]}}]
    verdict = cnn_search.judge(rows, 0.05)
    (test,) = verdict["welch_vs_chosen"]
    assert verdict["chosen"] == "a" and test["p_chosen_beats_other"]["p"] == 1.0
    assert 0.5 < test["p_chosen_beats_other"]["ci_low"] < 1.0 and test["p_value"] < 0.05
    d = verdict["detectable"]
    assert d["pooled_std"] == pytest.approx(0.001) and d["seeds_per_candidate"] == 3
    assert d["difference"] == pytest.approx(stats.detectable_difference(0.001, 3))


def checkpointed_epochs(tmp_path, tiny, **policy) -> list[int]:
    from mnist_jax import models, tasks, train

    task = tasks.classifier_task(models.MLP((16,)))
    hp, seeds = sweep.grid([0], learning_rate=[0.1])
    sweep.train_grid(task, train.TrainSpec(epochs=3, batch_size=64), hp, seeds, tiny,
                     checkpoint_dir=str(tmp_path), **policy)
    run_dir = tmp_path / "runs_0-1"
    return sorted(int(p.name) for p in run_dir.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_checkpoint_seconds_skips_saves_made_too_soon_but_always_saves_the_last_epoch(tmp_path, tiny):
    # max_to_keep=2 keeps the two newest checkpoints: every epoch saved leaves epochs 2 and 3
    assert checkpointed_epochs(tmp_path / "every", tiny) == [2, 3]
    assert checkpointed_epochs(tmp_path / "every_0", tiny, checkpoint_seconds=0.0) == [2, 3]
    # an hour between saves: epochs 1 and 2 come too soon, the last epoch is saved anyway
    assert checkpointed_epochs(tmp_path / "hourly", tiny, checkpoint_seconds=3600.0) == [3]
