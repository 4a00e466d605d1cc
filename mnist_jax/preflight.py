"""What is checked before data loads or anything compiles: every config field is read by
something (each experiment's `reads(config)`, built from `classifier_reads`, `task_reads` and
`sweep_reads`), every model builds, and the runs fit in the memory the machine has free."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from mnist_jax import models, tasks, training
from mnist_jax import train as train_lib
from mnist_jax.config import ConfigError
from mnist_jax.train import Task, TrainSpec

# Fields every experiment's harness reads: the run block (`configs/base.py`) and the optimizer
# choice. The traced hyperparameters (learning_rate, momentum, l2, ...) are read by the tasks,
# hooks and optimizers that name them (`task_reads`).
RUN_FIELDS = ("experiment", "seed", "seeds", "epochs", "batch_size", "n_val", "protocol", "chunk_epochs",
              "checkpoint_every", "checkpoint_seconds", "run_chunk", "train_images", "optimizer", "schedule",
              "tensorboard", "compute_dtype", "matmul_precision")


def task_reads(config: ml_collections.ConfigDict, task: Task, spec: TrainSpec | None = None,
               prefix: str = "", given: tuple[str, ...] = ()) -> list[str]:
    """The config fields a training of `task` reads: every hyperparameter its task, hooks and
    optimizer read (ConfigError when one is neither a field nor swept; a swept one's field is its
    base value, which the sweep declaration replaces), and the switches of its hooks and
    augmentation. `given`: hyperparameters the experiment takes from elsewhere (not fields)."""
    swept = training.sweep_values(config) if "sweep" in config else {}
    names = [n for n in train_lib.expected_hparams(task, spec or training.train_spec(config)) if n not in given]
    missing = [n for n in names if n not in config and n not in swept]
    if missing:
        raise ConfigError(f"config.{prefix}{missing[0]} is missing: this experiment's task reads the hyperparameter "
                          f"{missing[0]!r}")
    return [f"{prefix}{n}" for n in (*names, "max_shift", "max_norm")]


def sweep_reads(config: ml_collections.ConfigDict, task: Task, spec: TrainSpec | None = None) -> list[str]:
    """["sweep"] for an experiment that trains the config's sweep declaration with `task`;
    ConfigError when it sweeps a hyperparameter that the task and optimizer do not read."""
    expected = train_lib.expected_hparams(task, spec or training.train_spec(config))
    unknown = [name for name in training.sweep_values(config) if name not in expected]
    if unknown:
        raise ConfigError(f"config.sweep.{unknown[0]}: this experiment's task and optimizer do not read {unknown[0]!r} "
                          f"(they read {', '.join(expected)})")
    return ["sweep"]


def classifier_reads(config: ml_collections.ConfigDict, sweeps: bool = False) -> list[str]:
    """The fields a classifier config resolves: its model block, the run block, what the
    classifier task reads (`task_reads`) and, when the experiment `sweeps`, its declaration."""
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
    return config.get("seeds", 1) * math.prod(len(v) for v in training.sweep_values(config).values())


def runs_at_once(config: ml_collections.ConfigDict, run: Callable | None = None) -> int:
    """The most runs one compiled program trains: `planned_runs`, at most `config.run_chunk`."""
    runs = planned_runs(config, run)
    return min(runs, config.get("run_chunk", 0) or runs)


def experiment_reads(run: Callable) -> Callable[[ml_collections.ConfigDict], list[str]]:
    """The `reads(config)` of the experiment module that defines `run`: the config fields that
    experiment reads (its planned trainings' and its own), for `check_read`."""
    reads = getattr(sys.modules.get(run.__module__), "reads", None)
    if not callable(reads):
        raise TypeError(f"{run.__module__} defines no reads(config): every experiment says which config fields it reads")
    return reads


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
