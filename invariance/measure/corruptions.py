"""Output stability under masking, occlusion, noise, shifts and rotations of growing severity.

Severity curves for the seed's masking claims, and Zeiler & Fergus occlusion-sensitivity maps.
See :mod:`invariance.measure` for the row schema and the shared conventions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invariance import metrics
from invariance import transforms as T
from invariance.measure import _core as C
from invariance.measure import _families as F
from invariance.measure._registry import register

__all__ = ["occlusion_maps", "occlusion_sensitivity_map", "severity_curve"]

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _check_severity_curve(
    shape: tuple[int, ...],
    *,
    transform: Any,
    severities: Any,
    fill: Any,
    progress: Any,
    **transform_options: Any,
) -> tuple[F.Transform, np.ndarray, list[int | float]]:
    tr = F.resolve_transform(transform, fill, transform_options)
    sev_np, sev_rows = tr.check_severities(severities, shape)
    C.flag("progress", progress)
    return tr, sev_np, sev_rows


@register(check=_check_severity_curve, needs=("labels", "key"))
def severity_curve(
    apply_fn: ApplyFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    transform: str,
    severities: Sequence[float],
    fill: float | str = 0.0,
    progress: bool = False,
    **transform_options: Any,
) -> list[dict[str, Any]]:
    """Accuracy, consistency with the clean input and relative logit change, per severity.

    For each severity ``s``: ``accuracy`` of ``f(T_s x)``; ``consistency`` =
    ``P[argmax f(T_s x) = argmax f(x)]`` (Zhang 2019's agreement, against the clean input);
    ``relative_l2`` = mean over images of ``||f(x) - f(T_s x)|| / ||f(x)||`` on the logits
    (Kauderer-Abrams 2017). One jitted call per chunk evaluates every severity (a vmap over
    the severities). The seed's claims 1, 2 and 4 (masking, line masks, inverse masking).

    Transform families (:data:`TRANSFORMS`) and what the severity sets:

    * ``"random_mask"``: the masked ratio in [0, 1] (:func:`transforms.random_mask`, ``fill``).
    * ``"inverse_mask"``: the ratio, pixels set to each image's maximum (``fill`` ignored).
    * ``"line_mask"``: the ``period`` (``vary="period"``, default; ``width`` option, default 1)
      or the line ``width`` (``vary="width"``; ``period`` option, default 4); options
      ``orientation`` ("vertical" default, "horizontal", "grid") and ``offset`` (0).
    * ``"occlusion"``: the side of a square set to ``fill``; ``position="center"`` (default:
      top-left at ``((H - s) // 2, (W - s) // 2)``) or ``"random"`` (top-left uniform over the
      positions keeping the square inside, from the image's key).
    * ``"gaussian_noise"``: sigma (no clipping).
    * ``"translate"``: the shift in pixels; ``direction`` ("horizontal" default, "vertical",
      "diagonal") and ``mode`` ("circular" default, "constant").
    * ``"rotate"``: degrees, bilinear, ``fill`` outside.

    Randomness: image ``i`` uses ``fold_in(key, i)`` at every severity (common random numbers),
    so random masks are nested (the 0.2 mask contains the 0.1 mask) and noise directions are
    shared across sigmas: the curve varies the severity alone.

    Args:
      apply_fn: ``apply_fn(variables, images (n, H, W, C) float32) -> logits (n, K)``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float.
      labels: ``(N,)`` ints (required).
      key: PRNG key (required; logged as ``seed``; unused by deterministic families).
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      transform: one of :data:`TRANSFORMS`.
      severities: 1-D finite numbers (whole numbers for line_mask, occlusion, translate;
        ratios in [0, 1] for the masks; shifts below the image side they move along; squares
        at most ``min(H, W)``).
      fill: a finite number, or ``"max"`` / ``"min"`` (each image's extreme), for the
        families that fill.
      progress: show a tqdm bar over chunks.
      **transform_options: the family's options above.

    Returns:
      One row per severity: common keys plus ``accuracy``, ``clean_accuracy``,
      ``consistency``, ``relative_l2``, ``fill`` and the family's options.
    """
    call = C.begin(
        "severity_curve", images, labels=labels, key=key, needs=("labels", "key"), progress=progress
    )
    return _severity_curve(
        call, apply_fn, variables, chunk_size, transform, severities, fill, transform_options
    )


def _severity_curve(call, apply_fn, variables, chunk_size, transform, severities, fill, options):
    """:func:`severity_curve` after :func:`C.begin`: checks the options, streams, rows."""
    tr, sev_np, sev_rows = _check_severity_curve(
        call.shape,
        transform=transform,
        severities=severities,
        fill=fill,
        progress=call.progress,
        **options,
    )
    chunk_size = C.chunk_images(chunk_size, len(sev_np))
    sev = jnp.asarray(sev_np)

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)
        keys = C.image_keys(key, index)
        views = jax.vmap(lambda s: jax.vmap(lambda k, im: tr.fn(k, im, s))(keys, x))(sev)
        logits = C.views_apply(apply_fn, params, jnp.moveaxis(views, 0, 1))  # (n, S, K)
        clean = apply_fn(params, x)
        return {
            "nan": C.nan_rows(clean, logits),
            "clean": C.argmax(clean),
            "pred": C.argmax(logits),
            "agree": jax.vmap(jax.vmap(metrics.consistency, in_axes=(None, 0)))(clean, logits),
            "rel": jax.vmap(metrics.relative_l2, in_axes=(None, 1), out_axes=1)(clean, logits),
        }

    out = call.stream(step, variables, chunk_size=chunk_size, desc=f"severity_curve({transform})")
    labels = call.labels
    clean_accuracy = C.mean(out["clean"] == labels)
    return [
        call.row(
            transform=transform,
            severity=s,
            mode=tr.mode,
            pairs="original_vs_transformed",
            accuracy=C.mean(out["pred"][:, j] == labels),
            clean_accuracy=clean_accuracy,
            consistency=C.mean(out["agree"][:, j]),
            relative_l2=C.mean(out["rel"][:, j]),
            **tr.columns,
        )
        for j, s in enumerate(sev_rows)
    ]


def _check_occlusion(
    shape: tuple[int, ...],
    *,
    size: Any,
    stride: Any,
    fill: Any,
    transform_batch: Any,
    progress: Any,
) -> tuple[int, int, float | str]:
    h, w = shape[:2]
    size = C.int_at_least("size", size, 1)
    if size > min(h, w):
        raise ValueError(f"size must be <= min(H, W) = {min(h, w)}, got {size}")
    stride = C.int_at_least("stride", stride, 1)
    fill = C.check_fill(fill, ("mean",))
    if transform_batch is not None:
        C.int_at_least("transform_batch", transform_batch, 1)
    C.flag("progress", progress)
    return size, stride, fill


@register(check=_check_occlusion, needs=("labels",))
def occlusion_sensitivity_map(
    apply_fn: ApplyFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    size: int = 8,
    stride: int = 2,
    fill: float | str = 0.5,
    transform_batch: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Occlusion sensitivity of Zeiler & Fergus 2014 as one summary row.

    The protocol form of :func:`occlusion_maps` (same arguments): it returns that function's
    ``"rows"``; call :func:`occlusion_maps` for the per-image maps.

    Returns:
      One row: ``clean_accuracy``, ``accuracy``, ``mean_p_true_clean``, ``mean_p_true``,
      ``mean_drop``, ``max_drop``, ``top_class_change``, ``size``, ``stride``, ``fill``,
      ``n_positions`` (see :func:`occlusion_maps`).
    """
    return occlusion_maps(
        apply_fn,
        variables,
        images,
        labels=labels,
        key=key,
        chunk_size=chunk_size,
        size=size,
        stride=stride,
        fill=fill,
        transform_batch=transform_batch,
        progress=progress,
    )["rows"]


def occlusion_maps(
    apply_fn: ApplyFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    size: int = 8,
    stride: int = 2,
    fill: float | str = 0.5,
    transform_batch: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Occlusion sensitivity of Zeiler & Fergus 2014, "Visualizing and Understanding
    Convolutional Networks": slide a grey square, record p(true class) and the top class.

    The square (``size x size``) takes every position inside the image on a ``stride`` grid:
    top-left rows ``0, stride, ..., <= H - size`` (``Hp`` of them) and the same for columns
    (``Wp``). ``p(true) = softmax(f(x_occluded))[label]``.

    Args:
      apply_fn: ``apply_fn(variables, images (n, H, W, C) float32) -> logits (n, K)``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float.
      labels: ``(N,)`` ints (required).
      key: unused (deterministic); accepted for the common signature.
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      size: side of the square, ``1 <= size <= min(H, W)``.
      stride: step between positions, ``>= 1``.
      fill: grey level (finite, on the float [0, 1] scale for uint8 input), or ``"mean"``:
        each image's own mean over ``(H, W, C)``.
      transform_batch: positions evaluated at once (``lax.map`` in vmapped batches; ``None``
        = all at once).
      progress: show a tqdm bar over chunks.

    Returns:
      A dict: ``"p_true"`` ``(N, Hp, Wp)`` float32, ``"top_class"`` ``(N, Hp, Wp)`` int32,
      ``"clean_p_true"`` ``(N,)``, ``"tops"`` ``(Hp,)`` and ``"lefts"`` ``(Wp,)`` (the
      square's top-left corners), and ``"rows"``: one summary row with ``clean_accuracy``,
      ``accuracy`` (under occlusion, over images and positions), ``mean_p_true_clean``,
      ``mean_p_true``, ``mean_drop`` (mean of clean minus occluded p(true)), ``max_drop``
      (mean over images of the largest drop), ``top_class_change`` (fraction of positions
      whose top class differs from the clean one), ``size``, ``stride``, ``fill``,
      ``n_positions``.
    """
    call = C.begin(
        "occlusion_sensitivity_map",
        images,
        labels=labels,
        needs=("labels",),
        progress=progress,
        row_name="occlusion_sensitivity",
    )
    size, stride, fill = _check_occlusion(
        call.shape,
        size=size,
        stride=stride,
        fill=fill,
        transform_batch=transform_batch,
        progress=progress,
    )
    return _occlusion_maps(
        call, apply_fn, variables, chunk_size, size, stride, fill, transform_batch
    )


def _occlusion_maps(call, apply_fn, variables, chunk_size, size, stride, fill, transform_batch):
    """:func:`occlusion_maps` on checked options: the corners, the stream, the maps and row."""
    h, w = call.shape[:2]
    tops, lefts = np.arange(0, h - size + 1, stride), np.arange(0, w - size + 1, stride)
    corners = np.stack(np.meshgrid(tops, lefts, indexing="ij"), -1).reshape(-1, 2)
    chunk_size, transform_batch = C.grid_chunking(chunk_size, transform_batch, len(corners))
    step = _occlusion_step(apply_fn, jnp.asarray(corners, jnp.int32), size, fill, transform_batch)
    out = call.stream(step, variables, call.labels.astype(np.int32), chunk_size=chunk_size)
    drop = out["p0"][:, None].astype(np.float64) - out["p"]
    row = call.row(
        transform="occlusion",
        severity=size,
        pairs="original_vs_occluded",
        clean_accuracy=C.mean(out["top0"] == call.labels),
        accuracy=C.mean(out["top"] == call.labels[:, None]),
        mean_p_true_clean=C.mean(out["p0"]),
        mean_p_true=C.mean(out["p"]),
        mean_drop=C.mean(drop),
        max_drop=C.mean(np.max(drop, axis=1)),
        top_class_change=C.mean(out["top"] != out["top0"][:, None]),
        size=size,
        stride=stride,
        fill=fill,
        n_positions=len(corners),
    )
    shape = (call.n, len(tops), len(lefts))
    return {
        "p_true": out["p"].reshape(shape),
        "top_class": out["top"].reshape(shape),
        "clean_p_true": out["p0"],
        "tops": tops,
        "lefts": lefts,
        "rows": [row],
    }


def _occlusion_step(
    apply_fn: ApplyFn, corners: jax.Array, size: int, fill: float | str, transform_batch: Any
) -> Callable:
    """The jitted step of :func:`occlusion_maps`: for the square at each of ``corners``
    ``(P, 2)`` (top, left) and for the clean image, p(true class) and the top class ``(n, P)``
    and ``(n,)``, and NaN flags."""

    def p_and_top(logits, y):
        p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), y[:, None], axis=-1)[:, 0]
        return p, C.argmax(logits), C.nan_rows(logits)

    @jax.jit
    def step(params, key, x, index, y):
        x = C.to_float(x)
        f = jnp.mean(x, axis=(1, 2, 3)) if fill == "mean" else jnp.full(x.shape[:1], fill)

        def at(corner):
            occ = jax.vmap(
                lambda im, v: T.occlude(
                    im, top=corner[0], left=corner[1], height=size, width=size, fill=v
                )
            )(x, f)
            return p_and_top(apply_fn(params, occ), y)

        p, top, nan = C.map_over(at, corners, transform_batch)  # (P, n) each
        p0, top0, nan0 = p_and_top(apply_fn(params, x), y)
        return {"p": p.T, "top": top.T, "p0": p0, "top0": top0, "nan": jnp.any(nan, 0) | nan0}

    return step
