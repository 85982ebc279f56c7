"""Training-time augmentation: pure, jit-able functions of a key and a batch.

A training config may name an augmentation in ``train.augment`` (absent or empty: none):

- ``{"translate": t}``: every image is shifted by its own whole-pixel offset ``(dy, dx)``,
  each uniform in ``-t..t``, with zero fill (``"translate_mode": "constant"``, default) or
  wrap-around (``"circular"``) (:func:`invariance.transforms.translate`). The augmentation
  whose limits Azulay & Weiss 2019 ("Why do deep convolutional networks generalize so poorly
  to small image transformations?") discuss: it teaches the shifts it shows.
- ``{"mask_ratio": [lo, hi]}``: every image gets its own ratio uniform in ``[lo, hi]`` and that
  share of its pixel positions set to 0 (:func:`invariance.transforms.random_mask`, the seeds'
  random masking).

Both may be given; the shift is applied first. :func:`augment_batch` runs inside the jitted
train step on float images in [0, 1] and draws everything from the key it is given: the train
step passes ``fold_in(step key, AUGMENT_STREAM)``, so the same seed and step always see the
same augmented batch, and a run without augmentation draws exactly the keys it drew before.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from invariance import transforms as T

__all__ = ["AUGMENT_OPTIONS", "augment_batch", "check_augment"]

#: The options ``train.augment`` takes.
AUGMENT_OPTIONS = ("translate", "translate_mode", "mask_ratio")


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_augment(spec: Any) -> dict[str, Any]:
    """Validates ``train.augment``; returns it as a plain dict (``{}`` for None / empty).

    Args:
      spec: None, or a mapping with the keys of :data:`AUGMENT_OPTIONS`: ``translate`` an int
        ``>= 0`` (the largest shift per axis, pixels), ``translate_mode`` "constant" or
        "circular", ``mask_ratio`` a pair ``[lo, hi]`` with ``0 <= lo <= hi <= 1``.

    Raises:
      ValueError: one line naming the bad option and the valid choices.
    """
    if spec is None:
        return {}
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        raise ValueError(f"train.augment must be a dict, got {spec!r}")
    spec = dict(spec)
    unknown = sorted(str(k) for k in spec if k not in AUGMENT_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown train.augment option(s) {unknown}: valid are {list(AUGMENT_OPTIONS)}"
        )
    t = spec.get("translate")
    if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 0):
        raise ValueError(f"train.augment.translate must be an int >= 0, got {t!r}")
    mode = spec.get("translate_mode", "constant")
    if mode not in T.TRANSLATE_MODES:
        raise ValueError(
            f"train.augment.translate_mode must be one of {list(T.TRANSLATE_MODES)}, got {mode!r}"
        )
    r = spec.get("mask_ratio")
    if r is not None:
        ok = isinstance(r, list | tuple) and len(r) == 2 and all(_real(v) for v in r)
        if not ok or not 0 <= r[0] <= r[1] <= 1:
            raise ValueError(
                f"train.augment.mask_ratio must be [lo, hi] with 0 <= lo <= hi <= 1, got {r!r}"
            )
        spec["mask_ratio"] = [float(r[0]), float(r[1])]
    return spec


def random_translate(key: jax.Array, x: jax.Array, max_shift: int, mode: str) -> jax.Array:
    """Shifts each image of ``x`` ``(B, H, W, C)`` by its own offset, uniform in
    ``-max_shift..max_shift`` per axis (image ``i`` draws from ``fold_in(key, i)``)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))
    offs = jax.vmap(lambda k: jax.random.randint(k, (2,), -max_shift, max_shift + 1))(keys)
    return jax.vmap(lambda im, o: T.translate(im, dy=o[0], dx=o[1], mode=mode))(x, offs)


def random_masking(key: jax.Array, x: jax.Array, low: float, high: float) -> jax.Array:
    """Masks (sets to 0) a share ``r_i`` of the pixel positions of each image of ``x``
    ``(B, H, W, C)``, ``r_i`` uniform in ``[low, high]`` (image ``i`` draws from
    ``fold_in(key, i)``: one uniform for the ratio, then the mask's own uniforms)."""

    def one(i, im):
        k_ratio, k_mask = jax.random.split(jax.random.fold_in(key, i))
        ratio = jax.random.uniform(k_ratio, (), minval=low, maxval=high)
        return T.random_mask(k_mask, im, ratio=ratio)

    return jax.vmap(one)(jnp.arange(x.shape[0]), x)


def augment_batch(key: jax.Array, x: jax.Array, spec: Mapping[str, Any]) -> jax.Array:
    """Applies ``spec`` (as :func:`check_augment` returns it) to a batch.

    Args:
      key: a PRNG key; the shift uses ``fold_in(key, 0)``, the mask ``fold_in(key, 1)``.
      x: float images ``(B, H, W, C)``.
      spec: the augmentation (``{}``: ``x`` unchanged).

    Returns:
      An array of the shape and dtype of ``x``.
    """
    t = spec.get("translate")
    if t:
        mode = spec.get("translate_mode", "constant")
        x = random_translate(jax.random.fold_in(key, 0), x, int(t), mode)
    r = spec.get("mask_ratio")
    if r is not None:
        x = random_masking(jax.random.fold_in(key, 1), x, float(r[0]), float(r[1]))
    return x
