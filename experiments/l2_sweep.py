"""A sweep of one traced hyperparameter x seeds as ONE vmapped program, with its variance.

    python -m experiments.l2_sweep --workdir runs/l2_sweep                         # the study's L2 sweep
    python -m experiments.l2_sweep --workdir runs/l2_quick --config configs/l2_sweep_quick.py
    python -m experiments.l2_sweep --workdir runs/dropout --config configs/dropout_sweep.py

The value is chosen on the validation split (final epoch), never on the test set; the study's
own protocol (best test accuracy over epochs) is reported beside it, with the bias it carries.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import ml_collections
import numpy as np

from mnist_jax import experiment, models, plots, stats, sweep, tasks
from mnist_jax.config import ConfigError

# swept hyperparameter -> config field holding its values, and a name for people
SWEEPS = {"l2": ("l2_factors", "L2 factor"), "dropout_rate": ("dropout_rates", "dropout rate (hidden layers)")}


def base_hparams(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The traced hyperparameters every run of this config takes, at their base values."""
    hp = {"learning_rate": config.learning_rate, "l2": config.l2}
    if config.optimizer == "momentum":
        hp["momentum"] = config.momentum
    if config.get("max_norm", 0.0) > 0:
        hp["max_norm"] = config.max_norm
    if config.model.get("dropout", False):
        hp["dropout_rate"] = config.dropout_rate
        hp["input_dropout_rate"] = config.input_dropout_rate
    return hp


def per_value(array: np.ndarray, n_values: int) -> np.ndarray:
    """(values * seeds, ...) -> (values, seeds, ...): the grid is flattened seed-fastest."""
    return array.reshape(n_values, -1, *array.shape[1:])


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    field = config.sweep_field
    if field not in SWEEPS:
        raise ConfigError(f"config.sweep_field={field!r} is not allowed: expected one of {sorted(SWEEPS)}")
    values_field, value_name = SWEEPS[field]
    if values_field not in config:
        raise ConfigError(f"config.sweep_field={field!r}: this config has no config.{values_field} to sweep")
    if field not in base_hparams(config):
        raise ConfigError(f"config.sweep_field={field!r}: this model takes no such hyperparameter")
    values = [float(v) for v in config[values_field]]
    seeds_list = [config.seed + i for i in range(config.seeds)]

    data, data_seconds = experiment.load_data(config)
    model = models.from_config(config.model)
    hp_values = {k: [v] for k, v in base_hparams(config).items()}
    hp_values[field] = values
    hp, seeds = sweep.grid(seeds_list, **hp_values)
    result = experiment.train(config, workdir, tasks.classifier_task(model), hp, seeds, data)
    experiment.save_params(workdir, result.state.params)

    h = result.history
    n_test = int(data.test_x.shape[0])
    diverged_runs = experiment.divergence(h, seeds, hp)
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
        "sweep_field": field,
        values_field: values,
        "seeds": seeds_list,
        "runs": [{field: float(hp[field][r]), "seed": int(seeds[r]), "test_errors": int(test_errors[r]),
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
        "timing": experiment.timing(data_seconds, result),
        "resumed_from_epoch": result.resumed_from_epoch,
    }

    figures(config, metrics, workdir)
    if chosen_err["n"]:
        print(f"chosen on validation: {field}={values[chosen]:g}, test error {chosen_err['mean']:.3f} % "
              f"(95 % CI {chosen_err['ci_low']:.3f}-{chosen_err['ci_high']:.3f}); reference {ref_pct:.2f} %")
    else:
        print(f"every run diverged: no {value_name} can be chosen; reference {ref_pct:.2f} %")
    return metrics


def figures(config: ml_collections.ConfigDict, metrics: dict, workdir: pathlib.Path) -> None:
    """The sweep's three figures, from metrics.json alone (so they can be redrawn without training)."""
    field = metrics["sweep_field"]
    values_field, value_name = SWEEPS[field]
    values = metrics[values_field]
    n_values = len(values)
    err = np.array([np.nan if r["diverged"] else 100.0 * (1.0 - r["test_accuracy"]) for r in metrics["runs"]])
    rows = metrics["per_value"]
    widths = "-".join(str(w) for w in (784, *config.model.hidden, 10))
    what = (f"MLP {widths} ({metrics['param_count']:,} params), {config.optimizer} lr {config.learning_rate}, "
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


def main(argv: list[str] | None = None) -> int:
    return experiment.main(run, argv, "configs/l2_sweep.py", __doc__, accepts=("dropout_sweep",))


if __name__ == "__main__":
    sys.exit(main())
