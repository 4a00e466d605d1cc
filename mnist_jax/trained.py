"""What a trained run leaves on disk, read and written: JSON outputs, the saved params of every
run, one run restored as (model, params), and which code started a workdir's checkpoints."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from mnist_jax import models, provenance
from mnist_jax import workdir as workdir_lib
from mnist_jax.checkpoint import Checkpointer, CheckpointError
from mnist_jax.config import ConfigError


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
    """Write JSON atomically: a fixed temporary name in the same folder (`.NAME.tmp`, so a kill
    leaves at most that one file, overwritten by the next write), fsync, then a rename."""
    workdir_lib.write_text_atomic(pathlib.Path(path), json.dumps(to_jsonable(obj), indent=1, allow_nan=False))


def read_json(path: str | os.PathLike) -> Any:
    """JSON of `path`; a truncated or unreadable file is a ConfigError naming it."""
    return workdir_lib.read_json_file(pathlib.Path(path), "the file")


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
    except CheckpointError as err:  # the params a run committed: rerunning it rewrites them from its checkpoints
        why = str(err).split("; delete it")[0].replace(f"checkpoint 0 in {ckpt.directory} ", "")
        raise CheckpointError(f"the trained params in {str(path)!r} cannot be used: their checkpoint {why}; run the "
                              "experiment again on this workdir to rewrite them from its checkpoints") from None
    finally:
        ckpt.close()


def run_count(metrics: dict) -> int:
    """How many runs an experiment trained (and saved params of): the rows of its `runs` table,
    else of its per-epoch history, else its seed list (metrics that have neither)."""
    if "runs" in metrics:
        return len(metrics["runs"])
    history = metrics.get("history") or {}
    if history:
        return len(next(iter(history.values())))
    return len(metrics["seeds"])


def restore_run(workdir: pathlib.Path, block: dict, run_index: int, params_dir: str = "params",
                runs: list[int] | None = None, compute_dtype: str = "float32"):
    """(model, params) of one trained run of a workdir: the model of config `block`, from the
    params in `params_dir` (leading run axis).

    `runs`: the indices in that checkpoint the user picks from (default: every run of the
    experiment); `run_index` is a position in it, range-checked (ConfigError), and a run that
    diverged is a CheckpointError.
    """
    model = models.from_config(block, compute_dtype)
    metrics_path = workdir / "metrics.json"
    if not metrics_path.exists():
        raise CheckpointError(f"{str(workdir)!r} has no metrics.json: its experiment did not finish")
    metrics = read_json(metrics_path)
    n_saved = run_count(metrics) if runs is None else None
    runs = list(range(n_saved)) if runs is None else runs
    if not 0 <= run_index < len(runs):
        raise ConfigError(f"--seed {run_index}: this workdir has runs 0..{len(runs) - 1}")
    like = models.init_shapes(model, runs=n_saved or max(runs) + 1)
    index = runs[run_index]
    params = jax.tree_util.tree_map(lambda a: a[index], load_params(workdir, like, params_dir))
    flagged = None  # unknown: the metrics of other params (noise_accuracy's curves) are checked by their reader
    if params_dir == "params" and "runs" in metrics:
        flagged = bool(metrics["runs"][index]["diverged"])
    elif params_dir == "params" and "diverged" in (metrics.get("history") or {}):
        flagged = bool(np.asarray(metrics["history"]["diverged"][index])[-1])
    check_not_diverged(flagged, params, run_index)
    return model, params


def check_not_diverged(flagged: bool | None, params, run_index: int) -> None:
    """CheckpointError when run `run_index` diverged (its metrics say so or its params are not
    finite), or when its params are not finite although its metrics (`flagged` False) say it is healthy."""
    finite = all(bool(np.all(np.isfinite(np.asarray(a)))) for a in jax.tree_util.tree_leaves(params))
    if not finite and flagged is False:  # training marks every run whose params stop being finite
        raise CheckpointError(f"run {run_index} of this workdir has params that are not finite although its metrics "
                              "say it did not diverge: the workdir is damaged; run the experiment again on it")
    if flagged or not finite:
        raise CheckpointError(f"run {run_index} of this workdir diverged (its loss or parameters are not finite): "
                              "its predictions mean nothing; pick another run with --seed or retrain")


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


def outside_part(code_id: str) -> str:
    """The '+outside:<hash>' part of a code id (`provenance.code_id`), or "" when it has none."""
    return code_id[code_id.index("+outside:"):] if "+outside:" in code_id else ""


def mark_checkpoints_code(workdir: pathlib.Path) -> None:
    """Record the current code as the writer of workdir/checkpoints when it starts them."""
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir() or not any(ckpts.iterdir()):
        ckpts.mkdir(parents=True, exist_ok=True)
        write_json(ckpts / CHECKPOINTS_CODE_FILE, {"code_id": provenance.code_id()})
