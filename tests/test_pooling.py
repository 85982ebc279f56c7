"""invariance.pooling against the seeds' worked examples, numpy loops, flax.linen and torch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from invariance import pooling as P
from invariance.pooling._antialiased import _BINOMIAL
from invariance.pooling._geometry import _pair, _resolve_pads

# Claim 7 of docs/seeds.md: seed 001's 4x4 feature map worked by hand, seed 003's 1..16 map.
SEED_001 = np.array([[12, 20, 3, 7], [8, 15, 11, 4], [6, 9, 14, 18], [2, 10, 5, 16]], np.float32)
SEED_003 = np.arange(1, 17, dtype=np.float32).reshape(4, 4)


def _rng(seed=0):
    return np.random.default_rng(seed)


def ref_pool(x, window, stride=None, padding=0, mode="max", count_include_pad=True):
    """A naive loop over (..., H, W, C) in the style of the seeds' pool2d, with torch padding."""
    kh, kw = (window, window) if isinstance(window, int) else window
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    (pt, pb), (pl, pr) = (
        ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    )
    x = np.asarray(x, np.float64)
    fill = {"max": -np.inf, "min": np.inf, "avg": 0.0}[mode]
    cfg = [(0, 0)] * (x.ndim - 3) + [(pt, pb), (pl, pr), (0, 0)]
    xp = np.pad(x, cfg, constant_values=fill)
    real = np.pad(np.ones(x.shape[-3:-1]), [(pt, pb), (pl, pr)])
    ho = (xp.shape[-3] - kh) // sh + 1
    wo = (xp.shape[-2] - kw) // sw + 1
    out = np.zeros(x.shape[:-3] + (ho, wo, x.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            win = xp[..., i * sh : i * sh + kh, j * sw : j * sw + kw, :]
            if mode == "max":
                out[..., i, j, :] = win.max(axis=(-3, -2))
            elif mode == "min":
                out[..., i, j, :] = win.min(axis=(-3, -2))
            else:
                n = (
                    kh * kw
                    if count_include_pad
                    else real[i * sh : i * sh + kh, j * sw : j * sw + kw].sum()
                )
                out[..., i, j, :] = win.sum(axis=(-3, -2)) / n
    return out


def ref_max_grad(x, g, window, stride):
    """Torch's max-pool gradient: each window's cotangent to its first maximum (row-major)."""
    k, s = window, stride
    dx = np.zeros_like(x, np.float64)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            for c in range(x.shape[-1]):
                win = x[i * s : i * s + k, j * s : j * s + k, c]
                a, b = np.unravel_index(np.argmax(win), win.shape)  # first max, row-major
                dx[i * s + a, j * s + b, c] += g[i, j, c]
    return dx


# ------------------------------------------------------------------------------------------
# The seeds' worked examples, every printed number.


def test_seed_001_worked_example():
    fm = jnp.asarray(SEED_001)[..., None]
    np.testing.assert_array_equal(P.max_pool(fm, 2)[..., 0], [[20, 11], [10, 18]])
    np.testing.assert_array_equal(P.avg_pool(fm, 2)[..., 0], [[13.75, 6.25], [6.75, 13.25]])
    np.testing.assert_array_equal(P.min_pool(fm, 2)[..., 0], [[8, 3], [2, 5]])
    # The seed prints "GAP = ... = 160/16 = 9.375": the sum is 160 but 160/16 is 10.0, and
    # 9.375 would need a sum of 150. The right global average is 10.0.
    assert float(SEED_001.sum()) == 160.0
    np.testing.assert_allclose(P.global_pool(fm, kind="avg"), [10.0])
    assert float(P.global_pool(fm, kind="avg")[0]) != 9.375
    # Exercise 1: 3x3 max pooling, stride 3: one position fits, max of the top-left 3x3 = 20.
    np.testing.assert_array_equal(P.max_pool(fm, 3)[..., 0], [[20]])
    # "Shift the 20 from (0,1) to (1,0): the max pool output is still 20."
    moved = SEED_001.copy()
    moved[0, 1], moved[1, 0] = moved[1, 0], moved[0, 1]
    np.testing.assert_array_equal(
        P.max_pool(jnp.asarray(moved)[..., None], 2)[..., 0], [[20, 11], [10, 18]]
    )
    # Exercise 3: a GAP head over 8 channels -> 10 classes has 8*10+10 = 90 parameters, against
    # 128*10+10 = 1290 for flatten: a 14.3x reduction.
    assert (4 * 4 * 8 * 10 + 10) / (8 * 10 + 10) == pytest.approx(14.33, abs=0.01)


def test_seed_003_worked_example():
    fm = jnp.asarray(SEED_003)[None, ..., None]  # batch of one, as the seed's torch example
    np.testing.assert_array_equal(P.max_pool(fm, 2, stride=2)[0, ..., 0], [[6, 8], [14, 16]])
    np.testing.assert_array_equal(
        P.avg_pool(fm, 2, stride=2)[0, ..., 0], [[3.5, 5.5], [11.5, 13.5]]
    )


# ------------------------------------------------------------------------------------------
# Against numpy loops and flax.linen.

GEOMETRIES = [
    dict(window=2),
    dict(window=2, stride=1),
    dict(window=3, stride=2),
    dict(window=3, stride=2, padding=1),
    dict(window=(2, 3), stride=(1, 2)),
    dict(window=3, stride=1, padding=((1, 0), (0, 1))),
    dict(window=3, padding="SAME"),
]


def _ref_kwargs(kw, shape):
    pads = _resolve_pads(
        shape,
        _pair(kw["window"], "w"),
        _pair(kw.get("stride") or kw["window"], "s"),
        kw.get("padding", "VALID"),
    )
    return dict(window=kw["window"], stride=kw.get("stride"), padding=pads)


@pytest.mark.parametrize("kw", GEOMETRIES)
@pytest.mark.parametrize("mode", ["max", "min", "avg"])
def test_against_numpy_loop(kw, mode):
    x = _rng(1).normal(size=(2, 7, 9, 3)).astype(np.float32)
    fn = {"max": P.max_pool, "min": P.min_pool, "avg": P.avg_pool}[mode]
    got = fn(jnp.asarray(x), **kw)
    want = ref_pool(x, mode=mode, **_ref_kwargs(kw, (7, 9)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.shape[-3:-1] == P.output_size(
        (7, 9), kw["window"], kw.get("stride"), kw.get("padding", "VALID")
    )


@pytest.mark.parametrize(
    "kw", [dict(window=3, stride=2, padding=1), dict(window=2, stride=1, padding="SAME")]
)
def test_avg_pool_count_exclude_pad(kw):
    x = _rng(2).normal(size=(6, 6, 2)).astype(np.float32)
    got = P.avg_pool(jnp.asarray(x), count_include_pad=False, **kw)
    want = ref_pool(x, mode="avg", count_include_pad=False, **_ref_kwargs(kw, (6, 6)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("kw", GEOMETRIES)
def test_against_flax_linen(kw):
    x = jnp.asarray(_rng(3).normal(size=(2, 8, 9, 4)), jnp.float32)
    win = _pair(kw["window"], "w")
    strides = _pair(kw.get("stride") or kw["window"], "s")
    pads = _resolve_pads((8, 9), win, strides, kw.get("padding", "VALID"))
    np.testing.assert_allclose(P.max_pool(x, **kw), nn.max_pool(x, win, strides, pads), rtol=1e-6)
    np.testing.assert_allclose(
        P.avg_pool(x, **kw),
        nn.avg_pool(x, win, strides, pads, count_include_pad=True),
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("k,s", [(2, 2), (2, 1), (3, 2), (3, 3)])
def test_max_grad_goes_to_first_max_like_torch(k, s):
    # Many ties: ReLU of coarse integers, where several window elements are 0 or equal.
    x = np.maximum(_rng(4).integers(-2, 3, size=(7, 7, 3)), 0).astype(np.float32)
    out, vjp = jax.vjp(lambda a: P.max_pool(a, k, stride=s), jnp.asarray(x))
    g = _rng(5).normal(size=out.shape).astype(np.float32)
    (dx,) = vjp(jnp.asarray(g))
    np.testing.assert_allclose(dx, ref_max_grad(x, g, k, s), rtol=1e-6, atol=1e-6)


def test_global_max_grad_goes_to_first_max():
    x = jnp.asarray([[0.0, 2.0], [2.0, 1.0]])[None, :, :, None]
    dx = jax.grad(lambda a: P.global_pool(a, kind="max").sum())(x)
    np.testing.assert_array_equal(dx[0, ..., 0], [[0, 1], [0, 0]])
    dmin = jax.grad(lambda a: P.global_pool(a, kind="min").sum())(jnp.zeros((3, 3, 1)))
    np.testing.assert_array_equal(dmin[..., 0], [[1, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_max_grad_all_ties_whole_cotangent_to_one_element():
    x = jnp.zeros((4, 4, 1))
    dx = jax.grad(lambda a: P.max_pool(a, 2).sum())(x)[..., 0]
    np.testing.assert_array_equal(dx, [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    dmin = jax.grad(lambda a: P.min_pool(a, 2).sum())(x)[..., 0]
    np.testing.assert_array_equal(dmin, dx)


def test_max_grad_with_padding_and_uncovered_rows():
    x = jnp.asarray(_rng(6).normal(size=(7, 5, 2)), jnp.float32)
    for kw in (dict(window=2), dict(window=3, stride=2, padding=1)):
        dx = jax.grad(lambda a, kw=kw: P.max_pool(a, **kw).sum())(x)
        n_out = int(np.prod(P.max_pool(x, **kw).shape))
        assert float(dx.sum()) == pytest.approx(n_out)  # one unit per window, none to padding
    dx = jax.grad(lambda a: P.max_pool(a, 2).sum())(x)
    assert float(jnp.abs(dx[6]).sum()) == 0.0  # row 6 is in no window


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: P.max_pool(x, 2),
        lambda x: P.max_pool(x, 3, stride=2, padding=1),
        lambda x: P.min_pool(x, 2, stride=1),
        lambda x: P.avg_pool(x, 3, stride=2, padding=1, count_include_pad=False),
        lambda x: P.lp_pool(x + 0.5, 2, p=2.0),
        lambda x: P.mixed_pool(x, 2, alpha=0.3),
        lambda x: P.blur_pool(x, filter_size=4),
        lambda x: P.max_blur_pool(x),
        lambda x: P.aps_pool(x),
        lambda x: P.global_pool(x, kind="max"),
        lambda x: P.stochastic_pool(x + 0.1, 2, train=False),
    ],
)
def test_check_grads(fn):
    # Distinct values far apart, so finite differences never cross a tie.
    x = jnp.asarray(_rng(7).permutation(2 * 6 * 6 * 2).reshape(2, 6, 6, 2) / 10.0, jnp.float32)
    # Jitted: finite differences call it many times, each a dispatch of one compiled program.
    check_grads(jax.jit(fn), (x,), order=1, modes=("rev",), atol=2e-2, rtol=2e-2, eps=1e-2)


# ------------------------------------------------------------------------------------------
# jit == eager, vmap == loop, any leading dims.


ALL_KINDS = [
    ("max", dict(window=2)),
    ("min", dict(window=3, stride=2, padding=1)),
    ("avg", dict(window=2, stride=1)),
    ("lp", dict(p=3.0, window=2)),
    ("mixed", dict(alpha=jnp.linspace(0, 1, 3), window=2)),
    ("stochastic", dict(window=2, key=jax.random.key(3))),
    ("blur", dict(filter_size=5)),
    ("max_blur", dict(filter_size=3)),
    ("aps", dict(norm="l1")),
    ("global_avg", {}),
    ("global_max", {}),
    ("global_min", {}),
]


def test_pools_lists_every_kind():
    assert set(P.POOLS) == {k for k, _ in ALL_KINDS}


@pytest.mark.parametrize("kind,kw", ALL_KINDS)
def test_jit_equals_eager_and_vmap_equals_loop(kind, kw):
    x = jnp.asarray(np.abs(_rng(8).normal(size=(3, 8, 8, 3))), jnp.float32)
    eager = P.pool(x, kind, **kw)
    jitted = jax.jit(lambda a: P.pool(a, kind, **kw))(x)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    if kind == "stochastic":  # one key per image under vmap is the natural batched use
        keys = jax.random.split(kw["key"], 3)
        opts = {k: v for k, v in kw.items() if k != "key"}
        vm = jax.vmap(lambda k, a: P.stochastic_pool(a, key=k, **opts))(keys, x)
        loop = jnp.stack([P.stochastic_pool(x[i], key=keys[i], **opts) for i in range(3)])
    else:
        vm = jax.vmap(lambda a: P.pool(a, kind, **kw))(x)
        loop = jnp.stack([P.pool(x[i], kind, **kw) for i in range(3)])
    np.testing.assert_allclose(vm, loop, rtol=1e-6, atol=1e-6)
    if kind not in ("stochastic", "aps"):  # per-position ops: batched == stacked singles
        np.testing.assert_allclose(eager, loop, rtol=1e-6, atol=1e-6)
    more = P.pool(x[None], kind, **kw)  # extra leading dim
    assert more.shape == (1,) + eager.shape


# ------------------------------------------------------------------------------------------
# Lp, mixed, stochastic.


def test_lp_pool_definition():
    x = np.abs(_rng(9).normal(size=(6, 6, 2))).astype(np.float32)
    for p in (1.0, 2.0, 3.5):
        want = ref_pool(x**p, 2, mode="avg") * 4
        np.testing.assert_allclose(P.lp_pool(jnp.asarray(x), 2, p=p), want ** (1 / p), rtol=1e-5)
    np.testing.assert_allclose(P.lp_pool(jnp.asarray(x), 2, p=64.0), ref_pool(x, 2), rtol=0.05)
    assert (
        float(jax.grad(lambda a: P.lp_pool(a, 2, p=2.0).sum())(jnp.zeros((2, 2, 1))).sum()) == 0.0
    )


def test_mixed_pool_endpoints_and_per_channel():
    x = jnp.asarray(_rng(10).normal(size=(6, 6, 3)), jnp.float32)
    np.testing.assert_allclose(P.mixed_pool(x, 2, alpha=1.0), P.max_pool(x, 2), rtol=1e-6)
    np.testing.assert_allclose(P.mixed_pool(x, 2, alpha=0.0), P.avg_pool(x, 2), rtol=1e-6)
    a = jnp.array([0.0, 0.5, 1.0])
    got = P.mixed_pool(x, 2, alpha=a)
    np.testing.assert_allclose(got[..., 0], P.avg_pool(x, 2)[..., 0], rtol=1e-6)
    np.testing.assert_allclose(got[..., 2], P.max_pool(x, 2)[..., 2], rtol=1e-6)
    mid = 0.5 * (P.max_pool(x, 2) + P.avg_pool(x, 2))
    np.testing.assert_allclose(got[..., 1], mid[..., 1], rtol=1e-6)


def test_stochastic_pool_eval_is_probability_weighted_average():
    x = np.abs(_rng(11).normal(size=(4, 4, 2))).astype(np.float32)
    got = P.stochastic_pool(jnp.asarray(x), 2, train=False)
    want = ref_pool(x**2, 2, mode="avg") / ref_pool(x, 2, mode="avg")  # sum a^2 / sum a
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(P.stochastic_pool(jnp.zeros((2, 2, 1)), 2, train=False).sum()) == 0.0


def test_stochastic_pool_samples_with_activation_probabilities():
    window = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(2, 2, 1)
    x = jnp.broadcast_to(jnp.asarray(window), (4000, 2, 2, 1))
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k, a: P.stochastic_pool(a, 2, key=k))(keys, x)).ravel()
    freq = np.array([(draws == v).mean() for v in (1, 2, 3, 4)])
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.03)
    assert set(np.unique(draws)) <= {1.0, 2.0, 3.0, 4.0}
    zero = P.stochastic_pool(jnp.zeros((2, 2, 1)), 2, key=jax.random.key(1))
    assert float(zero.sum()) == 0.0


# ------------------------------------------------------------------------------------------
# BlurPool, MaxBlurPool, APS.


def ref_blur(x, k, s, mode):
    a = np.asarray(_BINOMIAL[k])
    f = np.outer(a, a) / np.outer(a, a).sum()
    lo, hi = (k - 1) // 2, k // 2
    xp = np.pad(x, [(lo, hi), (lo, hi), (0, 0)], mode={"circular": "wrap"}.get(mode, mode))
    ho, wo = -(-x.shape[0] // s), -(-x.shape[1] // s)
    out = np.zeros((ho, wo, x.shape[2]))
    for i in range(ho):
        for j in range(wo):
            out[i, j] = np.einsum("hw,hwc->c", f, xp[i * s : i * s + k, j * s : j * s + k])
    return out


@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize("mode", ["reflect", "constant", "circular"])
def test_blur_pool_against_loop(k, mode):
    x = _rng(12).normal(size=(9, 8, 2)).astype(np.float32)
    got = P.blur_pool(jnp.asarray(x), filter_size=k, stride=2, pad_mode=mode)
    np.testing.assert_allclose(got, ref_blur(x, k, 2, mode), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(P.binomial_filter(k).sum(), 1.0)


def test_blur_pool_size_one_is_subsampling_and_constant_stays_constant():
    x = jnp.asarray(_rng(13).normal(size=(2, 7, 7, 3)), jnp.float32)
    np.testing.assert_array_equal(P.blur_pool(x, filter_size=1, stride=2), x[:, ::2, ::2, :])
    c = P.blur_pool(jnp.full((8, 8, 1), 3.0), filter_size=5, stride=2)
    np.testing.assert_allclose(c, 3.0, rtol=1e-6)


def test_max_blur_pool_is_dense_max_then_blur():
    x = jnp.asarray(_rng(14).normal(size=(10, 10, 2)), jnp.float32)
    want = P.blur_pool(P.max_pool(x, 2, stride=1), filter_size=3, stride=2)
    np.testing.assert_allclose(P.max_blur_pool(x, 2, filter_size=3, stride=2), want, rtol=1e-6)
    assert P.max_blur_pool(x).shape == (5, 5, 2)


def test_aps_picks_largest_norm_component_per_example():
    x = _rng(15).normal(size=(4, 6, 6, 2)).astype(np.float32)
    got = np.asarray(P.aps_pool(jnp.asarray(x)))
    for b in range(4):
        comps = [x[b, i::2, j::2] for i in range(2) for j in range(2)]
        best = int(np.argmax([np.sum(c**2) for c in comps]))
        np.testing.assert_array_equal(got[b], comps[best])


def test_aps_pool_with_index_returns_and_takes_the_component_over_leading_dims():
    x = jnp.asarray(_rng(17).normal(size=(2, 3, 6, 6, 2)).astype(np.float32))
    y, idx = P.aps_pool_with_index(x, stride=3, norm="linf")
    assert idx.shape == (2, 3) and jnp.issubdtype(idx.dtype, jnp.integer)
    np.testing.assert_array_equal(y, P.aps_pool(x, stride=3, norm="linf"))
    xn = np.asarray(x)
    for b, c in np.ndindex(2, 3):
        i, j = divmod(int(idx[b, c]), 3)
        np.testing.assert_array_equal(y[b, c], xn[b, c, i::3, j::3])
    forced = jnp.full((2, 3), 8, jnp.int32)  # the last component, (i, j) = (2, 2)
    y8, idx8 = P.aps_pool_with_index(x, stride=3, index=forced)
    np.testing.assert_array_equal(idx8, forced)
    np.testing.assert_array_equal(y8, xn[..., 2::3, 2::3, :])
    # Under jit the index is traced: its shape is checked, its values cannot be.
    jitted = jax.jit(lambda x, i: P.aps_pool_with_index(x, stride=3, index=i)[0])
    np.testing.assert_array_equal(jitted(x, forced), y8)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (np.zeros((2,), np.int32), r"index must be ints of shape \(2, 3\)"),
        (np.zeros((2, 3), np.float32), "index must be ints of shape"),
        (np.full((2, 3), 4, np.int32), r"index values must lie in \[0, 4\), got 4..4"),
        (np.full((2, 3), -1, np.int32), r"index values must lie in \[0, 4\)"),
    ],
)
def test_aps_pool_with_index_rejects_a_bad_index(index, message):
    x = jnp.zeros((2, 3, 4, 4, 1))
    with pytest.raises(ValueError, match=message):
        P.aps_pool_with_index(x, stride=2, index=index)


def test_aps_odd_size_is_padded_circularly():
    x = _rng(16).normal(size=(5, 5, 1)).astype(np.float32)
    assert P.aps_pool(jnp.asarray(x)).shape == (3, 3, 1)
    xw = np.pad(x, [(0, 1), (0, 1), (0, 0)], mode="wrap")
    comps = [xw[i::2, j::2] for i in range(2) for j in range(2)]
    best = int(np.argmax([np.sum(c**2) for c in comps]))
    np.testing.assert_array_equal(P.aps_pool(jnp.asarray(x)), comps[best])


# ------------------------------------------------------------------------------------------
# Properties the theory promises.


@given(
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    pad=st.integers(0, 1),
)
def test_output_shape_matches_output_size(h, w, k, s, pad):
    if pad > k // 2:
        pad = 0
    x = jax.ShapeDtypeStruct((1, h, w, 2), jnp.float32)
    want = P.output_size((h, w), k, s, pad)
    for kind in ("max", "avg", "min"):  # traced for its shape: nothing is compiled or run
        got = jax.eval_shape(
            lambda a, kind=kind: P.pool(a, kind, window=k, stride=s, padding=pad), x
        )
        assert got.shape == (1, *want, 2)
    assert P.output_size(h, k, s, pad) == want[0]


@given(seed=st.integers(0, 10_000))
def test_max_pool_unchanged_by_permutations_inside_windows(seed):
    rng = _rng(seed)
    x = rng.normal(size=(6, 8, 2)).astype(np.float32)
    blocks = x.reshape(3, 2, 4, 2, 2).transpose(0, 2, 4, 1, 3).reshape(3, 4, 2, 4)
    perm = np.stack([rng.permutation(4) for _ in range(3 * 4 * 2)]).reshape(3, 4, 2, 4)
    shuffled = np.take_along_axis(blocks, perm, axis=-1)
    y = shuffled.reshape(3, 4, 2, 2, 2).transpose(0, 3, 1, 4, 2).reshape(6, 8, 2)
    np.testing.assert_array_equal(P.max_pool(jnp.asarray(y), 2), P.max_pool(jnp.asarray(x), 2))
    np.testing.assert_array_equal(P.min_pool(jnp.asarray(y), 2), P.min_pool(jnp.asarray(x), 2))


@given(seed=st.integers(0, 10_000), dy=st.integers(-7, 7), dx=st.integers(-7, 7))
def test_global_pooling_exactly_invariant_to_circular_shifts(seed, dy, dx):
    x = jnp.asarray(_rng(seed).normal(size=(2, 7, 6, 3)), jnp.float32)
    xs = jnp.roll(x, (dy, dx), axis=(1, 2))
    for kind in ("max", "min"):
        np.testing.assert_array_equal(P.global_pool(xs, kind=kind), P.global_pool(x, kind=kind))
    # Exact in exact arithmetic; float32 sums in another order differ in the last bits.
    np.testing.assert_allclose(
        P.global_pool(xs, kind="avg"), P.global_pool(x, kind="avg"), atol=1e-6
    )


@given(
    seed=st.integers(0, 10_000),
    dy=st.integers(-5, 5),
    dx=st.integers(-5, 5),
    stride=st.sampled_from([2, 3]),
    norm=st.sampled_from(["l2", "l1", "linf"]),
)
def test_aps_output_shifts_circularly_with_its_input(seed, dy, dx, stride, norm):
    size = 4 * stride
    x = jnp.asarray(_rng(seed).normal(size=(2, size, size, 3)), jnp.float32)
    y = P.aps_pool(x, stride=stride, norm=norm)
    ys = P.aps_pool(jnp.roll(x, (dy, dx), axis=(1, 2)), stride=stride, norm=norm)
    # The output equals the original output circularly shifted by some (a, b).
    for b in range(2):
        found = any(
            np.array_equal(np.roll(y[b], (a, c), axis=(0, 1)), ys[b])
            for a in range(size // stride)
            for c in range(size // stride)
        )
        assert found
    # ... and global pooling after it is exactly invariant.
    np.testing.assert_allclose(P.global_pool(ys), P.global_pool(y), atol=1e-6)


# ------------------------------------------------------------------------------------------
# Torch semantics, where torch is importable.


def test_against_torch_semantics():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.maximum(_rng(17).normal(size=(2, 9, 9, 3)), 0).astype(np.float32)  # ReLU ties at 0
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    g = _rng(18).normal(size=(2, 3, 5, 5)).astype(np.float32)
    yt = F.max_pool2d(xt, 3, 2, padding=1)
    yt.backward(torch.tensor(g))
    y, vjp = jax.vjp(lambda a: P.max_pool(a, 3, stride=2, padding=1), jnp.asarray(x))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-6)
    (dx,) = vjp(jnp.asarray(g.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    xa = torch.tensor(x.transpose(0, 3, 1, 2))

    def nhwc(t):
        return t.numpy().transpose(0, 2, 3, 1)

    np.testing.assert_allclose(
        P.avg_pool(jnp.asarray(x), 3, stride=2, padding=1, count_include_pad=False),
        nhwc(F.avg_pool2d(xa, 3, 2, 1, count_include_pad=False)),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        P.lp_pool(jnp.asarray(x), 3, p=2.0, stride=2),
        nhwc(F.lp_pool2d(xa, 2.0, 3, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    # adobe/antialiased-cnns BlurPool: reflect pad then depthwise conv with the binomial filter.
    for k in (2, 3, 5):
        a = torch.tensor(_BINOMIAL[k], dtype=torch.float32)
        f = (a[:, None] * a[None, :]) / (a[:, None] * a[None, :]).sum()
        lo, hi = (k - 1) // 2, k // 2
        xp = F.pad(xa, (lo, hi, lo, hi), mode="reflect")
        want = F.conv2d(xp, f[None, None].repeat(3, 1, 1, 1), stride=2, groups=3)
        np.testing.assert_allclose(
            P.blur_pool(jnp.asarray(x), filter_size=k), nhwc(want), rtol=1e-5, atol=1e-6
        )


# ------------------------------------------------------------------------------------------
# Bad input: one clear ValueError naming the problem and the valid choices.


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: P.pool(x, "median", window=2), "unknown pooling kind 'median': valid are max"),
        (lambda x: P.max_pool(x, 9), "larger than the padded input"),
        (lambda x: P.avg_pool(x, 2, stride=0), "stride must be >= 1"),
        (lambda x: P.max_pool(x, 0), "window must be >= 1"),
        (lambda x: P.mixed_pool(x, 2, alpha=1.5), r"alpha must lie in \[0, 1\]"),
        (lambda x: P.mixed_pool(x, 2, alpha=jnp.array([0.2, -0.1])), r"alpha must lie in \[0, 1\]"),
        (lambda x: P.blur_pool(x, filter_size=8), "filter_size must be in 1..7"),
        (lambda x: P.blur_pool(x, filter_size=0), "filter_size must be in 1..7"),
        (lambda x: P.blur_pool(x, pad_mode="zeros"), "unknown pad_mode 'zeros'"),
        (lambda x: P.max_pool(x[0, 0], 2), "rank >= 3"),
        (lambda x: P.max_pool(x, 2, padding="FULL"), "unknown padding 'FULL': valid are 'VALID'"),
        (lambda x: P.max_pool(x, 2, padding=((1, 1),)), "unknown padding"),
        (lambda x: P.max_pool(x, 2, padding=2), "entirely in padding"),
        (lambda x: P.aps_pool(x, norm="l3"), "unknown norm 'l3': valid are"),
        (lambda x: P.global_pool(x, kind="median"), "unknown global pool kind"),
        (lambda x: P.lp_pool(x, 2, p=0.0), "p > 0"),
        (lambda x: P.pool(x, "stochastic", window=2), "needs key"),
        (lambda x: P.max_pool(x, (2, 2, 2)), r"an \(h, w\) pair"),
    ],
)
def test_bad_input_raises_one_clear_line(call, match):
    x = jnp.ones((2, 8, 8, 2))
    with pytest.raises(ValueError, match=match) as info:
        call(x)
    assert "\n" not in str(info.value)


def test_nan_propagates_like_torch():
    x = np.ones((4, 4, 1), np.float32)
    x[1, 1, 0] = np.nan  # in the top-left window, not its first element
    for fn in (lambda a: P.max_pool(a, 2), jax.jit(lambda a: P.max_pool(a, 2))):
        out = np.asarray(fn(jnp.asarray(x)))[..., 0]
        assert np.isnan(out[0, 0]) and not np.isnan(out[1, 1])
    out, vjp = jax.vjp(lambda a: P.max_pool(a, 2), jnp.asarray(x))
    assert np.isnan(np.asarray(out)[0, 0, 0])
    (dx,) = vjp(jnp.ones_like(out))
    # Documented difference from torch: the gradient goes to the first non-NaN maximum.
    assert float(dx[0, 0, 0]) == 1.0 and float(dx[1, 1, 0]) == 0.0


# ------------------------------------------------------------------------------------------
# Call style (dm_pix's): x, then the window positionally, every other option keyword-only.


@pytest.mark.parametrize(
    "call",
    [
        lambda x: P.max_pool(x, 2, 1),
        lambda x: P.min_pool(x, 2, 1),
        lambda x: P.avg_pool(x, 2, 1),
        lambda x: P.lp_pool(x, 2, 2.0),
        lambda x: P.mixed_pool(x, 2, 0.5),
        lambda x: P.stochastic_pool(x, 2, 1),
        lambda x: P.blur_pool(x, 3),
        lambda x: P.max_blur_pool(x, 2, 3),
        lambda x: P.aps_pool(x, 2),
        lambda x: P.aps_pool_with_index(x, 2),
        lambda x: P.global_pool(x, "avg"),
    ],
)
def test_options_after_the_window_are_keyword_only(call):
    with pytest.raises(TypeError, match="positional argument"):
        call(jnp.ones((8, 8, 2)))


def test_geometry_and_options_of_every_kind():
    assert P.geometry_of("max") == ("window", "stride", "padding")
    assert P.geometry_of("stochastic") == ("window", "stride", "padding")
    assert P.geometry_of("max_blur") == ("window", "stride")
    assert P.geometry_of("blur") == P.geometry_of("aps") == ("stride",)
    assert P.geometry_of("global_max") == ()
    assert P.options_of("lp") == ("p",)
    assert P.options_of("mixed") == ("alpha",)
    assert P.options_of("stochastic") == ()  # key and train are not layer options
    assert P.options_of("max_blur") == ("filter_size", "pad_mode")
    assert P.options_of("global_avg") == ()
    with pytest.raises(ValueError, match="unknown pooling kind 'median'"):
        P.options_of("median")


def _old_layer_max_blur(x, window, filter_size, stride, pad_mode):
    """The Pool layer's former own max-blur (the only copy with circular padding)."""
    if pad_mode == "circular":
        wh, ww = (window, window) if isinstance(window, int) else window
        cfg = [(0, 0)] * (x.ndim - 3) + [(0, wh - 1), (0, ww - 1), (0, 0)]
        x = jnp.pad(x, cfg, mode="wrap")
    y = P.max_pool(x, window, stride=1)
    return P.blur_pool(y, filter_size=filter_size, stride=stride, pad_mode=pad_mode)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "circular"])
@pytest.mark.parametrize("window,filter_size", [(2, 3), (3, 5), ((2, 3), 2)])
def test_max_blur_pool_is_the_layers_max_blur(pad_mode, window, filter_size):
    x = jnp.asarray(_rng(40).normal(size=(2, 9, 10, 3)), jnp.float32)
    kw = dict(filter_size=filter_size, stride=2, pad_mode=pad_mode)
    want = _old_layer_max_blur(x, window, filter_size, 2, pad_mode)
    np.testing.assert_allclose(P.max_blur_pool(x, window, **kw), want, rtol=1e-6, atol=1e-6)
    if pad_mode == "circular":  # a circular shift commutes with the dense max and the blur
        y = P.max_blur_pool(x[:, :8, :8], window, **kw)
        ys = P.max_blur_pool(jnp.roll(x[:, :8, :8], (2, 4), axis=(1, 2)), window, **kw)
        np.testing.assert_allclose(np.roll(y, (1, 2), axis=(1, 2)), ys, rtol=1e-5, atol=1e-6)


def test_override_swaps_a_kind_for_pool_and_the_models_pool_layer():
    """pooling.override(kind, fn): pool() and the Pool layer call fn inside the block only,
    the kind's own function comes back on exit (also after an error), overrides nest."""
    from invariance.models.layers import Pool

    x = jnp.asarray(SEED_001)[None, ..., None]  # (1, 4, 4, 1)
    calls = []

    def corner(x, window, *, stride=None, padding="VALID"):  # max's signature
        calls.append((window, stride, padding))
        return x[..., ::window, ::window, :]

    layer = Pool("max", window=2)
    variables = layer.init(jax.random.key(0), x)
    own = P.pool(x, "max", window=2)
    with P.override("max", corner):
        np.testing.assert_array_equal(P.pool(x, "max", window=2), x[:, ::2, ::2])
        np.testing.assert_array_equal(layer.apply(variables, x), x[:, ::2, ::2])
        np.testing.assert_array_equal(P.pool(x, "avg", window=2), P.avg_pool(x, 2))  # others kept
        with P.override("max", lambda x, window, **_: -P.max_pool(x, window)):
            np.testing.assert_array_equal(P.pool(x, "max", window=2), -own)
        np.testing.assert_array_equal(P.pool(x, "max", window=2), x[:, ::2, ::2])  # outer back
    assert calls == [(2, None, "VALID"), (2, 2, "VALID"), (2, None, "VALID")]
    np.testing.assert_array_equal(P.pool(x, "max", window=2), own)
    with pytest.raises(RuntimeError, match="inside"):
        with P.override("max", corner):
            raise RuntimeError("inside")
    np.testing.assert_array_equal(layer.apply(variables, x), own)  # restored after the error
    with pytest.raises(ValueError, match="unknown pooling kind 'nosuch': valid are max, min"):
        with P.override("nosuch", corner):
            pass
    with pytest.raises(ValueError, match="fn must be callable"):
        with P.override("max", None):
            pass
    assert P.pool(x, "max", window=2).tolist() == own.tolist()
