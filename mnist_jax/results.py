"""Results of many runs: one record per run, and statistics that leave diverged runs out.

Every experiment that trains runs builds its `runs` table here (one record per run: every
traced hyperparameter, its seed, its final metrics, whether it diverged), so a diverged run is
reported once and excluded from every summary the same way; `trained.run_count` counts runs
from this table.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mnist_jax import stats


def hp_value(x) -> float:
    """A traced hyperparameter's value as the config wrote it: the shortest decimal that rounds to
    the same float32 (runs train in float32), so `run["l2"] == 1e-4` finds the runs of l2 = 1e-4."""
    return float(str(np.float32(x)))


def diverged(history: dict[str, np.ndarray]) -> np.ndarray:
    """(R,) bool: whether each run diverged (its loss or params stopped being finite)."""
    return np.asarray(history["diverged"], bool)[:, -1]


def divergence(history: dict[str, np.ndarray], seeds: np.ndarray, hp: dict[str, np.ndarray]) -> list[dict]:
    """One record per diverged run ({run, seed, epoch, hyperparameters}), each also warned about.

    A run diverges when its training loss or params stop being finite; the compiled program marks
    it (`history["diverged"]`), and statistics over runs leave it out.
    """
    records = []
    for r in np.flatnonzero(np.asarray(history["diverged"])[:, -1]):
        epoch = int(np.argmax(np.asarray(history["diverged"])[r])) + 1
        values = {k: hp_value(v[r]) for k, v in hp.items() if "/" not in k}
        records.append({"run": int(r), "seed": int(seeds[r]), "epoch": epoch, "hparams": values})
        described = ", ".join(f"{k}={v:g}" for k, v in values.items())
        warnings.warn(f"run {r} (seed {int(seeds[r])}, {described}) diverged in epoch {epoch}: its loss was not "
                      "finite; it is excluded from the statistics", RuntimeWarning, stacklevel=2)
    return records


def final_of_finite(history: dict[str, np.ndarray], key: str) -> np.ndarray:
    """The last epoch's `key` per run, NaN for runs that diverged (so stats.summary skips them)."""
    return np.where(np.asarray(history["diverged"])[:, -1], np.nan, np.asarray(history[key])[:, -1])


def runs_table(hp: dict[str, np.ndarray], seeds: Any, history: dict[str, np.ndarray],
               keys: Sequence[str] = (), **extra: Sequence) -> list[dict]:
    """One record per run: its traced hyperparameters (frozen params left out), its seed (or
    {stream: seed}), the last epoch's value of each history `keys` entry (None where the run
    diverged), any `extra` per-run columns, and `diverged`."""
    gone = diverged(history)
    names = [k for k in hp if "/" not in k]
    out = []
    for r in range(len(gone)):
        seed = ({k: int(np.asarray(v)[r]) for k, v in seeds.items()} if isinstance(seeds, dict)
                else int(np.asarray(seeds)[r]))
        record = {k: hp_value(np.asarray(hp[k])[r]) for k in names}
        record["seed"] = seed
        for k in keys:
            value = float(np.asarray(history[k])[r, -1])
            record[k] = None if gone[r] or not np.isfinite(value) else value
        for k, column in extra.items():
            record[k] = column[r]
        record["diverged"] = bool(gone[r])
        out.append(record)
    return out


def points(runs: list[dict], sweep: dict[str, list[float]]) -> list[tuple[dict, list[int]]]:
    """Every combination of `sweep`'s values (the points of a swept grid, in the declaration's
    order) as ({name: value}, indices of its runs in `runs`)."""
    names = list(sweep)
    out = []
    for point in itertools.product(*(sweep[n] for n in names)):
        values = {n: hp_value(v) for n, v in zip(names, point, strict=True)}
        out.append((values, [i for i, r in enumerate(runs) if all(r[n] == v for n, v in values.items())]))
    return out


def per_value(runs: list[dict], sweep: dict[str, list[float]],
              keys: Sequence[str] = ("test_accuracy", "val_accuracy")) -> list[dict]:
    """One record per point of a swept grid (every combination of `sweep`'s values): its values,
    how many runs it has, and the summary of each of `keys` over them (diverged runs left out)."""
    out = []
    for values, members in points(runs, sweep):
        members = [runs[i] for i in members]
        record = {**values, "runs": len(members)}
        for k in keys:
            record[k] = stats.summary(np.array([np.nan if r[k] is None else r[k] for r in members], float))
        out.append(record)
    return out


def classifier_summary(hp: dict[str, np.ndarray], seeds: Any, history: dict[str, np.ndarray],
                       sweep: dict[str, list[float]] | None = None) -> dict:
    """What a classifier experiment reports of its runs: seeds, the runs table, the history, the
    final test and validation accuracy per run with their summaries (diverged runs left out),
    test errors, and the diverged runs (each also warned about); with a `sweep` declaration, the
    summaries of each of its points too (`per_value`)."""
    test_acc, val_acc = final_of_finite(history, "test_accuracy"), final_of_finite(history, "val_accuracy")
    runs = runs_table(hp, seeds, history, ("test_accuracy", "val_accuracy", "test_errors"))
    swept = {"sweep": sweep, "per_value": per_value(runs, sweep)} if sweep else {}
    return {
        "seeds": seeds,
        "runs": runs,
        **swept,
        "history": history,
        "test_accuracy": {"per_seed": test_acc, **stats.summary(test_acc)},
        "test_errors": np.asarray(history["test_errors"])[:, -1],
        "val_accuracy": {"per_seed": val_acc, **stats.summary(val_acc)},
        "diverged": divergence(history, seeds, hp),
    }


# --- What the seeds of a grid say beyond their mean: ensembles, flips, how stable a choice is ---

SELECTION_RESAMPLES = 2000  # bootstrap resamples of the seeds of each swept value
ENSEMBLE_SUBSETS = 200  # subsets of the runs per ensemble size, when there are more
UNSTABLE_SHOWN = 16  # test images listed (and drawn) as the most unstable
STATS_SEED = 0  # the numpy Generator seed of the resamples and subsets: the same grid gives the same numbers


def _score(run: dict, key: str) -> float:
    value = run.get(key)
    return np.nan if run.get("diverged") or value is None else float(value)


def selection(runs: list[dict], sweep: dict[str, list[float]], key: str = "val_accuracy",
              resamples: int = SELECTION_RESAMPLES) -> dict:
    """How stable the choice of a swept grid's point on validation is (`stats.selection_stability`):
    the point with the highest mean `key` over its seeds (the first on ties), and per point the
    share of bootstrap resamples of the seeds in which it is chosen, with the seeds per point at
    which one point would be chosen in 90 % of them. Points are dicts {name: value}."""
    grid = points(runs, sweep)
    groups = [[_score(runs[i], key) for i in members] for _, members in grid]
    s = stats.selection_stability(groups, resamples, STATS_SEED)
    point = (lambda i: None if i is None else grid[i][0])
    return {"on": key, "rule": "highest mean over the point's seeds, the first point on ties; diverged runs left out",
            "resamples": s["resamples"], "seed": s["seed"],
            "points": [{**values, "runs": len(members), "p_chosen": p} for (values, members), p in zip(grid, s["p_chosen"],
                                                                                                       strict=True)],
            "chosen": point(s["chosen"]), "most_chosen": point(s["most_chosen"]), "target": s["target"],
            "seeds_for_target": s["seeds_for_target"], "chosen_at_target": point(s["chosen_value_at_target"]),
            "largest_tried": s["largest_tried"],
            "curve": [{"seeds": c["seeds"], "point": point(c["value"]), "p": c["p"]} for c in s["curve"]]}


def ensemble_runs(runs: list[dict], sweep: dict[str, list[float]] | None, key: str = "val_accuracy") -> tuple[dict, list[int]]:
    """({name: value} of the point, indices of its runs that did not diverge): the runs an ensemble
    is made of. Without a sweep every run; with one, the seeds of the point validation chooses (the
    highest mean `key`, the first on ties), so the ensemble is of seeds, never of settings."""
    if not sweep:
        return {}, [i for i, r in enumerate(runs) if not r.get("diverged")]
    grid = points(runs, sweep)
    scores = [np.array([_score(runs[i], key) for i in members], np.float64) for _, members in grid]
    best = int(stats.chosen_index(np.array([s[np.isfinite(s)].mean() if np.isfinite(s).any() else np.nan
                                            for s in scores])))
    values, members = grid[best]
    return values, [i for i in members if not runs[i].get("diverged")]


def seed_outcomes(trained, x, y, runs: list[dict], sweep: dict[str, list[float]] | None = None,
                  key: str = "val_accuracy", runs_at_once: int = 4) -> dict:
    """The `selection`, `ensemble` and `flips` blocks of metrics.json, for a trained grid
    (`grid.TrainedGrid`, runs in the order of `runs`) on images x with labels y, evaluated after
    training. selection (`selection`): with a sweep of two or more points. ensemble and flips: on
    the runs of `ensemble_runs`, when at least 2 of them are left.

    ensemble: `stats.ensemble` (the softmax averaged over the runs; accuracy, NLL and ECE against
    the members') with `by_size` (`stats.ensemble_by_size`); flips: `stats.flips` (per test image,
    the runs that get it wrong; disagreement against test error). Both name the point (`of`)."""
    out = {"selection": selection(runs, sweep, key)} if sweep and len(points(runs, sweep)) > 1 else {}
    of, members = ensemble_runs(runs, sweep, key)
    if len(members) < 2:
        return out
    logits = trained.select(members).logits(x, runs_at_once=runs_at_once)
    y = np.asarray(y)
    subsets = {"subsets_per_size": ENSEMBLE_SUBSETS, "seed": STATS_SEED}
    return {**out, "ensemble": {"of": of, "run_indices": members, **stats.ensemble(logits, y),
                         "by_size": stats.ensemble_by_size(logits, y, ENSEMBLE_SUBSETS, STATS_SEED), **subsets},
            "flips": {"of": of, "run_indices": members, **stats.flips(logits.argmax(axis=-1), y, UNSTABLE_SHOWN)}}
