"""What every experiment entry point shares: the command line, the workdir, data, training
with a progress bar and checkpoints, and the JSON outputs.

An experiment module defines `run(config, workdir) -> metrics` and `reads(config)`, and ends with
`main = experiment.entry_point(run, "configs/<name>.py", __doc__, __name__)`; this module does the
rest of the contract in docs/extending.md (config.json, metrics.json, exit codes, clear errors).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from mnist_jax import compilation, distributed, provenance, sweep, tensorboard
from mnist_jax import data as data_lib
from mnist_jax import train as train_lib
from mnist_jax import workdir as workdir_lib
from mnist_jax.checkpoint import Checkpointer, CheckpointError, is_disk_full, space_text
from mnist_jax.config import REPO_ROOT, ConfigError, load_config_module, parse_args
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
    """Write JSON atomically: a fixed temporary name in the same folder (`.NAME.tmp`, so a kill
    leaves at most that one file, overwritten by the next write), fsync, then a rename."""
    workdir_lib.write_text_atomic(pathlib.Path(path), json.dumps(to_jsonable(obj), indent=1, allow_nan=False))


def read_json(path: str | os.PathLike) -> Any:
    """JSON of `path`; a truncated or unreadable file is a ConfigError naming it."""
    return workdir_lib.read_json_file(pathlib.Path(path), "the file")


def load_data(config: ml_collections.ConfigDict) -> tuple[data_lib.Splits, float]:
    """The splits of `config` on the device, and the seconds it took; with `train_images` > 0
    only the first that many images of the training split are trained on."""
    start = time.perf_counter()
    splits = data_lib.load_splits(n_val=config.get("n_val", 5000), protocol=config.get("protocol", "holdout"),
                                  on_device=False)
    n_train = config.get("train_images", 0)
    if n_train:
        if n_train > splits.train_x.shape[0]:
            raise ConfigError(f"config.train_images={n_train} is larger than the training split "
                              f"({splits.train_x.shape[0]})")
        splits = splits._replace(train_x=splits.train_x[:n_train], train_y=splits.train_y[:n_train])
    # Cut on the host, then put on the device: slicing a device array compiles a program per shape.
    splits = jax.block_until_ready(data_lib.Splits(*(jax.device_put(a) for a in splits)))
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
                        mininterval=0.1 if interactive else 30.0, disable=not distributed.is_writer())

    def __call__(self, n: int, metrics: dict) -> None:
        self.bar.update(n)
        if self.metric in metrics:
            self.bar.set_postfix({self.metric: f"{np.nanmean(metrics[self.metric]):.4f}"})

    def close(self) -> None:
        self.bar.close()


def run_chunk(config: ml_collections.ConfigDict, task: Task, backend: str | None = None) -> int | None:
    """Runs per compiled program: `config.run_chunk`, or when it is 0 (automatic) what the task
    says about itself (`sweep.default_run_chunk`). None means all runs at once."""
    return config.get("run_chunk", 0) or sweep.default_run_chunk(task, backend)


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    """The base seeds of a config's runs: seed, seed + 1, ..., seed + seeds - 1."""
    return [config.seed + i for i in range(config.seeds)]


def train_spec(config: ml_collections.ConfigDict) -> TrainSpec:
    """The static training setup of a config (or of a sub-config such as `classifier`).

    The optimizer's numeric arguments (`train.optimizer_args`) that the config has as fields, or
    sweeps, are traced hyperparameters of its runs; the others keep optax's defaults."""
    optimizer = config.get("optimizer", "sgd")
    given = {*config, *(config.get("sweep") or ())}
    return TrainSpec(epochs=config.epochs, batch_size=config.batch_size, optimizer=optimizer,
                     schedule=config.get("schedule", "constant"),
                     optimizer_args=tuple(a for a in train_lib.optimizer_args(optimizer) if a in given))


def hparams(config: ml_collections.ConfigDict, task: Task, spec: TrainSpec | None = None,
            **swept: list[float]) -> dict[str, list[float]]:
    """{name: values} of every traced hyperparameter the task and optimizer read: the config
    field of that name, unless `swept` gives the values. ConfigError when the config lacks one."""
    spec = spec or train_spec(config)
    out = {}
    for name in train_lib.expected_hparams(task, spec):
        if name in swept:
            out[name] = [float(v) for v in swept[name]]
        elif name in config:
            out[name] = [float(config[name])]
        else:
            raise ConfigError(f"config.{name} is missing: this experiment's task reads the hyperparameter {name!r}")
    unknown = sorted(set(swept) - set(out))
    if unknown:
        raise ConfigError(f"swept hyperparameters {unknown} are not read by this task (it reads {sorted(out)})")
    return out


def sweep_values(config: ml_collections.ConfigDict) -> dict[str, list[float]]:
    """The config's sweep declaration `config.sweep = {hyperparameter: [values]}`, with the values
    exactly as the config gives them ({} when it sweeps nothing). Several keys form their grid."""
    declared = config.get("sweep", None) or {}
    return {str(name): [float(v) for v in values] for name, values in dict(declared).items()}


def swept_grid(config: ml_collections.ConfigDict, task: Task, spec: TrainSpec | None = None,
               **swept: list[float]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(hp, seeds): the config's seeds x its sweep declaration (and any `swept` values) as one grid."""
    return sweep.grid(seeds_of(config), **hparams(config, task, spec, **{**sweep_values(config), **swept}))


# Fields every experiment's harness reads: the run block (`configs/base.py`) and the optimizer
# choice. The traced hyperparameters (learning_rate, momentum, l2, ...) are read by the tasks,
# hooks and optimizers that name them (`task_reads`).
RUN_FIELDS = ("experiment", "seed", "seeds", "epochs", "batch_size", "n_val", "protocol", "chunk_epochs",
              "checkpoint_every", "checkpoint_seconds", "run_chunk", "train_images", "optimizer", "schedule",
              "tensorboard")


def task_reads(config: ml_collections.ConfigDict, task: Task, spec: TrainSpec | None = None,
               prefix: str = "", given: tuple[str, ...] = ()) -> list[str]:
    """The config fields a training of `task` reads: every hyperparameter its task, hooks and
    optimizer read (ConfigError when one is neither a field nor swept; a swept one's field is its
    base value, which the sweep declaration replaces), and the switches of its hooks and
    augmentation. `given`: hyperparameters the experiment takes from elsewhere (not fields)."""
    swept = sweep_values(config) if "sweep" in config else {}
    names = [n for n in train_lib.expected_hparams(task, spec or train_spec(config)) if n not in given]
    missing = [n for n in names if n not in config and n not in swept]
    if missing:
        raise ConfigError(f"config.{prefix}{missing[0]} is missing: this experiment's task reads the hyperparameter "
                          f"{missing[0]!r}")
    return [f"{prefix}{n}" for n in (*names, "max_shift", "max_norm")]


def value_text(config: ml_collections.ConfigDict, name: str) -> str:
    """What a run used for hyperparameter `name`: its swept values ("0, 1e-04") or the config's value."""
    swept = sweep_values(config) if "sweep" in config else {}
    return ", ".join(f"{v:g}" for v in swept[name]) if name in swept else f"{config[name]:g}"


def runs_text(config: ml_collections.ConfigDict) -> str:
    """How many runs a grid trains, for people: "5 seeds", or "2 seeds x 3 values" with a sweep."""
    points = math.prod(len(v) for v in sweep_values(config).values()) if "sweep" in config else 1
    seeds = f"{config.seeds} seed{'s' * (config.seeds > 1)}"
    return seeds if points == 1 else f"{seeds} x {points} values"


def sweep_text(config: ml_collections.ConfigDict) -> str:
    """The sweep declaration for people ("; swept: l2 over 0, 1e-04"), or "" when it sweeps nothing."""
    swept = sweep_values(config) if "sweep" in config else {}
    return "".join(f"; swept: {name} over {value_text(config, name)}" for name in swept)


def sweep_reads(config: ml_collections.ConfigDict, task: Task, spec: TrainSpec | None = None) -> list[str]:
    """["sweep"] for an experiment that trains the config's sweep declaration with `task`;
    ConfigError when it sweeps a hyperparameter that the task and optimizer do not read."""
    expected = train_lib.expected_hparams(task, spec or train_spec(config))
    unknown = [name for name in sweep_values(config) if name not in expected]
    if unknown:
        raise ConfigError(f"config.sweep.{unknown[0]}: this experiment's task and optimizer do not read {unknown[0]!r} "
                          f"(they read {', '.join(expected)})")
    return ["sweep"]


def classifier_reads(config: ml_collections.ConfigDict, sweeps: bool = False) -> list[str]:
    """The fields a classifier config resolves: its model block, the run block, what the
    classifier task reads (`task_reads`) and, when the experiment `sweeps`, its declaration."""
    from mnist_jax import tasks

    _, task = tasks.classifier_from_config(config)
    return [*RUN_FIELDS, "model", *task_reads(config, task), *(sweep_reads(config, task) if sweeps else [])]


def leaf_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """The dotted names of a config's fields; a block of alternatives ({kind, <kind>: {...}, ...})
    counts only its chosen alternative, and the sweep declaration its hyperparameters."""
    out = []
    kind = config.get("kind") if isinstance(config.get("kind", None), str) else None
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict) and kind is not None and name != kind:
            continue  # an alternative not chosen (see config.check_alternatives)
        if isinstance(value, ml_collections.ConfigDict) and (value or name != "sweep"):
            out.extend(leaf_fields(value, f"{path}."))
        else:
            out.append(path)
    return out


def check_read(config: ml_collections.ConfigDict, reads: list[str]) -> None:
    """ConfigError naming the first config field that nothing of this experiment reads (`reads`:
    dotted names, a block's name standing for all its fields), with the reason where a model
    takes that argument but does not use it in its configuration."""
    from mnist_jax import models

    def read(path: str) -> bool:
        return any(path == r or path.startswith(f"{r}.") for r in reads)

    unread = [f for f in leaf_fields(config) if not read(f)]
    if not unread:
        return
    field = unread[0]
    leaf = field.rsplit(".", 1)[-1]
    why = "nothing in this experiment reads it"
    optimizer = config.get("optimizer") if field == leaf else None
    if isinstance(optimizer, str) and any(leaf in train_lib.optimizer_args(o) for o in train_lib.OPTIMIZERS):
        why = f"the optimizer {optimizer!r} takes no {leaf} (it takes {', '.join(train_lib.optimizer_args(optimizer))})"
    for where, block in model_blocks(config):
        try:
            model = models.from_config(block)
        except Exception:  # noqa: BLE001 - a block that does not build is reported by the preflight
            continue
        if leaf in models.unused_hparams(model):
            why = (f"the model of config.{where} ({models.describe(model)}) takes {leaf} but has no layer that uses it "
                   "in this configuration")
    raise ConfigError(f"config.{field} is ignored: {why}. Remove it, or change the config so that it is read")


def prepare(config: ml_collections.ConfigDict, task: Task, hp: dict, seeds: Any, data: data_lib.Splits,
            spec: TrainSpec | None = None) -> sweep.GridTrainer:
    """Start compiling, in the background, the programs of a later `train(config, ..., trainer=)`
    of this grid (`sweep.GridTrainer.precompile`): an experiment that trains several grids one
    after the other prepares the next ones first, so their compilation overlaps training (or each
    other). hp and seeds need only the right shapes: a hyperparameter another training will
    produce can be a `jax.ShapeDtypeStruct`."""
    spec = spec or train_spec(config)
    return sweep.GridTrainer(task, spec).precompile(hp, seeds, data, run_chunk=run_chunk(config, task),
                                                    chunk_epochs=config.get("chunk_epochs", 1),
                                                    checkpoint_every=config.get("checkpoint_every", 1))


def train(config: ml_collections.ConfigDict, workdir: pathlib.Path, task: Task, hp: dict, seeds: Any,
          data: data_lib.Splits, name: str = "train", spec: TrainSpec | None = None,
          metric: str = "val_accuracy", trainer: sweep.GridTrainer | None = None) -> SweepResult:
    """`train_grid` with the config's spec, a progress bar, and checkpoints in workdir/checkpoints/name.

    A workdir that already holds checkpoints of this training resumes from the newest one.
    `metric` is the history entry shown in the progress bar. `seeds`: (R,) run seeds, or
    per-stream seeds {stream: (R,)}. How many runs share a program: `run_chunk`. `trainer`: the
    one `prepare` returned for this training (its programs compiled ahead), if any.
    """
    spec = spec or (trainer.spec if trainer is not None else train_spec(config))
    ckpt_dir = workdir / "checkpoints" / name
    if distributed.is_writer():
        mark_checkpoints_code(workdir)
    chunk = run_chunk(config, task)
    n_runs = num_runs(seeds)
    bar = Progress(spec.epochs * int(np.ceil(n_runs / (chunk or n_runs))), name, metric)
    try:
        result = train_grid(task, spec, hp, seeds, data, chunk_epochs=config.get("chunk_epochs", 1),
                            run_chunk=chunk, checkpoint_dir=str(ckpt_dir),
                            checkpoint_every=config.get("checkpoint_every", 1),
                            checkpoint_seconds=config.get("checkpoint_seconds", 0.0), progress=bar, trainer=trainer)
    finally:
        bar.close()
    if result.resumed_from_epoch is not None:
        print(f"{name}: resumed from the checkpoint of epoch {result.resumed_from_epoch} in {ckpt_dir}")
    return result


@dataclasses.dataclass(frozen=True)
class Training:
    """One grid an experiment will train, as one value: what `train` takes, and the model.

    An experiment that trains several grids one after the other plans them as Trainings,
    `prepare`s the later ones before the first trains (their programs compile in the background)
    and trains each in its turn. `config` gives the spec (unless `spec` does), the run chunk and
    the checkpointing; `model` is the flax module the task trains, kept for the caller."""

    config: ml_collections.ConfigDict
    task: Task
    hp: dict
    seeds: Any
    spec: TrainSpec | None = None
    model: Any = None
    trainer: sweep.GridTrainer | None = None

    def prepare(self, data: data_lib.Splits) -> Training:
        """This training, its programs compiling in the background from now on (`prepare`)."""
        return dataclasses.replace(self, trainer=prepare(self.config, self.task, self.hp, self.seeds, data, self.spec))

    def train(self, workdir: pathlib.Path, data: data_lib.Splits, name: str,
              metric: str = "val_accuracy") -> SweepResult:
        """`train` of this grid, with the programs `prepare` compiled if it was prepared."""
        return train(self.config, workdir, self.task, self.hp, self.seeds, data, name=name, spec=self.spec,
                     metric=metric, trainer=self.trainer)


def train_seeds(config: ml_collections.ConfigDict, workdir: pathlib.Path, task: Task, data: data_lib.Splits,
                **swept: list[float]) -> tuple[dict, np.ndarray, SweepResult]:
    """(hp, seeds, result): the config's seeds x its sweep declaration (and any `swept` values) of
    the task's traced hyperparameters as one grid, trained (`train`) and its params saved
    (`save_params`)."""
    hp, seeds = swept_grid(config, task, **swept)
    result = train(config, workdir, task, hp, seeds, data)
    save_params(workdir, result.state.params)
    return hp, seeds, result


def entry_point(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], default_config: str,
                description: str = "", module_name: str = "") -> Callable[[list[str] | None], int]:
    """The `main(argv)` of an experiment module: `main(run, argv, default_config, description)`.

    The module's last line is `main = experiment.entry_point(run, "configs/x.py", __doc__, __name__)`:
    run as a script (`python -m experiments.x`, so `module_name == "__main__"`), it also runs
    `main` and exits with its code.
    """

    def entry(argv: list[str] | None = None) -> int:
        return main(run, argv, default_config, description)

    if module_name == "__main__":
        sys.exit(entry())
    return entry


def train_classifier(config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """The classifier a config describes (`tasks.classifier_from_config`), trained over its seeds:
    (data, data seconds, model, hp, seeds, result)."""
    from mnist_jax import tasks

    model, task = tasks.classifier_from_config(config)  # a model that is no classifier is refused before the data loads
    data, data_seconds = load_data(config)
    hp, seeds, result = train_seeds(config, workdir, task, data)
    return data, data_seconds, model, hp, seeds, result


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
                runs: list[int] | None = None):
    """(model, params) of one trained run of a workdir: the model of config `block`, from the
    params in `params_dir` (leading run axis).

    `runs`: the indices in that checkpoint the user picks from (default: every run of the
    experiment); `run_index` is a position in it, range-checked (ConfigError), and a run that
    diverged is a CheckpointError.
    """
    from mnist_jax import models

    model = models.from_config(block)
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


def history_summary(history: dict[str, np.ndarray]) -> dict:
    """Per-epoch metrics as {metric: [[run 0 epochs...], ...]} for metrics.json."""
    return {k: np.asarray(v) for k, v in history.items()}


def timing(data_seconds: float, result: SweepResult) -> dict:
    """The `timing` block of metrics.json."""
    return {"data_seconds": data_seconds, **result.timing, "device": describe_devices()}


def config_matches(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> bool:
    """Whether the workdir's committed run (config.json, written only together with its results)
    had exactly `config`."""
    path = pathlib.Path(workdir) / "config.json"
    return path.exists() and read_json(path) == to_jsonable(config.to_dict())


def experiment_name(config: ml_collections.ConfigDict, default_config: str) -> str:
    """The experiment a config runs: its `experiment` field, else the default config's name."""
    return config.get("experiment", None) or pathlib.Path(default_config).stem


def run_in_workdir(workdir: workdir_lib.Workdir | None, run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict],
                   config: ml_collections.ConfigDict, command: str, path: str | os.PathLike | None = None) -> dict:
    """Run `config` in the workdir's run directory and commit its outputs with its metrics, whose
    provenance names `command` and the code (and the code that wrote any checkpoints it resumed).

    The run resumes the unfinished run of the same config, if any; the committed config.json,
    metrics.json and everything else change only at the commit, all together. Any failure of a
    new run before its first checkpoint (a ConfigError, a crash, Ctrl-C) leaves the workdir as it
    was, an unfinished run of another config included (`Workdir.abandon`).

    In a multi-process run only process 0 has the open `workdir` and begins and commits the run;
    the others (`workdir` None) train in the run directory under `path` once process 0 made it.
    """
    def begin() -> tuple[pathlib.Path, str | None]:
        run_dir = workdir.begin(to_jsonable(config.to_dict()))
        other_code = foreign_checkpoints(run_dir)
        if other_code and outside_part(other_code) != outside_part(provenance.code_id()):
            # another version of a model file from outside the repository: its checkpoints are another model's
            print(f"{workdir.root}: its checkpoints were trained with other code from outside the repository "
                  f"({other_code}); training from the start")
            shutil.rmtree(run_dir / "checkpoints")
            other_code = None
        elif other_code:
            print(f"{workdir.root}: its checkpoints were written by other code ({other_code}); a resumed run says so "
                  "in its provenance")
        return run_dir, other_code

    began = distributed.on_writer(begin)
    shared = (pathlib.Path(path or ".").resolve() / workdir_lib.META / workdir_lib.RUN, None)
    run_dir, other_code = began if workdir is not None else shared
    started, start, compiled = provenance.now(), time.perf_counter(), compilation.counts()
    cache_at_start = compilation.cache_entries()
    try:
        metrics = run(config, run_dir)
    except BaseException:
        if workdir is not None:
            workdir.abandon()
        raise
    finally:
        sweep.cancel_ahead()  # nothing this run queued compiles into the next one
    metrics.setdefault("timing", {})["wall_seconds"] = time.perf_counter() - start
    metrics["timing"]["compilation"] = {**compilation.since(compiled),  # every program of the run, not only training's
                                        "cache_entries_at_start": cache_at_start}
    prov = provenance.collect(command, started)
    if other_code:
        prov["checkpoints_from"] = other_code
    metrics = with_provenance(metrics, prov)
    distributed.on_writer(lambda: workdir.commit(lambda d: write_outputs(d, metrics, config)))
    return metrics


def write_outputs(run_dir: pathlib.Path, metrics: dict, config: ml_collections.ConfigDict) -> None:
    """What the commit adds to the run: metrics.json and, unless `config.tensorboard` is False, the
    TensorBoard event files of its runs (`mnist_jax.tensorboard`), so both appear together or not at all."""
    write_json(run_dir / "metrics.json", metrics)
    if config.get("tensorboard", True):
        tensorboard.write(run_dir, to_jsonable(metrics))


class Interrupted(Exception):
    """A nested experiment was interrupted and has said so: exit 130 without another message."""


def check_experiment(config: ml_collections.ConfigDict, default_config: str) -> str:
    """The config's experiment name; ConfigError when the registry (`configs/`) says another
    command runs that experiment."""
    from mnist_jax import registry

    name = experiment_name(config, default_config)
    this = load_config_module(REPO_ROOT / default_config).ENTRY
    entries = registry.entries_of(name)
    if this not in entries:
        runs = f"is run by {' or '.join(sorted(entries))}" if entries else "is not registered in configs/"
        raise ConfigError(f"--config is a config of experiment {name!r}, which {runs}; this command is {this}")
    return name


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


def with_provenance(metrics: dict, prov: dict) -> dict:
    """metrics with `schema_version` and `provenance` first, as every metrics.json has them."""
    return {"schema_version": provenance.SCHEMA_VERSION, "provenance": prov,
            **{k: v for k, v in metrics.items() if k not in ("schema_version", "provenance")}}


def main(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], argv: list[str] | None,
         default_config: str, description: str = "") -> int:
    """Parse, validate, open and lock the workdir, run, and commit config.json / metrics.json.

    The command runs every config whose ENTRY names it (`registry`). User errors print one line
    and return 2; missing data or a bad checkpoint return 1; Ctrl-C returns 130 with the epoch a
    rerun resumes from.

    Started as several processes (`mnist_jax.distributed`), every process trains and process 0
    alone opens, locks and commits the workdir and prints; a process that fails ends at once
    with its exit code, which stops the others (`distributed.exit_now`).
    """
    if distributed.initialize():
        try:
            code = _main(run, argv, default_config, description)
        except SystemExit as err:  # --help, or a usage error of the argument parser: the same everywhere
            code = err.code if isinstance(err.code, int) else 1
            if code == 0:
                raise
        except BaseException as err:  # noqa: BLE001 - anything unexpected must stop every process
            distributed.exit_now(1, err)
        if code != 0:
            distributed.exit_now(code)
        return code
    return _main(run, argv, default_config, description)


def _main(run: Callable[[ml_collections.ConfigDict, pathlib.Path], dict], argv: list[str] | None,
          default_config: str, description: str) -> int:
    workdir = None
    try:
        path, config = parse_args(argv, default_config, description)
        check_experiment(config, default_config)
        preflight(config, run)
        workdir = distributed.on_writer(lambda: workdir_lib.Workdir.open(path, experiment_name(config, default_config)))
        run_in_workdir(workdir, run, config, provenance.command_line(argv, run.__module__), path)
    except distributed.WriterFailed as err:  # process 0 has said why
        return err.code
    except KeyboardInterrupt:
        if distributed.is_writer():
            print(f"interrupted; run again to resume from epoch {_resume_epoch(workdir)}", file=sys.stderr)
        return 130
    except Interrupted:
        return 130
    except ConfigError as err:
        if distributed.is_writer():  # every process checks the same config: process 0 says it
            print(f"error: {err}", file=sys.stderr)
        return 2
    except (data_lib.DataUnavailableError, CheckpointError) as err:
        print(f"error: {_who()}{err}", file=sys.stderr)
        return 1
    except OSError as err:
        if not is_disk_full(err):
            raise
        where = err.filename or (workdir.run_dir if workdir is not None else path)
        what = where if err.filename else f"into {where}"  # a figure's writer does not say which file
        print(f"error: {_who()}no space left on the device writing {what} ({space_text(where)}); free some and run "
              f"again to resume from epoch {_resume_epoch(workdir)}", file=sys.stderr)
        return 1
    finally:
        if workdir is not None:
            workdir.close()
            workdir.remove_if_unused()
    if workdir is not None:
        print(f"wrote {workdir.root / 'metrics.json'}")
    return 0


def experiment_reads(run: Callable) -> Callable[[ml_collections.ConfigDict], list[str]]:
    """The `reads(config)` of the experiment module that defines `run`: the config fields that
    experiment reads (its planned trainings' and its own), for `check_read`."""
    reads = getattr(sys.modules.get(run.__module__), "reads", None)
    if not callable(reads):
        raise TypeError(f"{run.__module__} defines no reads(config): every experiment says which config fields it reads")
    return reads


def _resume_epoch(workdir: workdir_lib.Workdir | None) -> int:
    """The epoch a rerun of the same config resumes from (0 when this run was undone or never began)."""
    return workdir_lib.checkpoint_epoch(workdir.run_dir) if workdir is not None and not workdir.abandoned else 0


def _who() -> str:
    """'process K: ' in a multi-process run, where an error may be one process's own."""
    return f"process {distributed.process_index()}: " if distributed.is_multiprocess() else ""


def model_blocks(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, ml_collections.ConfigDict]]:
    """(dotted name, block) of every model block (a sub-config with a `kind`) of a config."""
    out = []
    for name, value in config.items():
        if not isinstance(value, ml_collections.ConfigDict):
            continue
        kind = value.get("kind")
        if name == "model" and "kind" in value:
            out.append((f"{prefix}{name}", value))
        elif isinstance(kind, str) and isinstance(value.get(kind), ml_collections.ConfigDict):  # {kind, mlp: {...}, cnn: {...}}
            out.append((f"{prefix}{name}.{kind}", ml_collections.ConfigDict({"kind": kind, **value[kind].to_dict()})))
        else:
            out.extend(model_blocks(value, f"{prefix}{name}."))
    return out


def param_count_of(block: ml_collections.ConfigDict, where: str) -> int:
    """Parameters of the model a block describes, from shapes alone (nothing is allocated);
    ConfigError when the block does not make a model that takes 28x28 images."""
    from mnist_jax import models

    try:
        shapes = models.init_shapes(models.from_config(block))
    except ConfigError:
        raise
    except Exception as err:  # a model config is user input: any failure to build it is its error
        message = str(err).splitlines()[0][:200] if str(err) else ""
        if isinstance(err, ZeroDivisionError):
            message = "the image shrinks to nothing: too many conv or pooling layers for 28x28"
        raise ConfigError(f"config.{where}: this model cannot be built for 28x28 images ({type(err).__name__}: "
                          f"{message})") from None
    return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes)))


def available_memory() -> int:
    """Bytes of memory the runs can still use: free memory of the first accelerator where its
    runtime reports it, else the host's (MemAvailable on Linux)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def planned_runs(config: ml_collections.ConfigDict, run: Callable | None = None) -> int:
    """The most runs one grid of this experiment trains: what its module's `runs(config)` says,
    else its seeds x the size of its sweep declaration."""
    count = getattr(sys.modules.get(run.__module__), "runs", None) if run is not None else None
    if callable(count):
        return int(count(config))
    return config.get("seeds", 1) * math.prod(len(v) for v in sweep_values(config).values())


def runs_at_once(config: ml_collections.ConfigDict, run: Callable | None = None) -> int:
    """The most runs one compiled program trains: `planned_runs`, at most `config.run_chunk`."""
    runs = planned_runs(config, run)
    return min(runs, config.get("run_chunk", 0) or runs)


def preflight(config: ml_collections.ConfigDict, run: Callable | None = None) -> None:
    """What can be checked before data is loaded or anything compiles: every model builds, every
    config field is read by something (`check_read`, with the experiment's `reads`), and the
    trained state (params, gradients, optimizer moments: about 4 copies in float32, plus the
    training set on the device) fits in the memory the machine has free."""
    params = max((param_count_of(block, name) for name, block in model_blocks(config)), default=0)
    if run is not None:
        check_read(config, list(experiment_reads(run)(config)))
    at_once = runs_at_once(config, run)
    needed = 16 * params * at_once + 60_000 * 784
    free = available_memory()
    if needed > free:
        raise ConfigError(f"this config needs about {needed / 2**30:.1f} GiB ({params:,} params x "
                          f"{at_once} runs at once) but {free / 2**30:.1f} GiB is free: use fewer seeds, "
                          "a smaller model or config.run_chunk")
