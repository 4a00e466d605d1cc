"""Reproduce the whole study in one command: every experiment into a sub-workdir, then REPORT.md.

    python -m experiments.reproduce --workdir runs/quick [--config.profile=quick|full] [--config.force=True]

An experiment whose sub-workdir is complete (metrics.json written for the same resolved config
by the same code: the same commit, and the same uncommitted changes if any) is not redone; one
made by other code is redone from the start. `--config.reuse=any` keeps complete stages whatever
code made them, and REPORT.md then says loudly which stage comes from which commit. An
interrupted experiment continues from its last checkpoint and ends with the same numbers as an
uninterrupted run. `--config.force=True` redoes everything.

`--config.jobs=N` runs up to N stages at once, each in its own process (`python -m <stage's
command>`, the command line a stage has on its own), in the job's order; each output line is
printed with its stage's name. The stages are independent, so their numbers are the same as one
at a time; their timings are not (they share the machine). On a GPU each stage process may take
0.9 / N of its memory (`XLA_PYTHON_CLIENT_MEM_FRACTION`, unless you set how JAX allocates).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import ml_collections

from mnist_jax import cli, distributed, provenance, registry, report, trained
from mnist_jax import workdir as workdir_lib
from mnist_jax.config import REPO_ROOT, ConfigError, parse_args


def stage_args(stage: registry.Experiment, profile: str, workdir: pathlib.Path) -> list[str]:
    """The command line of a stage at `profile`: its config file sizes itself (`configs/base.py`)."""
    return ["--workdir", str(workdir), "--config", stage.config_arg(profile)]


def stage_code_id(workdir: pathlib.Path) -> str | None:
    """The code that made workdir/metrics.json: its provenance's code_id, or None when unknown
    (no metrics, written before provenance, or resumed from checkpoints that other code wrote)."""
    try:
        prov = trained.read_json(workdir / "metrics.json").get("provenance", {})
    except (OSError, ValueError, AttributeError):
        return None
    return None if "checkpoints_from" in prov else prov.get("code_id")


def is_complete(args: list[str], workdir: pathlib.Path, reuse: str = "same_code") -> bool:
    """metrics.json exists, config.json is the config these arguments resolve to, and (unless
    `reuse="any"`) the stage was made by the code that runs now (`provenance.code_id`)."""
    if not (workdir / "metrics.json").exists():
        return False
    _, config = parse_args(args, "")
    if not cli.config_matches(workdir, config):
        return False
    return reuse == "any" or stage_code_id(workdir) == provenance.code_id()


GPU_MEMORY_ENV = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR")


def stage_env(jobs: int, environ: dict | None = None) -> dict:
    """The environment of a stage process when `jobs` run at once: this one, with each GPU
    process limited to 0.9 / jobs of the memory unless the user says how JAX allocates."""
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])  # experiments/
    if not any(k in env for k in GPU_MEMORY_ENV):
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / jobs:.2f}"
    return env


def _relay(name: str, stream) -> None:
    """Print a stage process's output, each complete line after its stage's name; progress bars
    (lines ended by a carriage return) are left out: several at once would be unreadable."""
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        pending += chunk
        *lines, pending = pending.replace(b"\r\n", b"\n").split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").rsplit("\r", 1)[-1].rstrip()
            if text:
                print(f"[{name}] {text}", flush=True)
    stream.close()


def run_in_processes(stages: list, args_of, jobs: int, start_header) -> dict[str, dict]:
    """Run `stages` (each `python -m <entry> <args_of(stage)>`) with up to `jobs` at once, in order;
    after a stage fails no new one starts, the running ones finish, and ConfigError names it."""
    env = stage_env(jobs)
    running: dict = {}  # name -> (process, relay thread, start)
    done: dict[str, dict] = {}
    failed: list[tuple[str, int]] = []
    queue = list(stages)
    try:
        while queue or running:
            while queue and len(running) < jobs and not failed:
                stage = queue.pop(0)
                start_header(stage)
                proc = subprocess.Popen([sys.executable, "-m", stage.entry, *args_of(stage)], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                relay = threading.Thread(target=_relay, args=(stage.name, proc.stdout), daemon=True)
                relay.start()
                running[stage.name] = (proc, relay, time.perf_counter())
            if failed:
                queue = []
            for name, (proc, relay, t0) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                relay.join()
                del running[name]
                done[name] = {"status": "ran", "seconds": time.perf_counter() - t0, "exit_code": code}
                if code == 0:
                    left = [s.name for s in queue] + list(running)
                    print(f"    {name} done in {fmt_seconds(done[name]['seconds'])}"
                          + (f"; still running or to run: {', '.join(left)}" if left else ""), flush=True)
                else:
                    failed.append((name, code))
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached every stage process too: each says where it resumes
        for proc, relay, _ in running.values():
            proc.wait()
            relay.join()
        raise cli.Interrupted from None
    if any(code == 130 for _, code in failed):
        raise cli.Interrupted
    if failed:
        names = ", ".join(f"{n} (exit code {c})" for n, c in failed)
        raise ConfigError(f"experiment {names} stopped; fix it and run again (finished experiments are kept)")
    return done


def fmt_seconds(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:04.1f} s" if s >= 60 else f"{s:.1f} s"


def reads(config: ml_collections.ConfigDict) -> list[str]:
    """The config fields the job reads (each stage checks its own config when it runs)."""
    return ["experiment", "profile", "force", "jobs", "only", "reuse"]


def runs(config: ml_collections.ConfigDict) -> int:
    """The job trains nothing itself: each stage's process checks its own memory."""
    return 0


def selected_stages(config: ml_collections.ConfigDict) -> list[registry.Experiment]:
    """The stages the job runs, in its order (`config.only`, else all); ConfigError for an
    unknown profile or stage name."""
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
    return [s for s in all_stages if s.name in names]


def rehearse(config: ml_collections.ConfigDict, workdir: pathlib.Path | None = None) -> None:
    """The job's rehearsal (`cli.rehearse`) before anything trains: each stage it will train,
    rehearsed into a temporary job folder (a stage of `workdir` that is complete brings its own
    metrics), then the job's REPORT.md from those metrics. So neither a stage's outputs nor the
    report fails after the stages before it have trained."""
    stages = selected_stages(config)
    with tempfile.TemporaryDirectory(prefix="mnist_jax-rehearsal-") as tmp:
        for stage in stages:
            into = pathlib.Path(tmp) / stage.name
            args = stage_args(stage, config.profile, (workdir or pathlib.Path(tmp)) / stage.name)
            if workdir is not None and not config.force and is_complete(args, workdir / stage.name, config.reuse):
                into.mkdir()
                for name in ("metrics.json", "config.json"):
                    shutil.copyfile(workdir / stage.name / name, into / name)
                continue
            cli.rehearse(stage.module().run, parse_args(args, "")[1], into=into)
        cli.rehearsed(lambda: report.write_report(pathlib.Path(tmp), [s.name for s in stages], config.profile))


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    stages = selected_stages(config)
    run_dir, workdir = workdir, workdir_lib.root_of(workdir)  # stages are sub-workdirs of the job's workdir
    for stage in stages:  # check every config before anything trains
        parse_args(stage_args(stage, config.profile, workdir / stage.name), "")

    if config.jobs > 1 and distributed.is_multiprocess():
        raise ConfigError(f"config.jobs={config.jobs}: a multi-process run trains one stage at a time (jobs=1)")
    start = time.perf_counter()
    done: dict[str, dict] = {}
    to_run = []
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
        if config.jobs > 1:
            to_run.append(stage)
            continue
        print(f"{header}: running into {sub}", flush=True)
        t0 = time.perf_counter()
        code = stage.module().main(args)
        if code == 130:  # Ctrl-C: the stage has said where a rerun resumes
            raise cli.Interrupted
        if code != 0:
            raise ConfigError(f"experiment {stage.name} stopped with exit code {code}; fix it and run again "
                              "(finished experiments are kept)")
        done[stage.name] = {"status": "ran", "seconds": time.perf_counter() - t0, "code_id": stage_code_id(sub)}
        remaining = [s.name for s in stages[i:]]
        if remaining:
            print(f"    done in {fmt_seconds(done[stage.name]['seconds'])}; still to run: {', '.join(remaining)}",
                  flush=True)
    if to_run:
        def header(stage):
            print(f"[{stages.index(stage) + 1}/{len(stages)}] {stage.name} ({config.profile}; job elapsed "
                  f"{fmt_seconds(time.perf_counter() - start)}): running into {workdir / stage.name} "
                  f"(its own process, up to {config.jobs} at once)", flush=True)

        ran = run_in_processes(to_run, lambda s: stage_args(s, config.profile, workdir / s.name), config.jobs, header)
        for name, d in ran.items():
            done[name] = {"status": "ran", "seconds": d["seconds"], "code_id": stage_code_id(workdir / name)}
        done = {s.name: done[s.name] for s in stages}  # the job's order
    report.write_report(workdir, [s.name for s in stages], config.profile, out=run_dir / "REPORT.md")
    print(f"wrote {workdir / 'REPORT.md'}")
    return {"experiment": "reproduce", "profile": config.profile, "stages": done, "references": report.references(),
            "mixed_code": len({d["code_id"] for d in done.values()}) > 1,
            "timing": {"device": provenance.describe_devices()}}


main = cli.entry_point(run, "configs/reproduce.py", __doc__, __name__)
