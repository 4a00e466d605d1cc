"""What the rehearsal before training costs (`cli.rehearse`, `mnist_jax.rehearsal`).

    python -m benchmarks.rehearsal [--profile full] [--repeats 3] [--only mlp,vae] [--json out.json]

Every registered config at `--profile` (a config without profiles: its file) is rehearsed
`--repeats` times in this process, then the job (`experiments.reproduce`) at that profile, which
rehearses each of its stages and its REPORT.md. Before the timed rehearsals, one untimed
rehearsal of each config warms what a command has warm anyway (imports, the MNIST cache on
disk). The rehearsal loads its config's data itself: a command loads it once more for the run.
Prints the median, min and max seconds of each, with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.common import machine, write_json
from mnist_jax import cli, registry
from mnist_jax.config import parse_args


def seconds(run, config) -> float:
    cli._rehearsed.clear()  # each rehearsal is a command's first
    start = time.perf_counter()
    cli.rehearse(run, config)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full", choices=["quick", "full"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated config names (file stems); default: all")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ[cli.REHEARSAL_ENV] = "1"
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    cases = []
    for e in registry.experiments():
        if e.entry == "experiments.reproduce" or (only and e.config.stem not in only):
            continue
        _, config = parse_args(["--workdir", "unused", "--config", e.config_arg_at(args.profile)], "")
        cases.append((e.config.stem, e.module().run, config))
    if not only or "reproduce" in only:
        job = next(e for e in registry.experiments() if e.entry == "experiments.reproduce")
        _, config = parse_args(["--workdir", "unused", f"--config.profile={args.profile}"], str(job.config))
        cases.append(("reproduce (the job: every stage and REPORT.md)", job.module().run, config))
    for _, run, config in cases[:-1] if len(cases) > 1 else cases:
        seconds(run, config)  # warm-up
    print(f"rehearsal of each registered config at profile {args.profile!r}, {args.repeats} repeats; {machine()}")
    results = {}
    for name, run, config in cases:
        times = [seconds(run, config) for _ in range(args.repeats)]
        results[name] = {"median": statistics.median(times), "min": min(times), "max": max(times)}
        print(f"  {name:50s} median {results[name]['median']:6.2f} s  (min {min(times):.2f}, max {max(times):.2f})",
              flush=True)
    write_json(args.json, profile=args.profile, repeats=args.repeats, seconds=results)


if __name__ == "__main__":
    main()
