"""A small L2 sweep for CI and a first look: 3 factors x 3 seeds, 784-100-10, 3 epochs.

    python -m experiments.sweep --workdir runs/l2_quick --config configs/l2_sweep_quick.py
"""

import ml_collections

from configs import l2_sweep

ENTRY = "experiments.sweep"  # the command that runs this config


def get_config() -> ml_collections.ConfigDict:
    return l2_sweep.get_config("quick")
