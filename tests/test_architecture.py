"""The harness's promises: tasks declare what they read, regularizers are hooks, the execution
policy follows the model, experiments are registered once and never import each other."""

import ast
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models, registry, regularizers, sweep, tasks, train, trained, training
from mnist_jax.config import ConfigError, load_config_file

REPO = pathlib.Path(__file__).resolve().parent.parent
SPEC = train.TrainSpec(epochs=1, batch_size=64)


def test_an_unknown_hyperparameter_is_a_clear_error(tiny):
    task = tasks.classifier_task(models.MLP((8,))).with_hooks(regularizers.L2)
    hp, seeds = sweep.grid([0], learning_rate=[0.1], L2=[1e-4])  # a typo: "L2" for "l2"
    with pytest.raises(train.HParamError, match=r"unknown \['L2'\].*missing \['l2'\].*\['learning_rate', 'l2'\]"):
        sweep.train_grid(task, SPEC, hp, seeds, tiny)
    with pytest.raises(train.HParamError, match=r"unknown \['l2'\]"):  # no L2 hook: l2 would be ignored
        train.run(tasks.classifier_task(models.MLP((8,))), SPEC, {"learning_rate": 0.1, "l2": 0.0}, 0, tiny)


def test_a_missing_hyperparameter_is_an_error_not_a_default(tiny):
    task = tasks.classifier_task(models.MLP((8,), dropout=True))
    with pytest.raises(train.HParamError, match=r"missing \['dropout_rate', 'input_dropout_rate'\]"):
        train.run(task, SPEC, {"learning_rate": 0.1}, 0, tiny)
    momentum = train.TrainSpec(epochs=1, batch_size=64, optimizer="momentum")
    with pytest.raises(train.HParamError, match=r"missing \['momentum'\]"):  # was a silent 0.9
        train.run(tasks.classifier_task(models.MLP((8,))), momentum, {"learning_rate": 0.1}, 0, tiny)


def test_a_config_without_a_field_the_task_reads_is_a_config_error():
    config = load_config_file(REPO / "configs/mlp.py")
    task = tasks.classifier_task(models.MLP((8,), dropout=True))
    with pytest.raises(ConfigError, match="config.dropout_rate is missing"):
        training.hparams(config, task)
    with pytest.raises(ConfigError, match=r"swept hyperparameters \['noise_level'\] are not read"):
        training.hparams(config, tasks.classifier_task(models.MLP((8,))), noise_level=[0.1])


@pytest.mark.slow
def test_a_new_penalty_is_a_hook_not_an_edit_of_the_train_step(tiny):
    # an L1 penalty nobody wrote into train.py: its strength is traced, so two strengths vmap together
    l1 = train.Penalty("l1", lambda params, factor: factor * sum(jnp.abs(k).sum() for k in models_kernels(params)))
    task = tasks.classifier_task(models.MLP((8,))).with_hooks(l1)
    hp, seeds = sweep.grid([0], learning_rate=[0.1], l1=[0.0, 0.05])
    result = sweep.train_grid(task, SPEC, hp, seeds, tiny)
    w = [np.abs(np.asarray(result.state.params["params"]["Dense_0"]["kernel"][r])).sum() for r in (0, 1)]
    assert w[1] < 0.8 * w[0]  # the penalty shrank the weights
    plain = sweep.train_grid(tasks.classifier_task(models.MLP((8,))), SPEC, *sweep.grid([0], learning_rate=[0.1]), tiny)
    np.testing.assert_array_equal(plain.history["loss"][0], result.history["loss"][0])  # factor 0: the same run


def models_kernels(params):
    from mnist_jax import losses

    return losses.kernels(params)


def test_max_norm_is_a_constraint_hook(tiny):
    task = tasks.classifier_task(models.MLP((8,))).with_hooks(regularizers.MAX_NORM)
    hp, seeds = sweep.grid([0], learning_rate=[0.5], max_norm=[0.5])
    kernel = np.asarray(sweep.train_grid(task, SPEC, hp, seeds, tiny).state.params["params"]["Dense_0"]["kernel"][0])
    assert np.linalg.norm(kernel, axis=0).max() <= 0.5 + 1e-5


def test_the_run_chunk_follows_the_model():
    assert sweep.default_run_chunk(tasks.classifier_task(models.CNN()), "cpu") == 1
    assert sweep.default_run_chunk(tasks.classifier_task(models.CNN()), "gpu") is None
    assert sweep.default_run_chunk(tasks.classifier_task(models.MLP()), "cpu") is None
    assert sweep.default_run_chunk(tasks.vae_task(models.VAE(conv=True)), "cpu") == 1
    assert sweep.default_run_chunk(tasks.denoise_task(models.DenoisingAutoencoder()), "cpu") is None


def imports_of(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.py")), ids=lambda p: p.name)
def test_no_experiment_imports_another(path):
    others = {f"experiments.{p.stem}" for p in (REPO / "experiments").glob("*.py") if p.stem != "__init__"}
    assert not imports_of(path) & others, "shared code belongs in mnist_jax"
    assert "experiments" not in imports_of(path)


def test_every_config_is_registered_and_every_stage_sizes_its_quick_profile():
    found = registry.experiments()
    assert {e.config.name for e in found} == {p.name for p in (REPO / "configs").glob("*.py")} - {"__init__.py", "base.py"}
    stages = registry.stages()
    declared = [p for p in (REPO / "configs").glob("*.py") if "\nREPRODUCE_ORDER = " in p.read_text()]
    assert [s.name for s in stages][:3] == ["mlp", "l2_sweep", "dropout_sweep"] and len(stages) == len(declared)
    for stage in stages:
        full, quick = load_config_file(stage.config_arg("full")), load_config_file(stage.config_arg("quick"))
        assert full.experiment == quick.experiment == stage.name
        assert quick.epochs <= full.epochs and quick.seeds <= full.seeds and quick != full, stage.name
        assert stage.entry in registry.entries_of(stage.name)
    with pytest.raises(ConfigError, match="raised ValueError: profile 'huge'"):
        load_config_file(f"{REPO}/configs/mlp.py:huge")


@pytest.mark.slow  # two grids compared
def test_label_smoothing_is_a_traced_hyperparameter_of_the_task(tiny):
    plain = tasks.classifier_task(models.MLP((8,)))
    smooth = tasks.classifier_task(models.MLP((8,)), label_smoothing=True)
    assert "label_smoothing" in smooth.hparams and "label_smoothing" not in plain.hparams
    hp, seeds = sweep.grid([0], learning_rate=[0.1], label_smoothing=[0.0, 0.3])
    result = sweep.train_grid(smooth, SPEC, hp, seeds, tiny)
    base = sweep.train_grid(plain, SPEC, *sweep.grid([0], learning_rate=[0.1]), tiny)
    np.testing.assert_allclose(result.history["loss"][0], base.history["loss"][0], rtol=1e-5)  # s = 0: plain CE
    assert result.history["loss"][1, 0] > result.history["loss"][0, 0] + 0.05  # smoothed targets cost more


@pytest.mark.integration
def test_label_smoothing_sweep_runs_from_its_config_and_reports_itself(tmp_path):
    from experiments import sweep as sweep_experiment
    from mnist_jax import report

    assert sweep_experiment.main(["--workdir", str(tmp_path), "--config", f"{REPO}/configs/label_smoothing.py:quick",
                          "--config.epochs=1", "--config.model.hidden=[32]"]) == 0
    m = trained.read_json(tmp_path / "metrics.json")
    c = trained.read_json(tmp_path / "config.json")
    assert m["sweep_field"] == "label_smoothing" and m["label_smoothing_values"] == [0.0, 0.1]
    assert sorted({r["label_smoothing"] for r in m["runs"]}) == pytest.approx([0.0, 0.1]) and len(m["runs"]) == 4
    assert all(0.8 < r["test_accuracy"] < 1.0 for r in m["runs"])
    text = report.section("label_smoothing", m)
    assert "a sweep of the label smoothing" in text and "| label_smoothing |" in text
    assert "label smoothing sweep (2 values x 2 seeds)" in report.row("label_smoothing", m, c)[0]
    assert (tmp_path / "label_smoothing.png").stat().st_size > 0
