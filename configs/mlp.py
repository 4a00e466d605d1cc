"""The study's dense classifier (section 2): 784-64-64-10, SGD lr 0.1, batch 128, 10 epochs.

    python -m experiments.mlp --workdir runs/mlp
    python -m experiments.mlp --workdir runs/mlp --config.seeds=16 --config.epochs=20
    python -m experiments.mlp --workdir runs/mlp_study --config.protocol=study   # val = test set
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "mlp"
    c.model = ml_collections.ConfigDict({"kind": "mlp", "hidden": (64, 64), "keras_init": True})
    c.seed = 0  # base seed; the runs use seed, seed + 1, ...
    c.seeds = 5  # runs trained side by side in one vmapped program
    c.epochs = 10
    c.batch_size = 128
    c.optimizer = "sgd"
    c.schedule = "constant"
    c.learning_rate = 0.1
    c.l2 = 0.0
    c.n_val = 5000  # held out from the 60,000 training images
    c.protocol = "holdout"  # or "study": train on 60,000, validate on the test set
    c.chunk_epochs = 1  # epochs per call of the compiled program (progress, checkpoints between)
    c.checkpoint_every = 1
    c.run_chunk = 0  # runs per program (0 = automatic: all at once; conv nets on a CPU one at a time)
    return c
