"""The library does not depend on its entry points: no module of mnist_jax imports `experiments`."""

import ast
import pathlib

LIBRARY = pathlib.Path(__file__).resolve().parents[1] / "mnist_jax"


def imported_modules(path: pathlib.Path) -> list[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (function bodies included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_no_library_module_imports_experiments():
    files = sorted(LIBRARY.glob("*.py"))
    assert len(files) > 10, "mnist_jax/ was not found"
    offenders = {f.name: m for f in files for m in imported_modules(f) if m.split(".")[0] == "experiments"}
    assert not offenders, f"library modules import entry points: {offenders}"


def test_the_check_sees_a_function_level_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from experiments import mlp\n    return mlp\n")
    assert imported_modules(path) == ["experiments"]
