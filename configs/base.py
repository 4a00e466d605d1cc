"""What every experiment config shares: the run block and how a config sizes its quick profile.

    c = base.get_config("mlp", epochs=10)          # the run block with this experiment's values
    return base.sized(c, profile, seeds=3)         # the quick profile: these fields changed

Not an experiment itself: it has no ENTRY, so `reproduce` and the registry skip it.
"""

import ml_collections

PROFILES = ("full", "quick")
DROP = object()  # `sized(c, "quick", field=DROP)` removes the field from the quick profile


def get_config(experiment: str, **fields) -> ml_collections.ConfigDict:
    """The run block every experiment has, with `fields` set (and any new fields added)."""
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    c.seed = 0  # base seed; the runs use seed, seed + 1, ...
    c.seeds = 5  # runs trained side by side in one vmapped program
    c.epochs = 10
    c.batch_size = 128
    # any optax optimizer by name (adam, adamw, rmsprop, lion, ...) or "momentum" (SGD with momentum); its numeric
    # arguments that the config sets as fields (b1, eps, weight_decay, ...) are traced hyperparameters
    c.optimizer = "sgd"
    c.schedule = "constant"  # constant | cosine | warmup_cosine
    c.learning_rate = 0.1
    c.n_val = 5000  # held out from the 60,000 training images
    c.protocol = "holdout"  # or "study": train on 60,000, validate on the test set
    c.chunk_epochs = 1  # most epochs per call of the compiled program (progress, checkpoints between; ends on checkpoint epochs)
    c.checkpoint_every = 1  # epochs between checkpoints ...
    c.checkpoint_seconds = 30.0  # ... but not sooner than this after the last one (0: every time); the last epoch always
    c.tensorboard = True  # TensorBoard event files of every run in WORKDIR/tensorboard (mnist_jax.tensorboard)
    c.run_chunk = 0  # runs per program (0 = automatic: what the model says, see sweep.default_run_chunk)
    # precision (mnist_jax.precision): the dtype the models compute in (params and optimizer state stay float32), and
    # jax_default_matmul_precision while the experiment trains and evaluates ("default": TF32 on NVIDIA GPUs of compute
    # capability >= 8.0, full float32 on a CPU, which ignores it); metrics.json records both and what the backend did
    c.compute_dtype = "float32"  # float32 | bfloat16
    c.matmul_precision = "default"  # default | float32 | tensorfloat32 | bfloat16
    for name, value in fields.items():
        c[name] = value
    return c


def sized(c: ml_collections.ConfigDict, profile: str, **quick) -> ml_collections.ConfigDict:
    """`c` for `profile`: as it is for "full"; for "quick" with the `quick` fields set (a "__" in a
    name is a dot: `model__hidden=(100,)` sets c.model.hidden).

    The quick profile also checkpoints after every epoch (`checkpoint_seconds` 0): it is the smoke
    test of every path, interruption and resume included, and its epochs are seconds long."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected one of {PROFILES}")
    if profile == "quick":
        c.checkpoint_seconds = 0.0
        for dotted, value in quick.items():
            *parents, leaf = dotted.split("__")
            node = c
            for name in parents:
                node = node[name]
            if leaf not in node:
                raise KeyError(f"quick profile sets {dotted.replace('__', '.')!r}, which the config does not have")
            if value is DROP:
                del node[leaf]
            else:
                node[leaf] = value
    return c
