"""Every registered experiment end to end on tiny synthetic data (`synthetic_mnist`): its command
runs in-process, writes metrics.json with finite numbers, its figures and its REPORT section; and
`reproduce` runs two stages into one REPORT.md. The experiments come from the registry
(`configs/`), so a new config is tested here by itself."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest
from conftest import JOB_CHECKS_EVERY_STAGE, covered_by_the_job
from test_evaluate import evaluate_each_declared
from test_reproduce import numeric_leaves

from experiments import reproduce
from mnist_jax import preflight, registry, trained, training
from mnist_jax.config import load_config_file, parse_args
from mnist_jax.sweep import num_runs

PNG = b"\x89PNG\r\n\x1a\n"

# Overrides that shrink a config to a smoke test of its wiring; each applies to a config that has
# the field, and only where it lowers the config's value.
SHRINK = {
    "seeds": 2, "epochs": 1, "batch_size": 64, "n_val": 100, "train_images": 0,
    "denoiser_epochs": 1, "map_epochs": 1, "classifier.epochs": 1, "classifier.batch_size": 64,
    "denoiser.batch_size": 64, "iwae_k": 4, "iwae_images": 20, "iwae_batch": 10, "n_samples": 100,
    "test_resamples": 20,
}
FLOOR = {"variance_sources": {"seeds": 3}}  # a spread and its CI need 3 runs per source
# Configs whose wiring is tested on part of what they train, by config file: the CNN's
# variance_sources trains its runs one at a time on a CPU, so its test trains the one source that
# only a model with dropout has, beside `all`, which every source is measured against.
PART = {"variance_sources_cnn": ["--config.sources=('dropout', 'all')"]}
# Lists of candidates cut to their first values (a program each): the search still trains a new
# candidate after its first round (dense 16) and reuses the runs it has (dense 0, dropout 0.5).
CANDIDATES = {"filters_candidates": 1, "dense_candidates": 2, "dropout_rates": 1}
RESUMED_IN_JOB = "mlp"  # the stage test_reproduce resumes from its oldest checkpoint: it trains several epochs
SEED_GRIDS = ("experiments.mlp", "experiments.cnn", "experiments.sweep")  # classifier grids with an ensemble of seeds
TRAINED = [e for e in registry.experiments() if e.entry != "experiments.reproduce"]


def by_tier(experiments: list[registry.Experiment]) -> list:
    """The first config of each experiment module (its `ENTRY`, in registry order) in the fast
    tier, so every experiment's run() is wired end to end there; another config of the same
    module (another size, model or sweep of the same code) in the slower one, as `slow`, unless it
    is a stage of the job: `test_reproduce` runs and checks every stage's quick profile. A stage's
    test here is marked `in_the_job`: a session that also runs the job's check of every stage
    leaves it out (conftest), since the job trains that stage and checks its outputs as this does."""
    firsts = first_of_each_module(experiments)
    out = []
    for e in experiments:
        if e in firsts:
            out.append(pytest.param(e, marks=pytest.mark.in_the_job) if e.order is not None else e)
        elif e.order is None:
            out.append(pytest.param(e, marks=pytest.mark.slow))
    return out


def first_of_each_module(experiments: list[registry.Experiment]) -> list[registry.Experiment]:
    """The first config of each experiment module, in registry order."""
    seen, out = set(), []
    for e in experiments:
        if e.entry not in seen:
            out.append(e)
        seen.add(e.entry)
    return out
NO_MODEL = {"cnn_search"}  # keeps only its statistics: evaluate says so (test_evaluate)


@pytest.fixture(scope="module", autouse=True)
def drop_compiled_programs():
    """The programs here check wiring on a few hundred images (compiled with light optimization,
    conftest `light_compiles`): they are dropped from JAX's caches afterwards."""
    yield
    jax.clear_caches()


def get(config, dotted: str):
    """config.<dotted>, or None when the config has no such field."""
    node = config
    for name in dotted.split("."):
        if not hasattr(node, "keys") or name not in node:
            return None
        node = node[name]
    return node


def config_arg(e: registry.Experiment) -> str:
    """The experiment's quick profile, or its file when its get_config takes no profile."""
    return e.config_arg_at("quick")


def shrink_overrides(e: registry.Experiment, job: bool = False) -> list[str]:
    """The `--config.F=V` lines that shrink the experiment's quick profile by SHRINK (and its FLOOR)
    and cut its CANDIDATES. For the `job` (test_reproduce), every list of candidates stays the
    profile's, and so do the epochs of the stage it resumes from an earlier checkpoint
    (RESUMED_IN_JOB). Epochs do not enter a compiled program (it trains `chunk_epochs` at a time),
    so both compile the same programs, as far as their candidates are the same, and one loads them
    from the persistent compilation cache once the other has built them."""
    config = load_config_file(config_arg(e))
    shrink = {**SHRINK, **FLOOR.get(e.name, {})}
    keep_epochs = job and e.name == RESUMED_IN_JOB
    values = {k: (get(config, k), v) for k, v in shrink.items() if not (keep_epochs and k.endswith("epochs"))}
    out = [f"--config.{k}={v}" for k, (now, v) in values.items()
           if isinstance(now, (int, float)) and not isinstance(now, bool) and v < now]
    lists = {} if job else {k: (list(get(config, k)), n) for k, n in CANDIDATES.items() if get(config, k) is not None}
    return [*out, *(f"--config.{k}={now[:n]}" for k, (now, n) in lists.items() if n < len(now))]


def shrunk_args(e: registry.Experiment, workdir) -> list[str]:
    return ["--workdir", str(workdir), "--config", config_arg(e), *shrink_overrides(e), *PART.get(e.config.stem, [])]


def shrink_stages(mp: pytest.MonkeyPatch, job: bool = False) -> None:
    """Every stage a job runs at the quick profile (`reproduce.stage_args`, in this process and in the
    stage processes it starts) shrunk by `shrink_overrides(stage, job)`."""
    real = reproduce.stage_args

    def stage_args(stage: registry.Experiment, profile: str, workdir) -> list[str]:
        return [*real(stage, profile, workdir), *(shrink_overrides(stage, job) if profile == "quick" else [])]

    mp.setattr(reproduce, "stage_args", stage_args)


def check_outputs(e: registry.Experiment, workdir, config, grids: list[int], folder=None) -> None:
    """What every experiment's run writes, checked in its workdir: the grid its preflight counted
    (`grids`: the runs of every grid it trained), metrics.json with finite numbers, its figures and
    its REPORT section, the seeds beyond their mean for a grid of seeds, the stability of the
    choice for a swept grid and, given a `folder` to write in, every model it declares applied."""
    assert max(grids) == preflight.planned_runs(config, e.module().run)  # the preflight counts exactly
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["experiment"] == e.name
    assert metrics["runs"], "metrics.json has no runs"
    for r in metrics["runs"]:
        if not r.get("diverged"):
            assert all(math.isfinite(v) for v in numeric_leaves(r)), r
    pngs = sorted(workdir.glob("*.png"))
    assert pngs, "no figure written"
    for png in pngs:
        assert png.read_bytes()[:8] == PNG, png
    text = e.module().section(metrics)
    assert isinstance(text, str) and text.strip()
    if e.name in NO_MODEL:
        assert not trained.declarations(workdir)
    elif folder is not None:  # evaluate applies every model it saves
        evaluate_each_declared(workdir, folder)
    if e.entry in SEED_GRIDS and config.seeds >= 2:  # the seeds beyond their mean, evaluated after training
        assert {"ensemble", "flips"} <= set(metrics) and metrics["ensemble"]["by_size"][-1]["k"] == config.seeds
        assert {"ensemble.png", "unstable_digits.png"} <= {p.name for p in pngs}
        assert "Which test images flip" in text
    if len(metrics.get("per_value", [])) > 1:  # a swept grid: how stable the choice on validation is
        assert sum(p["p_chosen"] for p in metrics["selection"]["points"]) == pytest.approx(1.0)
        assert "of resamples" in text


@pytest.mark.parametrize("e", by_tier(TRAINED), ids=lambda e: e.config.stem)
def test_experiment_runs_end_to_end_on_synthetic_data(e, synthetic_mnist, tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    args = shrunk_args(e, workdir)
    grids = []  # the runs of every grid the experiment trains (every grid trains through training.train)
    real_train_grid = training.train_grid
    monkeypatch.setattr(training, "train_grid", lambda task, spec, hp, seeds, *a, **k:
                        grids.append(num_runs(seeds)) or real_train_grid(task, spec, hp, seeds, *a, **k))
    assert e.module().main(args) == 0
    _, config = parse_args(args, str(e.config))
    check_outputs(e, workdir, config, grids, tmp_path)


def test_reproduce_runs_its_stages_and_writes_the_report(synthetic_mnist, tmp_path, monkeypatch):
    shrink_stages(monkeypatch)  # each stage shrunk as its own test above shrinks it: the same programs
    # the first two stages tested above in the fast tier, whose programs this test loads from the
    # persistent compilation cache once their own tests have built them (or builds them for those)
    in_the_fast_tier = {e.config for e in first_of_each_module(TRAINED)}
    stages = [s.name for s in registry.stages() if s.config in in_the_fast_tier][:2]
    assert reproduce.main(["--workdir", str(tmp_path), f"--config.only={','.join(stages)}"]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["stages"]) == stages
    for name in stages:
        assert metrics["stages"][name]["status"] == "ran"
        assert (tmp_path / name / "metrics.json").exists()
        section = registry.stage(name).module().section(json.loads((tmp_path / name / "metrics.json").read_text()))
        assert section.strip() and section.strip() in report


# A pytest plugin that reports every test passed without running it or its fixtures: a session's
# selection, made on pytest-xdist's workers as in `.ci/run`, seen in seconds.
NOT_RUN = """
import pytest
from _pytest.reports import TestReport


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    item.ihook.pytest_runtest_logreport(report=TestReport(item.nodeid, item.location, {}, "passed", None, "call", []))
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
"""


@pytest.mark.slow
def test_a_session_with_the_job_leaves_out_the_stage_tests_it_covers(tmp_path):
    """Under pytest-xdist, as `.ci/run` runs the suite, a session with the job's test beside
    test_experiments' deselects exactly the stage tests (`in_the_job`)."""
    (tmp_path / "not_run.py").write_text(NOT_RUN)
    every = {getattr(p, "values", (p,))[0].config.stem for p in by_tier(TRAINED)}  # a pytest.param or a config
    stages = {e.config.stem for e in first_of_each_module(TRAINED) if e.order is not None}
    assert stages and stages < every
    tests = pathlib.Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "not_run",
                           "-n", "1", str(tests / "test_experiments.py"), str(tests / "test_reproduce.py")],
                          cwd=tests.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ran = set(re.findall(r"^PASSED \S+::test_experiment_runs_end_to_end_on_synthetic_data\[(\w+)\]",
                         done.stdout, re.MULTILINE))
    assert ran == every - stages, (ran, every, stages)


def test_a_session_without_the_job_leaves_out_no_stage_test():
    """The choice itself (`covered_by_the_job`), on items with a test's file, name and marks."""
    class Item:
        def __init__(self, file, name, *marks):
            self.path, self.name, self.marks = pathlib.Path("tests", file), name, marks

        def get_closest_marker(self, mark):
            return mark if mark in self.marks else None

    stage, other = Item("test_experiments.py", "t[mlp]", "in_the_job"), Item("test_experiments.py", "t[cnn_small]")
    job = Item(*JOB_CHECKS_EVERY_STAGE, "integration")
    assert covered_by_the_job([stage, other]) == []
    assert covered_by_the_job([stage, other, job]) == [stage]
    assert covered_by_the_job([other, job]) == []
