"""Stability metrics: agreement, flips, distances, radial profiles, confidence intervals.

Every metric except :func:`mean_ci` is pure ``jnp``: it jits, vmaps over any leading axis and
differentiates without NaNs at the edge cases documented below. Shape checks use static shapes
and raise a one-line ``ValueError``. Logits always carry the class axis last.

NaN propagates: a NaN anywhere in an example's logits or representation makes that example's
value NaN (and so any mean over it), never an agreement. ``argmax`` alone would call every
all-NaN row class 0, so two NaN views would "agree" and a NaN vector would be "at distance 0".

Definitions follow docs/protocols.md:

* consistency / top-1 change: Zhang 2019, "Making Convolutional Networks Shift-Invariant Again";
  Azulay & Weiss 2019, "Why do deep convolutional networks generalize so poorly to small image
  transformations?" (also mean absolute change).
* flip rate: Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
  Corruptions and Perturbations" (ImageNet-P / CIFAR-P flip probability).
* relative l2 and radial profiles: Kauderer-Abrams 2017, "Quantifying Translation-Invariance in
  Convolutional Neural Networks"; cosine similarity as argued by Myburgh et al. 2021.
* invariance score: Goodfellow et al. 2009, "Measuring Invariances in Deep Networks".
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "accuracy",
    "consistency",
    "cosine_similarity",
    "flip_rate",
    "invariance_score",
    "kl_divergence",
    "mean_abs_change",
    "mean_ci",
    "radial_profile",
    "relative_l2",
    "top1_change",
]


# ----------------------------------------------------------------------------- checks & helpers


def _need_ndim(name: str, x: jax.Array, min_ndim: int, layout: str) -> None:
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have shape {layout} (ndim >= {min_ndim}), got {x.shape}")


def _same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}"
        )


def _pair(name_a, a, name_b, b, min_ndim, layout):
    a, b = jnp.asarray(a), jnp.asarray(b)
    _need_ndim(name_a, a, min_ndim, layout)
    _same_shape(name_a, a, name_b, b)
    return a, b


def _rows(x: jax.Array) -> jax.Array:
    """(N, ...) -> (N, D): flatten all but the leading axis (works for N == 0 too)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _safe_norm(x: jax.Array) -> jax.Array:
    """l2 norm over the last axis whose gradient at 0 is 0 instead of NaN (NaN stays NaN)."""
    sq = jnp.sum(jnp.square(x), axis=-1)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0 * sq)


def _nan_row(logits: jax.Array) -> jax.Array:
    """``(...)`` bool: True where the class axis (last) holds a NaN."""
    return jnp.any(jnp.isnan(logits), axis=-1)


def _match(a: jax.Array, b: jax.Array, nan: jax.Array, *, differ: bool = False) -> jax.Array:
    """``a == b`` (``a != b`` with ``differ``) as float32, NaN where ``nan``."""
    hit = (a != b) if differ else (a == b)
    return jnp.where(nan, jnp.nan, hit.astype(jnp.float32))


# ----------------------------------------------------------------------------- classification


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose argmax equals the label.

    Args:
      logits: ``(..., N, K)`` scores, class axis last.
      labels: ``(..., N)`` integer labels, ``logits.shape[:-1]``.

    Returns:
      Scalar float: mean of ``argmax(logits, -1) == labels`` over every example; NaN if any
      example's logits hold a NaN.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _need_ndim("logits", logits, 1, "(..., N, K)")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}, got {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return jnp.mean(_match(jnp.argmax(logits, axis=-1), labels, _nan_row(logits)))


def consistency(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
    """Fraction of examples with the same top-1 class under two views (Zhang 2019).

    ``P[argmax f(S1 x) = argmax f(S2 x)]``; pass the logits of the two shifted copies (or the
    original and one shifted copy).

    Args:
      logits_a: ``(..., K)`` logits of the first view, class axis last.
      logits_b: same shape, logits of the second view.

    Returns:
      Scalar float in [0, 1], averaged over every leading position; NaN if a NaN logit occurs.
    """
    a, b = _pair("logits_a", logits_a, "logits_b", logits_b, 1, "(..., K)")
    nan = _nan_row(a) | _nan_row(b)
    return jnp.mean(_match(jnp.argmax(a, axis=-1), jnp.argmax(b, axis=-1), nan))


def top1_change(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
    """P(top-1 change) of Azulay & Weiss 2019: ``1 - consistency(logits_a, logits_b)``.

    Args:
      logits_a: ``(..., K)`` logits at position c.
      logits_b: same shape, logits at position c + 1.

    Returns:
      Scalar float in [0, 1]; NaN if a NaN logit occurs.
    """
    return 1.0 - consistency(logits_a, logits_b)


def mean_abs_change(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
    """Mean absolute change of the predicted class's probability (Azulay & Weiss 2019).

    ``MAC = mean |p_yhat(x_c) - p_yhat(x_c+1)|`` with ``p = softmax(logits)`` and
    ``yhat = argmax logits_a`` (the class predicted on the first view, used for both).

    Args:
      logits_a: ``(..., K)`` logits at position c; defines ``yhat``.
      logits_b: same shape, logits at position c + 1.

    Returns:
      Scalar float in [0, 1].
    """
    a, b = _pair("logits_a", logits_a, "logits_b", logits_b, 1, "(..., K)")
    yhat = jnp.argmax(a, axis=-1)[..., None]
    pa = jnp.take_along_axis(jax.nn.softmax(a, axis=-1), yhat, axis=-1)[..., 0]
    pb = jnp.take_along_axis(jax.nn.softmax(b, axis=-1), yhat, axis=-1)[..., 0]
    return jnp.mean(jnp.abs(pa - pb))


def flip_rate(logits_seq: jax.Array, *, axis: int = -2) -> jax.Array:
    """Flip probability over a sequence of frames (Hendrycks & Dietterich 2019).

    ``FP = 1/(m(n-1)) sum_i sum_{j>=2} 1[argmax f(x_ij) != argmax f(x_i,j-1)]``: the fraction of
    consecutive frame pairs whose top-1 class differs, averaged over every other axis.

    Args:
      logits_seq: ``(..., n, K)`` logits by default, e.g. ``(m, n, K)`` = (sequences, frames,
        classes); the class axis is always last.
      axis: the frame axis (static int, not the class axis); default ``-2``.

    Returns:
      Scalar float in [0, 1]; NaN if a NaN logit occurs.

    Raises:
      ValueError: fewer than 2 frames, or ``axis`` out of range / pointing at the class axis.
    """
    x = jnp.asarray(logits_seq)
    _need_ndim("logits_seq", x, 2, "(..., n, K)")
    ok = isinstance(axis, numbers.Integral) and not isinstance(axis, bool)
    if not ok or not -x.ndim <= axis < x.ndim or int(axis) % x.ndim == x.ndim - 1:
        raise ValueError(
            f"axis must be a frame axis: an int in [{-x.ndim}, {x.ndim - 2}] other than -1 (the "
            f"class axis) for logits_seq of shape {x.shape}, got {axis!r}"
        )
    ax = int(axis) % x.ndim
    if x.shape[ax] < 2:
        raise ValueError(f"flip_rate needs at least 2 frames along axis {axis}, got {x.shape[ax]}")
    pred = jnp.moveaxis(jnp.argmax(x, axis=-1), ax, 0)
    nan = jnp.moveaxis(_nan_row(x), ax, 0)
    return jnp.mean(_match(pred[1:], pred[:-1], nan[1:] | nan[:-1], differ=True))


# ----------------------------------------------------------------------------- distances


def relative_l2(a: jax.Array, b: jax.Array) -> jax.Array:
    """Normalised Euclidean distance ``||a - b|| / ||a||`` per example (Kauderer-Abrams 2017).

    Every axis but the leading one is flattened. Conventions: ``a == 0`` and ``b == 0`` gives 0;
    ``a == 0``, ``b != 0`` gives ``inf``; a NaN in either gives NaN. Safe divisions
    (``jnp.where``, no epsilon) keep the gradient finite everywhere, including at ``a == b``
    and at zero vectors (there it is 0).

    Args:
      a: ``(N, ...)`` reference representation (e.g. of the unshifted input).
      b: same shape, the compared representation.

    Returns:
      ``(N,)`` non-negative floats.
    """
    a, b = _pair("a", a, "b", b, 1, "(N, ...)")
    a, b = _rows(a), _rows(b)
    num, den = _safe_norm(a - b), _safe_norm(a)
    ratio = num / jnp.where(den > 0, den, 1.0)
    out = jnp.where(den > 0, ratio, jnp.where(num > 0, jnp.inf, 0.0))
    return jnp.where(jnp.isnan(num) | jnp.isnan(den), jnp.nan, out)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity per example (Myburgh et al. 2021 suggest it next to relative l2).

    Every axis but the leading one is flattened. Conventions: two zero vectors give 1.0 (they
    are identical); exactly one zero vector gives 0.0; a NaN in either gives NaN. The result is
    clipped to [-1, 1] against rounding, and gradients stay finite at zero vectors.

    Args:
      a: ``(N, ...)`` first representation.
      b: same shape, second representation.

    Returns:
      ``(N,)`` floats in [-1, 1].
    """
    a, b = _pair("a", a, "b", b, 1, "(N, ...)")
    a, b = _rows(a), _rows(b)
    na, nb = _safe_norm(a), _safe_norm(b)
    both = (na > 0) & (nb > 0)
    cos = jnp.sum(a * b, axis=-1) / jnp.where(both, na * nb, 1.0)
    edge = jnp.where((na > 0) | (nb > 0), 0.0, 1.0)
    out = jnp.where(both, jnp.clip(cos, -1.0, 1.0), edge)
    return jnp.where(jnp.isnan(na) | jnp.isnan(nb), jnp.nan, out)


def kl_divergence(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
    """``KL(softmax(logits_a) || softmax(logits_b))`` per example, from log-softmaxes.

    Classes with zero probability under ``a`` (e.g. ``-inf`` logits) contribute 0.

    Args:
      logits_a: ``(..., K)`` logits of the reference distribution, class axis last.
      logits_b: same shape.

    Returns:
      ``(...)`` non-negative floats (up to rounding), one per example.
    """
    a, b = _pair("logits_a", logits_a, "logits_b", logits_b, 1, "(..., K)")
    la, lb = jax.nn.log_softmax(a, axis=-1), jax.nn.log_softmax(b, axis=-1)
    pa = jnp.exp(la)
    return jnp.sum(pa * jnp.where(pa > 0, la - lb, 0.0), axis=-1)


def radial_profile(
    sensitivity_map: jax.Array, *, center: tuple[int, int] | None = None
) -> tuple[jax.Array, jax.Array]:
    """Mean of a translation-sensitivity map over rings of equal |d| (Kauderer-Abrams 2017).

    Entry ``(i, j)`` of the map is at offset ``(dy, dx) = (i - cy, j - cx)``; its ring is
    ``round(sqrt(dy^2 + dx^2))`` (no exact .5 ties occur for integer offsets). For the usual
    ``(2s+1, 2s+1)`` map of shifts ``-s..s`` the default centre is the middle entry.

    Args:
      sensitivity_map: ``(..., H, W)``; leading axes (models, layers) are kept.
      center: static ``(cy, cx)`` indices of the zero shift; default ``(H // 2, W // 2)``.

    Returns:
      ``(radii, values)``: ``radii`` ``(R,)`` int32, the sorted distinct ring radii (static,
      derived from the shape); ``values`` ``(..., R)``, the mean of the map on each ring.
    """
    m = jnp.asarray(sensitivity_map)
    _need_ndim("sensitivity_map", m, 2, "(..., H, W)")
    h, w = m.shape[-2:]
    if center is None:
        center = (h // 2, w // 2)
    if (
        len(center) != 2
        or not all(isinstance(c, numbers.Integral) for c in center)
        or not (0 <= center[0] < h and 0 <= center[1] < w)
    ):
        raise ValueError(f"center must be two ints (cy, cx) inside the {h}x{w} map, got {center!r}")
    dy, dx = np.meshgrid(np.arange(h) - center[0], np.arange(w) - center[1], indexing="ij")
    ring = np.rint(np.sqrt(dy**2 + dx**2)).astype(np.int64).ravel()
    radii, inverse = np.unique(ring, return_inverse=True)
    onehot = np.zeros((h * w, radii.size), np.float64)
    onehot[np.arange(h * w), inverse.ravel()] = 1.0
    weights = jnp.asarray(onehot / onehot.sum(axis=0), dtype=jnp.result_type(m.dtype, jnp.float32))
    flat = m.reshape(*m.shape[:-2], h * w)
    values = jnp.matmul(flat, weights, precision=jax.lax.Precision.HIGHEST)
    return jnp.asarray(radii, jnp.int32), values


# ----------------------------------------------------------------------------- invariance score


def invariance_score(clean: jax.Array, trajectories: jax.Array, *, rate: float = 0.01) -> jax.Array:
    """Per-unit invariance score of Goodfellow et al. 2009: local / global firing rate.

    Exactly: the threshold of unit u is ``t_u = quantile(clean[:, u], 1 - rate)`` (linear
    interpolation) and a unit *fires* when its activation is strictly above ``t_u``. The global
    rate ``G_u`` is the measured fraction of clean inputs on which u fires (``rate`` up to
    ties and rounding of ``N * rate``). The local rate ``L_u`` is the fraction of trajectory
    points ``trajectories[n, t, u]`` on which u fires, over the examples n on which u fires on
    the clean input ``clean[n, u]``. The score is ``L_u / G_u``. Units that never fire on the
    clean inputs (``G_u == 0``) get NaN; use ``jnp.nanmean`` to aggregate. Whether the clean
    point belongs to the trajectory is up to the caller.

    Args:
      clean: ``(N, U)`` activations of U units on N clean inputs.
      trajectories: ``(N, T, U)`` activations on T transformed versions of each input.
      rate: static target global firing rate in (0, 1); default 0.01 (the paper's 1%).

    Returns:
      ``(U,)`` float scores in ``[0, 1 / G_u]``; 1 means no more invariant than chance.
    """
    clean, traj = jnp.asarray(clean), jnp.asarray(trajectories)
    if clean.ndim != 2 or traj.ndim != 3 or traj.shape[::2] != clean.shape:
        raise ValueError(
            f"clean must be (N, U) and trajectories (N, T, U), got {clean.shape} and {traj.shape}"
        )
    if not isinstance(rate, numbers.Real) or not 0.0 < float(rate) < 1.0:
        raise ValueError(f"rate must be a float in (0, 1), got {rate!r}")
    thresh = jnp.quantile(clean, 1.0 - float(rate), axis=0)  # (U,)
    fires_clean = (clean > thresh).astype(jnp.float32)  # (N, U)
    fires_traj = jnp.mean(traj > thresh, axis=1)  # (N, U): per-trajectory firing fraction
    n_fire = jnp.sum(fires_clean, axis=0)
    safe = jnp.where(n_fire > 0, n_fire, 1.0)
    local = jnp.sum(fires_clean * fires_traj, axis=0) / safe
    glob = n_fire / clean.shape[0]
    return jnp.where(n_fire > 0, local / jnp.where(n_fire > 0, glob, 1.0), jnp.nan)


# ----------------------------------------------------------------------------- reports (numpy)


def _t_coverage(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) tan(theta)) for Student-t with integer df (A&S 26.7.3 / 26.7.4)."""
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        if df == 1:
            return 2.0 * theta / math.pi
        k = np.arange(1, (df - 1) // 2)
        terms = math.cos(theta) * np.cumprod(np.concatenate([[1.0], c2 * 2 * k / (2 * k + 1)]))
        return 2.0 / math.pi * (theta + s * float(terms.sum()))
    k = np.arange(1, df // 2)
    terms = np.cumprod(np.concatenate([[1.0], c2 * (2 * k - 1) / (2 * k)]))
    return s * float(terms.sum())


def _t_critical(confidence: float, df: int) -> float:
    """Two-sided Student-t critical value: P(|T_df| <= t) = confidence, by bisection."""
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if _t_coverage(mid, df) < confidence else (lo, mid)
    return math.sqrt(df) * math.tan(0.5 * (lo + hi))


def mean_ci(values, *, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and Student-t confidence half-width, for "mean ± 95% CI over seeds" tables.

    ``half_width = t_{(1 + confidence) / 2, n - 1} * std(values, ddof=1) / sqrt(n)``. The t
    critical value is exact for every integer df (closed-form t CDF, Abramowitz & Stegun
    26.7.3-4, inverted by bisection): no scipy. Plain numpy, not jittable: it is for reports.

    Args:
      values: 1-D array-like of n >= 1 finite numbers (one per seed).
      confidence: two-sided confidence level in (0, 1); default 0.95.

    Returns:
      ``(mean, half_width)`` as Python floats; ``half_width`` is NaN when n == 1.

    Example:
      >>> m, hw = mean_ci([1.0, 2.0, 3.0])
      >>> round(m, 6), round(hw, 6)
      (2.0, 2.484138)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {x.shape}")
    if not isinstance(confidence, numbers.Real) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    mean = float(x.mean())
    n = x.size
    if n == 1:
        return mean, math.nan
    t = _t_critical(float(confidence), n - 1)
    return mean, t * float(x.std(ddof=1)) / math.sqrt(n)
