"""A variational autoencoder that generates digits: negative ELBO, IWAE log-likelihood, samples
judged by a classifier, and the figures.

    python -m experiments.vae --workdir runs/vae [--config.seeds=N] [--config.epochs=E] [--config.iwae_images=N]

Writes metrics.json, samples.npy (prior samples of run 0 as Bernoulli means, (N, 28, 28) float32
in [0, 1]), vae_samples.png, vae_reconstructions.png, vae_latent.png, vae_interpolation.png,
vae_elbo.png and, for a conditional model, vae_conditional.png.
"""

from __future__ import annotations

import functools
import pathlib
import time

import jax
import ml_collections
import numpy as np
from scipy import special

from mnist_jax import (
    cli,
    distributed,
    generative,
    models,
    plots,
    preflight,
    registry,
    rehearsal,
    results,
    stats,
    sweep,
    tasks,
    trained,
    training,
)
from mnist_jax.config import ConfigError
from mnist_jax.precision import compute_dtype_of
from mnist_jax.report import ci, figure, mean_std, pct, seeds_text, study, table, timing_line
from mnist_jax.train import TrainSpec

# Pairs of digit classes interpolated in vae_interpolation.png (first test image of each class).
INTERPOLATION_PAIRS = ((3, 8), (1, 7), (4, 9), (0, 6), (2, 5))
N_RECONSTRUCTIONS = 12
MAP_GRID = 20  # decoded manifold of vae_latent.png: MAP_GRID x MAP_GRID latents
ENTRY = "experiments.vae"

# The literature anchors of the comparison table: `study` field -> (what was measured, the column
# it is compared in: "nll" or "neg_elbo", ...); the values live in the config's `study` block.
ANCHORS = {  # ... and the short name of the README's row; one starting with "conv" is the convolutional row's
    "burda2016_vae_nll_nats": ("Burda et al. 2016: dense VAE, two stochastic layers, NLL (k = 5000)", "nll",
                               "Burda et al. 2016"),
    "burda2016_iwae_nll_nats": ("Burda et al. 2016: the same trained with the IWAE bound", "nll",
                                "IWAE-trained"),
    "conv_hierarchical_vae_nll_nats": ("convolutional and hierarchical VAEs", "nll",
                                       "conv and hierarchical VAEs, nats NLL"),
    "nvae_nll_nats": ("NVAE (Vahdat & Kautz 2020)", "nll", "conv: NVAE"),
    "flax_vae_neg_elbo_nats": ("flax examples/vae, 10 epochs", "neg_elbo", "flax examples/vae ELBO"),
}


def is_vae_experiment(name: str | None) -> bool:
    """Whether experiment `name` is run by this module (the dense vae, vae_conv, ...)."""
    return name is not None and ENTRY in registry.entries_of(name)


def build(block: ml_collections.ConfigDict, where: str, compute_dtype: str = "float32"):
    """models.from_config (computing in `compute_dtype`) with user errors as ConfigError."""
    try:
        return models.from_config(block, compute_dtype)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config.{where}: {err}") from None


def check(config: ml_collections.ConfigDict) -> None:
    """What the generic validation cannot check, before any training starts."""
    if config.model.kind != "vae":
        raise ConfigError(f"config.model.kind={config.model.kind!r}: this experiment trains a 'vae'")
    build(config.model, "model", compute_dtype_of(config))
    cls = config.classifier
    if cls.workdir:
        path = pathlib.Path(cls.workdir)
        if not (path / "config.json").is_file() or not (path / classifier_params_dir(path)).is_dir():
            raise ConfigError(f"config.classifier.workdir={cls.workdir!r} is neither a finished classifier workdir "
                              "(config.json, params/) nor a vae workdir that trained one (config.json, classifier_params/)")
        cls_config = trained.read_json(path / "config.json")
        block = cls_config.get("classifier", {}) if is_vae_experiment(cls_config.get("experiment")) else cls_config
        model_block = block.get("model", {}) if isinstance(block, dict) else {}
        kind = model_block.get("kind") if isinstance(model_block, dict) else None
        if not kind or not models.is_classifier(build(ml_collections.ConfigDict(model_block), "classifier.workdir",
                                                       compute_dtype_of(cls_config))):
            raise ConfigError(f"config.classifier.workdir={cls.workdir!r} holds a {kind!r} model of experiment "
                              f"{cls_config.get('experiment')!r}, not a classifier (images -> 10 logits)")
    elif not models.is_classifier(build(cls.model, "classifier.model", compute_dtype_of(config))):
        raise ConfigError(f"config.classifier.model.kind={cls.model.kind!r} is not allowed: the samples are judged "
                          "by a classifier (a model from images to 10 logits)")


def classifier_params_dir(workdir: pathlib.Path) -> str:
    """Where a workdir keeps classifier params: params/ of a classifier experiment, classifier_params/ of a vae one."""
    config_path = workdir / "config.json"
    is_vae = config_path.is_file() and is_vae_experiment(trained.read_json(config_path).get("experiment"))
    return "classifier_params" if is_vae else "params"


def run_params(params, i: int):
    """The params of run i from a tree with a leading run axis."""
    return jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a[i])), params)


def final(history: dict, key: str) -> dict:
    """The last epoch's `key` per run (NaN for a diverged run) and their summary."""
    values = results.final_of_finite(history, key)
    return {"per_seed": values, **stats.summary(values)}


def vae_training(config, model_cfg, seeds) -> training.Training:
    """The training of VAEs of `model_cfg`, one per seed."""
    model = build(model_cfg, "model", compute_dtype_of(config))
    task = tasks.vae_from_config(model, config)
    hp, seeds = sweep.grid(seeds, **training.hparams(config, task))
    return training.Training(config, task, hp, seeds, model=model)


def train_vae(workdir, data, plan: training.Training, name):
    """(model, SweepResult) of a `vae_training`, trained (with its compiled programs, if prepared)."""
    return plan.model, plan.train(workdir, data, name, metric="val_neg_elbo")


def classifier_spec(config) -> TrainSpec:
    """The static training setup of the judge's classifier."""
    cls = config.classifier
    return TrainSpec(epochs=min(cls.epochs, config.epochs), batch_size=cls.batch_size, optimizer=cls.optimizer,
                     schedule=cls.schedule)


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: the VAE's, its evaluation's and figures', and the
    judge's classifier (its workdir, or the settings it is trained with here)."""
    check(config)
    vae = build(config.model, "model", compute_dtype_of(config))
    own = [*preflight.RUN_FIELDS, "model", "iwae_k", "iwae_images", "iwae_batch", "n_samples", "digits", "map_epochs",
           "study", "train_iwae_k", "sample_temperature", *preflight.task_reads(config, tasks.vae_from_config(vae, config))]
    cls = config.classifier
    if cls.workdir:  # the judge comes from that workdir: the settings to train one here do not apply
        return [*own, "classifier"]
    task = tasks.classifier_task(build(cls.model, "classifier.model", compute_dtype_of(config)))
    return [*own, *(f"classifier.{f}" for f in ("workdir", "model", "seed", "epochs", "batch_size", "optimizer", "schedule")),
            *preflight.task_reads(cls, task, classifier_spec(config), prefix="classifier.")]


def runs(config: ml_collections.ConfigDict) -> int:
    """Runs in its one grid: a VAE per seed."""
    return config.seeds


def classifier_training(config) -> training.Training | None:
    """The training of the judge's classifier when this run trains it, else None."""
    cls = config.classifier
    if cls.workdir:
        return None
    model = build(cls.model, "classifier.model", compute_dtype_of(config))
    spec = classifier_spec(config)
    task = tasks.classifier_task(model)
    hp, seeds = sweep.grid([cls.seed], **training.hparams(cls, task, spec))
    return training.Training(config, task, hp, seeds, spec, model)


def map_training(config) -> training.Training | None:
    """The training of the 2-D VAE drawn in vae_latent.png (its config: `model` the 2-D block,
    `epochs` the map's), or None when the main model is 2-D and unconditional (it draws the map)
    or `map_epochs` is 0."""
    if (config.model.latent == 2 and not config.model.conditional) or config.map_epochs <= 0:
        return None
    map_config = ml_collections.ConfigDict(config.to_dict())
    map_config.model = ml_collections.ConfigDict(config.model.to_dict() | {"latent": 2, "conditional": False})
    map_config.epochs = min(config.epochs, config.map_epochs)
    return vae_training(map_config, map_config.model, [config.seed])


def prepare_side_trainings(config, data) -> dict[str, training.Training]:
    """{"classifier", "vae_2d"}: the judge's classifier and the 2-D VAE (those this run trains),
    prepared: their programs compile in the background from now on while the main VAEs train."""
    plans = {"classifier": classifier_training(config), "vae_2d": map_training(config)}
    return {name: plan.prepare(data) for name, plan in plans.items() if plan is not None}


def get_classifier(config, workdir: pathlib.Path, data, prepared: training.Training | None = None) -> tuple:
    """(model, params, info) of the classifier that judges the samples: loaded or trained here
    (`prepared`: its training from `prepare_side_trainings`, if any)."""
    cls = config.classifier
    if cls.workdir:
        path = pathlib.Path(cls.workdir)
        cls_config = trained.read_json(path / "config.json")
        if classifier_params_dir(path) == "classifier_params":  # the classifier a vae run trained
            model = build(ml_collections.ConfigDict(cls_config["classifier"]["model"]), "classifier.workdir",
                          compute_dtype_of(cls_config))
            params = run_params(trained.load_params(path, models.init_shapes(model, runs=1), "classifier_params"), 0)
            info = {"source": f"the classifier trained by the vae run in {cls.workdir}",
                    "model": cls_config["classifier"]["model"]}
        else:
            model, params = trained.restore_run(path, cls_config["model"], 0,
                                                 compute_dtype=compute_dtype_of(cls_config))
            info = {"source": f"run 0 of {cls.workdir}", "model": cls_config["model"]}
    else:
        plan = prepared or classifier_training(config)
        model, spec = plan.model, plan.spec
        result = plan.train(workdir, data, "classifier")
        trained.save_params(workdir, result.state.params, "classifier_params", trained.grid_declaration(
            model, plan.hp, plan.seeds, result.history, "the classifier that judges the samples"))
        params = run_params(result.state.params, 0)
        info = {"source": "trained in this run", "model": cls.model.to_dict(), "epochs": spec.epochs,
                "optimizer": cls.optimizer, "learning_rate": cls.learning_rate, "seed": cls.seed,
                "val_accuracy": float(result.history["val_accuracy"][0, -1]), "timing": result.timing}
    info["kind"] = info["model"]["kind"]
    return model, params, info


def iwae_per_seed(model, params_all, n_runs: int, x_bin, labels, key, k: int, batch: int) -> dict:
    """IWAE bound and k-sample ELBO (mean over images, nats) of every run, with timing."""
    ll, elbo, seconds = [], [], []
    for i in range(n_runs):
        start = time.perf_counter()
        bound, elbo_k = jax.block_until_ready(_iwae(model, run_params(params_all, i), x_bin, labels,
                                                    jax.random.fold_in(key, i), k, batch))
        seconds.append(time.perf_counter() - start)
        ll.append(float(bound.mean()))
        elbo.append(float(elbo_k.mean()))
        print(f"IWAE run {i}: log p(x) >= {ll[-1]:.2f} nats (k={k}, {x_bin.shape[0]} images, {seconds[-1]:.0f} s)")
    ll, elbo = np.array(ll), np.array(elbo)
    return {
        "k": k,
        "images": int(x_bin.shape[0]),
        "log_likelihood": {"per_seed": ll, **stats.summary(ll)},
        "nll": {"per_seed": -ll, **stats.summary(-ll)},
        "neg_elbo_same_images": {"per_seed": -elbo, **stats.summary(-elbo)},
        "seconds_per_run": seconds,
    }


def sample_labels(conditional: bool, n: int) -> np.ndarray:
    """Labels the samples are drawn with: digits 0-9 in turn for a conditional model (ignored otherwise)."""
    return np.arange(n, dtype=np.int32) % 10 if conditional else np.zeros(n, np.int32)


# The programs below take the model as a static argument and the params as arguments, so every run
# and every call with the same shapes shares one compiled program (a closure over the params would
# bake them into the program as constants and compile once per call).

@functools.partial(rehearsal.jit, static_argnums=(0, 5, 6))
def _iwae(model, params, x_bin, labels, key, k: int, batch: int):
    return generative.iwae_log_likelihood(*generative.vae_functions(model, params), x_bin, labels, key, k, batch)


@functools.partial(rehearsal.jit, static_argnums=(0, 4))
def _draw(model, params, key, labels, temperature: float = 1.0):
    return generative.sample_prior(generative.vae_functions(model, params)[1], key, labels, model.latent,
                                   temperature=temperature)


@functools.partial(rehearsal.jit, static_argnums=0)
def _posterior_means(model, params, x_bin, labels):
    encode = generative.vae_functions(model, params)[0]
    return generative.map_batches(lambda xb, yb: encode(xb, yb)[0], (x_bin, labels), 1000)


@functools.partial(rehearsal.jit, static_argnums=0)
def _decode_means(model, params, z, labels):
    return jax.nn.sigmoid(generative.vae_functions(model, params)[1](z, labels))


def draw(model, params, key, labels, temperature: float = 1.0) -> np.ndarray:
    return np.asarray(_draw(model, params, key, labels, float(temperature)))


def posterior_means(model, params, x_bin, labels) -> np.ndarray:
    return np.asarray(_posterior_means(model, params, x_bin, labels))


def decode_means(model, params, z, labels) -> np.ndarray:
    return np.asarray(_decode_means(model, params, np.asarray(z, np.float32), np.asarray(labels, np.int32)))[..., 0]


def objective(config: ml_collections.ConfigDict) -> dict:
    """The training objective of a config, for metrics.json: the importance samples of its bound
    (1: the ELBO) and the epochs of its KL warm-up (0: none)."""
    k = int(config.get("train_iwae_k", 1))
    return {"train_iwae_k": k, "kl_warmup_epochs": float(config.get("kl_warmup_epochs", 0.0)),
            "bound": "ELBO (one sample, analytic KL)" if k == 1 else f"IWAE bound, k = {k} importance samples"}


def prior_text(temperature: float) -> str:
    """How the latents of the samples are drawn: 'z ~ N(0, I)', or 'z ~ N(0, 0.7² I)' below temperature 1."""
    return "z ~ N(0, I)" if temperature == 1.0 else f"z ~ N(0, {temperature:g}² I)"


def arch_text(model_cfg) -> str:
    """'dense 784-512-256-32' or 'convolutional Conv32/2-Conv64/2-Dense256-32'."""
    if model_cfg["conv"]:
        return f"convolutional Conv32/2-Conv64/2-Dense{model_cfg['hidden'][-1]}-{model_cfg['latent']}"
    return "dense " + "-".join(str(w) for w in (784, *model_cfg["hidden"], model_cfg["latent"]))


def describe(model_cfg, n_params: int) -> str:
    arch = arch_text(model_cfg)
    cond = ", class-conditional" if model_cfg.conditional else ""
    return f"VAE ({arch}, latent {model_cfg.latent}{cond}, {n_params:,} params)"


def judge_samples(config: ml_collections.ConfigDict, workdir: pathlib.Path, data, model, result, base_key,
                  prepared_classifier: training.Training | None = None):
    """Prior samples of every run judged by a classifier (`prepared_classifier`: its training from
    `prepare_side_trainings`, if any): (samples, the sample_quality block of metrics.json, seconds
    per run to draw them); run 0's samples go to samples.npy."""
    seeds = training.seeds_of(config)
    history = result.history
    cond = bool(config.model.conditional)
    # Samples from the prior, judged by a classifier.
    labels = sample_labels(cond, config.n_samples)
    start = time.perf_counter()
    temperature = config.get("sample_temperature", 1.0)
    samples = [draw(model, run_params(result.state.params, i), jax.random.fold_in(jax.random.fold_in(base_key, 2), i),
                    labels, temperature) for i in range(len(seeds))]
    sample_seconds = (time.perf_counter() - start) / len(seeds)
    if distributed.is_writer():  # in a multi-process run, process 0 alone writes the workdir
        np.save(workdir / "samples.npy", samples[0].astype(np.float32))
    cls_model, cls_params, cls_info = get_classifier(config, workdir, data, prepared_classifier)
    test_x = np.asarray(data.test_x)  # host copies: indexing a device array eagerly compiles a program
    test_probs, test_feats = generative.classify(cls_model, cls_params, test_x)
    _, train_feats = generative.classify(cls_model, cls_params, np.asarray(data.train_x)[: test_x.shape[0]])
    cls_info["test_accuracy"] = float(np.mean(test_probs.argmax(-1) == np.asarray(data.test_y)))
    per_seed, predicted = [], []
    diverged = np.asarray(history["diverged"], bool)[:, -1]
    for i, s in enumerate(samples):
        if diverged[i]:  # NaN samples: no quality to measure, left out of the statistics
            per_seed.append(None)
            predicted.append(None)
            continue
        probs, feats = generative.classify(cls_model, cls_params, s)
        q = generative.sample_quality(probs, feats, test_feats)
        predicted.append(probs.argmax(-1))
        if cond:
            q["label_agreement"] = float(np.mean(probs.argmax(-1) == np.asarray(labels)))
        per_seed.append(q)
    summary_keys = ["confident_share", "mean_confidence", "label_entropy_bits", "frechet_distance"]
    summary_keys += ["label_agreement"] if cond else []
    reference = generative.sample_quality(test_probs, train_feats, test_feats)
    metrics = {"sample_quality": {
        "samples": f"{config.n_samples} prior samples per run as Bernoulli means; samples.npy holds run 0's",
        "conditioning": "digits 0-9 in turn" if cond else "none",
        "temperature": float(temperature),
        "classifier": cls_info,
        "features": "penultimate activations of the classifier (input of its last Dense layer)",
        "frechet_reference": "features of the test digits",
        **{k: stats.summary([q[k] for q in per_seed if q is not None]) for k in summary_keys},
        "label_histogram_run0": per_seed[0]["label_histogram"] if per_seed[0] is not None else None,
        # conditional: per requested digit, the share of its samples the judge labels as that digit
        **({"per_digit": generative.conditional_shares(predicted, labels)} if cond else {}),
        "max_entropy_bits": float(np.log2(10)),
        "per_seed": per_seed,
        "real_digits": {
            "what": "the same measures on the 10,000 test digits; its Frechet distance compares the features of "
                    "the first 10,000 training digits with those of the test digits (the floor for samples)",
            **reference,
        },
    }}
    q0 = metrics["sample_quality"]
    print(f"samples: {stats.fmt(q0['confident_share']['mean'], '.1f', 100)} % with confidence >= 0.9, label entropy "
          f"{stats.fmt(q0['label_entropy_bits']['mean'], '.3f')} bits, Frechet distance "
          f"{stats.fmt(q0['frechet_distance']['mean'], '.2f')} "
          f"(real digits {reference['frechet_distance']:.2f}); classifier {cls_info['kind']}, "
          f"test accuracy {100 * cls_info['test_accuracy']:.2f} %")

    return samples, metrics["sample_quality"], sample_seconds


def run0_figures(config: ml_collections.ConfigDict, workdir: pathlib.Path, data, model, p0, s0, test_bin,
                 name: str, run_desc: str, base_key) -> None:
    """vae_samples.png, vae_conditional.png (conditional models), vae_reconstructions.png and
    vae_interpolation.png of run 0 (`name` says which model and seed)."""
    cond = bool(config.model.conditional)
    temperature = config.get("sample_temperature", 1.0)
    prior = prior_text(temperature)
    grid = s0[:100].reshape(10, 10, 28, 28)
    plots.image_grid(grid, workdir / "vae_samples.png",
                     f"100 samples from the prior of {name}\n"
                     f"decoder Bernoulli means of {prior}; {run_desc}",
                     xlabel="conditioning digit" if cond else "sample", ylabel="sample",
                     col_labels=list(range(10)) if cond else None)
    if cond:
        rows = []
        for d in config.digits:
            rows.append(draw(model, p0, jax.random.fold_in(jax.random.fold_in(base_key, 3), d),
                             np.full(10, d, np.int32), temperature))
        plots.image_grid(np.stack(rows), workdir / "vae_conditional.png",
                         f"Class-conditional samples: a row per requested digit\n{name}\n"
                         f"decoder Bernoulli means of {prior} with the digit's one-hot label",
                         xlabel="sample", ylabel="requested digit", row_labels=list(config.digits))

    test_x, test_y = np.asarray(data.test_x), np.asarray(data.test_y)  # host copies (see judge_samples)
    idx = np.arange(N_RECONSTRUCTIONS)
    x_rec = test_bin[idx]
    z_rec = posterior_means(model, p0, x_rec, test_y[idx])
    recon = decode_means(model, p0, z_rec, test_y[idx])
    plots.image_grid(np.stack([test_x[idx, ..., 0] / 255.0, x_rec[..., 0], recon]),
                     workdir / "vae_reconstructions.png",
                     f"Reconstructions of the first {N_RECONSTRUCTIONS} test digits by {name}\n"
                     "reconstruction: decoder Bernoulli means at the posterior mean of z",
                     xlabel="test image index", ylabel="",
                     row_labels=["test digit", "binarized input", "reconstruction"], col_labels=idx.tolist())

    rows, row_labels = [], []
    for a, b in INTERPOLATION_PAIRS:
        ia = int(np.flatnonzero(test_y == a)[0])
        ib = int(np.flatnonzero(test_y == b)[1 if a == b else 0])
        pair_y = test_y[[ia, ib]]
        za, zb = posterior_means(model, p0, test_bin[np.array([ia, ib])], pair_y)
        alphas = np.linspace(0.0, 1.0, 10)
        zs = (1 - alphas[:, None]) * za + alphas[:, None] * zb
        # A conditional model keeps the label of the start digit along the path.
        decoded = decode_means(model, p0, zs, np.full(len(alphas), test_y[ia], np.int32))
        rows.append(np.concatenate([test_x[ia, None, ..., 0] / 255.0, decoded, test_x[ib, None, ..., 0] / 255.0]))
        row_labels.append(f"#{ia} → #{ib}")
    plots.image_grid(np.stack(rows), workdir / "vae_interpolation.png",
                     f"Latent interpolation between test digits, {name}\n"
                     "z = (1 - α) μ(start) + α μ(end) over posterior means, decoded to Bernoulli means",
                     xlabel="α (first and last column: the two test digits)", ylabel="test images",
                     row_labels=row_labels, col_labels=["start", *[f"{a:.2f}" for a in alphas], "end"])



def latent_map(config: ml_collections.ConfigDict, workdir: pathlib.Path, data, model, p0, test_bin,
               prepared: training.Training | None = None) -> dict | None:
    """vae_latent.png: the 2-D latent space of the main model if it is 2-D and unconditional, else
    of a 2-D model trained here for `map_epochs` epochs (none when 0; `prepared`: its training
    from `prepare_side_trainings`, if any); what it shows, or None."""
    cond = bool(config.model.conditional)
    test_y = np.asarray(data.test_y)
    map_info = None
    plan = prepared or map_training(config)
    if config.model.latent == 2 and not cond:
        map_model, map_params, map_info = model, p0, {"model": "the main model (latent 2)"}
    elif plan is not None:
        map_config = plan.config
        map_model, map_result = train_vae(workdir, data, plan, "vae_2d")
        trained.save_params(workdir, map_result.state.params, "params_2d", trained.grid_declaration(
            map_model, plan.hp, plan.seeds, map_result.history, "the 2-D VAE of vae_latent.png"))
        map_params = run_params(map_result.state.params, 0)
        map_info = {"model": map_config.model.to_dict(), "epochs": map_config.epochs, "seed": config.seed,
                    "test_neg_elbo": float(map_result.history["test_neg_elbo"][0, -1]), "timing": map_result.timing}
    if map_info is not None:
        values = special.ndtri(np.linspace(0.03, 0.97, MAP_GRID)).astype(np.float32)
        z1, z2 = np.meshgrid(values, values)  # rows: z2, columns: z1
        zs = np.stack([z1.ravel(), z2.ravel()], -1)
        manifold = decode_means(map_model, map_params, zs, np.zeros(len(zs), np.int32)).reshape(MAP_GRID, MAP_GRID, 28, 28)
        means = posterior_means(map_model, map_params, test_bin, test_y)
        map_name = describe(ml_collections.ConfigDict(map_info["model"]) if "epochs" in map_info else config.model,
                            models.param_count(map_params))
        which = "trained for this figure" if "epochs" in map_info else "the main model"
        plots.latent_map(manifold, values, means, test_y, workdir / "vae_latent.png",
                         f"2-D latent space of {map_name} ({which}, "
                         f"{map_info.get('epochs', config.epochs)} epochs, seed {config.seed})")

    return map_info


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    check(config)
    data, data_seconds = training.load_data(config)
    seeds = training.seeds_of(config)
    base_key = jax.random.key(config.seed)

    side = prepare_side_trainings(config, data)  # compiled in the background while the VAEs train
    plan = vae_training(config, config.model, seeds)
    model, result = train_vae(workdir, data, plan, "vae")
    trained.save_params(workdir, result.state.params, declared=trained.grid_declaration(
        model, plan.hp, plan.seeds, result.history, "VAEs, one per seed", primary=True))
    history = result.history
    p0 = run_params(result.state.params, 0)
    n_params = models.param_count(p0)
    name = describe(config.model, n_params)
    run_desc = (f"{config.optimizer} lr {config.learning_rate} ({config.schedule}), batch {config.batch_size}, "
                f"{config.epochs} epochs, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
    test_bin = np.asarray(rehearsal.jit(generative.fixed_binarization)(data.test_x))  # one program; on the host: indexed below
    metrics = {
        "experiment": config.experiment,
        "model": config.model.to_dict(),
        "param_count": n_params,
        "seeds": seeds,
        "training_data": "dynamically binarized: a fresh Bernoulli draw of every pixel each time an image is seen",
        "objective": objective(config),
        "test_binarization": "one fixed Bernoulli draw of the test set (key "
                             f"{generative.EVAL_BINARIZATION_SEED}), the same for every run, epoch and model",
        "test_neg_elbo": final(history, "test_neg_elbo"),
        "test_reconstruction": final(history, "test_reconstruction"),
        "test_kl": final(history, "test_kl"),
        "val_neg_elbo": final(history, "val_neg_elbo"),
        "diverged_seeds": [int(s) for s, d in zip(seeds, history["diverged"][:, -1], strict=True) if d],
        "runs": results.runs_table({"learning_rate": np.full(len(seeds), config.learning_rate, np.float32)},
                                   np.asarray(seeds), history, ("test_neg_elbo", "val_neg_elbo")),
        "history": history,
    }
    plots.elbo_curves(history, workdir / "vae_elbo.png", f"{name}\n{run_desc}; test: fixed binarization")
    print(f"test negative ELBO {stats.describe(metrics['test_neg_elbo'], 1.0, ' nats')} over {len(seeds)} seeds")

    # Importance-weighted log-likelihood on the first iwae_images test images.
    n_iwae = config.iwae_images
    metrics["iwae"] = iwae_per_seed(model, result.state.params, len(seeds), test_bin[:n_iwae], np.asarray(data.test_y)[:n_iwae],
                                    jax.random.fold_in(base_key, 1), config.iwae_k, config.iwae_batch)
    metrics["iwae"]["subset"] = ("the whole test set" if n_iwae == data.test_x.shape[0]
                                 else f"the first {n_iwae} of {data.test_x.shape[0]} test images")

    samples, metrics["sample_quality"], sample_seconds = judge_samples(config, workdir, data, model, result, base_key,
                                                                       side.get("classifier"))
    run0_figures(config, workdir, data, model, p0, samples[0], test_bin, f"{name}, run seed {seeds[0]}", run_desc,
                 base_key)
    map_info = latent_map(config, workdir, data, model, p0, test_bin, side.get("vae_2d"))
    if map_info is not None:
        metrics["latent_map"] = map_info

    metrics["timing"] = training.timing(data_seconds, result) | {
        "iwae_seconds_per_run": float(np.mean(metrics["iwae"]["seconds_per_run"])),
        "sample_seconds_per_run": sample_seconds,
    }
    if (impl := models.conv_formulation(model)) is not None:
        metrics["timing"]["conv_impl"] = impl
    metrics["resumed_from_epoch"] = result.resumed_from_epoch
    return metrics


# --- REPORT.md section and README row, from metrics.json alone ---

def objective_text(m: dict) -> str:
    """What the runs were trained on and how the samples were drawn ('' for the defaults)."""
    o = m.get("objective", {})
    temperature = m["sample_quality"].get("temperature", 1.0)
    parts = [o["bound"]] if o.get("train_iwae_k", 1) > 1 else []
    if o.get("kl_warmup_epochs", 0.0) > 0:
        parts.append(f"KL weight rising linearly from 0 to 1 over the first {o['kl_warmup_epochs']:g} epochs")
    if temperature != 1.0:
        parts.append(f"samples at temperature {temperature:g} ({prior_text(temperature)})")
    return ", ".join(parts)


def anchor_text(value) -> str:
    """A `study` value as text: '85.3', or '78-82' for a range."""
    return f"{value[0]:g}-{value[1]:g}" if isinstance(value, (list, tuple)) else f"{value:g}"


def epochs_of(m: dict) -> int:
    return len(m["history"]["test_neg_elbo"][0])


def comparison(ms: list[dict]) -> str:
    """The table of these vae stages (a row each, from its metrics.json) against the literature
    anchors of the last one's `study` block."""
    rows = []
    for m in ms:
        q, iwae = m["sample_quality"], m["iwae"]
        extra = objective_text(m)
        epochs = epochs_of(m)
        rows.append([f"{arch_text(m['model'])}, {epochs} epoch{'s' * (epochs > 1)}" + (f" ({extra})" if extra else ""),
                     str(m["test_neg_elbo"]["n"]), mean_std(m["test_neg_elbo"], 1.0), ci(m["test_neg_elbo"], 1.0),
                     mean_std(iwae["nll"], 1.0), ci(iwae["nll"], 1.0), mean_std(q["confident_share"], 100.0, 1),
                     mean_std(q["frechet_distance"], 1.0, 1)])
    found = study(ms[-1]["experiment"])
    for key, (what, column, _) in ANCHORS.items():
        if key in found:
            value = anchor_text(found[key])
            rows.append([what, "-", value if column == "neg_elbo" else "-", "-", value if column == "nll" else "-", "-", "-",
                         "-"])
    return table(["model", "n", "test negative ELBO (nats)", "95 % CI", "IWAE NLL (nats)", "95 % CI",
                  "samples with confidence >= 0.9 (%)", "Frechet distance"], rows)


def per_digit_table(q: dict) -> str:
    """The conditional model's table: per requested digit, the share of its samples judged as it."""
    rows = [[str(d["digit"]), str(d["samples_per_run"]), mean_std(d, 100.0, 1), ci(d, 100.0, 1), d["interval"]]
            for d in q["per_digit"]]
    return table(["requested digit", "samples per run", "judged as that digit (%)", "95 % CI", "interval"], rows)


def section(m: dict, stages: dict | None = None) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone; `stages` ({experiment:
    metrics} of the report's stages, in its order) adds the other vae stages to the comparison
    table, which the last vae stage of the report shows."""
    q = m["sample_quality"]
    iwae = m["iwae"]
    name = m["experiment"]
    found = study(name)
    model = m["model"]
    lo, hi = found["vae_literature_nll_nats"]
    literature = f"{lo}-{hi} for such models"
    if model["conv"] and "conv_hierarchical_vae_nll_nats" in found:
        literature = f"{anchor_text(found['conv_hierarchical_vae_nll_nats'])} for convolutional and hierarchical VAEs"
    rows = [
        ["test negative ELBO (nats)", mean_std(m["test_neg_elbo"], 1.0), ci(m["test_neg_elbo"], 1.0), "-"],
        [f"test NLL, IWAE bound k = {iwae['k']} on {iwae['images']:,} images (nats)", mean_std(iwae["nll"], 1.0),
         ci(iwae["nll"], 1.0), literature],
        ["samples classified with confidence >= 0.9 (%)", mean_std(q["confident_share"]), ci(q["confident_share"]), "-"],
        [f"entropy of the sample labels (bits; uniform = {q['max_entropy_bits']:.3f})",
         mean_std(q["label_entropy_bits"], 1.0, 3), ci(q["label_entropy_bits"], 1.0, 3), "-"],
        ["Frechet distance, classifier features of samples vs test digits", mean_std(q["frechet_distance"], 1.0),
         ci(q["frechet_distance"], 1.0), "-"],
    ]
    clf = q["classifier"]
    vaes = [v for k, v in (stages or {}).items() if v is not None and is_vae_experiment(k)] or [m]
    if all(v["experiment"] != name for v in vaes):
        vaes.append(m)
    extra = objective_text(m)
    parts = [
        "## 4D. A variational autoencoder that generates digits" if not model["conv"] else
        "## 4D, beyond the study. A convolutional VAE",
        f"{'Dense' if not model['conv'] else 'Convolutional'} VAE {arch_text(model).split(' ', 1)[1]} "
        f"({m['param_count']:,} params), {len(m['seeds'])} seeds, dynamically binarized training images. "
        + ("The study's attempt failed: \"the sampled images came out looking nothing like digits\"." if not model["conv"]
           else "The dense VAE's measures, with a convolutional encoder and decoder."),
        *([f"Ablation: {extra}. The NLL and the ELBO belong to the trained model; the sampling temperature changes only "
           "the samples and their measures."] if extra else []),
        table(["", "this codebase (mean ± std over seeds)", "95 % CI", "literature"], rows),
        f"Samples are judged by a {clf['kind']} classifier ({pct(clf['test_accuracy'])} % test accuracy).",
    ]
    if q.get("per_digit"):
        parts += ["**The conditional model, measured**: for each requested digit, the share of its samples the judge "
                  "labels as that digit (95 % CI: Student t over the seeds, or the Wilson interval of one run's count).",
                  per_digit_table(q)]
    if vaes[-1]["experiment"] == name:  # the last vae stage of the report compares them all
        parts += ["**Dense against convolutional, and the literature** (dynamically binarized MNIST; n = seeds):",
                  comparison(vaes)]
    parts += [
        timing_line(m),
        figure(name, "vae_samples.png", "100 new digits: decoder Bernoulli means of latents drawn from the prior"),
        *([figure(name, "vae_conditional.png", "Class-conditional samples: a row per requested digit")]
          if model.get("conditional") else []),
        *([figure(name, "vae_latent.png", "A 2-D latent space: the decoded manifold and the test set by label")]
          if "latent_map" in m else []),
        figure(name, "vae_interpolation.png", "Interpolations between test digits in latent space"),
    ]
    return "\n\n".join(parts)


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    q, iwae = m["sample_quality"], m["iwae"]
    found = study(m["experiment"])
    lo, hi = found["vae_literature_nll_nats"]
    conv = bool(m["model"].get("conv"))
    extra = objective_text(m)
    # the README row quotes the first anchor of its kind (the REPORT's table has them all)
    anchor = next(((short, anchor_text(found[key])) for key, (_, column, short) in ANCHORS.items()
                   if key in found and column == "nll" and short.startswith("conv") == conv), None)
    cited = f"{anchor[0]}: {anchor[1]}" if anchor else ""
    reference = (f"{lo}-{hi} nats NLL for such models" + (f" ({cited})" if cited else "")) if not conv else cited or "-"
    elbo, nll = m["test_neg_elbo"], iwae["nll"]
    return [f"{'' if not conv else 'beyond the study: '}VAE, {arch_text(m['model'])}, {c['epochs']} epochs ({seeds_text(c)})"
            + (f", {extra}" if extra else ""),
            f"n = {elbo['n']}: test negative ELBO **{mean_std(elbo, 1.0)} nats** {ci(elbo, 1.0)}; IWAE (k = {iwae['k']}) "
            f"NLL **{mean_std(nll, 1.0)} nats** {ci(nll, 1.0)}; {mean_std(q['confident_share'], 100.0, 1)} % of samples "
            f"judged with confidence >= 0.9 ({q['classifier']['kind']})",
            "failed: \"nothing like digits\"" if not conv else "-", reference]


main = cli.entry_point(run, "configs/vae.py", __doc__, __name__)
