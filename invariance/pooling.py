"""Pure pooling functions on NHWC arrays, and a registry to pick one by name.

Every function takes ``x`` of shape ``(..., H, W, C)`` with any number of leading batch dims
(so it works unbatched and under ``jax.vmap``) and returns ``(..., H', W', C)`` (or
``(..., C)`` for global pooling). ``window`` and ``stride`` are an int or an ``(h, w)`` pair;
``stride`` defaults to ``window``; ``padding`` is ``"VALID"``, ``"SAME"``, an int (the same on
every side, as ``torch.nn.MaxPool2d(padding=p)``), or ``((top, bottom), (left, right))``.

Windowed reductions are written as a reduction over the ``window_h * window_w`` strided slices
of the padded input rather than with ``lax.reduce_window``: XLA fuses the slices into one loop,
and the gradient is a sum of pads instead of XLA's ``select_and_scatter``, whose CPU gradient
for max pooling costs ~75x the forward pass (``scripts/bench_pooling.py`` measures it).

Max / min pooling gradient convention (torch's): each window's whole cotangent goes to ONE
element, the first extreme in row-major order of the window, never split among ties (ties are
common after a ReLU, where many values are exactly 0). Padded positions never win.

Example:
    >>> import jax.numpy as jnp
    >>> fm = jnp.array([[12, 20, 3, 7], [8, 15, 11, 4], [6, 9, 14, 18], [2, 10, 5, 16]],
    ...                dtype=jnp.float32)[..., None]
    >>> max_pool(fm, 2)[..., 0].tolist()
    [[20.0, 11.0], [10.0, 18.0]]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "POOLS",
    "aps_pool",
    "avg_pool",
    "binomial_filter",
    "blur_pool",
    "global_pool",
    "lp_pool",
    "max_blur_pool",
    "max_pool",
    "min_pool",
    "mixed_pool",
    "output_size",
    "pool",
    "stochastic_pool",
]

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]
PADDING_NAMES = ("VALID", "SAME")
PAD_MODES = {"reflect": "reflect", "constant": "constant", "circular": "wrap"}
APS_NORMS = ("l2", "l1", "linf")
GLOBAL_KINDS = ("avg", "max", "min")

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


# --------------------------------------------------------------------------------------------
# Argument normalisation and validation.


def _pair(v: int | Sequence[int], name: str) -> Pair:
    if isinstance(v, (int, np.integer)):
        out = (int(v), int(v))
    else:
        vals = tuple(int(a) for a in v)
        if len(vals) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {v!r}")
        out = vals
    if min(out) < 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return out  # type: ignore[return-value]


def _check_rank(x: jax.Array) -> None:
    if jnp.ndim(x) < 3:
        raise ValueError(f"x must be (..., H, W, C) with rank >= 3, got shape {jnp.shape(x)}")


def _resolve_pads(size: Pair, window: Pair, stride: Pair, padding: Any) -> Pads:
    """Turns any accepted ``padding`` into explicit ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        if padding.upper() == "SAME":
            pads = []
            for n, k, s in zip(size, window, stride, strict=True):
                out = -(-n // s)
                total = max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)  # type: ignore[return-value]
        raise ValueError(
            f"unknown padding {padding!r}: valid are 'VALID', 'SAME', an int, "
            "or ((top, bottom), (left, right))"
        )
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        if p < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        return ((p, p), (p, p))
    try:
        (t, b), (l, r) = padding
        pads = ((int(t), int(b)), (int(l), int(r)))
    except (TypeError, ValueError):
        raise ValueError(
            f"unknown padding {padding!r}: valid are 'VALID', 'SAME', an int, "
            "or ((top, bottom), (left, right))"
        ) from None
    if min(pads[0] + pads[1]) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pads


def output_size(
    n: int | Sequence[int],
    window: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: Any = "VALID",
) -> int | tuple[int, int]:
    """The spatial output size of a windowed pooling.

    ``out = floor((n + pad_before + pad_after - window) / stride) + 1`` per spatial dim (torch's
    formula without ``ceil_mode``; "SAME" gives ``ceil(n / stride)``).

    Args:
        n: input size, an int (both dims equal) or an ``(H, W)`` pair.
        window: window size, int or pair.
        stride: stride, int or pair; defaults to ``window``.
        padding: "VALID", "SAME", an int or ((top, bottom), (left, right)).

    Returns:
        An int when ``n`` is an int, else an ``(H', W')`` pair.

    Raises:
        ValueError: a window larger than the padded input, stride < 1, unknown padding.
    """
    size = _pair(n, "input size")
    win = _pair(window, "window")
    st = win if stride is None else _pair(stride, "stride")
    pads = _resolve_pads(size, win, st, padding)
    out = []
    for m, k, s, (lo, hi) in zip(size, win, st, pads, strict=True):
        padded = m + lo + hi
        if k > padded:
            raise ValueError(
                f"window {win} is larger than the padded input {size} + padding {pads}"
            )
        out.append((padded - k) // s + 1)
    return out[0] if isinstance(n, (int, np.integer)) else (out[0], out[1])


def _geometry(x: jax.Array, window: Any, stride: Any, padding: Any):
    """Validates and returns (window, stride, pads, out_hw) for x of shape (..., H, W, C)."""
    _check_rank(x)
    win = _pair(window, "window")
    st = win if stride is None else _pair(stride, "stride")
    size = (x.shape[-3], x.shape[-2])
    pads = _resolve_pads(size, win, st, padding)
    out_hw = output_size(size, win, st, pads)
    return win, st, pads, out_hw


def _check_no_empty_window(size: Pair, win: Pair, st: Pair, pads: Pads, out_hw: Pair) -> None:
    """For max / min: every window must hold at least one real element (torch: pad <= k/2)."""
    for n, k, s, (lo, _), o in zip(size, win, st, pads, out_hw, strict=True):
        if lo >= k or (o - 1) * s >= lo + n:
            raise ValueError(
                f"padding {pads} leaves a window of size {win} entirely in padding; "
                "use padding of at most half the window"
            )


# --------------------------------------------------------------------------------------------
# Window slices: the building block of every windowed pooling here.


def _pad_hw(x: jax.Array, pads: Pads, value: float) -> jax.Array:
    if pads == ((0, 0), (0, 0)):
        return x
    cfg = [(0, 0)] * (x.ndim - 3) + [pads[0], pads[1], (0, 0)]
    return jnp.pad(x, cfg, constant_values=value)


def _slice(xp: jax.Array, i: int, j: int, st: Pair, out_hw: Pair) -> jax.Array:
    """xp[..., i : i + st_h*(Ho-1)+1 : st_h, j : ... : st_w, :] — the window element (i, j)."""
    return xp[
        ...,
        i : i + st[0] * (out_hw[0] - 1) + 1 : st[0],
        j : j + st[1] * (out_hw[1] - 1) + 1 : st[1],
        :,
    ]


def _window_slices(xp: jax.Array, win: Pair, st: Pair, out_hw: Pair) -> list[jax.Array]:
    """The ``win_h * win_w`` strided views, window elements in row-major order."""
    return [_slice(xp, i, j, st, out_hw) for i in range(win[0]) for j in range(win[1])]


def _unslice(g: jax.Array, i: int, j: int, st: Pair, padded_hw: Pair) -> jax.Array:
    """The transpose of ``_slice``: g on the strided grid at offset (i, j), zeros elsewhere."""
    ho, wo = g.shape[-3], g.shape[-2]
    cfg = [(0, 0, 0)] * (g.ndim - 3)
    cfg.append((i, padded_hw[0] - i - (st[0] * (ho - 1) + 1), st[0] - 1))
    cfg.append((j, padded_hw[1] - j - (st[1] * (wo - 1) + 1), st[1] - 1))
    cfg.append((0, 0, 0))
    return lax.pad(g, jnp.zeros((), g.dtype), cfg)


def _lowest(dtype) -> Any:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf
    return jnp.iinfo(dtype).min


# --------------------------------------------------------------------------------------------
# Max / min pooling with torch's gradient (one element per window).


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_core(x: jax.Array, win: Pair, st: Pair, pads: Pads, out_hw: Pair) -> jax.Array:
    xp = _pad_hw(x, pads, _lowest(x.dtype))
    return functools.reduce(jnp.maximum, _window_slices(xp, win, st, out_hw))


def _max_pool_fwd(x, win, st, pads, out_hw):
    out = _max_pool_core(x, win, st, pads, out_hw)
    return out, (x, out)


def _max_pool_bwd(win, st, pads, out_hw, res, g):
    x, out = res
    xp = _pad_hw(x, pads, _lowest(x.dtype))
    padded_hw = (xp.shape[-3], xp.shape[-2])
    g = g.astype(x.dtype)
    zero = jnp.zeros((), g.dtype)
    if win == st and pads == ((0, 0), (0, 0)):
        # Non-overlapping windows: every input element belongs to at most one window, so the
        # gradient is the per-window one-hot, interleaved back in one fused pass.
        taken = None
        parts = []
        for sl in _window_slices(xp, win, st, out_hw):
            hit = sl == out
            if taken is None:
                taken = hit
            else:
                hit = hit & ~taken
                taken = taken | hit
            parts.append(jnp.where(hit, g, zero))
        lead = g.shape[:-3]
        ho, wo, c = g.shape[-3:]
        dx = jnp.stack(parts, axis=-2).reshape(*lead, ho, wo, win[0], win[1], c)
        dx = jnp.moveaxis(dx, -3, -4).reshape(*lead, ho * win[0], wo * win[1], c)
        h, w = x.shape[-3], x.shape[-2]
        if (h, w) != dx.shape[-3:-1]:  # rows / columns that no window covers get zero
            cfg = [(0, 0)] * len(lead) + [(0, h - dx.shape[-3]), (0, w - dx.shape[-2]), (0, 0)]
            dx = jnp.pad(dx, cfg)
        return (dx,)
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


def max_pool(x: jax.Array, window: Any, stride: Any = None, padding: Any = "VALID") -> jax.Array:
    """Max pooling, as ``torch.nn.MaxPool2d`` (padded positions never win).

    Args:
        x: ``(..., H, W, C)``.
        window: window size, int or (h, w).
        stride: int or (h, w); defaults to ``window``.
        padding: "VALID", "SAME", an int, or ((top, bottom), (left, right)).

    Returns:
        ``(..., H', W', C)`` with ``H', W' = output_size((H, W), window, stride, padding)``.

    The gradient gives each window's whole cotangent to the first maximum in row-major order
    (torch's convention), computed with a custom VJP that costs about as much as the forward.
    """
    win, st, pads, out_hw = _geometry(x, window, stride, padding)
    _check_no_empty_window((x.shape[-3], x.shape[-2]), win, st, pads, out_hw)
    return _max_pool_core(x, win, st, pads, out_hw)


def min_pool(x: jax.Array, window: Any, stride: Any = None, padding: Any = "VALID") -> jax.Array:
    """Min pooling: ``-max_pool(-x)``; padded positions never win.

    Args and returns as :func:`max_pool`. The gradient goes to the first minimum in row-major
    order of each window.
    """
    return -max_pool(-x, window, stride, padding)


# --------------------------------------------------------------------------------------------
# Average-style pooling.


def _window_sum(x: jax.Array, win: Pair, st: Pair, pads: Pads, out_hw: Pair) -> jax.Array:
    xp = _pad_hw(x, pads, 0)
    return functools.reduce(jnp.add, _window_slices(xp, win, st, out_hw))


def avg_pool(
    x: jax.Array,
    window: Any,
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


def lp_pool(
    x: jax.Array, p: float, window: Any, stride: Any = None, padding: Any = "VALID"
) -> jax.Array:
    """Power-average pooling, ``torch.nn.LPPool2d``: ``(sum over window of x^p)^(1/p)``.

    As in torch, the result is ``sign(s) * relu(|s|)^(1/p)`` with ``s`` the window sum of
    ``x^p``; padded positions add 0. ``p = 1`` is sum pooling; large ``p`` approaches max
    pooling (Boureau et al. 2010). For non-integer ``p`` use non-negative inputs (after a
    ReLU), as ``x^p`` is NaN for negative ``x``. The gradient is 0 where a window sums to 0.

    Args:
        x: ``(..., H, W, C)``.
        p: the power, > 0.
        window, stride, padding: as :func:`max_pool`.

    Returns:
        ``(..., H', W', C)``.
    """
    if isinstance(p, (int, float)) and not p > 0:
        raise ValueError(f"lp_pool needs p > 0, got {p}")
    win, st, pads, out_hw = _geometry(x, window, stride, padding)
    s = _window_sum(x**p, win, st, pads, out_hw)
    pos = s > 0
    safe = jnp.where(pos, s, jnp.ones_like(s))
    return jnp.where(pos, safe ** (1.0 / p), jnp.zeros_like(s))


def _is_concrete(v: Any) -> bool:
    return not isinstance(v, jax.core.Tracer)


def mixed_pool(
    x: jax.Array, alpha: Any, window: Any, stride: Any = None, padding: Any = "VALID"
) -> jax.Array:
    """Mixed pooling (Yu et al. 2014): ``alpha * max_pool + (1 - alpha) * avg_pool``.

    Args:
        x: ``(..., H, W, C)``.
        alpha: a scalar or a per-channel array of shape ``(C,)``, in [0, 1] (checked when
            concrete; a learned alpha is kept in range by the model, e.g. with a sigmoid).
        window, stride, padding: as :func:`max_pool`.

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
    return alpha * max_pool(x, window, stride, padding) + (1 - alpha) * avg_pool(
        x, window, stride, padding
    )


def stochastic_pool(
    key: jax.Array, x: jax.Array, window: Any, stride: Any = None, *, train: bool = True
) -> jax.Array:
    """Stochastic pooling (Zeiler & Fergus 2013, "Stochastic Pooling for Regularization of Deep
    Convolutional Neural Networks").

    Training: each window outputs one of its activations, drawn with probability
    ``a_i / sum_j a_j``. Evaluation: the probability-weighted average ``sum_i p_i a_i``.
    Activations are meant to be non-negative (after a ReLU); negative values get weight 0.
    A window whose activations are all 0 outputs 0. No padding (as in the paper).

    Args:
        key: a PRNG key; each output position draws independently (unused when
            ``train=False``).
        x: ``(..., H, W, C)``.
        window, stride: as :func:`max_pool`.
        train: sample (True) or take the expectation (False).

    Returns:
        ``(..., H', W', C)``. The gradient flows to the sampled element (training) or through
        the weighted average (evaluation).
    """
    win, st, pads, out_hw = _geometry(x, window, stride, "VALID")
    a = jnp.stack(_window_slices(x, win, st, out_hw), axis=-1)  # (..., Ho, Wo, C, K)
    w = jnp.maximum(a, 0)
    total = jnp.sum(w, axis=-1, keepdims=True)
    safe_total = jnp.where(total > 0, total, jnp.ones_like(total))
    if not train:
        return jnp.sum(w * a, axis=-1) / safe_total[..., 0]
    u = jax.random.uniform(key, total.shape, dtype=total.dtype) * total
    cum = jnp.cumsum(w, axis=-1)
    # The first k with cumsum > u; clip guards against rounding in the last bin.
    idx = jnp.minimum(jnp.sum(cum <= u, axis=-1, keepdims=True), a.shape[-1] - 1)
    chosen = jnp.take_along_axis(a, idx, axis=-1)[..., 0]
    return jnp.where(total[..., 0] > 0, chosen, jnp.zeros_like(chosen))


# --------------------------------------------------------------------------------------------
# Anti-aliased and adaptive downsampling.


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


def blur_pool(
    x: jax.Array, filter_size: int = 3, stride: Any = 2, pad_mode: str = "reflect"
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
    cfg = [(0, 0)] * (x.ndim - 3) + [(lo, hi), (lo, hi), (0, 0)]
    xp = jnp.pad(x, cfg, mode=mode)
    ho, wo = -(-h // st[0]), -(-w // st[1])
    dtype = jnp.result_type(x.dtype, jnp.float32)
    xp = xp.astype(dtype)
    # Rows: out[r] = sum_i a_i xp[s*r + i]; then the same along columns.
    rows = sum(
        float(taps[i]) * xp[..., i : i + st[0] * (ho - 1) + 1 : st[0], :, :] for i in range(k)
    )
    return sum(
        float(taps[j]) * rows[..., :, j : j + st[1] * (wo - 1) + 1 : st[1], :] for j in range(k)
    )


def max_blur_pool(
    x: jax.Array, window: Any = 2, filter_size: int = 3, stride: Any = 2
) -> jax.Array:
    """MaxBlurPool (Zhang 2019): ``blur_pool(max_pool(x, window, stride=1), filter_size, stride)``.

    Dense max evaluation (stride 1) followed by anti-aliased subsampling, adobe/antialiased-cnns'
    replacement for ``MaxPool2d(k, stride=2)``.

    Args:
        x: ``(..., H, W, C)``.
        window: max-pool window, int or (h, w), default 2.
        filter_size: BlurPool filter size, 1..7.
        stride: subsampling stride, default 2.

    Returns:
        ``(..., ceil((H - window_h + 1) / s), ceil((W - window_w + 1) / s), C)``.
    """
    return blur_pool(max_pool(x, window, 1), filter_size, stride)


def aps_pool(
    x: jax.Array,
    stride: int = 2,
    norm: str = "l2",
    *,
    filter_size: int = 1,
    pad_mode: str = "circular",
) -> jax.Array:
    """Adaptive polyphase sampling (Chaman & Dokmanić 2021, "Truly shift-invariant
    convolutional neural networks").

    Of the ``stride**2`` polyphase components ``x[..., i::s, j::s, :]`` keep, per example (per
    index of the leading dims), the one with the largest norm over all its spatial positions
    and channels; ties go to the first in row-major (i, j) order. Spatial sizes not divisible
    by ``stride`` are first padded circularly at the end. With ``filter_size > 1`` the input is
    first blurred (stride 1, ``pad_mode`` padding), the paper's anti-aliased variant.

    A circular shift of the input circularly shifts the output (up to tie-breaking): networks
    with circular convolutions, APS downsampling and global pooling are exactly invariant to
    circular shifts.

    Args:
        x: ``(..., H, W, C)``.
        stride: the downsampling factor, >= 1.
        norm: "l2" (the paper's default), "l1" or "linf".
        filter_size: optional blur before sampling, 1..7 (1 = none).
        pad_mode: padding of that blur: "circular" (default), "reflect" or "constant".

    Returns:
        ``(..., ceil(H / s), ceil(W / s), C)``.
    """
    _check_rank(x)
    if norm not in APS_NORMS:
        raise ValueError(f"unknown norm {norm!r}: valid are {APS_NORMS}")
    s = _pair(stride, "stride")[0]
    if isinstance(stride, (tuple, list)) and len(set(stride)) != 1:
        raise ValueError(f"aps_pool needs the same stride on both axes, got {stride!r}")
    if filter_size != 1:
        x = blur_pool(x, filter_size, 1, pad_mode)
    h, w = x.shape[-3], x.shape[-2]
    ph, pw = (-h) % s, (-w) % s
    if ph or pw:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)], mode="wrap")
    comps = jnp.stack([x[..., i::s, j::s, :] for i in range(s) for j in range(s)], axis=-4)
    if norm == "l2":
        score = jnp.sum(jnp.square(comps), axis=(-3, -2, -1))
    elif norm == "l1":
        score = jnp.sum(jnp.abs(comps), axis=(-3, -2, -1))
    else:
        score = jnp.max(jnp.abs(comps), axis=(-3, -2, -1))
    best = jnp.argmax(lax.stop_gradient(score), axis=-1)  # (...,)
    return jnp.take_along_axis(comps, best[..., None, None, None, None], axis=-4)[..., 0, :, :, :]


# --------------------------------------------------------------------------------------------
# Global pooling and the registry.


def global_pool(x: jax.Array, kind: str = "avg") -> jax.Array:
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


_REGISTRY: dict[str, Callable[..., jax.Array]] = {
    "max": max_pool,
    "min": min_pool,
    "avg": avg_pool,
    "lp": lp_pool,
    "stochastic": stochastic_pool,
    "mixed": mixed_pool,
    "blur": blur_pool,
    "max_blur": max_blur_pool,
    "aps": aps_pool,
    "global_avg": functools.partial(global_pool, kind="avg"),
    "global_max": functools.partial(global_pool, kind="max"),
    "global_min": functools.partial(global_pool, kind="min"),
}

#: Every pooling kind :func:`pool` accepts, by name.
POOLS: tuple[str, ...] = tuple(_REGISTRY)


def pool(x: jax.Array, kind: str, **options: Any) -> jax.Array:
    """Dispatches to a pooling function by name (big_vision's ``pool_type`` style).

    Args:
        x: ``(..., H, W, C)``.
        kind: one of :data:`POOLS`: "max", "min", "avg", "lp", "stochastic", "mixed", "blur",
            "max_blur", "aps", "global_avg", "global_max", "global_min".
        **options: keyword arguments of that function, e.g. ``window=2`` for "max",
            ``key=...`` for "stochastic", ``p=2`` for "lp", ``alpha=0.5`` for "mixed".

    Returns:
        That function's output.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones).

    Example:
        >>> import jax.numpy as jnp
        >>> pool(jnp.ones((4, 4, 1)), "avg", window=2).shape
        (2, 2, 1)
    """
    if kind not in _REGISTRY:
        raise ValueError(f"unknown pooling kind {kind!r}: valid are {', '.join(POOLS)}")
    fn = _REGISTRY[kind]
    if kind == "stochastic":
        options = dict(options)
        key = options.pop("key", None)
        if key is None:
            if options.get("train", True):
                raise ValueError("pooling kind 'stochastic' needs key=... when train=True")
            key = jax.random.key(0)
        return fn(key, x, **options)
    return fn(x, **options)
