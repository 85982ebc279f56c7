"""MaxBlurPool's common case (2x2 dense max, stride-2 blur) with a hand-written gradient.

Zhang 2019 ("Making convolutional networks shift-invariant again"): a dense 2x2 max at
stride 1, then a binomial blur evaluated at stride 2. The forward computes the same values as
``max_pool(x, 2, stride=1)`` followed by ``blur_pool(..., stride=2)`` (the blur is the very
same function); the gradient is written by hand, because the autodiff transpose of the blur's
strided slices is one full-size interior-padded array per tap and per axis (plus the dense
max's per-offset pads), each its own pass on XLA:CPU: that dominated the train step.

The hand-written gradient, per spatial axis of the blur, is polyphase: the cotangent reaching
the even and the odd rows of the dense max are each a short stride-1 correlation of the output
cotangent (the even and the odd taps), interleaved by a stack and a reshape; the padding is
then folded back (reflect, wrap) or dropped (zeros) from the few edge rows. The dense max's
transpose routes each window's cotangent to its row-major first maximum through the saved
int8 window index (4 shifted selects, summed).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _source(j: int, n: int, mode: str) -> int | None:
    """The row of an ``n``-row axis that padded position ``j`` (relative to row 0) reads in the
    ``jnp.pad`` ``mode`` ("reflect", "wrap" or "constant": None, a zero)."""
    if 0 <= j < n:
        return j
    if mode == "reflect":
        return -j if j < 0 else 2 * (n - 1) - j
    return j % n if mode == "wrap" else None


def _correlate(g: jax.Array, w: list[float], t_len: int, axis: int) -> jax.Array:
    """``out[t] = sum_d w[d] * g[t - d]`` along ``axis`` for ``t < t_len``, ``g`` zero outside
    its rows: one sum of slices for the rows whose terms are all inside ``g``, and single rows
    at the edges, concatenated (no padded copy of ``g``)."""
    n = g.shape[axis]

    def row(t: int) -> jax.Array:
        terms = [
            w[d] * lax.slice_in_dim(g, t - d, t - d + 1, axis=axis)
            for d in range(len(w))
            if 0 <= t - d < n
        ]
        if not terms:
            return jnp.zeros_like(lax.slice_in_dim(g, 0, 1, axis=axis))
        return functools.reduce(jnp.add, terms)

    first, last = len(w) - 1, min(n, t_len) - 1  # rows first..last read no zero
    parts = [row(t) for t in range(min(first, t_len))]
    if last >= first:
        terms = [
            w[d] * lax.slice_in_dim(g, first - d, last - d + 1, axis=axis) for d in range(len(w))
        ]
        parts.append(functools.reduce(jnp.add, terms))
    parts += [row(t) for t in range(max(last + 1, first), t_len)]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def _blur_axis_transpose(
    g: jax.Array, taps: np.ndarray, lo: int, n: int, axis: int, mode: str
) -> jax.Array:
    """The transpose of ``_blur_axis`` at stride 2: the cotangent of its ``n``-row input from
    the cotangent ``g`` of its ``ceil(n / 2)``-row output, along ``axis``.

    The forward's ``out[r] = sum_i taps[i] * xp[2r + i]`` sends ``taps[i] * g[r]`` to padded row
    ``q = 2r + i``; so ``P[2t + p] = sum_d taps[p + 2d] * g[t - d]`` for each parity ``p``, two
    stride-1 correlations interleaved. Padded row ``q`` is row ``q - lo`` of the input, or, in
    the padding, the row that the pad mode copies there (none for zeros): those few edge rows
    are added to their rows in one concatenation.
    """
    n_out, k = g.shape[axis], len(taps)
    q_end = 2 * (n_out - 1) + k  # padded rows q >= q_end get nothing
    t_len = -(-q_end // 2)
    phases = [_correlate(g, [float(a) for a in taps[p::2]], t_len, axis) for p in (0, 1)]
    shape = list(g.shape)
    shape[axis] = 2 * t_len
    full = jnp.stack(phases, axis=axis + 1).reshape(shape)  # padded rows 0 .. 2 t_len - 1
    assert lo + n <= 2 * t_len

    def at(q: int) -> jax.Array:
        return lax.slice_in_dim(full, q, q + 1, axis=axis)

    extra: dict[int, list[int]] = {}  # input row -> the padded rows outside lo..lo+n-1 it gets
    for q in [*range(lo), *range(lo + n, q_end)]:
        j = _source(q - lo, n, mode)
        if j is not None:
            extra.setdefault(j, []).append(q)
    parts, start = [], 0  # runs of untouched rows, and the rows with extra terms
    for j in sorted(extra):
        if j > start:
            parts.append(lax.slice_in_dim(full, lo + start, lo + j, axis=axis))
        parts.append(functools.reduce(jnp.add, [at(q) for q in extra[j]], at(lo + j)))
        start = j + 1
    if start < n:
        parts.append(lax.slice_in_dim(full, lo + start, lo + n, axis=axis))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def _dense_max_2x2(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The dense (stride 1, VALID) 2x2 max of ``(..., H, W, C)`` and the int8 row-major index
    (0..3) of each window's first maximum (a later element wins only if strictly greater)."""
    h, w = x.shape[-3] - 1, x.shape[-2] - 1
    parts = [x[..., a : a + h, b : b + w, :] for a in (0, 1) for b in (0, 1)]
    m = functools.reduce(jnp.maximum, parts)
    idx = jnp.zeros(m.shape, jnp.int8)
    best = parts[0]
    for k, part in enumerate(parts[1:], start=1):
        better = part > best
        best = jnp.where(better, part, best)
        idx = jnp.where(better, jnp.int8(k), idx)
    return m, idx


def _dense_max_2x2_transpose(gm: jax.Array, idx: jax.Array) -> jax.Array:
    """The cotangent of the dense 2x2 max's input from its output's ``gm``: each window's
    cotangent goes to its first maximum (``idx``)."""
    lead = gm.ndim - 3
    h, w = gm.shape[-3] + 1, gm.shape[-2] + 1
    zero = jnp.zeros((), gm.dtype)
    dx = None
    for k in range(4):
        a, b = divmod(k, 2)
        cfg = [(0, 0, 0)] * lead + [(a, 1 - a, 0), (b, 1 - b, 0), (0, 0, 0)]
        part = lax.pad(jnp.where(idx == k, gm, zero), zero, cfg)
        dx = part if dx is None else dx + part
    assert dx is not None and dx.shape[-3:-1] == (h, w)
    return dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_blur_2x2(x: jax.Array, taps: tuple[float, ...], mode: str, blur) -> jax.Array:
    """``blur(dense 2x2 max of x)`` for ``(..., H, W, C)`` ``x`` (H, W >= 2), where
    ``blur`` is ``_antialiased._blur_axis`` (passed in, to keep one blur), applied at stride 2
    along H then W with ``taps`` (2..7 binomial taps) and padding ``mode`` ("reflect", "wrap"
    or "constant").

    Returns:
        ``(..., ceil((H - 1) / 2), ceil((W - 1) / 2), C)``, float32 or wider.
    """
    return _max_blur_fwd(x, taps, mode, blur)[0]


def _max_blur_fwd(x, taps, mode, blur):
    m, idx = _dense_max_2x2(x)
    m = m.astype(jnp.result_type(m.dtype, jnp.float32))
    t, lo = np.asarray(taps), (len(taps) - 1) // 2
    for axis in (m.ndim - 3, m.ndim - 2):
        m = blur(m, t, 2, lo, -(-m.shape[axis] // 2), axis, mode)
    return m, (idx, jnp.zeros((0,), x.dtype))


def _max_blur_bwd(taps, mode, blur, res, g):
    idx, like = res
    t = np.asarray(taps)
    lo = (len(taps) - 1) // 2
    h, w = idx.shape[-3], idx.shape[-2]
    g = _blur_axis_transpose(g, t, lo, w, g.ndim - 2, mode)
    g = _blur_axis_transpose(g, t, lo, h, g.ndim - 3, mode)
    return (_dense_max_2x2_transpose(g.astype(like.dtype), idx),)


max_blur_2x2.defvjp(_max_blur_fwd, _max_blur_bwd)
