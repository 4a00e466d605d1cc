"""The study's CNN search in three rounds, with seed noise measured instead of guessed.

    python -m experiments.cnn_search --workdir runs/cnn_search [--config.seeds=N] [--config.epochs=E]

Every candidate is trained with `seeds` seeds vmapped in one program (round 3's dropout rates,
being traced, share one program for the whole round). A candidate the previous round already
trained (dense 0 in round 2, the config's dropout rate in round 3) reuses those runs instead of
training them again. The choice is the highest mean validation accuracy after the last epoch.
Writes metrics.json (a table per round: per-seed and mean validation and test accuracy with 95 %
CIs, Welch tests against the chosen candidate, whether the round's choice matters beyond seed
noise), round1_filters.png, round2_dense.png and round3_dropout.png.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import ml_collections
import numpy as np

from experiments.cnn import architecture, seeds_of, setup
from mnist_jax import experiment, models, plots, provenance, stats, sweep
from mnist_jax.config import ConfigError


def candidate_row(label: str, value, hist: dict, rows: slice, n_params: int, timing: dict) -> dict:
    """One row of a round's table from the runs `rows` of a history."""
    ok = ~np.asarray(hist["diverged"], bool)[rows, -1]  # diverged runs are left out (NaN)
    val = np.where(ok, hist["val_accuracy"][rows, -1], np.nan)
    test = np.where(ok, hist["test_accuracy"][rows, -1], np.nan)
    curves = np.asarray(hist["val_accuracy"])[rows][ok]
    curve = curves.mean(0) if len(curves) else np.full(np.shape(hist["val_accuracy"])[1], np.nan)
    return {"label": label, "value": value, "param_count": n_params,
            "val_accuracy": {"per_seed": val, **stats.summary(val)},
            "test_accuracy": {"per_seed": test, **stats.summary(test)},
            "val_curve_mean": curve, "diverged_runs": int((~ok).sum()), "timing": timing}


def judge(rows: list[dict], alpha: float) -> dict:
    """The chosen row (highest mean validation accuracy), Welch tests of every other row against it,
    and P(a run of the chosen beats a run of the other) with its CI beside each."""
    means = [r["val_accuracy"]["mean"] if r["val_accuracy"]["mean"] is not None else -np.inf for r in rows]
    best = int(np.argmax(means))  # every run of every row diverged: the first row, with no test beating it
    tests = []
    for i, r in enumerate(rows):
        if i == best:
            continue
        w = stats.welch(rows[best]["val_accuracy"]["per_seed"], r["val_accuracy"]["per_seed"])
        better = stats.prob_greater(rows[best]["val_accuracy"]["per_seed"], r["val_accuracy"]["per_seed"])
        tests.append({"chosen": rows[best]["label"], "other": r["label"],
                      "difference": means[best] - means[i] if np.isfinite(means[best] - means[i]) else None, **w,
                      "p_chosen_beats_other": better,  # P(a chosen run's val accuracy > a run of the other)
                      "significant": w["p_value"] is not None and w["p_value"] < alpha})
    matters = any(t["significant"] for t in tests)
    # the smallest difference of mean validation accuracy these seeds detect (power 0.8) at the round's pooled std
    runs = [np.asarray(r["val_accuracy"]["per_seed"], np.float64) for r in rows]
    runs = [x[np.isfinite(x)] for x in runs]
    dof = sum(x.size - 1 for x in runs if x.size > 1)
    pooled = float(np.sqrt(sum(((x - x.mean()) ** 2).sum() for x in runs if x.size > 1) / dof)) if dof else None
    n = min(x.size for x in runs)
    detectable = {"pooled_std": pooled, "seeds_per_candidate": int(n), "alpha": alpha, "power": 0.8,
                  "difference": None if pooled is None else stats.detectable_difference(pooled, n, alpha)}
    return {"chosen_index": best, "chosen": rows[best]["label"], "chosen_value": rows[best]["value"],
            "welch_vs_chosen": tests, "matters_beyond_seed_noise": matters, "detectable": detectable}


def train_candidate(config, workdir, data, model_cfg, name: str, dropout_rates: list[float]):
    """Train one architecture for every seed (and dropout rate) in one vmapped program."""
    model, task = setup(config, model_cfg)
    hp, seeds = sweep.grid(seeds_of(config), learning_rate=[config.learning_rate], dropout_rate=dropout_rates)
    result = experiment.train(config, workdir, task, hp, seeds, data, name=name, convolutional=True)
    n_params = models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params))
    timing = {**result.timing, "runs": len(seeds), "program": name}
    return model, result.history, n_params, timing


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    data, data_seconds = experiment.load_data(config)
    n_train = config.get("train_images", 0) or data.train_x.shape[0]
    if n_train > data.train_x.shape[0]:
        raise ConfigError(f"config.train_images={n_train} is larger than the training split ({data.train_x.shape[0]})")
    data = data._replace(train_x=data.train_x[:n_train], train_y=data.train_y[:n_train])
    if config.batch_size > n_train:
        raise ConfigError(f"config.batch_size={config.batch_size} is larger than config.train_images={n_train}")
    n_seeds, alpha = config.seeds, config.alpha
    setting = (f"{config.optimizer} lr {config.learning_rate:g} {config.schedule}, batch {config.batch_size}, "
               f"{config.epochs} epochs, {n_train:,} training images, {n_seeds} seeds per candidate")
    rounds, trainings, round1, round2 = {}, [], {}, {}

    def model_cfg(**fields):
        cfg = ml_collections.ConfigDict(config.model.to_dict())
        for k, v in fields.items():
            cfg[k] = v
        return cfg

    def finish(key, title, xlabel, rows, figure):
        verdict = judge(rows, alpha)
        rounds[key] = {"title": title, "candidates": rows, **verdict}
        plots.candidate_scatter(
            [r["label"] for r in rows], [r["val_accuracy"]["per_seed"] for r in rows],
            [r["val_accuracy"] for r in rows], workdir / figure,
            f"CNN search, {title}\n{setting}\n"
            f"chosen on validation ({config.n_val} held-out images): {verdict['chosen']}; "
            f"{'differences beyond' if verdict['matters_beyond_seed_noise'] else 'no difference beyond'} "
            f"seed noise (Welch, p < {alpha:g})",
            xlabel=xlabel, ylabel="validation accuracy after the last epoch (%)", chosen=verdict["chosen_index"])
        print(f"{title}: chosen {verdict['chosen']}; " + "; ".join(
            f"{r['label']} {stats.fmt(r['val_accuracy']['mean'], '.2f', 100)} %" for r in rows))
        return verdict["chosen_value"]

    # Round 1: conv filters (both layers), no hidden dense layer.
    rows = []
    for f in config.filters_candidates:
        cfg = model_cfg(filters=tuple(f for _ in config.model.filters), dense=0)
        round1[f] = model, hist, n_params, timing = train_candidate(config, workdir, data, cfg, f"round1_filters{f}",
                                                                    [config.dropout_rate])
        trainings.append(timing)
        rows.append(candidate_row(f"{f} filters", f, hist, slice(None), n_params, timing))
        rows[-1]["architecture"] = architecture(model)
    filters = finish("round1_filters", "round 1: conv filters", "filters per conv layer (3x3)", rows,
                     "round1_filters.png")

    # Round 2: a dense layer after flatten (0 = none, i.e. round 1's winner).
    rows = []
    for d in config.dense_candidates:
        cfg = model_cfg(filters=tuple(filters for _ in config.model.filters), dense=d)
        if d == 0:  # the same runs as round 1's winner: same architecture, seeds and program
            round2[d] = model, hist, n_params, timing = round1[filters]
        else:
            round2[d] = model, hist, n_params, timing = train_candidate(config, workdir, data, cfg, f"round2_dense{d}",
                                                                        [config.dropout_rate])
            trainings.append(timing)
        rows.append(candidate_row(f"Dense {d}" if d else "none", d, hist, slice(None), n_params, timing))
        rows[-1]["architecture"] = architecture(model)
    dense = finish("round2_dense", f"round 2: dense layer after flatten ({filters} filters)",
                   "units of the added dense layer", rows, "round2_dense.png")

    # Round 3: dropout rates, traced: one program trains the new rates x seeds. The rate rounds 1
    # and 2 trained with is round 2's winner again (same architecture, seeds and program): reused.
    cfg = model_cfg(filters=tuple(filters for _ in config.model.filters), dense=dense)
    winner = round2[dense]
    model, _, n_params, _ = winner
    new_rates = [r for r in config.dropout_rates if r != config.dropout_rate]
    if new_rates:
        _, hist, _, timing = train_candidate(config, workdir, data, cfg, "round3_dropout", new_rates)
        trainings.append(timing)
    rows = []
    for r in config.dropout_rates:
        if r == config.dropout_rate:
            rows.append(candidate_row(f"dropout {r:g}", r, winner[1], slice(None), n_params, winner[3]))
        else:
            i = new_rates.index(r)
            rows.append(candidate_row(f"dropout {r:g}", r, hist, slice(i * n_seeds, (i + 1) * n_seeds), n_params,
                                      timing))
        rows[-1]["architecture"] = architecture(model)
    rate = finish("round3_dropout", f"round 3: dropout rate ({architecture(model)})", "dropout rate", rows,
                  "round3_dropout.png")

    final = model_cfg(filters=tuple(filters for _ in config.model.filters), dense=dense)
    matters = [k for k, r in rounds.items() if r["matters_beyond_seed_noise"]]
    return {
        "experiment": "cnn_search",
        "protocol": config.protocol,
        "setting": setting,
        "rounds": rounds,
        "final_choice": {"filters": filters, "dense": dense, "dropout_rate": rate,
                         "architecture": architecture(models.from_config(final))},
        "choices_that_matter_beyond_seed_noise": matters,
        "timing": {"data_seconds": data_seconds, "device": provenance.describe_devices(),
                   "programs": trainings,
                   "train_seconds": sum(t["train_seconds"] for t in trainings),
                   "compile_seconds": sum(t["compile_seconds"] for t in trainings)},
    }


def main(argv: list[str] | None = None) -> int:
    return experiment.main(run, argv, "configs/cnn_search.py", __doc__)


if __name__ == "__main__":
    sys.exit(main())
