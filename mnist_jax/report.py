"""REPORT.md of a reproduce workdir, assembled: each stage's experiment renders its own section
from its own metrics.json (`section(metrics)` in its module, found through the registry); this
module adds the header, the provenance line under each section and the formatting helpers the
sections share."""

from __future__ import annotations

import functools
import inspect
import json
import pathlib

from mnist_jax import distributed, provenance, registry, stats
from mnist_jax.config import load_config_file


@functools.cache
def study(name: str) -> dict:
    """The study's and the literature's reference values that experiment `name` quotes: the
    `study` block of its registered config file (the one place they live)."""
    stage = registry.stage(name) or next(e for e in registry.experiments() if e.name == name)
    block = load_config_file(stage.config).get("study")
    return block.to_dict() if block is not None else {}


def references() -> dict:
    """Every stage's reference values, in one dict (the job's metrics.json records them)."""
    out = {}
    for stage in registry.stages():
        out.update(study(stage.name))
    return out


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


def waited(t: dict) -> str:
    """', of which training waited W s' where some of a training's compile time ran ahead, in the
    background (`sweep.GridTrainer.precompile`), else ''."""
    wait = t.get("compile_wait_seconds")
    if wait is None or wait >= t.get("compile_seconds", 0.0) - 0.05:
        return ""
    return f", of which training waited {wait:.1f} s"


def timing_line(m: dict) -> str:
    """The wall time of a stage, and of its main training program: compile time and the steady
    epoch of the runs one call trains (an experiment without a main program: wall time only)."""
    t = m.get("timing", {})
    line = f"Wall time {t.get('wall_seconds', 0):.1f} s on {t.get('device', 'an unknown device')}"
    if "runs_per_call" in t:
        n = t["runs_per_call"]
        line += (f" (compile {t['compile_seconds']:.1f} s{waited(t)}; one epoch of the {n} run{'s' * (n > 1)} one program "
                 f"call trains, steady state: {t['steady_epoch_seconds']:.3f} s, "
                 f"{t['steady_run_epoch_seconds']:.3f} s per run-epoch)")
    if c := t.get("compilation"):  # every program the run compiled, from mnist_jax.compilation
        line += (f". Programs: {c['programs']}, {c['cache_hits']} of them loaded from the persistent compilation cache; "
                 f"{c['compile_seconds']:.1f} s compiling or loading them, {c['trace_lower_seconds']:.1f} s tracing and lowering")
    return line + "."


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def per_value_table(m: dict) -> str:
    """The table of a swept classifier grid ("" when the run swept nothing): for each point of
    its sweep declaration, the runs and their test and validation accuracy (%)."""
    if not m.get("per_value"):
        return ""
    names = list(m.get("sweep") or {})
    rows = [[*(f"{p[n]:g}" for n in names), str(p["runs"]), mean_std(p["test_accuracy"]), ci(p["test_accuracy"]),
             mean_std(p["val_accuracy"])] for p in m["per_value"]]
    return table([*names, "runs", "test accuracy (%)", "95 % CI", "validation accuracy (%)"], rows)


def figure(name: str, file: str, caption: str) -> str:
    return f"![{caption}]({name}/{file})\n\n*{caption}*"


def by_level(per_level: dict, levels: list) -> list[dict]:
    """per-level summaries (keyed by the level as text) in the order of `levels`."""
    values = list(per_level.values())
    assert len(values) == len(levels), (len(values), len(levels))
    return values


def section(name: str, m: dict, stages: dict | None = None) -> str:
    """The REPORT.md section of stage `name`, rendered by the experiment that wrote `m`. An
    experiment whose `section` takes `stages` also gets {experiment: metrics or None} of every
    stage of the report, in its order (to compare itself with its siblings, such as the vae stages)."""
    render = registry.stage(name).module().section
    if stages is not None and "stages" in inspect.signature(render).parameters:
        return render(m, stages)
    return render(m)


def row(name: str, m: dict, c: dict) -> list[str]:
    """The README results-table row of stage `name` ([experiment, this codebase, the study,
    published reference]), rendered by its experiment from its metrics and config."""
    return registry.stage(name).module().row(m, c)


def write_report(workdir: pathlib.Path, names: list[str], profile: str, out: pathlib.Path | None = None) -> pathlib.Path:
    """Write workdir/REPORT.md (or `out`) from the metrics of the experiments `names`; returns its path."""
    workdir = pathlib.Path(workdir)
    parts = [f"# mnist-jax: the study reproduced ({profile} profile)"]
    if profile == "quick":
        parts.append("> **Quick profile**: small grids, few seeds and epochs, so the job finishes in minutes "
                     "on a CPU. The numbers show the pipeline works; they are not the study's. Run "
                     "`--config.profile=full` for the real study.")
    total, devices, made_by = 0.0, set(), {}
    loaded = {name: _load(workdir, name) for name in names}
    for name in names:
        m = loaded[name]
        if m is None:
            parts.append(f"## {name}\n\nNot run (no metrics.json in `{name}/`).")
            continue
        total += m.get("timing", {}).get("wall_seconds", 0.0)
        devices.add(m.get("timing", {}).get("device", "?"))
        prov = m.get("provenance")
        made_by.setdefault(provenance.short_code(prov["code"]) if prov else "unrecorded code", []).append(name)
        parts.append(section(name, m, loaded) + "\n\n" + provenance.describe(prov))
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


def net_text(m: dict, c: dict) -> str:
    """The trained net for a results row: '784-64-64-10' for a dense net, else what the model says."""
    hidden = c["model"].get("hidden") if c["model"].get("kind") == "mlp" else None
    return f"784-{'-'.join(map(str, hidden))}-10" if hidden else m.get("model", c["model"]["kind"])


def seeds_text(c: dict) -> str:
    return f"{c['seeds']} seed{'s' * (c['seeds'] > 1)}"




# --- What the seeds say beyond their mean (metrics.json's `selection`, `ensemble`, `flips`) ---

def point_text(point: dict) -> str:
    """'l2 = 1e-06' (a point of a swept grid), 'l2 = 0, lr = 0.1' for several names."""
    return ", ".join(f"{n} = {v:g}" for n, v in point.items())


def selection_text(s: dict) -> str:
    """How often validation would choose each point with other seeds, and the seeds per point at
    which one would be chosen in 90 % of the resamples."""
    if not s.get("resamples"):
        return ""
    shares = sorted(s["points"], key=lambda p: -p["p_chosen"])
    names = [n for n in s["points"][0] if n not in ("runs", "p_chosen")]
    listed = ", ".join(f"{point_text({n: p[n] for n in names})}{' chosen' * (i == 0)} in {100 * p['p_chosen']:.0f} %"
                       for i, p in enumerate(p for p in shares if p["p_chosen"] > 0)) + f" of {s['resamples']} resamples"
    never = [point_text({n: p[n] for n in names}) for p in s["points"] if p["p_chosen"] == 0]
    target = f"{100 * s['target']:.0f} %"
    if s["seeds_for_target"] is not None:
        stable = (f"one value would be chosen in {target} of resamples with {s['seeds_for_target']} seeds per value "
                  f"({point_text(s['chosen_at_target'])})")
    else:
        last = s["curve"][-1] if s["curve"] else None
        stable = (f"no value is chosen in {target} of resamples with up to {s['largest_tried']} seeds per value"
                  + (f" (the most: {point_text(last['point'])}, {100 * last['p']:.0f} %)" if last else ""))
    return (f"**How stable the choice is** (validation accuracy, the seeds of each value resampled with replacement): "
            f"{listed}; never chosen: {', '.join(never) or 'none'}. Extrapolated by resampling more seeds per value: {stable}.")


def ensemble_text(e: dict) -> str:
    """The ensemble of the seeds against its mean member (accuracy, NLL, ECE), and its accuracy
    against the number of runs it averages."""
    of = f" of {point_text(e['of'])}, the value chosen on validation" if e.get("of") else ""
    whole, members = e["ensemble"], e["members"]
    rows = [[f"ensemble (softmax averaged) of the {e['runs']} runs{of}", pct(whole["accuracy"]), num(whole["nll"], 4),
             pct(whole["ece"])],
            ["one run: mean ± std over the runs", mean_std(members["accuracy"]), mean_std(members["nll"], 1.0, 4),
             mean_std(members["ece"])]]
    curve = ", ".join(f"{r['k']}: {pct(r['mean'])}" + ("" if r["ci_low"] == r["ci_high"] else
                                                      f" [{pct(r['ci_low'])}, {pct(r['ci_high'])}]")
                      for r in e["by_size"])
    return "\n\n".join([
        table(["", "test accuracy (%)", "test NLL (nats)", f"ECE (%, {stats.ECE_BINS} bins)"], rows),
        f"Test accuracy (%) of ensembles of k runs (mean over subsets of size k [95 % of the subsets], at most "
        f"{e['subsets_per_size']} per size): {curve}."])


def flips_text(f: dict, shown: int = 5) -> str:
    """Which test images the runs get wrong, their churn, and disagreement against test error (Jiang et al. 2022)."""
    of = f" of {point_text(f['of'])}" if f.get("of") else ""
    dis, err = f["disagreement"], f["test_error"]
    ratio = "n/a" if f["disagreement_over_error"] is None else f"{f['disagreement_over_error']:.2f}"
    listed = "; ".join(f"#{u['index']} (label {u['label']}, votes "
                       + ", ".join(f"{c}: {n}" for c, n in sorted(enumerate(u["votes"]), key=lambda cn: -cn[1]) if n) + ")"
                       for u in f["most_unstable"][:shown])
    return (f"**Which test images flip** over the {f['runs']} runs{of}: {f['never_wrong']:,} of {f['examples']:,} are never "
            f"wrong, {f['always_wrong']:,} always wrong, {f['unstable']:,} right in some runs and wrong in others"
            + (f"; the most unstable: {listed}" if listed else "") + ". "
            f"Two runs label {pct(dis['mean'])} % of test images differently (churn; 95 % CI {ci(dis)}), against a mean "
            f"test error of {pct(err['mean'])} % ({ci(err)}): disagreement / error = {ratio} "
            "(Jiang et al. 2022: about 1 when the ensemble of the runs is well calibrated).")


def seed_variance(m: dict) -> list[str]:
    """The REPORT parts of metrics.json's `selection`, `ensemble` and `flips` blocks, with their
    figures (ensemble.png, unstable_digits.png in the experiment's folder); [] without them."""
    name = m["experiment"]
    parts = [selection_text(m["selection"])] if m.get("selection") else []
    if m.get("ensemble"):
        parts += [ensemble_text(m["ensemble"]),
                  figure(name, "ensemble.png", "Test accuracy of ensembles of k runs against k, with the mean member")]
    if m.get("flips"):
        parts += [flips_text(m["flips"]),
                  figure(name, "unstable_digits.png", "The test images the runs disagree on most, with their votes")]
    return [p for p in parts if p]
