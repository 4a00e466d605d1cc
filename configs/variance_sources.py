"""Where run-to-run variance comes from: the study's dense net 784-64-64-10, SGD 0.1, 10 epochs.

For each source of randomness (`sources`), `seeds` runs where only that source varies, and
`seeds` runs where all of them vary, all trained as ONE vmapped program:

    python -m experiments.variance_sources --workdir runs/variance_sources
    python -m experiments.variance_sources --workdir runs/vs_smoke --config.seeds=3 --config.epochs=2
    python -m experiments.variance_sources --workdir runs/vs_l2 --config configs/variance_sources_l2.py
    python -m experiments.variance_sources --workdir runs/vs_cnn --config configs/variance_sources_cnn.py

Sources: a stream of `mnist_jax.train.STREAMS` (init, order, dropout, noise, augment) varied
alone; `one_bit` (the lowest mantissa bit of one initial weight flipped, a different weight per
run); `bootstrap` (the training set resampled with replacement, a different resampling per run);
`all` (every stream varies: runs with different seeds, as every other experiment trains them).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "variance_sources"
    c.model = ml_collections.ConfigDict({"kind": "mlp", "hidden": (64, 64), "keras_init": True})
    c.sources = ("init", "order", "one_bit", "bootstrap", "all")
    c.seed = 0  # every stream of the base run; varied streams use seed + 1, seed + 2, ...
    c.seeds = 20  # runs per source
    c.epochs = 10
    c.batch_size = 128
    c.optimizer = "sgd"
    c.schedule = "constant"
    c.learning_rate = 0.1
    c.l2 = 0.0
    c.dropout_rate = 0.0  # read only by a model with dropout (traced)
    c.input_dropout_rate = 0.0
    c.max_shift = 0  # random shifts of up to this many pixels (the `augment` stream); 0 = off
    c.differences_pct = (0.05, 0.1, 0.2, 0.5)  # accuracy differences (% points) for the power table
    c.alpha = 0.05
    c.power = 0.8
    c.test_resamples = 2000  # bootstrap resamples of the test images for one model's sampling std
    c.n_val = 5000
    c.protocol = "holdout"
    c.chunk_epochs = 1
    c.checkpoint_every = 1
    c.run_chunk = 0  # runs per program (0 = automatic: all at once; conv nets on a CPU one at a time)
    return c
