"""Precision is part of an experiment: the compute dtype reaches every built-in model and keeps
float32 params, float32 keeps the plain float32 program bit for bit, the matmul precision is set
while an experiment runs, and metrics.json and REPORT.md say what the backend did with both."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_splits

from experiments import mlp as mlp_experiment
from experiments import variance_sources
from mnist_jax import models, precision, sweep, tasks, train, trained, training
from mnist_jax.config import ConfigError, load_config_file, validate

BLOCKS = {
    "mlp": {"kind": "mlp", "hidden": (16,), "dropout": True},
    "cnn": {"kind": "cnn", "filters": (4, 4), "dense": 8, "dense_dropout": True},
    "dae": {"kind": "dae", "hidden": (16,), "latent": 8},
    "vae": {"kind": "vae", "hidden": (16,), "latent": 2, "conv": True, "conditional": True},
}


def _apply(model, params, x):
    kwargs = {"train": True, "dropout_rate": 0.25} if models.takes_train(model) else {}
    args = models.init_inputs(model, x)
    return model.apply(params, *args, rngs={"dropout": jax.random.key(3)}, **kwargs)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BLOCKS))
def test_bfloat16_compute_reaches_every_builtin_model_and_keeps_float32_params_and_outputs(kind):
    x = jnp.asarray(synthetic_splits(16, 8).train_x[:8], jnp.float32) / 255
    plain = models.from_config(BLOCKS[kind])
    low = models.from_config(BLOCKS[kind], "bfloat16")
    assert plain.dtype is None and low.dtype == jnp.bfloat16
    params = jax.jit(plain.init)(jax.random.key(0), *models.init_inputs(plain, x))  # one program, not one per operation
    low_shapes = jax.eval_shape(low.init, jax.random.key(0), *models.init_inputs(low, x))  # the dtypes, nothing compiled
    assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(low_shapes))

    def loss(model, p):
        return sum(jnp.sum(jnp.square(o)) for o in jax.tree_util.tree_leaves(_apply(model, p, x)))

    out_plain = _leaves(jax.jit(lambda p: _apply(plain, p, x))(params))
    out_low, grads = jax.jit(lambda p: (_apply(low, p, x), jax.grad(lambda q: loss(low, q))(p)))(params)
    out_low = _leaves(out_low)
    assert all(o.dtype == np.float32 for o in out_low)  # losses and argmax stay float32
    assert any(not np.array_equal(a, b) for a, b in zip(out_plain, out_low, strict=True))
    assert all(np.allclose(a, b, rtol=0.1, atol=0.1 * np.abs(a).max()) for a, b in zip(out_plain, out_low, strict=True))
    assert all(g.dtype == np.float32 and np.isfinite(g).all() for g in _leaves(grads))
    # the products really run in bfloat16
    assert "bf16" in str(jax.make_jaxpr(lambda p: _apply(low, p, x))(params))
    assert "bf16" not in str(jax.make_jaxpr(lambda p: _apply(plain, p, x))(params))


def _mlp_forward(params, x):
    """The study's dense net written with plain float32 jnp: what a model without a dtype computes."""
    h = x.reshape(x.shape[0], -1)
    layers = [params["params"][f"Dense_{i}"] for i in range(len(params["params"]))]
    for layer in layers[:-1]:
        h = jnp.maximum(h @ layer["kernel"] + layer["bias"], 0)
    return h @ layers[-1]["kernel"] + layers[-1]["bias"]


def test_float32_compute_is_the_plain_float32_program_bit_for_bit():
    x = jnp.asarray(synthetic_splits(16, 8).train_x[:8], jnp.float32) / 255
    model = models.from_config({"kind": "mlp", "hidden": (32, 16)}, "float32")
    assert model == models.from_config({"kind": "mlp", "hidden": (32, 16)}) and model.dtype is None
    params = jax.jit(model.init)(jax.random.key(0), x)
    # both sides compiled alike, whole: one program each, not one per operation
    assert np.array_equal(jax.jit(model.apply)(params, x), jax.jit(_mlp_forward)(params, x))
    # the same jaxpr as a module built without a dtype, for every built-in model
    for block in BLOCKS.values():
        cls = models.model_class(block["kind"])
        fields = {k: v for k, v in block.items() if k != "kind"}
        a, b = models.from_config(block, "float32"), cls(**fields)
        p = jax.eval_shape(a.init, jax.random.key(0), *models.init_inputs(a, x))  # a jaxpr needs the shapes alone
        assert str(jax.make_jaxpr(lambda p, m=a: _apply(m, p, x))(p)) == str(jax.make_jaxpr(lambda p, m=b: _apply(m, p, x))(p))


def _train_tiny(compute_dtype: str | None):
    """A 2-run, 2-epoch grid of the study's net on synthetic data, with `compute_dtype` set on the
    config (None: a config without the field, as every config was before it existed), trained:
    (task, spec, hp, seeds, its result)."""
    task, spec, hp, seeds = _tiny_grid(compute_dtype)
    return task, spec, hp, seeds, sweep.train_grid(task, spec, hp, seeds, synthetic_splits())


def _tiny_grid(compute_dtype: str | None):
    """`_train_tiny`'s grid, untrained: (task, spec, hp, seeds)."""
    c = load_config_file("configs/mlp.py:quick")
    c.epochs, c.seeds = 2, 2
    if compute_dtype is None:
        del c["compute_dtype"]
    else:
        c.compute_dtype = compute_dtype
    _, task = tasks.classifier_from_config(c)
    hp, seeds = training.swept_grid(c, task)
    return task, training.train_spec(c), hp, seeds


@pytest.mark.slow
def test_bfloat16_training_changes_the_numbers_and_float32_keeps_them():
    *_, before = _train_tiny(None)
    *_, same = _train_tiny("float32")
    *_, low = _train_tiny("bfloat16")
    for a, b, c in zip(_leaves(before.state.params), _leaves(same.state.params), _leaves(low.state.params), strict=True):
        assert np.array_equal(a, b) and c.dtype == np.float32
    assert not all(np.array_equal(a, c) for a, c in zip(_leaves(before.state.params), _leaves(low.state.params),
                                                        strict=True))
    for k in ("loss", "test_accuracy"):
        assert np.array_equal(before.history[k], same.history[k])
    assert not np.array_equal(before.history["loss"], low.history["loss"])
    assert np.all(low.history["test_accuracy"][:, -1] > 0.5)  # it still learns


def test_one_bit_changes_exactly_one_float32_weight_by_one_ulp_under_bfloat16_compute():
    task, spec, hp, seeds = _tiny_grid("bfloat16")
    assert jnp.dtype(tasks.classifier_from_config(
        load_config_file("configs/mlp.py:quick"), compute_dtype="bfloat16")[0].dtype) == jnp.bfloat16
    hp0 = {k: jnp.asarray(v[0]) for k, v in hp.items()}
    init_params = jax.jit(lambda hp, seeds: train.init_state(task, spec, hp, seeds, 256).params)  # both compiled alike
    plain = init_params(hp0, {s: np.int32(0) for s in train.STREAMS})
    flipped = init_params(hp0, {**{s: np.int32(0) for s in train.STREAMS}, "one_bit": np.int32(77)})
    a, b = jax.tree_util.tree_leaves_with_path(plain), _leaves(flipped)
    differ = [i for i, ((_, x), y) in enumerate(zip(a, b, strict=True)) if not np.array_equal(x, y)]
    assert len(differ) == 1 and a[differ[0]][0][-1].key == "kernel"  # one leaf: the first kernel
    x, y = np.asarray(a[differ[0]][1]).ravel(), b[differ[0]].ravel()
    assert x.dtype == y.dtype == np.float32 and np.flatnonzero(x != y).tolist() == [77]
    assert abs(int(x.view(np.int32)[77]) - int(y.view(np.int32)[77])) == 1


def test_matmul_precision_is_set_while_inside_and_restored():
    before = jax.config.jax_default_matmul_precision
    with precision.matmul_precision("float32"):
        assert jax.config.jax_default_matmul_precision == "float32"
    assert jax.config.jax_default_matmul_precision == before
    with precision.matmul_precision("default"):
        assert jax.config.jax_default_matmul_precision == before


def test_what_the_backend_does_with_the_precision():
    cpu = precision.describe("float32", "tensorfloat32", "cpu")
    assert cpu["float32_products"] == "float32" and "ignores" in cpu["backend_note"]
    assert precision.describe("float32", "default", "gpu", 9.0)["float32_products"] == "TF32"
    assert precision.describe("float32", "float32", "gpu", 9.0)["float32_products"] == "float32"
    assert precision.describe("float32", "default", "gpu", 7.5)["float32_products"] == "float32"
    low = precision.describe("bfloat16", "default", "gpu", 8.0)
    assert low["compute_dtype"] == "bfloat16" and "bfloat16" in low["backend_note"]


@pytest.mark.parametrize("field,value", [("compute_dtype", "float16"), ("matmul_precision", "highest")])
def test_a_bad_precision_is_one_line_config_error(field, value, tmp_path, capsys):
    assert mlp_experiment.main(["--workdir", str(tmp_path / "w"), f"--config.{field}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"config.{field}" in err and "bfloat16" in err


def test_a_model_without_a_dtype_field_cannot_compute_in_bfloat16():
    class Plain(models.nn.Module):
        @models.nn.compact
        def __call__(self, x):
            return models.nn.Dense(10)(x.reshape(x.shape[0], -1))

    models.Plain = Plain  # found by name like a researcher's module
    try:
        assert isinstance(models.from_config({"kind": "mnist_jax.models:Plain"}), Plain)
        with pytest.raises(ConfigError, match="no `dtype` field"):
            models.from_config({"kind": "mnist_jax.models:Plain"}, "bfloat16")
        with pytest.raises(ConfigError, match="compute_dtype"):
            models.from_config({"kind": "mlp", "dtype": "bfloat16"})
    finally:
        del models.Plain


@pytest.mark.slow
def test_metrics_and_report_name_the_precision(synthetic_mnist, tmp_path):
    args = ["--workdir", str(tmp_path), "--config", "configs/mlp.py:quick", "--config.seeds=2", "--config.epochs=1",
            "--config.compute_dtype=bfloat16", "--config.matmul_precision=float32", "--config.tensorboard=False"]
    assert mlp_experiment.main(args) == 0
    prov = json.loads((tmp_path / "metrics.json").read_text())["provenance"]
    p = prov["precision"]
    assert p["compute_dtype"] == "bfloat16" and p["matmul_precision"] == "float32"
    assert p["float32_products"] == precision.float32_products("float32", jax.default_backend())
    report = (tmp_path / "REPORT.md").read_text()
    assert "compute dtype bfloat16, matmul precision float32" in report and p["backend_note"] in report
    # evaluate applies the trained net as it computed in training: bfloat16 labels, not float32 ones
    from experiments import evaluate

    images = np.asarray(synthetic_mnist.test_x[:40])
    np.save(tmp_path / "x.npy", images)
    assert evaluate.main(["--workdir", str(tmp_path), "--images", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    model, params = trained.restore_run(tmp_path, config["model"], 0, compute_dtype="bfloat16")
    logits = tasks.classifier_logits(model, params, jnp.asarray(images))
    assert model.dtype == jnp.bfloat16 and np.array_equal(np.load(tmp_path / "y.npy"), np.argmax(logits, -1))


def test_variance_sources_config_rules_for_the_bfloat16_arms():
    c = load_config_file("configs/variance_sources.py:quick")
    assert {"precision", "one_bit_bf16"} <= set(c.sources)
    c.compute_dtype = "bfloat16"
    with pytest.raises(ConfigError, match="compute_dtype"):
        validate(c)
    c = load_config_file("configs/variance_sources.py:quick")
    c.sources = ("all", "one_bit_bf16")
    with pytest.raises(ConfigError, match="'precision' must be among them"):
        validate(c)
    c = load_config_file("configs/variance_sources.py:quick")
    c.seeds, c.precision_seeds = 4, 10
    assert variance_sources.reduced_runs(c) == 4 and variance_sources.runs(c) == 5 * 4
    c.sources = ("init", "all")  # the arms left out on the command line: their size is no error
    assert variance_sources.runs(c) == 2 * 4 and "precision_seeds" in variance_sources.reads(c)


def test_the_bfloat16_arms_repeat_the_first_runs_of_their_float32_sources():
    full, full_source = variance_sources.source_seeds(["one_bit", "all"], 5, 10, 1000)
    low, low_source = variance_sources.reduced_seeds(["one_bit", "all", "precision", "one_bit_bf16"], 5, 3, 10, 1000)
    assert low_source == ["precision"] * 3 + ["one_bit_bf16"] * 3
    for k in full:
        assert np.array_equal(low[k][:3], full[k][5:8]) and np.array_equal(low[k][3:], full[k][:3]), k


@pytest.mark.slow
def test_variance_sources_has_the_precision_arm_and_one_bit_at_both_precisions(synthetic_mnist, tmp_path):
    args = ["--workdir", str(tmp_path), "--config", "configs/variance_sources.py:quick", "--config.epochs=1",
            "--config.sources=['one_bit', 'all', 'precision', 'one_bit_bf16']", "--config.tensorboard=False",
            "--config.test_resamples=20"]
    assert variance_sources.main(args) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    rows = m["per_source"]
    assert rows["precision"]["compute_dtype"] == "bfloat16" and rows["one_bit"]["compute_dtype"] == "float32"
    assert rows["one_bit_bf16"]["runs"] == 3 and len(m["bfloat16_runs"]) == 6 and len(m["runs"]) == 6
    arm = m["precision_arm"]
    full = [r["test_accuracy"] for r in m["runs"] if r["source"] == "all"]
    low = [r["test_accuracy"] for r in m["bfloat16_runs"] if r["source"] == "precision"]
    assert [r["init"] for r in m["bfloat16_runs"][:3]] == [r["init"] for r in m["runs"] if r["source"] == "all"]
    assert arm["paired_differences_pct"] == pytest.approx([100 * (b - a) for a, b in zip(full, low, strict=True)])
    assert set(arm["timing"]) == {"float32", "bfloat16"} and arm["timing"]["bfloat16"]["steady_epoch_seconds"] > 0
    assert isinstance(arm["one_bit_shielded"], bool)
    assert m["verdict"]["text"].startswith("Measured in float32 compute") and "one_bit_bf16" not in m["verdict"]["text"]
    full_rows = [i for i, r in enumerate(m["runs"]) if r["source"] == "all"]
    loss, low_loss = np.asarray(m["history"]["loss"])[full_rows], np.asarray(m["bfloat16_history"]["loss"])[:3]
    assert not np.array_equal(loss, low_loss) and np.allclose(loss, low_loss, rtol=0.05)  # same seeds, other precision
    report = (tmp_path / "REPORT.md").read_text()
    assert "**Precision as a source**" in report and "s per run-epoch" in report
    assert report.count("compute dtype float32, matmul precision default") == 1  # once, in the provenance line


@pytest.mark.slow
def test_precision_benchmark_runs_on_a_tiny_grid(synthetic_mnist, capsys):
    from benchmarks import precision as bench

    out = bench.main(["--runs", "2", "--repeats", "1", "--hidden", "16"])
    assert "| bfloat16 |" in capsys.readouterr().out
    assert set(out["seconds_per_epoch"]) == {"float32", "bfloat16"}
    assert all(v > 0 for v in out["seconds_per_epoch"].values())
