"""A sweep of one traced hyperparameter x seeds as ONE vmapped program, with its variance.

    python -m experiments.sweep --workdir runs/l2_sweep                         # the study's L2 sweep
    python -m experiments.sweep --workdir runs/l2_quick --config configs/l2_sweep_quick.py
    python -m experiments.sweep --workdir runs/dropout --config configs/dropout_sweep.py
    python -m experiments.sweep --workdir runs/wd --config my_config.py   # sweep = {"weight_decay": [0, 1e-4]}

The swept hyperparameter and its values are the config's sweep declaration
`config.sweep = {hyperparameter: [values]}`. The value is chosen on the validation split (final
epoch), never on the test set; the study's own protocol (best test accuracy over epochs) is
reported beside it, with the bias it carries.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from mnist_jax import cli, grid, models, plots, preflight, results, stats, tasks, trained, training
from mnist_jax.config import ConfigError
from mnist_jax.report import ci, figure, mean_std, net_text, seed_variance, seeds_text, study, table, timing_line

# The metrics key of the swept values, as metrics.json files have always named them.
VALUES_KEYS = {"l2": "l2_factors", "dropout_rate": "dropout_rates"}


def sweep_of(field: str) -> tuple[str, str]:
    """(metrics key of the values, name for people) of swept hyperparameter `field`."""
    return VALUES_KEYS.get(field, f"{field}_values"), field.replace("_", " ")


def swept_field(config: ml_collections.ConfigDict) -> str:
    """The one hyperparameter the config's sweep declaration names (ConfigError otherwise)."""
    declared = training.sweep_values(config)
    if len(declared) != 1:
        raise ConfigError(f"config.sweep={dict(declared)}: this experiment compares the values of exactly one "
                          "hyperparameter (experiments.mlp and experiments.cnn train grids of several)")
    return next(iter(declared))


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: the classifier's, its sweep, the reference and the study's values."""
    swept_field(config)
    return [*preflight.classifier_reads(config, sweeps=True), "reference_errors", "reference_label", "study"]


def per_value(array: np.ndarray, n_values: int) -> np.ndarray:
    """(values * seeds, ...) -> (values, seeds, ...): the grid is flattened seed-fastest."""
    return array.reshape(n_values, -1, *array.shape[1:])


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    field = swept_field(config)
    values_field, value_name = sweep_of(field)
    model, task = tasks.classifier_from_config(config)
    values = training.sweep_values(config)[field]
    seeds_list = training.seeds_of(config)

    data, data_seconds = training.load_data(config)
    hp, seeds = training.swept_grid(config, task)
    result = training.train(config, workdir, task, hp, seeds, data)
    trained.save_params(workdir, result.state.params, declared=trained.grid_declaration(
        model, hp, seeds, result.history, f"classifiers over {field}", primary=True))

    h = result.history
    n_test = int(data.test_x.shape[0])
    diverged_runs = results.divergence(h, seeds, hp)
    diverged = h["diverged"][:, -1].astype(bool)
    ok = ~diverged
    test_err = np.where(ok, 100.0 * (1.0 - h["test_accuracy"][:, -1]), np.nan)
    test_errors = h["test_errors"][:, -1]
    final_val = np.where(ok, h["val_accuracy"][:, -1], np.nan)
    best_test = np.where(ok, h["test_accuracy"].max(axis=1), np.nan)  # the study's protocol
    final_test = np.where(ok, h["test_accuracy"][:, -1], np.nan)

    n_values = len(values)
    err_by_v = per_value(test_err, n_values)
    rows = []
    for i, v in enumerate(values):
        bias = per_value(best_test - final_test, n_values)[i]
        rows.append({
            field: v,
            "test_error_pct": stats.summary(err_by_v[i]),
            "test_errors": stats.summary(per_value(np.where(ok, test_errors, np.nan), n_values)[i]),
            "final_val_accuracy": stats.summary(per_value(final_val, n_values)[i]),
            "study_protocol_best_test_accuracy": stats.summary(per_value(best_test, n_values)[i]),
            "study_protocol_selection_bias_pct": stats.summary(100.0 * bias),
            "vs_first_value_welch": stats.welch(err_by_v[i], err_by_v[0]),
            # P(a run at this value has a lower test error than a run at the first value), with its CI
            "vs_first_value_p_better": stats.prob_greater(err_by_v[0], err_by_v[i]),
            "diverged_runs": int(per_value(diverged, n_values)[i].sum()),
        })
    pairwise = [{"a": values[i], "b": values[j], **stats.prob_greater(err_by_v[j], err_by_v[i])}
                for i in range(n_values) for j in range(i + 1, n_values)]  # p: P(a run at a beats a run at b)
    finite_err = [e[np.isfinite(e)] for e in err_by_v]
    pooled = [e - e.mean() for e in finite_err if e.size > 1]
    dof = sum(e.size - 1 for e in pooled)
    pooled_std = float(np.sqrt(sum((e ** 2).sum() for e in pooled) / dof)) if dof else None
    val_means = [r["final_val_accuracy"]["mean"] if r["final_val_accuracy"]["mean"] is not None else -1 for r in rows]
    chosen = int(np.argmax(val_means))
    ref_pct = 100.0 * config.reference_errors / n_test
    chosen_err = rows[chosen]["test_error_pct"]
    study_best = int(np.nanargmax([r["study_protocol_best_test_accuracy"]["mean"] or -1 for r in rows]))
    metrics = {
        "experiment": config.experiment,
        "protocol": config.protocol,
        "param_count": models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params)),
        "model": models.describe(model),
        "sweep_field": field,
        values_field: values,
        "seeds": seeds_list,
        "runs": [{field: results.hp_value(hp[field][r]), "seed": int(seeds[r]), "test_errors": int(test_errors[r]),
                  "test_accuracy": float(h["test_accuracy"][r, -1]), "final_val_accuracy": float(h["val_accuracy"][r, -1]),
                  "best_val_accuracy": float(h["val_accuracy"][r].max()),
                  "study_protocol_best_test_accuracy": float(h["test_accuracy"][r].max()),
                  "diverged": bool(diverged[r])} for r in range(len(seeds))],
        "per_value": rows,
        "chosen_on_validation": {field: values[chosen], "test_error_pct": chosen_err,
                                 "vs_first_value_welch": rows[chosen]["vs_first_value_welch"]},
        "reference": {"errors": config.reference_errors, "test_error_pct": ref_pct, "label": config.reference_label,
                      "inside_chosen_ci": bool(chosen_err["ci_low"] is not None
                                               and chosen_err["ci_low"] <= ref_pct <= chosen_err["ci_high"])},
        "diverged": diverged_runs,
        "pairwise_p_better": pairwise,
        "detectable": {
            "note": "smallest difference of mean test error (% points) a two-sided t-test at alpha 0.05 detects with "
                    "power 0.8 with these seeds per value, if runs spread with the pooled std over values",
            "pooled_std_pct": pooled_std, "seeds_per_value": len(seeds_list),
            "difference_pct": None if pooled_std is None else stats.detectable_difference(pooled_std, len(seeds_list)),
        },
        "study_protocol": {
            "note": "best test accuracy over epochs (the study's protocol: the test set chooses the epoch, "
                    "so it is biased upwards); reported beside, never used to choose",
            "best_value": values[study_best],
            "best_mean_test_accuracy": rows[study_best]["study_protocol_best_test_accuracy"]["mean"],
        },
        "history": {k: h[k] for k in ("loss", "train_accuracy", "val_accuracy", "test_accuracy")},
        "timing": training.timing(data_seconds, result),
        "resumed_from_epoch": result.resumed_from_epoch,
    }

    # the seeds beyond their mean: how stable the choice is, and the ensemble and flips of the chosen value's seeds
    metrics.update(results.seed_outcomes(grid.TrainedGrid(model, result.state.params, hp, seeds), data.test_x,
                                         data.test_y, metrics["runs"], {field: values}, key="final_val_accuracy",
                                         runs_at_once=training.run_chunk(config, task) or 4))
    figures(config, metrics, workdir)
    plots.seed_variance(metrics, data.test_x, workdir,
                        f"{metrics['model']} ({metrics['param_count']:,} params), {config.optimizer} lr {config.learning_rate}, "
                        f"batch {config.batch_size}, {config.epochs} epochs")
    if chosen_err["n"]:
        print(f"chosen on validation: {field}={values[chosen]:g}, test error {chosen_err['mean']:.3f} % "
              f"(95 % CI {chosen_err['ci_low']:.3f}-{chosen_err['ci_high']:.3f}); reference {ref_pct:.2f} %")
    else:
        print(f"every run diverged: no {value_name} can be chosen; reference {ref_pct:.2f} %")
    return metrics


def figures(config: ml_collections.ConfigDict, metrics: dict, workdir: pathlib.Path) -> None:
    """The sweep's three figures, from metrics.json alone (so they can be redrawn without training)."""
    field = metrics["sweep_field"]
    values_field, value_name = sweep_of(field)
    values = metrics[values_field]
    n_values = len(values)
    err = np.array([np.nan if r["diverged"] else 100.0 * (1.0 - r["test_accuracy"]) for r in metrics["runs"]])
    rows = metrics["per_value"]
    what = (f"{metrics['model']} ({metrics['param_count']:,} params), {config.optimizer} lr {config.learning_rate}, "
            f"batch {config.batch_size}, {config.epochs} epochs, {config.seeds} seeds per value")
    plots.sweep_scatter(values, per_value(err, n_values), [r["test_error_pct"] for r in rows],
                        workdir / f"{config.experiment}.png",
                        f"Test error after the last epoch against {value_name}\n{what}",
                        xlabel=value_name, ylabel="test error (%)", reference=metrics["reference"]["test_error_pct"],
                        reference_label=config.reference_label)
    plots.sweep_std(values, [r["test_error_pct"] for r in rows], workdir / f"{config.experiment}_std.png",
                    f"Run-to-run spread of the test error\n{what}", xlabel=value_name,
                    ylabel="std of test error over seeds (% points)")
    plots.curves_by_value(values, per_value(np.asarray(metrics["history"]["val_accuracy"]), n_values),
                          workdir / f"{config.experiment}_curves.png",
                          f"Validation accuracy per epoch (mean ± 1 std over seeds)\n{what}",
                          name=field, ylabel="validation accuracy (%)")


# --- REPORT.md section and README row, from metrics.json alone ---

def p_text(p: float) -> str:
    """'p = 0.012', or 'p < 0.001' where three decimals would print 0.000."""
    return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"


def beyond_noise(per_value: list[dict], field: str, alpha: float = 0.05) -> str:
    """Which values differ from the first one beyond seed noise (Welch p < alpha), and which way."""
    first, others = per_value[0], per_value[1:]
    tested = [r for r in others if r["vs_first_value_welch"].get("p_value") is not None]
    if not tested:
        return ""
    real = [r for r in tested if r["vs_first_value_welch"]["p_value"] < alpha]
    noise = [r for r in tested if r not in real]
    parts = [f"{field} = {r[field]:g} is {'worse' if r['test_error_pct']['mean'] > first['test_error_pct']['mean'] else 'better'}"
             f" ({p_text(r['vs_first_value_welch']['p_value'])})" for r in real]
    text = f"Against {field} = {first[field]:g} on the test set: "
    text += ("; ".join(parts) + " beyond seed noise" if parts else "no value differs beyond seed noise")
    if noise:
        p_min = min(r["vs_first_value_welch"]["p_value"] for r in noise)
        text += f"; the other values are within seed noise (Welch p >= {p_min:.2f})" if real else f" (Welch p >= {p_min:.2f})"
    return text + "."


def dropout_target(m: dict) -> str:
    """Whether the setting chosen on validation meets the dropout recipe's target, with its epochs."""
    target = study(m["experiment"])["dropout_target_error_pct"]
    mean = m["chosen_on_validation"]["test_error_pct"]["mean"]
    epochs = len(m["history"]["loss"][0]) if m.get("history", {}).get("loss") else "?"
    verdict = "**met**" if mean <= target else "**not met**"
    return (f"Target: mean test error of the setting chosen on validation <= {target} %: {verdict} "
            f"({mean:.3f} % after {epochs} epochs).")


def detectable_text(m: dict) -> str:
    """' With 10 seeds per value and runs spreading by 0.06 % points, ...' (empty for older metrics)."""
    d = m.get("detectable", {})
    if d.get("difference_pct") is None:
        return ""
    return (f" With {d['seeds_per_value']} seeds per value and runs spreading by {d['pooled_std_pct']:.3f} % points "
            f"(pooled std), a difference of mean test error of {d['difference_pct']:.3f} % points is detected with "
            "power 0.8 (two-sided t-test, alpha 0.05); smaller true differences are likely missed.")


def section_sweep(m: dict, name: str, title: str, study_note: str) -> str:
    field = m["sweep_field"]
    rows = []
    for row in m["per_value"]:
        w = row["vs_first_value_welch"]
        p = "-" if w.get("p_value") is None or row is m["per_value"][0] else f"{w['p_value']:.3f}"
        better = row.get("vs_first_value_p_better", {})
        p_better = ("-" if better.get("p") is None or row is m["per_value"][0]
                    else f"{better['p']:.2f} [{better['ci_low']:.2f}, {better['ci_high']:.2f}]")
        rows.append([f"{row[field]:g}", mean_std(row["test_error_pct"], 1.0, 3), ci(row["test_error_pct"], 1.0, 3),
                     f"{row['test_error_pct']['n']}", p, p_better, mean_std(row["study_protocol_best_test_accuracy"])])
    chosen = m["chosen_on_validation"]
    err = chosen["test_error_pct"]
    ref = m["reference"]
    verdict = ("inside" if ref["inside_chosen_ci"] else "outside")
    p_value = chosen["vs_first_value_welch"].get("p_value")
    first = m["per_value"][0][field]
    if chosen[field] == first:
        helps = f"no other value beat {field} = {first:g} on validation"
    elif p_value is None:
        helps = "too few seeds for a test"
    else:
        helps = (f"against {field} = {first:g}, Welch p = {p_value:.3f}: "
                 + ("a real difference" if p_value < 0.05 else "within seed noise"))
    summary = (f"Chosen on validation: **{field} = {chosen[field]:g}**, test error {mean_std(err, 1.0, 3)} % "
               f"(95 % CI {ci(err, 1.0, 3)}); {helps}. The reference, {ref['label']}, is {verdict} that interval. "
               f"{beyond_noise(m['per_value'], field)} {study_note}")
    return "\n\n".join([
        f"## {title}",
        table([field, "test error (%), mean ± std", "95 % CI (%)", "seeds", "Welch p vs first",
               "P(a run beats a run at the first value) [95 % CI]", "study protocol: best test accuracy over epochs (%)"],
              rows),
        summary + detectable_text(m),
        *seed_variance(m),
        timing_line(m),
        figure(name, f"{m['experiment']}.png", "Test error per value: every seed a dot, mean with 95 % CI"),
        figure(name, f"{m['experiment']}_std.png", "Run-to-run standard deviation per value"),
        figure(name, f"{m['experiment']}_curves.png", "Validation accuracy per epoch per value"),
    ])


def _sweep_this(m: dict) -> str:
    field = m["sweep_field"]
    chosen = m["chosen_on_validation"]
    err = chosen["test_error_pct"]
    return (f"chosen on validation: {field} = {chosen[field]:g}, **{mean_std(err, 1.0, 3)} %** test error "
            f"(CI {ci(err, 1.0, 3)}). {beyond_noise(m['per_value'], field)}")


def row_l2_sweep(m: dict, c: dict) -> list[str]:
    lo, hi = study(m["experiment"])["l2_study_best_test_accuracy_pct"]
    ref = m["reference"]
    return [f"{net_text(m, c)}, {c['optimizer'].upper()} {c['learning_rate']:g}, "
            f"{c['epochs']} epochs, L2 sweep ({len(m['l2_factors'])} factors x {seeds_text(c)})", _sweep_this(m),
            f"{lo:g}-{hi:g} % best test accuracy over epochs, {study(m['experiment'])['l2_study_runs_per_factor']} runs",
            f"Hinton et al. 2012: {ref['test_error_pct']:g} % ({ref['errors']} errors), "
            f"{'inside' if ref['inside_chosen_ci'] else 'outside'} our CI"]


def row_dropout_sweep(m: dict, c: dict) -> list[str]:
    lo, hi = study(m["experiment"])["srivastava_dropout_error_pct"]
    target = study(m["experiment"])["dropout_target_error_pct"]
    met = m["chosen_on_validation"]["test_error_pct"]["mean"] <= target
    return [f"beyond the study: Hinton's recipe {net_text(m, c)}, dropout rate over "
            f"{', '.join(f'{r:g}' for r in m['dropout_rates'])} (+{c['input_dropout_rate']:g} on the input), max-norm "
            f"{c['max_norm']:g}, momentum {c['momentum']:g}, {c['epochs']} epochs ({seeds_text(c)} per rate)",
            f"{_sweep_this(m)} Target <= {target:g} %: **{'met' if met else 'not met'}**.", "-",
            f"Srivastava et al. 2014: {lo:g}-{hi:g} % without max-norm"]


def section(m: dict) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone."""
    if m["experiment"] == "dropout_sweep":
        return section_sweep(m, "dropout_sweep",
                             "Beyond the study: Hinton's recipe, 784-800-800-10 with dropout and max-norm",
                             dropout_target(m))
    if m["experiment"] == "l2_sweep":
        return section_sweep(
            m, "l2_sweep", "2D. L2-regularization sweep, 784-500-300-10",
            "The study reported {}-{} % best test accuracy per factor with {} runs each, choosing the epoch on the "
            "test set; that protocol's column above shows the upward bias it carries.".format(
                *study(m["experiment"])["l2_study_best_test_accuracy_pct"], study(m["experiment"])["l2_study_runs_per_factor"]))
    name = sweep_of(m["sweep_field"])[1]
    return section_sweep(m, m["experiment"], f"Beyond the study: a sweep of the {name}",
                         f"Reference: {m['reference']['label']}.")


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    if m["experiment"] in ("l2_sweep", "dropout_sweep"):
        return (row_dropout_sweep if m["experiment"] == "dropout_sweep" else row_l2_sweep)(m, c)
    values_field, name = sweep_of(m["sweep_field"])
    return [f"beyond the study: {net_text(m, c)}, {c['optimizer']} "
            f"{c['learning_rate']:g}, {c['epochs']} epochs, {name} sweep ({len(m[values_field])} values x "
            f"{seeds_text(c)})", _sweep_this(m), "-", c["reference_label"]]


main = cli.entry_point(run, "configs/l2_sweep.py", __doc__, __name__)
