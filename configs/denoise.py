"""The study's denoising autoencoder (section 4A/4B), one per salt-and-pepper noise level.

Every noise level x seed is one run of a single vmapped program: 784-128-96-128-784, ReLU,
sigmoid output, binary cross-entropy against the clean image, Adam, batch 64, 32 epochs;
the noise is drawn afresh inside every training step.

    python -m experiments.denoise --workdir runs/denoise
    python -m experiments.denoise --workdir runs/denoise_smoke --config.seeds=2 --config.epochs=1
    python -m experiments.denoise --workdir runs/denoise --config.noise_levels=[0.2,0.4,0.6]
    python -m experiments.evaluate --workdir runs/denoise --images noisy.npy --out clean.npy --level 0.4
"""

import ml_collections

from configs import base

ENTRY = "experiments.denoise"  # the command that runs this config
REPRODUCE_ORDER = 7  # its place in `python -m experiments.reproduce`


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    # seeds: runs per level, trained side by side with all levels in one vmapped program; the
    # seed also fixes the evaluation noise
    c = base.get_config("denoise", seeds=2, epochs=32, batch_size=64, optimizer="adam", learning_rate=1e-3)
    c.model = ml_collections.ConfigDict({"kind": "dae", "hidden": (128,), "latent": 96, "keras_init": True})
    c.noise_levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # one autoencoder per level (and seed)
    c.figure_digits = 10  # test digits per row of denoise.png (the first test image of each class)
    return base.sized(c, profile, noise_levels=[0.2, 0.4, 0.7], seeds=2, epochs=2)
