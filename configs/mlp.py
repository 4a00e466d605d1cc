"""The study's dense classifier (section 2): 784-64-64-10, SGD lr 0.1, batch 128, 10 epochs.

    python -m experiments.mlp --workdir runs/mlp
    python -m experiments.mlp --workdir runs/mlp --config.seeds=16 --config.epochs=20
    python -m experiments.mlp --workdir runs/mlp_study --config.protocol=study   # val = test set
    python -m experiments.mlp --workdir runs/mlp_lr --config.sweep.learning_rate=[0.05,0.1,0.2]   # 3 values x 5 seeds
"""

import ml_collections

from configs import base

ENTRY = "experiments.mlp"  # the command that runs this config
REPRODUCE_ORDER = 1  # its place in `python -m experiments.reproduce`


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    c = base.get_config("mlp", seeds=5, epochs=10, learning_rate=0.1)
    c.model = ml_collections.ConfigDict({"kind": "mlp", "hidden": (64, 64), "keras_init": True})
    c.l2 = 0.0
    c.sweep = ml_collections.ConfigDict()  # {hyperparameter: [values]}: a grid of values x seeds in one program
    # the study's values and the literature's, as REPORT.md and the README quote them
    c.study = ml_collections.ConfigDict({"mlp_params_study": 55_050,
                                         "mlp_keras_pytorch_accuracy_pct": (96.8, 97.1)})  # Keras / PyTorch, same setup
    return base.sized(c, profile, seeds=3)
