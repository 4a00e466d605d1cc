"""Optimizers by name: any optax optimizer, each numeric argument a traced hyperparameter."""

import inspect

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mnist_jax import config as config_lib
from mnist_jax import models, sweep, tasks, train, training

TASK = tasks.classifier_task(models.MLP((16,)))


def plain_optax(spec: train.TrainSpec, hp: dict, n_train: int) -> optax.GradientTransformation:
    """sgd, momentum and adam as plain optax calls on the spec's learning-rate schedule: the
    reference that the injected optimizers match bit for bit."""
    lr = train.learning_rate_schedule(spec, hp["learning_rate"], n_train)
    if spec.optimizer == "momentum":
        return optax.sgd(lr, momentum=hp["momentum"])
    return {"sgd": optax.sgd, "adam": optax.adam}[spec.optimizer](lr)


# each optimizer of the study's configs once, and each schedule once
@pytest.mark.slow
@pytest.mark.parametrize("optimizer, schedule", [("sgd", "constant"), ("momentum", "cosine"), ("adam", "warmup_cosine")])
def test_injected_optimizer_trains_bit_for_bit_as_plain_optax(tiny, monkeypatch, optimizer, schedule):
    spec = train.TrainSpec(epochs=2, batch_size=32, optimizer=optimizer, schedule=schedule)
    hp = {"learning_rate": jnp.float32(3e-3 if optimizer == "adam" else 0.05)}
    if optimizer == "momentum":
        hp["momentum"] = jnp.float32(0.9)

    def trained():
        return jax.jit(lambda hp: train.run(TASK, spec, hp, 0, tiny))(hp)

    state, history = trained()
    assert isinstance(state.opt_state, optax.InjectStatefulHyperparamsState)
    assert sorted(state.opt_state.hyperparams) == sorted(hp)  # learning_rate (and momentum) are in the state
    monkeypatch.setattr(train, "make_optimizer", plain_optax)
    plain_state, plain_history = trained()
    assert not isinstance(plain_state.opt_state, optax.InjectStatefulHyperparamsState)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(plain_state.params), strict=True):
        assert np.array_equal(a, b)
    for k in plain_history:
        assert np.array_equal(history[k], plain_history[k]), k


@pytest.mark.slow
def test_every_optimizer_takes_every_numeric_argument_traced_and_vmapped():
    params = {"w": jnp.full((3, 2), 0.5), "b": jnp.full(2, 0.3)}
    grads = {"w": jnp.full((3, 2), 0.1), "b": jnp.full(2, -0.2)}

    def defaults(name):  # optax's default, or 0.5 for an argument that is off by default (sgd's momentum)
        signature = inspect.signature(train.optimizer_factory(name)).parameters
        return {a: 0.5 if signature[a].default is None else signature[a].default for a in train.optimizer_args(name)}

    def steps(hp):  # two updates of every optimizer (rprop's first is 0), each argument given as a traced value
        out = {}
        for name in train.OPTIMIZERS:
            spec = train.TrainSpec(epochs=1, optimizer=name, optimizer_args=train.optimizer_args(name))
            opt = train.make_optimizer(spec, {"learning_rate": hp["learning_rate"], **hp[name]}, 4)
            _, state = opt.update(grads, opt.init(params), params)
            updates, state = opt.update(grads, state, params)
            out[name] = (updates, state.hyperparams)
        return out

    hp = {"learning_rate": jnp.array([0.1, 0.01]),
          **{name: {a: jnp.array([v, v], jnp.float32) for a, v in defaults(name).items()} for name in train.OPTIMIZERS}}
    out = jax.jit(jax.vmap(steps))(hp)
    for name, (updates, hyperparams) in out.items():
        assert sorted(hyperparams) == sorted(["learning_rate", *train.optimizer_args(name)]), name
        leaves = jax.tree_util.tree_leaves(updates)
        assert all(np.all(np.isfinite(leaf)) for leaf in leaves), name
        assert any(np.any(leaf[0] != leaf[1]) for leaf in leaves), name  # each run its own learning rate


def test_optimizers_are_optax_by_name_plus_momentum():
    assert {"sgd", "momentum", "adam", "adamw", "rmsprop", "lion", "adafactor"} <= set(train.OPTIMIZERS)
    assert not {"lbfgs", "scale_by_adam", "chain"} & set(train.OPTIMIZERS)
    assert train.optimizer_args("adamw") == ("b1", "b2", "eps", "eps_root", "weight_decay")  # no mask, mu_dtype, nesterov
    assert train.optimizer_args("sgd") == train.optimizer_args("momentum") == ("momentum",)
    assert train.optimizer_args("rmsprop") == ("decay", "eps", "initial_scale", "momentum")
    assert train.optimizer_hparams(train.TrainSpec(epochs=1, optimizer="momentum")) == ("learning_rate", "momentum")
    assert train.optimizer_hparams(train.TrainSpec(epochs=1, optimizer="adam")) == ("learning_rate",)
    adam_b2 = train.TrainSpec(epochs=1, optimizer="adam", optimizer_args=("b2",))
    assert train.expected_hparams(TASK, adam_b2) == ("learning_rate", "b2")
    with pytest.raises(ValueError, match=r"'adam' takes no argument \['momentum'\]"):
        train.optimizer_hparams(train.TrainSpec(epochs=1, optimizer="adam", optimizer_args=("momentum",)))
    with pytest.raises(ValueError, match="optimizer must be one of .*line search"):
        train.optimizer_args("lbfgs")


def test_train_spec_traces_the_optimizer_arguments_the_config_sets():
    config = ml_collections.ConfigDict({"epochs": 2, "batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-3,
                                        "weight_decay": 1e-4, "b2": 0.99, "momentum": 0.9})
    spec = training.train_spec(config)
    assert spec.optimizer_args == ("b2", "weight_decay")  # adamw takes no momentum; eps keeps optax's default
    assert training.hparams(config, TASK, spec, weight_decay=[0.0, 1e-2]) == {
        "learning_rate": [1e-3], "b2": [0.99], "weight_decay": [0.0, 1e-2]}
    config.optimizer = "adam"
    assert training.train_spec(config).optimizer_args == ("b2",)
    config.sweep = {"eps": [1e-8, 1e-6]}  # a swept argument needs no field of its own
    assert training.train_spec(config).optimizer_args == ("b2", "eps")


@pytest.mark.parametrize("field, value", [("b1", 1.0), ("b2", -0.1), ("eps", 0.0), ("weight_decay", -1e-4),
                                          ("eps_root", float("nan")), ("trust_coefficient", float("inf")),
                                          ("optimizer", "lbfgs")])
def test_config_refuses_bad_optimizer_values(field, value):
    config = ml_collections.ConfigDict({"optimizer": "adamw", field: value})
    with pytest.raises(config_lib.ConfigError, match=f"config.{field}="):
        config_lib.validate(config)


def test_config_takes_any_optax_optimizer_and_its_arguments():
    config_lib.validate(ml_collections.ConfigDict({"optimizer": "lion", "b1": 0.95, "weight_decay": 0.0,
                                                   "weight_decay_values": [0.0, 1e-2], "decay_offset": 3}))


@pytest.mark.slow
def test_adamw_weight_decay_swept_in_one_program_equals_runs_one_at_a_time(tiny):
    spec = train.TrainSpec(epochs=2, batch_size=32, optimizer="adamw", optimizer_args=("weight_decay",))
    decays = [0.0, 1e-4, 1e-2]
    hp, seeds = sweep.grid([0, 1], learning_rate=[1e-2], weight_decay=decays)
    one = jax.jit(lambda hp, seed: train.run(TASK, spec, hp, seed, tiny))
    grid_state, grid_history = jax.jit(jax.vmap(one))(hp, seeds)  # six runs, one program
    finals = []
    for r in range(len(seeds)):
        state, history = one({k: jnp.float32(v[r]) for k, v in hp.items()}, seeds[r])
        np.testing.assert_allclose(grid_history["loss"][r], history["loss"], rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(grid_state.params), jax.tree_util.tree_leaves(state.params), strict=True):
            np.testing.assert_allclose(np.asarray(a)[r], b, rtol=1e-4, atol=1e-6)
        finals.append(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(state.params)]))
    for seed in (0, 1):  # runs seed, seed + 2, seed + 4: the three weight decays
        by_decay = finals[seed::2]
        assert not np.array_equal(by_decay[0], by_decay[1]) and not np.array_equal(by_decay[1], by_decay[2])
        assert np.linalg.norm(by_decay[2]) < np.linalg.norm(by_decay[0])  # decay shrinks the weights


@pytest.mark.slow
def test_an_injected_optimizer_resumes_from_its_checkpoint_to_the_same_numbers(tiny, tmp_path):
    spec = train.TrainSpec(epochs=2, batch_size=64, optimizer="adamw", schedule="warmup_cosine",
                           optimizer_args=("b1", "weight_decay"))
    hp, seeds = sweep.grid([0, 1], learning_rate=[1e-2], b1=[0.8], weight_decay=[1e-2])
    straight = sweep.train_grid(TASK, spec, hp, seeds, tiny)

    class Interrupt(Exception):
        pass

    def stop(n, metrics):
        raise Interrupt

    with pytest.raises(Interrupt):
        sweep.train_grid(TASK, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path), progress=stop)
    resumed = sweep.train_grid(TASK, spec, hp, seeds, tiny, checkpoint_dir=str(tmp_path))
    assert resumed.resumed_from_epoch == 1
    assert np.array_equal(resumed.state.opt_state.hyperparams["weight_decay"], hp["weight_decay"])
    for k in straight.history:
        assert np.array_equal(straight.history[k], resumed.history[k]), k
