"""Pure image transforms for invariance measurements: masking, occlusion, translation, rotation.

Every function follows the dm_pix convention: the PRNG key comes first when the op is random,
the image is a float array of shape ``(..., H, W, C)`` with any number of leading dims, and
every option is keyword-only. All ops are jit-compatible and vmappable over images *and* over
their numeric options, so a severity sweep is a single vmapped call::

    ratios = jnp.array([0.1, 0.2, 0.3, 0.4, 0.5])
    masked = jax.vmap(lambda r: random_mask(key, images, ratio=r))(ratios)  # (5, N, H, W, C)

Numeric options may therefore be traced values: they are never branched on in Python. Bad
options are rejected with a one-line ``ValueError`` only when their value is concrete (a Python
number or a concrete array), never inside a trace: a value that must be finite (angles, sigmas,
sub-pixel shifts) is checked when concrete; a numeric ``fill`` may be anything, NaN included
(a marker). Options counted in whole pixels (shifts, line periods, widths and offsets,
rectangle corners and sides) must have an integer dtype, which is static, so that check holds
under ``jit`` and ``vmap`` too: ``translate(dy=1.5)`` is refused, never rounded.

``fill`` (where present) is a number or ``"max"`` / ``"min"``: the extreme value of each image
over its ``(H, W, C)`` axes (the seed's "inverse masking" sets pixels to the image's maximum).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

from invariance._checks import is_concrete

__all__ = [
    "FILLS",
    "ORIENTATIONS",
    "TRANSLATE_MODES",
    "gaussian_noise",
    "line_mask",
    "occlude",
    "random_mask",
    "rotate",
    "rotate_translate",
    "to_float",
    "translate",
]

FILLS = ("max", "min")
ORIENTATIONS = ("vertical", "horizontal", "grid")
TRANSLATE_MODES = ("circular", "constant")

# Sample points of `rotate` farther than this (in pixels) outside the image get `fill`; the
# slack absorbs float32 error in cos/sin so that e.g. a 90 degree turn keeps its border pixels.
_ROTATE_EDGE_TOL = 1e-3


# ----------------------------------------------------------------------------- helpers


def _check(v, bad, message: str) -> None:
    """Raise ``ValueError(message)`` when ``v`` is concrete and ``bad(v)`` holds anywhere."""
    if is_concrete(v) and np.any(bad(np.asarray(v))):
        raise ValueError(message)


def _shown(v: Any) -> str:
    """The value for an error message (a traced value shows its dtype and shape)."""
    if not is_concrete(v):
        return f"a traced {v.dtype}{list(v.shape)} value"
    return repr(v.tolist() if hasattr(v, "tolist") else v)


def _dtype(v: Any) -> np.dtype:
    if hasattr(v, "dtype"):
        return np.dtype(v.dtype)
    if isinstance(v, bool):
        return np.dtype(bool)
    if isinstance(v, numbers.Integral):
        return np.dtype(np.int64)
    return np.asarray(v).dtype


def _check_integer(name: str, v: Any) -> None:
    """A whole-pixel option: its dtype (static, so checked under a trace too) must be integer."""
    dtype = _dtype(v)
    if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{name} must be an integer (whole pixels), got {_shown(v)}")


def _check_finite(name: str, v: Any) -> None:
    """A real option: a number (any dtype but bool), finite wherever it is concrete."""
    dtype = _dtype(v)
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(f"{name} must be a finite number, got {_shown(v)}")
    _check(v, lambda a: ~np.isfinite(a), f"{name} must be a finite number, got {_shown(v)}")


def _as_image(image) -> jax.Array:
    image = jnp.asarray(image)
    if image.ndim < 3:
        raise ValueError(f"image must be (..., H, W, C), got shape {tuple(image.shape)}")
    return image


def _fill_value(image: jax.Array, fill) -> jax.Array:
    """The fill as an array broadcastable against ``image`` (..., 1, 1, 1) or a scalar."""
    if isinstance(fill, str):
        if fill == "max":
            return jnp.max(image, axis=(-3, -2, -1), keepdims=True)
        if fill == "min":
            return jnp.min(image, axis=(-3, -2, -1), keepdims=True)
        raise ValueError(f"fill must be a number or one of {list(FILLS)}, got {fill!r}")
    return jnp.asarray(fill, dtype=image.dtype)


def _apply_mask(image: jax.Array, mask: jax.Array, fill) -> jax.Array:
    """Set ``image`` to ``fill`` where ``mask`` (broadcastable to (..., H, W)) is True."""
    return jnp.where(mask[..., None], _fill_value(image, fill), image).astype(image.dtype)


# ----------------------------------------------------------------------------- masking


def random_mask(key: jax.Array, image, *, ratio, fill=0.0) -> jax.Array:
    """Sets a random subset of exactly ``round(ratio * H * W)`` pixel positions to ``fill``.

    A masked position is masked on every channel. The seed's "random masking" (ratios 0.1 to
    0.5, fill 0); with ``fill="max"`` it is the seed's inverse masking.

    Each image in the leading dims gets its own independent mask: one uniform per pixel is drawn
    with shape ``(..., H, W)`` and a pixel is masked when its rank among its image's ``H * W``
    uniforms is below ``round(ratio * H * W)`` (computed in float32, rounding half to even).
    ``jax.vmap`` over images with a shared ``key`` instead gives every image the same mask, as
    ``vmap`` semantics demand; pass a batch (or split keys) for independent masks.

    Args:
      key: a PRNG key.
      image: float array of shape ``(..., H, W, C)``.
      ratio: fraction of pixels to mask, in ``[0, 1]``; a scalar, may be traced.
      fill: a number (may be traced), or ``"max"`` / ``"min"`` for each image's own extreme.

    Returns:
      An array of the shape and dtype of ``image``.

    Raises:
      ValueError: for a rank < 3 image, a concrete ratio outside [0, 1] (NaN included), or an
        unknown fill.
    """
    image = _as_image(image)
    _check(ratio, lambda r: ~((r >= 0) & (r <= 1)), f"ratio must be in [0, 1], got {ratio}")
    h, w = image.shape[-3], image.shape[-2]
    uniforms = jax.random.uniform(key, (*image.shape[:-3], h * w))
    # argsort is stable, so ranks are a permutation of 0..H*W-1 even if two uniforms tie.
    ranks = jnp.argsort(jnp.argsort(uniforms, axis=-1), axis=-1)
    count = jnp.round(jnp.asarray(ratio, jnp.float32) * (h * w))
    mask = (ranks < count).reshape(*image.shape[:-3], h, w)
    return _apply_mask(image, mask, fill)


def line_mask(image, *, orientation: str, period, width=1, offset=0, fill=0.0) -> jax.Array:
    """Masks evenly spaced full-length lines: the seed's "patterned masking".

    Column (for ``"vertical"``) or row (for ``"horizontal"``) index ``i`` is masked when
    ``(i - offset) mod period < width``; ``"grid"`` masks the union of both. ``width >= period``
    masks everything, ``width = 0`` nothing.

    Args:
      image: float array of shape ``(..., H, W, C)``.
      orientation: ``"vertical"``, ``"horizontal"`` or ``"grid"`` (static).
      period: distance between the starts of consecutive lines, an integer ``>= 1``; may be
        traced.
      width: thickness of each line in pixels, an integer ``>= 0``; may be traced.
      offset: index of the first line (any integer, taken mod ``period``); may be traced.
      fill: a number (may be traced), or ``"max"`` / ``"min"`` for each image's own extreme.

    Returns:
      An array of the shape and dtype of ``image``.

    Raises:
      ValueError: for a rank < 3 image, an unknown orientation or fill, a period, width or
        offset without an integer dtype, a concrete ``period < 1`` or ``width < 0``.
    """
    image = _as_image(image)
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {list(ORIENTATIONS)}, got {orientation!r}")
    for name, v in (("period", period), ("width", width), ("offset", offset)):
        _check_integer(name, v)
    _check(period, lambda p: p < 1, f"period must be >= 1, got {period}")
    _check(width, lambda v: v < 0, f"width must be >= 0, got {width}")
    h, w = image.shape[-3], image.shape[-2]

    def on_line(n):
        return jnp.mod(jnp.arange(n) - offset, period) < width

    rows = jnp.zeros((h, 1), bool)
    cols = jnp.zeros((1, w), bool)
    if orientation in ("horizontal", "grid"):
        rows = on_line(h)[:, None]
    if orientation in ("vertical", "grid"):
        cols = on_line(w)[None, :]
    return _apply_mask(image, rows | cols, fill)


def occlude(image, *, top, left, height, width, fill=0.0) -> jax.Array:
    """Sets an axis-aligned rectangle to ``fill``, clipped to the image.

    Rows ``top <= i < top + height`` and columns ``left <= j < left + width`` are replaced; any
    part of the rectangle outside the image is ignored (``top`` / ``left`` may be negative).
    Sliding a grey square gives the occlusion-sensitivity maps of Zeiler & Fergus, "Visualizing
    and Understanding Convolutional Networks" (ECCV 2014); a random square is Cutout (DeVries &
    Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout", 2017).

    Args:
      image: float array of shape ``(..., H, W, C)``.
      top: first occluded row, an integer; may be traced.
      left: first occluded column, an integer; may be traced.
      height: number of occluded rows, an integer ``>= 0``; may be traced.
      width: number of occluded columns, an integer ``>= 0``; may be traced.
      fill: a number (may be traced), or ``"max"`` / ``"min"`` for each image's own extreme.

    Returns:
      An array of the shape and dtype of ``image``.

    Raises:
      ValueError: for a rank < 3 image, an unknown fill, a position or size
        without an integer dtype, a concrete negative height or width.
    """
    image = _as_image(image)
    for name, v in (("top", top), ("left", left), ("height", height), ("width", width)):
        _check_integer(name, v)
    _check(height, lambda v: v < 0, f"height must be >= 0, got {height}")
    _check(width, lambda v: v < 0, f"width must be >= 0, got {width}")
    rows = jnp.arange(image.shape[-3])[:, None]
    cols = jnp.arange(image.shape[-2])[None, :]
    mask = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return _apply_mask(image, mask, fill)


# ----------------------------------------------------------------------------- geometry


def translate(image, *, dy, dx, mode: str = "circular") -> jax.Array:
    """Shifts the image content by whole pixels.

    Positive ``dy`` moves content down, positive ``dx`` moves it right. ``"circular"`` wraps
    content around (``jnp.roll`` semantics; exactly invertible by ``-dy, -dx``), ``"constant"``
    fills the ``|dy|`` uncovered rows and ``|dx|`` uncovered columns with zeros (everything for
    shifts of the full size or more). The shift-consistency protocols of Zhang, "Making
    Convolutional Networks Shift-Invariant Again" (ICML 2019) and Azulay & Weiss, "Why do deep
    convolutional networks generalize so poorly to small image transformations?" (JMLR 2019).

    Args:
      image: array of shape ``(..., H, W, C)``.
      dy: integer row shift; may be traced.
      dx: integer column shift; may be traced.
      mode: ``"circular"`` or ``"constant"`` (static).

    Returns:
      An array of the shape and dtype of ``image``.

    Raises:
      ValueError: for a rank < 3 image, an unknown mode, or a ``dy`` / ``dx`` without an
        integer dtype (``dy=1.5`` is refused; use :func:`rotate_translate` for sub-pixel
        shifts).
    """
    image = _as_image(image)
    if mode not in TRANSLATE_MODES:
        raise ValueError(f"mode must be one of {list(TRANSLATE_MODES)}, got {mode!r}")
    _check_integer("dy", dy)
    _check_integer("dx", dx)
    shifted = jnp.roll(image, (dy, dx), axis=(-3, -2))
    if mode == "circular":
        return shifted
    rows = jnp.arange(image.shape[-3])[:, None]
    cols = jnp.arange(image.shape[-2])[None, :]
    # Output row i holds input row i - dy: valid when 0 <= i - dy < H (same for columns).
    valid = (
        (rows - dy >= 0)
        & (rows - dy < image.shape[-3])
        & (cols - dx >= 0)
        & (cols - dx < image.shape[-2])
    )
    return jnp.where(valid[..., None], shifted, jnp.zeros((), image.dtype))


def rotate(image, *, degrees, fill=0.0) -> jax.Array:
    """Rotates the image about its centre with bilinear interpolation.

    Convention: positive ``degrees`` turn the content counter-clockwise *as displayed* (row 0 at
    the top), so ``degrees=90`` on a square image equals ``np.rot90(image, axes=(-3, -2))``
    (up to float32 error in cos/sin, ~1e-6). The centre is ``((H - 1) / 2, (W - 1) / 2)``.
    Output pixel ``(y, x)`` (relative to the centre) samples the input at
    ``(cos t * y + sin t * x, -sin t * y + cos t * x)``; sample points outside
    ``[0, H - 1] x [0, W - 1]`` (beyond a 1e-3 pixel slack) get ``fill``. Engstrom et al.,
    "Exploring the Landscape of Spatial Robustness" (ICML 2019) use +-30 degrees with zero fill.

    Args:
      image: float array of shape ``(..., H, W, C)``.
      degrees: rotation angle in degrees; may be traced.
      fill: a number (may be traced), or ``"max"`` / ``"min"`` for each image's own extreme.

    Returns:
      An array of the shape and dtype of ``image``.

    Raises:
      ValueError: for a rank < 3 image, an unknown fill, or a concrete
        non-finite ``degrees``.
    """
    image = _as_image(image)
    _check_finite("degrees", degrees)
    fill_value = _fill_value(image, fill)
    h, w = image.shape[-3], image.shape[-2]
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    y = jnp.arange(h, dtype=jnp.float32)[:, None] - (h - 1) / 2
    x = jnp.arange(w, dtype=jnp.float32)[None, :] - (w - 1) / 2
    src_y = cos * y + sin * x + (h - 1) / 2  # (H, W)
    src_x = -sin * y + cos * x + (w - 1) / 2
    inside = (
        (src_y >= -_ROTATE_EDGE_TOL)
        & (src_y <= h - 1 + _ROTATE_EDGE_TOL)
        & (src_x >= -_ROTATE_EDGE_TOL)
        & (src_x <= w - 1 + _ROTATE_EDGE_TOL)
    )
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]  # (H, W, 1)
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

    def at(yi, xi):  # (..., H, W, C); indices clipped, out-of-range corners carry weight ~0
        return image[..., jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1), :]

    out = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1)) + wy * (
        (1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1)
    )
    return jnp.where(inside[..., None], out, fill_value).astype(image.dtype)


# ----------------------------------------------------------------------------- noise


def gaussian_noise(key: jax.Array, image, *, sigma) -> jax.Array:
    """Adds i.i.d. ``N(0, sigma^2)`` noise to every element of the image.

    Noise is drawn with shape ``image.shape``, so each image in the leading dims gets its own.
    The Gaussian-noise corruption of Hendrycks & Dietterich, "Benchmarking Neural Network
    Robustness to Common Corruptions and Perturbations" (ICLR 2019). No clipping is applied.

    Args:
      key: a PRNG key.
      image: float array of shape ``(..., H, W, C)``.
      sigma: noise standard deviation, ``>= 0``; may be traced.

    Returns:
      An array of the shape and dtype of ``image``.

    Raises:
      ValueError: for a rank < 3 image or a concrete negative or non-finite sigma.
    """
    image = _as_image(image)
    _check_finite("sigma", sigma)
    _check(sigma, lambda s: s < 0, f"sigma must be >= 0, got {sigma}")
    noise = jax.random.normal(key, image.shape, image.dtype)
    return (image + jnp.asarray(sigma, image.dtype) * noise).astype(image.dtype)


# ----------------------------------------------------------------------------- both


def rotate_translate(image, *, dy, dx, degrees) -> jax.Array:
    """Rotates about the centre, then translates (sub-pixel allowed); bilinear, zero padding.

    Engstrom et al., "Exploring the Landscape of Spatial Robustness" (ICML 2019;
    MadryLab/adversarial_spatial) rotate then translate with bilinear interpolation on a
    zero-padded canvas. Conventions as :func:`rotate` and :func:`translate`: positive
    ``degrees`` turn the content counter-clockwise as displayed, positive ``dy`` / ``dx`` move
    it down / right. Output pixel ``p`` samples the input at ``R^-1 (p - t)`` about the centre
    ``((H-1)/2, (W-1)/2)``; each of the four bilinear neighbours outside the image reads 0
    (``jax.scipy.ndimage.map_coordinates`` with ``mode="constant"``), so at ``degrees = 0``
    and integer shifts this is exactly ``translate(..., mode="constant")``. Unlike
    :func:`rotate` there is no fill option and no edge slack: a pixel sampled between the
    border and the outside blends with 0.

    Args:
      image: float array of shape ``(..., H, W, C)``.
      dy: row shift in pixels (any real, sub-pixel allowed); may be traced.
      dx: column shift in pixels; may be traced.
      degrees: rotation angle in degrees; may be traced.

    Returns:
      An array of the shape and dtype of ``image``.

    Raises:
      ValueError: for a rank < 3 image or a concrete non-finite ``dy``, ``dx`` or ``degrees``.
    """
    image = _as_image(image)
    for name, v in (("dy", dy), ("dx", dx), ("degrees", degrees)):
        _check_finite(name, v)
    h, w, c = image.shape[-3:]
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    y = jnp.arange(h, dtype=jnp.float32)[:, None] - (h - 1) / 2 - jnp.asarray(dy, jnp.float32)
    x = jnp.arange(w, dtype=jnp.float32)[None, :] - (w - 1) / 2 - jnp.asarray(dx, jnp.float32)
    src_y = cos * y + sin * x + (h - 1) / 2
    src_x = -sin * y + cos * x + (w - 1) / 2
    src_y, src_x = jnp.broadcast_arrays(src_y, src_x)

    def one_channel(ch: jax.Array) -> jax.Array:
        return ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="constant", cval=0.0)

    planes = jnp.moveaxis(image.reshape(-1, h, w, c), -1, 1).reshape(-1, h, w)
    out = jax.vmap(one_channel)(planes).reshape(-1, c, h, w)
    return jnp.moveaxis(out, 1, -1).reshape(image.shape).astype(image.dtype)


# ----------------------------------------------------------------------------- scale


def to_float(images) -> jax.Array:
    """Images on the float scale every transform and model expects.

    uint8 images (0..255) are divided by 255 into float32 ``[0, 1]``; floating images are cast
    to float32 unchanged in value. Any other dtype (bool, other integers) is refused: its
    scale is unknown (int16 or int32 pixels may be 0..255 or 0..65535), and guessing would
    give a wrong number silently.

    Args:
      images: an array of any shape, uint8 or floating.

    Returns:
      A float32 array of the same shape.

    Raises:
      ValueError: for any other dtype.
    """
    dtype = _dtype(images)
    if dtype == np.uint8:
        return jnp.asarray(images).astype(jnp.float32) / 255.0
    if np.issubdtype(dtype, np.floating):
        return jnp.asarray(images).astype(jnp.float32)
    raise ValueError(f"images must be uint8 (scaled by 1/255) or float, got dtype {dtype}")
