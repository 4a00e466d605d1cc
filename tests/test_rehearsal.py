"""The rehearsal before training (`cli.rehearse`, `mnist_jax.rehearsal`): an experiment's whole
run with stand-in programs (traced, never compiled), then its metrics.json, REPORT section and
README row, so whatever cannot be rendered for a config fails before anything trains."""

from __future__ import annotations

import pathlib
import re
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from test_experiments import shrink_stages
from test_extension import TINY_MLP, config_file, one_line_error, write

from experiments import mlp, reproduce
from mnist_jax import cli, registry, rehearsal, sweep, tasks, training
from mnist_jax.config import parse_args
from mnist_jax.workdir import Workdir

# A researcher's model whose description is LaTeX that matplotlib cannot parse: every figure
# title that names the model fails to draw.
LATEX_MLP = TINY_MLP.replace("class TinyMLP(nn.Module):\n    width: int = 16\n", '''class TinyMLP(nn.Module):
    width: int = 16

    def describe(self) -> str:
        return "tiny MLP, width $2^{4$"
''')


@pytest.fixture
def rehearsing(monkeypatch):
    """Commands rehearse, as they do outside the test suite (conftest turns it off elsewhere)."""
    monkeypatch.setenv(cli.REHEARSAL_ENV, "1")
    monkeypatch.setattr(cli, "_rehearsed", set())


@pytest.fixture
def latex_model_config(tmp_path, monkeypatch) -> Iterator[str]:
    """A config of experiments.mlp whose model is LATEX_MLP, from a module outside the repository
    (imported in this process, and forgotten after the test: a module from outside the repository
    joins the code id of every later run in the process)."""
    research = tmp_path / "research"
    research.mkdir()
    write(research, "latexmodel.py", LATEX_MLP)
    monkeypatch.syspath_prepend(str(research))
    yield config_file(research, "mlp", '''
        c.model = ml_collections.ConfigDict({"kind": "latexmodel:TinyMLP"})
        c.seeds = 2
        c.epochs = 1
    ''')
    sys.modules.pop("latexmodel", None)


def test_a_figure_that_cannot_be_drawn_stops_the_run_before_it_trains(tmp_path, monkeypatch, synthetic_mnist, capsys,
                                                                     rehearsing, latex_model_config):
    config = latex_model_config
    work = tmp_path / "w"
    err = one_line_error(mlp.main, ["--workdir", str(work), "--config", config], capsys)
    assert "fails in its rehearsal, before anything trains (ValueError" in err
    assert "at plots.py:" in err and ", from mlp.py:" in err  # where: a figure of the experiment's run
    assert not work.exists()  # nothing trained, nothing written

    # Without the rehearsal the same command trains, then fails at the figure: the workdir keeps
    # only the checkpoint it trained, and no result.
    monkeypatch.setenv(cli.REHEARSAL_ENV, "0")
    with pytest.raises(ValueError):
        mlp.main(["--workdir", str(work), "--config", config])
    assert list(work.glob("**/checkpoints/train/*/*")) and not (work / "metrics.json").exists()


def test_a_section_that_cannot_be_rendered_stops_the_job_before_its_first_stage(tmp_path, monkeypatch, synthetic_mnist,
                                                                                capsys, rehearsing):
    """The job rehearses every stage and its REPORT.md before the first stage trains: a section
    that fails for the last stage stops it with one line, and no stage has trained."""
    first, last = (s.name for s in registry.stages()[:2])

    def broken(m):
        raise KeyError("test_accuracy")

    monkeypatch.setattr(registry.stage(last).module(), "section", broken)
    err = one_line_error(reproduce.main, ["--workdir", str(tmp_path / "job"), f"--config.only={first},{last}"], capsys)
    assert "fails in its rehearsal" in err and "KeyError" in err and "in broken" in err
    assert not (tmp_path / "job").exists()


def test_a_stage_that_is_complete_brings_its_own_metrics_to_the_jobs_rehearsal(tmp_path, synthetic_mnist, rehearsing,
                                                                               monkeypatch):
    first = registry.stages()[0]
    shrink_stages(monkeypatch)  # the programs of test_experiments' test of that stage
    assert reproduce.main(["--workdir", str(tmp_path), f"--config.only={first.name}"]) == 0
    rehearsed = []
    monkeypatch.setattr(cli, "rehearse", lambda run, config, **kw: rehearsed.append(run.__module__))
    _, config = parse_args(["--workdir", str(tmp_path), f"--config.only={first.name}"], "configs/reproduce.py")
    reproduce.rehearse(config, tmp_path)
    assert rehearsed == []  # complete: its metrics.json went into the report's rehearsal as it is
    config.force = True
    reproduce.rehearse(config, tmp_path)
    assert rehearsed == [first.entry]


def test_a_rehearsal_opens_no_workdir_and_its_stand_ins_never_serve_a_real_call(tmp_path, tiny):
    with rehearsal.rehearsing(), pytest.raises(RuntimeError, match="rehearsal tried to open the workdir"):
        Workdir.open(tmp_path / "w", "mlp")
    assert not (tmp_path / "w").exists()

    _, config = parse_args(["--workdir", str(tmp_path), "--config", "configs/mlp.py:quick", "--config.epochs=1",
                            "--config.seeds=2"], "")
    _, task = tasks.classifier_from_config(config)
    hp, seeds = training.swept_grid(config, task)
    spec = training.train_spec(config)
    trainer = sweep.GridTrainer(task, spec)
    with rehearsal.rehearsing():
        stand_in = sweep.train_grid(task, spec, hp, seeds, tiny, trainer=trainer)
    real = sweep.train_grid(task, spec, hp, seeds, tiny, trainer=trainer)
    fresh = sweep.train_grid(task, spec, hp, seeds, tiny)
    np.testing.assert_array_equal(real.history["loss"], fresh.history["loss"])
    assert not np.array_equal(stand_in.history["loss"], real.history["loss"])


@pytest.mark.integration
def test_the_full_job_rehearses_every_stage_and_its_report(rehearsing):
    """Every stage of the full profile, rehearsed on the real MNIST's shapes, then REPORT.md from
    their stand-in metrics: nothing of the job fails after hours of training (the quick profile
    trains for real in test_reproduce)."""
    _, config = parse_args(["--workdir", "unused", "--config.profile=full"], "configs/reproduce.py")
    reproduce.rehearse(config)


VARIANTS = [e for e in registry.experiments() if e.order is None and e.entry != "experiments.reproduce"]


@pytest.mark.integration
@pytest.mark.parametrize("e", VARIANTS, ids=[e.config.stem for e in VARIANTS])
def test_every_registered_config_outside_the_job_rehearses(e, rehearsing):
    _, config = parse_args(["--workdir", "unused", "--config", str(e.config)], "")
    cli.rehearse(e.module().run, config)
    assert [module for module, _ in cli._rehearsed] == [e.entry]  # it ran (and a second call would not)


def test_every_program_is_built_so_that_it_can_stand_in():
    """A program built with jax.jit itself would compile and run inside a rehearsal: every program
    of the library and the experiments is built with `rehearsal.jit`, but GridTrainer's training
    programs, which are stand-ins while rehearsing."""
    root = pathlib.Path(__file__).resolve().parent.parent
    built_by_hand = []
    for path in sorted([*root.glob("mnist_jax/*.py"), *root.glob("experiments/*.py")]):
        if path.name == "rehearsal.py":  # where rehearsal.jit is built
            continue
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            if re.search(r"\bjax\.jit\b|from jax import .*\bjit\b|\bpjit\b", code) and "`" not in code:
                built_by_hand.append(f"{path.relative_to(root)}: {line.strip()}")
    assert built_by_hand == ["mnist_jax/sweep.py: jitted = jax.jit(fn, in_shardings=in_shardings, "
                             "out_shardings=self.run_sharding, donate_argnums=donate)"]
