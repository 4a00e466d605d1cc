"""The layers of the code: the library (`mnist_jax/`) never imports the experiments built on it,
at module level or inside a function."""

import ast

from mnist_jax.config import REPO_ROOT

IMPORTERS = ("import_module", "__import__")


def imported(source: str) -> list[tuple[str, int]]:
    """(module, line) of every absolute import in `source`, a literal `importlib.import_module` or
    `__import__` included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORTERS
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.args[0].value, node.lineno))
    return found


def is_experiments(module: str) -> bool:
    return module == "experiments" or module.startswith("experiments.")


def test_the_import_finder_sees_function_level_and_literal_imports():
    source = ("import os\n"
              "def f():\n    from experiments import mlp\n"
              "def g():\n    import experiments.cnn as c\n"
              "def h():\n    return importlib.import_module('experiments.vae')\n")
    assert [m for m, _ in imported(source) if is_experiments(m)] == ["experiments", "experiments.cnn", "experiments.vae"]


def test_the_library_never_imports_experiments():
    files = sorted((REPO_ROOT / "mnist_jax").rglob("*.py"))
    assert len(files) > 10
    found = [f"{f.relative_to(REPO_ROOT)}:{line} imports {module}"
             for f in files for module, line in imported(f.read_text()) if is_experiments(module)]
    assert not found, found
