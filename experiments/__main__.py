"""List the experiments: `python -m experiments` prints, for every config registered in `configs/`
(`mnist_jax.registry`), its experiment name, the command that runs it, one line of what it does,
and its full and quick configs.

The line is the first sentence of the command's module docstring; a variant (a config file not named
after its command, such as configs/cnn_best.py run by experiments.cnn) gets its config file's first sentence,
which says what the variant changes."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import sys

from mnist_jax import registry
from mnist_jax.config import load_config_module


def summary_line(path: str | os.PathLike) -> str:
    """The first sentence of the docstring of the Python file `path`, read without importing it."""
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".:") + "." if paragraph else "(no docstring)"


def has_quick(exp: registry.Experiment) -> bool:
    """Whether the config sizes a quick profile (its get_config takes `profile`)."""
    return "profile" in inspect.signature(load_config_module(exp.config).get_config).parameters


def listing() -> str:
    """The text `python -m experiments` prints."""
    lines = ["Experiments (python -m experiments.<module> --workdir DIR --config CONFIG):", ""]
    for exp in registry.experiments():
        where = os.path.relpath(exp.config, registry.REPO_ROOT)
        stage = f", stage {exp.order} of reproduce" if exp.order is not None else ""
        lines.append(f"{exp.name}  (python -m {exp.entry}{stage})")
        spec = importlib.util.find_spec(exp.entry)
        variant = exp.config.stem != exp.entry.rsplit(".", 1)[-1]
        lines.append(f"    {summary_line(exp.config if variant or spec is None else spec.origin)}")
        lines.append(f"    full:  --config {where}")
        lines.append(f"    quick: --config {where}:quick" if has_quick(exp) else "    quick: (none: the config has one size)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    if argv if argv is not None else sys.argv[1:]:
        print("usage: python -m experiments    (lists the experiments; run one with python -m experiments.<name>)",
              file=sys.stderr)
        return 2
    sys.stdout.write(listing())
    return 0


if __name__ == "__main__":
    sys.exit(main())
