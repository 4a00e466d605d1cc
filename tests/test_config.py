"""Configs and the experiment command line: overrides, validation, clear errors, exit code 2."""

import pytest

from experiments import mlp
from mnist_jax.config import ConfigError, apply_override, load_config_file, parse_args, validate


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
