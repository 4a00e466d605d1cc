"""Experiment configs: loading `configs/*.py`, `--config.field=value` overrides, validation.

Every user error (an unknown field, a value of the wrong type, a value outside what is
allowed) raises `ConfigError` with one message that names the field, the value and what is
allowed; the experiment entry points turn it into that message and exit code 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import math
import os
import pathlib

import ml_collections

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config or command line that cannot be run; the message says why."""


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"_mnist_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config: {str(path)!r} has no get_config()")
    return module.get_config()


def _parse_value(field: str, text: str, default):
    """The override `text` as the type of `default`."""
    if isinstance(default, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(default, bool) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ConfigError(f"--config.{field}={text}: not a valid value (expected {type(default).__name__})") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--config.{field}={text}: expected True or False")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"--config.{field}={text}: expected a list such as [1, 2]")
        return type(default)(value)
    if default is not None and not isinstance(value, type(default)):
        raise ConfigError(f"--config.{field}={text}: expected {type(default).__name__}, got {type(value).__name__}")
    return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Set `config.<dotted>` from the command-line text `text`, or raise ConfigError."""
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ConfigError(f"--config.{dotted}: unknown config field {name!r}")
        node = node[name]
    if leaf not in node:
        known = ", ".join(sorted(node.keys()))
        raise ConfigError(f"--config.{dotted}: unknown config field {leaf!r} (known: {known})")
    with node.unlocked():
        node[leaf] = _parse_value(dotted, text, node[leaf])


def parse_args(argv: list[str] | None, default_config: str,
               description: str = "") -> tuple[pathlib.Path, ml_collections.ConfigDict]:
    """(--workdir, config with overrides) from a command line; raises ConfigError."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--workdir", required=True, help="folder for config, metrics, figures, checkpoints")
    parser.add_argument("--config", default=str(REPO_ROOT / default_config), help="config file (get_config())")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if not arg.startswith("--config.") or "=" not in arg:
            raise ConfigError(f"unrecognised argument {arg!r} (overrides look like --config.epochs=2)")
        key, text = arg[len("--config."):].split("=", 1)
        overrides.append((key, text))
    config = load_config_file(args.config)
    for key, text in overrides:
        apply_override(config, key, text)
    validate(config)
    return pathlib.Path(args.workdir), config


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# field name -> (test, what is allowed)
RULES = {
    "seed": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "seeds": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "epochs": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: isinstance(v, int) and 1 <= v <= 55_000, "an integer in 1..55000 (the training set)"),
    "n_val": (lambda v: isinstance(v, int) and 1 <= v <= 59_000, "an integer in 1..59000"),
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "momentum": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "l2": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "max_norm": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 = off)"),
    "dropout_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "input_dropout_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "noise_level": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "chunk_epochs": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "run_chunk": (lambda v: isinstance(v, int) and v >= 0,
                  "an integer >= 0 (0 = automatic: all runs at once, conv nets on a CPU one at a time)"),
    "optimizer": (lambda v: v in ("sgd", "momentum", "adam"), "one of 'sgd', 'momentum', 'adam'"),
    "schedule": (lambda v: v in ("constant", "cosine", "warmup_cosine"), "one of 'constant', 'cosine', 'warmup_cosine'"),
    "protocol": (lambda v: v in ("holdout", "study"), "'holdout' or 'study'"),
    "reuse": (lambda v: v in ("same_code", "any"), "'same_code' or 'any'"),
    "max_shift": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 8, "an integer in 0..8 (0 = off)"),
    "train_images": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0 = the whole training split)"),
    "conv_impl": (lambda v: v in ("auto", "fused", "im2col", "lax"), "one of 'auto', 'fused', 'im2col', 'lax'"),
    "dense": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0 (0 = none)"),
    "padding": (lambda v: v in ("VALID", "SAME"), "'VALID' or 'SAME'"),
    "denoiser_epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0 = the same as epochs)"),
    "figure_digits": (lambda v: isinstance(v, int) and 1 <= v <= 30, "an integer in 1..30"),
    "latent": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "iwae_k": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "iwae_images": (lambda v: isinstance(v, int) and 1 <= v <= 10_000, "an integer in 1..10000 (the test set)"),
    "iwae_batch": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "n_samples": (lambda v: isinstance(v, int) and v >= 100, "an integer >= 100 (the 10x10 sample grid)"),
    "map_epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0 = no 2-D model)"),
}

# list-valued field -> rule for each element (and the list must not be empty)
LIST_RULES = {
    "hidden": (lambda v: isinstance(v, int) and v >= 1, "integers >= 1"),
    "l2_factors": RULES["l2"],
    "learning_rates": RULES["learning_rate"],
    "dropout_rates": RULES["dropout_rate"],
    "noise_levels": RULES["noise_level"],
    "filters": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "integers >= 1"),
    "pool": (lambda v: isinstance(v, bool), "True or False per conv layer"),
    "filters_candidates": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "integers >= 1"),
    "dense_candidates": RULES["dense"],
    "digits": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9, "digits 0..9"),
}


def validate(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Raise ConfigError naming the first field whose value is not allowed."""
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict):
            validate(value, f"{path}.")
        elif name in RULES:
            ok, allowed = RULES[name]
            if not ok(value):
                raise ConfigError(f"config.{path}={value!r} is not allowed: expected {allowed}")
        elif name in LIST_RULES:
            ok, allowed = LIST_RULES[name]
            if not isinstance(value, (list, tuple)) or len(value) == 0:
                raise ConfigError(f"config.{path}={value!r} is not allowed: expected a non-empty list of {allowed}")
            for item in value:
                if not ok(item):
                    raise ConfigError(f"config.{path}={value!r} is not allowed: item {item!r}, expected {allowed}")
