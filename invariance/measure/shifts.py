"""Output stability under translations (and rotations): the classification-level protocols.

Zhang 2019 consistency, Azulay & Weiss 2019 one-pixel diagonal shifts, Hendrycks & Dietterich
2019 CIFAR-P translate flip probability, Engstrom et al. 2019 spatial grid. See
:mod:`invariance.measure` for the row schema and the shared conventions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invariance import metrics
from invariance import transforms as T
from invariance.measure import _core as C
from invariance.measure._registry import register

__all__ = [
    "cifar_p_flip_rate",
    "one_pixel_flip_rate",
    "shift_consistency",
    "spatial_grid_accuracy",
]

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _accuracy(pred: np.ndarray | None, labels: np.ndarray | None) -> float | None:
    """``metrics.accuracy`` from predictions, on the host (None without labels)."""
    if labels is None:
        return None
    return C.mean(pred == labels)


def _check_shift_consistency(
    shape: tuple[int, ...], *, max_shift: Any, mode: Any, pairs: Any, num_pairs: Any, progress: Any
) -> tuple[int, int]:
    s = C.int_at_least("max_shift", max_shift, 0)
    C.shift_fits("max_shift", s, shape)
    C.choice("mode", mode, C.MODES)
    C.choice("pairs", pairs, C.PAIRS)
    C.flag("progress", progress)
    return s, C.int_at_least("num_pairs", num_pairs, 1)


@register(check=_check_shift_consistency, needs=("key",))
def shift_consistency(
    apply_fn: ApplyFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    max_shift: int = 3,
    mode: str = "circular",
    pairs: str = "two_shifted",
    num_pairs: int = 1,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Shift consistency of Zhang 2019, "Making Convolutional Networks Shift-Invariant Again".

    ``P[argmax f(S1 x) = argmax f(S2 x)]`` with offsets drawn per image and per pair from the
    logged key: for image ``i`` (global index) and pair ``p``,
    ``off = jax.random.randint(fold_in(fold_in(key, i), p), (2, 2), -max_shift, max_shift + 1)``
    gives two ``(dy, dx)`` rows, each uniform in ``[-max_shift, max_shift]^2``. ``"two_shifted"``
    compares ``translate(x, off[0])`` with ``translate(x, off[1])`` (Zhang's protocol; the two
    offsets may coincide); ``"original_vs_shifted"`` compares ``x`` with ``translate(x, off[0])``.

    Args:
      apply_fn: ``apply_fn(variables, images (n, H, W, C) float32) -> logits (n, K)``.
      variables: the model's variables (any pytree).
      images: ``(N, H, W, C)`` uint8 (scaled by 1/255) or float.
      labels: optional ``(N,)`` ints; adds clean ``accuracy``.
      key: PRNG key (required); its data is logged as ``seed``.
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      max_shift: offsets are uniform in ``-max_shift..max_shift`` per axis; an int ``>= 0``
        and below ``min(H, W)``.
      mode: ``"circular"`` (``jnp.roll``) or ``"constant"`` (zero fill).
      pairs: ``"two_shifted"`` or ``"original_vs_shifted"``.
      num_pairs: pairs per image (``>= 1``); consistency averages over images and pairs.
      progress: show a tqdm bar over chunks.

    Returns:
      One row: the common keys (``severity`` = ``max_shift``) plus ``consistency``,
      ``accuracy`` (None without labels) and ``num_pairs``.

    Raises:
      ValueError: bad options, a missing key, NaN or inf images, NaN logits.
    """
    call = C.begin(
        "shift_consistency", images, labels=labels, key=key, needs=("key",), progress=progress
    )
    s, num_pairs = _check_shift_consistency(
        call.shape,
        max_shift=max_shift,
        mode=mode,
        pairs=pairs,
        num_pairs=num_pairs,
        progress=progress,
    )
    return _shift_consistency(call, apply_fn, variables, chunk_size, s, mode, pairs, num_pairs)


def _shift_consistency(call, apply_fn, variables, chunk_size, s, mode, pairs, num_pairs):
    """:func:`shift_consistency` on checked options: its jitted step, streamed; its row."""
    chunk_size = C.chunk_images(chunk_size, num_pairs * (2 if pairs == "two_shifted" else 1))
    need_clean = call.labels is not None or pairs == "original_vs_shifted"

    def shift_one(image, dydx):
        return T.translate(image, dy=dydx[0], dx=dydx[1], mode=mode)

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)
        keys = C.image_keys(key, index)
        offs = jax.vmap(
            lambda k: jax.vmap(
                lambda p: jax.random.randint(jax.random.fold_in(k, p), (2, 2), -s, s + 1)
            )(jnp.arange(num_pairs))
        )(keys)  # (n, P, 2, 2)
        ncopy = 2 if pairs == "two_shifted" else 1
        offs = offs[:, :, :ncopy].reshape(x.shape[0], num_pairs * ncopy, 2)
        views = jax.vmap(jax.vmap(shift_one, in_axes=(None, 0)))(x, offs)  # (n, V, H, W, C)
        logits = C.views_apply(apply_fn, params, views).reshape(x.shape[0], num_pairs, ncopy, -1)
        out = {"nan": C.nan_rows(logits)}
        if need_clean:
            clean = apply_fn(params, x)
            out["pred"] = C.argmax(clean)
            out["nan"] = out["nan"] | C.nan_rows(clean)
        if pairs == "two_shifted":
            a, b = logits[:, :, 0], logits[:, :, 1]
        else:
            a, b = jnp.broadcast_to(clean[:, None], logits[:, :, 0].shape), logits[:, :, 0]
        out["agree"] = jax.vmap(jax.vmap(metrics.consistency))(a, b)  # (n, P)
        return out

    out = call.stream(step, variables, chunk_size=chunk_size)
    row = call.row(
        transform="translate",
        severity=s,
        mode=mode,
        pairs=pairs,
        **C.shift_columns(-s, s),
        consistency=C.mean(out["agree"]),
        accuracy=_accuracy(out.get("pred"), call.labels),
        num_pairs=num_pairs,
    )
    return [row]


def _frame_logits(apply_fn, params, x, ds, direction, mode):
    """Logits ``(n, F, K)`` of the images translated by each ``d`` in ``ds`` along direction."""

    def frame(d):
        dy, dx = C.direction_offsets(direction, d)
        return T.translate(x, dy=dy, dx=dx, mode=mode)

    views = jnp.moveaxis(jax.vmap(frame)(ds), 0, 1)  # (n, F, H, W, C)
    return C.views_apply(apply_fn, params, views)


def _check_one_pixel(shape: tuple[int, ...], *, max_offset: Any, mode: Any, progress: Any) -> int:
    m = C.int_at_least("max_offset", max_offset, 1)
    C.shift_fits("max_offset", m, shape, "diagonal")
    C.choice("mode", mode, C.MODES)
    C.flag("progress", progress)
    return m


@register(check=_check_one_pixel)
def one_pixel_flip_rate(
    apply_fn: ApplyFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    max_offset: int = 3,
    mode: str = "constant",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One-pixel diagonal shifts of Azulay & Weiss 2019, "Why do deep convolutional networks
    generalize so poorly to small image transformations?".

    Each image is translated by ``(c, c)`` for ``c`` in ``-max_offset..max_offset``; for every
    position ``c`` in ``-max_offset..max_offset-1`` the frames ``c`` and ``c + 1`` are compared:
    P(top-1 change) (:func:`metrics.top1_change`) and the mean absolute change of the predicted
    class's probability (:func:`metrics.mean_abs_change`, ``yhat = argmax f(x_c)``). The paper
    embeds images in a larger black canvas, hence ``mode="constant"`` (zero fill) by default.

    Args:
      apply_fn: ``apply_fn(variables, images (n, H, W, C)) -> logits (n, K)``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 or float.
      labels: optional ``(N,)`` ints; adds clean ``accuracy`` to every row.
      key: unused (deterministic); accepted for the common signature.
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      max_offset: an int ``>= 1`` below ``min(H, W)``; positions
        ``c = -max_offset..max_offset-1`` (``2 * max_offset``).
      mode: ``"constant"`` (zero fill) or ``"circular"``.
      progress: show a tqdm bar over chunks.

    Returns:
      ``2 * max_offset`` rows with ``position = c``, then one overall row (``position=None``)
      averaging over positions; metric columns ``p_top1_change``, ``mac``, ``accuracy``.
    """
    call = C.begin("one_pixel_flip_rate", images, labels=labels, progress=progress)
    m = _check_one_pixel(call.shape, max_offset=max_offset, mode=mode, progress=progress)
    chunk_size = C.chunk_images(chunk_size, 2 * m + 1)
    ds = jnp.arange(-m, m + 1, dtype=jnp.int32)

    @jax.jit
    def step(params, key, x, index):
        logits = _frame_logits(apply_fn, params, C.to_float(x), ds, "diagonal", mode)
        a, b = logits[:, :-1], logits[:, 1:]
        return {
            "nan": C.nan_rows(logits),
            "pred": C.argmax(logits[:, m]),  # frame d = 0: the clean image
            "top1": jax.vmap(jax.vmap(metrics.top1_change))(a, b),  # (n, 2m)
            "mac": jax.vmap(jax.vmap(metrics.mean_abs_change))(a, b),
        }

    out = call.stream(step, variables, chunk_size=chunk_size)
    common = dict(
        transform="translate_diagonal",
        severity=1,
        mode=mode,
        pairs="consecutive_diagonal",
        **C.shift_columns(-m, m),
        accuracy=_accuracy(out["pred"], call.labels),
    )
    top1, mac = out["top1"], out["mac"]
    rows = [
        call.row(position=c, p_top1_change=C.mean(top1[:, j]), mac=C.mean(mac[:, j]), **common)
        for j, c in enumerate(range(-m, m))
    ]
    rows.append(call.row(position=None, p_top1_change=C.mean(top1), mac=C.mean(mac), **common))
    return rows


def _check_cifar_p(
    shape: tuple[int, ...],
    *,
    shift_min: Any,
    shift_max: Any,
    direction: Any,
    mode: Any,
    progress: Any,
) -> tuple[int, int]:
    lo, hi = C.as_int("shift_min", shift_min), C.as_int("shift_max", shift_max)
    if hi <= lo:
        raise ValueError(f"shift_max must be > shift_min (two frames or more), got {lo}..{hi}")
    C.choice("direction", direction, C.DIRECTIONS)
    C.shift_fits("shift_min", lo, shape, direction)
    C.shift_fits("shift_max", hi, shape, direction)
    C.choice("mode", mode, C.MODES)
    C.flag("progress", progress)
    return lo, hi


@register(check=_check_cifar_p)
def cifar_p_flip_rate(
    apply_fn: ApplyFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    shift_min: int = -7,
    shift_max: int = 8,
    direction: str = "horizontal",
    mode: str = "constant",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Flip probability on translation sequences, as CIFAR-P "translate" (Hendrycks & Dietterich
    2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations").

    Frames ``x_d`` = the image translated by ``d`` pixels for ``d = shift_min..shift_max``
    (16 frames, -7..+8, by default) along ``direction``, zero fill;
    ``FP = 1/(m(n-1)) sum_i sum_{j>=2} 1[f(x_j) != f(x_{j-1})]`` (:func:`metrics.flip_rate`).

    Args:
      apply_fn: ``apply_fn(variables, images (n, H, W, C)) -> logits (n, K)``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 or float.
      labels: optional ``(N,)`` ints; adds clean ``accuracy``.
      key: unused (deterministic); accepted for the common signature.
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      shift_min: first frame's shift (an int; ``|shift|`` below the side it moves along).
      shift_max: last frame's shift, ``> shift_min`` (at least two frames).
      direction: ``"horizontal"`` (default), ``"vertical"`` or ``"diagonal"``.
      mode: ``"constant"`` (zero fill, CIFAR-P) or ``"circular"``.
      progress: show a tqdm bar over chunks.

    Returns:
      One row: ``flip_rate``, ``accuracy`` (None without labels), ``n_frames``, ``direction``.
    """
    call = C.begin("cifar_p_flip_rate", images, labels=labels, progress=progress)
    lo, hi = _check_cifar_p(
        call.shape,
        shift_min=shift_min,
        shift_max=shift_max,
        direction=direction,
        mode=mode,
        progress=progress,
    )
    ds = jnp.arange(lo, hi + 1, dtype=jnp.int32)
    chunk_size = C.chunk_images(chunk_size, len(ds))
    with_clean = call.labels is not None

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)
        logits = _frame_logits(apply_fn, params, x, ds, direction, mode)
        out = {"flip": jax.vmap(metrics.flip_rate)(logits), "nan": C.nan_rows(logits)}
        if with_clean:
            clean = apply_fn(params, x)
            out["pred"], out["nan"] = C.argmax(clean), out["nan"] | C.nan_rows(clean)
        return out

    out = call.stream(step, variables, chunk_size=chunk_size)
    row = call.row(
        transform="translate",
        mode=mode,
        pairs="consecutive_frames",
        **C.shift_columns(lo, hi),
        flip_rate=C.mean(out["flip"]),
        accuracy=_accuracy(out.get("pred"), call.labels),
        n_frames=hi - lo + 1,
        direction=direction,
    )
    return [row]


def _grid_axis(limit: float, num: int) -> np.ndarray:
    return np.linspace(-limit, limit, num) if num > 1 else np.zeros(1)


def _check_spatial_grid(
    shape: tuple[int, ...],
    *,
    max_shift: Any,
    max_angle: Any,
    num_shifts: Any,
    num_angles: Any,
    transform_batch: Any,
    progress: Any,
) -> tuple[float, float, int, int]:
    s = C.real_at_least("max_shift", max_shift, 0)
    C.shift_fits("max_shift", s, shape)
    a = C.real_at_least("max_angle", max_angle, 0)
    if a > 180:
        raise ValueError(f"max_angle must be at most 180 degrees, got {C.num(a)}")
    ns = C.int_at_least("num_shifts", num_shifts, 1)
    na = C.int_at_least("num_angles", num_angles, 1)
    if transform_batch is not None:
        C.int_at_least("transform_batch", transform_batch, 1)
    C.flag("progress", progress)
    return s, a, ns, na


@register(check=_check_spatial_grid, needs=("labels",))
def spatial_grid_accuracy(
    apply_fn: ApplyFn,
    variables: Any,
    images: Any,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    chunk_size: int | None = None,
    max_shift: float = 3,
    max_angle: float = 30,
    num_shifts: int = 5,
    num_angles: int = 31,
    transform_batch: int | None = 25,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Accuracy on a grid of rotations and translations (Engstrom et al. 2019, "Exploring the
    Landscape of Spatial Robustness"; MadryLab/adversarial_spatial).

    The grid is ``dy, dx in linspace(-max_shift, max_shift, num_shifts)`` times ``angle in
    linspace(-max_angle, max_angle, num_angles)`` (a single value means 0); 5 x 5 x 31 = 775
    transforms by default, the paper's CIFAR-10 grid. As in the paper each transform rotates
    then translates with bilinear interpolation and zero padding, so the grid's half-pixel
    shifts (-1.5, 1.5) are sub-pixel; at integer shifts and angle 0 the image is exactly
    ``translate(..., mode="constant")``. An image counts as correct in the worst case only if
    it is correct under every transform of the grid.

    Args:
      apply_fn: ``apply_fn(variables, images (n, H, W, C)) -> logits (n, K)``.
      variables: the model's variables.
      images: ``(N, H, W, C)`` uint8 or float.
      labels: ``(N,)`` ints (required).
      key: unused (deterministic); accepted for the common signature.
      chunk_size: images per jitted call; ``None`` (default) sizes chunks so a forward call
        sees about 64 model inputs on the CPU, 1024 on a GPU or TPU.
      max_shift: translation limit in pixels (finite, ``>= 0``, below ``min(H, W)``).
      max_angle: rotation limit in degrees (finite, in ``[0, 180]``).
      num_shifts: grid points per translation axis (``>= 1``).
      num_angles: grid points in angle (``>= 1``).
      transform_batch: transforms evaluated at once inside a chunk (``lax.map`` in vmapped
        batches; ``None`` = all at once); memory ~ ``chunk_size * transform_batch`` images.
      progress: show a tqdm bar over chunks.

    Returns:
      One row per grid point (``aggregate="transform"``; ``dy``, ``dx``, ``angle``,
      ``accuracy``), then a summary row (``aggregate="grid"``) with ``accuracy`` (the grid
      average), ``worst_case_accuracy``, ``clean_accuracy`` and ``n_transforms``.
    """
    call = C.begin(
        "spatial_grid_accuracy",
        images,
        labels=labels,
        needs=("labels",),
        progress=progress,
        row_name="spatial_grid",
    )
    s, a, ns, na = _check_spatial_grid(
        call.shape,
        max_shift=max_shift,
        max_angle=max_angle,
        num_shifts=num_shifts,
        num_angles=num_angles,
        transform_batch=transform_batch,
        progress=progress,
    )
    shifts, angles = _grid_axis(s, ns), _grid_axis(a, na)
    grid = np.stack(np.meshgrid(shifts, shifts, angles, indexing="ij"), -1).reshape(-1, 3)
    chunk_size, transform_batch = C.grid_chunking(chunk_size, transform_batch, len(grid))
    step = _grid_step(apply_fn, jnp.asarray(grid, jnp.float32), transform_batch)
    out = call.stream(step, variables, chunk_size=chunk_size)
    return _grid_rows(call, out, grid, s, a, ns, na)


def _grid_step(apply_fn: ApplyFn, grid: jax.Array, transform_batch: int | None) -> Callable:
    """The jitted step of :func:`spatial_grid_accuracy` over the transforms ``grid`` ``(G, 3)``
    (``dy, dx, angle``): predictions ``(n, G)``, clean predictions, NaN flags."""

    @jax.jit
    def step(params, key, x, index):
        x = C.to_float(x)

        def under(t):  # one transform, every image of the chunk -> predictions, NaN flags (n,)
            moved = jax.vmap(lambda im: T.rotate_translate(im, dy=t[0], dx=t[1], degrees=t[2]))(x)
            logits = apply_fn(params, moved)
            return C.argmax(logits), C.nan_rows(logits)

        preds, nans = C.map_over(under, grid, transform_batch)  # (G, n) each
        clean = apply_fn(params, x)
        return {
            "pred": jnp.moveaxis(preds, 0, 1),
            "clean": C.argmax(clean),
            "nan": jnp.any(nans, axis=0) | C.nan_rows(clean),
        }

    return step


def _grid_rows(call, out, grid, s, a, ns, na) -> list[dict[str, Any]]:
    """:func:`spatial_grid_accuracy`'s rows: one per transform of ``grid``, then the summary."""
    labels = call.labels
    correct = out["pred"] == labels[:, None]  # (N, G)
    common = dict(
        transform="rotate_translate",
        mode="constant",
        max_shift=C.num(s),
        shift_range=C.shift_range(-s, s),
        max_angle=C.num(a),
    )
    rows = [
        call.row(
            aggregate="transform",
            dy=float(t[0]),
            dx=float(t[1]),
            angle=float(t[2]),
            accuracy=C.mean(correct[:, g]),
            **common,
        )
        for g, t in enumerate(grid)
    ]
    rows.append(
        call.row(
            aggregate="grid",
            accuracy=C.mean(correct),
            worst_case_accuracy=C.mean(np.all(correct, axis=1)),
            clean_accuracy=_accuracy(out["clean"], labels),
            n_transforms=len(grid),
            num_shifts=ns,
            num_angles=na,
            **common,
        )
    )
    return rows
