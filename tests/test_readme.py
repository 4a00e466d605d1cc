"""The README's promises: its sweep example runs as written, and its two commands are what CI runs."""

import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_readme_sweep_example_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    means = [float(v) for v in re.findall(r"0\.\d+", out.getvalue().split("]")[0])]
    assert len(means) == 3 and all(0.9 < m < 1.0 for m in means), out.getvalue()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"# set up and run the tests\n(.*)\n", readme).group(1)
    assert command == 'pip install -e ".[test]" && ruff check . && python -m pytest'
    for part in ('pip install --quiet -e ".[test]"', "ruff check .", "python -m pytest"):
        assert part in ci
