"""The README's promises: it is a short user's guide whose Python blocks and `python -m` commands
run, its two commands are what CI runs, and the docs/ pages it links exist and agree with the code.

The commands run in this process on tiny synthetic data (`training.load_data` is replaced), in a
temporary folder, shrunk to `--config.seeds=2 --config.epochs=1` where the command does not shrink
itself; those that train are integration tests. A command that another test already trains as
written, or that needs the full profile, runs up to its data loading here (parsing, registry,
config fields read, preflight, workdir). The Python blocks train on the real MNIST as written.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import synthetic_splits

from mnist_jax import data as data_lib
from mnist_jax import launch, training

# its module fixture is built once: every test of this file runs on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("test_readme")

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ("performance", "distributed", "guarantees", "variance", "extending")
SECTIONS = ("The two commands", "Results", "Running one experiment", "Sweep your own hyperparameter", "Extend it",
            "Seed variance", "GPUs and several processes", "Layout")
# Words of a lab notebook, not of a user's guide; and instructions that no longer hold.
FORBIDDEN = ("load average", "busy box", "the issue", "experiment.main(", "experiments.l2_sweep", "DESIGN.md")
SHRINK = {"--config.seeds": "2", "--config.epochs": "1"}
# Commands trained as written elsewhere, or too large to train here: run up to their data loading.
TRAINED_ELSEWHERE = {
    "PYTHONPATH=": "tests/test_extension.py::test_a_model_from_outside_trains_its_sweep_with_no_edit_of_the_package",
    "mnist_jax.launch": "tests/test_multiprocess.py (the quick L2 sweep as 2 processes x 2 devices)",
    "--config.profile=full": "the full profile: docs/results/ holds its runs",
    "experiments.variance_sources": "tests/test_variance_sources.py::test_variance_sources_end_to_end (its seeds and "
                                    "epochs, on the real MNIST); the job's test trains its default sources",
}


def readme() -> str:
    return README.read_text()


def without_generated(text: str) -> str:
    """The README without its generated results blocks (tests/test_provenance.py checks those)."""
    return re.sub(r"<!-- results .*?<!-- end of results [^>]*-->", "", text, flags=re.S)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def commands(text: str) -> list[str]:
    """Every `python -m ...` command line of a Markdown text, in its order: in code blocks (a line,
    with its `\\` continuations, from its environment assignments on, after any `&&`) and in inline
    code; templates such as `python -m experiments.<name>` left out."""
    found = []
    in_block = False
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            while line.endswith("\\"):
                line = line[:-1] + next(lines).strip()
            if line.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in line.split(" # ")[0].split("&&") if "python -m " in p]
        else:
            parts = [p.strip() for p in re.findall(r"`([^`]*python -m [^`]*)`", line)]
        found += [p for p in parts if "<" not in p]
    return list(dict.fromkeys(found))


def test_readme_is_a_short_guide_in_its_order():
    text = readme()
    assert len(README.read_bytes()) <= 15_000, "README.md is a user's guide of at most 15 KB; the rest goes to docs/"
    headings = re.findall(r"^## (.+)$", without_generated(text), re.M)
    assert headings == list(SECTIONS)


@pytest.mark.parametrize("path", ["README.md", *(f"docs/{d}.md" for d in DOCS)])
def test_no_paragraph_narrates_or_quotes_an_issue(path):
    text = (ROOT / path).read_text().lower()
    for words in FORBIDDEN:
        assert words.lower() not in text, f"{path} mentions {words!r}"


@pytest.mark.parametrize("page", DOCS)
def test_each_docs_page_exists_and_is_linked_from_the_readme(page):
    assert (ROOT / "docs" / f"{page}.md").is_file()
    assert f"](docs/{page}.md)" in readme()


def test_the_extension_walk_through_is_the_tested_example():
    """docs/extending.md shows the model and config that tests/test_extension.py trains."""
    doc = (ROOT / "docs" / "extending.md").read_text()
    tested = (ROOT / "tests" / "test_extension.py").read_text()
    rescnn = re.search(r"RESCNN = '''\n(.*?)'''", tested, re.S).group(1)
    model, config = python_blocks(doc)[:2]
    assert model.strip() == rescnn.strip()
    lines = re.search(r'c\.model = ml_collections\.ConfigDict\(\{"kind": "mymodule:ResCNN", "features": 8\}\).*?'
                      r'c\.batch_size = 64',
                      tested, re.S).group(0)
    assert [s.strip() for s in lines.splitlines()] == [s.strip() for s in config.splitlines()[7:13]]
    assert 'c = cnn.get_config("quick")' in config and "from configs import cnn" in config


def test_ci_runs_the_readme_test_command():
    text = readme()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"# set up and run the tests\n(.*)\n", text).group(1)
    assert command == 'pip install -e ".[test]" && ruff check . && python -m pytest'
    for part in ('pip install --quiet -e ".[test]"', "ruff check .", "python -m pytest"):
        assert part in ci
    main_job = re.search(r"# set up and run the main job.*\n(.*)\n", text).group(1)
    assert main_job == "pip install -e . && python -m experiments.reproduce --workdir runs/quick"


# --- the Python blocks ---

@pytest.mark.integration
def test_readme_python_blocks_run_as_written():
    blocks = python_blocks(readme())
    assert blocks
    for code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
        if "learning_rate=[0.03, 0.1, 0.3]" in code:
            means = [float(v) for v in re.findall(r"0\.\d+", out.getvalue().split("]")[0])]
            assert len(means) == 3 and all(0.9 < m < 1.0 for m in means), out.getvalue()


# --- the `python -m` commands ---

def readme_commands() -> list[str]:
    return commands(without_generated(readme()))


def test_the_readme_commands_are_found():
    found = readme_commands()
    assert any(c.startswith("python -m experiments.reproduce") for c in found)
    assert any("mnist_jax.launch" in c for c in found) and any(c.startswith("PYTHONPATH=") for c in found)
    assert 'python -m pytest -m "not integration"' in found


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """One folder for every command, so `evaluate` finds the workdir the mlp command wrote."""
    return tmp_path_factory.mktemp("readme")


class DataLoaded(Exception):
    """A command checked up to its data loading."""


def until_data(command: str) -> str | None:
    """Where a command that runs only up to its data loading here is trained (None: it trains here)."""
    return next((where for key, where in TRAINED_ELSEWHERE.items() if key in command), None)


@pytest.fixture
def synthetic(monkeypatch, request):
    command = request.node.callspec.params["command"]

    def load_data(config):
        if until_data(command):
            raise DataLoaded
        return data_lib.Splits(*(jax.device_put(a) for a in synthetic_splits(n_train=256, n_eval=100))), 0.0
    monkeypatch.setattr(training, "load_data", load_data)


def localized(args: list[str], place: pathlib.Path) -> list[str]:
    """The command's paths moved under `place`: workdirs, images, outputs and your own config."""
    out = []
    for arg in args:
        if arg.startswith(("runs/", "/shared/", "path/")) or arg.endswith(".npy"):
            arg = str(place / arg.lstrip("/"))
        elif arg.startswith("configs/"):
            arg = str(ROOT / arg)
        out.append(arg)
    return out


def run_experiment(module: str, args: list[str], place: pathlib.Path) -> None:
    """`python -m experiments.X ARGS`, shrunk, in this process; exit code 0 or the test fails."""
    given = {a.split("=")[0] for a in args}
    extra = ["--config.only=mlp"] if module == "experiments.reproduce" else [] if module == "experiments.evaluate" \
        else [f"{k}={v}" for k, v in SHRINK.items() if k not in given]
    if module == "experiments.evaluate":
        prepare_evaluate(args, place)
    argv = localized(args, place) + extra
    assert importlib.import_module(module).main(argv) == 0, f"{module} {shlex.join(argv)}"


def prepare_evaluate(args: list[str], place: pathlib.Path) -> None:
    """The images `evaluate` reads, and the workdir it applies (trained here if no command made it)."""
    images = pathlib.Path(localized([args[args.index("--images") + 1]], place)[0])
    images.parent.mkdir(parents=True, exist_ok=True)
    np.save(images, synthetic_splits(n_train=8, n_eval=8).test_x[:, :, :, 0])
    workdir = args[args.index("--workdir") + 1]
    if not (place / workdir / "metrics.json").exists():
        run_experiment("experiments.mlp", ["--workdir", workdir], place)


def write_own_files(place: pathlib.Path, monkeypatch) -> None:
    """The model module and config file of docs/extending.md, where the README's command names them."""
    model, config = python_blocks((ROOT / "docs" / "extending.md").read_text())[:2]
    folder = place / "path" / "to" / "folder"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mymodule.py").write_text(model)
    (place / "path" / "to" / "my_config.py").write_text(config)
    monkeypatch.syspath_prepend(str(folder))


def trains(command: str) -> bool:
    return command.startswith("python -m experiments.") and until_data(command) is None


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.integration) if trains(c) else c
                                     for c in readme_commands()])
@pytest.mark.slow
def test_readme_command_runs(command, place, synthetic, monkeypatch):
    """Every `python -m` command of the README runs: experiments shrunk on synthetic data, or up to
    their data loading where `TRAINED_ELSEWHERE` says another test trains them; `mnist_jax.launch`
    is checked for its arguments (its inner command runs in this process); pytest is this suite."""
    words = shlex.split(command)
    env = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    words = words[len(env):]
    assert words[:2] == ["python", "-m"], command
    module, args = words[2], words[3:]
    if any(e.startswith("PYTHONPATH=") for e in env):
        write_own_files(place, monkeypatch)
    try:
        if module == "pytest":
            assert args in ([], ["-m", "not integration"]) and "integration:" in (ROOT / "pyproject.toml").read_text()
        elif module == "experiments":
            done = subprocess.run([sys.executable, "-m", "experiments"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0 and "mlp" in done.stdout, done.stderr[-2000:]
        elif module == "mnist_jax.launch":
            started = []
            monkeypatch.setattr(launch, "launch", lambda cmd, processes, devices=None, *a, **k:
                                started.append((cmd, processes, devices)) or 0)
            assert launch.main(args) == 0
            ((inner, processes, devices),) = started
            assert (processes, devices) == (2, 2) and inner[:2] == ["python", "-m"]
            with pytest.raises(DataLoaded):
                run_experiment(inner[2], inner[3:], place)
        elif until_data(command):
            with pytest.raises(DataLoaded):
                run_experiment(module, args, place)
        else:
            assert module.startswith("experiments."), f"no test knows how to run {command!r}"
            run_experiment(module, args, place)
    finally:
        sys.modules.pop("mymodule", None)
