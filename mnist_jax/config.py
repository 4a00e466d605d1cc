"""Experiment configs: loading `configs/*.py`, `--config.field=value` overrides, validation.

Every user error (an unknown field, a value of the wrong type, a value outside what is
allowed) raises `ConfigError` with one message that names the field, the value and what is
allowed; the experiment entry points turn it into that message and exit code 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import os
import pathlib
import re
import sys

import ml_collections
import numpy as np

from mnist_jax import distributed
from mnist_jax.kernels import CONV_IMPLS
from mnist_jax.precision import COMPUTE_DTYPES, MATMUL_PRECISIONS
from mnist_jax.train import OPTIMIZERS, PERTURBATIONS, SCHEDULES, STREAMS, optimizer_args

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config or command line that cannot be run; the message says why."""


def split_config_arg(arg: str | os.PathLike) -> tuple[pathlib.Path, str | None]:
    """`configs/x.py:quick` -> (configs/x.py, "quick"); a plain path -> (path, None)."""
    text = str(arg)
    head, sep, tail = text.rpartition(":")
    if sep and head.endswith(".py") and tail and "/" not in tail:
        return pathlib.Path(head), tail
    return pathlib.Path(text), None


def load_config_module(path: str | os.PathLike):
    """The Python module of a config file; ConfigError when it cannot be loaded."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {str(path)!r}")
    spec = importlib.util.spec_from_file_location(f"_mnist_jax_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--config: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"--config: {str(path)!r} line {err.lineno}: {err.msg}") from None
    except Exception as err:  # a config file is user code: any error in it is the user's to fix
        raise ConfigError(f"--config: {str(path)!r} cannot be loaded ({type(err).__name__}: {err})") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"--config: {str(path)!r} has no get_config()")
    return module


def load_config_file(arg: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file, or `get_config(ARG)` for `path.py:ARG` (the
    ml_collections convention; the study's configs take a profile, e.g. `configs/mlp.py:quick`)."""
    path, profile = split_config_arg(arg)
    module = load_config_module(path)
    try:
        config = module.get_config() if profile is None else module.get_config(profile)
    except Exception as err:
        raise ConfigError(f"--config: get_config({'' if profile is None else repr(profile)}) of {str(path)!r} raised "
                          f"{type(err).__name__}: {err}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config: get_config() of {str(path)!r} returned a {type(config).__name__}, "
                          "not an ml_collections.ConfigDict")
    return config


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
    if isinstance(default, ml_collections.ConfigDict):
        if not isinstance(value, dict):
            raise ConfigError(f"--config.{field}={text}: expected a mapping such as {{'l2': [0, 1e-4]}}")
        return ml_collections.ConfigDict(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--config.{field}={text}: expected True or False")
        return value
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, bool):
        raise ConfigError(f"--config.{field}={text}: expected int, got bool")
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
    if leaf not in node and parents and parents[-1] == "sweep":  # a sweep declaration takes any hyperparameter
        with node.unlocked():
            node[leaf] = _parse_value(dotted, text, [])
        return
    if leaf not in node:
        known = ", ".join(sorted(node.keys()))
        raise ConfigError(f"--config.{dotted}: unknown config field {leaf!r} (known: {known})")
    with node.unlocked():
        node[leaf] = _parse_value(dotted, text, node[leaf])


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (a missing --workdir, say) are a ConfigError: one line, exit code 2."""

    def error(self, message: str):
        raise ConfigError(message)


def parse_args(argv: list[str] | None, default_config: str,
               description: str = "") -> tuple[pathlib.Path, ml_collections.ConfigDict]:
    """(--workdir, config with overrides) from a command line; raises ConfigError.

    In a run of several processes, they first compare their command lines, config files and code
    (`distributed.check_same_run`), so a process given another config stops every process with
    one line before any of them fails on its own."""
    argv = sys.argv[1:] if argv is None else list(argv)
    distributed.check_same_run(_run_inputs(argv, default_config))
    parser = ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--workdir", required=True, help="folder for config, metrics, figures, checkpoints")
    parser.add_argument("--config", default=str(REPO_ROOT / default_config), help="config file (get_config())")
    args, rest = parser.parse_known_args(argv)
    if not args.workdir.strip():
        raise ConfigError("--workdir is empty: name a folder for the run")
    overrides = []
    for arg in rest:
        if not arg.startswith("--config.") or "=" not in arg:
            raise ConfigError(f"unrecognised argument {arg!r} (overrides look like --config.epochs=2)")
        key, text = arg[len("--config."):].split("=", 1)
        overrides.append((key, text))
    config = load_config_file(args.config)
    for key, text in overrides:
        apply_override(config, key, text)
    check_alternatives(config, [key for key, _ in overrides])
    validate(config)
    return pathlib.Path(args.workdir), config


def _run_inputs(argv: list[str], default_config: str) -> str:
    """What a run's config is made of: its command line and the text of its config file."""
    given = [b for a, b in zip(argv, argv[1:], strict=False) if a == "--config"] + [
        a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    path = split_config_arg(given[-1])[0] if given else REPO_ROOT / default_config
    try:
        text = path.read_text() if path.is_file() else ""
    except (OSError, UnicodeDecodeError):
        text = "?"
    return json.dumps({"argv": argv, "config_file": text})


def _is_number(x) -> bool:
    """A finite number that stays finite as float32 (the dtype hyperparameters are traced in)."""
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and abs(x) <= float(np.finfo(np.float32).max))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_rate(x) -> bool:
    """A number in [0, 1) also as float32: 0.99999999999 rounds to 1.0 there and would drop every unit."""
    return _is_number(x) and x >= 0 and float(np.float32(x)) < 1


SEED_LIMIT = 2**31  # seeds are int32 inside the compiled program
# variance_sources' arms trained in bfloat16 compute, `precision_seeds` runs each
REDUCED_SOURCES = ("precision", "one_bit_bf16")


def _is_plain_name(x) -> bool:
    return isinstance(x, str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", x) is not None and x not in (".", "..")


def _is_bool(x) -> bool:
    return isinstance(x, bool)


def _is_line(x) -> bool:
    """A string of one line (no control characters), at most 300 characters."""
    return isinstance(x, str) and len(x) <= 300 and x.isprintable()


def _is_reference(x) -> bool:
    """A number >= 0, or a pair (low, high) of numbers >= 0 with low <= high (a published range)."""
    if isinstance(x, (list, tuple)):
        return len(x) == 2 and all(_is_number(v) and v >= 0 for v in x) and x[0] <= x[1]
    return _is_number(x) and x >= 0


def _is_model_kind(v) -> bool:
    """A built-in model name or the `package.module:Class` form (whether it imports is checked
    when the model is built, `models.model_class`)."""
    from mnist_jax import models  # models imports this module's ConfigError

    return isinstance(v, str) and (v in models.BUILTIN or re.fullmatch(r"[\w.]+:[\w.]+", v) is not None)


def _one_of(allowed: tuple[str, ...]):
    """A rule: the value is one of `allowed` (the library's own list, so the two never drift)."""
    return (lambda v: v in allowed, "one of " + ", ".join(repr(a) for a in allowed))


# Every numeric argument of an optimizer (`train.optimizer_args`) is a finite number, unless RULES says more.
_OPTIMIZER_ARGS = {arg: (_is_number, "a finite number") for name in OPTIMIZERS for arg in optimizer_args(name)}

# field name -> (test, what is allowed); every config's fields of that name are checked
RULES = {
    **_OPTIMIZER_ARGS,
    "experiment": (_is_plain_name, "a plain name (letters, digits, '_', '-', '.'; no folder)"),
    "seed": (lambda v: _is_int(v) and 0 <= v < SEED_LIMIT, f"an integer in 0..{SEED_LIMIT - 1}"),
    "seeds": (lambda v: _is_int(v) and 1 <= v <= 100_000, "an integer in 1..100000"),
    "epochs": (lambda v: _is_int(v) and 1 <= v <= 100_000, "an integer in 1..100000"),
    "batch_size": (lambda v: _is_int(v) and 1 <= v <= 55_000, "an integer in 1..55000 (the training set)"),
    "n_val": (lambda v: _is_int(v) and 1 <= v <= 59_000, "an integer in 1..59000"),
    "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "momentum": (_is_rate, "a number in [0, 1) (as float32)"),
    "l2": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "max_norm": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 = off)"),
    "dropout_rate": (_is_rate, "a number in [0, 1) (as float32)"),
    "input_dropout_rate": (_is_rate, "a number in [0, 1) (as float32)"),
    "noise_level": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "label_smoothing": (_is_rate, "a number in [0, 1) (as float32)"),
    "chunk_epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "checkpoint_seconds": (lambda v: _is_number(v) and v >= 0,
                           "a number of seconds >= 0 (0: a checkpoint every checkpoint_every epochs)"),
    "run_chunk": (lambda v: _is_int(v) and v >= 0,
                  "an integer >= 0 (0 = automatic: what the model says, sweep.default_run_chunk)"),
    "optimizer": _one_of(OPTIMIZERS),
    "compute_dtype": _one_of(COMPUTE_DTYPES),
    "matmul_precision": _one_of(MATMUL_PRECISIONS),
    "b1": (_is_rate, "a number in [0, 1) (as float32)"),
    "b2": (_is_rate, "a number in [0, 1) (as float32)"),
    "b3": (_is_rate, "a number in [0, 1) (as float32)"),
    "decay": (_is_rate, "a number in [0, 1) (as float32)"),
    "rho": (_is_rate, "a number in [0, 1) (as float32)"),
    "eps": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "eps_root": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "schedule": _one_of(SCHEDULES),
    "protocol": (lambda v: v in ("holdout", "study"), "'holdout' or 'study'"),
    "reuse": (lambda v: v in ("same_code", "any"), "'same_code' or 'any'"),
    "jobs": (lambda v: _is_int(v) and 1 <= v <= 64, "an integer in 1..64 (stages at once)"),
    "max_shift": (lambda v: _is_int(v) and 0 <= v <= 8, "an integer in 0..8 (0 = off)"),
    "train_images": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = the whole training split)"),
    "conv_impl": _one_of(("auto", *CONV_IMPLS)),
    "dense": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = none)"),
    "padding": (lambda v: v in ("VALID", "SAME"), "'VALID' or 'SAME'"),
    "denoiser_epochs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = the same as epochs)"),
    "figure_digits": (lambda v: _is_int(v) and 1 <= v <= 30, "an integer in 1..30"),
    "latent": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "iwae_k": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "iwae_images": (lambda v: _is_int(v) and 1 <= v <= 10_000, "an integer in 1..10000 (the test set)"),
    "iwae_batch": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "n_samples": (lambda v: _is_int(v) and v >= 100, "an integer >= 100 (the 10x10 sample grid)"),
    "map_epochs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = no 2-D model)"),
    "kl_warmup_epochs": (lambda v: _is_number(v) and 0 <= v <= 100_000, "a number of epochs in [0, 100000] (0 = no warm-up)"),
    "train_iwae_k": (lambda v: _is_int(v) and 1 <= v <= 10_000, "an integer in 1..10000 (1 = the ELBO)"),
    "sample_temperature": (lambda v: _is_number(v) and 0 < v <= 10, "a number in (0, 10] (1 = the prior)"),
    "kind": (lambda v: _is_model_kind(v), "a built-in model (mlp, cnn, vae, dae) or 'package.module:Class'"),
    "keras_init": (_is_bool, "True or False"),
    "dropout": (_is_bool, "True or False (dropout after each hidden layer)"),
    "dense_dropout": (_is_bool, "True or False (dropout after the hidden dense layer)"),
    "conv": (_is_bool, "True or False (a convolutional encoder and decoder)"),
    "conditional": (_is_bool, "True or False (the label goes into encoder and decoder)"),
    "force": (_is_bool, "True or False"),
    "tensorboard": (_is_bool, "True or False (TensorBoard event files of every run)"),
    "workdir": (_is_line, "a folder as one line of text, or '' (none)"),
    "profile": (lambda v: v in ("quick", "full"), "'quick' or 'full'"),
    "only": (lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.,\s-]*", v) is not None,
             "experiment names separated by commas, or '' (all)"),
    "target_accuracy": (lambda v: _is_number(v) and 0 < v <= 1, "an accuracy in (0, 1]"),
    "reference_errors": (lambda v: _is_int(v) and 0 <= v <= 10_000, "a count of test errors in 0..10000"),
    "reference_label": (_is_line, "one line of text"),
    "alpha": (lambda v: _is_number(v) and 1e-6 <= v <= 0.5, "a significance level in [1e-06, 0.5]"),
    "power": (lambda v: _is_number(v) and 0 < v <= 0.999, "a power in (0, 0.999], above alpha"),
    "test_resamples": (lambda v: _is_int(v) and 2 <= v <= 100_000, "an integer in 2..100000"),
    "precision_seeds": (lambda v: _is_int(v) and 3 <= v <= 100_000, "an integer in 3..100000 (a spread needs 3 runs)"),
}

# block name -> rule for every field inside such a block, whatever its name: `study` holds the
# published numbers that REPORT.md and the README quote beside this project's own
BLOCK_RULES = {
    "study": (_is_reference, "a number >= 0, or a pair (low, high) of numbers >= 0 with low <= high"),
}

# list-valued field -> rule for each element (and the list must not be empty)
LIST_RULES = {
    "hidden": (lambda v: _is_int(v) and v >= 1, "integers >= 1"),
    "l2_factors": RULES["l2"],
    "learning_rates": RULES["learning_rate"],
    "dropout_rates": RULES["dropout_rate"],
    "noise_levels": RULES["noise_level"],
    "filters": (lambda v: _is_int(v) and v >= 1, "integers >= 1"),
    "pool": (lambda v: isinstance(v, bool), "True or False per conv layer"),
    "filters_candidates": (lambda v: _is_int(v) and v >= 1, "integers >= 1"),
    "dense_candidates": RULES["dense"],
    "digits": (lambda v: _is_int(v) and 0 <= v <= 9, "digits 0..9"),
    "differences_pct": (lambda v: _is_number(v) and 0.001 <= v <= 100, "differences of accuracy in [0.001, 100] % points"),
    "sources": _one_of((*STREAMS, *PERTURBATIONS, "all", *REDUCED_SOURCES)),
}

# lists whose every value is trained (or tabulated) once: a value given twice is refused, not
# trained twice and compared with itself. Every `<hyperparameter>_values` list is one too.
DISTINCT_LISTS = frozenset({"l2_factors", "learning_rates", "dropout_rates", "noise_levels", "filters_candidates",
                            "dense_candidates", "differences_pct", "sources"})


def rule_of(path: str) -> tuple[tuple, bool] | None:
    """((test, what is allowed), is a list) of the config field at dotted `path`, or None when no
    rule names it. A list's test is of each of its items."""
    *parents, name = path.split(".")
    if parents and parents[-1] == "sweep":  # a sweep declaration: distinct values, each by its hyperparameter's rule
        return RULES.get(name, (_is_number, "a finite number")), True
    if parents and parents[-1] in BLOCK_RULES:
        return BLOCK_RULES[parents[-1]], False
    if name in RULES:
        return RULES[name], False
    if name in LIST_RULES:
        return LIST_RULES[name], True
    if name.endswith("_values") and name[:-len("_values")] in RULES:
        return RULES[name[:-len("_values")]], True
    return None


def fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted path, value) of every leaf field of a config, nested blocks included."""
    out = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(fields(value, f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", value))
    return out


def unruled(config: ml_collections.ConfigDict) -> list[str]:
    """The dotted paths of the config's fields that no rule names."""
    return [path for path, _ in fields(config) if rule_of(path) is None]


def _duplicate(values) -> object | None:
    """The first value of `values` that an earlier one equals (numbers compared as float32, the
    dtype they are trained in), or None."""
    seen = set()
    for v in values:
        key = float(np.float32(v)) if _is_number(v) else v
        if key in seen:
            return v
        seen.add(key)
    return None


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first field whose value is not allowed (`rule_of`), then
    check the rules across fields (`check_together`)."""
    for path, value in fields(config):
        found = rule_of(path)
        if found is None:
            continue
        (ok, allowed), is_list = found
        if not is_list:
            if not ok(value):
                raise ConfigError(f"config.{path}={value!r} is not allowed: expected {allowed}")
            continue
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise ConfigError(f"config.{path}={value!r} is not allowed: expected a non-empty list of {allowed}")
        for item in value:
            if not ok(item):
                raise ConfigError(f"config.{path}={value!r} is not allowed: item {item!r}, expected {allowed}")
        name = path.rsplit(".", 1)[-1]
        if name in DISTINCT_LISTS or name.endswith("_values") or path.startswith("sweep."):
            twice = _duplicate(value)
            if twice is not None:
                raise ConfigError(f"config.{path}={value!r} is not allowed: {twice!r} is given twice (each value "
                                  "is trained or tabulated once; numbers are compared as float32)")
    check_together(config)


def last_seed(config: ml_collections.ConfigDict) -> int:
    """The highest seed a config's runs derive from `seed`: the runs of every experiment take
    seed, seed + 1, ..., seed + seeds - 1; variance_sources' (a config with `sources`) keep
    `seed` for the streams they hold and give a varied stream or resampling seed + 1 + i, up to
    seed + seeds."""
    return config.seed + config.seeds - 1 + ("sources" in config)


def check_alternatives(config: ml_collections.ConfigDict, overridden: list[str]) -> None:
    """ConfigError for an override of a block of alternatives ({kind, <kind>: {...}, ...}) that
    the chosen kind does not use: `--config.classifier.cnn.filters=...` with classifier.kind=mlp
    would change nothing."""
    for dotted in overridden:
        node, parts = config, dotted.split(".")
        for i, name in enumerate(parts[:-1]):
            kind = node.get("kind") if isinstance(node, ml_collections.ConfigDict) else None
            if isinstance(kind, str) and name != kind and isinstance(node.get(name), ml_collections.ConfigDict):
                where = ".".join(parts[:i])
                raise ConfigError(f"--config.{dotted}: config.{where}.kind is {kind!r}, so its {name!r} block is not used; "
                                  f"set --config.{where}.kind={name} too")
            node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None


def check_reduced_sources(config: ml_collections.ConfigDict) -> None:
    """variance_sources' bfloat16 arms: `one_bit_bf16` is measured against `precision`, each has
    `precision_seeds` runs, and float32 is what they compare with."""
    reduced = [s for s in config.sources if s in REDUCED_SOURCES]
    if not reduced:
        return
    if "one_bit_bf16" in reduced and "precision" not in reduced:
        raise ConfigError(f"config.sources={tuple(config.sources)!r} is not allowed: 'one_bit_bf16' is measured against "
                          "the bfloat16 spread of different seeds, so 'precision' must be among them")
    if config.get("compute_dtype", "float32") != "float32":
        raise ConfigError(f"config.compute_dtype={config.compute_dtype!r} is not allowed with the sources {reduced}: they "
                          "compare bfloat16 compute with float32, so the other runs compute in float32")
    if config.get("precision_seeds") is None:
        raise ConfigError(f"config.precision_seeds is missing: the sources {reduced} train that many runs each")


def check_together(config: ml_collections.ConfigDict) -> None:
    """Rules across fields: every derived seed fits int32, the batch fits the training split,
    a power above its significance level, variance_sources' sources and runs per source."""
    seed, seeds = config.get("seed"), config.get("seeds")
    if _is_int(seed) and _is_int(seeds) and last_seed(config) >= SEED_LIMIT:
        raise ConfigError(f"config.seed={seed} with config.seeds={seeds} is not allowed: the runs use seeds up to "
                          f"{last_seed(config)}, and every seed must be below 2**31 = {SEED_LIMIT} "
                          f"(config.seed <= {SEED_LIMIT - 1 - (last_seed(config) - seed)} here)")
    alpha, power = config.get("alpha"), config.get("power")
    if _is_number(alpha) and _is_number(power) and power <= alpha:
        raise ConfigError(f"config.power={power!r} is not allowed with config.alpha={alpha!r}: a test at level alpha "
                          "already has power alpha, so the power asked for must be above it")
    if "sources" in config:
        if "all" not in config.sources:
            raise ConfigError(f"config.sources={tuple(config.sources)!r} is not allowed: 'all' must be among them "
                              "(the spread every other source is measured against)")
        if _is_int(seeds) and seeds < 3:
            raise ConfigError(f"config.seeds={seeds} is not allowed: a spread and its CI need at least 3 runs per source")
        check_reduced_sources(config)
    n_val, batch = config.get("n_val", 5000), config.get("batch_size")
    n_train = 60_000 - n_val if config.get("protocol", "holdout") == "holdout" and _is_int(n_val) else 60_000
    if _is_int(batch) and batch > n_train:
        raise ConfigError(f"config.batch_size={batch} is larger than the training set "
                          f"({n_train} images with n_val={n_val})")
    images = config.get("train_images", 0)
    if _is_int(images) and images > n_train:
        raise ConfigError(f"config.train_images={images} is larger than the training split ({n_train})")
    if _is_int(images) and images and _is_int(batch) and batch > images:
        raise ConfigError(f"config.batch_size={batch} is larger than config.train_images={images}")
