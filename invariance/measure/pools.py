"""Pooling operators alone, no model: the seed's first experiments as numbers.

See :mod:`invariance.measure` for the row schema and the shared conventions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invariance import pooling
from invariance.measure import _core as C
from invariance.measure import _families as F
from invariance.measure._registry import register
from invariance.measure.representations import _check_one_severity, _distances

__all__ = ["pooling_stability"]

_WINDOWED = {"window": 2}
_POOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "max": _WINDOWED,
    "min": _WINDOWED,
    "avg": _WINDOWED,
    "lp": {"p": 2.0, **_WINDOWED},
    "stochastic": {"train": False, **_WINDOWED},
    "mixed": {"alpha": 0.5, **_WINDOWED},
}


def _check_pooling_stability(
    shape: tuple[int, ...], *, kinds: Any, pool_options: Any, **options: Any
) -> tuple[F.Transform, np.ndarray, int | float, dict[str, dict[str, Any]]]:
    tr, sev_np, sev_row = _check_one_severity(shape, **options)
    if isinstance(kinds, str) or not kinds:
        raise ValueError(f"kinds must be a non-empty list of names from {list(pooling.POOLS)}")
    for kind in kinds:
        C.choice("kind", kind, pooling.POOLS)
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must not repeat a name, got {list(kinds)}")
    if pool_options is not None and not isinstance(pool_options, Mapping):
        raise ValueError(
            f"pool_options must be a dict {{kind: {{option: value}}}}, got {C.brief(pool_options)}"
        )
    pool_options = dict(pool_options or {})
    extra = sorted(set(pool_options) - set(kinds))
    if extra:
        raise ValueError(f"pool_options has kinds {extra} not in kinds {list(kinds)}")
    resolved = {k: {**_POOL_DEFAULTS.get(k, {}), **pool_options.get(k, {})} for k in kinds}
    probe = jax.ShapeDtypeStruct(shape, jnp.float32)
    for kind in kinds:  # pooling's own checks, on the shapes alone (nothing is computed)
        try:
            jax.eval_shape(lambda x, k=kind: _pool_one(k, resolved[k], jax.random.key(0), x), probe)
        except TypeError as e:
            raise ValueError(f"bad pool_options for {kind!r}: {str(e).splitlines()[0]}") from None
    return tr, sev_np, sev_row, resolved


def _pool_one(kind: str, options: dict[str, Any], k: jax.Array, im: jax.Array) -> jax.Array:
    if kind == "stochastic":
        return pooling.pool(im, kind, key=jax.random.fold_in(k, 1), **options)
    return pooling.pool(im, kind, **options)


@register(check=_check_pooling_stability, model="none", needs=("key",))
def pooling_stability(
    apply_fn: None,
    variables: None,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    transform: str,
    kinds: Sequence[str],
    severity: float,
    pool_options: Mapping[str, Mapping[str, Any]] | None = None,
    fill: float | str = 0.0,
    progress: bool = False,
    **transform_options: Any,
) -> list[dict[str, Any]]:
    """Pooling alone, no model: how far does ``pool(T x)`` move from ``pool(x)``?

    The seed's first experiments as numbers: for each pooling kind the mean over images of
    ``relative_l2(pool(x), pool(T x))`` and the cosine similarity, next to the same distance
    without pooling (``input_relative_l2``; the ``"identity"`` reference row). Transform
    families, options and per-image keys as :func:`severity_curve`.

    Pool options: windowed kinds default to ``window=2`` (stride = window), ``"lp"`` to
    ``p=2``, ``"mixed"`` to ``alpha=0.5``; the others use :mod:`invariance.pooling`'s defaults.
    ``"stochastic"`` runs in evaluation mode (``train=False``: the probability-weighted
    average, deterministic) unless ``pool_options={"stochastic": {"train": True}}``; then image
    ``i`` samples with ``fold_in(fold_in(key, i), 1)`` for both ``x`` and ``T x`` (the same
    draws, so only the transform differs).

    Args:
      apply_fn: ``None``: no model (kept for the common protocol signature).
      variables: ``None``.
      images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float.
      labels: unused; accepted for the common signature.
      key: PRNG key (required; logged as ``seed``).
      chunk_size: images per jitted call; ``None`` (default): 64 on the CPU, 1024 on a GPU or
        TPU.
      transform: one of :data:`TRANSFORMS`.
      kinds: names from :data:`invariance.pooling.POOLS`, e.g. ``["max", "avg"]``.
      severity: one severity (a number, checked as :func:`severity_curve`'s).
      pool_options: optional ``{kind: {option: value}}`` merged over the defaults.
      fill: as :func:`severity_curve`.
      progress: show a tqdm bar over chunks.
      **transform_options: the family's options (see :func:`severity_curve`).

    Returns:
      The ``"identity"`` row, then one row per kind: common keys plus ``kind``,
      ``pool_options`` (a JSON string), ``relative_l2``, ``cosine``, ``input_relative_l2``,
      ``input_cosine``, ``fill`` and the family's options.
    """
    if apply_fn is not None or variables is not None:
        raise ValueError(
            "pooling_stability measures pooling alone: pass apply_fn=None and variables=None"
        )
    call = C.begin("pooling_stability", images, key=key, needs=("key",), progress=progress)
    checked = _check_pooling_stability(
        call.shape,
        kinds=kinds,
        pool_options=pool_options,
        transform=transform,
        severity=severity,
        fill=fill,
        progress=progress,
        **transform_options,
    )
    return _pooling_stability(call, chunk_size, transform, kinds, *checked)


def _pooling_stability(call, chunk_size, transform, kinds, tr, sev_np, sev_row, options):
    """:func:`pooling_stability` on checked options: the jitted step, streamed; the rows."""
    chunk_size = C.chunk_images(chunk_size, 1)
    sev = jnp.asarray(sev_np[0])

    def pool_one(kind: str, k: jax.Array, im: jax.Array) -> jax.Array:
        return _pool_one(kind, options[kind], k, im)

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)
        keys = C.image_keys(key, index)
        xt = jax.vmap(lambda k, im: tr.fn(k, im, sev))(keys, x)
        out = {"identity": _distances(x, xt)}
        pooled = []
        for kind in kinds:
            one = jax.vmap(lambda k, im, kind=kind: pool_one(kind, k, im))
            pooled += [one(keys, x), one(keys, xt)]
            out[kind] = _distances(pooled[-2], pooled[-1])
        out["nan"] = C.nan_rows(pooled)
        return out

    out = call.stream(step, None, chunk_size=chunk_size)
    in_dist, in_cos = (C.mean(v) for v in out["identity"])
    return [
        call.row(
            transform=transform,
            severity=sev_row,
            mode=tr.mode,
            pairs="original_vs_transformed",
            kind=kind,
            pool_options=json.dumps(options.get(kind, {}), sort_keys=True, default=str),
            relative_l2=C.mean(out[kind][0]),
            cosine=C.mean(out[kind][1]),
            input_relative_l2=in_dist,
            input_cosine=in_cos,
            **tr.columns,
        )
        for kind in ["identity", *kinds]
    ]
