"""What every experiment entry point shares: the command line, the workdir, data, training
with a progress bar and checkpoints, and the JSON outputs.

An experiment module defines `run(config, workdir) -> metrics` and calls
`main(run, argv, "configs/<name>.py")`; this module does the rest of the contract in
DESIGN.md (config.json, metrics.json, exit codes, clear errors).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from mnist_jax import data as data_lib
from mnist_jax import provenance
from mnist_jax.checkpoint import Checkpointer, CheckpointError
from mnist_jax.config import ConfigError, parse_args
from mnist_jax.provenance import describe_devices
from mnist_jax.sweep import SweepResult, num_runs, train_grid
from mnist_jax.train import Task, TrainSpec


def to_jsonable(obj: Any) -> Any:
    """numpy / jax scalars and arrays as plain Python numbers and lists (NaN as null)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then a rename."""
    path = pathlib.Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(to_jsonable(obj), tmp, indent=1, allow_nan=False)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def prepare_workdir(workdir: pathlib.Path) -> pathlib.Path:
    """Create the workdir and check it is writable, or raise ConfigError."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as err:
        raise ConfigError(f"--workdir {str(workdir)!r} is not a writable folder ({err.strerror or err})") from None
    return workdir.resolve()


def load_data(config: ml_collections.ConfigDict) -> tuple[data_lib.Splits, float]:
    """The splits of `config` on the device, and the seconds it took."""
    start = time.perf_counter()
    splits = data_lib.load_splits(n_val=config.get("n_val", 5000), protocol=config.get("protocol", "holdout"))
    jax.block_until_ready(splits)
    if config.batch_size > splits.train_x.shape[0]:
        raise ConfigError(f"config.batch_size={config.batch_size} is larger than the training set "
                          f"({splits.train_x.shape[0]} images)")
    return splits, time.perf_counter() - start


class Progress:
    """A tqdm bar over run-epochs, with the latest mean metric in its postfix."""

    def __init__(self, total_epochs: int, desc: str, metric: str = "val_accuracy"):
        from tqdm.auto import tqdm

        self.metric = metric
        # On a terminal the bar redraws freely; in a log file it writes a line at most every 30 s.
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total_epochs, desc=desc, unit="epoch", dynamic_ncols=True,
                        mininterval=0.1 if interactive else 30.0)

    def __call__(self, n: int, metrics: dict) -> None:
        self.bar.update(n)
        if self.metric in metrics:
            self.bar.set_postfix({self.metric: f"{np.nanmean(metrics[self.metric]):.4f}"})

    def close(self) -> None:
        self.bar.close()


def run_chunk(config: ml_collections.ConfigDict, convolutional: bool = False, backend: str | None = None) -> int | None:
    """Runs per compiled program: `config.run_chunk`, or when it is 0 (automatic) all at once,
    except convolutional nets on a CPU, which train one run at a time: XLA:CPU runs a vmapped
    convolutional step about 1.7x slower per run than a single one (`benchmarks/cnn_speed.py
    --runs 5`: 18.8 s against 10.9 s per run-epoch of the study's CNN), while dense nets gain
    from vmapping. None means all runs at once."""
    chunk = config.get("run_chunk", 0)
    if chunk:
        return chunk
    return 1 if convolutional and (backend or jax.default_backend()) == "cpu" else None


def train(config: ml_collections.ConfigDict, workdir: pathlib.Path, task: Task, hp: dict, seeds: Any,
          data: data_lib.Splits, name: str = "train", spec: TrainSpec | None = None,
          metric: str = "val_accuracy", convolutional: bool = False) -> SweepResult:
    """`train_grid` with the config's spec, a progress bar, and checkpoints in workdir/checkpoints/name.

    A workdir that already holds checkpoints of this training resumes from the newest one.
    `metric` is the history entry shown in the progress bar; `convolutional` picks the automatic
    `run_chunk` of conv nets. `seeds`: (R,) run seeds, or per-stream seeds {stream: (R,)}.
    """
    spec = spec or TrainSpec(epochs=config.epochs, batch_size=config.batch_size,
                             optimizer=config.get("optimizer", "sgd"), schedule=config.get("schedule", "constant"))
    ckpt_dir = workdir / "checkpoints" / name
    mark_checkpoints_code(workdir)
    chunk = run_chunk(config, convolutional)
    n_runs = num_runs(seeds)
    bar = Progress(spec.epochs * int(np.ceil(n_runs / (chunk or n_runs))), name, metric)
    try:
        result = train_grid(task, spec, hp, seeds, data, chunk_epochs=config.get("chunk_epochs", 1),
                            run_chunk=chunk, checkpoint_dir=str(ckpt_dir),
                            checkpoint_every=config.get("checkpoint_every", 1), progress=bar)
    finally:
        bar.close()
    if result.resumed_from_epoch is not None:
        print(f"{name}: resumed from the checkpoint of epoch {result.resumed_from_epoch} in {ckpt_dir}")
    return result


def save_params(workdir: pathlib.Path, params: Any, name: str = "params") -> None:
    """The trained params of every run (leading run axis) as an orbax checkpoint."""
    ckpt = Checkpointer(workdir / name, max_to_keep=1)
    ckpt.save(0, params)
    ckpt.close()


def load_params(workdir: pathlib.Path, like: Any, name: str = "params") -> Any:
    """The params saved by `save_params`, shaped like `like` (arrays or ShapeDtypeStructs)."""
    path = pathlib.Path(workdir) / name
    if not path.is_dir():
        raise CheckpointError(f"no trained params in {str(workdir)!r} (missing {name}/): run the experiment first")
    ckpt = Checkpointer(path, max_to_keep=1)
    try:
        return ckpt.restore(like)
    finally:
        ckpt.close()


def history_summary(history: dict[str, np.ndarray]) -> dict:
    """Per-epoch metrics as {metric: [[run 0 epochs...], ...]} for metrics.json."""
    return {k: np.asarray(v) for k, v in history.items()}


def timing(data_seconds: float, result: SweepResult) -> dict:
    """The `timing` block of metrics.json."""
    return {"data_seconds": data_seconds, **result.timing, "device": describe_devices()}


def config_matches(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
    """Whether workdir/config.json exists and holds exactly `config`."""
    path = workdir / "config.json"
    return path.exists() and read_json(path) == to_jsonable(config.to_dict())


def discard_stale_checkpoints(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
    """Remove workdir/checkpoints when they were trained under another config than `config`.

    Resuming is only right for the same config: a checkpoint of a 15-epoch cosine schedule
    continued under `epochs=30` would silently mix two schedules. Returns whether it removed any.
    """
    ckpts = workdir / "checkpoints"
    if not ckpts.exists() or config_matches(workdir, config):
        return False
    print(f"{workdir}: the config differs from the one its checkpoints were trained with; "
          "discarding them and training from the start")
    shutil.rmtree(ckpts)
    return True


CHECKPOINTS_CODE_FILE = "code_id.json"


def checkpoints_code_id(workdir: pathlib.Path) -> str | None:
    """The code_id of the code that started workdir/checkpoints (None: no checkpoints, or unknown)."""
    try:
        return read_json(workdir / "checkpoints" / CHECKPOINTS_CODE_FILE)["code_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def foreign_checkpoints(workdir: pathlib.Path) -> str | None:
    """The code_id of checkpoints in workdir that other code wrote ("unknown" when unrecorded),
    which a run may resume from; None when there are none or the current code wrote them."""
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir() or not any(ckpts.iterdir()):
        return None
    before = checkpoints_code_id(workdir)
    return None if before == provenance.code_id() else (before or "unknown")


def mark_checkpoints_code(workdir: pathlib.Path) -> None:
    """Record the current code as the writer of workdir/checkpoints when it starts them."""
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir() or not any(ckpts.iterdir()):
        ckpts.mkdir(parents=True, exist_ok=True)
        write_json(ckpts / CHECKPOINTS_CODE_FILE, {"code_id": provenance.code_id()})


def with_provenance(metrics: dict, prov: dict) -> dict:
    """metrics with `schema_version` and `provenance` first, as every metrics.json has them."""
    return {"schema_version": provenance.SCHEMA_VERSION, "provenance": prov,
            **{k: v for k, v in metrics.items() if k not in ("schema_version", "provenance")}}


def main(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], argv: list[str] | None,
         default_config: str, description: str = "") -> int:
    """Parse, validate, prepare the workdir, run, and write config.json / metrics.json.

    User errors print one line and return 2; missing data or a bad checkpoint return 1.
    """
    try:
        workdir, config = parse_args(argv, default_config, description)
        workdir = prepare_workdir(workdir)
        discard_stale_checkpoints(workdir, config)
        write_json(workdir / "config.json", config.to_dict())
        other_code = foreign_checkpoints(workdir)
        if other_code:
            print(f"{workdir}: its checkpoints were written by other code ({other_code}); a resumed run says so "
                  "in its provenance")
        started, start = provenance.now(), time.perf_counter()
        metrics = run(config, workdir)
        metrics.setdefault("timing", {})["wall_seconds"] = time.perf_counter() - start
        prov = provenance.collect(provenance.command_line(argv, run.__module__), started)
        if other_code:
            prov["checkpoints_from"] = other_code
        write_json(workdir / "metrics.json", with_provenance(metrics, prov))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (data_lib.DataUnavailableError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {workdir / 'metrics.json'}")
    return 0


def divergence(history: dict[str, np.ndarray], seeds: np.ndarray, hp: dict[str, np.ndarray]) -> list[dict]:
    """One record per diverged run ({run, seed, epoch, hyperparameters}), each also warned about.

    A run diverges when its training loss or params stop being finite; the compiled program marks
    it (`history["diverged"]`), and statistics over runs leave it out.
    """
    records = []
    for r in np.flatnonzero(np.asarray(history["diverged"])[:, -1]):
        epoch = int(np.argmax(np.asarray(history["diverged"])[r])) + 1
        values = {k: float(v[r]) for k, v in hp.items()}
        records.append({"run": int(r), "seed": int(seeds[r]), "epoch": epoch, "hparams": values})
        described = ", ".join(f"{k}={v:g}" for k, v in values.items())
        warnings.warn(f"run {r} (seed {int(seeds[r])}, {described}) diverged in epoch {epoch}: its loss was not "
                      "finite; it is excluded from the statistics", RuntimeWarning, stacklevel=2)
    return records


def final_of_finite(history: dict[str, np.ndarray], key: str) -> np.ndarray:
    """The last epoch's `key` per run, NaN for runs that diverged (so stats.summary skips them)."""
    return np.where(np.asarray(history["diverged"])[:, -1], np.nan, np.asarray(history[key])[:, -1])
