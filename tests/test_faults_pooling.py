"""Issue 12 §4, pooling: bad numbers are refused or propagate, never become a confident answer.

Lp pooling follows torch.nn.LPPool2d on every input (negative window sums, p = inf); a window,
stride or input of the wrong type is refused in one line naming it; APS states, and the tests
show, the condition of its shift invariance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invariance import pooling as P


def _torch_lp(x, p, window, stride=None):
    """torch.nn.functional.lp_pool2d on an NHWC numpy array (NHWC result), value and grad."""
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    yt = torch.nn.functional.lp_pool2d(xt, p, window, stride)
    yt.sum().backward()
    nhwc = (0, 2, 3, 1)
    return yt.detach().numpy().transpose(nhwc), xt.grad.numpy().transpose(nhwc)


def _ours_lp(x, p, window, stride=None):
    y, vjp = jax.vjp(lambda a: P.lp_pool(a, window, p=p, stride=stride), jnp.asarray(x))
    (dx,) = vjp(jnp.ones_like(y))
    return np.asarray(y), np.asarray(dx)


def test_lp_pool_negative_window_sum_is_not_zero():
    # The example: p = 1 is sum pooling, so the window [[-1, -2], [0.5, 0.25]] sums
    # to -2.25 (torch gives -2.25; the old code gave 0).
    x = jnp.array([[-1.0, -2.0], [0.5, 0.25]])[..., None]
    assert float(P.lp_pool(x, 2, p=1)[0, 0, 0]) == -2.25
    grad = jax.grad(lambda a: P.lp_pool(a, 2, p=1).sum())(x)
    np.testing.assert_array_equal(grad, np.ones_like(x))


@pytest.mark.parametrize("p", [1, 1.0, 2, 3, 3.0, 4, 1.5])
def test_lp_pool_matches_torch_on_signed_inputs(p):
    # Signed inputs: negative window sums for odd p (torch: s for p = 1, NaN for p = 3, as
    # pow defines it), NaN from x^p for non-integer p. NaN positions must agree too.
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype(np.float32)
    want_y, want_dx = _torch_lp(x, p, 2)
    y, dx = _ours_lp(x, p, 2)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)  # NaN == NaN here
    finite = np.isfinite(want_dx)
    np.testing.assert_allclose(dx[finite], want_dx[finite], rtol=1e-4, atol=1e-5)
    assert np.array_equal(np.isnan(dx), np.isnan(want_dx))


def test_lp_pool_p_inf_is_max_abs_like_torch():
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
    y, dx = _ours_lp(x, math.inf, 2)
    np.testing.assert_array_equal(y, np.asarray(P.max_pool(jnp.abs(jnp.asarray(x)), 2)))
    want_y, want_dx = _torch_lp(x, math.inf, 2)
    np.testing.assert_allclose(y, want_y, rtol=1e-6)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6)
    # jit sees the same concrete p.
    np.testing.assert_array_equal(jax.jit(lambda a: P.lp_pool(a, 2, p=np.inf))(x), y)


def test_lp_pool_zero_window_has_value_and_gradient_zero_like_torch():
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 2:, 2:, 0] = [[1.0, 2.0], [0.0, 2.0]]
    for p in (1, 2, 3.5):
        y, dx = _ours_lp(x, p, 2)
        want_y, want_dx = _torch_lp(x, p, 2)
        np.testing.assert_allclose(y, want_y, rtol=1e-5)
        np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "p,error,match",
    [
        (0.0, ValueError, r"p > 0 \(or inf\), got 0.0"),
        (-math.inf, ValueError, r"p > 0 \(or inf\)"),
        (math.nan, ValueError, r"p > 0 \(or inf\), got nan"),
        (True, TypeError, r"p must be a real number > 0 \(or inf\), got True"),
        ("2", TypeError, r"p must be a real number > 0 \(or inf\), got '2'"),
    ],
)
def test_lp_pool_refuses_bad_p(p, error, match):
    with pytest.raises(error, match=match) as info:
        P.lp_pool(jnp.ones((4, 4, 1)), 2, p=p)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda x: P.max_pool(x, 2.5), TypeError, r"window must be an int or an \(h, w\) pair"),
        (lambda x: P.max_pool(x, 2.0), TypeError, r"got 2.0 \(float\)"),
        (lambda x: P.max_pool(x, "2"), TypeError, r"window must be .* got '2' \(str\)"),
        (lambda x: P.max_pool(x, "22"), TypeError, r"window must be .* got '22' \(str\)"),
        (lambda x: P.max_pool(x, True), TypeError, r"window must be .* got True \(bool\)"),
        (lambda x: P.avg_pool(x, (2, 2.5)), TypeError, r"window must be .* got \(2, 2.5\)"),
        (lambda x: P.max_pool(x, 2, stride=1.5), TypeError, r"stride must be an int or"),
        (lambda x: P.lp_pool(x, "2"), TypeError, r"window must be an int or"),
        (lambda x: P.blur_pool(x, stride=2.5), TypeError, r"stride must be an int or"),
        (lambda x: P.max_pool(x, 2, padding=True), ValueError, r"unknown padding True"),
        (lambda x: P.max_pool(x, 2, padding=((0.5, 0), (0, 0))), ValueError, "unknown padding"),
        (lambda x: P.output_size(8, 2.5), TypeError, r"window must be an int or"),
    ],
)
def test_bad_window_stride_padding_types_are_one_clear_line(call, error, match):
    with pytest.raises(error, match=match) as info:
        call(jnp.ones((2, 8, 8, 2)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["max", "min", "avg", "lp", "mixed", "blur", "aps", "global_max"])
@pytest.mark.parametrize("dtype", [jnp.bool_, jnp.complex64])
def test_bool_and_complex_inputs_are_refused_in_one_line(kind, dtype):
    options = {"alpha": 0.5} if kind == "mixed" else {}
    if kind in ("max", "min", "avg", "lp", "mixed"):
        options["window"] = 2
    x = jnp.ones((4, 4, 1), dtype)
    with pytest.raises(TypeError, match=r"x must be a float or integer array, got dtype") as info:
        P.pool(x, kind, **options)
    assert "\n" not in str(info.value)


def _is_circular_shift_of(y, ys):
    """Whether ``ys`` (H, W, C) equals ``y`` circularly shifted by some (a, b)."""
    h, w = y.shape[:2]
    return any(
        np.array_equal(np.roll(y, (a, b), axis=(0, 1)), ys) for a in range(h) for b in range(w)
    )


def test_aps_shift_invariance_needs_sizes_divisible_by_the_stride():
    doc = " ".join(P.aps_pool.__doc__.split())
    assert "divisible by ``stride``" in doc and "guarantee is lost" in doc
    rng = np.random.default_rng(2)
    # Divisible (8x8, stride 2): every circular shift of x circularly shifts the output.
    x = rng.normal(size=(8, 8, 3)).astype(np.float32)
    y = np.asarray(P.aps_pool(jnp.asarray(x)))
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            ys = np.asarray(P.aps_pool(jnp.asarray(np.roll(x, (dy, dx), axis=(0, 1)))))
            assert _is_circular_shift_of(y, ys), (dy, dx)
    # Odd (7x7, stride 2): the circular padding at the end breaks it for some shift.
    x = rng.normal(size=(7, 7, 3)).astype(np.float32)
    y = np.asarray(P.aps_pool(jnp.asarray(x)))
    broken = [
        (dy, dx)
        for dy in range(-3, 4)
        for dx in range(-3, 4)
        if not _is_circular_shift_of(
            y, np.asarray(P.aps_pool(jnp.asarray(np.roll(x, (dy, dx), axis=(0, 1)))))
        )
    ]
    assert broken  # and documented: the guarantee needs H, W divisible by the stride
