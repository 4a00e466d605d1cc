"""Planning and training an experiment's grids: the data, the spec and the traced
hyperparameters a config gives, its seeds x sweep grid, and training with a progress bar,
checkpoints and resume (`train`, `Training`, `train_classifier`)."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from mnist_jax import data as data_lib
from mnist_jax import distributed, sweep, tasks, trained
from mnist_jax import train as train_lib
from mnist_jax.config import ConfigError
from mnist_jax.provenance import describe_devices
from mnist_jax.sweep import SweepResult, num_runs, train_grid
from mnist_jax.train import Task, TrainSpec


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
        trained.mark_checkpoints_code(workdir)
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
                model: Any, **swept: list[float]) -> tuple[dict, np.ndarray, SweepResult]:
    """(hp, seeds, result): the config's seeds x its sweep declaration (and any `swept` values) of
    the task's traced hyperparameters as one grid, trained (`train`) and its params saved and
    declared as the classifiers of `model` (`trained.save_params`)."""
    hp, seeds = swept_grid(config, task, **swept)
    result = train(config, workdir, task, hp, seeds, data)
    trained.save_params(workdir, result.state.params,
                        declared=trained.grid_declaration(model, hp, seeds, result.history, "classifiers", primary=True))
    return hp, seeds, result


def train_classifier(config: ml_collections.ConfigDict, workdir: pathlib.Path):
    """The classifier a config describes (`tasks.classifier_from_config`), trained over its seeds:
    (data, data seconds, model, hp, seeds, result)."""
    model, task = tasks.classifier_from_config(config)  # a model that is no classifier is refused before the data loads
    data, data_seconds = load_data(config)
    hp, seeds, result = train_seeds(config, workdir, task, data, model)
    return data, data_seconds, model, hp, seeds, result


def history_summary(history: dict[str, np.ndarray]) -> dict:
    """Per-epoch metrics as {metric: [[run 0 epochs...], ...]} for metrics.json."""
    return {k: np.asarray(v) for k, v in history.items()}


def timing(data_seconds: float, result: SweepResult) -> dict:
    """The `timing` block of metrics.json."""
    return {"data_seconds": data_seconds, **result.timing, "device": describe_devices()}
