"""Classification accuracy against salt-and-pepper noise level, with and without denoising
(the study's section 4C).

For every noise level and seed, one run each of: (a) a classifier trained and tested on noisy
images; (b) the same classifier on images denoised first by the autoencoder trained at that
level (train and test); (c) a classifier trained on clean images, tested on noisy ones. Each
of the three trainings (and the autoencoders of (b)) is one vmapped program over levels x
seeds; noise is drawn afresh inside every training step; all three are tested on the same
corrupted test images.

    python -m experiments.noise_accuracy --workdir runs/noise_accuracy
    python -m experiments.noise_accuracy --workdir runs/na_smoke --config.seeds=2 --config.epochs=1 \
        --config.denoiser_epochs=0 --config.noise_levels=[0.0,0.5,1.0]   # autoencoders 1 epoch too
    # the study's CNN as the classifier (Adam lr 1e-3, dropout 0.5):
    python -m experiments.noise_accuracy --workdir runs/noise_accuracy_cnn --config.classifier.kind=cnn \
        --config.optimizer=adam --config.learning_rate=0.001
"""

import ml_collections

from configs import base

ENTRY = "experiments.noise_accuracy"  # the command that runs this config
REPRODUCE_ORDER = 8  # its place in `python -m experiments.reproduce`


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    # The study's settings: the classifier trains as in section 2 (10 epochs, SGD lr 0.1, batch
    # 128), the autoencoders as in section 4A (32 epochs). seeds: runs per level and curve.
    c = base.get_config("noise_accuracy", seeds=3, epochs=10, learning_rate=0.1)
    c.noise_levels = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # The classifier of all three curves: `models.from_config({"kind": kind, **classifier[kind]})`,
    # so --config.classifier.kind=cnn switches to the study's CNN and each kind keeps its fields.
    c.classifier = ml_collections.ConfigDict({
        "kind": "mlp",
        "mlp": ml_collections.ConfigDict({"hidden": (64, 64), "keras_init": True}),
        # a block may also give the model's traced call arguments, such as the CNN's dropout rate
        "cnn": ml_collections.ConfigDict({"filters": (32, 32), "pool": (True, False), "dense": 32, "keras_init": True,
                                          "dropout_rate": 0.5}),
    })
    # The autoencoders of curve (b): the study's, one per noise level and seed.
    c.denoiser = ml_collections.ConfigDict({
        "model": ml_collections.ConfigDict({"kind": "dae", "hidden": (128,), "latent": 96, "keras_init": True}),
        "batch_size": 64, "optimizer": "adam", "learning_rate": 1e-3})
    c.denoiser_epochs = 32  # 0 = the same as epochs; the study trained its autoencoder 32 epochs
    return base.sized(c, profile, noise_levels=[0.0, 0.4, 0.8], seeds=2, epochs=1, denoiser_epochs=0)
