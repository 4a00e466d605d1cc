"""The TensorBoard writer: what importing each candidate costs, and what writing adds to a run.

    python -m benchmarks.tensorboard_writer --imports 5                  # import time of each writer
    python -m benchmarks.tensorboard_writer --write docs/results/h100/l2_sweep/metrics.json
    python -m benchmarks.tensorboard_writer --stage 3 --root runs/tb_stage   # a quick stage, on vs off

`--imports N`: each candidate is imported N times, each in a fresh process that has already
imported numpy and jax (every run has), the candidates alternated; prints the median seconds of
the writer's import, whether it imported TensorFlow, how many modules it added, and the
distributions it requires. Candidates: tensorboardX (`SummaryWriter` and its HParams summaries),
tensorboard's own writer (`tensorboard.summary.Writer` and `tensorboard.plugins.hparams.api`, which
import TensorFlow when it is installed, as tfds requires) and `clu.metric_writers` (the flax
examples' writer, over `tf.summary`).

`--write METRICS`: the seconds `mnist_jax.tensorboard.write` takes for a committed metrics.json
(median of 3, into a temporary folder), with the number of runs and scalars it wrote.

`--stage N`: N pairs of `python -m experiments.mlp --config configs/mlp.py:quick`, with
`--config.tensorboard=True` and `=False` alternated (the order flips every pair), each in a new
workdir under `--root`; prints every wall time, the medians, their difference and ratio, and the
load average before and after (on a shared machine compare the ratio, not the seconds), and the
CPU seconds (user + system) of each stage's process, which depend less on what else the machine runs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CANDIDATES = {
    "tensorboardX": ("tensorboardX", "from tensorboardX import SummaryWriter; from tensorboardX.summary import hparams"),
    "tensorboard.summary": ("tensorboard",
                           "from tensorboard.summary import Writer; from tensorboard.plugins.hparams import api"),
    "clu.metric_writers": ("clu", "from clu import metric_writers"),
}

PROBE = """
import sys, time, numpy, jax
before = set(sys.modules)
start = time.perf_counter()
{stmt}
seconds = time.perf_counter() - start
print(seconds, "tensorflow" in sys.modules, len(set(sys.modules) - before))
"""

STAGE = [sys.executable, "-m", "experiments.mlp", "--config", "configs/mlp.py:quick"]


def requires(dist: str) -> list[str]:
    """The distributions `dist` requires (no extras), by name."""
    reqs = importlib.metadata.requires(dist) or []
    return sorted({r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
                   for r in reqs if "extra ==" not in r})


def imports(repeats: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    facts: dict[str, tuple[bool, int]] = {}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for _ in range(repeats):
        for name, (_, stmt) in CANDIDATES.items():
            out = subprocess.run([sys.executable, "-c", PROBE.format(stmt=stmt)], capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"{name}: import failed: {out.stderr.strip().splitlines()[-1]}")
                break
            seconds, tf, added = out.stdout.split()[-3:]
            times[name].append(float(seconds))
            facts[name] = (tf == "True", int(added))
    print(f"import after numpy and jax, median of {repeats} fresh processes:")
    for name, (dist, _) in CANDIDATES.items():
        if not times[name]:
            continue
        tf, added = facts[name]
        print(f"  {name:22s} {statistics.median(times[name]):6.2f} s  (min {min(times[name]):.2f})  imports TensorFlow: "
              f"{tf}  modules added: {added}  {dist} {importlib.metadata.version(dist)} requires: "
              f"{', '.join(requires(dist))}")


def write(metrics_path: pathlib.Path) -> None:
    from mnist_jax import tensorboard

    metrics = json.loads(metrics_path.read_text())
    seconds = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            written = tensorboard.write(pathlib.Path(tmp), metrics)
            seconds.append(time.perf_counter() - start)
    print(f"mnist_jax.tensorboard.write({metrics_path}): {written['runs']} runs, {written['scalars']} scalars, "
          f"median {statistics.median(seconds):.3f} s of {[round(s, 3) for s in seconds]}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stage(pairs: int, root: pathlib.Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    walls: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    load_before = os.getloadavg()
    print("command:", " ".join(STAGE[1:]), "--workdir W --config.tensorboard={True,False}")
    for i in range(pairs):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            workdir = root / f"pair{i}_{'on' if on else 'off'}"
            shutil.rmtree(workdir, ignore_errors=True)
            start, cpu = time.perf_counter(), _children_cpu()
            subprocess.run([*STAGE, "--workdir", str(workdir), f"--config.tensorboard={on}"], check=True,
                           capture_output=True)
            walls[on].append(time.perf_counter() - start)
            cpus[on].append(_children_cpu() - cpu)
            print(f"  pair {i} tensorboard={on}: {walls[on][-1]:.2f} s wall, {cpus[on][-1]:.2f} s CPU", flush=True)
    for what, got in (("wall", walls), ("CPU", cpus)):
        on, off = statistics.median(got[True]), statistics.median(got[False])
        print(f"median {what}: on {on:.2f} s, off {off:.2f} s; on - off {on - off:+.2f} s, on / off {on / off:.3f}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=0, help="fresh processes per candidate writer")
    parser.add_argument("--write", type=pathlib.Path, help="a metrics.json to write as event files")
    parser.add_argument("--stage", type=int, default=0, help="pairs of quick mlp stages, tensorboard on and off")
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path("runs/bench_tensorboard"),
                        help="where --stage makes its workdirs")
    args = parser.parse_args(argv)
    from benchmarks.common import machine

    print("machine:", machine())
    print("command: python -m benchmarks.tensorboard_writer", " ".join(argv if argv is not None else sys.argv[1:]))
    if args.imports:
        imports(args.imports)
    if args.write:
        write(args.write)
    if args.stage:
        stage(args.stage, args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
