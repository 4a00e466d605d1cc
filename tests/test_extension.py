"""A researcher's idea from their own files: a model class in a module outside the package, a
config outside `configs/`, a sweep declared in one line, and no config field silently ignored."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import synthetic

from experiments import cnn, mlp
from experiments import sweep as sweep_experiment
from mnist_jax import models, results, sweep, training

REPO = pathlib.Path(__file__).resolve().parent.parent

RESCNN = '''
import flax.linen as nn
import jax
import jax.numpy as jnp


class ResCNN(nn.Module):
    """Conv -> residual block (two convs, skip) -> max pool -> dropout -> Dense 10."""

    features: int = 8
    vmap_slow_on = ("cpu",)  # flax's convolutions, vmapped over runs, are slow on a CPU: one run per program there

    @nn.compact
    def __call__(self, x, *, train: bool = False, dropout_rate=0.0):
        x = nn.relu(nn.Conv(self.features, (3, 3))(x))
        y = nn.Conv(self.features, (3, 3))(nn.relu(nn.Conv(self.features, (3, 3))(x)))
        x = nn.max_pool(nn.relu(x + y), (2, 2), (2, 2))
        if train:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - dropout_rate, x.shape)
            x = jnp.where(keep, x / (1.0 - dropout_rate), 0.0)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))
'''

TINY_MLP = '''
import flax.linen as nn


class TinyMLP(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1))))
'''


def write(folder: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def config_file(folder: pathlib.Path, base: str, lines: str) -> str:
    """A config file outside the repository that builds on configs/<base>.py's quick profile."""
    body = textwrap.indent(textwrap.dedent(lines).strip(), "    ")
    text = f"import ml_collections\n\nfrom configs import {base}\n\n\ndef get_config():\n" \
           f"    c = {base}.get_config(\"quick\")\n{body}\n    return c\n"
    return str(write(folder, f"{base}_variant.py", text))


def one_line_error(main, argv: list[str], capsys) -> str:
    """The error of a run refused before any data is loaded: exit 2, one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: every refusal here comes before the expensive part."""
    def fail(*a, **k):
        raise AssertionError("data was loaded: the error was not found before the expensive part")
    monkeypatch.setattr(training, "load_data", fail)


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """A folder outside the repository on sys.path, holding the researcher's model module."""
    folder = tmp_path / "research"
    folder.mkdir()
    write(folder, "mymodule.py", RESCNN)
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("mymodule", None)


def test_a_model_from_outside_says_what_it_takes(outside):
    model = models.from_config({"kind": "mymodule:ResCNN", "features": 4})
    assert models.kind_of(model) == "mymodule:ResCNN"
    assert models.traced_hparams(model) == ("dropout_rate",)
    assert models.role(model) == "classifier" and models.vmap_slow_on(model) == ("cpu",)  # its own declaration
    assert models.describe(model) == "mymodule:ResCNN(features=4)"


@pytest.mark.parametrize("kind, message", [("nomodule:X", "cannot import 'nomodule'"),
                                           ("mymodule:Missing", "has no flax module 'Missing'"),
                                           ("resnet", "expected a built-in model")])
def test_a_model_kind_that_cannot_be_found_is_one_line(outside, tmp_path, no_data, capsys, kind, message):
    path = config_file(outside, "cnn", f'c.model = ml_collections.ConfigDict({{"kind": "{kind}"}})')
    assert message in one_line_error(cnn.main, ["--workdir", str(tmp_path / "w"), "--config", path], capsys)


def test_a_model_field_the_class_lacks_is_one_line(outside, tmp_path, no_data, capsys):
    path = config_file(outside, "cnn", 'c.model = ml_collections.ConfigDict({"kind": "mymodule:ResCNN", "width": 3})')
    err = one_line_error(cnn.main, ["--workdir", str(tmp_path / "w"), "--config", path], capsys)
    assert "model.width" in err and "features" in err


def test_dropout_the_mlp_does_not_take_stops_the_run(tmp_path, no_data, capsys):
    path = config_file(tmp_path, "mlp", "c.dropout_rate = 0.5")
    err = one_line_error(mlp.main, ["--workdir", str(tmp_path / "w"), "--config", path], capsys)
    assert "config.dropout_rate is ignored" in err and "no layer that uses it" in err


def test_dropout_of_a_cnn_without_a_dropout_layer_stops_the_run(tmp_path, no_data, capsys):
    err = one_line_error(cnn.main, ["--workdir", str(tmp_path / "w"), "--config.model.pool=[False, False]",
                                    "--config.dropout_rate=0.9"], capsys)
    assert "config.dropout_rate is ignored" in err


def test_a_dropout_rate_the_config_does_not_give_stops_the_run(outside, tmp_path, no_data, capsys):
    path = config_file(outside, "cnn", '''
        c.model = ml_collections.ConfigDict({"kind": "mymodule:ResCNN"})
        del c.dropout_rate
    ''')
    err = one_line_error(cnn.main, ["--workdir", str(tmp_path / "w"), "--config", path], capsys)
    assert "config.dropout_rate is missing" in err


def test_momentum_that_adam_does_not_take_stops_the_run(tmp_path, no_data, capsys):
    err = one_line_error(sweep_experiment.main, ["--workdir", str(tmp_path / "w"), "--config",
                                                 f"{REPO}/configs/dropout_sweep.py:quick", "--config.optimizer=adam"],
                         capsys)
    assert "config.momentum" in err


def test_an_override_of_an_alternative_not_chosen_stops_the_run(tmp_path, no_data, capsys):
    from experiments import noise_accuracy

    err = one_line_error(noise_accuracy.main, ["--workdir", str(tmp_path / "w"), "--config.classifier.cnn.dense=64"],
                         capsys)
    assert "classifier.kind is 'mlp'" in err


def test_a_sweep_of_two_hyperparameters_is_refused_by_the_one_value_sweep(tmp_path, no_data, capsys):
    err = one_line_error(sweep_experiment.main, ["--workdir", str(tmp_path / "w"), "--config.sweep.learning_rate=[0.1]"],
                         capsys)
    assert "exactly one hyperparameter" in err


def test_the_runs_table_holds_the_values_the_config_wrote():
    hp, seeds = sweep.grid([0, 1], l2=[0.0, 1e-4, 3e-5], learning_rate=[0.1])
    history = {"diverged": np.zeros((6, 1), bool), "test_accuracy": np.linspace(0.9, 0.95, 6)[:, None]}
    runs = results.runs_table(hp, seeds, history, ("test_accuracy",))
    assert [r["l2"] for r in runs if r["l2"] == 1e-4] == [1e-4, 1e-4]
    assert {r["learning_rate"] for r in runs} == {0.1}
    points = results.per_value(runs, {"l2": [0.0, 1e-4, 3e-5]}, ("test_accuracy",))
    assert [p["runs"] for p in points] == [2, 2, 2]
    assert points[1]["test_accuracy"]["mean"] == pytest.approx(np.mean(history["test_accuracy"][2:4]))


@pytest.mark.parametrize("name, values, message", [("l2", "[0, 0]", "is given twice"), ("l2", "[]", "non-empty"),
                                                   ("dropout_rate", "[0.5, 1.0]", "expected a number in [0, 1)")])
def test_a_bad_sweep_declaration_is_one_line(tmp_path, no_data, capsys, name, values, message):
    argv = ["--workdir", str(tmp_path / "w"), "--config", f"{REPO}/configs/dropout_sweep.py:quick",
            f"--config.sweep.{name}={values}"]
    assert message in one_line_error(sweep_experiment.main, argv, capsys)


def env_with(folder: pathlib.Path, n_train: int = synthetic.SYNTHETIC_TRAIN) -> dict:
    """This process's environment, with `folder` on PYTHONPATH and `n_train` of the tests'
    synthetic digits in place of MNIST (`tests/synthetic.py`)."""
    env = synthetic.subprocess_env(n_train=n_train)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO), env["PYTHONPATH"]])
    return env


@pytest.mark.slow
def test_a_model_from_outside_trains_its_sweep_with_no_edit_of_the_package(tmp_path):
    """The README's "Extend it": a residual CNN with dropout in a module outside the repository,
    a config outside configs/ sweeping its dropout rate, trained by experiments.cnn."""
    research = tmp_path / "research"
    research.mkdir()
    write(research, "mymodule.py", RESCNN)
    path = config_file(research, "cnn", '''
        c.model = ml_collections.ConfigDict({"kind": "mymodule:ResCNN", "features": 8})
        c.sweep = {"dropout_rate": [0.0, 0.5]}
        c.seeds = 2
        c.epochs = 1
        c.train_images = 256
        c.batch_size = 64
    ''')
    work = tmp_path / "w"
    # compiled with XLA's full optimization: flax's convolutions run for seconds per epoch unoptimized,
    # which costs more here than the optimization does
    env = {k: v for k, v in env_with(research).items() if k != "JAX_DISABLE_MOST_OPTIMIZATIONS"}
    done = subprocess.run([sys.executable, "-m", "experiments.cnn", "--workdir", str(work), "--config", path],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads((work / "metrics.json").read_text())
    assert [(r["dropout_rate"], r["seed"]) for r in m["runs"]] == [(0.0, 0), (0.0, 1), (0.5, 0), (0.5, 1)]
    assert m["architecture"] == "mymodule:ResCNN(features=8)"
    by_seed = {r["seed"]: [] for r in m["runs"]}
    for r, loss in zip(m["runs"], m["history"]["loss"], strict=True):
        by_seed[r["seed"]].append(loss[-1])
    assert all(a != b for a, b in by_seed.values())  # the same seeds, another dropout rate: other numbers
    assert [p["dropout_rate"] for p in m["per_value"]] == [0.0, 0.5] and all(p["runs"] == 2 for p in m["per_value"])
    assert any(p.endswith("mymodule.py") for p in m["provenance"]["outside_code"])
    assert "| dropout_rate |" in cnn.section(m)
    assert "| dropout_rate |" in (work / "REPORT.md").read_text()  # a workdir of its own gets its report


@pytest.mark.slow
def test_an_edited_model_file_is_trained_again_not_resumed(tmp_path):
    research = tmp_path / "research"
    research.mkdir()
    module = write(research, "tinymodel.py", TINY_MLP)
    path = config_file(research, "mlp", '''
        c.model = ml_collections.ConfigDict({"kind": "tinymodel:TinyMLP"})
        c.seeds = 2
        c.epochs = 1
    ''')
    work = tmp_path / "w"

    def train() -> tuple[dict, str]:
        done = subprocess.run([sys.executable, "-m", "experiments.mlp", "--workdir", str(work), "--config", path],
                              cwd=REPO, env=env_with(research), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((work / "metrics.json").read_text()), done.stdout

    first, _ = train()
    again, _ = train()
    assert again["resumed_from_epoch"] == 1  # the same code: its finished checkpoint stands
    module.write_text(module.read_text().replace("width: int = 16", "width: int = 24"))
    edited, out = train()
    assert "other code from outside the repository" in out
    assert edited["resumed_from_epoch"] is None
    assert edited["provenance"]["code_id"] != first["provenance"]["code_id"]
    assert edited["runs"][0]["test_accuracy"] != first["runs"][0]["test_accuracy"]


@pytest.mark.slow
def test_adamw_weight_decay_is_swept_by_one_config_line(tmp_path, synthetic_mnist):
    """A config built on configs/mlp.py sets the optimizer and sweeps one of its arguments: the
    3 values x 2 seeds train in one program, and the runs table and the report name it."""
    path = config_file(tmp_path, "mlp", '''
        c.optimizer = "adamw"
        c.learning_rate = 1e-3
        c.sweep = {"weight_decay": [0.0, 1e-4, 1e-2]}
        c.seeds = 2
        c.epochs = 1
        c.batch_size = 16  # 16 steps on the 256 synthetic images: enough for weight decay to move every loss
    ''')
    assert mlp.main(["--workdir", str(tmp_path / "w"), "--config", path]) == 0
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert [(r["weight_decay"], r["seed"]) for r in m["runs"]] == [(wd, s) for wd in (0.0, 1e-4, 1e-2) for s in (0, 1)]
    assert m["timing"]["runs_per_call"] == 6  # one program trains the whole grid
    losses = [run[-1] for run in m["history"]["loss"]]
    assert len(set(losses)) == 6  # every value trains other numbers (1 epoch: the accuracies may tie)
    assert [p["weight_decay"] for p in m["per_value"]] == [0.0, 1e-4, 1e-2]
    assert "| weight_decay |" in mlp.section(m)



def test_a_dropout_rate_variance_sources_would_not_use_is_refused(tmp_path, no_data, capsys):
    from experiments import variance_sources

    err = one_line_error(variance_sources.main, ["--workdir", str(tmp_path / "w"), "--config.dropout_rate=0.9"], capsys)
    assert "dropout_rate" in err


def test_momentum_given_to_sgd_is_what_sgd_trains_with():
    """The dropout sweep's row says "momentum 0.1" for `--config.optimizer=sgd --config.momentum=0.1`:
    plain SGD reads that momentum as a traced hyperparameter of its runs."""
    from mnist_jax import tasks, train
    from mnist_jax.config import load_config_file

    config = load_config_file(f"{REPO}/configs/dropout_sweep.py:quick")
    config.optimizer, config.momentum = "sgd", 0.1
    spec = training.train_spec(config)
    assert spec.optimizer_args == ("momentum",)
    _, task = tasks.classifier_from_config(config)
    assert training.hparams(config, task, spec)["momentum"] == [0.1]
    assert "momentum" in train.optimizer_hparams(spec)


@pytest.mark.slow
def test_a_trained_grid_gives_each_runs_logits_and_predictions(tiny):
    """TrainedGrid's logits of every run, a few runs at a time, are each run's own logits."""
    import jax

    from mnist_jax import grid, tasks, train

    model = models.MLP((16,))
    hp, seeds = sweep.grid([0, 1, 2], learning_rate=[0.1])
    result = sweep.train_grid(tasks.classifier_task(model), train.TrainSpec(epochs=1, batch_size=64), hp, seeds, tiny)
    trained = grid.TrainedGrid(model, result.state.params, hp, seeds)
    logits = trained.logits(tiny.test_x, runs_at_once=2)
    assert logits.shape == (3, len(tiny.test_y), 10) and trained.runs == 3
    for r in range(3):
        one = np.asarray(tasks.classifier_logits(model, trained.run_params(r), jax.numpy.asarray(tiny.test_x)))
        np.testing.assert_allclose(logits[r], one, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(trained.predictions(tiny.test_x), logits.argmax(-1))
    assert not np.array_equal(logits[0], logits[1])  # other seeds, other runs
