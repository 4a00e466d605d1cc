"""Salt-and-pepper noise: statistics, edge levels, determinism, range checks, PSNR (tiny arrays)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import noise

FORMULATIONS = [noise.salt_and_pepper, noise.salt_and_pepper_bits16, noise.salt_and_pepper_one_draw,
                noise.salt_and_pepper_two_draws]
GREY = 0.5  # neither 0 nor 1, so every corrupted pixel is visibly changed
COMPILED = {f: jax.jit(f) for f in FORMULATIONS}  # one program per formulation for every level (traced)


def grey(shape=(200, 28, 28, 1)):
    return jnp.full(shape, GREY, jnp.float32)


def tolerance(p: float, n: int) -> float:
    """Five binomial standard deviations of a fraction with probability p over n trials."""
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-4


@pytest.mark.parametrize("corrupt", FORMULATIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("level", [0.05, 0.4, 0.9])
def test_fraction_changed_is_level_and_half_are_salt(corrupt, level):
    y = np.asarray(COMPILED[corrupt](jax.random.key(1), grey(), level))
    changed = y != GREY
    assert set(np.unique(y[changed])) <= {0.0, 1.0}
    assert abs(changed.mean() - level) < tolerance(level, y.size)
    n_changed = int(changed.sum())
    assert abs((y[changed] == 1.0).mean() - 0.5) < tolerance(0.5, n_changed)


def test_level_zero_returns_the_input_unchanged():
    x = np.asarray(jax.random.uniform(jax.random.key(0), (16, 28, 28, 1)))
    np.testing.assert_array_equal(jax.jit(lambda key, x: noise.salt_and_pepper(key, x, 0.0))(jax.random.key(3), x), x)


def test_level_one_is_pure_noise():
    x = np.asarray(jax.random.uniform(jax.random.key(0), (64, 28, 28, 1)))
    corrupt = jax.jit(lambda key, x: noise.salt_and_pepper(key, x, 1.0))  # one program for both inputs
    y = np.asarray(corrupt(jax.random.key(3), x))
    assert set(np.unique(y)) == {0.0, 1.0}  # every pixel replaced
    assert abs(y.mean() - 0.5) < tolerance(0.5, y.size)
    # and independent of the image: another input gives the very same output with this key
    np.testing.assert_array_equal(corrupt(jax.random.key(3), 1 - x), y)


def test_same_key_same_noise_other_key_other_noise():
    corrupt = jax.jit(lambda key: noise.salt_and_pepper(key, grey((8, 28, 28, 1)), 0.3))  # one program for every key
    a = corrupt(jax.random.key(7))
    b = corrupt(jax.random.key(7))
    c = corrupt(jax.random.key(8))
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).mean() > 0.2


def test_pixels_are_independent_of_their_neighbours():
    # two pixels share one 32-bit word; their decisions must still be independent
    y = np.asarray(jax.jit(lambda key: noise.salt_and_pepper(key, grey((400, 28, 28, 1)), 0.5))(jax.random.key(5)))
    y = y.reshape(-1)
    changed = (y != GREY).astype(np.float64)
    n = y.size // 2
    corr = np.corrcoef(changed[:n], changed[n:])[0, 1]
    corr_adjacent = np.corrcoef(changed[:-1], changed[1:])[0, 1]
    assert abs(corr) < 5 / np.sqrt(n) and abs(corr_adjacent) < 5 / np.sqrt(n)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), np.array([0.2, 1.2])])
def test_a_concrete_level_outside_0_1_is_an_error(bad):
    with pytest.raises(ValueError, match=r"noise level must be in \[0, 1\]"):
        noise.salt_and_pepper(jax.random.key(0), grey((2, 28, 28, 1)), bad)


def test_traced_level_vmaps_over_levels():
    levels = jnp.array([0.0, 0.25, 0.5, 1.0])
    fn = jax.jit(jax.vmap(lambda lv: (noise.salt_and_pepper(jax.random.key(2), grey(), lv) != GREY).mean()))
    fractions = np.asarray(fn(levels))
    np.testing.assert_allclose(fractions, np.asarray(levels), atol=0.01)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    # a traced level cannot be checked; outside [0, 1] it acts as the nearest bound
    beyond = np.asarray(jax.jit(lambda lv: noise.salt_and_pepper(jax.random.key(2), grey(), lv))(1.5))
    assert set(np.unique(beyond)) == {0.0, 1.0} and abs(beyond.mean() - 0.5) < tolerance(0.5, beyond.size)


def test_odd_sizes_and_other_shapes():
    y = jax.jit(lambda key: noise.salt_and_pepper(key, jnp.full((3, 5), GREY), 1.0))(jax.random.key(0))
    assert y.shape == (3, 5) and set(np.unique(np.asarray(y))) <= {0.0, 1.0}


@pytest.mark.slow
def test_each_image_noise_does_not_depend_on_batching():
    x = np.asarray(jax.random.uniform(jax.random.key(0), (10, 28, 28, 1)))
    key = jax.random.key(4)
    each = jax.jit(lambda key, x, index: noise.salt_and_pepper_each(key, x, 0.4, index))  # not op by op
    whole = np.asarray(each(key, x, None))
    part = np.asarray(each(key, x[6:9], np.arange(6, 9)))
    np.testing.assert_array_equal(whole[6:9], part)
    assert (whole[0] != whole[1]).any()


def test_psnr():
    clean = np.zeros((2, 4, 4), np.float32)
    other = clean.copy()
    other[0], other[1] = 0.1, 1.0  # MSE 0.01 -> 20 dB; MSE 1 -> 0 dB
    psnr = jax.jit(noise.psnr)  # one program, not one per operation
    np.testing.assert_allclose(psnr(clean, other), [20.0, 0.0], atol=1e-4)
    assert float(psnr(clean, clean)[0]) == pytest.approx(100.0)


def test_scalar_level_on_a_flat_view_gives_the_same_noise_as_per_image_levels():
    # a scalar level is applied to a flat view of x (faster on XLA:CPU); per-image levels are not
    x = np.asarray(jax.random.uniform(jax.random.key(4), (6, 28, 28, 1)))
    key = jax.random.key(5)
    # each compiled whole (jax.jit), not op by op; the levels concrete, as given
    flat = jax.jit(lambda key, x: noise.salt_and_pepper(key, x, 0.3))
    per_image = jax.jit(lambda key, x: noise.salt_and_pepper(key, x, np.full((6, 1, 1, 1), 0.3, np.float32)))
    np.testing.assert_array_equal(flat(key, x), per_image(key, x))


@pytest.mark.parametrize("n", [1, 2, 7, 12544, 12545])
def test_unrolled_threefry_is_jax_threefry_bit_for_bit(n):
    from jax.extend.random import threefry_2x32

    keypair = jax.random.key_data(jax.random.key(n))
    count = np.arange(n, dtype=np.uint32) * 3 + 5
    unrolled = jax.jit(noise.threefry_2x32_unrolled)  # one program per shape, not one per operation
    np.testing.assert_array_equal(unrolled(keypair, count), threefry_2x32(keypair, count))
    counts2d = count[: n - n % 2].reshape(-1, 2) if n > 1 else count.reshape(1, 1)
    np.testing.assert_array_equal(unrolled(keypair, counts2d), threefry_2x32(keypair, counts2d))
