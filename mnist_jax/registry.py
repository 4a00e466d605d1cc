"""The experiments of this repository, discovered from `configs/`: registering an experiment is
one line in its config file.

Every config file names the command that runs it (`ENTRY = "experiments.<name>"`); a config that
is a stage of the study's job also says where it runs in it (`REPRODUCE_ORDER = <n>`), and its
`get_config(profile)` sizes its own quick profile (`configs/base.py`). `reproduce` runs the
stages in order; `report` asks each stage's entry for its REPORT.md section; an entry point
refuses a config whose ENTRY is another command.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pathlib
from types import ModuleType

from mnist_jax.config import REPO_ROOT, ConfigError, load_config_file, load_config_module

CONFIGS = REPO_ROOT / "configs"
NOT_CONFIGS = ("__init__", "base")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One registered config: its experiment name, the module that runs it, and its file."""

    name: str
    entry: str
    config: pathlib.Path
    order: int | None = None  # its place in `reproduce` (None: a variant, not a stage of the job)

    def config_arg(self, profile: str = "full") -> str:
        """The `--config` argument of this config at `profile`."""
        return str(self.config) if profile == "full" else f"{self.config}:{profile}"

    def config_arg_at(self, profile: str) -> str:
        """`config_arg(profile)`, or the file alone when its get_config takes no profile."""
        try:
            load_config_file(self.config_arg(profile))
        except ConfigError:
            return str(self.config)
        return self.config_arg(profile)

    def module(self) -> ModuleType:
        return importlib.import_module(self.entry)


@functools.cache
def experiments() -> tuple[Experiment, ...]:
    """Every config file of `configs/`, registered (ConfigError names a file without ENTRY)."""
    out = []
    for path in sorted(CONFIGS.glob("*.py")):
        if path.stem in NOT_CONFIGS:
            continue
        module = load_config_module(path)
        entry = getattr(module, "ENTRY", None)
        if not isinstance(entry, str):
            raise ConfigError(f"{path}: a config file names the command that runs it (ENTRY = \"experiments.<name>\")")
        out.append(Experiment(load_config_file(path).experiment, entry, path, getattr(module, "REPRODUCE_ORDER", None)))
    return tuple(out)


def stages() -> list[Experiment]:
    """The stages of the study's job, in order: one config per experiment name."""
    found = sorted((e for e in experiments() if e.order is not None), key=lambda e: e.order)
    names = [e.name for e in found]
    if len(set(names)) != len(names) or len({e.order for e in found}) != len(found):
        raise ConfigError(f"configs/: two stages share an experiment name or REPRODUCE_ORDER: {names}")
    return found


def entries_of(name: str) -> set[str]:
    """The commands that run experiment `name` (from every config file naming it)."""
    return {e.entry for e in experiments() if e.name == name}


def stage(name: str) -> Experiment | None:
    """The stage of experiment `name`, or None when it is not part of the job."""
    return next((e for e in stages() if e.name == name), None)
