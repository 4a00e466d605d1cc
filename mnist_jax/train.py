"""Training as pure functions: one whole run is `run(hp, seed, data) -> (state, history)`.

Epochs are a `lax.scan`; the batches of an epoch are a `lax.scan` over a per-run
permutation, with the final partial batch masked so every example counts once per epoch;
evaluation happens inside the epoch scan. Hyperparameters that keep shapes (`hp`, a dict of
scalars: learning rate, L2 factor, dropout rate, noise level, ...) are traced, so
`jax.vmap` over runs sweeps them. What changes shapes or code (widths, optimizer kind,
epochs, batch size) is the static `TrainSpec`.

A run is a function of its seed: the params are drawn from `split(key(seed))[0]`, and the
batch order and every per-step random draw of epoch e come from `fold_in(split(...)[1], e)`,
so training in chunks of epochs gives exactly the numbers of one uninterrupted scan.

Named random streams: a run's randomness comes from separate streams (`STREAMS`: init, order,
dropout, noise, augment), each computed by that same chain from its own seed. A run's `seed` is
either one integer, which every stream takes (every number exactly as before streams existed),
or a dict {stream: seed} naming every stream, so runs that differ in one source only are vmapped
together. The dict may also hold two perturbations that keep shapes (`PERTURBATIONS`, -1 = off):
`one_bit`, the index of the initial weight of the first kernel whose lowest mantissa bit is
flipped, and `bootstrap`, the seed of a resampling with replacement of the training set.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_jax.data import Splits
from mnist_jax.losses import l2_penalty

Params = Any
HParams = dict[str, jax.Array]

# The random streams of a run. The loss and evaluation of a task take a key per step stream.
STREAMS = ("init", "order", "dropout", "noise", "augment")
STEP_STREAMS = ("dropout", "noise", "augment")
# Shape-keeping perturbations of a run, given beside the stream seeds; -1 = off.
PERTURBATIONS = ("one_bit", "bootstrap")
Seeds = Any  # an integer seed (every stream takes it), or {stream or perturbation: integer}


class Batch(NamedTuple):
    """One training batch: uint8 images (B, 28, 28, 1), int32 labels (B,), mask (B,), and `epoch`,
    how far the run has trained when it takes this step, in epochs (the epoch's index plus the share
    of its batches already taken): schedules inside a loss, such as a KL warm-up, read it."""

    x: jax.Array
    y: jax.Array
    mask: jax.Array
    epoch: jax.Array | float = 0.0


@dataclasses.dataclass(frozen=True)
class Penalty:
    """A term added to every batch's loss: `fn(params, hp[hparam]) -> scalar` (L2, say)."""

    hparam: str
    fn: Callable[[Params, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Constraint:
    """Applied to the params after every update: `fn(params, hp[hparam]) -> params` (max-norm, say)."""

    hparam: str
    fn: Callable[[Params, jax.Array], Params]


class HParamError(ValueError):
    """The traced hyperparameters of a run are not the ones its task and optimizer read."""


@dataclasses.dataclass(frozen=True)
class Task:
    """What is trained, as pure functions of (params, ..., hp).

    init(key, hp) -> params                       (key: the run's `init` stream)
    loss(params, batch, keys, hp) -> (per-example loss (B,), {metric: per-example (B,)})
    evaluate(params, data, hp, keys) -> {metric: scalar}, run after every epoch

    `keys` maps each of `STEP_STREAMS` to this step's key of that stream; a task takes a stream's
    key with `stream_key(keys, name)`, which also accepts one plain key standing for every stream.

    `hparams` names every entry of `hp` that init, loss and evaluate read; `penalties` add terms
    on the params to the loss and `constraints` act on the params after each update, each reading
    its own entry. A run's `hp` holds exactly these names plus its optimizer's (`check_hparams`).
    `vmap_slow_on`: backends on which a vmapped step costs more per run than a single run's, so
    the runs of this task train one at a time there (`sweep.default_run_chunk`).
    """

    init: Callable[[jax.Array, HParams], Params]
    loss: Callable[[Params, Batch, jax.Array, HParams], tuple[jax.Array, dict]]
    evaluate: Callable[[Params, Splits, HParams, jax.Array], dict]
    hparams: tuple[str, ...] = ()
    penalties: tuple[Penalty, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    vmap_slow_on: tuple[str, ...] = ()

    def with_hooks(self, *hooks: Penalty | Constraint) -> Task:
        """This task with more penalties and constraints."""
        return dataclasses.replace(
            self, penalties=self.penalties + tuple(h for h in hooks if isinstance(h, Penalty)),
            constraints=self.constraints + tuple(h for h in hooks if isinstance(h, Constraint)))


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The static part of a run: changing any field compiles a new program."""

    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"  # a name of OPTIMIZERS: any optax optimizer, or "momentum" (SGD with momentum)
    schedule: str = "constant"  # constant | cosine | warmup_cosine (1 epoch warm-up)
    # the optimizer's numeric arguments given as traced hyperparameters (`optimizer_args` names
    # them all); every other argument keeps optax's default
    optimizer_args: tuple[str, ...] = ()

    def steps_per_epoch(self, n_train: int) -> int:
        return math.ceil(n_train / self.batch_size)


# optax functions that take `learning_rate` first but cannot train in `train_epoch`'s step
_UNSUPPORTED = {"lbfgs": "its update needs the loss function for a line search",
                "noisy_sgd": "its noise comes from a key of its own, not from the run's random streams"}
# Optimizers that need an argument optax leaves optional: "momentum" is SGD with a momentum.
_REQUIRED_ARGS = {"momentum": ("momentum",)}


def _optax_optimizers() -> dict[str, Callable[..., optax.GradientTransformation]]:
    """{name: factory} of every public optax function whose first argument is `learning_rate`,
    less the `scale_by_*` transformations and `_UNSUPPORTED`."""
    found = {}
    for name in dir(optax):
        fn = getattr(optax, name)
        if name.startswith(("_", "scale_by_")) or name in _UNSUPPORTED or not inspect.isfunction(fn):
            continue
        if next(iter(inspect.signature(fn).parameters), None) == "learning_rate":
            found[name] = fn
    return found


_FACTORIES = {**_optax_optimizers(), "momentum": optax.sgd}
OPTIMIZERS = tuple(sorted(_FACTORIES))
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def optimizer_factory(name: str) -> Callable[..., optax.GradientTransformation]:
    """The optax function that builds optimizer `name`; ValueError for a name not in OPTIMIZERS."""
    if name not in _FACTORIES:
        why = f" ({_UNSUPPORTED[name]})" if name in _UNSUPPORTED else ""
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}{why}")
    return _FACTORIES[name]


def _admits_float(annotation: Any) -> bool:
    return annotation is float or float in typing.get_args(annotation)


def optimizer_args(name: str) -> tuple[str, ...]:
    """The numeric arguments optimizer `name` takes besides the learning rate, in signature order:
    those whose type admits a float and whose default is a number (not a bool) or None (a feature
    that a value switches on, such as sgd's momentum). Masks, dtypes and flags are not among them."""
    params = list(inspect.signature(optimizer_factory(name), eval_str=True).parameters.values())[1:]
    return tuple(p.name for p in params if _admits_float(p.annotation) and not isinstance(p.default, bool)
                 and (p.default is None or isinstance(p.default, (int, float))))


def optimizer_hparams(spec: TrainSpec) -> tuple[str, ...]:
    """The traced hyperparameters the optimizer of `spec` reads: "learning_rate", then its
    required arguments and its `optimizer_args`. ValueError for an argument the optimizer lacks."""
    takes = optimizer_args(spec.optimizer)
    unknown = [a for a in spec.optimizer_args if a not in takes]
    if unknown:
        raise ValueError(f"optimizer {spec.optimizer!r} takes no argument {unknown}: its numeric arguments are {list(takes)}")
    return ("learning_rate", *dict.fromkeys((*_REQUIRED_ARGS.get(spec.optimizer, ()), *spec.optimizer_args)))


def expected_hparams(task: Task, spec: TrainSpec) -> tuple[str, ...]:
    """Every name a run's `hp` must hold: the task's, its hooks', the optimizer's."""
    names = [*optimizer_hparams(spec), *task.hparams, *(h.hparam for h in task.penalties + task.constraints)]
    return tuple(dict.fromkeys(names))


def check_hparams(task: Task, spec: TrainSpec, hp: Mapping[str, Any]) -> None:
    """HParamError unless `hp` names exactly the hyperparameters the task and optimizer read:
    an unknown name (a typo such as "L2") would be ignored, a missing one has no value."""
    expected = expected_hparams(task, spec)
    unknown = sorted(k for k in hp if k not in expected and "/" not in k)  # "name/path": frozen params (tasks.with_frozen)
    missing = [k for k in expected if k not in hp]
    if unknown or missing:
        parts = ([f"unknown {unknown}"] if unknown else []) + ([f"missing {missing}"] if missing else [])
        raise HParamError(f"hyperparameters {', '.join(parts)}: this task with the {spec.optimizer!r} optimizer "
                          f"reads exactly {list(expected)}")


class RunState(NamedTuple):
    """Everything a run carries from one epoch to the next (checkpointed as is)."""

    params: Params
    opt_state: Any
    epoch: jax.Array  # int32: epochs done
    diverged_epoch: jax.Array  # int32: first epoch whose loss was not finite, -1 if none


def learning_rate_schedule(spec: TrainSpec, lr: jax.Array, n_train: int) -> jax.Array | optax.Schedule:
    """The learning rate of `spec`'s schedule from the traced peak `lr`: `lr` itself when constant."""
    steps = spec.steps_per_epoch(n_train)
    if spec.schedule == "constant":
        return lr
    if spec.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, spec.epochs * steps)
    if spec.schedule == "warmup_cosine":
        # optax.warmup_cosine_decay_schedule, built from its parts: it tests `peak_value == 0` in
        # Python, which fails on the traced (vmapped) learning rate
        total = max(spec.epochs * steps, steps + 1)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, steps), optax.cosine_decay_schedule(lr, total - steps)],
                                    [steps])
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {spec.schedule!r}")


def make_optimizer(spec: TrainSpec, hp: HParams, n_train: int) -> optax.GradientTransformation:
    """The optax optimizer of `spec` (`optax.inject_hyperparams`): the traced learning rate of `hp`
    under the spec's schedule, and the traced values in `hp` of its other `optimizer_hparams`."""
    lr = learning_rate_schedule(spec, hp["learning_rate"], n_train)
    factory = optimizer_factory(spec.optimizer)
    traced = optimizer_hparams(spec)
    # Only the arguments given are injected; the others stay the Python constants optax uses on its
    # own. Injected, adam's default b1 would be a float32 array whose `1 - b1` and `b1 ** t` round
    # differently from optax's constants, and every run would move in its last bits.
    static = [name for name in inspect.signature(factory).parameters if name not in traced]
    return optax.inject_hyperparams(factory, static_args=static)(
        learning_rate=lr, **{name: hp[name] for name in traced[1:]})


def run_keys(seed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(init key, training key) of the run with this integer seed."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return init_key, train_key


def stream_seeds(seed: Seeds) -> dict[str, jax.Array]:
    """{stream: seed} of a run (plus the perturbations its seed dict names).

    An integer seed is every stream's seed; a dict must name every stream of `STREAMS` and may
    add `PERTURBATIONS`; anything else is an error.
    """
    if not isinstance(seed, Mapping):
        return {s: seed for s in STREAMS}
    unknown = sorted(set(seed) - set(STREAMS) - set(PERTURBATIONS))
    missing = [s for s in STREAMS if s not in seed]
    if unknown or missing:
        raise ValueError(f"a run's seeds name every stream of {STREAMS} and may add {PERTURBATIONS}; "
                         f"unknown: {unknown}, missing: {missing}")
    return dict(seed)


def stream_key(keys: Mapping[str, jax.Array] | jax.Array, name: str) -> jax.Array:
    """The key of stream `name` in a task's `keys` (one plain key stands for every stream)."""
    return keys[name] if isinstance(keys, Mapping) else keys


def epoch_keys(seed: Seeds, epoch: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(permutation key, {step stream: step key}) of an epoch.

    For each stream s, `split(fold_in(training key of seed_s, epoch))` is (permutation key, step
    key) as a run with the single seed seed_s has always drawn them: the batch order takes the
    first half from the `order` stream, each step stream the second half from its own.
    """
    seeds = stream_seeds(seed)

    def pair(s):
        return jax.random.split(jax.random.fold_in(run_keys(s)[1], epoch))

    return pair(seeds["order"])[0], {s: pair(seeds[s])[1] for s in STEP_STREAMS}


def _first_kernel(params: Params) -> tuple[list, Any, int]:
    """(leaves, treedef, position of the first leaf named 'kernel' in tree order)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    first = next((i for i, (path, _) in enumerate(leaves) if getattr(path[-1], "key", None) == "kernel"), None)
    if first is None:
        raise ValueError("one_bit needs a parameter named 'kernel'")
    return [leaf for _, leaf in leaves], treedef, first


def first_kernel_size(params: Params) -> int:
    """How many weights the first kernel has (the range of `one_bit` indices); params may be shapes."""
    values, _, first = _first_kernel(params)
    return math.prod(values[first].shape)


def flip_one_bit(params: Params, index: jax.Array) -> Params:
    """params with the lowest mantissa bit of weight `index` (flat, row-major) of the first kernel
    in tree order flipped: a one-ulp change of one initial weight. index < 0: unchanged."""
    values, treedef, first = _first_kernel(params)
    kernel = values[first]
    uint = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[kernel.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(kernel.reshape(-1), uint)
    bits = bits ^ (jnp.arange(bits.size) == index).astype(uint)
    values[first] = jax.lax.bitcast_convert_type(bits, kernel.dtype).reshape(kernel.shape)
    return jax.tree_util.tree_unflatten(treedef, values)


def bootstrap_indices(seed: jax.Array, n: int) -> jax.Array:
    """A resampling of range(n) with replacement (n indices, int32), drawn from the bootstrap seed."""
    key = jax.random.fold_in(jax.random.key(jnp.maximum(seed, 0)), 0x626F6F74)  # 'boot'
    return jax.random.randint(key, (n,), 0, n, dtype=jnp.int32)


def init_state(task: Task, spec: TrainSpec, hp: HParams, seed: Seeds, n_train: int) -> RunState:
    """The state of a run before its first epoch (`one_bit` applied to the initial params)."""
    check_hparams(task, spec, hp)
    seeds = stream_seeds(seed)
    init_key, _ = run_keys(seeds["init"])
    params = task.init(init_key, hp)
    if "one_bit" in seeds:
        params = flip_one_bit(params, seeds["one_bit"])
    opt_state = make_optimizer(spec, hp, n_train).init(params)
    return RunState(params, opt_state, jnp.int32(0), jnp.int32(-1))


def _stable_argsort_u32(keys: jax.Array) -> jax.Array:
    """The stable argsort (ties in index order) of uint32 keys (n,), n <= 2^16, as int32.

    Two sorts of single uint32 arrays, least significant half of the key first, each packing
    16 key bits above a 16-bit position: XLA:CPU sorts a single integer array several times
    faster than a (key, value) pair with a stable comparator.
    """
    n = keys.shape[0]
    pos = jnp.arange(n, dtype=jnp.uint32)
    by_low = jax.lax.sort(((keys & 0xFFFF) << 16) | pos) & 0xFFFF  # stable order by the low half
    high = keys.at[by_low].get(mode="promise_in_bounds") >> 16
    by_high = jax.lax.sort((high << 16) | pos) & 0xFFFF  # then by the high half, stable
    return by_low.at[by_high].get(mode="promise_in_bounds").astype(jnp.int32)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """`jax.random.permutation(key, n)`, bit for bit, faster on XLA:CPU.

    jax shuffles by stable sorts of (random uint32 key, value) pairs, a comparator sort that
    XLA:CPU runs several times slower than `_stable_argsort_u32`'s sorts of single arrays
    (benchmarks/train_speed.py). The keys are drawn exactly as jax draws them; beyond 2^16
    elements (or for another PRNG) it is jax's.
    """
    if n > 2**16 or str(jax.random.key_impl(key)) != "threefry2x32":
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax.random's _shuffle
    x = jnp.arange(n)
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        x = x.at[_stable_argsort_u32(jax.random.bits(subkey, (n,), jnp.uint32))].get(mode="promise_in_bounds")
    return x


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """A permutation of range(n) as (steps, batch_size) indices and a 0/1 mask.

    The last batch is padded with index 0 and mask 0, so every example is used exactly once.
    """
    steps = math.ceil(n / batch_size)
    perm = permutation(key, n)
    idx = jnp.zeros(steps * batch_size, jnp.int32).at[:n].set(perm)
    mask = (jnp.arange(steps * batch_size) < n).astype(jnp.float32)
    return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def train_epoch(task: Task, spec: TrainSpec, state: RunState, hp: HParams, seed: Seeds,
                data: Splits) -> tuple[RunState, dict]:
    """One epoch of minibatch training and its evaluation: (new state, {metric: scalar}).

    With a `bootstrap` seed >= 0 the epoch's permutation runs over the run's resampled training
    set (`bootstrap_indices`, the same every epoch) instead of the training set itself.
    """
    data = Splits(*(jnp.asarray(a) for a in data))
    n = data.train_x.shape[0]
    opt = make_optimizer(spec, hp, n)
    perm_key, step_keys = epoch_keys(seed, state.epoch)
    idx, mask = epoch_batches(perm_key, n, spec.batch_size)
    if isinstance(seed, Mapping) and "bootstrap" in seed:
        idx = jnp.where(seed["bootstrap"] >= 0, bootstrap_indices(seed["bootstrap"], n)[idx], idx)
    check_hparams(task, spec, hp)
    train_rows = data.train_x.reshape(n, -1)

    def objective(params, batch, key):
        per_example, metrics = task.loss(params, batch, key, hp)
        count = jnp.maximum(batch.mask.sum(), 1.0)
        loss = jnp.sum(per_example * batch.mask) / count
        for penalty in task.penalties:
            loss = loss + penalty.fn(params, hp[penalty.hparam])
        if not task.penalties:
            # A zero L2 term: XLA:CPU fuses the step's gradients differently without it, which moves
            # the numbers in the last bits; every run without a penalty carries it, so a run gives
            # the same numbers whichever hooks its task has.
            loss = loss + l2_penalty(params, 0.0)
        sums = {k: jnp.sum(v * batch.mask) for k, v in metrics.items()}
        sums["loss"] = jnp.sum(per_example * batch.mask)
        return loss, sums

    def step(carry, xs):
        params, opt_state = carry
        idx_b, mask_b, i = xs
        # Whole rows of the flattened images gather several times faster on XLA:CPU than
        # (28, 28, 1) slices, and "promise_in_bounds" (every index is in 0..n - 1) skips the
        # clamping of each index, most of a clamped gather's time; the reshape back is free.
        x_b = train_rows.at[idx_b].get(mode="promise_in_bounds").reshape(-1, *data.train_x.shape[1:])
        batch = Batch(x_b, data.train_y.at[idx_b].get(mode="promise_in_bounds"), mask_b,
                      state.epoch.astype(jnp.float32) + i.astype(jnp.float32) / idx.shape[0])
        keys = {s: jax.random.fold_in(k, i) for s, k in step_keys.items()}
        grads, sums = jax.grad(objective, has_aux=True)(params, batch, keys)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        for constraint in task.constraints:
            params = constraint.fn(params, hp[constraint.hparam])
        return (params, opt_state), sums

    steps = jnp.arange(idx.shape[0])
    (params, opt_state), sums = jax.lax.scan(step, (state.params, state.opt_state), (idx, mask, steps))
    metrics = {f"train_{k}" if k != "loss" else "loss": v.sum() / n for k, v in sums.items()}
    eval_keys = {s: jax.random.fold_in(k, idx.shape[0]) for s, k in step_keys.items()}
    metrics.update(task.evaluate(params, data, hp, eval_keys))
    finite = jnp.isfinite(metrics["loss"])
    for leaf in jax.tree_util.tree_leaves(params):
        finite &= jnp.all(jnp.isfinite(leaf))
    diverged = jnp.where((state.diverged_epoch < 0) & ~finite, state.epoch, state.diverged_epoch)
    metrics["diverged"] = diverged >= 0
    return RunState(params, opt_state, state.epoch + 1, diverged), metrics


def train_epochs(task: Task, spec: TrainSpec, n_epochs: int, state: RunState, hp: HParams,
                 seed: Seeds, data: Splits) -> tuple[RunState, dict]:
    """`n_epochs` epochs as one `lax.scan`: (state, {metric: (n_epochs,) array})."""

    def body(state, _):
        return train_epoch(task, spec, state, hp, seed, data)

    return jax.lax.scan(body, state, None, length=n_epochs)


def run(task: Task, spec: TrainSpec, hp: HParams, seed: Seeds, data: Splits) -> tuple[RunState, dict]:
    """A whole training run as one pure function of (hp, seed, data)."""
    state = init_state(task, spec, hp, seed, data.train_x.shape[0])
    return train_epochs(task, spec, spec.epochs, state, hp, seed, data)
