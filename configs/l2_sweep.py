"""The study's L2-regularization sweep (section 2D), done with 10 seeds per factor.

784-500-300-10, SGD lr 0.1, batch 128, 40 epochs; every (factor, seed) run of the grid is
trained by ONE vmapped program (70 runs by default; wall times in the README's results table).

    python -m experiments.l2_sweep --workdir runs/l2_sweep
    python -m experiments.l2_sweep --workdir runs/l2_quick --config configs/l2_sweep_quick.py
    python -m experiments.l2_sweep --workdir runs/l2 --config.l2_factors=[0,1e-4] --config.seeds=3
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "l2_sweep"
    c.model = ml_collections.ConfigDict({"kind": "mlp", "hidden": (500, 300), "keras_init": True, "dropout": False})
    c.sweep_field = "l2"  # the traced hyperparameter swept by vmap
    c.l2_factors = [0.0, 1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    c.seed = 0
    c.seeds = 10  # seeds per factor
    c.epochs = 40
    c.batch_size = 128
    c.optimizer = "sgd"
    c.schedule = "constant"
    c.learning_rate = 0.1
    c.l2 = 0.0  # base value of the hyperparameters that are not swept
    c.n_val = 5000
    c.protocol = "holdout"
    c.reference_errors = 160  # Hinton et al. (2012): standard backprop net, about 160 test errors
    c.reference_label = "Hinton et al. 2012, standard backprop net: 160 errors (1.6 %)"
    c.chunk_epochs = 1
    c.checkpoint_every = 5
    c.run_chunk = 0  # runs per compiled program (0 = automatic: all at once for this dense net)
    return c
