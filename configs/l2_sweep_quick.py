"""A small L2 sweep for CI and a first look: 3 factors x 3 seeds, 784-100-10, 3 epochs.

    python -m experiments.l2_sweep --workdir runs/l2_quick --config configs/l2_sweep_quick.py
"""

import ml_collections

from configs import l2_sweep


def get_config() -> ml_collections.ConfigDict:
    c = l2_sweep.get_config()
    c.model.hidden = (100,)
    c.l2_factors = [0.0, 1e-4, 1e-3]
    c.seeds = 3
    c.epochs = 3
    c.checkpoint_every = 1
    return c
