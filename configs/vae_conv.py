"""The convolutional VAE: the vae stage's run, evaluation and judge (configs/vae.py), with a
convolutional encoder and decoder.

    python -m experiments.vae --workdir runs/vae_conv --config configs/vae_conv.py
    python -m experiments.vae --workdir runs/vae_conv_q --config configs/vae_conv.py:quick    # about a minute

Ablations, one config line each (every report names them, with seeds and CIs):

    --config.kl_warmup_epochs=10          # KL warm-up: its weight rises linearly from 0 to 1 over 10 epochs
    --config.train_iwae_k=5               # trained on the IWAE bound with 5 importance samples
    --config.model.latent=16              # latent size
    --config.sample_temperature=0.7       # samples from N(0, 0.7^2 I): the NLL is unchanged, the samples are not
    --config.model.conditional=True       # a conditional model: per digit, the share judged as that digit

Convolutional layers train one run at a time on a CPU (the model's `vmap_slow_on`), so its seeds
are one program each there, vmapped elsewhere.
"""

import ml_collections

from configs import base, vae

ENTRY = "experiments.vae"  # the command that runs this config
REPRODUCE_ORDER = 10  # its place in `python -m experiments.reproduce`: right after the dense vae


def get_config(profile: str = "full") -> ml_collections.ConfigDict:
    c = vae.get_config("full")
    c.experiment = "vae_conv"
    # Conv 32 3x3 /2 -> Conv 64 3x3 /2 -> Dense 256 -> latent 32, and the mirror image back.
    c.model.conv = True
    c.model.hidden = (256,)
    c.model.conv_impl = "auto"  # the fastest measured on the backend: kernels.default_strided_conv_impl
    c.train_images = 0  # train on the first N images of the training split (0 = all 55,000)
    # The quick profile adds well under a minute to the job on a CPU: 2 seeds (a spread and a CI) x 2 epochs on the
    # first 1,000 training images and 1,000 validation images, so a run-epoch is mostly its evaluation on the test set
    # (about a tenth of a full run-epoch); no 2-D map (the dense vae's quick profile trains one; here it would compile
    # a second convolutional program).
    return base.sized(c, profile, seeds=2, epochs=2, train_images=1000, n_val=1000, iwae_images=100, iwae_k=100,
                      n_samples=1000, map_epochs=0, classifier__epochs=1, classifier__model__kind="mlp",
                      classifier__dropout_rate=base.DROP)
