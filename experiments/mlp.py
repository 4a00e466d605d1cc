"""The dense classifier of the study's section 2, with its training curves.

    python -m experiments.mlp --workdir runs/mlp [--config.seeds=N] [--config.epochs=E]
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from mnist_jax import cli, grid, models, plots, preflight, results, stats, training
from mnist_jax.report import ci, figure, mean_std, net_text, per_value_table, seed_variance, seeds_text, study, table, timing_line


def describe(summary: dict) -> str:
    """'97.02 % ± 0.21' (mean ± std over the finite runs), or a note that every run diverged."""
    return stats.describe(summary)


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: the classifier's, its sweep and the study's values."""
    return [*preflight.classifier_reads(config, sweeps=True), "study"]


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    data, data_seconds, model, hp, seeds, result = training.train_classifier(config, workdir)
    history = result.history
    n_params = models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params))
    metrics = {
        "experiment": config.experiment,
        "protocol": config.protocol,
        "param_count": n_params,
        "model": models.describe(model),
        **results.classifier_summary(hp, seeds, history, training.sweep_values(config)),
        "timing": training.timing(data_seconds, result),
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    what = (f"{models.describe(model)} ({n_params:,} params), {config.optimizer.upper()} lr "
            f"{training.value_text(config, 'learning_rate')}, batch {config.batch_size}, {config.epochs} epochs")
    metrics.update(results.seed_outcomes(grid.TrainedGrid(model, result.state.params, hp, seeds), data.test_x, data.test_y,
                                         metrics["runs"], training.sweep_values(config)))
    plots.seed_variance(metrics, data.test_x, workdir, what)
    val_name = "validation = test set (study protocol)" if config.protocol == "study" else f"validation = {config.n_val} held-out"
    plots.accuracy_curves(
        history, workdir / "accuracy.png",
        f"{models.describe(model)} ({n_params:,} params), {config.optimizer.upper()} lr "
        f"{training.value_text(config, 'learning_rate')}, batch {config.batch_size}{training.sweep_text(config)}\n"
        f"{training.runs_text(config)}; {val_name}; "
        f"final test accuracy {describe(metrics['test_accuracy'])}")
    print(f"test accuracy {describe(metrics['test_accuracy'])} over {len(seeds)} seeds")
    return metrics


# --- REPORT.md section and README row, from metrics.json alone ---

def section(m: dict) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone."""
    acc = m["test_accuracy"]
    lo, hi = study(m["experiment"])["mlp_keras_pytorch_accuracy_pct"]
    rows = [
        ["parameters", f"{m['param_count']:,}", f"{study(m['experiment'])['mlp_params_study']:,}", "-"],
        [f"test accuracy (%), mean ± std over {acc['n']} seeds", mean_std(acc), "figure only",
         f"Keras / PyTorch, same setup: {lo:.1f}-{hi:.1f}"],
        ["95 % CI of the mean (%)", ci(acc), "-", "-"],
        ["validation accuracy (%), mean ± std", mean_std(m["val_accuracy"]), "-", "-"],
    ]
    return "\n\n".join([
        "## 2. Dense classifier 784-64-64-10",
        table(["", "this codebase", "study", "reference"], rows),
        *([f"Swept: {', '.join(m['sweep'])}.", per_value_table(m)] if m.get("per_value") else []),
        *seed_variance(m),
        timing_line(m),
        figure("mlp", "accuracy.png", "Training and validation accuracy per epoch, mean ± 1 std over seeds"),
    ])


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    acc = m["test_accuracy"]
    lo, hi = study(m["experiment"])["mlp_keras_pytorch_accuracy_pct"]
    return [f"dense {net_text(m, c)}, {c['optimizer'].upper()} {c['learning_rate']:g}, "
            f"{c['epochs']} epochs ({seeds_text(c)})",
            f"**{mean_std(acc)} %** test accuracy (CI {ci(acc)}); {m['param_count']:,} params",
            f"{study(m['experiment'])['mlp_params_study']:,} params; curves only",
            f"Keras / PyTorch, same setup: {lo:g}-{hi:g} %"]


main = cli.entry_point(run, "configs/mlp.py", __doc__, __name__)
