"""Compile time of the quick profile with an empty persistent compilation cache, then with the same cache.

    python -m benchmarks.compile_cache --cold runs/q_cold --warm runs/q_warm [--cache DIR] [--profile quick]
    python -m benchmarks.compile_cache --cold runs/q_cold --warm runs/q_warm --summarize   # read them again

Runs `python -m experiments.reproduce` twice, each in a fresh process and a new workdir (both must
not exist): first with JAX's persistent compilation cache pointed at an empty folder (`--cache`,
default: a new temporary folder), then with the same folder. Each stage's metrics.json records
the programs its process compiled or loaded from the cache and the seconds it took
(`timing.compilation`, from `mnist_jax.compilation`); this prints them per stage, cold against
warm, with the wall time of both jobs, and from the cold run's compile log (JAX_LOG_COMPILES=1, in COLD.log beside the workdir)
how much of the compile time is in programs that take under 1 s to compile (JAX's default
threshold for caching a program). Numbers of the two runs should be identical:
`python -m mnist_jax.compare COLD WARM`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from benchmarks.common import machine
from mnist_jax import registry

COMPILE_LOG = re.compile(r"Finished XLA compilation of (\S+) in ([0-9.e-]+) sec")


def log_path(workdir: pathlib.Path) -> pathlib.Path:
    """The job's output, beside its workdir (a workdir holds only what mnist-jax made)."""
    return workdir.parent / f"{workdir.name}.log"


def run_job(workdir: pathlib.Path, cache: pathlib.Path, profile: str, log: pathlib.Path, log_compiles: bool,
            only: str = "", extra_env: dict | None = None, extra_args: list[str] | None = None) -> float:
    """Wall seconds of one reproduce job (the stages `only` names, else all; `extra_args` added to
    its command line) in a fresh process; its output goes to `log`."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), **(extra_env or {}))
    env.pop("MNIST_JAX_COMPILE_CACHE", None)
    if log_compiles:
        env["JAX_LOG_COMPILES"] = "1"
    cmd = [sys.executable, "-m", "experiments.reproduce", "--workdir", str(workdir), f"--config.profile={profile}"]
    cmd += ([f"--config.only={only}"] if only else []) + list(extra_args or [])
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {code}; see {log}")
    return wall


def stage_timings(workdir: pathlib.Path, stages: list[str] | None = None) -> dict[str, dict]:
    """{stage: `timing` of its metrics.json} for `stages` (each must have one), or by default for
    every registered stage the job ran."""
    names = stages if stages is not None else [s.name for s in registry.stages()]
    paths = {name: workdir / name / "metrics.json" for name in names}
    return {name: json.loads(path.read_text())["timing"] for name, path in paths.items()
            if stages is not None or path.exists()}


def stage_compilation(workdir: pathlib.Path) -> dict[str, dict]:
    """{stage: timing.compilation of its metrics.json} for the stages the job ran."""
    return {name: t.get("compilation", {}) for name, t in stage_timings(workdir).items()}


def compile_log_split(log: pathlib.Path, threshold: float = 1.0) -> dict:
    """Programs and seconds compiled, below and at or above `threshold` seconds each, from a JAX_LOG_COMPILES log."""
    times = [float(m.group(2)) for m in COMPILE_LOG.finditer(log.read_text(errors="replace"))] if log.exists() else []
    small = [t for t in times if t < threshold]
    return {"programs": len(times), "seconds": sum(times), "below_programs": len(small), "below_seconds": sum(small)}


def summarize(cold: pathlib.Path, warm: pathlib.Path, walls: dict) -> dict:
    c, w = stage_compilation(cold), stage_compilation(warm)
    rows, totals = [], {"cold": [0, 0.0, 0.0, 0], "warm": [0, 0.0, 0.0, 0]}
    print("| stage | programs | cold: compile s | cold: trace+lower s | warm: compile or load s | "
          "warm: from cache | warm: trace+lower s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in c:
        a, b = c[name], w.get(name, {})
        for key, d in (("cold", a), ("warm", b)):
            t = totals[key]
            t[0] += d.get("programs", 0)
            t[1] += d.get("compile_seconds", 0.0)
            t[2] += d.get("trace_lower_seconds", 0.0)
            t[3] += d.get("cache_hits", 0)
        rows.append({"stage": name, "cold": a, "warm": b})
        print(f"| {name} | {a.get('programs', 0)} | {a.get('compile_seconds', 0):.1f} | {a.get('trace_lower_seconds', 0):.1f} "
              f"| {b.get('compile_seconds', 0):.1f} | {b.get('cache_hits', 0)} / {b.get('programs', 0)} "
              f"| {b.get('trace_lower_seconds', 0):.1f} |")
    tc, tw = totals["cold"], totals["warm"]
    print(f"| **all stages** | {tc[0]} | **{tc[1]:.1f}** | {tc[2]:.1f} | **{tw[1]:.1f}** | {tw[3]} / {tw[0]} | {tw[2]:.1f} |")
    ratio = tw[1] / tc[1] if tc[1] else float("nan")
    both = (tw[1] + tw[2]) / (tc[1] + tc[2]) if tc[1] + tc[2] else float("nan")
    print(f"\nwarm / cold compile seconds: {ratio:.3f} (goal <= 0.2); with tracing and lowering: {both:.3f}")
    if walls:
        print(f"wall time of the job: cold {walls['cold']:.1f} s, warm {walls['warm']:.1f} s")
    split = compile_log_split(log_path(cold))
    if split["programs"]:
        print(f"cold compile log: {split['programs']} programs, {split['seconds']:.1f} s; "
              f"{split['below_programs']} of them under 1 s each, {split['below_seconds']:.1f} s together "
              f"({split['below_seconds'] / split['seconds']:.0%} of the compile time)")
    return {"stages": rows, "cold_compile_seconds": tc[1], "warm_compile_seconds": tw[1],
            "cold_trace_lower_seconds": tc[2], "warm_trace_lower_seconds": tw[2], "programs": tc[0],
            "warm_cache_hits": tw[3], "ratio": ratio, "wall_seconds": walls, "cold_log_split": split}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", type=pathlib.Path, required=True, help="workdir of the first run (must not exist)")
    ap.add_argument("--warm", type=pathlib.Path, required=True, help="workdir of the second run (must not exist)")
    ap.add_argument("--cache", type=pathlib.Path, help="an empty or new folder for the cache (default: a temporary one)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--summarize", action="store_true", help="only print the table of two finished runs")
    ap.add_argument("--json", type=pathlib.Path, help="also write the numbers here")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}")
    walls = {}
    if not args.summarize:
        for w in (args.cold, args.warm):
            if w.exists():
                sys.exit(f"{w} exists; name new workdirs")
        cache = args.cache or pathlib.Path(tempfile.mkdtemp(prefix="mnist_jax_xla_"))
        if cache.exists() and any(cache.iterdir()):
            sys.exit(f"{cache} is not empty; the cold run needs an empty cache")
        print(f"cache: {cache}")
        walls["cold"] = run_job(args.cold, cache, args.profile, log_path(args.cold), log_compiles=True)
        walls["warm"] = run_job(args.warm, cache, args.profile, log_path(args.warm), log_compiles=False)
    result = summarize(args.cold, args.warm, walls)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
