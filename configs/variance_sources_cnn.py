"""Where run-to-run variance comes from, for the study's CNN (Conv32-Pool-Drop-Conv32-Dense32, Adam
2e-3 cosine, dropout 0.5, 8 epochs), 10 runs per source, the dropout stream among them:

    python -m experiments.variance_sources --workdir runs/vs_cnn --config configs/variance_sources_cnn.py

On a CPU conv nets train one run at a time (hours for the 60 runs); meant for a GPU.
"""

import ml_collections

from configs import cnn, variance_sources

ENTRY = "experiments.variance_sources"  # the command that runs this config


def get_config() -> ml_collections.ConfigDict:
    c = variance_sources.get_config()
    model = cnn.get_config()
    c.model = model.model
    # no bfloat16 arms: a second convolutional program (add "precision", "one_bit_bf16" to train them too)
    c.sources = ("init", "order", "dropout", "one_bit", "bootstrap", "all")
    c.seeds = 10
    for field in ("epochs", "batch_size", "optimizer", "schedule", "learning_rate", "dropout_rate", "max_shift"):
        c[field] = model[field]
    return c
