"""Stability of representations: sensitivity maps, per-layer distances, equivariance.

These protocols compare feature vectors rather than top-1 classes. A ``features_fn(params,
images) -> {layer name: (N, ...) array}`` exposes the layers; each example's features are
flattened before a distance is taken. See :mod:`invariance.measure` for the row schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invariance import metrics
from invariance import transforms as T
from invariance.measure import _core as C
from invariance.measure import _families as F
from invariance.measure._registry import register

__all__ = [
    "equivariance_error",
    "layer_stability",
    "translation_maps",
    "translation_sensitivity_map",
]

FeaturesFn = Callable[[Any, jax.Array], Mapping[str, jax.Array]]


def _distances(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example (relative_l2(a, b), cosine_similarity(a, b)), each ``(n,)``."""
    return metrics.relative_l2(a, b), metrics.cosine_similarity(a, b)


def _check_tsm(
    shape: tuple[int, ...],
    *,
    max_shift: Any,
    layer: Any,
    mode: Any,
    transform_batch: Any,
    progress: Any,
) -> int:
    s = C.int_at_least("max_shift", max_shift, 0)
    C.shift_fits("max_shift", s, shape)
    C.choice("mode", mode, C.MODES)
    if layer is not None and not isinstance(layer, str):
        raise ValueError(f"layer must be None or a layer name (str), got {C.brief(layer)}")
    if transform_batch is not None:
        C.int_at_least("transform_batch", transform_batch, 1)
    C.flag("progress", progress)
    return s


@register(check=_check_tsm)
def translation_sensitivity_map(
    apply_fn: Callable[[Any, jax.Array], Any],
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    max_shift: int,
    layer: str | None = None,
    mode: str = "circular",
    transform_batch: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Translation-sensitivity map of Kauderer-Abrams 2017, "Quantifying Translation-Invariance
    in Convolutional Neural Networks", with cosine similarity (Myburgh et al. 2021).

    For every ``(dy, dx)`` in ``-max_shift..max_shift`` squared: the mean over images of the
    normalised Euclidean distance ``||r(x) - r(S x)|| / ||r(x)||`` (:func:`metrics.relative_l2`)
    and of the cosine similarity between ``r(x)`` and ``r(S x)``; the radial profile averages
    each map over rings of equal ``round(|d|)`` (:func:`metrics.radial_profile`). A
    representation that is zero on an image makes its distance ``inf`` (metrics' convention).

    Args:
      apply_fn: with ``layer=None`` an ``apply_fn(variables, images) -> logits (n, K)``; with
        a layer name a ``features_fn(variables, images) -> dict`` and
        ``r = apply_fn(variables, x)[layer]``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float.
      labels: unused; accepted for the common signature.
      key: unused (deterministic); accepted for the common signature.
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      max_shift: ``s``, an int ``>= 0`` below ``min(H, W)``; the map is ``(2s + 1, 2s + 1)``.
      layer: None (logits) or a key of ``features_fn``'s output.
      mode: ``"circular"`` or ``"constant"`` shifts.
      transform_batch: shifts evaluated at once (``lax.map`` in vmapped batches; ``None`` =
        all ``(2s + 1)^2`` at once).
      progress: show a tqdm bar over chunks.

    Returns:
      Rows: one per grid cell (``aggregate="cell"``: ``dy``, ``dx``, ``ring``,
      ``relative_l2``, ``cosine``; the map's entry ``[dy + s, dx + s]``, the mean over images
      in float64) then one per ring (``aggregate="ring"``: ``ring``, ``relative_l2``,
      ``cosine``), each with ``layer`` (``"logits"`` for ``layer=None``).
      :func:`translation_maps` turns them into the ``(2s+1, 2s+1)`` maps and the profiles.
    """
    call = C.begin(
        "translation_sensitivity_map", images, progress=progress, row_name="translation_sensitivity"
    )
    s = _check_tsm(
        call.shape,
        max_shift=max_shift,
        layer=layer,
        mode=mode,
        transform_batch=transform_batch,
        progress=progress,
    )
    chunk_size, transform_batch = C.grid_chunking(chunk_size, transform_batch, (2 * s + 1) ** 2)
    rep = C.check_representation(apply_fn, variables, call.images, layer)
    shifts = np.arange(-s, s + 1)
    grid = np.stack(np.meshgrid(shifts, shifts, indexing="ij"), -1).reshape(-1, 2)
    grid_j = jnp.asarray(grid, jnp.int32)

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)
        r0 = rep(params, x)

        def under(d):
            r = rep(params, T.translate(x, dy=d[0], dx=d[1], mode=mode))
            return *_distances(r0, r), C.nan_rows(r)

        dist, cos, nan = C.map_over(under, grid_j, transform_batch)  # (G, n)
        return {"dist": dist.T, "cos": cos.T, "nan": jnp.any(nan, 0) | C.nan_rows(r0)}

    out = call.stream(step, variables, chunk_size=chunk_size)
    return _tsm_rows(call, out, grid, s, mode, "logits" if layer is None else layer)


def _tsm_rows(call, out, grid, s, mode, layer) -> list[dict[str, Any]]:
    """:func:`translation_sensitivity_map`'s rows from the per-image distances ``(N, G)``: the
    maps (means over images in float64), one row per cell, then the radial profile's rings."""
    side = 2 * s + 1
    dist_map = np.mean(out["dist"].astype(np.float64), axis=0).reshape(side, side)
    cos_map = np.mean(out["cos"].astype(np.float64), axis=0).reshape(side, side)
    radii, profile = metrics.radial_profile(jnp.asarray(np.stack([dist_map, cos_map])))
    radii, profile = np.asarray(radii), np.asarray(profile, np.float64)
    common = dict(
        transform="translate",
        mode=mode,
        pairs="original_vs_shifted",
        **C.shift_columns(-s, s),
        layer=layer,
    )
    rows = [
        call.row(
            aggregate="cell",
            dy=int(dy),
            dx=int(dx),
            ring=int(np.rint(np.hypot(dy, dx))),
            relative_l2=dist_map[dy + s, dx + s],
            cosine=cos_map[dy + s, dx + s],
            **common,
        )
        for dy, dx in grid
    ]
    rows += [
        call.row(
            aggregate="ring",
            ring=int(r),
            relative_l2=profile[0, j],
            cosine=profile[1, j],
            **common,
        )
        for j, r in enumerate(radii)
    ]
    return rows


def translation_maps(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The maps and profiles of :func:`translation_sensitivity_map`, from its rows.

    Args:
      rows: the rows of one call (one layer), e.g. read back from a ``rows.jsonl``.

    Returns:
      ``"shifts"`` ``(2s+1,)`` (the offsets along each axis), ``"map"`` and ``"cosine_map"``
      ``(2s+1, 2s+1)`` float64 with entry ``[dy + s, dx + s]``, ``"radii"`` ``(R,)`` int,
      ``"profile"`` and ``"cosine_profile"`` ``(R,)`` float64: the numbers of the rows, exactly.

    Raises:
      ValueError: rows that are not one complete sensitivity map.
    """
    rows = [r for r in rows if r.get("protocol") == "translation_sensitivity"]
    layers = {r.get("layer") for r in rows}
    cells = [r for r in rows if r.get("aggregate") == "cell"]
    rings = sorted((r for r in rows if r.get("aggregate") == "ring"), key=lambda r: r["ring"])
    s = max((abs(int(r["dy"])) for r in cells), default=-1)
    side = 2 * s + 1
    if len(layers) != 1 or len(cells) != side * side or not rings:
        raise ValueError(
            f"rows must be one translation_sensitivity_map call (one layer, every cell and "
            f"ring), got {len(cells)} cells, {len(rings)} rings, layers {sorted(map(str, layers))}"
        )
    dist_map, cos_map = np.zeros((side, side)), np.zeros((side, side))
    filled = np.zeros((side, side), bool)
    for r in cells:
        at = (int(r["dy"]) + s, int(r["dx"]) + s)
        dist_map[at], cos_map[at], filled[at] = float(r["relative_l2"]), float(r["cosine"]), True
    if not filled.all():
        raise ValueError("rows repeat a cell and miss another: not one complete map")
    return {
        "shifts": np.arange(-s, s + 1),
        "map": dist_map,
        "cosine_map": cos_map,
        "radii": np.array([int(r["ring"]) for r in rings]),
        "profile": np.array([float(r["relative_l2"]) for r in rings]),
        "cosine_profile": np.array([float(r["cosine"]) for r in rings]),
    }


def _check_layers(names: list[str], layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        return names
    if isinstance(layers, str) or not layers or any(la not in names for la in layers):
        raise ValueError(
            f"layers must be a non-empty list of names from {names}, got {C.brief(layers)}"
        )
    return list(layers)


def _check_one_severity(
    shape: tuple[int, ...],
    *,
    transform: Any,
    severity: Any,
    fill: Any,
    progress: Any,
    **transform_options: Any,
) -> tuple[F.Transform, np.ndarray, int | float]:
    """The transform of a one-severity protocol, its severity (device value, row value)."""
    tr = F.resolve_transform(transform, fill, transform_options)
    if np.ndim(severity) != 0:
        raise ValueError(f"severity must be a single number, got {C.brief(severity)}")
    sev_np, (sev_row,) = tr.check_severities(severity, shape)
    C.flag("progress", progress)
    return tr, sev_np, sev_row


def _check_layer_stability(
    shape: tuple[int, ...], *, layers: Any, **options: Any
) -> tuple[F.Transform, np.ndarray, int | float]:
    if layers is not None and (
        isinstance(layers, str) or not layers or not all(isinstance(la, str) for la in layers)
    ):
        raise ValueError(f"layers must be None or a non-empty list of names, got {C.brief(layers)}")
    return _check_one_severity(shape, **options)


@register(check=_check_layer_stability, model="features", needs=("key",))
def layer_stability(
    apply_fn: FeaturesFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    transform: str,
    severity: float,
    layers: Sequence[str] | None = None,
    fill: float | str = 0.0,
    progress: bool = False,
    **transform_options: Any,
) -> list[dict[str, Any]]:
    """Per-layer distance between the features of clean and transformed images.

    The seed's claim 3: a Conv -> MaxPool -> Conv network filters masking noise that a
    Conv -> Conv network carries forward. For each layer, the mean over images of
    ``relative_l2(F(x), F(T x))`` and of the cosine similarity, next to the same distance on
    the input itself (``input_relative_l2``), so a layer that filters the noise shows a ratio
    below the input's. Transform families, options and per-image keys as
    :func:`severity_curve` (image ``i`` uses ``fold_in(key, i)``).

    Args:
      apply_fn: a features function,
        ``apply_fn(variables, images (n, H, W, C)) -> {name: (n, ...) array}``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float.
      labels: unused; accepted for the common signature.
      key: PRNG key (required; logged as ``seed``).
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      transform: one of :data:`TRANSFORMS`.
      severity: one severity (a number, checked as :func:`severity_curve`'s).
      layers: names to report, in this order; default every output, sorted by name.
      fill: as :func:`severity_curve`.
      progress: show a tqdm bar over chunks.
      **transform_options: the family's options (see :func:`severity_curve`).

    Returns:
      One row per layer: common keys plus ``layer``, ``relative_l2``, ``cosine``,
      ``input_relative_l2``, ``input_cosine``, ``fill`` and the family's options.
    """
    call = C.begin("layer_stability", images, key=key, needs=("key",), progress=progress)
    tr, sev_np, sev_row = _check_layer_stability(
        call.shape,
        layers=layers,
        transform=transform,
        severity=severity,
        fill=fill,
        progress=progress,
        **transform_options,
    )
    chunk_size = C.chunk_images(chunk_size, 1)
    names = _check_layers(C.feature_names(apply_fn, variables, call.images), layers)
    out = call.stream(_layer_step(apply_fn, tr, sev_np[0], names), variables, chunk_size=chunk_size)
    in_dist, in_cos = out["<input>"]
    return [
        call.row(
            transform=transform,
            severity=sev_row,
            mode=tr.mode,
            pairs="original_vs_transformed",
            layer=name,
            relative_l2=C.mean(out[name][0]),
            cosine=C.mean(out[name][1]),
            input_relative_l2=C.mean(in_dist),
            input_cosine=C.mean(in_cos),
            **tr.columns,
        )
        for name in names
    ]


def _layer_step(features_fn: FeaturesFn, tr: F.Transform, sev: Any, names: list[str]) -> Callable:
    """The jitted step of :func:`layer_stability`: per image, the distances between the clean
    and transformed features of each layer of ``names`` and of the input itself."""
    sev = jnp.asarray(sev)

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)
        xt = jax.vmap(lambda k, im: tr.fn(k, im, sev))(C.image_keys(key, index), x)
        f0, ft = features_fn(params, x), features_fn(params, xt)
        out = {name: _distances(f0[name], ft[name]) for name in names}
        out["<input>"] = _distances(x, xt)
        out["nan"] = C.nan_rows([f0[name] for name in names], [ft[name] for name in names])
        return out

    return step


def _check_equivariance(
    shape: tuple[int, ...], *, layer: Any, total_stride: Any, shifts: Any, mode: Any, progress: Any
) -> tuple[int, list[tuple[int, int]]]:
    stride = C.int_at_least("total_stride", total_stride, 1)
    pairs = C.shift_pairs("shifts", shifts)
    bad = [p for p in pairs if p[0] % stride or p[1] % stride]
    if bad:
        raise ValueError(f"shifts {bad} are not divisible by total_stride={stride}")
    for dy, dx in pairs:
        C.shift_fits("shifts (dy)", dy, shape, "vertical")
        C.shift_fits("shifts (dx)", dx, shape, "horizontal")
    C.choice("mode", mode, C.MODES)
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a layer name (str), got {C.brief(layer)}")
    C.flag("progress", progress)
    return stride, pairs


@register(check=_check_equivariance, model="features")
def equivariance_error(
    apply_fn: FeaturesFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    layer: str,
    total_stride: int,
    shifts: Sequence[tuple[int, int]],
    mode: str = "circular",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Shift-equivariance error of a feature map: does shifting the input shift the features?

    For each input shift ``d = (dy, dx)``, the mean over images of
    ``relative_l2(S_{d / stride} F(x), F(S_d x))`` (the reference is the shifted feature map of
    the clean input) and the cosine similarity, with both shifts in ``mode``. A stack of
    circular stride-1 convolutions gives 0 for circular shifts; strided subsampling breaks
    equivariance for shifts that are not multiples of its stride (Zhang 2019; Azulay & Weiss
    2019), which is why every shift must be divisible by the layer's ``total_stride``.

    Args:
      apply_fn: a features function,
        ``apply_fn(variables, images) -> {name: (n, h, w, c) array}``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float.
      labels: unused; accepted for the common signature.
      key: unused (deterministic); accepted for the common signature.
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      layer: the feature map to test (rank 4: ``(n, h, w, c)``).
      total_stride: product of the strides up to that layer (``>= 1``).
      shifts: integer ``(dy, dx)`` pairs, each component divisible by ``total_stride``,
        ``|dy| < H`` and ``|dx| < W``.
      mode: ``"circular"`` or ``"constant"``.
      progress: show a tqdm bar over chunks.

    Returns:
      One row per shift: common keys plus ``layer``, ``dy``, ``dx``, ``feature_dy``,
      ``feature_dx``, ``total_stride``, ``relative_l2``, ``cosine``.

    Raises:
      ValueError: a shift not divisible by ``total_stride`` (and the usual bad options).
    """
    call = C.begin("equivariance_error", images, progress=progress)
    stride, pairs = _check_equivariance(
        call.shape,
        layer=layer,
        total_stride=total_stride,
        shifts=shifts,
        mode=mode,
        progress=progress,
    )
    return _equivariance_error(call, apply_fn, variables, chunk_size, layer, stride, pairs, mode)


def _equivariance_error(call, apply_fn, variables, chunk_size, layer, stride, pairs, mode):
    """:func:`equivariance_error` on checked options: the layer's rank, the stream, the rows."""
    chunk_size = C.chunk_images(chunk_size, len(pairs))
    rep = C.check_representation(apply_fn, variables, call.images, layer)
    probe = jax.ShapeDtypeStruct((1, *call.shape), jnp.float32)
    if len(jax.eval_shape(rep, variables, probe).shape) != 4:
        raise ValueError(f"layer {C.brief(layer)} must be a feature map (n, h, w, c)")
    d_in = jnp.asarray(pairs, jnp.int32)
    step = _equivariance_step(rep, d_in, d_in // stride, mode)
    out = call.stream(step, variables, chunk_size=chunk_size)
    s = max(max(abs(a), abs(b)) for a, b in pairs)
    return [
        call.row(
            transform="translate",
            severity=None,
            mode=mode,
            pairs="shifted_features_vs_features_of_shifted",
            max_shift=s,
            layer=layer,
            dy=dy,
            dx=dx,
            feature_dy=dy // stride,
            feature_dx=dx // stride,
            total_stride=stride,
            relative_l2=C.mean(out["dist"][:, j]),
            cosine=C.mean(out["cos"][:, j]),
        )
        for j, (dy, dx) in enumerate(pairs)
    ]


def _equivariance_step(rep: Callable, d_in: jax.Array, d_feat: jax.Array, mode: str) -> Callable:
    """The jitted step of :func:`equivariance_error`: for each input shift ``d_in`` ``(S, 2)``,
    the distance between the features shifted by ``d_feat`` and the features of the shifted
    input, ``(n, S)``."""

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)
        f0 = rep(params, x)

        def under(d, df):
            expected = T.translate(f0, dy=df[0], dx=df[1], mode=mode)
            actual = rep(params, T.translate(x, dy=d[0], dx=d[1], mode=mode))
            return *_distances(expected, actual), C.nan_rows(actual)

        dist, cos, nan = jax.vmap(under)(d_in, d_feat)  # (S, n)
        return {"dist": dist.T, "cos": cos.T, "nan": jnp.any(nan, 0) | C.nan_rows(f0)}

    return step
