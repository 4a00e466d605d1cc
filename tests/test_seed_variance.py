"""Seed variance a researcher can act on (`mnist_jax.stats`): the ensemble of the runs of a grid,
its accuracy against its size, how stable a sweep's choice is over seeds, and which examples flip.
Constructed arrays only: every expected number is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_jax import stats


def confident(predicted, conf: float, classes: int = 10) -> np.ndarray:
    """Class probabilities (N, C): `conf` on each predicted class, the rest spread evenly."""
    p = np.full((len(predicted), classes), (1 - conf) / (classes - 1))
    p[np.arange(len(predicted)), predicted] = conf
    return p


def random_logits(runs=5, n=300, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(runs, n, classes)) * 2, rng.integers(0, classes, n)


def test_an_ensemble_of_identical_runs_equals_the_run():
    logits, y = random_logits(runs=1)
    same = np.repeat(logits, 4, axis=0)
    e = stats.ensemble(same, y)
    one = stats.scores(stats.softmax(logits[0]), y)
    assert e["runs"] == 4 and e["ensemble"]["accuracy"] == one["accuracy"]
    for k in ("nll", "ece"):
        assert e["ensemble"][k] == pytest.approx(one[k], abs=1e-12)
        assert e["members"][k]["mean"] == pytest.approx(one[k], abs=1e-12) and e["members"][k]["std"] < 1e-12
    assert e["gain"]["accuracy"] == 0


def test_the_ensemble_averages_probabilities_not_votes():
    # two runs, one image of label 0: run A is sure of 1 (0.6 vs 0.4), run B sure of 0 (0.9 vs 0.1)
    probs = np.array([[[0.4, 0.6]], [[0.9, 0.1]]])
    e = stats.ensemble(np.log(probs), [0])
    assert e["ensemble"]["accuracy"] == 1.0 and e["members"]["accuracy"]["mean"] == 0.5
    assert e["ensemble"]["nll"] == pytest.approx(-np.log(0.65))
    assert e["members"]["nll"]["mean"] == pytest.approx(-(np.log(0.4) + np.log(0.9)) / 2)


def test_ensemble_accuracy_at_k_equal_s_is_the_full_ensembles():
    logits, y = random_logits(runs=6)
    curve = stats.ensemble_by_size(logits, y, subsets=5, seed=3)
    assert [c["k"] for c in curve] == list(range(1, 7))
    assert curve[-1]["mean"] == stats.ensemble(logits, y)["ensemble"]["accuracy"]
    assert curve[-1]["subsets"] == 1 and curve[-1]["ci_low"] == curve[-1]["ci_high"] == curve[-1]["mean"]
    # with room for every subset: k = 1 is each member alone, k = 3 all C(6, 3) = 20 subsets
    members = stats.ensemble(logits, y)["members"]["accuracy"]
    full = stats.ensemble_by_size(logits, y, subsets=100)
    assert full[0]["exhaustive"] and full[0]["subsets"] == 6 and full[0]["mean"] == pytest.approx(members["mean"])
    assert full[2]["subsets"] == 20 and not curve[2]["exhaustive"] and curve[2]["subsets"] == 5
    assert curve == stats.ensemble_by_size(logits, y, subsets=5, seed=3)  # seeded: the same subsets


def test_ece_is_zero_when_calibrated_and_the_gap_when_overconfident():
    # calibrated: 10 images at confidence 0.6 of which 6 right, 10 at 0.9 of which 9 right
    pred = np.zeros(20, int)
    y = np.array([0] * 6 + [1] * 4 + [0] * 9 + [1])
    p = np.concatenate([confident(pred[:10], 0.6), confident(pred[10:], 0.9)])
    assert stats.calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    # overconfident: 4 images at 0.95 of which 2 right (gap 0.45), 6 at 0.65 all right (gap 0.35)
    y = np.array([0, 0, 1, 1] + [0] * 6)
    p = np.concatenate([confident(np.zeros(4, int), 0.95), confident(np.zeros(6, int), 0.65)])
    assert stats.calibration_error(p, y) == pytest.approx(0.4 * 0.45 + 0.6 * 0.35)
    assert stats.scores(p, y)["accuracy"] == 0.8


def test_selection_probabilities_sum_to_one_and_a_dominating_value_is_always_chosen():
    rng = np.random.default_rng(0)
    close = [0.97 + 0.001 * rng.normal(size=10) for _ in range(3)]
    s = stats.selection_stability(close, resamples=500, seed=1)
    assert sum(s["p_chosen"]) == pytest.approx(1.0) and s["resamples"] == 500
    assert all(0 < p < 1 for p in s["p_chosen"])
    dominated = [np.array([0.90, 0.91, 0.92]), np.array([0.95, 0.96, 0.97]), np.array([0.93, np.nan, 0.94])]
    d = stats.selection_stability(dominated, resamples=300)
    assert d["p_chosen"] == [0.0, 1.0, 0.0] and d["chosen"] == 1 and d["most_chosen"] == 1
    assert d["seeds_for_target"] == 2 and d["chosen_value_at_target"] == 1


def test_selection_ties_go_to_the_first_value_and_a_coin_flip_never_becomes_stable():
    tie = stats.selection_stability([[0.5, 0.5], [0.5, 0.5]], resamples=50)
    assert tie["p_chosen"] == [1.0, 0.0] and tie["chosen"] == 0
    rng = np.random.default_rng(2)
    same = [rng.normal(size=3), rng.normal(size=3)]
    coin = stats.selection_stability([same[0], same[0][::-1].copy()], resamples=200, max_factor=2)
    assert coin["seeds_for_target"] is None and coin["largest_tried"] == 6 and len(coin["curve"]) == 5


def test_the_flip_fraction_is_zero_or_one_where_runs_agree():
    y = np.array([0, 1, 2, 3])
    preds = np.array([[0, 5, 2, 3], [0, 5, 2, 1], [0, 5, 2, 3], [0, 5, 7, 3]])
    f = stats.flip_fraction(preds, y)
    assert f.tolist() == [0.0, 1.0, 0.25, 0.25]
    out = stats.flips(preds, y, top=1)
    assert (out["never_wrong"], out["always_wrong"], out["unstable"]) == (1, 1, 2)
    assert out["wrong_in_runs"] == [1, 2, 0, 0, 1]
    assert out["most_unstable"] == [{"index": 2, "label": 2, "wrong_fraction": 0.25,
                                     "votes": [0, 0, 3, 0, 0, 0, 0, 1, 0, 0]}]
    # Jiang et al.: the 6 pairs of runs differ on 1, 0, 1, 1, 2, 1 of the 4 images
    assert out["disagreement"]["mean"] == pytest.approx(6 / 6 / 4)
    assert out["test_error"]["mean"] == pytest.approx(np.mean([1, 2, 1, 2]) / 4)
    assert out["disagreement_over_error"] == pytest.approx(0.25 / 0.375)


def runs_of(values, val, diverged=()):
    """A runs table of a sweep of l2 over `values` (seed fastest), validation accuracies `val`."""
    seeds = len(val) // len(values)
    return [{"l2": values[i // seeds], "seed": i % seeds, "val_accuracy": v, "diverged": i in diverged}
            for i, v in enumerate(val)]


def test_a_sweeps_selection_and_ensemble_are_of_the_point_validation_chooses():
    from mnist_jax import report, results

    runs = runs_of([0.0, 1e-4, 1e-3], [0.90, 0.91, 0.95, 0.96, 0.99, 0.10], diverged={5})
    s = results.selection(runs, {"l2": [0.0, 1e-4, 1e-3]}, resamples=400)
    assert [p["p_chosen"] for p in s["points"]] == [0.0, 0.0, 1.0]  # the diverged seed is left out: 0.99 alone
    assert s["chosen"] == {"l2": 1e-3} and s["resamples"] == 400 and s["seeds_for_target"] == 2
    text = report.selection_text(s)
    assert "l2 = 0.001 chosen in 100 % of 400 resamples" in text and "never chosen: l2 = 0, l2 = 0.0001" in text
    assert results.ensemble_runs(runs, {"l2": [0.0, 1e-4, 1e-3]}) == ({"l2": 1e-3}, [4])
    assert results.ensemble_runs(runs, None) == ({}, [0, 1, 2, 3, 4])


class FixedGrid:
    """A stand-in for grid.TrainedGrid with fixed logits (runs, N, C)."""

    def __init__(self, logits):
        self.all = np.asarray(logits)

    def select(self, runs):
        return FixedGrid(self.all[list(runs)])

    def logits(self, x, runs_at_once=4):
        return self.all


def test_seed_outcomes_ensemble_the_chosen_points_seeds_and_need_two_of_them():
    from mnist_jax import results

    logits, y = random_logits(runs=6, n=50)
    runs = runs_of([0.0, 1e-4], [0.9, 0.9, 0.8, 0.95, 0.95, 0.95])
    out = results.seed_outcomes(FixedGrid(logits), None, y, runs, {"l2": [0.0, 1e-4]})
    assert set(out) == {"selection", "ensemble", "flips"}
    assert out["ensemble"]["of"] == {"l2": 1e-4} and out["ensemble"]["run_indices"] == [3, 4, 5]
    assert out["ensemble"]["ensemble"] == stats.ensemble(logits[3:], y)["ensemble"]
    assert out["flips"]["runs"] == 3 and out["flips"]["wrong_in_runs"] == stats.flips(logits[3:].argmax(-1), y)["wrong_in_runs"]
    one = runs_of([0.0], [0.9, 0.8], diverged={1})
    assert results.seed_outcomes(FixedGrid(logits[:2]), None, y, one) == {}


def test_a_large_grid_evaluates_at_most_32_ensemble_sizes_from_1_to_s():
    assert stats.ensemble_sizes(10) == list(range(1, 11))
    sizes = stats.ensemble_sizes(200)
    assert sizes[0] == 1 and sizes[-1] == 200 and len(sizes) <= 34 and sizes == sorted(set(sizes))
