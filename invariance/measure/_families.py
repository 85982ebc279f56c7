"""The transform families of the severity protocols (:data:`TRANSFORMS`): checked options, the
rows' columns and a pure ``fn(key, image, severity) -> image`` per family.

Private, like :mod:`invariance.measure._core`: :func:`severity_curve`, :func:`layer_stability`
and :func:`pooling_stability` resolve their ``transform`` with :func:`resolve_transform`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invariance import transforms as T
from invariance.measure._core import (
    DIRECTIONS,
    MODES,
    TRANSFORMS,
    as_int,
    brief,
    check_fill,
    choice,
    direction_offsets,
    int_at_least,
    shift_fits,
)

_TRANSFORM_DEFAULTS: dict[str, dict[str, Any]] = {
    "random_mask": {},
    "line_mask": {
        "orientation": "vertical",
        "vary": "period",
        "period": 4,
        "width": 1,
        "offset": 0,
    },
    "inverse_mask": {},
    "occlusion": {"position": "center"},
    "gaussian_noise": {},
    "translate": {"direction": "horizontal", "mode": "circular"},
    "rotate": {},
}
_USES_FILL = ("random_mask", "line_mask", "occlusion", "rotate")
_LINE_VARY = ("period", "width")
_POSITIONS = ("center", "random")


@dataclasses.dataclass(frozen=True)
class Transform:
    """A resolved transform family: ``fn(key, image (H, W, C), severity) -> image``."""

    name: str
    fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    columns: dict[str, Any]  # fill and options, recorded in every row
    mode: str | None
    integer: bool  # severities are whole numbers

    def check_severities(
        self, severities: Any, shape: tuple[int, ...]
    ) -> tuple[np.ndarray, list[int | float]]:
        """Range-checks 1-D severities for this family on images of ``shape`` ``(H, W, C)``.

        Ratios must lie in [0, 1]; shifts must stay below the image side they move along, an
        occluding square's side at most ``min(H, W)``; every severity must be finite.

        Returns:
          ``(values, for_rows)``: int32 or float32 values for the device, and the same
          severities as Python numbers, as given (no float32 rounding), for the rows.
        """
        try:
            kind = np.asarray(severities).dtype.kind
        except (TypeError, ValueError):
            kind = "O"
        if kind not in "iuf":
            raise ValueError(
                f"severities must be a non-empty 1-D list of numbers, got {brief(severities)}"
            )
        s = np.asarray(severities, dtype=np.float64)
        if s.ndim == 0:
            s = s[None]
        if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError(
                f"severities must be a non-empty 1-D list of numbers, got {brief(severities)}"
            )
        name, vary = self.name, self.columns.get("vary")
        low = {"random_mask": 0.0, "inverse_mask": 0.0, "gaussian_noise": 0.0, "occlusion": 0.0}
        low["line_mask"] = 1.0 if vary == "period" else 0.0
        if name in low and np.any(s < low[name]):
            raise ValueError(f"{name} severities must be >= {low[name]:g}, got {s.tolist()}")
        if name in ("random_mask", "inverse_mask") and np.any(s > 1):
            raise ValueError(f"{name} severities are ratios in [0, 1], got {s.tolist()}")
        if name == "translate":
            shift_fits("translate severities", np.max(np.abs(s)), shape, self.columns["direction"])
        if name == "occlusion" and np.any(s > min(shape[:2])):
            raise ValueError(
                f"occlusion severities (square sides) must be at most min(H, W) = "
                f"{min(shape[:2])}, got {s.tolist()}"
            )
        if self.integer:
            if np.any(s != np.round(s)):
                raise ValueError(f"{name} severities must be whole numbers, got {s.tolist()}")
            return s.astype(np.int32), [int(v) for v in s]
        return s.astype(np.float32), [float(v) for v in s]


def resolve_transform(name: str, fill: Any, options: Mapping[str, Any]) -> Transform:
    """Checks a transform family name, its fill and options; returns a :class:`Transform`.

    Options (defaults in brackets): line_mask: ``orientation`` ["vertical"] (or "horizontal",
    "grid"), ``vary`` ["period"] (which of period / width the severity sets), ``period`` [4],
    ``width`` [1], ``offset`` [0]. occlusion: ``position`` ["center"] or "random". translate:
    ``direction`` ["horizontal"] (or "vertical", "diagonal"), ``mode`` ["circular"].
    """
    choice("transform", name, TRANSFORMS)
    defaults = _TRANSFORM_DEFAULTS[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for transform {name!r}: valid are {sorted(defaults)}"
        )
    opts = {**defaults, **options}
    if name in _USES_FILL:
        fill = check_fill(fill)
    elif name == "inverse_mask":
        fill = "max"
    else:
        fill = None
    mode = None
    integer = name in ("occlusion", "translate")
    if name == "line_mask":
        choice("orientation", opts["orientation"], T.ORIENTATIONS)
        choice("vary", opts["vary"], _LINE_VARY)
        int_at_least("period", opts["period"], 1)
        int_at_least("width", opts["width"], 0)
        as_int("offset", opts["offset"])
        integer = True
    elif name == "occlusion":
        choice("position", opts["position"], _POSITIONS)
    elif name == "translate":
        choice("direction", opts["direction"], DIRECTIONS)
        mode = choice("mode", opts["mode"], MODES)
        opts = {"direction": opts["direction"]}
    fn = _transform_fn(name, fill, opts, mode)
    columns = {"fill": fill, **opts}
    if name == "line_mask":
        columns[opts["vary"]] = None  # the severity column holds it
    return Transform(name, fn, columns, mode, integer)


def _transform_fn(name: str, fill: Any, opts: dict[str, Any], mode: str | None) -> Callable:
    def apply(key: jax.Array, image: jax.Array, s: jax.Array) -> jax.Array:
        if name == "random_mask" or name == "inverse_mask":
            return T.random_mask(key, image, ratio=s, fill=fill)
        if name == "line_mask":
            period, width = (s, opts["width"]) if opts["vary"] == "period" else (opts["period"], s)
            return T.line_mask(
                image,
                orientation=opts["orientation"],
                period=period,
                width=width,
                offset=opts["offset"],
                fill=fill,
            )
        if name == "occlusion":
            h, w = image.shape[-3], image.shape[-2]
            if opts["position"] == "center":
                top, left = (h - s) // 2, (w - s) // 2
            else:  # uniform over the positions that keep the square inside the image
                u = jax.random.uniform(key, (2,))
                top = jnp.floor(u[0] * (h - s + 1)).astype(jnp.int32)
                left = jnp.floor(u[1] * (w - s + 1)).astype(jnp.int32)
            return T.occlude(image, top=top, left=left, height=s, width=s, fill=fill)
        if name == "gaussian_noise":
            return T.gaussian_noise(key, image, sigma=s)
        if name == "translate":
            dy, dx = direction_offsets(opts["direction"], s)
            return T.translate(image, dy=dy, dx=dx, mode=mode)
        return T.rotate(image, degrees=s, fill=fill)

    return apply
