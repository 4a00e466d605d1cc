"""Test accuracy against salt-and-pepper noise level, with and without denoising (section 4C).

    python -m experiments.noise_accuracy --workdir runs/noise_accuracy [--config.seeds=N] [--config.epochs=E]

Three curves, each point a mean over seeds with a 95 % CI:
  (a) "noisy": a classifier trained on noisy images (fresh noise every step), tested on noisy images;
  (b) "denoised": the same, but every image (train and test) first goes through the denoising
      autoencoder trained at that noise level (and seed);
  (c) "clean": a classifier trained on clean images, tested on noisy images.
The autoencoders (one per level and seed) are trained first, as one vmapped program; then (a)
and (b) are one vmapped program each over levels x seeds, and (c) one over seeds. Every curve
is tested on the same corrupted test images (fixed noise per image and level). Writes
`noise_accuracy.png`, `metrics.json` (accuracies per level and curve, the differences (b) - (a)
with Welch's t-test, and a sentence on where denoising helps), params and checkpoints.

The classifier is `models.from_config({"kind": kind, **config.classifier[kind]})`, e.g. the
study's CNN (its fields in `config.classifier.cnn`):

    python -m experiments.noise_accuracy --workdir runs/noise_accuracy_cnn --config.classifier.kind=cnn \\
        --config.optimizer=adam --config.learning_rate=0.001 --config.denoiser_epochs=32
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import ml_collections
import numpy as np

from mnist_jax import cli, denoising, models, plots, preflight, provenance, stats, sweep, tasks, train, trained, training
from mnist_jax import results as results_lib
from mnist_jax.config import ConfigError
from mnist_jax.precision import compute_dtype_of
from mnist_jax.report import by_level, figure, mean_std, seeds_text, table, timing_line
from mnist_jax.train import TrainSpec

CURVES = {
    "noisy": "(a) trained and tested on noisy images",
    "denoised": "(b) as (a), every image denoised first",
    "clean": "(c) trained on clean images, tested on noisy",
}


def classifier_block(classifier) -> tuple[dict, dict[str, list[float]]]:
    """The `models.from_config` block of the chosen classifier kind ({"kind": kind, **fields}) and
    the traced call arguments its block gives ({name: [value]})."""
    kind = classifier.get("kind")
    if kind not in classifier or kind == "kind":
        known = sorted(k for k in classifier if k != "kind")
        raise ConfigError(f"config.classifier.kind={kind!r}: expected one of {known} (a block of its fields)")
    block, traced = models.split_block({"kind": kind, **dict(classifier[kind])})
    return block, {k: [v] for k, v in traced.items()}


def classifier_model(block: dict, compute_dtype: str = "float32"):
    try:
        return models.from_config(block, compute_dtype)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.classifier {block}: {err}") from None


def describe(block: dict) -> str:
    """A model block in one short line, e.g. 'mlp hidden=(64, 64)'."""
    fields = {k: v for k, v in block.items() if k not in ("kind", "keras_init")}
    return f"{block['kind']} " + ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in fields.items())


def conclusion(levels: list[float], diff: dict, welch: dict) -> dict:
    """Where denoising helps: levels where (b) beats (a) with p < 0.05, where it is worse, and one sentence."""
    mean = {lv: diff[f"{lv:g}"]["mean"] if diff[f"{lv:g}"]["mean"] is not None else float("nan") for lv in levels}
    helps = [lv for lv in levels if mean[lv] > 0 and (welch[f"{lv:g}"]["p_value"] or 1.0) < 0.05]
    hurts = [lv for lv in levels if mean[lv] < 0 and (welch[f"{lv:g}"]["p_value"] or 1.0) < 0.05]
    best = max(levels, key=lambda lv: mean[lv] if np.isfinite(mean[lv]) else -np.inf)
    if helps:
        above = [lv for lv in levels if lv > max(helps)]
        text = (f"Denoising first raises test accuracy significantly (Welch p < 0.05) at noise levels "
                f"{', '.join(f'{lv:g}' for lv in helps)}; the largest gain is {100 * diff[f'{best:g}']['mean']:+.2f} "
                f"points at level {best:g}.")
        if above:
            text += f" Above level {max(helps):g} it no longer helps significantly."
    else:
        text = "Denoising first does not raise test accuracy significantly (Welch p < 0.05) at any noise level."
    if hurts:
        text += f" It lowers accuracy significantly at levels {', '.join(f'{lv:g}' for lv in hurts)}."
    return {"helps_levels": helps, "hurts_levels": hurts, "largest_gain_level": best, "text": text}


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: its three classifiers' (the chosen classifier block
    and the hyperparameters their tasks read), the autoencoders' block and the noise levels."""
    block, traced = classifier_block(config.classifier)
    model = classifier_model(block, compute_dtype_of(config))
    task = tasks.noisy_classifier_task(model)
    expected = train.expected_hparams(task, training.train_spec(config))
    unused = [k for k in traced if k not in expected]
    if unused:
        raise ConfigError(f"config.classifier.{block['kind']}.{unused[0]} is ignored: the classifier "
                          f"{models.describe(model)} does not read it in this configuration")
    given = ("noise_level", *traced)
    return [*preflight.RUN_FIELDS, "classifier", "denoiser", "denoiser_epochs", "noise_levels",
            *preflight.task_reads(config, task, given=given)]


def runs(config: ml_collections.ConfigDict) -> int:
    """Runs in each of its grids: one per noise level and seed."""
    return len(config.noise_levels) * config.seeds


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    levels = denoising.check_levels(config.noise_levels)
    dae = denoising.dae_model(config.denoiser.model, compute_dtype_of(config))
    clf_block, clf_hp = classifier_block(config.classifier)
    clf = classifier_model(clf_block, compute_dtype_of(config))
    ae_epochs = config.denoiser_epochs or config.epochs
    data, data_seconds = training.load_data(config)
    seed_list = [config.seed + i for i in range(config.seeds)]
    n_levels, n_seeds = len(levels), len(seed_list)

    # The three classifier trainings, known before the autoencoders train: their programs compile in
    # the background from now on (the denoised one's from the shapes of the autoencoders to come).
    noisy_task = tasks.noisy_classifier_task(clf, None, config.seed)
    denoised_task = tasks.noisy_classifier_task(clf, dae, config.seed)
    clean_task = tasks.classifier_task(clf)
    hp, seeds = sweep.grid(seed_list, **training.hparams(config, noisy_task, noise_level=levels, **clf_hp))
    hp_c, seeds_c = sweep.grid(seed_list, **training.hparams(config, clean_task, **clf_hp))
    ae_shapes = models.init_shapes(dae, runs=len(seeds))
    trainings = {"noisy": training.Training(config, noisy_task, hp, seeds),
                 "denoised": training.Training(config, denoised_task, tasks.with_frozen(hp, "denoiser", ae_shapes), seeds),
                 "clean": training.Training(config, clean_task, hp_c, seeds_c)}
    trainings = {name: t.prepare(data) for name, t in trainings.items()}

    ae_spec = TrainSpec(epochs=ae_epochs, batch_size=config.denoiser.batch_size, optimizer=config.denoiser.optimizer)
    ae, hp_ae, seeds_ae = denoising.train_denoisers(config, workdir, dae, levels, data, name="denoiser", spec=ae_spec,
                                                    learning_rate=config.denoiser.learning_rate)
    trained.save_params(workdir, ae.state.params, name="denoiser_params", declared=trained.grid_declaration(
        dae, hp_ae, seeds_ae, ae.history, "the autoencoder of each noise level and seed that (b) denoises with"))

    assert np.array_equal(hp["noise_level"], hp_ae["noise_level"])  # run r of (b) uses autoencoder r
    # (b) trains with the autoencoders just trained, in the program compiled from their shapes
    trainings["denoised"] = dataclasses.replace(trainings["denoised"],
                                                hp=tasks.with_frozen(hp, "denoiser", ae.state.params))
    results = {name: t.train(workdir, data, name) for name, t in trainings.items()}
    grids = {"noisy": (hp, seeds), "denoised": (hp, seeds), "clean": (hp_c, seeds_c)}
    for name, result in results.items():
        trained.save_params(workdir, result.state.params, name=f"{name}_params", declared=trained.grid_declaration(
            clf, *grids[name], result.history, f"the {name} curve's classifiers, {CURVES[name]}",
            input="denoiser_params" if name == "denoised" else None, primary=name == "clean",
            curve=[name] * len(result.history["diverged"])))

    # Test accuracy of every run on the same corrupted test images; (c) is tested at every level.
    key = tasks.eval_noise_key(config.seed, "test")
    levels_r = np.asarray(hp["noise_level"], np.float32)

    def accuracy(p, level, x, y):
        return tasks.noisy_classification_metrics(clf, p, x, y, level, key, "test")["test_accuracy"]

    def accuracy_denoised(p, dp, level, x, y):
        return tasks.noisy_classification_metrics(clf, p, x, y, level, key, "test", dae, dp)["test_accuracy"]

    test_set = (data.test_x, data.test_y)
    clean_per_run = jax.tree_util.tree_map(lambda a: a[np.tile(np.arange(n_seeds), n_levels)],
                                           results["clean"].state.params)
    acc = {
        "noisy": tasks.over_runs(accuracy, (results["noisy"].state.params, levels_r), test_set),
        "denoised": tasks.over_runs(accuracy_denoised, (results["denoised"].state.params, ae.state.params, levels_r),
                                    test_set),
        "clean": tasks.over_runs(accuracy, (clean_per_run, levels_r), test_set),
    }
    # A run that diverged, or whose autoencoder did, is left out of the statistics (NaN).
    diverged = {k: np.asarray(r.history["diverged"], bool)[:, -1] for k, r in results.items()}
    diverged["denoised"] = diverged["denoised"] | np.asarray(ae.history["diverged"], bool)[:, -1]
    diverged["clean"] = np.tile(diverged["clean"], n_levels)
    acc = {k: np.where(diverged[k], np.nan, np.asarray(v)).reshape(n_levels, n_seeds)  # grid is seed-fastest
           for k, v in acc.items()}
    psnr = denoising.test_metrics(dae, ae.state.params, levels_r, data, config.seed)

    def by_level(a):  # (L, S) -> {level: summary}
        return {f"{lv:g}": {"per_seed": a[i], **stats.summary(a[i])} for i, lv in enumerate(levels)}

    summaries = {k: by_level(v) for k, v in acc.items()}
    diff = by_level(acc["denoised"] - acc["noisy"])
    welch = {f"{lv:g}": stats.welch(acc["denoised"][i], acc["noisy"][i]) for i, lv in enumerate(levels)}
    verdict = conclusion(levels, diff, welch)

    clf_traced = "".join(f", {k} {v[0]:g}" for k, v in clf_hp.items())
    clf_line = (f"{describe(clf_block)}{clf_traced}, {config.optimizer} lr {config.learning_rate:g}, batch {config.batch_size}, "
                f"{denoising.plural(config.epochs, 'epoch')}")
    plots.curves_with_ci(
        levels, {CURVES[k]: (acc[k].T, [summaries[k][f"{lv:g}"] for lv in levels]) for k in CURVES},
        workdir / "noise_accuracy.png",
        f"MNIST test accuracy against salt-and-pepper noise\nclassifier: {clf_line}\n"
        f"autoencoders {models.describe(dae)}, Adam, {denoising.plural(ae_epochs, 'epoch')}, one per level and seed; "
        f"{denoising.plural(n_seeds, 'seed')} per point; all curves tested on the same noisy test images",
        xlabel="salt-and-pepper noise level (fraction of pixels replaced by 0 or 1)", ylabel="test accuracy (%)",
        note=f"mean, 95 % CI band (Student t, {n_seeds} seeds), dots = runs")

    print(f"{'level':>5} " + " ".join(f"{k:>16}" for k in CURVES) + f" {'(b)-(a)':>9} {'p':>7} {'PSNR gain':>9}")
    for lv in levels:
        k = f"{lv:g}"
        gain = psnr["test_psnr_denoised"][levels_r == np.float32(lv)] - psnr["test_psnr_noisy"][levels_r == np.float32(lv)]
        p = welch[k]["p_value"]
        print(f"{lv:5.2f} " + " ".join(f"{stats.fmt(summaries[c][k]['mean'], '7.2f', 100)} ± "
                                       f"{stats.fmt(summaries[c][k]['std'] or 0, '5.2f', 100)}" for c in CURVES)
              + f" {stats.fmt(diff[k]['mean'], '+9.2f', 100)} {p if p is not None else float('nan'):7.3f} "
              f"{np.nanmean(gain) if np.isfinite(gain).any() else float('nan'):+8.2f}dB")
    print(verdict["text"])
    return {
        "experiment": "noise_accuracy",
        "noise_levels": levels,
        "seeds": seed_list,
        "classifier": clf_line,
        "denoiser_epochs": ae_epochs,
        "test_accuracy": {k: {"per_level_per_seed": acc[k], "per_level": summaries[k], "label": CURVES[k]} for k in CURVES},
        "denoised_minus_noisy": {"per_level": diff, "welch": welch},
        "conclusion": verdict,
        "denoiser_test": {"noise_level": levels_r, "seeds": seeds, **psnr},
        "runs": [{"curve": k, **record}
                 for k, (hp_k, seeds_k) in grids.items()
                 for record in results_lib.runs_table(
                     hp_k, seeds_k, results[k].history, ("val_accuracy",),
                     **({"test_accuracy": acc[k].reshape(-1)} if k != "clean"
                        else {"test_accuracy_by_level": [acc["clean"][:, s] for s in range(n_seeds)]}))],
        "val_accuracy_last_epoch": {k: results[k].history["val_accuracy"][:, -1] for k in results},
        "eval_noise": f"fixed per test image: tasks.eval_noise_key({config.seed}, 'test') folded with the image index",
        "diverged_runs": {k: [int(i) for i in np.flatnonzero(r.history["diverged"][:, -1])] for k, r in results.items()},
        "timing": {"data_seconds": data_seconds, "device": provenance.describe_devices(),
                   "denoiser": ae.timing, **{k: r.timing for k, r in results.items()}},
        "resumed_from_epoch": {"denoiser": ae.resumed_from_epoch, **{k: r.resumed_from_epoch for k, r in results.items()}},
    }


# --- REPORT.md section and README row, from metrics.json alone ---

def section(m: dict) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone."""
    levels = m["noise_levels"]
    acc = m["test_accuracy"]
    curves = [by_level(acc[k]["per_level"], levels) for k in ("noisy", "denoised", "clean")]
    gain = by_level(m["denoised_minus_noisy"]["per_level"], levels)
    welch = by_level(m["denoised_minus_noisy"]["welch"], levels)
    rows = []
    for i, lv in enumerate(levels):
        p = welch[i].get("p_value")
        rows.append([f"{lv:g}", *(mean_std(c[i]) for c in curves), mean_std(gain[i]),
                     "-" if p is None else f"{p:.3f}"])
    return "\n\n".join([
        "## 4C. Classification accuracy against noise level, with and without denoising",
        f"Classifier: {m['classifier']}; autoencoders trained {m['denoiser_epochs']} epochs; "
        f"{len(m['seeds'])} seeds per point.",
        table(["noise level", "(a) noisy train + test (%)", "(b) denoised first (%)", "(c) clean train, noisy test (%)",
               "(b) − (a) (% points)", "Welch p"], rows),
        m["conclusion"]["text"] + " The study: \"denoising before classification can improve accuracy\".",
        timing_line(m),
        figure("noise_accuracy", "noise_accuracy.png", "Test accuracy against noise level, mean with 95 % CI bands"),
    ])


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    return [f"accuracy vs noise, levels {m['noise_levels'][0]:g}-{m['noise_levels'][-1]:g}, classifier {c['epochs']} "
            f"epochs, autoencoders {m['denoiser_epochs']} epochs ({seeds_text(c)})", m["conclusion"]["text"],
            "\"denoising can improve accuracy\"", "-"]


main = cli.entry_point(run, "configs/noise_accuracy.py", __doc__, __name__)
