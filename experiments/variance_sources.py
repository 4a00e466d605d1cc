"""Where run-to-run variance comes from, and how many seeds a claim needs.

    python -m experiments.variance_sources --workdir runs/variance_sources
    python -m experiments.variance_sources --workdir runs/vs_smoke --config.seeds=3 --config.epochs=2
    python -m experiments.variance_sources --workdir runs/vs_cnn --config configs/variance_sources_cnn.py

For each source of randomness (`config.sources`), `config.seeds` runs where only that source
varies, every other draw held at the base seed; `all`: runs where every stream varies. Every run
of every source is trained by ONE vmapped program (the sources are per-run traced seeds). Per
source: the std of test accuracy with its chi-square 95 % CI, and the mean pairwise disagreement
of test predictions (Summers & Dinneen 2021); for scale, the test-set sampling std of one model.
From the spread of `all`: the seeds per arm a difference needs, and the smallest difference the
sweeps of this project can detect with the seeds they use.

Precision as a source: `precision` trains the first `precision_seeds` runs (at most `seeds`) of
`all` (the same seeds) again in bfloat16 compute, and `one_bit_bf16` the first ones of `one_bit`
(the same flipped weights); params stay float32. The compute dtype is a static attribute of the
model, so these runs are a second vmapped program. Reported: each precision's accuracy, spread and
steady epoch time, the paired per-seed differences, and whether bfloat16 compute shields a
one-ulp change of one float32 weight (`one_bit_bf16` against the spread of `precision`).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_jax import cli, grid, models, plots, preflight, results, stats, tasks, train, trained, training
from mnist_jax import precision as precision_lib
from mnist_jax.config import REPO_ROOT, load_config_file
from mnist_jax.report import figure, flips_text, mean_std, net_text, num, pct, seeds_text, table, timing_line

# the arms trained in bfloat16 compute, each with the float32 source whose first runs it repeats
REDUCED = {"precision": "all", "one_bit_bf16": "one_bit"}
REDUCED_DTYPE = "bfloat16"
SOURCES = (*train.STREAMS, "one_bit", "bootstrap", "all", *REDUCED)
# the sources Summers & Dinneen (2021) varied one at a time (initialization, shuffling, augmentation,
# a one-bit change of the initialization); dropout and noise draws are of the same kind
NONDETERMINISM = ("init", "order", "dropout", "noise", "augment", "one_bit")
# the project's sweeps: (name, config file, what an arm is)
SWEEPS = (("l2_sweep", "configs/l2_sweep.py", "L2 factor"), ("dropout_sweep", "configs/dropout_sweep.py", "dropout rate"),
          ("cnn_search", "configs/cnn_search.py", "candidate"))


def source_seeds(sources: list[str], n: int, base: int, kernel_size: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-run seeds {stream or perturbation: (R,)} of n runs per source, and each run's source.

    A run varies its source only: a stream takes base + 1 + i (run i), every other stream `base`;
    `one_bit` flips weight i of n distinct weights of the first kernel; `bootstrap` resamples the
    training set with seed base + 1 + i; `all` gives every stream base + 1 + i.
    """
    flips = np.random.default_rng(base).choice(kernel_size, n, replace=False).astype(np.int32)
    varied = base + 1 + np.arange(n, dtype=np.int32)
    fixed = np.full(n, base, np.int32)
    off = np.full(n, -1, np.int32)
    parts = []
    for source in sources:
        seeds = {s: fixed for s in train.STREAMS}
        seeds["one_bit"], seeds["bootstrap"] = off, off
        if source in train.STREAMS:
            seeds[source] = varied
        elif source == "one_bit":
            seeds["one_bit"] = flips
        elif source == "bootstrap":
            seeds["bootstrap"] = varied
        else:  # all
            seeds.update({s: varied for s in train.STREAMS})
        parts.append(seeds)
    seeds = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return seeds, [s for s in sources for _ in range(n)]


def reduced_seeds(sources: list[str], n: int, n_reduced: int, base: int,
                  kernel_size: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-run seeds and sources of the bfloat16 arms among `sources` (`REDUCED`): each the first
    `n_reduced` runs of its float32 source of n runs per source (the same seeds, the same flipped
    weights)."""
    arms = [s for s in sources if s in REDUCED]
    seeds, _ = source_seeds([REDUCED[s] for s in arms], n, base, kernel_size)
    rows = np.concatenate([j * n + np.arange(n_reduced) for j in range(len(arms))]).astype(int)
    return {k: v[rows] for k, v in seeds.items()}, [s for s in arms for _ in range(n_reduced)]


def power_table(sigma: dict, config: ml_collections.ConfigDict) -> dict:
    """Seeds per arm for each difference of `config.differences_pct`, at the measured std and at its
    upper CI bound, and the smallest difference each of the project's sweeps detects with its seeds."""
    rows = [{"difference_pct": d,
             "seeds_per_arm": stats.seeds_needed(sigma["std"], d, config.alpha, config.power),
             "seeds_per_arm_at_ci_high": stats.seeds_needed(sigma["ci_high"], d, config.alpha, config.power)}
            for d in config.differences_pct]
    sweeps = []
    for name, path, arm in SWEEPS:
        n = load_config_file(REPO_ROOT / path).seeds
        sweeps.append({"experiment": name, "arm": arm, "seeds_per_arm": n,
                       "detectable_difference_pct": stats.detectable_difference(sigma["std"], n, config.alpha, config.power),
                       "detectable_difference_pct_at_ci_high": stats.detectable_difference(sigma["ci_high"], n, config.alpha,
                                                                                           config.power)})
    return {"sigma_pct": sigma["std"], "sigma_ci_high_pct": sigma["ci_high"], "alpha": config.alpha,
            "power": config.power, "test": "two-sided two-sample t-test, equal seeds per arm (noncentral t)",
            "rows": rows, "sweeps": sweeps}


def times(a: float, b: float, unit: str = " x") -> str:
    """'1.23 x' for the ratio a / b; where b is 0 (a spread of exactly nothing) there is no ratio."""
    return f"{a / b:.2f}{unit}" if b else f"no ratio{unit} (a spread of 0)"


def verdict(per_source: dict, at: dict | None = None) -> dict:
    """Whether each source alone spreads test accuracy as much as all together (its std inside the
    95 % CI of the std of `all`), the reading of Summers & Dinneen (2021); `at`: the precision it
    was measured at (`mnist_jax.precision.describe`), which the text names first."""
    all_ci, all_dis = per_source["all"]["std_pct"], per_source["all"]["disagreement"]
    inside, outside, unused, rounded, dis_outside = [], [], [], [], []
    for source, row in per_source.items():
        if source == "all" or row["std_pct"]["std"] is None:
            continue
        if row["identical_runs"]:  # a stream never drawn from, or a one-ulp change that every product rounded away
            (rounded if source == "one_bit" else unused).append(source)
            continue
        if all_ci["ci_low"] <= row["std_pct"]["std"] <= all_ci["ci_high"]:
            inside.append(source)
        else:
            outside.append(source)
        d = row["disagreement"]
        if None not in (d["ci_high"], all_dis["ci_low"]):
            if d["ci_high"] < all_dis["ci_low"] or d["ci_low"] > all_dis["ci_high"]:
                dis_outside.append(source)
    tested = [s for s in inside + outside if s in NONDETERMINISM]
    agrees = bool(tested) and all(s in inside for s in tested)
    ratio = ", ".join(f"{s} ({times(per_source[s]['std_pct']['std'], all_ci['std'])})" for s in outside)
    text = "" if at is None else (f"Measured in {at['compute_dtype']} compute, float32 products in {at['float32_products']} "
                                  f"(matmul precision {at['matmul_precision']}). ")
    text += (f"Spread (std of test accuracy) inside the 95 % CI of 'all' ({all_ci['ci_low']:.3f}-{all_ci['ci_high']:.3f} "
             f"% points): {', '.join(inside) or 'none'}; outside: {ratio or 'none'}.")
    if dis_outside:
        text += (" Disagreement whose 95 % CI misses that of 'all': "
                 + ", ".join(f"{s} ({100 * per_source[s]['disagreement']['mean']:.2f} % against "
                             f"{100 * all_dis['mean']:.2f} %)" for s in dis_outside) + ".")
    if "one_bit" in outside and per_source["one_bit"]["std_pct"]["std"] < all_ci["ci_low"]:
        curve = per_source["one_bit"].get("std_pct_by_epoch")
        text += " A one-ulp change of one initial weight has not grown into the full spread within these epochs"
        if curve is not None and len(curve) > 1:
            half = len(curve) // 2
            text += f" (its std: {curve[half - 1]:.3f} after epoch {half}, {curve[-1]:.3f} after epoch {len(curve)})"
        text += "."
    if rounded:
        text += (" One bit of one initial weight left every run identical: the one-ulp change was rounded away in every "
                 "product of these epochs.")
    if unused:
        text += f" Not used by this model (its runs are identical): {', '.join(unused)}."
    text += (" MNIST agrees with Summers & Dinneen: each source of nondeterminism alone gives about the spread of "
             "all of them together." if agrees else
             " MNIST does not fully agree with Summers & Dinneen: not every source of nondeterminism alone gives "
             "the spread of all of them together.")
    return {"inside_all_ci": inside, "outside_all_ci": outside, "unused": unused, "rounded_away": rounded,
            "disagreement_outside_all_ci": dis_outside, "agrees_with_summers_dinneen": agrees, "text": text,
            **({} if at is None else {"measured_at": at})}


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields this experiment reads: the classifier's, its sources and its statistics'
    settings, and the size of its bfloat16 arms (read with the sources: `--config.sources` can
    leave the arms out of a config that sizes them)."""
    return [*preflight.classifier_reads(config), "sources", "differences_pct", "alpha", "power", "test_resamples",
            "precision_seeds"]


def reduced_runs(config: ml_collections.ConfigDict) -> int:
    """Runs per bfloat16 arm: `precision_seeds`, at most `seeds` (the runs of the float32 source it
    repeats), so `--config.seeds=3` shrinks them too."""
    return min(config.get("precision_seeds", 0), config.seeds)


def runs(config: ml_collections.ConfigDict) -> int:
    """Runs in its larger grid: `seeds` per float32 source in one, `reduced_runs` per bfloat16 arm
    in the other."""
    n_reduced = sum(s in REDUCED for s in config.sources)
    return max((len(config.sources) - n_reduced) * config.seeds, n_reduced * reduced_runs(config))


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    # known, distinct, 'all' among them, >= 3 seeds, float32 compute with a bfloat16 arm: `config.validate`
    sources = list(config.sources)
    full = [s for s in sources if s not in REDUCED]
    data, data_seconds = training.load_data(config)
    model, task = tasks.classifier_from_config(config)
    hp1 = {k: v[0] for k, v in training.hparams(config, task).items()}
    shapes = jax.eval_shape(lambda: task.init(jax.random.key(0), {k: jnp.float32(v) for k, v in hp1.items()}))
    kernel_size = train.first_kernel_size(shapes)
    seeds, run_source = source_seeds(full, config.seeds, config.seed, kernel_size)
    n_runs = len(run_source)
    hp = {k: np.full(n_runs, v, np.float32) for k, v in hp1.items()}
    reduced = None
    if len(full) < len(sources):  # the bfloat16 arms: a second program, compiling while the first trains
        r_seeds, r_source = reduced_seeds(sources, config.seeds, reduced_runs(config), config.seed, kernel_size)
        r_model, r_task = tasks.classifier_from_config(config, compute_dtype=REDUCED_DTYPE)
        r_hp = {k: np.full(len(r_source), v, np.float32) for k, v in hp1.items()}
        reduced = training.Training(config, r_task, r_hp, r_seeds, model=r_model).prepare(data)
    result = training.train(config, workdir, task, hp, seeds, data, metric="test_accuracy")
    trained.save_params(workdir, result.state.params, declared=trained.grid_declaration(
        model, hp, seeds, result.history, "classifiers, seeds per source of variance", primary=True, source=run_source))
    h = result.history
    diverged = results.divergence(h, seeds["init"], hp)
    preds = grid.TrainedGrid(model, result.state.params, hp, seeds).predictions(data.test_x)
    r_result = None
    if reduced is not None:
        r_result = reduced.train(workdir, data, f"train_{REDUCED_DTYPE}", metric="test_accuracy")
        trained.save_params(workdir, r_result.state.params, f"params_{REDUCED_DTYPE}", declared=trained.grid_declaration(
            reduced.model, reduced.hp, reduced.seeds, r_result.history,
            f"classifiers in {REDUCED_DTYPE} compute, the first seeds of their float32 sources", source=r_source))
        r_preds = grid.TrainedGrid(reduced.model, r_result.state.params, reduced.hp, reduced.seeds).predictions(data.test_x)
        diverged_reduced = results.divergence(r_result.history, reduced.seeds["init"], reduced.hp)
    # every run of both programs, float32 ones first
    every_h = h if r_result is None else {k: np.concatenate([h[k], r_result.history[k]]) for k in h}
    every_source = run_source + ([] if r_result is None else r_source)
    every_preds = preds if r_result is None else np.concatenate([preds, r_preds])
    test_acc = results.final_of_finite(every_h, "test_accuracy")
    ok = np.isfinite(test_acc)
    correct = every_preds == np.asarray(data.test_y)[None, :]

    per_source = {}
    for source in sources:
        mine = np.array([s == source for s in every_source]) & ok
        acc = 100.0 * test_acc[mine].astype(np.float64)
        per_source[source] = {
            "runs": int(mine.sum()),
            "compute_dtype": REDUCED_DTYPE if source in REDUCED else precision_lib.compute_dtype_of(config),
            "test_accuracy_pct": stats.summary(acc),
            "std_pct": stats.std_ci(acc),
            "disagreement": stats.pairwise_disagreement(every_preds[mine]),
            "identical_runs": bool(np.all(every_preds[mine] == every_preds[mine][:1]) and np.ptp(acc) == 0),
            # how the spread grows: std of test accuracy after each epoch (% points)
            "std_pct_by_epoch": (100.0 * np.asarray(every_h["test_accuracy"], np.float64)[mine].std(axis=0, ddof=1)
                                 if mine.sum() > 1 else None),
        }
    all_runs = np.flatnonzero(np.array([s == "all" for s in every_source]) & ok)
    p_one = correct[all_runs[0]].mean()
    sampling = {
        "bootstrap_std_pct": 100.0 * stats.bootstrap_mean_std(correct[all_runs[0]], config.test_resamples, config.seed),
        "binomial_std_pct": 100.0 * float(np.sqrt(p_one * (1 - p_one) / correct.shape[1])),
        "resamples": config.test_resamples, "test_images": int(correct.shape[1]),
        "model": "the first run of 'all'",
    }
    metrics = {
        "experiment": "variance_sources",
        "protocol": config.protocol,
        "param_count": models.param_count(jax.tree_util.tree_map(lambda a: a[0], result.state.params)),
        "model": describe_model(config, model),
        "sources": sources,
        "runs_per_source": config.seeds,
        "runs": [{"source": run_source[r], **{k: int(v[r]) for k, v in seeds.items()},
                  "test_accuracy": float(h["test_accuracy"][r, -1]), "val_accuracy": float(h["val_accuracy"][r, -1]),
                  "diverged": bool(h["diverged"][r, -1])} for r in range(n_runs)],
        "per_source": per_source,
        "test_sampling_std": sampling,
        "verdict": verdict({s: r for s, r in per_source.items() if s not in REDUCED}, measured_at(config)),
        "power": power_table(per_source["all"]["std_pct"], config),
        # which test images the runs of 'all' flip on, and their disagreement against their test error (Jiang et al.)
        "flips": stats.flips(preds[all_runs], data.test_y, results.UNSTABLE_SHOWN),
        "diverged": diverged,
        "history": {k: h[k] for k in ("loss", "val_accuracy", "test_accuracy")},
        "timing": training.timing(data_seconds, result),
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    if r_result is not None:
        rh = r_result.history
        metrics[f"{REDUCED_DTYPE}_runs"] = [
            {"source": r_source[r], "compute_dtype": REDUCED_DTYPE, **{k: int(v[r]) for k, v in reduced.seeds.items()},
             "test_accuracy": float(rh["test_accuracy"][r, -1]), "val_accuracy": float(rh["val_accuracy"][r, -1]),
             "diverged": bool(rh["diverged"][r, -1])} for r in range(len(r_source))]
        metrics[f"{REDUCED_DTYPE}_history"] = {k: rh[k] for k in ("loss", "val_accuracy", "test_accuracy")}
        metrics[f"{REDUCED_DTYPE}_diverged"] = diverged_reduced
        metrics["precision_arm"] = precision_arm(config, per_source, every_source, test_acc, every_preds,
                                                 result.timing, r_result.timing)
    figures(config, metrics, workdir)
    plots.seed_variance({"flips": metrics["flips"]}, data.test_x, workdir, f"{metrics['model']}, every stream varied ('all')")
    print(metrics["verdict"]["text"])
    if "precision_arm" in metrics:
        print(metrics["precision_arm"]["text"])
    return metrics


def measured_at(config: ml_collections.ConfigDict) -> dict:
    """The precision the float32 program's runs were measured at, and what the backend made of it."""
    return precision_lib.describe(*precision_lib.of_config(config))


def _timing_of(t: dict) -> dict:
    return {k: t[k] for k in ("runs_per_call", "compile_seconds", "steady_epoch_seconds", "steady_run_epoch_seconds")}


def precision_arm(config: ml_collections.ConfigDict, per_source: dict, every_source: list[str], test_acc: np.ndarray,
                  every_preds: np.ndarray, timing: dict, reduced_timing: dict) -> dict:
    """The `precision` arm against the same seeds' float32 runs of `all`: accuracy, spread and
    steady epoch time of each precision, the paired per-seed differences of test accuracy and the
    share of test images the same seed labels differently in the two precisions; and whether
    bfloat16 compute shields a one-ulp change (`one_bit_bf16` against the spread of `precision`)."""
    source = np.array(every_source)
    full = np.flatnonzero(source == "all")[:reduced_runs(config)]
    low = np.flatnonzero(source == "precision")
    acc_full, acc_low = (100.0 * test_acc[i].astype(np.float64) for i in (full, low))
    diff = acc_low - acc_full
    flips = [float(np.mean(every_preds[i] != every_preds[j])) for i, j in zip(full, low, strict=True)]
    dtype = precision_lib.compute_dtype_of(config)
    out = {
        "runs": int(len(low)), "seeds": "the first runs of 'all' (every stream seed + 1 + i), in both precisions",
        "compute_dtypes": [dtype, REDUCED_DTYPE],
        "test_accuracy_pct": {dtype: stats.summary(acc_full), REDUCED_DTYPE: stats.summary(acc_low)},
        "std_pct": {dtype: stats.std_ci(acc_full), REDUCED_DTYPE: stats.std_ci(acc_low)},
        "paired_differences_pct": [float(d) for d in diff],  # bfloat16 - float32, per seed
        "paired_difference_pct": stats.summary(diff),
        "paired_disagreement": stats.summary(flips),  # same seed, two precisions: share of test images labelled apart
        "timing": {dtype: _timing_of(timing), REDUCED_DTYPE: _timing_of(reduced_timing)},
    }
    d = out["paired_difference_pct"]
    text = (f"{REDUCED_DTYPE} compute against {dtype}, the same {len(low)} seeds: test accuracy "
            f"{mean_std(out['test_accuracy_pct'][REDUCED_DTYPE], 1.0, 2)} % against "
            f"{mean_std(out['test_accuracy_pct'][dtype], 1.0, 2)} %; paired difference {d['mean']:+.3f} % points "
            f"(std {d['std']:.3f}, 95 % CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]); the same seed in the two precisions "
            f"labels {pct(out['paired_disagreement']['mean'])} % of the test images differently (different seeds in "
            f"{dtype}: {_disagreement(per_source['all']['disagreement'])} %).")
    if "one_bit_bf16" in per_source:
        row, ref = per_source["one_bit_bf16"], per_source["precision"]["std_pct"]
        std = row["std_pct"]["std"]
        inside = std is not None and ref["ci_low"] is not None and ref["ci_low"] <= std <= ref["ci_high"]
        out["one_bit_shielded"] = bool(row["identical_runs"])
        out["one_bit_inside_precision_ci"] = bool(inside)
        text += (f" One bit of one initial weight in {REDUCED_DTYPE} compute: std {_std_ci(row['std_pct'])} % points, "
                 f"{'inside' if inside else 'outside'} the 95 % CI of the {REDUCED_DTYPE} spread of different seeds "
                 f"({_std_ci(ref)})")
        if "one_bit" in per_source:
            text += f"; in {dtype}: {_std_ci(per_source['one_bit']['std_pct'])}"
        text += (". Its runs are identical: the one-ulp change is rounded away before it enters a product."
                 if row["identical_runs"] else
                 ". Its runs differ: params and updates stay float32, so the change is not rounded away for good.")
    out["text"] = text
    return out


def describe_model(config: ml_collections.ConfigDict, model) -> str:
    """The trained net and its setting in one line; a dropout rate only where the model reads one."""
    net = ("dense " if config.model.kind == "mlp" else "") + net_text({"model": models.describe(model)}, config)
    extra = f", dropout {config.dropout_rate:g}" if config.get("dropout_rate") else ""
    extra += f", shifts ±{config.max_shift} px" if config.max_shift else ""
    return (f"{net}, {config.optimizer} lr {config.learning_rate:g} {config.schedule}{extra}, batch {config.batch_size}, "
            f"{config.epochs} epochs")


def figures(config: ml_collections.ConfigDict, metrics: dict, workdir: pathlib.Path) -> None:
    """variance_sources.png from metrics.json alone (so it can be redrawn without training)."""
    rows = metrics["per_source"]
    labels = list(rows)
    dis = [{k: (None if r["disagreement"][k] is None else 100.0 * r["disagreement"][k]) for k in ("mean", "ci_low", "ci_high")}
           for r in rows.values()]
    by_epoch = {s: r["std_pct_by_epoch"] for s, r in rows.items()
                if not r["identical_runs"] and r.get("std_pct_by_epoch") is not None}
    plots.variance_sources(
        labels, [r["std_pct"] for r in rows.values()], dis, workdir / "variance_sources.png",
        f"Where run-to-run variance comes from: {metrics['model']} ({metrics['param_count']:,} params), "
        f"{metrics['runs_per_source']} runs per source, one source varied at a time, all runs one vmapped program; "
        f"test accuracy after the last epoch, 10,000 test images",
        sampling_std=metrics["test_sampling_std"]["bootstrap_std_pct"], std_by_epoch=by_epoch)


# --- REPORT.md section and README row, from metrics.json alone ---

def _std_ci(s: dict, digits: int = 3) -> str:
    if s.get("std") is None:
        return "n/a"
    return f"{s['std']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def _disagreement(d: dict) -> str:
    if d.get("mean") is None:
        return "n/a"
    return f"{pct(d['mean'])}" + ("" if d.get("ci_low") is None else f" [{pct(d['ci_low'])}, {pct(d['ci_high'])}]")


SOURCE_NAMES = {"init": "initial weights", "order": "batch order", "dropout": "dropout masks", "noise": "noise draws",
                "augment": "augmentation draws", "one_bit": "one bit of one initial weight",
                "bootstrap": "bootstrap of the training set", "all": "every stream: different seeds",
                "precision": "every stream, bfloat16 compute: the first runs of 'all' again",
                "one_bit_bf16": "one bit of one initial weight, bfloat16 compute"}


def section(m: dict) -> str:
    """This experiment's REPORT.md section, from its metrics.json alone."""
    rows = []
    for source, r in m["per_source"].items():
        # a bfloat16 arm is measured against the bfloat16 spread of different seeds (`precision`)
        ref = m["per_source"]["precision" if source in REDUCED else "all"]["std_pct"]
        within = "-" if source in ("all", "precision") or r["std_pct"]["std"] is None else (
            ("rounded away" if source == "one_bit" else "unused") if r["identical_runs"] else
            ("yes" if ref["ci_low"] <= r["std_pct"]["std"] <= ref["ci_high"] else "**no**"))
        rows.append([f"{source} ({SOURCE_NAMES.get(source, source)})", f"{r['runs']}",
                     mean_std(r["test_accuracy_pct"], 1.0, 2), _std_ci(r["std_pct"]), within,
                     _disagreement(r["disagreement"])])
    sampling = m["test_sampling_std"]
    power = m["power"]
    prows = [[f"{r['difference_pct']:g}", f"{r['seeds_per_arm']}", f"{r['seeds_per_arm_at_ci_high']}"] for r in power["rows"]]
    srows = [[s["experiment"], s["arm"], f"{s['seeds_per_arm']}", num(s["detectable_difference_pct"], 3),
              num(s["detectable_difference_pct_at_ci_high"], 3)] for s in power["sweeps"]]
    return "\n\n".join([
        "## Beyond the study: where run-to-run variance comes from, and how many seeds a claim needs",
        f"{m['model']} ({m['param_count']:,} params): {m['runs_per_source']} runs per source, only that source "
        "varied (every other random stream held at the base seed), all runs one vmapped program. Spread = std of the "
        "final test accuracy over runs with its 95 % chi-square CI; disagreement = mean over pairs of runs of the "
        "share of test images they label differently, 95 % CI by the jackknife over runs.",
        table(["source varied", "runs", "test accuracy (%), mean ± std", "std (% points) [95 % CI]",
               "inside the CI of 'all'?", "disagreement (%) [95 % CI]"], rows),
        f"For scale: the test-set sampling std of one model (no training; {sampling['resamples']} bootstrap resamples "
        f"of the {sampling['test_images']:,} test images) is {sampling['bootstrap_std_pct']:.3f} % points "
        f"(binomial formula: {sampling['binomial_std_pct']:.3f}): the spread over runs of 'all' is "
        f"{times(m['per_source']['all']['std_pct']['std'], sampling['bootstrap_std_pct'], ' times')} that.",
        f"**Against Summers & Dinneen (2021)**: {m['verdict']['text']}",
        *([f"Of the runs of 'all': {flips_text(m['flips'])}",
           figure("variance_sources", "unstable_digits.png", "The test images the runs of 'all' disagree on most")]
          if m.get("flips") else []),
        *precision_paragraphs(m),
        f"**How many seeds** (from the spread of 'all', σ = {power['sigma_pct']:.3f} % points, upper 95 % bound "
        f"{power['sigma_ci_high_pct']:.3f}; {power['test']}, alpha {power['alpha']:g}, power {power['power']:g}):",
        table(["difference of mean test accuracy (% points)", "seeds per arm", "seeds per arm at the upper bound of σ"],
              prows),
        "The smallest difference the project's sweeps can detect with the seeds they use, if their runs spread as "
        "this model's do (each sweep's own spread gives its own number):",
        table(["sweep", "arm", "seeds per arm", "detectable difference (% points)", "at the upper bound of σ"], srows),
        timing_line(m),
        figure("variance_sources", "variance_sources.png",
               "Spread of test accuracy and disagreement of predictions per source of randomness, with 95 % CIs, "
               "and the spread after each epoch"),
    ])


def precision_paragraphs(m: dict) -> list[str]:
    """The precision arm's paragraph and table (accuracy, spread and steady epoch time per compute
    dtype), or nothing when the run had no bfloat16 arm."""
    arm = m.get("precision_arm")
    if arm is None:
        return []
    rows = [[dtype, f"{arm['runs']}", mean_std(arm["test_accuracy_pct"][dtype], 1.0, 2), _std_ci(arm["std_pct"][dtype]),
             f"{arm['timing'][dtype]['steady_epoch_seconds']:.3f} ({arm['timing'][dtype]['runs_per_call']} runs)",
             f"{arm['timing'][dtype]['steady_run_epoch_seconds']:.4f}"] for dtype in arm["compute_dtypes"]]
    return [f"**Precision as a source**: {arm['text']}",
            table(["compute dtype", "runs (same seeds)", "test accuracy (%), mean ± std", "std (% points) [95 % CI]",
                   "steady epoch of its program (s)", "s per run-epoch"], rows),
            "Each precision trains as its own program (the compute dtype is a static attribute of the model), so its "
            "epoch time is that of its program; `benchmarks/precision.py` times both at the same number of runs."]


def row(m: dict, c: dict) -> list[str]:
    """This experiment's row of the README's results table, from its metrics and config."""
    rows = m["per_source"]
    # a stream the model never draws from gives identical runs and is left out; a bfloat16 arm whose
    # runs are identical is a finding (the change was rounded away) and is shown
    spread = "; ".join(f"{k} {_std_ci(r['std_pct'], 2)}" if not r["identical_runs"] else f"{k}: identical runs"
                       for k, r in rows.items() if not r["identical_runs"] or k in REDUCED)
    power = m["power"]
    need = ", ".join(f"{r['difference_pct']:g}: {r['seeds_per_arm']}" for r in power["rows"])
    verdict = "agrees" if m["verdict"]["agrees_with_summers_dinneen"] else "does not fully agree"
    at = m["verdict"].get("measured_at")
    where = f" (in {at['compute_dtype']} compute, float32 products in {at['float32_products']})" if at else ""
    return [f"beyond the study: where variance comes from, {m['model']}, {seeds_text(c)} per source",
            f"std of test accuracy (% points) [95 % CI]: {spread}; MNIST **{verdict}** with Summers & Dinneen{where}. "
            f"Seeds per arm to detect a difference of (points): {need}",
            "-", "Summers & Dinneen 2021: each source alone ≈ all together"]


main = cli.entry_point(run, "configs/variance_sources.py", __doc__, __name__)
