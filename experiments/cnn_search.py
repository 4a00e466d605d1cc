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

import jax
import ml_collections
import numpy as np

from mnist_jax import cli, models, plots, preflight, provenance, results, stats, sweep, tasks, training
from mnist_jax.report import ci, figure, mean_std, pct, seeds_text, table, waited


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


def candidate(config, data, model_cfg, dropout_rates: list[float]) -> training.Training:
    """The training of one architecture for every seed (and dropout rate), prepared: its
    programs compile in the background from now on."""
    model, task = tasks.classifier_from_config(config, model_cfg)
    hp, seeds = sweep.grid(training.seeds_of(config), **training.hparams(config, task, dropout_rate=dropout_rates))
    return training.Training(config, task, hp, seeds, model=model).prepare(data)


def train_candidate(workdir, data, plan: training.Training, name: str):
    """Train a `candidate` for every seed (and dropout rate) in one vmapped program."""
    result = plan.train(workdir, data, name)
    n_params = models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params))
    n_runs = len(plan.seeds)
    timing = {**result.timing, "runs": n_runs, "program": name,
              "runs_table": results.runs_table(plan.hp, plan.seeds, result.history,
                                               ("val_accuracy", "test_accuracy"),
                                               architecture=[models.describe(plan.model)] * n_runs)}
    return plan.model, result.history, n_params, timing


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: the base classifier's and the candidates of its rounds."""
    return [*preflight.classifier_reads(config), "filters_candidates", "dense_candidates", "dropout_rates", "alpha", "study"]


def runs(config: ml_collections.ConfigDict) -> int:
    """Runs in its largest grid: the seeds of one candidate, times the new dropout rates of round 3."""
    return config.seeds * max(1, len([r for r in config.dropout_rates if r != config.dropout_rate]))


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    data, data_seconds = training.load_data(config)
    n_train = data.train_x.shape[0]
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

    # Round 1: conv filters (both layers), no hidden dense layer. Every candidate of a round is
    # known before the first trains: all of them start compiling now (in the background).
    rows = []
    prepared = {f: candidate(config, data, model_cfg(filters=tuple(f for _ in config.model.filters), dense=0),
                             [config.dropout_rate]) for f in config.filters_candidates}
    for f in config.filters_candidates:
        round1[f] = model, hist, n_params, timing = train_candidate(workdir, data, prepared[f], f"round1_filters{f}")
        trainings.append(timing)
        rows.append(candidate_row(f"{f} filters", f, hist, slice(None), n_params, timing))
        rows[-1]["architecture"] = models.describe(model)
    filters = finish("round1_filters", "round 1: conv filters", "filters per conv layer (3x3)", rows,
                     "round1_filters.png")

    # Round 2: a dense layer after flatten (0 = none, i.e. round 1's winner).
    rows = []
    prepared = {d: candidate(config, data, model_cfg(filters=tuple(filters for _ in config.model.filters), dense=d),
                             [config.dropout_rate]) for d in config.dense_candidates if d != 0}
    for d in config.dense_candidates:
        if d == 0:  # the same runs as round 1's winner: same architecture, seeds and program
            round2[d] = model, hist, n_params, timing = round1[filters]
        else:
            round2[d] = model, hist, n_params, timing = train_candidate(workdir, data, prepared[d], f"round2_dense{d}")
            trainings.append(timing)
        rows.append(candidate_row(f"Dense {d}" if d else "none", d, hist, slice(None), n_params, timing))
        rows[-1]["architecture"] = models.describe(model)
    dense = finish("round2_dense", f"round 2: dense layer after flatten ({filters} filters)",
                   "units of the added dense layer", rows, "round2_dense.png")

    # Round 3: dropout rates, traced: one program trains the new rates x seeds. The rate rounds 1
    # and 2 trained with is round 2's winner again (same architecture, seeds and program): reused.
    cfg = model_cfg(filters=tuple(filters for _ in config.model.filters), dense=dense)
    winner = round2[dense]
    model, _, n_params, _ = winner
    new_rates = [r for r in config.dropout_rates if r != config.dropout_rate]
    if new_rates:
        _, hist, _, timing = train_candidate(workdir, data, candidate(config, data, cfg, new_rates),
                                             "round3_dropout")
        trainings.append(timing)
    rows = []
    for r in config.dropout_rates:
        if r == config.dropout_rate:
            rows.append(candidate_row(f"dropout {r:g}", r, winner[1], slice(None), n_params, winner[3]))
        else:
            i = new_rates.index(r)
            rows.append(candidate_row(f"dropout {r:g}", r, hist, slice(i * n_seeds, (i + 1) * n_seeds), n_params,
                                      timing))
        rows[-1]["architecture"] = models.describe(model)
    rate = finish("round3_dropout", f"round 3: dropout rate ({models.describe(model)})", "dropout rate", rows,
                  "round3_dropout.png")

    final = model_cfg(filters=tuple(filters for _ in config.model.filters), dense=dense)
    matters = [k for k, r in rounds.items() if r["matters_beyond_seed_noise"]]
    runs = [{"program": t["program"], **record} for t in trainings for record in t.pop("runs_table")]
    return {
        "experiment": "cnn_search",
        "protocol": config.protocol,
        "setting": setting,
        "rounds": rounds,
        "final_choice": {"filters": filters, "dense": dense, "dropout_rate": rate,
                         "architecture": models.describe(models.from_config(final))},
        "choices_that_matter_beyond_seed_noise": matters,
        "runs": runs,
        "timing": {"data_seconds": data_seconds, "device": provenance.describe_devices(),
                   "programs": trainings,
                   "train_seconds": sum(t["train_seconds"] for t in trainings),
                   "compile_seconds": sum(t["compile_seconds"] for t in trainings),
                   "compile_wait_seconds": sum(t["compile_wait_seconds"] for t in trainings)},
    }


# --- REPORT.md section and README row, from metrics.json alone ---

def section(m: dict) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone."""
    parts = ["## 3A. The CNN search: the study's three rounds, chosen on validation", m.get("setting", "")]
    for key, rnd in m["rounds"].items():
        rows = []
        tests = {t["other"]: t for t in rnd.get("welch_vs_chosen", [])}
        for i, c in enumerate(rnd["candidates"]):
            mark = " (chosen)" if i == rnd["chosen_index"] else ""
            t = tests.get(c["label"], {})
            welch = "-" if t.get("p_value") is None else f"{t['p_value']:.3f}"
            b = t.get("p_chosen_beats_other", {})
            better = "-" if b.get("p") is None else f"{b['p']:.2f} [{b['ci_low']:.2f}, {b['ci_high']:.2f}]"
            rows.append([f"{c['label']}{mark}", f"{c['param_count']:,}", mean_std(c["val_accuracy"]),
                         ci(c["val_accuracy"]), welch, better])
        verdict = ("matters beyond seed noise" if rnd["matters_beyond_seed_noise"]
                   else "no difference beyond seed noise (Welch)")
        d = rnd.get("detectable", {})
        if d.get("difference") is not None:
            verdict += (f"; with {d['seeds_per_candidate']} seeds per candidate, differences of mean validation accuracy "
                        f"below {pct(d['difference'])} % points are likely missed (power 0.8 at the pooled std "
                        f"{pct(d['pooled_std'])} % points)")
        parts += [f"**{rnd['title']}**: {verdict}.",
                  table(["candidate", "parameters", "validation accuracy (%), mean ± std", "95 % CI (%)",
                         "Welch p vs chosen", "P(a chosen run beats a run of it) [95 % CI]"], rows),
                  figure("cnn_search", f"{key}.png", rnd["title"])]
    fc, last = m.get("final_choice"), list(m["rounds"].values())[-1]
    if fc:
        chosen = last["candidates"][last["chosen_index"]]
        matters = ", ".join(k.split("_", 1)[1] for k in m.get("choices_that_matter_beyond_seed_noise", [])) or "none"
        parts.append(f"Final choice: {fc['architecture']} ({fc['filters']} filters, dense {fc['dense'] or 'none'}, "
                     f"dropout {fc['dropout_rate']:g}); its test accuracy, reported and not used to choose: "
                     f"{mean_std(chosen['test_accuracy'])} %. Choices that matter beyond seed noise: {matters}.")
    parts.append("The study: filters made no difference (32 kept), the added dense layer helped a lot (32 kept), "
                 "dropout had no effect (0.5 kept).")
    t = m.get("timing", {})
    if "programs" in t:
        parts.append(f"Wall time {t.get('wall_seconds', 0):.1f} s on {t.get('device', 'an unknown device')}: "
                     f"{len(t['programs'])} training programs, {t['train_seconds']:.0f} s of training and "
                     f"{t['compile_seconds']:.0f} s of compiling{waited(t)}; reused candidates are not trained again.")
    if c := t.get("compilation"):  # every program of the stage, not only training's (mnist_jax.compilation)
        parts.append(f"Programs of the whole stage: {c['programs']}, {c['cache_hits']} loaded from the persistent "
                     f"compilation cache; {c['compile_seconds']:.1f} s compiling or loading them.")
    return "\n\n".join(parts)


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    fc = m["final_choice"]
    last = list(m["rounds"].values())[-1]
    chosen = last["candidates"][last["chosen_index"]]
    matters = ", ".join(k.split("_", 1)[1] for k in m["choices_that_matter_beyond_seed_noise"]) or "none"
    return [f"the study's CNN search, 3 rounds on validation ({seeds_text(c)} x {c['epochs']} epochs per candidate)",
            f"filters **{fc['filters']}**, dense **{fc['dense'] or 'none'}**, dropout **{fc['dropout_rate']:g}**; choices "
            f"that matter beyond seed noise: {matters}; the chosen {fc['architecture']} tests at "
            f"{mean_std(chosen['test_accuracy'])} %",
            "filters: no difference (32 kept); dense: helped a lot (32 kept); dropout: no effect (0.5 kept)", "-"]


main = cli.entry_point(run, "configs/cnn_search.py", __doc__, __name__)
