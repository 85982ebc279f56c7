"""Anti-aliased and adaptive downsampling: BlurPool, MaxBlurPool (Zhang 2019) and APS
(Chaman & Dokmanić 2021)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from invariance.pooling._geometry import _check_rank, _is_concrete, _pair
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
    return aps_pool_with_index(x, stride, norm, filter_size=filter_size, pad_mode=pad_mode)[0]


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
    stride: int = 2,
    norm: str = "l2",
    *,
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
        x = blur_pool(x, filter_size, 1, pad_mode)
    h, w = x.shape[-3], x.shape[-2]
    ph, pw = (-h) % s, (-w) % s
    if ph or pw:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, ph), (0, pw), (0, 0)], mode="wrap")
    comps = jnp.stack([x[..., i::s, j::s, :] for i in range(s) for j in range(s)], axis=-4)
    if index is None:
        if norm == "l2":
            score = jnp.sum(jnp.square(comps), axis=(-3, -2, -1))
        elif norm == "l1":
            score = jnp.sum(jnp.abs(comps), axis=(-3, -2, -1))
        else:
            score = jnp.max(jnp.abs(comps), axis=(-3, -2, -1))
        index = jnp.argmax(lax.stop_gradient(score), axis=-1)  # (...,)
    y = jnp.take_along_axis(comps, index[..., None, None, None, None], axis=-4)
    return y[..., 0, :, :, :], index
