"""TensorBoard event files of a run's metrics.json: one TensorBoard run per trained run.

    tensorboard --logdir WORKDIR        # every run of the workdir (of every stage, for a reproduce job)

`write(run_dir, metrics)` writes `run_dir/tensorboard/<name>/events.out.tfevents...` for each
record of metrics.json's `runs` table, named by the hyperparameters that differ between runs and
its seed ("l2=0.0001,seed=1"):

- each per-epoch metric of `history` ({metric: [[run 0 epochs...], ...]}) as a scalar per epoch
  under `epoch/` (steps 1, 2, ...), when `history` has one list per run of the table (or there is no table);
- the run's final metrics (its record's fields named like a metric: `test_*`, `val_*`, `train_*`,
  `final_*`, `best_*`, `study_protocol_*`, a history metric, `diverged`) under `final/`, at the
  last epoch's step;
- its hyperparameters (every other field of its record: swept values, seed, stream seeds, a
  string such as a program or a curve name) as the HParams plugin's session summaries, so the
  HParams dashboard compares the runs by hyperparameter. No experiment summary is written: the
  dashboard infers it from the sessions of every run under its logdir, so the stages of a
  reproduce job appear side by side.

Experiments without a `runs` table and without per-run history (a job that only runs others)
write nothing. The writer is tensorboardX (pure Python over protobuf; it imports no TensorFlow).
"""

from __future__ import annotations

import math
import pathlib
import shutil
import time
from typing import Any

DIR = "tensorboard"
METRIC_PREFIXES = ("test_", "val_", "train_", "final_", "best_", "study_protocol_")
EPOCH, FINAL = "epoch/", "final/"  # tag groups: the per-epoch curves first, then the final metrics


def _number(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float))


def per_run_history(metrics: dict) -> dict[str, list[list]]:
    """The metrics of `history` that hold one list of per-epoch numbers per run (as many runs as
    the `runs` table has, when there is one); {} when there are none."""
    history, runs = metrics.get("history"), metrics.get("runs")
    if not isinstance(history, dict):
        return {}
    n_runs = len(runs) if isinstance(runs, list) and runs else None
    out = {}
    for name, values in history.items():
        if not (isinstance(values, list) and values and all(isinstance(r, list) and all(map(_number, r)) for r in values)):
            continue
        n_runs = n_runs or len(values)
        if len(values) == n_runs:
            out[str(name)] = values
    return out


def is_metric(name: str, history: dict) -> bool:
    """Whether a field of a runs record is a final metric (else it is a hyperparameter)."""
    return name == "diverged" or name in history or name.startswith(METRIC_PREFIXES)


def split_record(record: dict, history: dict) -> tuple[dict, dict]:
    """(hyperparameters, final metrics) of one record of the runs table; a {stream: seed} value
    becomes `seed.<stream>` fields, and fields that are neither numbers nor strings are left out."""
    hp, final = {}, {}
    for name, value in record.items():
        if isinstance(value, dict):
            hp.update({f"{name}.{k}": v for k, v in value.items() if isinstance(v, (bool, int, float, str))})
        elif is_metric(name, history):
            if _number(value):
                final[name] = value
        elif isinstance(value, (bool, int, float, str)):
            hp[name] = value
    return hp, final


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_names(hps: list[dict]) -> list[str]:
    """A name per run: the hyperparameters whose values differ between runs, then the seed
    ("l2=0.0001,seed=1"); `run<i>` when that says nothing, and `,run=<i>` added to a repeated name."""
    keys = list(dict.fromkeys(k for hp in hps for k in hp))
    varying = [k for k in keys if k != "seed" and len({repr(hp.get(k)) for hp in hps}) > 1]
    names, used = [], set()
    for i, hp in enumerate(hps):
        name = ",".join(f"{k}={_text(hp[k])}" for k in [*varying, "seed"] if k in hp) or f"run{i}"
        name = name.replace("/", "_").replace(" ", "_")
        if name in used:
            name = f"{name},run={i}"
        used.add(name)
        names.append(name)
    return names


def _scalar(value: Any) -> float:
    return math.nan if value is None else float(value)


def write(run_dir: pathlib.Path, metrics: dict) -> dict[str, int]:
    """Write the event files of `metrics` (a metrics.json) into `run_dir/tensorboard`, replacing any
    there; returns how many TensorBoard runs and scalars it wrote."""
    history = per_run_history(metrics)
    records = [r for r in metrics.get("runs") or [] if isinstance(r, dict)] if isinstance(metrics.get("runs"), list) else []
    n_runs = len(records) or len(next(iter(history.values()), []))
    root = pathlib.Path(run_dir) / DIR
    shutil.rmtree(root, ignore_errors=True)
    if not n_runs:
        return {"runs": 0, "scalars": 0}
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary
    from tensorboardX.summary import hparams as hparams_summaries

    def event(step: int, values: dict[str, Any]) -> Event:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=_scalar(v)) for tag, v in values.items()])
        return Event(wall_time=time.time(), step=step, summary=summary)

    split = [split_record(r, history) for r in records] or [({}, {})] * n_runs
    scalars = 0
    for i, (name, (hp, final)) in enumerate(zip(run_names([hp for hp, _ in split]), split, strict=True)):
        (root / name).mkdir(parents=True)
        # One synchronous writer per run and one event per epoch holding every metric of that
        # epoch: tensorboardX's SummaryWriter queues each scalar to a thread and fsyncs per flush.
        writer = EventsWriter(str(root / name / "events"))
        if hp:
            _, start, end = hparams_summaries(hp, {})
            writer.write_event(Event(wall_time=time.time(), summary=start))
        steps = max((len(runs[i]) for runs in history.values()), default=0)
        for epoch in range(1, steps + 1):
            values = {f"{EPOCH}{metric}": runs[i][epoch - 1] for metric, runs in history.items() if len(runs[i]) >= epoch}
            writer.write_event(event(epoch, values))
            scalars += len(values)
        if final:
            writer.write_event(event(max(steps, 1), {f"{FINAL}{metric}": v for metric, v in final.items()}))
            scalars += len(final)
        if hp:
            writer.write_event(Event(wall_time=time.time(), summary=end))
        writer.close()
    return {"runs": n_runs, "scalars": scalars}
