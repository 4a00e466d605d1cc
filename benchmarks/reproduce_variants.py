"""The main job (or some of its stages) cold, under variants of its settings, alternated.

    python -m benchmarks.reproduce_variants --out runs/variants [--stages cnn_search,noise_accuracy,vae]
        [--variant 'ahead_off: MNIST_JAX_COMPILE_AHEAD=0' --variant 'default:'] [--repeats 2] [--profile quick]
    python -m benchmarks.reproduce_variants --out runs/jobs --stages all \\
        --variant 'jobs1:' --variant 'jobs2: --config.jobs=2'

A variant is `NAME: TOKENS`: tokens `--...` go on the reproduce command line, tokens `VAR=value`
into its environment. The default compares compiling ahead off (`MNIST_JAX_COMPILE_AHEAD=0`) with
the default (one background compile thread fewer than the CPU cores, at most 4) on the stages that
train several grids. Every job runs `python -m experiments.reproduce` in a fresh process with an
empty persistent compilation cache (so every program is compiled) and a new workdir under --out;
the variants alternate and their order flips every repeat, so a change of the machine's load hits
them alike. Prints each stage's wall time and compile seconds (`timing.compilation`, summed over
threads, so it can exceed the wall time) per variant, the job's wall time, their medians, and
whether the numbers of every variant are identical (`mnist_jax.compare`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

from benchmarks.common import machine
from benchmarks.compile_cache import run_job, stage_timings
from mnist_jax import registry, sweep

DEFAULT_VARIANTS = [f"ahead_off: {sweep.AHEAD_ENV}=0", "default:"]


def parse_variant(text: str) -> tuple[str, dict, list[str]]:
    """(name, environment, reproduce arguments) of 'NAME: TOKENS'."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip().isidentifier():
        raise SystemExit(f"--variant {text!r}: expected 'NAME: --config.x=1 VAR=value ...'")
    env, args = {}, []
    for token in rest.split():
        if token.startswith("--"):
            args.append(token)
        elif "=" in token:
            key, value = token.split("=", 1)
            env[key] = value
        else:
            raise SystemExit(f"--variant {text!r}: {token!r} is neither --argument nor VAR=value")
    return name.strip(), env, args


def stage_timing(workdir: pathlib.Path, stages: list[str]) -> dict[str, dict]:
    """{stage: {"wall": s, "compile": s, "programs": n}} from each stage's metrics.json."""
    return {s: {"wall": t["wall_seconds"], "compile": t.get("compilation", {}).get("compile_seconds", 0.0),
                "programs": t.get("compilation", {}).get("programs", 0)}
            for s, t in stage_timings(workdir, stages).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=pathlib.Path, required=True, help="a new folder for the workdirs and logs")
    ap.add_argument("--stages", default="cnn_search,noise_accuracy,vae", help="comma-separated, or 'all'")
    ap.add_argument("--variant", action="append", help="NAME: TOKENS (repeat; default: compiling ahead off and on)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", default="quick")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; name a new folder")
    every = [s.name for s in registry.stages()]
    stages = every if args.stages == "all" else [s.strip() for s in args.stages.split(",") if s.strip()]
    variants = [parse_variant(v) for v in args.variant or DEFAULT_VARIANTS]
    names = [v[0] for v in variants]
    print(f"machine: {machine()}; compiling ahead by default on {sweep.ahead_threads({})} background thread(s) here")
    print(f"command: {' '.join(sys.argv)}")
    args.out.mkdir(parents=True)
    results: dict[str, list] = {n: [] for n in names}
    for r in range(args.repeats):
        for name, env, extra in variants if r % 2 == 0 else variants[::-1]:
            workdir = args.out / f"{name}_{r}"
            cache = pathlib.Path(tempfile.mkdtemp(prefix="mnist_jax_variants_xla_"))
            only = "" if stages == every else ",".join(stages)
            wall = run_job(workdir, cache, args.profile, args.out / f"{name}_{r}.log", False, only, env, extra)
            timing = stage_timing(workdir, stages)
            results[name].append({"job_wall": wall, "stages": timing})
            print(f"repeat {r} {name}: job {wall:.1f} s; " + "; ".join(
                f"{s} {t['wall']:.1f} s (compile {t['compile']:.1f} s)" for s, t in timing.items()), flush=True)
    print(f"\nmedians over {args.repeats} repeats (stage wall s / compile s; compile summed over threads):")
    print("| stage | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    for stage in stages:
        cells = [f"{statistics.median(x['stages'][stage]['wall'] for x in results[n]):.1f} / "
                 f"{statistics.median(x['stages'][stage]['compile'] for x in results[n]):.1f}" for n in names]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print("| **job wall (s)** | " + " | ".join(f"**{statistics.median(x['job_wall'] for x in results[n]):.1f}**"
                                            for n in names) + " |")
    for n in names[1:]:
        out = subprocess.run([sys.executable, "-m", "mnist_jax.compare", str(args.out / f"{names[0]}_0"),
                              str(args.out / f"{n}_0")], capture_output=True, text=True)
        lines = (out.stdout or out.stderr).strip().splitlines()
        print(f"numbers, {names[0]} against {n}: {lines[-1] if lines else out.returncode}")
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
