"""Issue 14 §1: the faster pooling formulations against today's (kept here as references).

The formulations that cut the pooling kinds' train step (no pow in lp, selects instead of
gathers, blur edges without jnp.pad's reflect / wrap gradient, the dense max in two 1-D passes,
max_blur_pool's hand-written gradient)
must keep each kind's forward (bit for bit where the sums run in the same order) and gradient.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invariance import pooling as P


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant"])
@pytest.mark.parametrize(
    "pads", [((1, 1), (1, 1)), ((1, 2), (0, 3)), ((2, 0), (3, 3)), ((0, 4), (5, 0))]
)
def test_pad_hw_mode_equals_jnp_pad_value_and_gradient(mode, pads):
    from invariance.pooling._antialiased import _pad_hw_mode

    x = jnp.asarray(_rng(50).normal(size=(2, 4, 5, 3)), jnp.float32)
    if mode == "reflect" and max(max(pads[0]), max(pads[1])) >= 4:
        pads = ((1, 1), (2, 2))
    cfg = [(0, 0), *pads, (0, 0)]
    want, vjp_want = jax.vjp(lambda a: jnp.pad(a, cfg, mode=mode), x)
    got, vjp_got = jax.vjp(lambda a: _pad_hw_mode(a, pads, mode), x)
    np.testing.assert_array_equal(got, want)
    g = jnp.asarray(_rng(51).normal(size=want.shape), jnp.float32)
    np.testing.assert_allclose(vjp_got(g)[0], vjp_want(g)[0], rtol=1e-6, atol=1e-6)


def _old_lp(x, p, window):
    """lp_pool as it was before issue 14 (pow for every p), for non-negative inputs."""
    win, st, pads, out_hw = _geo(x, window)
    s = sum(_slc(x**p, i, j, st, out_hw) for i in range(win[0]) for j in range(win[1]))
    pos = s > 0
    return jnp.where(pos, jnp.where(pos, s, 1.0) ** (1.0 / p), 0.0)


def _old_stochastic(key, x, window, train):
    """stochastic_pool as it was before issue 14: a stacked window axis, cumsum and a gather."""
    win, st, _, out_hw = _geo(x, window)
    a = jnp.stack([_slc(x, i, j, st, out_hw) for i in range(win[0]) for j in range(win[1])], -1)
    w = jnp.maximum(a, 0)
    total = jnp.sum(w, axis=-1, keepdims=True)
    safe_total = jnp.where(total > 0, total, jnp.ones_like(total))
    if not train:
        return jnp.sum(w * a, axis=-1) / safe_total[..., 0]
    u = jax.random.uniform(key, total.shape, dtype=total.dtype) * total
    cum = jnp.cumsum(w, axis=-1)
    idx = jnp.minimum(jnp.sum(cum <= u, axis=-1, keepdims=True), a.shape[-1] - 1)
    chosen = jnp.take_along_axis(a, idx, axis=-1)[..., 0]
    return jnp.where(total[..., 0] > 0, chosen, jnp.zeros_like(chosen))


def _old_aps(x, s, norm):
    """aps_pool (no blur) as it was before issue 14: stacked components and a gather."""
    h, w = x.shape[-3], x.shape[-2]
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, -h % s), (0, -w % s), (0, 0)], mode="wrap")
    comps = jnp.stack([x[..., i::s, j::s, :] for i in range(s) for j in range(s)], axis=-4)
    f = {"l2": jnp.square, "l1": jnp.abs, "linf": jnp.abs}[norm]
    score = (jnp.max if norm == "linf" else jnp.sum)(f(comps), axis=(-3, -2, -1))
    index = jnp.argmax(jax.lax.stop_gradient(score), axis=-1)
    return jnp.take_along_axis(comps, index[..., None, None, None, None], axis=-4)[..., 0, :, :, :]


def _old_blur(x, k, s, mode):
    """blur_pool as it was before issue 14: jnp.pad, then strided slices per axis."""
    taps = P.binomial_filter(k)
    lo, hi = (k - 1) // 2, k // 2
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(lo, hi), (lo, hi), (0, 0)], mode=mode)
    ho, wo = -(-x.shape[-3] // s), -(-x.shape[-2] // s)
    rows = sum(float(taps[i]) * xp[..., i : i + s * (ho - 1) + 1 : s, :, :] for i in range(k))
    return sum(float(taps[j]) * rows[..., :, j : j + s * (wo - 1) + 1 : s, :] for j in range(k))


def _geo(x, window):
    from invariance.pooling._geometry import _geometry

    return _geometry(x, window, None, "VALID")


def _slc(x, i, j, st, out_hw):
    from invariance.pooling._geometry import _slice

    return _slice(x, i, j, st, out_hw)


def _same_value_and_grad(new, old, x, rtol=1e-6, atol=1e-6, exact=False):
    # Both jitted, as a model runs them (and 3-4x faster to test than op-by-op dispatch, where
    # each primitive of each shape compiles on its own).
    y_new, vjp_new = jax.vjp(jax.jit(new), x)
    y_old, vjp_old = jax.vjp(jax.jit(old), x)
    if exact:
        np.testing.assert_array_equal(y_new, y_old)
    np.testing.assert_allclose(y_new, y_old, rtol=rtol, atol=atol)
    g = jnp.asarray(_rng(60).normal(size=y_new.shape), y_new.dtype)
    np.testing.assert_allclose(vjp_new(g)[0], vjp_old(g)[0], rtol=rtol, atol=atol)


@pytest.mark.parametrize("p", [2.0, 3.0, 1.0, 2.5])
def test_lp_pool_without_pow_equals_the_pow_formulation(p):
    x = np.maximum(_rng(61).normal(size=(2, 8, 8, 3)), 0).astype(np.float32)  # ReLU: zeros
    x[0, :2, :2] = 0  # an all-zero window: value and gradient 0 in both
    x = jnp.asarray(x)
    _same_value_and_grad(lambda a: P.lp_pool(a, 2, p=p), lambda a: _old_lp(a, p, 2), x, 1e-5)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("window", [2, 3, (2, 3)])
def test_stochastic_pool_with_selects_equals_the_gather_formulation(train, window):
    x = np.maximum(_rng(62).normal(size=(3, 12, 12, 4)), 0).astype(np.float32)
    x[0, :3, :3] = 0
    key = jax.random.key(7)
    new = functools.partial(P.stochastic_pool, window=window, key=key, train=train)
    old = functools.partial(_old_stochastic, key, window=window, train=train)
    # The same samples, bit for bit (the same uniform draws and the same sequential sums).
    _same_value_and_grad(new, old, jnp.asarray(x), exact=True)


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
@pytest.mark.parametrize("size,stride", [(8, 2), (7, 2), (9, 3)])
def test_aps_with_selects_equals_the_gather_formulation(norm, size, stride):
    x = jnp.asarray(_rng(63).normal(size=(3, size, size, 2)), jnp.float32)
    new = functools.partial(P.aps_pool, stride=stride, norm=norm)
    _same_value_and_grad(new, lambda a: _old_aps(a, stride, norm), x, exact=True)


@pytest.mark.parametrize("mode", ["reflect", "constant", "circular"])
@pytest.mark.parametrize("k", [2, 3, 4, 5, 7])
@pytest.mark.parametrize("shape,s", [((2, 27, 27, 3), 2), ((2, 14, 9, 2), 2), ((1, 8, 10, 2), 1)])
def test_blur_pool_without_padding_equals_pad_then_slices(mode, k, shape, s):
    x = jnp.asarray(_rng(64).normal(size=shape), jnp.float32)
    new = functools.partial(P.blur_pool, filter_size=k, stride=s, pad_mode=mode)
    old = functools.partial(_old_blur, k=k, s=s, mode=P.PAD_MODES[mode])
    _same_value_and_grad(new, old, x, exact=True)


@pytest.mark.parametrize("window", [2, 3, (2, 3), (3, 1)])
def test_dense_max_pool_in_two_passes_equals_the_2d_formulation(window):
    from invariance.pooling._geometry import _geometry
    from invariance.pooling._windowed import _max_pool_core

    # Many ties (small integers after a ReLU): the gradient convention is what is tested.
    x = jnp.asarray(np.maximum(_rng(65).integers(-2, 3, size=(2, 9, 8, 3)), 0), jnp.float32)
    geo = _geometry(x, window, 1, "VALID")
    _same_value_and_grad(
        lambda a: P.max_pool(a, window, stride=1),
        lambda a: _max_pool_core(a, *geo),
        x,
        exact=True,
    )
    _same_value_and_grad(  # min pooling shares it
        lambda a: P.min_pool(a, window, stride=1),
        lambda a: -_max_pool_core(-a, *geo),
        x,
        exact=True,
    )


def _old_max_blur(x, k, mode):
    """max_blur_pool (window 2, stride 2) as it was before its hand-written gradient: the
    circular pre-padding, then max_pool (two 1-D passes) and blur_pool with their own
    gradients (``_max_blur_reference``)."""
    from invariance.pooling._antialiased import _max_blur_reference, _pad_hw_mode

    if mode == "circular":
        x = _pad_hw_mode(x, ((0, 1), (0, 1)), "wrap")
    return _max_blur_reference(x, 2, k, 2, mode)


@pytest.mark.parametrize("mode", ["reflect", "constant", "circular"])
@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("shape", [(2, 14, 13, 2), (2, 1, 7, 6, 1)])
def test_max_blur_pool_fast_gradient_equals_the_composition(mode, k, shape):
    # Ties (small integers after a ReLU) test the gradient's first-maximum rule; odd and even
    # sizes, rank 3 and two leading dims.
    x = np.maximum(_rng(66).integers(-2, 4, size=shape), 0).astype(np.float32)
    if mode == "reflect" and min(shape[-3], shape[-2]) - 1 <= k // 2:
        pytest.skip("reflect padding needs the dense max's output larger than k // 2")
    x = jnp.asarray(x)
    new = jax.jit(functools.partial(P.max_blur_pool, filter_size=k, pad_mode=mode))
    _same_value_and_grad(new, jax.jit(lambda a: _old_max_blur(a, k, mode)), x, exact=True)


def test_max_blur_pool_fast_path_under_vmap_and_jit_and_in_bfloat16():
    x = jnp.asarray(_rng(68).normal(size=(3, 2, 11, 12, 4)), jnp.float32)

    def loss(f):
        return lambda a: jnp.sum(jnp.sin(f(a)))

    new = jax.jit(jax.vmap(jax.grad(loss(P.max_blur_pool))))(x)
    old = jax.vmap(jax.grad(loss(lambda a: _old_max_blur(a, 3, "reflect"))))(x)
    np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-6)
    xb = x[0].astype(jnp.bfloat16)
    got = jax.grad(loss(P.max_blur_pool))(xb)
    want = jax.grad(loss(lambda a: _old_max_blur(a, 3, "reflect")))(xb)
    assert got.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2)
