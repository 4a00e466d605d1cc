"""The study's CNN search (section 3A) in three rounds, each candidate trained with several
seeds side by side and chosen on the validation split (the test set is only reported).

    python -m experiments.cnn_search --workdir runs/cnn_search
    python -m experiments.cnn_search --workdir runs/cnn_search_smoke --config.seeds=2 --config.epochs=1 \
        --config.train_images=2000

Round 1: filters of both conv layers in `filters_candidates`, no hidden dense layer.
Round 2: a dense layer of `dense_candidates` units after flatten (0 = none, round 1's winner).
Round 3: dropout rate in `dropout_rates`; rates are traced, so the whole round is one program
(`dropout_rate`, which rounds 1 and 2 used, is round 2's winner again and is not retrained).
Each round builds on the previous round's choice (the highest mean validation accuracy).
"""

import ml_collections

from configs import base, cnn

ENTRY = "experiments.cnn_search"  # the command that runs this config
REPRODUCE_ORDER = 5  # its place in `python -m experiments.reproduce`


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    c = cnn.get_config()
    c.experiment = "cnn_search"
    del c.sweep  # its rounds choose their candidates themselves
    c.model.dense = 0  # round 1 has no hidden dense layer; rounds 2 and 3 set it
    c.seeds = 3
    c.epochs = 6
    c.schedule = "constant"  # the study's Keras setup: Adam at its default fixed learning rate
    c.learning_rate = 1e-3
    c.filters_candidates = [32, 64, 128]
    c.dense_candidates = [0, 32, 64, 128]
    c.dropout_rates = [0.5, 0.65, 0.8]
    del c["target_accuracy"]  # the search chooses; it has no accuracy target
    c.alpha = 0.05  # Welch test level for "matters beyond seed noise"
    return base.sized(c, profile, seeds=2, epochs=1, train_images=1000, filters_candidates=[8, 16],
                      dense_candidates=[0, 16], dropout_rates=[0.5, 0.8])
