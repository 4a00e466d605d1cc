"""What a trained run leaves on disk, read and written: JSON outputs, the saved params of every
run with their declaration (what model they are, its role, its runs: `declaration`), one run
restored as (model, params), and which code started a workdir's checkpoints."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from mnist_jax import distributed, models, precision, provenance, results
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


DECLARATION = "model.json"  # beside the params it declares: NAME/model.json
PRIMARY = "params"  # the params set an experiment saves when it names none


def declaration(model: Any, runs: list[dict], description: str, *, input: str | None = None,
                primary: bool = False) -> dict:
    """What a saved params set says about itself, for `experiments.evaluate` and any reader:

    - `model`: the block that builds the model (`models.from_config`, `restore_run`);
    - `compute_dtype`: the dtype it computes in (`mnist_jax.precision`; its block has no `dtype`);
    - `role`: `models.role` of the model ("classifier", "denoiser", "generative" or None);
    - `description`: one short line for people;
    - `runs`: one record per run of the params' run axis, in order, with the fields a user picks
      runs by (its traced hyperparameters such as `noise_level`, its `seed`, `diverged`, and any
      column the experiment adds, such as noise_accuracy's `curve`): `results.runs_table`;
    - `input`: the name of the params set whose output run r of this one reads (its run r), or None;
    - `primary`: whether it is the one a reader applies when none is named.
    """
    block = {"kind": models.kind_of(model), **{f: getattr(model, f) for f in models.fields_of(type(model)) if f != "dtype"}}
    return {"model": to_jsonable(block), "compute_dtype": precision.compute_dtype_name(getattr(model, "dtype", None)),
            "role": models.role(model), "description": description, "runs": to_jsonable(runs), "input": input,
            "primary": primary}


def grid_declaration(model: Any, hp: dict, seeds: Any, history: dict, what: str, *, input: str | None = None,
                     primary: bool = False, **columns: Any) -> dict:
    """The `declaration` of a trained grid's params: its runs as `results.runs_table` of `hp`,
    `seeds` and `history` (with any per-run `columns`), described as the model and `what` it is."""
    runs = results.runs_table(hp, seeds, history, **columns)
    described = f"{models.describe(model)}: {what} ({len(runs)} run{'s' * (len(runs) != 1)})"
    return declaration(model, runs, described, input=input, primary=primary)


def save_params(workdir: pathlib.Path, params: Any, name: str = PRIMARY, declared: dict | None = None) -> None:
    """The trained params of every run (leading run axis) as an orbax checkpoint in `workdir/name`,
    with their `declaration` beside them (NAME/model.json) when `declared` is given. Both are
    written into the run directory, so the workdir's commit publishes them together."""
    ckpt = Checkpointer(workdir / name, max_to_keep=1)
    ckpt.save(0, params)
    ckpt.close()
    if declared is not None:
        distributed.on_writer(lambda: write_json(pathlib.Path(workdir) / name / DECLARATION, declared))


def declarations(workdir: pathlib.Path) -> dict[str, dict]:
    """{name: declaration} of every params set the workdir declares (`declaration`), by name;
    a declaration that is not one is a CheckpointError naming its file."""
    found = {}
    for path in sorted(pathlib.Path(workdir).glob(f"*/{DECLARATION}")):
        name = path.parent.name
        if not workdir_lib.is_plain_name(name):
            continue
        try:
            declared = read_json(path)
        except ConfigError as err:  # saved with the params: damaged like a checkpoint (exit 1), not a user error
            raise CheckpointError(f"{err}".replace("move it away or use another --workdir",
                                                   "run the experiment again on this workdir to rewrite it")) from None
        runs = declared.get("runs") if isinstance(declared, dict) else None
        if not (isinstance(runs, list) and all(isinstance(r, dict) for r in runs)
                and isinstance(declared.get("model"), dict) and "kind" in declared["model"]):
            raise CheckpointError(f"{str(path)!r} is not a declaration of trained params (a model block and a list of "
                                  "runs): it is damaged; run the experiment again on this workdir to rewrite it")
        found[name] = declared
    return found


def undeclared_params(workdir: pathlib.Path) -> list[str]:
    """Names of the params sets (`save_params`) in the workdir that declare nothing (older code wrote them)."""
    return sorted(p.parent.name for p in pathlib.Path(workdir).glob("*/0.checksums.json")
                  if workdir_lib.is_plain_name(p.parent.name) and not (p.parent / DECLARATION).exists())


def inferred_declarations(workdir: pathlib.Path, config: dict, metrics: dict) -> dict[str, dict]:
    """{PRIMARY: declaration} of the primary params that an experiment saved without a
    declaration: the model of the config's `model` block, one run per row of the metrics' runs
    table (else of its history, else per seed); {} when there are no such params or no such block."""
    block = config.get("model")
    if PRIMARY not in undeclared_params(workdir) or not (isinstance(block, dict) and "kind" in block):
        return {}
    model = models.from_config(block, precision.compute_dtype_of(config))
    if "runs" in metrics:
        runs = metrics["runs"]
    else:
        diverged = (metrics.get("history") or {}).get("diverged")
        levels = metrics.get("noise_level")
        runs = [{**({"diverged": bool(np.asarray(diverged[r])[-1])} if diverged is not None else {}),
                 **({"noise_level": levels[r]} if isinstance(levels, list) else {})} for r in range(run_count(metrics))]
    described = f"{models.describe(model)}, inferred from config.json (its params declare nothing)"
    return {PRIMARY: {**declaration(model, runs, described, primary=True), "model": dict(block)}}


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


def restore_declared(workdir: pathlib.Path, name: str, declared: dict, run: int, shown: int | None = None):
    """(model, params) of run `run` (an index into its declared runs) of the params set `name`
    (`declaration`); a run that diverged, by its declaration or its params, is a CheckpointError
    that names it as `shown` (the user's --seed; default `run`)."""
    model = models.from_config(declared["model"], declared.get("compute_dtype", precision.DEFAULT_COMPUTE_DTYPE))
    like = models.init_shapes(model, runs=len(declared["runs"]))
    params = jax.tree_util.tree_map(lambda a: a[run], load_params(workdir, like, name))
    flagged = declared["runs"][run].get("diverged")
    check_not_diverged(None if flagged is None else bool(flagged), params, run if shown is None else shown)
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
