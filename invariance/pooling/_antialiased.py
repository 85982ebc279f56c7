"""Anti-aliased and adaptive downsampling: BlurPool, MaxBlurPool (Zhang 2019) and APS
(Chaman & Dokmanić 2021)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from invariance._checks import is_concrete as _is_concrete
from invariance.pooling._geometry import _check_rank, _pair
from invariance.pooling._max_blur import max_blur_2x2
from invariance.pooling._windowed import max_pool

PAD_MODES = {"reflect": "reflect", "constant": "constant", "circular": "wrap"}
APS_NORMS = ("l2", "l1", "linf")

# Zhang 2019 / adobe antialiased-cnns: binomial taps for filter sizes 1..7.
_BINOMIAL = {
    1: (1.0,),
    2: (1.0, 1.0),
    3: (1.0, 2.0, 1.0),
    4: (1.0, 3.0, 3.0, 1.0),
    5: (1.0, 4.0, 6.0, 4.0, 1.0),
    6: (1.0, 5.0, 10.0, 10.0, 5.0, 1.0),
    7: (1.0, 6.0, 15.0, 20.0, 15.0, 6.0, 1.0),
}


def binomial_filter(filter_size: int) -> np.ndarray:
    """The normalised 1-D binomial taps of Zhang 2019 for ``filter_size`` in 1..7.

    The 2-D BlurPool filter is ``outer(a, a)`` with ``a`` this vector (it sums to 1).
    """
    if filter_size not in _BINOMIAL:
        raise ValueError(f"filter_size must be in 1..7, got {filter_size!r}")
    a = np.asarray(_BINOMIAL[filter_size], np.float64)
    return a / a.sum()


def _check_pad_mode(pad_mode: str) -> str:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {pad_mode!r}: valid are {tuple(PAD_MODES)}")
    return PAD_MODES[pad_mode]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _pad_axis(x: jax.Array, axis: int, lo: int, hi: int, mode: str) -> jax.Array:
    """``jnp.pad`` of one axis by (lo, hi) in ``mode`` ("reflect" or "wrap", one period).

    The same values as ``jnp.pad``; the gradient is one slice plus the two mirrored or wrapped
    edge slices, where ``jnp.pad``'s own gradient for these modes costs ~10x a blur pass on
    XLA:CPU (it dominated MaxBlurPool's train step).
    """
    cfg = [(0, 0)] * x.ndim
    cfg[axis] = (lo, hi)
    return jnp.pad(x, cfg, mode=mode)


def _pad_axis_fwd(x, axis, lo, hi, mode):
    return _pad_axis(x, axis, lo, hi, mode), None


def _place(a: jax.Array, axis: int, start: int, n: int) -> jax.Array:
    """``a`` at ``start`` along ``axis`` in zeros of length ``n``."""
    cfg = [(0, 0, 0)] * a.ndim
    cfg[axis] = (start, n - start - a.shape[axis], 0)
    return lax.pad(a, jnp.zeros((), a.dtype), cfg)


def _pad_axis_bwd(axis, lo, hi, mode, _, g):
    n = g.shape[axis] - lo - hi
    dx = lax.slice_in_dim(g, lo, lo + n, axis=axis)
    top = lax.slice_in_dim(g, 0, lo, axis=axis)  # padded rows 0..lo-1
    bottom = lax.slice_in_dim(g, lo + n, lo + n + hi, axis=axis)
    if mode == "reflect":  # xp[i] = x[lo - i]; xp[lo + n + t] = x[n - 2 - t]
        starts = (1, n - 1 - hi)
        top, bottom = lax.rev(top, (axis,)), lax.rev(bottom, (axis,))
    else:  # wrap: xp[i] = x[n - lo + i]; xp[lo + n + t] = x[t]
        starts = (n - lo, 0)
    for part, start in zip((top, bottom), starts, strict=True):
        if part.shape[axis]:
            dx = dx + _place(part, axis, start, n)
    return (dx,)


_pad_axis.defvjp(_pad_axis_fwd, _pad_axis_bwd)


def _pad_hw_mode(x: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]], mode: str):
    """Pads H and W of ``(..., H, W, C)`` by ``pads`` in a ``jnp.pad`` mode ("reflect",
    "constant" or "wrap"): the same values as ``jnp.pad``, with a cheap gradient."""
    for axis, (lo, hi) in zip((x.ndim - 3, x.ndim - 2), pads, strict=True):
        n = x.shape[axis]
        if not (lo or hi):
            continue
        one_period = max(lo, hi) < n if mode == "reflect" else max(lo, hi) <= n
        if mode == "constant" or not one_period:
            cfg = [(0, 0)] * x.ndim
            cfg[axis] = (lo, hi)
            x = jnp.pad(x, cfg, mode=mode)
        else:
            x = _pad_axis(x, axis, lo, hi, mode)
    return x


def blur_pool(
    x: jax.Array, *, filter_size: int = 3, stride: Any = 2, pad_mode: str = "reflect"
) -> jax.Array:
    """BlurPool (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again"):
    a depthwise binomial low-pass filter followed by subsampling.

    Exactly adobe/antialiased-cnns' ``BlurPool``: the 2-D filter is ``outer(a, a) / sum``
    with binomial taps ``a`` (sizes 1..7), applied per channel after padding
    ``floor((k-1)/2)`` before and ``ceil((k-1)/2)`` after each spatial dim; size 1 is
    ``x[..., ::s, ::s, :]``. Computed as two separable 1-D passes.

    Args:
        x: ``(..., H, W, C)``.
        filter_size: 1..7.
        stride: int or (h, w), default 2.
        pad_mode: "reflect" (Zhang's default; torch ReflectionPad2d), "constant" (zeros,
            as kornia) or "circular".

    Returns:
        ``(..., ceil(H / s_h), ceil(W / s_w), C)``.
    """
    _check_rank(x)
    taps = binomial_filter(filter_size)
    mode = _check_pad_mode(pad_mode)
    st = _pair(stride, "stride")
    k = filter_size
    lo, hi = (k - 1) // 2, k // 2
    if k == 1:
        return x[..., :: st[0], :: st[1], :]
    h, w = x.shape[-3], x.shape[-2]
    if mode == "reflect" and (lo >= h or hi >= h or lo >= w or hi >= w):
        raise ValueError(f"reflect padding by {hi} needs H, W > {hi}, got {(h, w)}")
    ho, wo = -(-h // st[0]), -(-w // st[1])
    x = x.astype(jnp.result_type(x.dtype, jnp.float32))
    # Rows: out[r] = sum_i a_i xp[s*r + i] with xp the padded x; then the same along columns.
    rows = _blur_axis(x, taps, st[0], lo, ho, x.ndim - 3, mode)
    return _blur_axis(rows, taps, st[1], lo, wo, x.ndim - 2, mode)


def _blur_axis(
    x: jax.Array, taps: np.ndarray, s: int, lo: int, n_out: int, axis: int, mode: str
) -> jax.Array:
    """``out[r] = sum_i taps[i] * xp[s*r + i]`` along ``axis`` (``r < n_out``), where ``xp``
    is ``x`` padded by ``lo`` before (and enough after) in the ``jnp.pad`` ``mode``.

    The padded array is never built: the output rows whose taps all fall inside ``x`` are one
    sum of strided slices of ``x``, and the few edge rows read the mirrored / wrapped rows
    directly (zeros add nothing). The terms are the same and summed in the same order as over
    the padded array; the gradient, though, avoids ``jnp.pad``'s reflect / wrap gradient,
    which dominated MaxBlurPool's train step on XLA:CPU (~10x the blur itself).
    """
    n, k = x.shape[axis], len(taps)

    def source(j: int) -> int | None:  # the row of x at padded position j + lo
        if 0 <= j < n:
            return j
        if mode == "reflect":
            return -j if j < 0 else 2 * (n - 1) - j
        return j % n if mode == "wrap" else None

    first = -(-lo // s)  # the first output row whose taps are all inside x, and the last
    last = min(n_out - 1, (n - k + lo) // s)
    edges = [r for r in range(n_out) if r < first or r > max(last, first - 1)]
    # The edge rows read x's first and last few rows through two small blocks, so that their
    # gradient is two pads of small blocks, not one pad per term.
    used = {source(s * r + i - lo) for r in edges for i in range(k)} - {None}
    head_rows = [j for j in used if j < n // 2]
    tail_rows = [j for j in used if j >= n // 2]
    head_end = max(head_rows, default=-1) + 1
    tail_start = min(tail_rows, default=n)
    head = lax.slice_in_dim(x, 0, head_end, axis=axis)
    tail = lax.slice_in_dim(x, tail_start, n, axis=axis)

    def row_of_x(j: int) -> jax.Array:
        block, at = (head, j) if j < n // 2 else (tail, j - tail_start)
        return lax.slice_in_dim(block, at, at + 1, axis=axis)

    def edge_row(r: int) -> jax.Array:
        terms = [
            float(taps[i]) * row_of_x(j)
            for i in range(k)
            if (j := source(s * r + i - lo)) is not None
        ]
        return sum(terms) if terms else jnp.zeros_like(lax.slice_in_dim(x, 0, 1, axis=axis))

    parts = [edge_row(r) for r in range(min(first, n_out))]
    if last >= first:
        parts.append(
            sum(
                float(taps[i])
                * lax.slice_in_dim(x, s * first + i - lo, s * last + i - lo + 1, s, axis=axis)
                for i in range(k)
            )
        )
    parts += [edge_row(r) for r in range(max(last + 1, first), n_out)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def max_blur_pool(
    x: jax.Array,
    window: Any = 2,
    *,
    filter_size: int = 3,
    stride: Any = 2,
    pad_mode: str = "reflect",
) -> jax.Array:
    """MaxBlurPool (Zhang 2019): a dense max over ``window`` (stride 1), then
    ``blur_pool(..., filter_size=filter_size, stride=stride, pad_mode=pad_mode)``.

    Dense max evaluation followed by anti-aliased subsampling, adobe/antialiased-cnns'
    replacement for ``MaxPool2d(k, stride=2)``. With ``pad_mode="circular"`` the dense max
    first pads circularly by ``window - 1`` at the end of each spatial dim, so the map keeps
    its size and a circular shift of ``x`` commutes with the dense max; otherwise the dense max
    is VALID (Zhang's) and each spatial size shrinks by ``window - 1``.

    The common case (window 2, stride 2, ``filter_size`` > 1) computes the same values with a
    hand-written gradient (``_max_blur.py``: the blur's transpose in polyphase form, the
    dense max's through its saved first-maximum index), several times cheaper on XLA:CPU than
    the autodiff of the composition (``_max_blur_reference``), which serves every other case.
    That gradient is a ``jax.custom_vjp``: reverse mode (``jax.grad``, ``jax.vjp``) works to
    any order of vmap and jit, forward mode (``jax.jvp``, ``jax.jacfwd``) does not.

    Args:
        x: ``(..., H, W, C)``.
        window: max-pool window, int or (h, w), default 2.
        filter_size: BlurPool filter size, 1..7.
        stride: subsampling stride, int or (h, w), default 2.
        pad_mode: the blur's padding (and the dense max's when "circular"): "reflect"
            (default), "constant" or "circular".

    Returns:
        ``(..., ceil(H' / s_h), ceil(W' / s_w), C)`` with ``H' = H`` for "circular", else
        ``H - window_h + 1`` (likewise ``W'``).
    """
    mode = _check_pad_mode(pad_mode)
    win = _pair(window, "window")
    if pad_mode == "circular":
        _check_rank(x)
        x = _pad_hw_mode(x, ((0, win[0] - 1), (0, win[1] - 1)), "wrap")
    taps = binomial_filter(filter_size)
    fast = win == (2, 2) and _pair(stride, "stride") == (2, 2) and filter_size > 1
    if fast:
        _check_rank(x)
        x = jnp.asarray(x)
    if fast and min(x.shape[-3], x.shape[-2]) >= 2:
        h, w = x.shape[-3] - 1, x.shape[-2] - 1
        hi = filter_size // 2
        if mode == "reflect" and (hi >= h or hi >= w):
            raise ValueError(f"reflect padding by {hi} needs H, W > {hi}, got {(h, w)}")
        # The same values as below, with a hand-written gradient (see _max_blur.py).
        return max_blur_2x2(x, tuple(float(a) for a in taps), mode, _blur_axis)
    return _max_blur_reference(x, window, filter_size, stride, pad_mode)


def _max_blur_reference(
    x: jax.Array, window: Any, filter_size: int, stride: Any, pad_mode: str
) -> jax.Array:
    """:func:`max_blur_pool` after its circular pre-padding, composed of ``max_pool`` and
    ``blur_pool`` with their own gradients: every case, and the reference of the 2x2 /
    stride-2 fast path (``tests/test_pooling_formulations.py``)."""
    y = max_pool(x, window, stride=1)
    return blur_pool(y, filter_size=filter_size, stride=stride, pad_mode=pad_mode)


def aps_pool(
    x: jax.Array,
    *,
    stride: int = 2,
    norm: str = "l2",
    filter_size: int = 1,
    pad_mode: str = "circular",
) -> jax.Array:
    """Adaptive polyphase sampling (Chaman & Dokmanić 2021, "Truly shift-invariant
    convolutional neural networks").

    Of the ``stride**2`` polyphase components ``x[..., i::s, j::s, :]`` keep, per example (per
    index of the leading dims), the one with the largest norm over all its spatial positions
    and channels; ties go to the first in row-major (i, j) order. With ``filter_size > 1`` the
    input is first blurred (stride 1, ``pad_mode`` padding), the paper's anti-aliased variant.

    Shift invariance, and its condition: when H and W are both divisible by ``stride``, a
    circular shift of ``x`` circularly shifts the output (up to ties between components'
    norms), so networks of circular convolutions, APS downsampling and global pooling are
    exactly invariant to circular shifts. A spatial size NOT divisible by ``stride`` (e.g. an
    odd size with stride 2) is first padded circularly at the end, as in the paper's reference
    implementation; the padded map of a shifted input is then not a shift of the padded map,
    and the guarantee is lost (``tests/test_faults_pooling.py`` shows both cases).

    Args:
        x: ``(..., H, W, C)``.
        stride: the downsampling factor, an int >= 1 (or an (s, s) pair).
        norm: "l2" (the paper's default), "l1" or "linf".
        filter_size: optional blur before sampling, 1..7 (1 = none).
        pad_mode: padding of that blur: "circular" (default), "reflect" or "constant".

    Returns:
        ``(..., ceil(H / s), ceil(W / s), C)``.
    """
    return aps_pool_with_index(
        x, stride=stride, norm=norm, filter_size=filter_size, pad_mode=pad_mode
    )[0]


def _check_aps_index(index: Any, lead: tuple[int, ...], s: int) -> None:
    """A given APS index must have the leading dims' shape, integer values in [0, s*s)."""
    shape = tuple(np.shape(index))
    if shape != tuple(lead) or not jnp.issubdtype(jnp.result_type(index), jnp.integer):
        raise ValueError(
            f"index must be ints of shape {tuple(lead)} (the leading dims), got "
            f"{jnp.result_type(index)} of shape {shape}"
        )
    if _is_concrete(index):
        a = np.asarray(index)
        if a.size and (a.min() < 0 or a.max() >= s * s):
            raise ValueError(f"index values must lie in [0, {s * s}), got {a.min()}..{a.max()}")


def aps_pool_with_index(
    x: jax.Array,
    *,
    stride: int = 2,
    norm: str = "l2",
    filter_size: int = 1,
    pad_mode: str = "circular",
    index: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`aps_pool` that also returns the chosen polyphase component, or takes it.

    A residual block that downsamples with APS must take the SAME component in its main path
    and in its shortcut, or the two halves of the sum move differently under a shift and the
    network loses exact invariance (Chaman & Dokmanić 2021 pass the main path's polyphase
    indices to the shortcut for this reason).

    Args:
        x: ``(..., H, W, C)``.
        stride, norm, filter_size, pad_mode: as :func:`aps_pool`.
        index: ``(...)`` ints in ``[0, stride**2)`` (one per example, the leading dims): the
            components to take; ``None`` chooses them by the largest ``norm``.

    Returns:
        ``(y, index)``: ``y`` of shape ``(..., ceil(H / s), ceil(W / s), C)`` and the
        component indices (row-major ``i * s + j`` for ``x[..., i::s, j::s, :]``).
    """
    _check_rank(x)
    if norm not in APS_NORMS:
        raise ValueError(f"unknown norm {norm!r}: valid are {APS_NORMS}")
    s = _pair(stride, "stride")[0]
    if isinstance(stride, (tuple, list)) and len(set(stride)) != 1:
        raise ValueError(f"aps_pool needs the same stride on both axes, got {stride!r}")
    if index is not None:
        _check_aps_index(index, x.shape[:-3], s)
    if filter_size != 1:
        x = blur_pool(x, filter_size=filter_size, stride=1, pad_mode=pad_mode)
    h, w = x.shape[-3], x.shape[-2]
    ph, pw = (-h) % s, (-w) % s
    if ph or pw:
        x = _pad_hw_mode(x, ((0, ph), (0, pw)), "wrap")
    # One array per component (no stacked copy); the chosen one is picked with selects, whose
    # gradient is a select, not the scatter of a gather's gradient (slow on the CPU).
    comps = [x[..., i::s, j::s, :] for i in range(s) for j in range(s)]
    if index is None:
        reduce = jnp.max if norm == "linf" else jnp.sum
        elementwise = jnp.square if norm == "l2" else jnp.abs
        score = jnp.stack(
            [reduce(elementwise(lax.stop_gradient(c)), axis=(-3, -2, -1)) for c in comps], -1
        )
        index = jnp.argmax(score, axis=-1)  # (...,)
    pick = jnp.asarray(index)[..., None, None, None]
    y = comps[0]
    for k in range(1, len(comps)):
        y = jnp.where(pick == k, comps[k], y)
    return y, index
