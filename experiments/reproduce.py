"""Reproduce the whole study in one command: every experiment into a sub-workdir, then REPORT.md.

    python -m experiments.reproduce --workdir runs/quick [--config.profile=quick|full] [--config.force=True]

An experiment whose sub-workdir is complete (metrics.json written for the same resolved config
by the same code: the same commit, and the same uncommitted changes if any) is not redone; one
made by other code is redone from the start. `--config.reuse=any` keeps complete stages whatever
code made them, and REPORT.md then says loudly which stage comes from which commit. An
interrupted experiment continues from its last checkpoint and ends with the same numbers as an
uninterrupted run. `--config.force=True` redoes everything.
"""

from __future__ import annotations

import pathlib
import time

import ml_collections

from mnist_jax import experiment, provenance, registry, report
from mnist_jax import workdir as workdir_lib
from mnist_jax.config import ConfigError, parse_args


def stage_args(stage: registry.Experiment, profile: str, workdir: pathlib.Path) -> list[str]:
    """The command line of a stage at `profile`: its config file sizes itself (`configs/base.py`)."""
    return ["--workdir", str(workdir), "--config", stage.config_arg(profile)]


def stage_code_id(workdir: pathlib.Path) -> str | None:
    """The code that made workdir/metrics.json: its provenance's code_id, or None when unknown
    (no metrics, written before provenance, or resumed from checkpoints that other code wrote)."""
    try:
        prov = experiment.read_json(workdir / "metrics.json").get("provenance", {})
    except (OSError, ValueError, AttributeError):
        return None
    return None if "checkpoints_from" in prov else prov.get("code_id")


def is_complete(args: list[str], workdir: pathlib.Path, reuse: str = "same_code") -> bool:
    """metrics.json exists, config.json is the config these arguments resolve to, and (unless
    `reuse="any"`) the stage was made by the code that runs now (`provenance.code_id`)."""
    if not (workdir / "metrics.json").exists():
        return False
    _, config = parse_args(args, "")
    if not experiment.config_matches(workdir, config):
        return False
    return reuse == "any" or stage_code_id(workdir) == provenance.code_id()


def fmt_seconds(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:04.1f} s" if s >= 60 else f"{s:.1f} s"


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    if config.profile not in ("quick", "full"):
        raise ConfigError(f"config.profile={config.profile!r} is not allowed: expected 'quick' or 'full'")
    all_stages = registry.stages()
    names = [n.strip() for n in config.only.split(",") if n.strip()] or [s.name for s in all_stages]
    if config.only.strip() and not any(n.strip() for n in config.only.split(",")):
        raise ConfigError(f"config.only={config.only!r} names no experiment (leave it empty for all)")
    unknown = sorted(set(names) - {s.name for s in all_stages})
    if unknown:
        raise ConfigError(f"config.only={config.only!r}: unknown experiments {unknown} "
                          f"(known: {', '.join(s.name for s in all_stages)})")
    stages = [s for s in all_stages if s.name in names]
    run_dir, workdir = workdir, workdir_lib.root_of(workdir)  # stages are sub-workdirs of the job's workdir
    for stage in stages:  # check every config before anything trains
        parse_args(stage_args(stage, config.profile, workdir / stage.name), "")

    start = time.perf_counter()
    done: dict[str, dict] = {}
    for i, stage in enumerate(stages, 1):
        sub = workdir / stage.name
        args = stage_args(stage, config.profile, sub)
        elapsed = time.perf_counter() - start
        header = f"[{i}/{len(stages)}] {stage.name} ({config.profile}; job elapsed {fmt_seconds(elapsed)})"
        if config.force:
            workdir_lib.discard(sub, parse_args(args, "")[1].experiment)  # only what mnist-jax made there
        if is_complete(args, sub, config.reuse):
            print(f"{header}: complete in {sub}, not redone", flush=True)
            done[stage.name] = {"status": "complete", "seconds": 0.0, "code_id": stage_code_id(sub)}
            continue
        if (sub / "metrics.json").exists() and is_complete(args, sub, "any"):
            print(f"{header}: complete in {sub} but made by other code ({stage_code_id(sub) or 'unknown'}); "
                  "training it again from the start (--config.reuse=any keeps it)", flush=True)
            workdir_lib.discard(sub, parse_args(args, "")[1].experiment)  # no resuming other code's runs
        print(f"{header}: running into {sub}", flush=True)
        t0 = time.perf_counter()
        code = stage.module().main(args)
        if code == 130:  # Ctrl-C: the stage has said where a rerun resumes
            raise experiment.Interrupted
        if code != 0:
            raise ConfigError(f"experiment {stage.name} stopped with exit code {code}; fix it and run again "
                              "(finished experiments are kept)")
        done[stage.name] = {"status": "ran", "seconds": time.perf_counter() - t0, "code_id": stage_code_id(sub)}
        remaining = [s.name for s in stages[i:]]
        if remaining:
            print(f"    done in {fmt_seconds(done[stage.name]['seconds'])}; still to run: {', '.join(remaining)}",
                  flush=True)
    report.write_report(workdir, [s.name for s in stages], config.profile, out=run_dir / "REPORT.md")
    print(f"wrote {workdir / 'REPORT.md'}")
    return {"experiment": "reproduce", "profile": config.profile, "stages": done, "references": report.references(),
            "mixed_code": len({d["code_id"] for d in done.values()}) > 1,
            "timing": {"device": provenance.describe_devices()}}


main = experiment.entry_point(run, "configs/reproduce.py", __doc__, __name__)
