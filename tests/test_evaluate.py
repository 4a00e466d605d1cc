"""`experiments.evaluate` applies what a workdir declares (`trained.declaration`, NAME/model.json
beside each saved params set): a researcher's own model with no edit of evaluate, one-line
errors that list the declared choices, declarations that survive a resume, and workdirs of
older code. `evaluate_each_declared` applies every model an experiment declares; the
end-to-end test of every experiment (`test_experiments.py`) calls it."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import evaluate, mlp
from mnist_jax import cli, models, results, trained
from mnist_jax import workdir as workdir_lib

TEACHER_AND_STUDENT = '''
import flax.linen as nn


class Teacher(nn.Module):
    """A denoiser of the researcher's own: images -> image logits."""

    width: int = 12

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
        return nn.Dense(784)(h).reshape(x.shape)


class Student(nn.Module):
    """A classifier of the researcher's own."""

    width: int = 8

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1))))
'''


def images(folder: pathlib.Path, n: int = 9) -> pathlib.Path:
    path = folder / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8))
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def evaluate_each_declared(workdir: pathlib.Path, folder: pathlib.Path) -> list[str]:
    """Apply every model the workdir declares, at its last declared noise level if it has any,
    to a few images; check what each role writes. Returns the names applied."""
    x = images(folder, 5)
    declared = trained.declarations(workdir)
    assert declared, f"{workdir} declares no trained model"
    for name, d in declared.items():
        levels = [r["noise_level"] for r in d["runs"] if "noise_level" in r]
        out = folder / f"{name}.npy"
        args = ["--workdir", str(workdir), "--images", str(x), "--out", str(out), "--model", name]
        if levels:
            args += ["--level", f"{levels[-1]}"]
        if d["model"].get("conditional"):
            assert evaluate.main(args) == 2, name  # a conditional VAE needs labels
            continue
        assert evaluate.main(args) == 0, name
        y = np.load(out)
        if d["role"] == "classifier":
            assert y.dtype == np.int64 and y.shape == (5,) and 0 <= y.min() and y.max() <= 9, name
        else:
            assert y.dtype == np.float32 and y.shape == (5, 28, 28) and 0 <= y.min() and y.max() <= 1, name
    return list(declared)


def researchers_run(config: ml_collections.ConfigDict, run_dir: pathlib.Path) -> dict:
    """A researcher's experiment: a teacher denoiser and a student classifier that reads its
    output, two seeds each, saved under names of their own and declared."""
    teacher = models.from_config({"kind": "mymodels:Teacher"})
    student = models.from_config({"kind": "mymodels:Student"})
    keys = jax.random.split(jax.random.key(config.seed), 2)
    x = jnp.zeros((1, 28, 28, 1))
    history = {"diverged": np.zeros((2, 1), bool)}
    seeds = np.array([0, 1])
    trained.save_params(run_dir, jax.jit(jax.vmap(lambda k: teacher.init(k, x)))(keys), "teacher",
                        trained.grid_declaration(teacher, {}, seeds, history, "my denoisers"))
    trained.save_params(run_dir, jax.jit(jax.vmap(lambda k: student.init(k, x)))(keys), "student",
                        trained.grid_declaration(student, {}, seeds, history, "my classifiers of denoised digits",
                                                 input="teacher", primary=True))
    return {"experiment": "mine", "runs": results.runs_table({}, seeds, history)}


@pytest.fixture
def researchers_workdir(tmp_path, monkeypatch) -> pathlib.Path:
    folder = tmp_path / "research"
    folder.mkdir()
    (folder / "mymodels.py").write_text(textwrap.dedent(TEACHER_AND_STUDENT))
    monkeypatch.syspath_prepend(str(folder))
    config = ml_collections.ConfigDict({"experiment": "mine", "seed": 3, "tensorboard": False})
    with workdir_lib.Workdir.open(tmp_path / "w", "mine") as wd:
        cli.run_in_workdir(wd, researchers_run, config, "python my_experiment.py")
    yield tmp_path / "w"
    sys.modules.pop("mymodels", None)


def test_a_researchers_models_are_evaluated_with_no_edit_of_evaluate(researchers_workdir, tmp_path, capsys):
    w = researchers_workdir
    x = images(tmp_path)
    assert sorted(trained.declarations(w)) == ["student", "teacher"]
    assert evaluate.main(["--workdir", str(w), "--images", str(x), "--out", str(tmp_path / "y.npy"), "--seed", "1"]) == 0
    assert "student" in capsys.readouterr().out  # the primary one, by default
    teacher, tp = trained.restore_declared(w, "teacher", trained.declarations(w)["teacher"], 1)
    student, sp = trained.restore_declared(w, "student", trained.declarations(w)["student"], 1)
    xf = np.load(x)[..., None].astype(np.float32) / 255.0
    denoised = jax.jit(lambda tp, xf: jax.nn.sigmoid(teacher.apply(tp, xf)))(tp, xf)  # one program each
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.argmax(jax.jit(student.apply)(sp, denoised), -1))
    # the teacher by name: its denoised images
    assert evaluate.main(["--workdir", str(w), "--images", str(x), "--out", str(tmp_path / "d.npy"),
                          "--model", "teacher", "--seed", "1"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), np.asarray(denoised)[..., 0], atol=1e-6)


def test_a_model_the_workdir_does_not_declare_is_one_line_listing_the_declared(researchers_workdir, tmp_path, capsys):
    x = str(images(tmp_path))
    args = ["--workdir", str(researchers_workdir), "--images", x]
    assert evaluate.main([*args, "--model", "params"]) == 2
    assert "--model params: this workdir declares student, teacher" in one_line(capsys)
    assert evaluate.main([*args, "--curve", "noisy"]) == 2
    assert "--curve 'noisy'" in one_line(capsys)
    assert evaluate.main([*args, "--level", "0.2"]) == 2
    assert "trained without noise levels" in one_line(capsys)
    assert evaluate.main([*args, "--seed", "2"]) == 2
    assert "this workdir has runs 0..1 of student" in one_line(capsys)


def test_several_models_and_no_primary_ask_for_a_model(researchers_workdir, tmp_path, capsys):
    path = researchers_workdir / "student" / trained.DECLARATION
    path.write_text(json.dumps({**json.loads(path.read_text()), "primary": False}))
    assert evaluate.main(["--workdir", str(researchers_workdir), "--images", str(images(tmp_path))]) == 2
    assert "declares several models (student, teacher): choose one with --model" in one_line(capsys)


TINY = ["--config.seeds=2", "--config.epochs=2", "--config.model.hidden=[16]", "--config.checkpoint_seconds=0",
        "--config.batch_size=64", "--config.n_val=100"]


@pytest.mark.slow
def test_declarations_survive_a_resume(synthetic_mnist, tmp_path, monkeypatch, capsys):
    """A run interrupted after its params were saved, resumed, then rerun in full: the committed
    declaration is the one an uninterrupted run writes, and evaluate applies it."""
    fresh, w = tmp_path / "fresh", tmp_path / "w"
    assert mlp.main(["--workdir", str(fresh), *TINY]) == 0
    expected = json.loads((fresh / "params" / trained.DECLARATION).read_text())
    assert expected["role"] == "classifier" and expected["primary"] and len(expected["runs"]) == 2
    assert expected["model"]["kind"] == "mlp" and expected["model"]["hidden"] == [16]

    real = results.classifier_summary

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(results, "classifier_summary", interrupted)
    assert mlp.main(["--workdir", str(w), *TINY]) == 130
    run_dir = w / workdir_lib.META / workdir_lib.RUN
    assert json.loads((run_dir / "params" / trained.DECLARATION).read_text()) == expected
    assert not (w / "params").exists()  # nothing committed
    monkeypatch.setattr(results, "classifier_summary", real)
    for _ in range(2):  # the resumed run, then a rerun from the committed checkpoints
        assert mlp.main(["--workdir", str(w), *TINY]) == 0
        assert json.loads((w / "params" / trained.DECLARATION).read_text()) == expected
    capsys.readouterr()
    x = images(tmp_path)
    for workdir, out in ((w, "a.npy"), (fresh, "b.npy")):
        assert evaluate.main(["--workdir", str(workdir), "--images", str(x), "--out", str(tmp_path / out),
                              "--seed", "1"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))

    # a workdir of older code: its params declare nothing; the config's model block stands in for them
    (w / "params" / trained.DECLARATION).unlink()
    assert evaluate.main(["--workdir", str(w), "--images", str(x), "--out", str(tmp_path / "c.npy"), "--seed", "1"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), np.load(tmp_path / "b.npy"))


def test_params_that_declare_nothing_and_no_model_block_say_how_to_regenerate(tmp_path, capsys):
    """Params of older code in a workdir whose config has no `model` block (noise_accuracy's):
    one line naming them and the rerun that declares them."""
    model = models.MLP((8,))
    params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))))(jax.random.split(jax.random.key(0), 2))
    trained.write_json(tmp_path / "config.json", {"experiment": "noise_accuracy", "classifier": {"kind": "mlp"}})
    trained.write_json(tmp_path / "metrics.json", {"runs": [{"curve": "clean"}, {"curve": "clean"}]})
    trained.save_params(tmp_path, params, "clean_params")
    assert evaluate.main(["--workdir", str(tmp_path), "--images", str(images(tmp_path)), "--curve", "clean"]) == 2
    err = one_line(capsys)
    assert "(clean_params) declare no model" in err and "python -m experiments.noise_accuracy --workdir" in err
    shutil.rmtree(tmp_path / "clean_params")
    assert evaluate.main(["--workdir", str(tmp_path), "--images", str(images(tmp_path))]) == 2
    assert "saves no trained model" in one_line(capsys)


def test_a_damaged_declaration_is_one_line(researchers_workdir, tmp_path, capsys):
    (researchers_workdir / "teacher" / trained.DECLARATION).write_text('{"model": {}}')
    assert evaluate.main(["--workdir", str(researchers_workdir), "--images", str(images(tmp_path))]) == 1
    assert "is not a declaration of trained params" in one_line(capsys)
    (researchers_workdir / "teacher" / trained.DECLARATION).write_text('{"model": ')  # damaged like its checkpoint
    assert evaluate.main(["--workdir", str(researchers_workdir), "--images", str(images(tmp_path))]) == 1
    assert "run the experiment again on this workdir" in one_line(capsys)
