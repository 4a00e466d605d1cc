"""REPORT.md of a reproduce workdir: a results table per section of the study, every number
read from a metrics.json (the experiments' own, or the job's, which records the study's and the
literature's reference values used here), with the figures embedded."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

from mnist_jax import distributed, provenance

# Values of the study (../shared/STUDY.md) and of the literature, as the report quotes them.
REFERENCES = {
    "mlp_params_study": 55_050,
    "mlp_keras_pytorch_accuracy_pct": [96.8, 97.1],  # Keras / PyTorch with the study's setup
    "l2_study_best_test_accuracy_pct": [98.3, 98.6],  # the study, best test accuracy over epochs per factor
    "l2_study_runs_per_factor": 3,
    "hinton_errors": 160,  # Hinton et al. 2012, standard backprop net
    "hinton_error_pct": 1.6,
    "dropout_target_error_pct": 1.3,
    "srivastava_dropout_error_pct": [1.25, 1.35],
    "cnn_study_test_accuracy_pct": 98.89,
    "vae_literature_nll_nats": [85, 90],
}


def _load(workdir: pathlib.Path, name: str) -> dict | None:
    path = workdir / name / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def mean_std(s: dict, scale: float = 100.0, digits: int = 2) -> str:
    if s.get("mean") is None:
        return "n/a"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


def ci(s: dict, scale: float = 100.0, digits: int = 2) -> str:
    if s.get("ci_low") is None:
        return "n/a"
    return f"[{scale * s['ci_low']:.{digits}f}, {scale * s['ci_high']:.{digits}f}]"


def timing_line(m: dict) -> str:
    t = m.get("timing", {})
    line = f"Wall time {t.get('wall_seconds', 0):.1f} s on {t.get('device', 'an unknown device')}"
    if "runs_per_call" in t:
        n = t["runs_per_call"]
        line += (f" (compile {t['compile_seconds']:.1f} s; one epoch of the {n} run{'s' * (n > 1)} one program "
                 f"call trains, steady state: {t['steady_epoch_seconds']:.3f} s, "
                 f"{t['steady_run_epoch_seconds']:.3f} s per run-epoch)")
    elif "compile_seconds" in t:
        line += (f" (compile {t['compile_seconds']:.1f} s; one epoch of all runs together, "
                 f"steady state: {t.get('steady_epoch_seconds', 0):.3f} s)")
    return line + "."


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def figure(name: str, file: str, caption: str) -> str:
    return f"![{caption}]({name}/{file})\n\n*{caption}*"


def section_mlp(m: dict) -> str:
    acc = m["test_accuracy"]
    lo, hi = REFERENCES["mlp_keras_pytorch_accuracy_pct"]
    rows = [
        ["parameters", f"{m['param_count']:,}", f"{REFERENCES['mlp_params_study']:,}", "-"],
        [f"test accuracy (%), mean ± std over {acc['n']} seeds", mean_std(acc), "figure only",
         f"Keras / PyTorch, same setup: {lo:.1f}-{hi:.1f}"],
        ["95 % CI of the mean (%)", ci(acc), "-", "-"],
        ["validation accuracy (%), mean ± std", mean_std(m["val_accuracy"]), "-", "-"],
    ]
    return "\n\n".join([
        "## 2. Dense classifier 784-64-64-10",
        table(["", "this codebase", "study", "reference"], rows),
        timing_line(m),
        figure("mlp", "accuracy.png", "Training and validation accuracy per epoch, mean ± 1 std over seeds"),
    ])


def p_text(p: float) -> str:
    """'p = 0.012', or 'p < 0.001' where three decimals would print 0.000."""
    return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"


def beyond_noise(per_value: list[dict], field: str, alpha: float = 0.05) -> str:
    """Which values differ from the first one beyond seed noise (Welch p < alpha), and which way."""
    first, others = per_value[0], per_value[1:]
    tested = [r for r in others if r["vs_first_value_welch"].get("p_value") is not None]
    if not tested:
        return ""
    real = [r for r in tested if r["vs_first_value_welch"]["p_value"] < alpha]
    noise = [r for r in tested if r not in real]
    parts = [f"{field} = {r[field]:g} is {'worse' if r['test_error_pct']['mean'] > first['test_error_pct']['mean'] else 'better'}"
             f" ({p_text(r['vs_first_value_welch']['p_value'])})" for r in real]
    text = f"Against {field} = {first[field]:g} on the test set: "
    text += ("; ".join(parts) + " beyond seed noise" if parts else "no value differs beyond seed noise")
    if noise:
        p_min = min(r["vs_first_value_welch"]["p_value"] for r in noise)
        text += f"; the other values are within seed noise (Welch p >= {p_min:.2f})" if real else f" (Welch p >= {p_min:.2f})"
    return text + "."


def dropout_target(m: dict) -> str:
    """Whether the setting chosen on validation meets the dropout recipe's target, with its epochs."""
    target = REFERENCES["dropout_target_error_pct"]
    mean = m["chosen_on_validation"]["test_error_pct"]["mean"]
    epochs = len(m["history"]["loss"][0]) if m.get("history", {}).get("loss") else "?"
    verdict = "**met**" if mean <= target else "**not met**"
    return (f"Target: mean test error of the setting chosen on validation <= {target} %: {verdict} "
            f"({mean:.3f} % after {epochs} epochs).")


def detectable_text(m: dict) -> str:
    """' With 10 seeds per value and runs spreading by 0.06 % points, ...' (empty for older metrics)."""
    d = m.get("detectable", {})
    if d.get("difference_pct") is None:
        return ""
    return (f" With {d['seeds_per_value']} seeds per value and runs spreading by {d['pooled_std_pct']:.3f} % points "
            f"(pooled std), a difference of mean test error of {d['difference_pct']:.3f} % points is detected with "
            "power 0.8 (two-sided t-test, alpha 0.05); smaller true differences are likely missed.")


def section_sweep(m: dict, name: str, title: str, study_note: str) -> str:
    field = m["sweep_field"]
    rows = []
    for row in m["per_value"]:
        w = row["vs_first_value_welch"]
        p = "-" if w.get("p_value") is None or row is m["per_value"][0] else f"{w['p_value']:.3f}"
        better = row.get("vs_first_value_p_better", {})
        p_better = ("-" if better.get("p") is None or row is m["per_value"][0]
                    else f"{better['p']:.2f} [{better['ci_low']:.2f}, {better['ci_high']:.2f}]")
        rows.append([f"{row[field]:g}", mean_std(row["test_error_pct"], 1.0, 3), ci(row["test_error_pct"], 1.0, 3),
                     f"{row['test_error_pct']['n']}", p, p_better, mean_std(row["study_protocol_best_test_accuracy"])])
    chosen = m["chosen_on_validation"]
    err = chosen["test_error_pct"]
    ref = m["reference"]
    verdict = ("inside" if ref["inside_chosen_ci"] else "outside")
    p_value = chosen["vs_first_value_welch"].get("p_value")
    first = m["per_value"][0][field]
    if chosen[field] == first:
        helps = f"no other value beat {field} = {first:g} on validation"
    elif p_value is None:
        helps = "too few seeds for a test"
    else:
        helps = (f"against {field} = {first:g}, Welch p = {p_value:.3f}: "
                 + ("a real difference" if p_value < 0.05 else "within seed noise"))
    summary = (f"Chosen on validation: **{field} = {chosen[field]:g}**, test error {mean_std(err, 1.0, 3)} % "
               f"(95 % CI {ci(err, 1.0, 3)}); {helps}. The reference, {ref['label']}, is {verdict} that interval. "
               f"{beyond_noise(m['per_value'], field)} {study_note}")
    return "\n\n".join([
        f"## {title}",
        table([field, "test error (%), mean ± std", "95 % CI (%)", "seeds", "Welch p vs first",
               "P(a run beats a run at the first value) [95 % CI]", "study protocol: best test accuracy over epochs (%)"],
              rows),
        summary + detectable_text(m),
        timing_line(m),
        figure(name, f"{m['experiment']}.png", "Test error per value: every seed a dot, mean with 95 % CI"),
        figure(name, f"{m['experiment']}_std.png", "Run-to-run standard deviation per value"),
        figure(name, f"{m['experiment']}_curves.png", "Validation accuracy per epoch per value"),
    ])


def _by_level(per_level: dict, levels: list) -> list[dict]:
    """per-level summaries (keyed by the level as text) in the order of `levels`."""
    values = list(per_level.values())
    assert len(values) == len(levels), (len(values), len(levels))
    return values


def section_denoise(m: dict) -> str:
    levels = m["noise_levels"]
    pl = m["per_level"]
    rows = []
    for lv, noisy, den, gain, bce in zip(levels, _by_level(pl["test_psnr_noisy"], levels),
                                         _by_level(pl["test_psnr_denoised"], levels),
                                         _by_level(pl["psnr_gain_db"], levels), _by_level(pl["test_bce"], levels),
                                         strict=True):
        rows.append([f"{lv:g}", num(noisy["mean"]), mean_std(den, 1.0), mean_std(gain, 1.0), ci(gain, 1.0),
                     num(bce["mean"], 4)])
    n_seeds = len(set(m["seeds"]))
    return "\n\n".join([
        "## 4A-4B. Denoising autoencoder 784-128-96-128-784 against salt-and-pepper noise",
        table(["noise level", "PSNR noisy (dB)", f"PSNR denoised (dB), mean ± std over {n_seeds} seeds",
               "gain (dB)", "95 % CI of the gain (dB)", "test BCE (nats per pixel)"], rows),
        "The study: the autoencoder \"performs quite well up to 0.7\"; beyond 0.7 digits are \"virtually "
        "impossible\" to identify. One autoencoder per level and seed, all trained as one vmapped program, "
        "with fresh noise drawn inside every step.",
        timing_line(m),
        figure("denoise", "denoise.png", "Per noise level: originals, noisy and denoised test digits"),
    ])


def section_noise_accuracy(m: dict) -> str:
    levels = m["noise_levels"]
    acc = m["test_accuracy"]
    curves = [_by_level(acc[k]["per_level"], levels) for k in ("noisy", "denoised", "clean")]
    gain = _by_level(m["denoised_minus_noisy"]["per_level"], levels)
    welch = _by_level(m["denoised_minus_noisy"]["welch"], levels)
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


def section_vae(m: dict) -> str:
    q = m["sample_quality"]
    iwae = m["iwae"]
    lo, hi = REFERENCES["vae_literature_nll_nats"]
    model = m["model"]
    rows = [
        ["test negative ELBO (nats)", mean_std(m["test_neg_elbo"], 1.0), ci(m["test_neg_elbo"], 1.0), "-"],
        [f"test NLL, IWAE bound k = {iwae['k']} on {iwae['images']:,} images (nats)", mean_std(iwae["nll"], 1.0),
         ci(iwae["nll"], 1.0), f"{lo}-{hi} for such models"],
        ["samples classified with confidence >= 0.9 (%)", mean_std(q["confident_share"]), ci(q["confident_share"]), "-"],
        [f"entropy of the sample labels (bits; uniform = {q['max_entropy_bits']:.3f})",
         mean_std(q["label_entropy_bits"], 1.0, 3), ci(q["label_entropy_bits"], 1.0, 3), "-"],
        ["Frechet distance, classifier features of samples vs test digits", mean_std(q["frechet_distance"], 1.0),
         ci(q["frechet_distance"], 1.0), "-"],
    ]
    clf = q["classifier"]
    return "\n\n".join([
        "## 4D. A variational autoencoder that generates digits",
        f"Dense VAE 784-{'-'.join(str(h) for h in model['hidden'])}-{model['latent']} "
        f"({m['param_count']:,} params), {len(m['seeds'])} seeds, dynamically binarized training images. "
        "The study's attempt failed: \"the sampled images came out looking nothing like digits\".",
        table(["", "this codebase (mean ± std over seeds)", "95 % CI", "literature"], rows),
        f"Samples are judged by a {clf['kind']} classifier ({pct(clf['test_accuracy'])} % test accuracy).",
        timing_line(m),
        figure("vae", "vae_samples.png", "100 new digits: decoder Bernoulli means of latents drawn from the prior"),
        figure("vae", "vae_latent.png", "A 2-D latent space: the decoded manifold and the test set by label"),
        figure("vae", "vae_interpolation.png", "Interpolations between test digits in latent space"),
    ])


def section_cnn(m: dict, title: str, study: str) -> str:
    acc = m["test_accuracy"]
    target = m.get("target", {})
    rows = [
        ["parameters", f"{m['param_count']:,}", "-"],
        [f"test accuracy (%), mean ± std over {acc['n']} seeds", mean_std(acc), study],
        ["95 % CI of the mean (%)", ci(acc), "-"],
        ["validation accuracy (%), mean ± std", mean_std(m["val_accuracy"]), "-"],
    ]
    goal = ""
    if "mean_test_accuracy_at_least" in target:
        goal = (f"Target: mean test accuracy >= {pct(target['mean_test_accuracy_at_least'])} %: "
                + ("**met**." if target.get("met") else "**not met**."))
    name = m["experiment"]
    return "\n\n".join([
        f"## {title}",
        f"Architecture {m.get('architecture', '')}.",
        table(["", "this codebase", "study"], rows),
        goal,
        timing_line(m),
        figure(name, "accuracy.png", "Training and validation accuracy per epoch, mean ± 1 std over seeds"),
        figure(name, "confusion.png", "Confusion matrix on the test set, summed over seeds"),
    ])


def section_cnn_search(m: dict) -> str:
    parts = ["## 3A. The CNN search: the study's three rounds, chosen on validation", m.get("setting", "")]
    for key, rnd in m["rounds"].items():
        rows = []
        tests = {t["other"]: t for t in rnd.get("welch_vs_chosen", [])}
        for i, c in enumerate(rnd["candidates"]):
            mark = " (chosen)" if i == rnd["chosen_index"] else ""
            t = tests.get(c["label"], {})
            welch = "-" if t.get("p_value") is None else f"{t['p_value']:.3f}"
            b = t.get("p_chosen_beats_other", {})
            better = "-" if b.get("p") is None else f"{b['p']:.2f} [{b['ci_low']:.2f}, {b['ci_high']:.2f}]"
            rows.append([f"{c['label']}{mark}", f"{c['param_count']:,}", mean_std(c["val_accuracy"]),
                         ci(c["val_accuracy"]), welch, better])
        verdict = ("matters beyond seed noise" if rnd["matters_beyond_seed_noise"]
                   else "no difference beyond seed noise (Welch)")
        d = rnd.get("detectable", {})
        if d.get("difference") is not None:
            verdict += (f"; with {d['seeds_per_candidate']} seeds per candidate, differences of mean validation accuracy "
                        f"below {pct(d['difference'])} % points are likely missed (power 0.8 at the pooled std "
                        f"{pct(d['pooled_std'])} % points)")
        parts += [f"**{rnd['title']}**: {verdict}.",
                  table(["candidate", "parameters", "validation accuracy (%), mean ± std", "95 % CI (%)",
                         "Welch p vs chosen", "P(a chosen run beats a run of it) [95 % CI]"], rows),
                  figure("cnn_search", f"{key}.png", rnd["title"])]
    fc, last = m.get("final_choice"), list(m["rounds"].values())[-1]
    if fc:
        chosen = last["candidates"][last["chosen_index"]]
        matters = ", ".join(k.split("_", 1)[1] for k in m.get("choices_that_matter_beyond_seed_noise", [])) or "none"
        parts.append(f"Final choice: {fc['architecture']} ({fc['filters']} filters, dense {fc['dense'] or 'none'}, "
                     f"dropout {fc['dropout_rate']:g}); its test accuracy, reported and not used to choose: "
                     f"{mean_std(chosen['test_accuracy'])} %. Choices that matter beyond seed noise: {matters}.")
    parts.append("The study: filters made no difference (32 kept), the added dense layer helped a lot (32 kept), "
                 "dropout had no effect (0.5 kept).")
    t = m.get("timing", {})
    if "programs" in t:
        parts.append(f"Wall time {t.get('wall_seconds', 0):.1f} s on {t.get('device', 'an unknown device')}: "
                     f"{len(t['programs'])} training programs, {t['train_seconds']:.0f} s of training and "
                     f"{t['compile_seconds']:.0f} s of compiling; reused candidates are not trained again.")
    return "\n\n".join(parts)


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
                "bootstrap": "bootstrap of the training set", "all": "every stream: different seeds"}


def section_variance_sources(m: dict) -> str:
    all_ci = m["per_source"]["all"]["std_pct"]
    rows = []
    for source, r in m["per_source"].items():
        within = "-" if source == "all" or r["std_pct"]["std"] is None else (
            "unused" if r["identical_runs"] else
            ("yes" if all_ci["ci_low"] <= r["std_pct"]["std"] <= all_ci["ci_high"] else "**no**"))
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
        f"{m['per_source']['all']['std_pct']['std'] / sampling['bootstrap_std_pct']:.2f} times that.",
        f"**Against Summers & Dinneen (2021)**: {m['verdict']['text']}",
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


SECTIONS: dict[str, Callable[[dict], str]] = {
    "mlp": section_mlp,
    "l2_sweep": lambda m: section_sweep(
        m, "l2_sweep", "2D. L2-regularization sweep, 784-500-300-10",
        "The study reported {}-{} % best test accuracy per factor with {} runs each, choosing the epoch on the "
        "test set; that protocol's column above shows the upward bias it carries.".format(
            *REFERENCES["l2_study_best_test_accuracy_pct"], REFERENCES["l2_study_runs_per_factor"])),
    "dropout_sweep": lambda m: section_sweep(
        m, "dropout_sweep", "Beyond the study: Hinton's recipe, 784-800-800-10 with dropout and max-norm",
        dropout_target(m)),
    "cnn": lambda m: section_cnn(m, "3A. The study's final CNN", f"{REFERENCES['cnn_study_test_accuracy_pct']}"),
    "cnn_search": section_cnn_search,
    "cnn_best": lambda m: section_cnn(m, "Beyond the study: a stronger CNN with shifts and a schedule", "-"),
    "denoise": section_denoise,
    "noise_accuracy": section_noise_accuracy,
    "vae": section_vae,
    "variance_sources": section_variance_sources,
}


def write_report(workdir: pathlib.Path, names: list[str], profile: str, out: pathlib.Path | None = None) -> pathlib.Path:
    """Write workdir/REPORT.md (or `out`) from the metrics of the experiments `names`; returns its path."""
    workdir = pathlib.Path(workdir)
    parts = [f"# mnist-jax: the study reproduced ({profile} profile)"]
    if profile == "quick":
        parts.append("> **Quick profile**: small grids, few seeds and epochs, so the job finishes in minutes "
                     "on a CPU. The numbers show the pipeline works; they are not the study's. Run "
                     "`--config.profile=full` for the real study.")
    total, devices, made_by = 0.0, set(), {}
    for name in names:
        m = _load(workdir, name)
        if m is None:
            parts.append(f"## {name}\n\nNot run (no metrics.json in `{name}/`).")
            continue
        total += m.get("timing", {}).get("wall_seconds", 0.0)
        devices.add(m.get("timing", {}).get("device", "?"))
        prov = m.get("provenance")
        made_by.setdefault(provenance.short_code(prov["code"]) if prov else "unrecorded code", []).append(name)
        parts.append(SECTIONS[name](m) + "\n\n" + provenance.describe(prov))
    head = [f"Experiments: {', '.join(names)}. Total training wall time {total:.1f} s on {', '.join(sorted(devices))}."]
    if len(made_by) > 1:
        head.append("> **Mixed code**: these results were made by different code, so they are not one run: "
                    + "; ".join(f"{code}: {', '.join(stages)}" for code, stages in made_by.items()) + ".")
    elif made_by:
        head.append(f"Every result below was made by {next(iter(made_by))}.")
    parts[2 if profile == "quick" else 1:2 if profile == "quick" else 1] = head
    path = pathlib.Path(out) if out is not None else workdir / "REPORT.md"
    if not distributed.is_writer():  # in a multi-process run, process 0 alone writes the workdir
        return path
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n\n".join(parts) + "\n")
    tmp.replace(path)
    return path


# --- One row per experiment for the README's results table (mnist_jax.results_table) ---
# Each takes (metrics, config) of a stage and returns [experiment, this codebase, the study,
# published reference]; every number comes from the two.


def _seeds(c: dict) -> str:
    return f"{c['seeds']} seed{'s' * (c['seeds'] > 1)}"


def row_mlp(m: dict, c: dict) -> list[str]:
    acc = m["test_accuracy"]
    lo, hi = REFERENCES["mlp_keras_pytorch_accuracy_pct"]
    return [f"dense 784-{'-'.join(map(str, c['model']['hidden']))}-10, {c['optimizer'].upper()} {c['learning_rate']:g}, "
            f"{c['epochs']} epochs ({_seeds(c)})",
            f"**{mean_std(acc)} %** test accuracy (CI {ci(acc)}); {m['param_count']:,} params",
            f"{REFERENCES['mlp_params_study']:,} params; curves only", f"Keras / PyTorch, same setup: {lo:g}-{hi:g} %"]


def _sweep_this(m: dict) -> str:
    field = m["sweep_field"]
    chosen = m["chosen_on_validation"]
    err = chosen["test_error_pct"]
    return (f"chosen on validation: {field} = {chosen[field]:g}, **{mean_std(err, 1.0, 3)} %** test error "
            f"(CI {ci(err, 1.0, 3)}). {beyond_noise(m['per_value'], field)}")


def row_l2_sweep(m: dict, c: dict) -> list[str]:
    lo, hi = REFERENCES["l2_study_best_test_accuracy_pct"]
    ref = m["reference"]
    return [f"784-{'-'.join(map(str, c['model']['hidden']))}-10, {c['optimizer'].upper()} {c['learning_rate']:g}, "
            f"{c['epochs']} epochs, L2 sweep ({len(c['l2_factors'])} factors x {_seeds(c)})", _sweep_this(m),
            f"{lo:g}-{hi:g} % best test accuracy over epochs, {REFERENCES['l2_study_runs_per_factor']} runs",
            f"Hinton et al. 2012: {ref['test_error_pct']:g} % ({ref['errors']} errors), "
            f"{'inside' if ref['inside_chosen_ci'] else 'outside'} our CI"]


def row_dropout_sweep(m: dict, c: dict) -> list[str]:
    lo, hi = REFERENCES["srivastava_dropout_error_pct"]
    target = REFERENCES["dropout_target_error_pct"]
    met = m["chosen_on_validation"]["test_error_pct"]["mean"] <= target
    return [f"beyond the study: Hinton's recipe 784-{'-'.join(map(str, c['model']['hidden']))}-10, dropout rate over "
            f"{', '.join(f'{r:g}' for r in c['dropout_rates'])} (+{c['input_dropout_rate']:g} on the input), max-norm "
            f"{c['max_norm']:g}, momentum {c['momentum']:g}, {c['epochs']} epochs ({_seeds(c)} per rate)",
            f"{_sweep_this(m)} Target <= {target:g} %: **{'met' if met else 'not met'}**.", "-",
            f"Srivastava et al. 2014: {lo:g}-{hi:g} % without max-norm"]


def _cnn_this(m: dict) -> str:
    acc, target = m["test_accuracy"], m.get("target", {})
    goal = ""
    if "mean_test_accuracy_at_least" in target:
        goal = (f"; target >= {pct(target['mean_test_accuracy_at_least'], 1)} % "
                f"**{'met' if target.get('met') else 'not met'}**")
    return f"**{mean_std(acc)} %** test accuracy (CI {ci(acc)}){goal}; {m['param_count']:,} params"


def row_cnn(m: dict, c: dict) -> list[str]:
    return [f"the study's CNN {m['architecture']}, {c['optimizer']} {c['learning_rate']:g} {c['schedule']}, "
            f"{c['epochs']} epochs ({_seeds(c)})", _cnn_this(m), f"{REFERENCES['cnn_study_test_accuracy_pct']} %", "-"]


def row_cnn_best(m: dict, c: dict) -> list[str]:
    return [f"beyond the study: {m['architecture']}, shifts of up to {c['max_shift']} px, {c['optimizer']} "
            f"{c['learning_rate']:g} {c['schedule']}, {c['epochs']} epochs ({_seeds(c)})", _cnn_this(m), "-", "-"]


def row_cnn_search(m: dict, c: dict) -> list[str]:
    fc = m["final_choice"]
    last = list(m["rounds"].values())[-1]
    chosen = last["candidates"][last["chosen_index"]]
    matters = ", ".join(k.split("_", 1)[1] for k in m["choices_that_matter_beyond_seed_noise"]) or "none"
    return [f"the study's CNN search, 3 rounds on validation ({_seeds(c)} x {c['epochs']} epochs per candidate)",
            f"filters **{fc['filters']}**, dense **{fc['dense'] or 'none'}**, dropout **{fc['dropout_rate']:g}**; choices "
            f"that matter beyond seed noise: {matters}; the chosen {fc['architecture']} tests at "
            f"{mean_std(chosen['test_accuracy'])} %",
            "filters: no difference (32 kept); dense: helped a lot (32 kept); dropout: no effect (0.5 kept)", "-"]


def row_denoise(m: dict, c: dict) -> list[str]:
    levels = m["noise_levels"]
    pl = m["per_level"]
    gains = _by_level(pl["psnr_gain_db"], levels)
    i = levels.index(0.4) if 0.4 in levels else len(levels) // 2
    noisy, den = _by_level(pl["test_psnr_noisy"], levels)[i], _by_level(pl["test_psnr_denoised"], levels)[i]
    low, high = min(g["mean"] for g in gains), max(g["mean"] for g in gains)
    return [f"denoising AE {m.get('architecture', '784-128-96-128-784')}, one per level "
            f"{levels[0]:g}-{levels[-1]:g}, {_seeds(c)} each, {c['epochs']} epochs",
            f"at level {levels[i]:g}: PSNR {num(noisy['mean'])} dB noisy -> **{num(den['mean'])} dB** denoised, gain "
            f"**{mean_std(gains[i], 1.0)} dB** (CI {ci(gains[i], 1.0)}); gains of {low:.1f}-{high:.1f} dB at every level",
            "\"quite well up to 0.7\"", "-"]


def row_noise_accuracy(m: dict, c: dict) -> list[str]:
    return [f"accuracy vs noise, levels {m['noise_levels'][0]:g}-{m['noise_levels'][-1]:g}, classifier {c['epochs']} "
            f"epochs, autoencoders {m['denoiser_epochs']} epochs ({_seeds(c)})", m["conclusion"]["text"],
            "\"denoising can improve accuracy\"", "-"]


def row_vae(m: dict, c: dict) -> list[str]:
    q, iwae = m["sample_quality"], m["iwae"]
    lo, hi = REFERENCES["vae_literature_nll_nats"]
    hidden = "-".join(map(str, m["model"]["hidden"]))
    return [f"VAE, dense 784-{hidden}-{m['model']['latent']}, {c['epochs']} epochs ({_seeds(c)})",
            f"test negative ELBO **{mean_std(m['test_neg_elbo'], 1.0)} nats**; IWAE (k = {iwae['k']}) NLL "
            f"**{mean_std(iwae['nll'], 1.0)} nats**; {mean_std(q['confident_share'], 100.0, 1)} % of prior samples "
            f"classified with confidence >= 0.9 by a {q['classifier']['kind']} trained alongside",
            "failed: \"nothing like digits\"", f"{lo}-{hi} nats NLL for such models"]


def row_variance_sources(m: dict, c: dict) -> list[str]:
    rows = m["per_source"]
    spread = "; ".join(f"{k} {_std_ci(r['std_pct'], 2)}" for k, r in rows.items() if not r["identical_runs"])
    power = m["power"]
    need = ", ".join(f"{r['difference_pct']:g}: {r['seeds_per_arm']}" for r in power["rows"])
    verdict = "agrees" if m["verdict"]["agrees_with_summers_dinneen"] else "does not fully agree"
    return [f"beyond the study: where variance comes from, {m['model']}, {_seeds(c)} per source",
            f"std of test accuracy (% points) [95 % CI]: {spread}; MNIST **{verdict}** with Summers & Dinneen. "
            f"Seeds per arm to detect a difference of (points): {need}",
            "-", "Summers & Dinneen 2021: each source alone ≈ all together"]


ROWS: dict[str, Callable[[dict, dict], list[str]]] = {
    "mlp": row_mlp, "l2_sweep": row_l2_sweep, "dropout_sweep": row_dropout_sweep, "cnn": row_cnn,
    "cnn_search": row_cnn_search, "cnn_best": row_cnn_best, "denoise": row_denoise,
    "noise_accuracy": row_noise_accuracy, "vae": row_vae, "variance_sources": row_variance_sources,
}
