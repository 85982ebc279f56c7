"""A deterministic toy dataset: ten classes of simple shapes, generated with numpy."""

from __future__ import annotations

import numpy as np

CLASS_NAMES = (
    "filled square",
    "hollow square",
    "disk",
    "ring",
    "horizontal bar",
    "vertical bar",
    "plus",
    "x",
    "triangle",
    "two dots",
)


def _masks(k: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Boolean (n, S, S) masks of class ``k``.

    ``dx``, ``dy`` are pixel offsets from each shape's centre (n, S, S); ``r`` (half-extent) and
    ``w`` (stroke width) broadcast as (n, 1, 1).
    """
    ax, ay = np.abs(dx), np.abs(dy)
    box = np.maximum(ax, ay)
    d2 = dx * dx + dy * dy
    if k == 0:  # filled square
        return box <= r
    if k == 1:  # hollow square
        return (box <= r) & (box > r - w)
    if k == 2:  # disk
        return d2 <= r * r
    if k == 3:  # ring
        return (d2 <= r * r) & (d2 > (r - w) ** 2)
    if k == 4:  # horizontal bar
        return (ay <= w) & (ax <= r)
    if k == 5:  # vertical bar
        return (ax <= w) & (ay <= r)
    if k == 6:  # plus
        return ((ax <= w / 2) & (ay <= r)) | ((ay <= w / 2) & (ax <= r))
    if k == 7:  # x: both diagonals
        return (np.abs(ax - ay) <= w * 0.71) & (box <= r)
    if k == 8:  # triangle, apex up (y grows downwards)
        return (ay <= r) & (ax <= (dy + r) / 2)
    if k == 9:  # two dots side by side
        return (ax - 0.55 * r) ** 2 + d2 - ax * ax <= (0.4 * r) ** 2
    raise AssertionError(k)


def synthetic(
    num_examples: int, *, seed: int = 0, image_size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """Generates a deterministic dataset of ten classes of simple shapes.

    Each image holds one shape (see ``class_names("synthetic")``: filled square, hollow square,
    disk, ring, horizontal bar, vertical bar, plus, x, triangle, two dots) of random size
    (half-extent 18-36% of the image), stroke width and brightness, at a random position where it
    fits, on a dark background with Gaussian noise (standard deviation 8). Classes are balanced
    (``num_examples // 10`` or one more each, in random order) and differ by shape only, so a
    small CNN learns them well above chance, while position varies: a testbed for translation.

    Args:
      num_examples: number of images N (>= 0).
      seed: seed of ``np.random.default_rng``; the same arguments give the same arrays.
      image_size: height and width S of the square images (>= 12).

    Returns:
      ``(images, labels)``: uint8 (N, S, S, 1) and int32 (N,) with values in 0..9.

    Raises:
      ValueError: a negative ``num_examples`` or an ``image_size`` below 12.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if image_size < 12:
        raise ValueError(f"image_size must be >= 12, got {image_size}")
    n, s = int(num_examples), int(image_size)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int32)
    r = rng.uniform(0.18, 0.36, n).astype(np.float32) * s
    w = rng.uniform(0.08, 0.12, n).astype(np.float32) * s
    cx = rng.uniform(r, s - 1 - r).astype(np.float32)
    cy = rng.uniform(r, s - 1 - r).astype(np.float32)
    bg = rng.uniform(0, 40, n).astype(np.float32)
    fg = rng.uniform(140, 255, n).astype(np.float32)
    noise = rng.standard_normal((n, s, s), dtype=np.float32) * 8

    grid = np.arange(s, dtype=np.float32)
    mask = np.zeros((n, s, s), dtype=bool)
    for k in range(len(CLASS_NAMES)):
        idx = np.flatnonzero(labels == k)
        col = (slice(None), None, None)
        dx = grid[None, None, :] - cx[idx][col]
        dy = grid[None, :, None] - cy[idx][col]
        mask[idx] = _masks(k, dx, dy, r[idx][col], w[idx][col])
    images = np.where(mask, fg[:, None, None], bg[:, None, None]) + noise
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return images[..., None], labels
