"""The study's L2-regularization sweep (section 2D), done with 10 seeds per factor.

784-500-300-10, SGD lr 0.1, batch 128, 40 epochs; every (factor, seed) run of the grid is
trained by ONE vmapped program (70 runs by default; wall times in the README's results table).

    python -m experiments.sweep --workdir runs/l2_sweep
    python -m experiments.sweep --workdir runs/l2_quick --config configs/l2_sweep_quick.py
    python -m experiments.sweep --workdir runs/l2 --config.sweep.l2=[0,1e-4] --config.seeds=3
"""

import ml_collections

from configs import base

ENTRY = "experiments.sweep"  # the command that runs this config
REPRODUCE_ORDER = 2  # its place in `python -m experiments.reproduce`


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    c = base.get_config("l2_sweep", seeds=10, epochs=40, learning_rate=0.1, checkpoint_every=5)  # seeds per factor
    c.model = ml_collections.ConfigDict({"kind": "mlp", "hidden": (500, 300), "keras_init": True, "dropout": False})
    c.sweep = ml_collections.ConfigDict({"l2": [0.0, 1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3]})  # swept by vmap
    c.l2 = 0.0  # the base value the sweep replaces
    c.reference_errors = 160  # Hinton et al. (2012): standard backprop net, about 160 test errors
    c.reference_label = "Hinton et al. 2012, standard backprop net: 160 errors (1.6 %)"
    # the study's values and the literature's, as REPORT.md and the README quote them
    c.study = ml_collections.ConfigDict({
        "l2_study_best_test_accuracy_pct": (98.3, 98.6),  # the study, best test accuracy over epochs per factor
        "l2_study_runs_per_factor": 3,
        "hinton_errors": c.reference_errors, "hinton_error_pct": c.reference_errors / 100})
    return base.sized(c, profile, model__hidden=(100,), sweep__l2=[0.0, 1e-4, 1e-3], seeds=3, epochs=3,
                      checkpoint_every=1)


def sweeping(experiment: str, field: str, values: list[float]) -> ml_collections.ConfigDict:
    """This sweep's config, renamed `experiment`, sweeping the traced hyperparameter `field` over
    `values` instead of the L2 factor (whose value `l2` stays, at 0)."""
    c = get_config()
    c.experiment = experiment
    c.sweep = ml_collections.ConfigDict({field: values})
    return c
