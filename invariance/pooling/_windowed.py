"""Windowed pooling: max / min (torch's one-element gradient), average, Lp, mixed, stochastic."""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from invariance._checks import is_concrete as _is_concrete
from invariance.pooling import _cpu_kernel
from invariance.pooling._geometry import (
    Pads,
    Pair,
    _check_no_empty_window,
    _check_rank,
    _geometry,
    _lowest,
    _pad_hw,
    _slice,
    _unslice,
    _window_slices,
)

GLOBAL_KINDS = ("avg", "max", "min")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_core(x: jax.Array, win: Pair, st: Pair, pads: Pads, out_hw: Pair) -> jax.Array:
    xp = _pad_hw(x, pads, _lowest(x.dtype))
    return functools.reduce(jnp.maximum, _window_slices(xp, win, st, out_hw))


def _non_overlapping(win: Pair, st: Pair, pads: Pads) -> bool:
    return win == st and pads == ((0, 0), (0, 0))


def _first_argmax(slices: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Max over the window slices (NaN propagates, as in torch) and the index of the first
    maximum in row-major order (a later element wins only if strictly greater)."""
    m = slices[0]
    idx = jnp.zeros(m.shape, jnp.int8 if len(slices) <= 127 else jnp.int32)
    for k, sl in enumerate(slices[1:], start=1):
        better = sl > m
        m = jnp.where(better, sl, m)
        idx = jnp.where(better, jnp.asarray(k, idx.dtype), idx)
    return functools.reduce(jnp.maximum, slices), idx


def _scatter_to_index(
    g: jax.Array, idx: jax.Array, shape: tuple[int, ...], win: Pair, out_hw: Pair
) -> jax.Array:
    """Non-overlapping windows' input cotangent ``shape`` from the output cotangent ``g`` and
    the saved window index ``idx`` (both ``(..., Ho, Wo, C)``)."""
    # Each input element belongs to at most one window: write the cotangent where the
    # element's position in its window equals the saved index, in x's own memory layout
    # (..., Ho, kh, Wo, kw, C) — one fused, transpose-free pass.
    lead, (h, w, c) = shape[:-3], shape[-3:]
    ho, wo = out_hw
    kh, kw = win
    pos = jnp.arange(kh, dtype=idx.dtype)[:, None] * kw + jnp.arange(kw, dtype=idx.dtype)
    pos = pos.reshape(kh, 1, kw, 1)
    idx6 = idx[..., :, None, :, None, :]
    g6 = g[..., :, None, :, None, :]
    dx = jnp.where(idx6 == pos, g6, jnp.zeros((), g.dtype))
    dx = dx.reshape(*lead, ho * kh, wo * kw, c)
    if (h, w) != (ho * kh, wo * kw):  # rows / columns that no window covers get zero
        cfg = [(0, 0)] * len(lead) + [(0, h - ho * kh), (0, w - wo * kw), (0, 0)]
        dx = jnp.pad(dx, cfg)
    return dx


def _max_pool_fwd(x, win, st, pads, out_hw):
    if _non_overlapping(win, st, pads):
        # Keep the window index (1 byte per output) instead of x: the backward then needs no
        # comparisons against the output. 2x2 float32 pooling on CPU computes both in one
        # pass with a compiled kernel (_cpu_kernel.py); the XLA slices serve elsewhere.
        def xla_forward(x):
            return _first_argmax(_window_slices(x, win, st, out_hw))

        if _cpu_kernel.applies(x, win, st, pads):
            out, idx = _cpu_kernel.forward(x, xla_forward)
        else:
            out, idx = xla_forward(x)
        return out, (idx, x.shape)
    out = _max_pool_core(x, win, st, pads, out_hw)
    return out, (x, out)


def _max_pool_bwd(win, st, pads, out_hw, res, g):
    if _non_overlapping(win, st, pads):
        idx, shape = res
        xla_backward = functools.partial(_scatter_to_index, shape=shape, win=win, out_hw=out_hw)
        probe = jax.ShapeDtypeStruct(shape, g.dtype)
        if _cpu_kernel.applies(probe, win, st, pads):
            return (_cpu_kernel.backward(g, idx, shape, xla_backward),)
        return (xla_backward(g, idx),)
    x, out = res
    xp = _pad_hw(x, pads, _lowest(x.dtype))
    padded_hw = (xp.shape[-3], xp.shape[-2])
    g = g.astype(x.dtype)
    zero = jnp.zeros((), g.dtype)
    # General windows: sum of the per-element contributions placed back on the padded grid.
    taken = None
    dxp = None
    for idx, sl in enumerate(_window_slices(xp, win, st, out_hw)):
        i, j = divmod(idx, win[1])
        hit = sl == out
        if taken is None:
            taken = hit
        else:
            hit = hit & ~taken
            taken = taken | hit
        part = _unslice(jnp.where(hit, g, zero), i, j, st, padded_hw)
        dxp = part if dxp is None else dxp + part
    (t, _), (l, _) = pads
    return (dxp[..., t : t + x.shape[-3], l : l + x.shape[-2], :],)


_max_pool_core.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: Any, *, stride: Any = None, padding: Any = "VALID") -> jax.Array:
    """Max pooling, as ``torch.nn.MaxPool2d`` (padded positions never win).

    Args:
        x: ``(..., H, W, C)``.
        window: window size, int or (h, w).
        stride: int or (h, w); defaults to ``window``.
        padding: "VALID", "SAME", an int, or ((top, bottom), (left, right)).

    Returns:
        ``(..., H', W', C)`` with ``H', W' = output_size((H, W), window, stride, padding)``.

    The gradient gives each window's whole cotangent to the first maximum in row-major order
    (torch's convention), computed with a custom VJP (``scripts/bench_pooling.py`` measures
    it against torch and flax.linen). On the CPU, 2x2 / stride-2 float32 pooling with 4, 8, 16,
    32 or 64 channels takes that gradient path through a compiled kernel (``_cpu_kernel.py``;
    the same results, NaN sign and payload bits aside; off with ``INVARIANCE_CPU_KERNELS=0``).
    A NaN in a window makes its output NaN, as in torch; its gradient goes to the first non-NaN
    maximum, unless the NaN is the window's first element (torch always sends it to the NaN).
    """
    win, st, pads, out_hw = _geometry(x, window, stride, padding)
    _check_no_empty_window((x.shape[-3], x.shape[-2]), win, st, pads, out_hw)
    if st == (1, 1) and pads == ((0, 0), (0, 0)) and win != (1, 1):
        # Dense windows (MaxBlurPool's): two 1-D passes, along W then along H. The first
        # maximum of the first row holding the window's maximum is the row-major first maximum,
        # so the gradient is the same; each pass costs about a quarter of the 2-D form.
        return _dense_max_1d(_dense_max_1d(x, win[1], x.ndim - 2), win[0], x.ndim - 3)
    return _max_pool_core(x, win, st, pads, out_hw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _dense_max_1d(x: jax.Array, k: int, axis: int) -> jax.Array:
    """Max over ``k`` consecutive elements along ``axis`` at stride 1 (``n - k + 1`` outputs)."""
    return _dense_max_1d_fwd(x, k, axis)[0]


def _dense_max_1d_fwd(x, k, axis):
    n = x.shape[axis] - k + 1
    parts = [lax.slice_in_dim(x, i, i + n, axis=axis) for i in range(k)]
    # The first maximum wins (a later element only if strictly greater), as _first_argmax.
    m, idx = _first_argmax(parts)
    return m, (idx, x.shape)


def _dense_max_1d_bwd(k, axis, res, g):
    idx, shape = res
    n = shape[axis] - k + 1
    zero = jnp.zeros((), g.dtype)
    dx = None
    for i in range(k):
        cfg = [(0, 0, 0)] * g.ndim
        cfg[axis] = (i, shape[axis] - i - n, 0)
        part = lax.pad(jnp.where(idx == i, g, zero), zero, cfg)
        dx = part if dx is None else dx + part
    return (dx,)


_dense_max_1d.defvjp(_dense_max_1d_fwd, _dense_max_1d_bwd)


def min_pool(x: jax.Array, window: Any, *, stride: Any = None, padding: Any = "VALID") -> jax.Array:
    """Min pooling: ``-max_pool(-x)``; padded positions never win.

    Args and returns as :func:`max_pool`. The gradient goes to the first minimum in row-major
    order of each window.
    """
    _check_rank(x)
    return -max_pool(-x, window, stride=stride, padding=padding)


def _window_sum(x: jax.Array, win: Pair, st: Pair, pads: Pads, out_hw: Pair) -> jax.Array:
    xp = _pad_hw(x, pads, 0)
    return functools.reduce(jnp.add, _window_slices(xp, win, st, out_hw))


def avg_pool(
    x: jax.Array,
    window: Any,
    *,
    stride: Any = None,
    padding: Any = "VALID",
    count_include_pad: bool = True,
) -> jax.Array:
    """Average pooling, as ``torch.nn.AvgPool2d`` (zero padding).

    Args:
        x: ``(..., H, W, C)``.
        window, stride, padding: as :func:`max_pool`.
        count_include_pad: divide by the full window size (True, torch's default) or by the
            number of real (non-padded) elements in each window.

    Returns:
        ``(..., H', W', C)``.
    """
    win, st, pads, out_hw = _geometry(x, window, stride, padding)
    total = _window_sum(x, win, st, pads, out_hw)
    if count_include_pad or pads == ((0, 0), (0, 0)):
        return total / (win[0] * win[1])
    ones = np.ones((x.shape[-3], x.shape[-2], 1), np.float32)
    counts = _np_window_sum(ones, win, st, pads, out_hw)
    return total / jnp.asarray(counts, dtype=total.dtype)


def _np_window_sum(a: np.ndarray, win: Pair, st: Pair, pads: Pads, out_hw: Pair) -> np.ndarray:
    ap = np.pad(a, [pads[0], pads[1], (0, 0)])
    return sum(_slice(ap, i, j, st, out_hw) for i in range(win[0]) for j in range(win[1]))


def _check_p(p: Any) -> None:
    """A concrete ``p`` must be a real number > 0 (``inf`` allowed); a traced one is not checked."""
    if not _is_concrete(p):
        return
    numeric = isinstance(p, (numbers.Real, np.ndarray, jax.Array)) and np.ndim(p) == 0
    if not numeric or isinstance(p, (bool, np.bool_)) or jnp.result_type(p) == jnp.bool_:
        raise TypeError(f"lp_pool p must be a real number > 0 (or inf), got {p!r}")
    v = float(p)
    if not v > 0:  # also NaN
        raise ValueError(f"lp_pool needs p > 0 (or inf), got {p!r}")


def lp_pool(
    x: jax.Array, window: Any, *, p: Any = 2.0, stride: Any = None, padding: Any = "VALID"
) -> jax.Array:
    """Power-average pooling, exactly ``torch.nn.LPPool2d``: ``s^(1/p)`` with ``s`` the window
    sum of ``x^p`` (padded positions add 0).

    ``p = 1`` is sum pooling; large ``p`` approaches max pooling (Boureau et al. 2010, "A
    theoretical analysis of feature pooling in visual recognition"); ``p = inf`` is
    ``max_pool(|x|)`` (torch's definition, the limit for non-negative inputs). As in torch,
    a window whose ``s`` is negative (possible for odd integer ``p`` or ``p = 1`` on signed
    inputs) gives ``s^(1/p)`` as ``pow`` defines it: ``s`` itself for ``p = 1``, NaN when
    ``1/p`` is not an integer; a non-integer ``p`` makes ``x^p`` NaN for negative ``x``, so
    use non-negative inputs (after a ReLU) there. A window with ``s = 0`` outputs 0 with
    gradient 0 (torch's convention).

    Integer-valued ``p`` is computed with multiplications, and ``p = 2`` as the square root of
    a sum of squares (no ``pow``, whose exp / log XLA:CPU evaluates slowly).

    Args:
        x: ``(..., H, W, C)``.
        window: window size, int or (h, w).
        p: the power, > 0 or ``inf`` (a float or int; a traced ``p`` is not checked).
        stride, padding: as :func:`max_pool`.

    Returns:
        ``(..., H', W', C)``.
    """
    _check_p(p)
    concrete = _is_concrete(p)
    if concrete and float(p) == np.inf:
        return max_pool(jnp.abs(x), window, stride=stride, padding=padding)
    win, st, pads, out_hw = _geometry(x, window, stride, padding)
    integral = concrete and float(p).is_integer()
    powered = x ** int(p) if integral else x**p  # int: lax.integer_pow (multiplications)
    s = _window_sum(powered, win, st, pads, out_hw)
    zero = s == 0
    safe = jnp.where(zero, jnp.ones_like(s), s)
    if concrete and float(p) == 1:
        root = safe
    elif concrete and float(p) == 2:
        root = jnp.sqrt(safe)
    else:
        root = safe ** (1.0 / p)
    return jnp.where(zero, jnp.zeros_like(s), root)


def mixed_pool(
    x: jax.Array, window: Any, *, alpha: Any, stride: Any = None, padding: Any = "VALID"
) -> jax.Array:
    """Mixed pooling (Yu et al. 2014, "Mixed pooling for convolutional neural networks"):
    ``alpha * max_pool + (1 - alpha) * avg_pool``.

    Args:
        x: ``(..., H, W, C)``.
        window: window size, int or (h, w).
        alpha: a scalar or a per-channel array of shape ``(C,)``, in [0, 1] (checked when
            concrete; a learned alpha is kept in range by the model, e.g. with a sigmoid).
        stride, padding: as :func:`max_pool`.

    Returns:
        ``(..., H', W', C)``.
    """
    if _is_concrete(alpha):
        a = np.asarray(alpha)
        if a.size and (np.any(a < 0) or np.any(a > 1) or np.any(np.isnan(a))):
            raise ValueError(f"mixed_pool alpha must lie in [0, 1], got {alpha!r}")
    if jnp.ndim(alpha) not in (0, 1):
        raise ValueError(f"mixed_pool alpha must be a scalar or shape (C,), got {jnp.shape(alpha)}")
    alpha = jnp.asarray(alpha, dtype=jnp.result_type(x.dtype, jnp.float32))
    geo = {"stride": stride, "padding": padding}
    return alpha * max_pool(x, window, **geo) + (1 - alpha) * avg_pool(x, window, **geo)


def stochastic_pool(
    x: jax.Array,
    window: Any,
    *,
    stride: Any = None,
    padding: Any = "VALID",
    key: jax.Array | None = None,
    train: bool = True,
) -> jax.Array:
    """Stochastic pooling (Zeiler & Fergus 2013, "Stochastic Pooling for Regularization of Deep
    Convolutional Neural Networks").

    Training: each window outputs one of its activations, drawn with probability
    ``a_i / sum_j a_j``. Evaluation: the probability-weighted average ``sum_i p_i a_i``.
    Activations are meant to be non-negative (after a ReLU); negative values get weight 0.
    A window whose activations are all 0 outputs 0. No padding (as in the paper).

    Args:
        x: ``(..., H, W, C)``.
        window: window size, int or (h, w).
        stride: as :func:`max_pool`.
        padding: "VALID" only (any other value is refused).
        key: a PRNG key, needed when ``train=True``; each output position draws
            independently (unused when ``train=False``).
        train: sample (True) or take the expectation (False).

    Returns:
        ``(..., H', W', C)``. The gradient flows to the sampled element (training) or through
        the weighted average (evaluation).
    """
    if not (isinstance(padding, str) and padding.upper() == "VALID"):
        raise ValueError(f"stochastic pooling needs padding='VALID', got {padding!r}")
    if train and key is None:
        raise ValueError("stochastic_pool needs key=... when train=True (or train=False)")
    win, st, pads, out_hw = _geometry(x, window, stride, "VALID")
    # One array per window element instead of a stacked (..., K) axis: no transposed copy, and
    # the sampled element is picked with selects (gradient: selects) instead of a gather
    # (gradient: a scatter, slow on the CPU). The running sums are the same sequential sums
    # as jnp.cumsum's, so the samples are the same bits as the stacked formulation's.
    a = _window_slices(x, win, st, out_hw)
    w = [jnp.maximum(v, 0) for v in a]
    total = functools.reduce(jnp.add, w)
    pos = total > 0
    if not train:
        safe_total = jnp.where(pos, total, jnp.ones_like(total))
        return (
            functools.reduce(jnp.add, [wi * ai for wi, ai in zip(w, a, strict=True)]) / safe_total
        )
    u = jax.random.uniform(key, total.shape, dtype=total.dtype) * total
    # The first k with cumsum > u; the last element when rounding leaves none (the clip).
    chosen, cum = a[-1], w[0]
    taken = cum > u
    chosen = jnp.where(taken, a[0], chosen)
    for k in range(1, len(a) - 1):
        cum = cum + w[k]
        now = (cum > u) & ~taken
        chosen = jnp.where(now, a[k], chosen)
        taken = taken | now
    return jnp.where(pos, chosen, jnp.zeros_like(chosen))


def global_pool(x: jax.Array, *, kind: str = "avg") -> jax.Array:
    """Global pooling over both spatial dims: one value per channel.

    Exactly invariant to circular shifts of ``x`` (and to any permutation of positions).

    Args:
        x: ``(..., H, W, C)``.
        kind: "avg", "max" or "min".

    Returns:
        ``(..., C)``.
    """
    _check_rank(x)
    if kind not in GLOBAL_KINDS:
        raise ValueError(f"unknown global pool kind {kind!r}: valid are {GLOBAL_KINDS}")
    if kind == "avg":
        return jnp.mean(x, axis=(-3, -2))
    return _global_max(x) if kind == "max" else -_global_max(-x)


@jax.custom_vjp
def _global_max(x: jax.Array) -> jax.Array:
    """(..., H, W, C) -> (..., C); the gradient goes to the first maximum in row-major order."""
    return jnp.max(x, axis=(-3, -2))


def _global_max_fwd(x):
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    idx = jnp.argmax(x.reshape(*lead, h * w, c), axis=-2)  # first occurrence
    return _global_max(x), (idx, x.shape)


def _global_max_bwd(res, g):
    idx, shape = res
    lead, (h, w, c) = shape[:-3], shape[-3:]
    onehot = jax.nn.one_hot(idx, h * w, axis=-2, dtype=g.dtype)  # (..., H*W, C)
    return ((onehot * g[..., None, :]).reshape(*lead, h, w, c),)


_global_max.defvjp(_global_max_fwd, _global_max_bwd)
