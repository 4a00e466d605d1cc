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
`all` (every stream varies: runs with different seeds, as every other experiment trains them);
`precision` (the first `precision_seeds` runs of `all` again in bfloat16 compute) and `one_bit_bf16`
(the first `precision_seeds` runs of `one_bit` in bfloat16 compute), a second program.
"""

import ml_collections

from configs import base

ENTRY = "experiments.variance_sources"  # the command that runs this config
REPRODUCE_ORDER = 11  # its place in `python -m experiments.reproduce`


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    # seed: every stream of the base run; varied streams use seed + 1, seed + 2, ...; seeds: runs per source
    c = base.get_config("variance_sources", seeds=20, epochs=10, learning_rate=0.1)
    c.model = ml_collections.ConfigDict({"kind": "mlp", "hidden": (64, 64), "keras_init": True})
    c.sources = ("init", "order", "one_bit", "bootstrap", "all", "precision", "one_bit_bf16")
    # runs of each bfloat16 arm (`precision`, `one_bit_bf16`; at most `seeds`): the first of 'all' and 'one_bit' again
    c.precision_seeds = 10
    c.l2 = 0.0
    c.max_shift = 0  # random shifts of up to this many pixels (the `augment` stream); 0 = off
    c.differences_pct = (0.05, 0.1, 0.2, 0.5)  # accuracy differences (% points) for the power table
    c.alpha = 0.05
    c.power = 0.8
    c.test_resamples = 2000  # bootstrap resamples of the test images for one model's sampling std
    return base.sized(c, profile, seeds=3, epochs=2, test_resamples=200, precision_seeds=3)
