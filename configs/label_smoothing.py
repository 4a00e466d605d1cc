"""Beyond the study: label smoothing swept as a traced hyperparameter, 784-500-300-10.

The example of docs/extending.md (a new traced hyperparameter): the classifier task reads `label_smoothing`
when its config has that field (`tasks.classifier_task(..., label_smoothing=True)`), and this
file sweeps it with the L2 sweep's experiment, every (value, seed) run in one vmapped program.

    python -m experiments.sweep --workdir runs/label_smoothing --config configs/label_smoothing.py
"""

import ml_collections

from configs import base, l2_sweep

ENTRY = "experiments.sweep"  # the command that runs this config
REPRODUCE_ORDER = 12  # its place in `python -m experiments.reproduce`


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    c = l2_sweep.sweeping("label_smoothing", "label_smoothing", [0.0, 0.05, 0.1, 0.2])
    c.label_smoothing = 0.0  # its base value (read by the task because the field exists)
    c.seeds = 5
    c.epochs = 20
    return base.sized(c, profile, model__hidden=(100,), sweep__label_smoothing=[0.0, 0.1], seeds=2, epochs=2,
                      checkpoint_every=1)
