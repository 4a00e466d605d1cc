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


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "denoise"
    c.model = ml_collections.ConfigDict({"kind": "dae", "hidden": (128,), "latent": 96, "keras_init": True})
    c.noise_levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # one autoencoder per level (and seed)
    c.seed = 0  # base seed; the runs use seed, seed + 1, ...; it also fixes the evaluation noise
    c.seeds = 2  # runs per level, trained side by side with all levels in one vmapped program
    c.epochs = 32
    c.batch_size = 64
    c.optimizer = "adam"
    c.schedule = "constant"
    c.learning_rate = 1e-3  # Keras' Adam default
    c.n_val = 5000  # held out from the 60,000 training images
    c.protocol = "holdout"
    c.figure_digits = 10  # test digits per row of denoise.png (the first test image of each class)
    c.chunk_epochs = 1  # epochs per call of the compiled program (progress, checkpoints between)
    c.checkpoint_every = 1
    c.run_chunk = 0  # runs per program (0 = automatic: all at once; conv nets on a CPU one at a time)
    return c
