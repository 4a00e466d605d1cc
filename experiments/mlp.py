"""The dense classifier of the study's section 2, with its training curves.

    python -m experiments.mlp --workdir runs/mlp [--config.seeds=N] [--config.epochs=E]
"""

from __future__ import annotations

import pathlib
import sys

import jax
import ml_collections

from mnist_jax import experiment, models, plots, stats, sweep, tasks


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    return [config.seed + i for i in range(config.seeds)]


def describe(summary: dict) -> str:
    """'97.02 % ± 0.21' (mean ± std over the finite runs), or a note that every run diverged."""
    return stats.describe(summary)


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    data, data_seconds = experiment.load_data(config)
    model = models.from_config(config.model)
    task = tasks.classifier_task(model)
    hp, seeds = sweep.grid(seeds_of(config), learning_rate=[config.learning_rate], l2=[config.l2])
    result = experiment.train(config, workdir, task, hp, seeds, data)
    experiment.save_params(workdir, result.state.params)
    history = result.history
    diverged = experiment.divergence(history, seeds, hp)
    test_acc = experiment.final_of_finite(history, "test_accuracy")
    val_acc = experiment.final_of_finite(history, "val_accuracy")
    n_params = models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params))
    metrics = {
        "experiment": "mlp",
        "protocol": config.protocol,
        "param_count": n_params,
        "seeds": seeds,
        "history": history,
        "test_accuracy": {"per_seed": test_acc, **stats.summary(test_acc)},
        "test_errors": history["test_errors"][:, -1],
        "val_accuracy": {"per_seed": val_acc, **stats.summary(val_acc)},
        "diverged": diverged,
        "timing": experiment.timing(data_seconds, result),
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    widths = "-".join(str(w) for w in (784, *config.model.hidden, 10))
    val_name = "validation = test set (study protocol)" if config.protocol == "study" else f"validation = {config.n_val} held-out"
    plots.accuracy_curves(
        history, workdir / "accuracy.png",
        f"MLP {widths} ({n_params:,} params), {config.optimizer.upper()} lr {config.learning_rate}, "
        f"batch {config.batch_size}\n{len(seeds)} seeds; {val_name}; "
        f"final test accuracy {describe(metrics['test_accuracy'])}")
    print(f"test accuracy {describe(metrics['test_accuracy'])} over {len(seeds)} seeds")
    return metrics


def main(argv: list[str] | None = None) -> int:
    return experiment.main(run, argv, "configs/mlp.py", __doc__)


if __name__ == "__main__":
    sys.exit(main())
