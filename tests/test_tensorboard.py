"""TensorBoard event files of every run, read back with TensorBoard's own reader, and the listing
of the experiments (`python -m experiments`).

The runs train on tiny synthetic data (`tests/synthetic.py` in place of MNIST)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import types

import pytest

from mnist_jax import registry, training
from mnist_jax import tensorboard as tb
from mnist_jax.config import REPO_ROOT
from tests.synthetic import synthetic_splits

# TensorBoard's reader imports TensorFlow when it finds it, for nothing it needs here: this empty
# module is the switch that makes it use its own stub (`tensorboard.compat.tf`).
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")

SWEEP = ["--config.sweep.learning_rate=[0.05,0.1]", "--config.seeds=2", "--config.epochs=2", "--config.batch_size=64"]


@pytest.fixture
def synthetic(monkeypatch):
    """Every experiment trains on tiny synthetic digits instead of MNIST."""
    monkeypatch.setattr(training, "load_data", lambda config: (synthetic_splits(), 0.0))


def run_mlp(workdir: pathlib.Path, *extra: str) -> dict:
    from experiments import mlp

    assert mlp.main(["--workdir", str(workdir), *SWEEP, *extra]) == 0
    return json.loads((workdir / "metrics.json").read_text())


def read_runs(workdir: pathlib.Path) -> dict[str, event_accumulator.EventAccumulator]:
    """{run name: its loaded EventAccumulator} of the workdir's TensorBoard runs."""
    out = {}
    for run in sorted((workdir / tb.DIR).iterdir()):
        acc = event_accumulator.EventAccumulator(str(run), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        out[run.name] = acc
    return out


def scalars(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def session_hparams(acc) -> dict:
    """The hyperparameters of the run's HParams session-start summary."""
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return {k: v.number_value if v.HasField("number_value") else v.string_value
            for k, v in data.session_start_info.hparams.items()}


@pytest.mark.slow
def test_a_sweep_writes_one_tensorboard_run_per_run_with_its_history_and_hparams(tmp_path, synthetic):
    w = tmp_path / "w"
    m = run_mlp(w)
    runs = read_runs(w)
    assert len(runs) == 4 == len(m["runs"])
    history = tb.per_run_history(m)
    assert {"loss", "train_accuracy", "test_accuracy"} <= set(history)
    seen = set()
    for name, acc in runs.items():
        hp = session_hparams(acc)
        assert {"learning_rate", "seed"} <= set(hp)
        i = next(i for i, r in enumerate(m["runs"]) if r["seed"] == hp["seed"]
                 and r["learning_rate"] == pytest.approx(hp["learning_rate"]))
        seen.add(i)
        assert name == f"learning_rate={m['runs'][i]['learning_rate']:g},seed={m['runs'][i]['seed']}"
        got = scalars(acc)
        for metric, values in history.items():
            assert [s for s, _ in got[f"epoch/{metric}"]] == [1, 2]  # one scalar per epoch
            assert [v for _, v in got[f"epoch/{metric}"]] == pytest.approx([float(x) for x in values[i]], rel=1e-6)
        assert got["final/test_accuracy"] == [(2, pytest.approx(m["runs"][i]["test_accuracy"], rel=1e-6))]
        status = plugin_data_pb2.HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_end_info"])
        assert status.session_end_info.status == 1  # STATUS_SUCCESS
    assert seen == {0, 1, 2, 3}


@pytest.mark.slow
def test_the_config_field_turns_tensorboard_off(tmp_path, synthetic):
    w = tmp_path / "w"
    run_mlp(w, "--config.tensorboard=False")
    assert (w / "metrics.json").exists() and not (w / tb.DIR).exists()


def test_a_run_without_runs_or_history_writes_nothing(tmp_path):
    assert tb.write(tmp_path, {"experiment": "reproduce", "stages": {}}) == {"runs": 0, "scalars": 0}
    assert not (tmp_path / tb.DIR).exists()


def test_runs_without_history_get_their_final_metrics_and_hparams(tmp_path):
    m = {"runs": [{"curve": c, "noise_level": lv, "seed": 0, "test_accuracy": a, "diverged": False}
                  for c, lv, a in [("noisy", 0.1, 0.9), ("noisy", 0.5, 0.7), ("denoised", 0.5, 0.8)]]}
    assert tb.write(tmp_path, m) == {"runs": 3, "scalars": 6}
    runs = {p.name for p in (tmp_path / tb.DIR).iterdir()}
    assert runs == {"curve=noisy,noise_level=0.1,seed=0", "curve=noisy,noise_level=0.5,seed=0",
                    "curve=denoised,noise_level=0.5,seed=0"}


KILLED_AT_EVENT = textwrap.dedent("""
    import os, signal, sys
    from tensorboardX import event_file_writer
    from experiments import mlp
    from mnist_jax import training
    from tests.synthetic import synthetic_splits

    training.load_data = lambda config: (synthetic_splits(), 0.0)
    written = [0]
    write_event = event_file_writer.EventsWriter.write_event

    def write_then_die(self, event):
        write_event(self, event)
        self.flush()
        written[0] += 1
        if written[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

    event_file_writer.EventsWriter.write_event = write_then_die
    sys.exit(mlp.main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_a_run_killed_while_writing_event_files_leaves_none_and_its_rerun_matches(tmp_path, synthetic):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    # SIGKILL in the middle of the event files of the second of the four runs (after 6 events)
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_EVENT, "6", "--workdir", str(killed), *SWEEP],
                          capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    events = [p for p in killed.rglob("events.out.tfevents.*")]
    assert events, "the kill came before any event file was written"
    assert all(workdir_meta(killed) in p.parents for p in events)
    assert not (killed / tb.DIR).exists() and not (killed / "metrics.json").exists()

    run_mlp(killed)
    run_mlp(straight)
    a, b = read_runs(killed), read_runs(straight)
    assert sorted(a) == sorted(b) and len(a) == 4
    for name in a:
        assert scalars(a[name]) == scalars(b[name])
        assert session_hparams(a[name]) == session_hparams(b[name])
    assert not list((killed / ".mnist_jax").rglob("events.out.tfevents.*"))
    assert len(list(killed.rglob("events.out.tfevents.*"))) == 4  # the killed attempt's files are gone


def workdir_meta(workdir: pathlib.Path) -> pathlib.Path:
    return workdir / ".mnist_jax"


@pytest.mark.slow
def test_python_m_experiments_lists_every_registered_experiment():
    out = subprocess.run([sys.executable, "-m", "experiments"], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT).stdout
    for exp in registry.experiments():
        rel = exp.config.relative_to(REPO_ROOT)
        assert f"{exp.name}  (python -m {exp.entry}" in out
        assert f"--config {rel}\n" in out
    assert "--config configs/mlp.py:quick" in out
    assert "The dense classifier of the study's section 2" in out  # its module docstring's first line
    assert out.count("full:  --config") == len(registry.experiments())


def test_the_writer_benchmark_times_a_metrics_json(tmp_path, capsys):
    from benchmarks import tensorboard_writer

    m = {"runs": [{"l2": 0.0, "seed": s, "test_accuracy": 0.9} for s in (0, 1)], "history": {"loss": [[1.0, 0.5], [1.1, 0.6]]}}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    assert tensorboard_writer.main(["--write", str(tmp_path / "metrics.json")]) == 0
    assert "2 runs, 6 scalars" in capsys.readouterr().out
