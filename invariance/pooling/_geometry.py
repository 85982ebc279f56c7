"""Argument normalisation and window slices shared by every windowed pooling.

A windowed reduction is written as a reduction over the ``window_h * window_w`` strided slices
of the padded input (see :func:`_window_slices`); its transpose places values back on the
strided grid (:func:`_unslice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]
PADDING_NAMES = ("VALID", "SAME")


def _is_int(v: Any) -> bool:
    """A Python or numpy integer, not a bool (True would silently mean 1)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(v: Any, name: str) -> Pair:
    """An int or an ``(h, w)`` pair of ints, each >= 1 -> ``(h, w)``; anything else (a float,
    a string, a bool, a pair of floats) is refused in one line naming ``name``."""
    if _is_int(v):
        out = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(a) for a in v):
        out = (int(v[0]), int(v[1]))
    elif isinstance(v, (tuple, list)) and all(_is_int(a) for a in v):
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {v!r}")
    else:
        raise TypeError(
            f"{name} must be an int or an (h, w) pair of ints, got {v!r} ({type(v).__name__})"
        )
    if min(out) < 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return out


def _check_rank(x: jax.Array) -> None:
    """``x`` must be ``(..., H, W, C)`` of a real numeric dtype (not bool, not complex)."""
    if jnp.ndim(x) < 3:
        raise ValueError(f"x must be (..., H, W, C) with rank >= 3, got shape {jnp.shape(x)}")
    dtype = jnp.result_type(x)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(
            f"x must be a float or integer array, got dtype {dtype} (cast it, e.g. "
            "x.astype(jnp.float32))"
        )


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
    if _is_int(padding):
        p = int(padding)
        if p < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        return ((p, p), (p, p))
    try:
        (t, b), (l, r) = padding
        if not all(_is_int(a) for a in (t, b, l, r)):
            raise TypeError
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
