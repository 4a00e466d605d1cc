"""Where run-to-run variance comes from, for the L2 sweep's net 784-500-300-10 (SGD 0.1, 40 epochs,
no L2), 10 runs per source:

    python -m experiments.variance_sources --workdir runs/vs_l2 --config configs/variance_sources_l2.py
"""

import ml_collections

from configs import variance_sources

ENTRY = "experiments.variance_sources"  # the command that runs this config


def get_config() -> ml_collections.ConfigDict:
    c = variance_sources.get_config()
    c.model = ml_collections.ConfigDict({"kind": "mlp", "hidden": (500, 300), "keras_init": True, "dropout": False})
    c.seeds = 10
    c.epochs = 40
    c.checkpoint_every = 5
    return c
