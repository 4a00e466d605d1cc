"""Configs and the experiment command line: overrides, validation, clear errors, exit code 2."""

import inspect
import re

import numpy as np
import pytest

from experiments import mlp, variance_sources
from mnist_jax import registry, train, training
from mnist_jax.config import (
    DISTINCT_LISTS,
    LIST_RULES,
    REDUCED_SOURCES,
    SEED_LIMIT,
    ConfigError,
    apply_override,
    fields,
    last_seed,
    load_config_file,
    load_config_module,
    parse_args,
    unruled,
    validate,
)


def test_overrides_are_typed_like_the_defaults(tmp_path):
    _, config = parse_args(["--workdir", str(tmp_path), "--config.epochs=3", "--config.learning_rate=1",
                            "--config.model.hidden=[10, 20]", "--config.optimizer=adam"], "configs/mlp.py")
    assert config.epochs == 3 and isinstance(config.learning_rate, float)
    assert tuple(config.model.hidden) == (10, 20) and config.optimizer == "adam"


@pytest.mark.parametrize("arg, message", [
    ("--config.epoch=3", "unknown config field 'epoch'"),
    ("--config.model.widths=[3]", "unknown config field 'widths'"),
    ("--config.learning_rate=-0.1", "learning_rate=-0.1 is not allowed: expected a number > 0"),
    ("--config.learning_rate=0", "learning_rate=0.0 is not allowed"),
    ("--config.epochs=two", "expected int"),
    ("--config.epochs=2.5", "expected int, got float"),
    ("--config.batch_size=100000", "batch_size=100000 is not allowed"),
    ("--config.seeds=0", "seeds=0 is not allowed"),
    ("--config.optimizer=lbfgs", "optimizer='lbfgs' is not allowed"),
    ("--config.model.hidden=[]", "non-empty list"),
    ("--config.protocol=test", "protocol='test' is not allowed"),
])
def test_bad_overrides_name_the_field_value_and_what_is_allowed(tmp_path, arg, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_args(["--workdir", str(tmp_path), arg], "configs/mlp.py")


def test_validate_checks_noise_and_dropout_ranges():
    config = load_config_file("configs/mlp.py")
    with config.unlocked():
        config.noise_level = 1.5
    with pytest.raises(ConfigError, match="noise_level=1.5 is not allowed: expected a number in \\[0, 1\\]"):
        validate(config)
    with config.unlocked():
        config.noise_level = 0.5
        config.dropout_rates = [0.5, 1.0]
    with pytest.raises(ConfigError, match="item 1.0"):
        validate(config)


def test_override_of_missing_parent_is_an_error():
    config = load_config_file("configs/mlp.py")
    with pytest.raises(ConfigError, match="unknown config field 'optim'"):
        apply_override(config, "optim.lr", "1")


def test_experiment_exits_2_with_one_line_before_training(tmp_path, capsys):
    code = mlp.main(["--workdir", str(tmp_path / "w"), "--config.learning_rate=-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: config.learning_rate=-1.0 is not allowed")
    assert "Traceback" not in err
    assert not (tmp_path / "w" / "metrics.json").exists()


def test_unwritable_workdir_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert mlp.main(["--workdir", str(blocker / "sub")]) == 2
    assert "is not a writable folder" in capsys.readouterr().err


def test_missing_config_file_is_a_clear_error(tmp_path, capsys):
    assert mlp.main(["--workdir", str(tmp_path), "--config", "configs/nope.py"]) == 2
    assert "no such file" in capsys.readouterr().err


def registered_configs() -> list[tuple[str, str]]:
    """(id, --config argument) of every registered config at every profile its get_config takes."""
    out = []
    for e in registry.experiments():
        takes_profile = bool(inspect.signature(load_config_module(e.config).get_config).parameters)
        for profile in ("full", "quick") if takes_profile else ("full",):
            out.append((f"{e.config.stem}:{profile}", e.config_arg(profile)))
    return out


CONFIGS = registered_configs()


@pytest.mark.parametrize("arg", [a for _, a in CONFIGS], ids=[i for i, _ in CONFIGS])
def test_every_field_of_every_registered_config_has_a_rule(arg):
    config = load_config_file(arg)
    assert unruled(config) == [], "fields without a rule in config.RULES, LIST_RULES or BLOCK_RULES"
    if "reproduce" not in arg:  # the walk reaches nested blocks (model.*, study.*, classifier.*)
        assert any("." in path for path, _ in fields(config))
    validate(config)  # and every default obeys its rule


VS = "configs/variance_sources.py"


@pytest.mark.parametrize("config, args, message", [
    (VS, ["--config.alpha=1.5"], "alpha=1.5 is not allowed: expected a significance level"),
    (VS, ["--config.alpha=0"], "alpha=0.0 is not allowed"),
    (VS, ["--config.power=1"], "power=1.0 is not allowed"),
    (VS, ["--config.power=0.01"], "power=0.01 is not allowed with config.alpha=0.05"),
    (VS, ["--config.differences_pct=[0]"], "differences_pct=(0,) is not allowed: item 0"),
    (VS, ["--config.differences_pct=[0.1, 0.1]"], "0.1 is given twice"),
    (VS, ["--config.differences_pct=[]"], "non-empty list"),
    (VS, ["--config.test_resamples=1"], "test_resamples=1 is not allowed"),
    (VS, ["--config.sources=['init', 'order']"], "'all' must be among them"),
    (VS, ["--config.sources=['init', 'init', 'all']"], "'init' is given twice"),
    (VS, ["--config.sources=['weights', 'all']"], "item 'weights', expected one of 'init'"),
    (VS, ["--config.seeds=2"], "at least 3 runs per source"),
    (VS, ["--config.seed=2147483645", "--config.seeds=3"], "the runs use seeds up to 2147483648"),
    ("configs/mlp.py", ["--config.seed=2147483646", "--config.seeds=3"], "the runs use seeds up to 2147483648"),
    ("configs/l2_sweep.py", ["--config.sweep.l2=[0, 0]"], "0 is given twice"),
    ("configs/l2_sweep.py", ["--config.sweep.l2=[0.1, 0.10000000001]"], "is given twice"),
    ("configs/l2_sweep.py", ["--config.reference_errors=-1"], "reference_errors=-1 is not allowed"),
    ("configs/l2_sweep.py", ["--config.reference_label=two\nlines"], "expected one line of text"),
    ("configs/l2_sweep.py", ["--config.sweep.l2=[]"], "expected a non-empty list"),
    ("configs/l2_sweep.py", ["--config.study.l2_study_best_test_accuracy_pct=(98.6, 98.3)"],
     "study.l2_study_best_test_accuracy_pct=(98.6, 98.3) is not allowed: expected a number >= 0, or a pair"),
    ("configs/cnn.py", ["--config.target_accuracy=1.5"], "target_accuracy=1.5 is not allowed"),
    ("configs/cnn.py", ["--config.model.kind=resnet"], "model.kind='resnet' is not allowed: expected a built-in model"),
    ("configs/noise_accuracy.py", ["--config.noise_levels=[0.5, 0.5]"], "0.5 is given twice"),
    ("configs/cnn_search.py", ["--config.filters_candidates=[8, 8]"], "8 is given twice"),
    ("configs/reproduce.py", ["--config.profile=slow"], "profile='slow' is not allowed"),
])
def test_experiment_fields_are_refused_before_training(tmp_path, config, args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_args(["--workdir", str(tmp_path), *args], config)


@pytest.mark.parametrize("arg", [a for _, a in CONFIGS], ids=[i for i, _ in CONFIGS])
def test_every_list_of_swept_values_refuses_a_value_given_twice(arg):
    config = load_config_file(arg)
    swept = [(p, v) for p, v in fields(config)
             if p.rsplit(".", 1)[-1] in DISTINCT_LISTS or p.endswith("_values") or p.startswith("sweep.")]
    for path, values in swept:
        twice = load_config_file(arg)
        apply_override(twice, path, repr([*values, values[0]]))
        with pytest.raises(ConfigError, match="is given twice"):
            validate(twice)


@pytest.mark.parametrize("arg", [a for _, a in CONFIGS if "reproduce" not in a],
                         ids=[i for i, a in CONFIGS if "reproduce" not in a])
def test_the_highest_allowed_seed_derives_no_seed_outside_int32(arg):
    """At the highest `seed` validation allows, the seeds the experiment really derives stay in
    0..2**31-1 and reach `last_seed`; one more is refused."""
    config = load_config_file(arg)
    with config.unlocked():
        config.seed = SEED_LIMIT - 1 - (last_seed(config) - config.seed)
    validate(config)
    if "sources" in config:
        seeds, _ = variance_sources.source_seeds(list(config.sources), config.seeds, config.seed, 784 * 64)
        derived = np.concatenate([v for k, v in seeds.items() if k in train.STREAMS or k == "bootstrap"])
        derived = derived[derived != -1]  # -1: a perturbation that is off
    else:
        derived = np.asarray(training.seeds_of(config), np.int64)
    assert derived.min() >= config.seed and derived.max() == last_seed(config) == SEED_LIMIT - 1
    with config.unlocked():
        config.seed += 1
    with pytest.raises(ConfigError, match=r"every seed must be below 2\*\*31|an integer in 0\.\.2147483647"):
        validate(config)


def test_variance_sources_knows_every_source_the_rule_allows():
    ok, _ = LIST_RULES["sources"]
    assert all(ok(s) for s in variance_sources.SOURCES) and not ok("weights")
    allowed = (*train.STREAMS, *train.PERTURBATIONS, "all", *REDUCED_SOURCES)
    assert {s for s in allowed if ok(s)} == set(variance_sources.SOURCES)
    assert set(variance_sources.REDUCED) == set(REDUCED_SOURCES)  # the bfloat16 arms


@pytest.mark.parametrize("alpha, power", [(1e-6, 0.999), (0.5, 0.999), (0.05, 0.95), (1e-6, 2e-6)])
def test_the_power_table_computes_at_the_edges_of_its_rules(alpha, power):
    """Whatever alpha, power and differences the rules allow, the power table is numbers (no
    NaN from scipy's noncentral t far in its tail, no failed root search)."""
    config = load_config_file(VS)
    with config.unlocked():
        config.alpha, config.power, config.differences_pct = alpha, power, (0.001, 100.0)
    validate(config)
    table = variance_sources.power_table({"std": 0.3, "ci_high": 3.0}, config)
    assert all(r["seeds_per_arm"] >= 2 for r in table["rows"])
    assert all(0 < s["detectable_difference_pct"] < s["detectable_difference_pct_at_ci_high"] for s in table["sweeps"])
