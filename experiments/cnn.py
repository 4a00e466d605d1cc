"""The convolutional classifier of the study's section 3A, several seeds in one program.

    python -m experiments.cnn --workdir runs/cnn [--config.seeds=N] [--config.epochs=E]
    python -m experiments.cnn --workdir runs/cnn_best --config configs/cnn_best.py

Writes metrics.json (per-seed and mean test accuracy, whether `target_accuracy` was met,
per-epoch history, confusion matrix, timing), accuracy.png (curves over epochs) and
confusion.png (test-set confusion matrix summed over the seeds), and the trained params.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np

from mnist_jax import cli, grid, models, plots, preflight, results, stats, training
from mnist_jax.report import ci, figure, mean_std, pct, per_value_table, seed_variance, seeds_text, study, table, timing_line


def confusion(trained: grid.TrainedGrid, x: jax.Array, y: jax.Array) -> np.ndarray:
    """Confusion matrices (R, 10, 10) of each run of a trained grid on (x, y)."""
    pred = trained.predictions(x, runs_at_once=1)
    out = np.zeros((trained.runs, 10, 10), np.int64)
    for r in range(trained.runs):
        np.add.at(out[r], (np.asarray(y), pred[r]), 1)
    return out


def figures(config: ml_collections.ConfigDict, metrics: dict, workdir: pathlib.Path, images) -> None:
    """accuracy.png and confusion.png of a finished run, from its metrics (so they can be redrawn), and its
    ensemble.png and unstable_digits.png (`images`: the test images)."""
    history = {k: np.asarray(v) for k, v in metrics["history"].items()}
    n_runs, acc = len(metrics["runs"]), stats.describe(metrics["test_accuracy"])
    aug = f", random shifts ±{config.max_shift} px" if config.get("max_shift", 0) else ""
    model = f"{metrics['architecture']} ({metrics['param_count']:,} params)"
    dropout = f", dropout {training.value_text(config, 'dropout_rate')}" if "dropout_rate" in metrics["runs"][0] else ""
    setting = (f"{config.optimizer} lr {training.value_text(config, 'learning_rate')} {config.schedule}{dropout}{aug}, "
               f"batch {config.batch_size}, {config.epochs} epochs")
    val_name = "validation = test set (study protocol)" if config.protocol == "study" else f"validation = {config.n_val} held-out"
    plots.accuracy_curves(history, workdir / "accuracy.png",
                          f"{model}\n{setting}\n{training.runs_text(config)}; {val_name}; final test accuracy {acc}")
    plots.confusion_matrix(np.asarray(metrics["confusion_matrix"]["sum_over_seeds"]), workdir / "confusion.png",
                           f"Test-set confusion matrix, {model}\n{setting}\n{training.runs_text(config)}, "
                           f"mean test accuracy {acc}", n_runs=n_runs)
    plots.seed_variance(metrics, images, workdir, f"{model}, {setting}")


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: the classifier's, its sweep, its target and the study's values."""
    return [*preflight.classifier_reads(config, sweeps=True), "target_accuracy", "study"]


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    data, data_seconds, model, hp, seeds, result = training.train_classifier(config, workdir)
    history = result.history
    n_params = models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params))
    trained_grid = grid.TrainedGrid(model, result.state.params, hp, seeds)
    cm = confusion(trained_grid, data.test_x, data.test_y)
    outcome = results.classifier_summary(hp, seeds, history, training.sweep_values(config))  # diverged runs left out
    test_acc, summary = outcome["test_accuracy"]["per_seed"], outcome["test_accuracy"]
    timing = training.timing(data_seconds, result)
    timing["train_minutes"] = timing["train_seconds"] / 60
    if (impl := models.conv_formulation(model)) is not None:
        timing["conv_impl"] = impl
    metrics = {
        "experiment": config.experiment,
        "protocol": config.protocol,
        "architecture": models.describe(model),
        "param_count": n_params,
        **outcome,
        "target": {"mean_test_accuracy_at_least": config.target_accuracy,
                   "met": bool(summary["n"] and summary["mean"] >= config.target_accuracy)},
        "confusion_matrix": {"rows": "true digit", "columns": "predicted digit", "sum_over_seeds": cm.sum(0),
                             "per_seed": cm},
        "diverged_seeds": [d["seed"] for d in outcome["diverged"]],
        "timing": timing,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    metrics.update(results.seed_outcomes(trained_grid, data.test_x, data.test_y, metrics["runs"],
                                         training.sweep_values(config), runs_at_once=1))
    figures(config, metrics, workdir, data.test_x)
    met = "met" if metrics["target"]["met"] else "NOT met"
    print(f"test accuracy {stats.describe(summary)} over {len(seeds)} seeds "
          f"(per seed {', '.join(f'{100 * a:.2f}' for a in test_acc)}); target {100 * config.target_accuracy:.1f} % {met}; "
          f"training {timing['train_seconds']:.0f} s + compile {timing['compile_seconds']:.0f} s")
    return metrics


# --- REPORT.md section and README row, from metrics.json alone ---

def section_cnn(m: dict, title: str, study: str) -> str:
    acc = m["test_accuracy"]
    target = m.get("target", {})
    rows = [
        ["parameters", f"{m['param_count']:,}", "-"],
        [f"test accuracy (%), mean ± std over {acc['n']} seeds", mean_std(acc), study],
        ["95 % CI of the mean (%)", ci(acc), "-"],
        ["validation accuracy (%), mean ± std", mean_std(m["val_accuracy"]), "-"],
    ]
    goal = ""
    if "mean_test_accuracy_at_least" in target:
        goal = (f"Target: mean test accuracy >= {pct(target['mean_test_accuracy_at_least'])} %: "
                + ("**met**." if target.get("met") else "**not met**."))
    name = m["experiment"]
    return "\n\n".join([
        f"## {title}",
        f"Architecture {m.get('architecture', '')}.",
        table(["", "this codebase", "study"], rows),
        *([f"Swept: {', '.join(m['sweep'])}.", per_value_table(m)] if m.get("per_value") else []),
        goal,
        *seed_variance(m),
        timing_line(m),
        figure(name, "accuracy.png", "Training and validation accuracy per epoch, mean ± 1 std over seeds"),
        figure(name, "confusion.png", "Confusion matrix on the test set, summed over seeds"),
    ])


def _cnn_this(m: dict) -> str:
    acc, target = m["test_accuracy"], m.get("target", {})
    goal = ""
    if "mean_test_accuracy_at_least" in target:
        goal = (f"; target >= {pct(target['mean_test_accuracy_at_least'], 1)} % "
                f"**{'met' if target.get('met') else 'not met'}**")
    return f"**{mean_std(acc)} %** test accuracy (CI {ci(acc)}){goal}; {m['param_count']:,} params"


def row_cnn(m: dict, c: dict) -> list[str]:
    return [f"the study's CNN {m['architecture']}, {c['optimizer']} {c['learning_rate']:g} {c['schedule']}, "
            f"{c['epochs']} epochs ({seeds_text(c)})", _cnn_this(m),
            f"{study(m['experiment'])['cnn_study_test_accuracy_pct']} %", "-"]


def row_cnn_best(m: dict, c: dict) -> list[str]:
    return [f"beyond the study: {m['architecture']}, shifts of up to {c['max_shift']} px, {c['optimizer']} "
            f"{c['learning_rate']:g} {c['schedule']}, {c['epochs']} epochs ({seeds_text(c)})", _cnn_this(m), "-", "-"]


def section(m: dict) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone."""
    if m["experiment"] == "cnn_best":
        return section_cnn(m, "Beyond the study: a stronger CNN with shifts and a schedule", "-")
    return section_cnn(m, "3A. The study's final CNN", f"{study(m['experiment'])['cnn_study_test_accuracy_pct']}")


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    return (row_cnn_best if m["experiment"] == "cnn_best" else row_cnn)(m, c)


main = cli.entry_point(run, "configs/cnn.py", __doc__, __name__)
