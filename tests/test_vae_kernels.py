"""The convolutional VAE's fast convolutions: the strided and transposed convolutions of
`kernels.py` against lax's (outputs and gradients), the layers against flax's, the whole
model's loss gradient under each formulation, and a vmapped conv VAE run against the same run
alone (speeds: `benchmarks/vae_speed.py`)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_splits

from mnist_jax import kernels, models, sweep, tasks
from mnist_jax.train import Batch, TrainSpec

STRIDED = {"fused": kernels.strided_conv, "im2col": kernels.strided_conv_im2col}
TRANSPOSED = {"fused": kernels.conv_transpose, "im2col": kernels.conv_transpose_scatter}

# (input shape, kernel shape, stride): the VAE's four layers at batch 3, then odd sizes, one
# input or output channel, an even kernel at stride 3
SHAPES = [
    ((3, 28, 28, 1), (3, 3, 1, 32), 2),
    ((3, 14, 14, 32), (3, 3, 32, 64), 2),
    ((3, 7, 7, 64), (3, 3, 64, 32), 2),
    ((3, 14, 14, 32), (3, 3, 32, 1), 2),
    ((3, 15, 13, 2), (3, 3, 2, 1), 2),
    ((3, 9, 7, 1), (3, 3, 1, 4), 2),
    ((2, 8, 7, 3), (4, 4, 3, 2), 3),
]


def lax_strided(x, kernel, stride):
    return kernels.lax_conv(x, kernel, stride, "SAME")


def assert_close(got, want, what):
    """float32 agreement, relative to the largest magnitude of the reference."""
    want = np.asarray(want)
    assert got.shape == want.shape, what
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=2e-6 * max(1.0, float(np.abs(want).max())),
                               err_msg=what)


def assert_same_vjp(fast, reference, x, kernel, stride):
    """Equal outputs, and equal gradients wrt input and kernel for a random output cotangent."""

    cotangent = np.random.default_rng(2).standard_normal(jax.eval_shape(lambda: reference(x, kernel, stride)).shape)

    @jax.jit
    def outputs_and_grads(x, kernel):
        results = []
        for conv in (fast, reference):
            y, vjp = jax.vjp(lambda x, k: conv(x, k, stride), x, kernel)  # noqa: B023 - called right here
            results.append((y, *vjp(cotangent.astype(y.dtype))))
        return results

    got, want = outputs_and_grads(x, kernel)
    for a, b, name in zip(got, want, ("output", "gradient wrt the input", "gradient wrt the kernel"), strict=True):
        assert_close(a, b, name)


def operands(x_shape, k_shape):
    """Normal float32 operands, drawn on the host: one compiled program per test, the one it checks."""
    return tuple(np.random.default_rng(i).standard_normal(shape).astype(np.float32)
                 for i, shape in enumerate((x_shape, k_shape)))


def shape_of(conv, x, kernel, stride) -> tuple[int, ...]:
    return jax.eval_shape(lambda x, k: conv(x, k, stride), x, kernel).shape


@pytest.mark.parametrize("impl", sorted(STRIDED))
@pytest.mark.parametrize("x_shape, k_shape, stride", SHAPES)
def test_strided_conv_equals_lax_outputs_and_gradients(impl, x_shape, k_shape, stride):
    x, kernel = operands(x_shape, k_shape)
    assert_same_vjp(STRIDED[impl], lax_strided, x, kernel, stride)
    assert shape_of(STRIDED[impl], x, kernel, stride)[1:3] == (-(-x_shape[1] // stride), -(-x_shape[2] // stride))


@pytest.mark.parametrize("impl", sorted(TRANSPOSED))
@pytest.mark.parametrize("x_shape, k_shape, stride", SHAPES)
def test_transposed_conv_equals_lax_outputs_and_gradients(impl, x_shape, k_shape, stride):
    x, kernel = operands(x_shape, k_shape)
    assert_same_vjp(TRANSPOSED[impl], kernels.lax_conv_transpose, x, kernel, stride)
    assert shape_of(TRANSPOSED[impl], x, kernel, stride)[1:3] == (x_shape[1] * stride, x_shape[2] * stride)


def test_scatter_is_the_adjoint_of_the_strided_patches():
    """<patches(x), p> == <x, scatter(p)>: the input gradient of the strided convolution and the
    transposed convolution both rest on it."""
    x, p = jax.random.normal(jax.random.key(0), (2, 11, 10, 3)), jax.random.normal(jax.random.key(1), (2, 5, 4, 27))
    lhs = jax.jit(lambda x, p: jnp.vdot(kernels._patches(x, 3, 3, 5, 4, 2), p))(x, p)  # one program each
    rhs = jax.jit(lambda x, p: jnp.vdot(x, kernels._scatter_patches(p, 3, 3, 11, 10, 2)))(x, p)
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-5)


@pytest.mark.parametrize("impl", ["fused", "im2col", "lax"])
def test_layers_compute_flax_conv_and_conv_transpose_with_their_params(impl):
    """models.Conv(stride=2) and models.ConvTranspose take nn.Conv's and nn.ConvTranspose's
    params (same tree, same initial values) and give their outputs."""
    x = jax.random.normal(jax.random.key(0), (3, 14, 13, 5))
    for ours, theirs in [
        (models.Conv(7, 3, "SAME", impl, keras_init=False, stride=2), nn.Conv(7, (3, 3), strides=(2, 2), padding="SAME")),
        (models.ConvTranspose(7, 3, 2, impl), nn.ConvTranspose(7, (3, 3), strides=(2, 2), padding="SAME")),
    ]:
        params = jax.jit(theirs.init)(jax.random.key(3), x)  # both compiled alike, one program each
        mine = jax.jit(ours.init)(jax.random.key(3), x)
        assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(params)
        for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(params), strict=True):
            np.testing.assert_array_equal(a, b)
        assert_close(jax.jit(ours.apply)(params, x), jax.jit(theirs.apply)(params, x), type(theirs).__name__)


def conv_vae(impl: str, **fields) -> models.VAE:
    return models.VAE(latent=3, hidden=(16, 8), conv=True, conv_impl=impl, **fields)


def vae_loss_and_grads(model, params, data):
    task = tasks.vae_task(model)
    batch = Batch(jnp.asarray(data.train_x[:5]), jnp.asarray(data.train_y[:5]), jnp.ones(5))
    # one compiled program, not the hundreds of single operations an eager call compiles
    return jax.jit(jax.value_and_grad(lambda p: task.loss(p, batch, jax.random.key(7), {})[0].mean()))(params)


@pytest.mark.slow
def test_conv_vae_loss_and_gradient_are_the_same_under_every_formulation():
    """The same params (one tree for every formulation: trained under one, they apply under
    another) give the same loss and gradient with the fast convolutions as with nn.Conv and
    nn.ConvTranspose. The model is conditional: every layer of the unconditional one, with the
    label's inputs besides."""
    conditional = True
    data = synthetic_splits(n_train=8)
    reference = conv_vae("lax", conditional=conditional)
    params = jax.jit(tasks.vae_task(reference).init)(jax.random.key(0), {})
    loss, grads = vae_loss_and_grads(reference, params, data)
    for impl in ("fused", "im2col"):
        model = conv_vae(impl, conditional=conditional)
        own = jax.jit(tasks.vae_task(model).init)(jax.random.key(0), {})
        for a, b in zip(jax.tree_util.tree_leaves(own), jax.tree_util.tree_leaves(params), strict=True):
            np.testing.assert_array_equal(a, b)
        got_loss, got_grads = vae_loss_and_grads(model, params, data)
        assert float(got_loss) == pytest.approx(float(loss), rel=1e-5)
        assert jax.tree_util.tree_structure(got_grads) == jax.tree_util.tree_structure(grads)
        for path, g in jax.tree_util.tree_leaves_with_path(got_grads):
            want = np.asarray(grads["params"][path[1].key][path[2].key][path[3].key])
            assert_close(g, want, f"{impl}: gradient of {jax.tree_util.keystr(path)}")


def test_conv_impl_auto_resolves_per_backend_and_a_bad_one_is_refused():
    assert kernels.default_strided_conv_impl("cpu") == "fused"
    assert kernels.default_strided_conv_impl("gpu") == "lax"  # not measured: the library convolution
    assert kernels.default_strided_conv_impl() in kernels.CONV_IMPLS
    x = jnp.zeros((1, 28, 28, 1))
    with pytest.raises(ValueError, match="conv_impl"):  # traced, not run: the choice is made while tracing
        jax.eval_shape(conv_vae("fft").init, jax.random.key(0), *conv_vae("fft").init_inputs(x))
    dense = models.VAE(latent=3, hidden=(16, 8), conv_impl="fft")  # a dense VAE has no convolution to choose
    jax.eval_shape(dense.init, jax.random.key(0), *dense.init_inputs(x))


@pytest.mark.slow
def test_a_vmapped_conv_vae_run_equals_the_same_runs_alone():
    """Two seeds trained side by side in one vmapped program (run_chunk=2) end with the params,
    optimizer state and history each run reaches trained alone (run_chunk=1), within float32
    tolerance: vmapping batches the products of the two runs, which XLA may sum in another order."""
    task = tasks.vae_task(conv_vae("auto"))
    spec = TrainSpec(epochs=2, batch_size=32, optimizer="adam")
    hp, seeds = sweep.grid([0, 1], learning_rate=[1e-3])
    data = synthetic_splits(n_train=64, n_eval=16)
    together = sweep.train_grid(task, spec, hp, seeds, data, run_chunk=2)
    alone = sweep.train_grid(task, spec, hp, seeds, data, run_chunk=1)
    assert together.state.params["params"]["encoder"]["Conv_0"]["kernel"].shape[0] == 2
    first = together.state.params["params"]["decoder"]["ConvTranspose_1"]["kernel"]
    assert not np.allclose(first[0], first[1])  # two different runs
    for a, b in zip(jax.tree_util.tree_leaves(together.state), jax.tree_util.tree_leaves(alone.state), strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=1e-6)
    for key in ("loss", "test_neg_elbo"):
        np.testing.assert_allclose(together.history[key], alone.history[key], rtol=1e-5)
