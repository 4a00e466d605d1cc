"""The convolutional classifier of the study's section 3A, several seeds in one program.

    python -m experiments.cnn --workdir runs/cnn [--config.seeds=N] [--config.epochs=E]
    python -m experiments.cnn --workdir runs/cnn_best --config configs/cnn_best.py

Writes metrics.json (per-seed and mean test accuracy, whether `target_accuracy` was met,
per-epoch history, confusion matrix, timing), accuracy.png (curves over epochs) and
confusion.png (test-set confusion matrix summed over the seeds), and the trained params.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_jax import augment, experiment, models, plots, stats, sweep, tasks


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    return [config.seed + i for i in range(config.seeds)]


def architecture(model: models.CNN) -> str:
    """e.g. 'Conv32-Pool-Drop-Conv32-Dense32' (SAME padding and dense dropout marked)."""
    parts = []
    for f, pool in zip(model.filters, model.pool, strict=True):
        parts.append(f"Conv{f}" + ("s" if model.padding == "SAME" else ""))
        if pool:
            parts += ["Pool", "Drop"]
    if model.dense:
        parts.append(f"Dense{model.dense}" + ("-Drop" if model.dense_dropout else ""))
    return "-".join(parts)


def setup(config: ml_collections.ConfigDict, model_cfg=None):
    """(model, task) of a CNN config, with the random-shift augmentation when it asks for one."""
    model = models.from_config(model_cfg if model_cfg is not None else config.model)
    return model, tasks.classifier_task(model, augment=augment.from_config(config))


def confusion(model, params_runs, x: jax.Array, y: jax.Array) -> np.ndarray:
    """Confusion matrices (R, 10, 10) of each run's params (leading run axis) on (x, y)."""
    predict = jax.jit(lambda p: jnp.argmax(tasks.classifier_logits(model, p, x), axis=-1))
    n_runs = len(jax.tree_util.tree_leaves(params_runs)[0])
    y = np.asarray(y)
    out = np.zeros((n_runs, 10, 10), np.int64)
    for r in range(n_runs):
        pred = np.asarray(predict(jax.tree_util.tree_map(lambda a, r=r: a[r], params_runs)))
        np.add.at(out[r], (y, pred), 1)
    return out


def figures(config: ml_collections.ConfigDict, metrics: dict, workdir: pathlib.Path) -> None:
    """accuracy.png and confusion.png of a finished run, from its metrics (so they can be redrawn)."""
    history = {k: np.asarray(v) for k, v in metrics["history"].items()}
    n_seeds, acc = len(metrics["seeds"]), stats.describe(metrics["test_accuracy"])
    aug = f", random shifts ±{config.max_shift} px" if config.get("max_shift", 0) else ""
    model = f"CNN {metrics['architecture']} ({metrics['param_count']:,} params)"
    setting = (f"{config.optimizer} lr {config.learning_rate:g} {config.schedule}, dropout {config.dropout_rate:g}{aug}, "
               f"batch {config.batch_size}, {config.epochs} epochs")
    val_name = "validation = test set (study protocol)" if config.protocol == "study" else f"validation = {config.n_val} held-out"
    plots.accuracy_curves(history, workdir / "accuracy.png",
                          f"{model}\n{setting}\n{n_seeds} seeds; {val_name}; final test accuracy {acc}")
    plots.confusion_matrix(np.asarray(metrics["confusion_matrix"]["sum_over_seeds"]), workdir / "confusion.png",
                           f"Test-set confusion matrix, {model}\n{setting}\n{n_seeds} seeds, mean test accuracy {acc}",
                           n_runs=n_seeds)


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    data, data_seconds = experiment.load_data(config)
    model, task = setup(config)
    hp, seeds = sweep.grid(seeds_of(config), learning_rate=[config.learning_rate], dropout_rate=[config.dropout_rate])
    result = experiment.train(config, workdir, task, hp, seeds, data, convolutional=True)
    experiment.save_params(workdir, result.state.params)
    history = result.history
    diverged = experiment.divergence(history, seeds, hp)
    test_acc = experiment.final_of_finite(history, "test_accuracy")  # NaN for diverged runs: left out
    val_acc = experiment.final_of_finite(history, "val_accuracy")
    n_params = models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params))
    cm = confusion(model, result.state.params, data.test_x, data.test_y)
    summary = stats.summary(test_acc)
    timing = experiment.timing(data_seconds, result)
    timing["train_minutes"] = timing["train_seconds"] / 60
    timing["conv_impl"] = models.default_conv_impl() if model.conv_impl == "auto" else model.conv_impl
    metrics = {
        "experiment": config.experiment,
        "protocol": config.protocol,
        "architecture": architecture(model),
        "param_count": n_params,
        "seeds": seeds,
        "history": history,
        "test_accuracy": {"per_seed": test_acc, **summary},
        "test_errors": history["test_errors"][:, -1],
        "val_accuracy": {"per_seed": val_acc, **stats.summary(val_acc)},
        "target": {"mean_test_accuracy_at_least": config.target_accuracy,
                   "met": bool(summary["n"] and summary["mean"] >= config.target_accuracy)},
        "confusion_matrix": {"rows": "true digit", "columns": "predicted digit", "sum_over_seeds": cm.sum(0),
                             "per_seed": cm},
        "diverged_seeds": [d["seed"] for d in diverged],
        "diverged": diverged,
        "timing": timing,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    figures(config, metrics, workdir)
    met = "met" if metrics["target"]["met"] else "NOT met"
    print(f"test accuracy {stats.describe(summary)} over {len(seeds)} seeds "
          f"(per seed {', '.join(f'{100 * a:.2f}' for a in test_acc)}); target {100 * config.target_accuracy:.1f} % {met}; "
          f"training {timing['train_seconds']:.0f} s + compile {timing['compile_seconds']:.0f} s")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return experiment.main(run, argv, "configs/cnn.py", __doc__, accepts=("cnn_best",))


if __name__ == "__main__":
    sys.exit(main())
