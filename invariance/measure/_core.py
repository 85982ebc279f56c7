"""Shared machinery of :mod:`invariance.measure`: checks, chunked streaming, rows, a protocol call.

Private: the protocols in the sibling modules are the public face. Everything here is either a
plain-Python check (one-line ``ValueError``), a pure ``jnp`` helper used inside the jitted
per-chunk computations, or the bookkeeping every protocol call shares: :func:`begin` checks the
images, labels and key and returns a :class:`Call`, whose ``stream`` runs the jitted step over
the chunks and whose ``row`` fills the common row keys.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from invariance import transforms as T

#: Keys every row of every protocol carries (``None`` where a field does not apply).
ROW_KEYS = (
    "protocol",
    "transform",
    "severity",
    "mode",
    "pairs",
    "max_shift",
    "shift_range",
    "seed",
    "n_images",
)

#: Transform families of :func:`severity_curve`, :func:`layer_stability`, :func:`pooling_stability`.
TRANSFORMS = (
    "random_mask",
    "line_mask",
    "inverse_mask",
    "occlusion",
    "gaussian_noise",
    "translate",
    "rotate",
)

#: How :func:`shift_consistency` forms its pairs.
PAIRS = ("two_shifted", "original_vs_shifted")

#: Shift modes: ``jnp.roll`` wrap-around, or zero fill.
MODES = T.TRANSLATE_MODES

#: Shift directions of one-axis / diagonal translation protocols.
DIRECTIONS = ("horizontal", "vertical", "diagonal")

# Model inputs per forward call that ``chunk_size=None`` aims for. On the CPU small calls are
# fastest: a SmallCNN forward runs at ~16.5k images/s at batch 16-64 and 14-15k at 256-2048
# with steady malloc (invariance/runtime.py); with glibc's default malloc, large calls
# page-fault their big activations in again on every call and fall to 8-9k/s at 512-2048.
# ResNetTiny and ResNet18 peak at 32-64 too (scripts/bench_measure.py, results/benchmarks/
# measure.md). Accelerators want large batches.
MODEL_BATCH = {"cpu": 64}
ACCELERATOR_MODEL_BATCH = 1024

# ----------------------------------------------------------------------------- checks


def brief(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, shortened: for one-line error messages."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
    """``value`` if it is one of ``valid``, else a one-line ValueError naming the choices."""
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{name} must be one of {list(valid)}, got {brief(value)}")
    return value


def as_int(name: str, value: Any) -> int:
    """``int(value)`` for an integer (bools rejected), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {brief(value)}")
    return int(value)


def int_at_least(name: str, value: Any, low: int) -> int:
    """``int(value)`` for an integer ``>= low`` (bools rejected), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {brief(value)}")
    return int(value)


def model_batch() -> int:
    """The model batch ``chunk_size=None`` aims for on the default backend (64 on the CPU,
    1024 on a GPU or TPU; see :data:`MODEL_BATCH`)."""
    return MODEL_BATCH.get(jax.default_backend(), ACCELERATOR_MODEL_BATCH)


def chunk_images(chunk_size: Any, views: int) -> int:
    """Images per jitted call: ``chunk_size`` (an int ``>= 1``), or for ``None``
    ``max(1, model_batch() // views)``, so that one forward call of a protocol that evaluates
    ``views`` transformed copies of each image sees about :func:`model_batch` inputs."""
    if chunk_size is None:
        return max(1, model_batch() // max(1, int(views)))
    return int_at_least("chunk_size", chunk_size, 1)


def grid_chunking(
    chunk_size: Any, transform_batch: Any, num_transforms: int
) -> tuple[int, int | None]:
    """Checks ``chunk_size`` then ``transform_batch`` (an int ``>= 1`` or ``None`` = all) of a
    protocol that evaluates ``num_transforms`` transforms per image, ``transform_batch`` at a
    time (:func:`map_over`); returns ``(images per call, transform_batch)``, the former from
    :func:`chunk_images` with that many views per forward call."""
    if chunk_size is not None:
        int_at_least("chunk_size", chunk_size, 1)
    if transform_batch is not None:
        transform_batch = int_at_least("transform_batch", transform_batch, 1)
    views = min(transform_batch or num_transforms, num_transforms)
    return chunk_images(chunk_size, views), transform_batch


def real_at_least(name: str, value: Any, low: float) -> float:
    """``float(value)`` for a finite real ``>= low`` (bools rejected), else a ValueError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {brief(value)}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """A bool option (``progress``), else a ValueError."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {brief(value)}")
    return bool(value)


def image_shape(shape: Any) -> tuple[int, int, int]:
    """``(H, W, C)``: three positive ints, else a ValueError."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    ok = len(dims) == 3 and all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in dims
    )
    if not ok:
        raise ValueError(f"image_shape must be three positive ints (H, W, C), got {brief(shape)}")
    return int(dims[0]), int(dims[1]), int(dims[2])


#: The image side a shift along each axis is limited by: ``(H, W, C) -> side``.
_SIDE = {
    "horizontal": lambda hwc: hwc[1],
    "vertical": lambda hwc: hwc[0],
    "diagonal": lambda hwc: min(hwc[:2]),
    "both": lambda hwc: min(hwc[:2]),
}


def shift_fits(name: str, value: Any, shape: tuple[int, ...], axis: str = "both") -> None:
    """Refuses a shift ``|value| >= side`` (``side`` = W, H or ``min(H, W)`` by ``axis``).

    A shift of the image size or more wraps round to a smaller shift (circular) or blanks the
    image (constant): no protocol means either.
    """
    side = _SIDE[axis](shape)
    if abs(value) > side - 1:
        raise ValueError(
            f"{name} must be at most {side - 1} in size for {shape[0]}x{shape[1]} images (a "
            f"shift of the image size or more wraps round or blanks the image), got {num(value)}"
        )


def need_labels(protocol: str, labels: Any, n: int) -> np.ndarray:
    """The labels of a protocol that needs them (a one-line ValueError when missing)."""
    if labels is None:
        raise ValueError(f"{protocol} needs labels: pass labels=(N,) integer class labels")
    return check_labels(labels, n)


def need_key(protocol: str, key: Any) -> list[int]:
    """The ``seed`` of a protocol that needs a key (a one-line ValueError when missing)."""
    if key is None:
        raise ValueError(f"{protocol} needs a PRNG key: pass key=jax.random.key(SEED)")
    return seed_of(key)


def check_images(images: Any) -> Any:
    """Validates ``(N, H, W, C)`` uint8 or float images (N >= 1); returns them unconverted.

    Conversion to float happens per chunk inside the jitted step (see
    :func:`invariance.transforms.to_float`), so a large uint8 dataset is never copied as
    float32 in full. Float images holding NaN or inf are refused: no stability figure can be
    vouched for on them.
    """
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    if len(images.shape) != 4:
        raise ValueError(f"images must have shape (N, H, W, C), got {tuple(images.shape)}")
    if images.shape[0] < 1:
        raise ValueError("images must hold at least one image, got N = 0")
    dtype = np.dtype(images.dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise ValueError(f"images must be uint8 (scaled by 1/255) or float, got dtype {dtype}")
    if dtype != np.uint8:
        bad = np.flatnonzero(np.asarray(~jnp.all(jnp.isfinite(images), axis=(1, 2, 3))))
        if bad.size:
            raise ValueError(
                f"images must be finite: {bad.size} of {images.shape[0]} images hold NaN or "
                f"inf (first: image {bad[0]})"
            )
    return images


def check_labels(labels: Any, n: int) -> np.ndarray:
    """Integer labels of shape ``(n,)`` as a numpy array."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}"
        )
    return labels


def check_fill(fill: Any, extra: tuple[str, ...] = T.FILLS) -> float | str:
    """A finite number, or one of the named fills ``extra``."""
    if isinstance(fill, str):
        return choice("fill", fill, extra)
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real) or not np.isfinite(fill):
        raise ValueError(f"fill must be a finite number or one of {list(extra)}, got {brief(fill)}")
    return float(fill)


def seed_of(key: Any) -> list[int]:
    """The key's raw data as a list of ints (logged in rows so any number can be regenerated)."""
    ok = isinstance(key, jax.Array) and (
        (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 0)
        or (key.dtype == jnp.uint32 and key.ndim == 1)  # a raw jax.random.PRNGKey
    )
    if not ok:
        what = f"{key.dtype}{list(key.shape)}" if isinstance(key, jax.Array) else repr(key)
        raise ValueError(f"key must be one jax PRNG key, e.g. jax.random.key(0), got {what}")
    return np.asarray(jax.random.key_data(key)).ravel().tolist()


def shift_pairs(name: str, shifts: Any) -> list[tuple[int, int]]:
    """A non-empty sequence of integer ``(dy, dx)`` pairs."""
    try:
        out = [(int(dy), int(dx)) for dy, dx in shifts]
        ok = all(float(a) == int(a) for pair in shifts for a in pair)
    except (TypeError, ValueError):
        out, ok = [], False
    if not out or not ok:
        raise ValueError(
            f"{name} must be a non-empty sequence of integer (dy, dx) pairs, got {brief(shifts)}"
        )
    return out


# ----------------------------------------------------------------------------- rows


def py(value: Any) -> Any:
    """A JSON-serialisable Python scalar (or list of them) from numpy / jax / Python values."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [py(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        value = np.asarray(value).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"row values must be scalars or strings, got {type(value).__name__}")


def make_row(protocol: str, *, n_images: int, **fields: Any) -> dict[str, Any]:
    """A tidy row: every key of :data:`ROW_KEYS` (``None`` when absent), then ``fields``."""
    row = dict.fromkeys(ROW_KEYS)
    row["protocol"] = protocol
    row["n_images"] = int(n_images)
    for k, v in fields.items():
        row[k] = py(v)
    return row


def num(value: Any) -> int | float:
    """A number as a Python int when integral (3.0 -> 3), else a float: readable rows."""
    value = float(value)
    return int(value) if value.is_integer() else value


def shift_range(low: Any, high: Any) -> str:
    """``"low..high"`` (inclusive), the shift-range column."""
    return f"{num(low)}..{num(high)}"


def shift_columns(low: int, high: int) -> dict[str, Any]:
    """The rows' ``max_shift`` (the largest ``|shift|``) and ``shift_range`` (``"low..high"``)
    of integer shifts ``low..high``."""
    return {"max_shift": max(abs(low), abs(high)), "shift_range": shift_range(low, high)}


def mean(values: Any) -> float:
    """Mean over every element in float64, as a Python float."""
    return float(np.mean(np.asarray(values, np.float64)))


# ----------------------------------------------------------------------------- streaming


to_float = T.to_float


def argmax(logits: jax.Array) -> jax.Array:
    """Top-1 class ``(...)`` int32 of logits ``(..., K)``."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def nan_rows(*arrays: Any) -> jax.Array:
    """``(n,)`` bool: True where any of the arrays (each ``(n, ...)``, or a dict or tuple of
    them) holds a NaN in row ``i``. Steps return it as ``"nan"``; :func:`stream` refuses."""
    leaves = jax.tree.leaves(arrays)
    flags = [jnp.any(jnp.isnan(a.reshape(a.shape[0], -1)), axis=1) for a in leaves]
    return jnp.any(jnp.stack(flags), axis=0)


def image_keys(key: jax.Array, index: jax.Array) -> jax.Array:
    """One key per image: ``jax.random.fold_in(key, global_image_index)``."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def map_over(fn: Callable, xs: Any, batch: int | None) -> Any:
    """``vmap(fn)(xs)``, or ``lax.map`` in vmapped batches of ``batch`` to bound memory."""
    length = jax.tree.leaves(xs)[0].shape[0]
    if batch is None or batch >= length:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=batch)


def stream(
    step: Callable,
    params: Any,
    key: Any,
    images: Any,
    *extras: np.ndarray,
    chunk_size: int,
    progress: bool,
    desc: str,
) -> Any:
    """Runs ``step(params, key, x, index, *extra_chunks)`` over chunks of the images.

    Every chunk is padded to the same size (``min(chunk_size, N)``) so ``step`` compiles once;
    ``index`` holds the global image indices (per-image randomness folds them into ``key``).
    ``step`` returns a dict of pytrees of arrays whose leading axis is the image; the padded
    tail is dropped and the chunks are concatenated on the host. A ``"nan"`` entry
    (:func:`nan_rows` of the model's outputs) is taken out and checked: any NaN raises a
    one-line ValueError naming ``desc`` (the protocol) rather than letting NaN logits become an
    agreement (``argmax`` of NaN is class 0 on every view).
    """
    n = images.shape[0]
    size = min(chunk_size, n)
    starts = range(0, n, size)
    parts = []
    for start in tqdm(starts, desc=desc, unit="chunk", disable=not progress):
        stop = min(start + size, n)
        arrays = [np.asarray(a[start:stop]) for a in (images, *extras)]
        if stop - start < size:
            arrays = [
                np.concatenate([a, np.zeros((size - (stop - start), *a.shape[1:]), a.dtype)])
                for a in arrays
            ]
        index = np.arange(start, start + size, dtype=np.int32)
        out = step(params, key, arrays[0], index, *arrays[1:])
        parts.append(jax.tree.map(lambda a, m=stop - start: np.asarray(a)[:m], out))
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)
    bad = np.flatnonzero(out.pop("nan")) if "nan" in out else np.zeros(0, int)
    if bad.size:
        raise ValueError(
            f"{desc}: the model's outputs hold NaN on {bad.size} of {n} images (first: image "
            f"{bad[0]}); refusing to report a number for them"
        )
    return out


@dataclasses.dataclass(frozen=True)
class Call:
    """One protocol call's checked inputs (from :func:`begin`): what every protocol streams
    and what every one of its rows records.

    Attributes:
      protocol: the protocol's name (progress bar, error messages).
      row_name: the rows' ``protocol`` column (the protocol's name unless it says otherwise).
      images: the checked ``(N, H, W, C)`` images, unconverted.
      labels: ``(N,)`` integer labels, or None (not given, or not used by the protocol).
      key: the PRNG key of a protocol that needs one, else None (the step gets None).
      seed: ``key``'s data for the rows' ``seed`` column, or None.
      progress: whether :meth:`stream` shows a tqdm bar (checked by the protocol's check).
    """

    protocol: str
    row_name: str
    images: Any
    labels: np.ndarray | None
    key: Any
    seed: list[int] | None
    progress: Any

    @property
    def n(self) -> int:
        """How many images: N."""
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """One image's shape ``(H, W, C)``, what the option checks see."""
        return tuple(self.images.shape[1:])

    def stream(
        self,
        step: Callable,
        variables: Any,
        *extras: np.ndarray,
        chunk_size: int,
        desc: str | None = None,
    ) -> Any:
        """:func:`stream` of ``step`` over the images (and ``extras``) with this call's key
        and progress bar; ``desc`` (default the protocol's name) names it in errors."""
        return stream(
            step,
            variables,
            self.key,
            self.images,
            *extras,
            chunk_size=chunk_size,
            progress=self.progress,
            desc=desc or self.protocol,
        )

    def row(self, **fields: Any) -> dict[str, Any]:
        """:func:`make_row` with the call's ``protocol`` column, ``n_images`` and ``seed``."""
        return make_row(self.row_name, n_images=self.n, seed=self.seed, **fields)


def begin(
    protocol: str,
    images: Any,
    *,
    labels: Any = None,
    key: Any = None,
    needs: tuple[str, ...] = (),
    progress: Any = False,
    row_name: str | None = None,
) -> Call:
    """The first step of every protocol: checks its images, then what it ``needs`` (labels,
    then key: a one-line ValueError when missing), then optional labels when given.

    Args:
      protocol: the protocol's name, for messages.
      images: ``(N, H, W, C)`` uint8 or float (:func:`check_images`).
      labels: ``(N,)`` integer labels or None; pass them only if the protocol uses them.
      key: the PRNG key; kept (and logged as ``seed``) only if ``"key"`` is in ``needs``.
      needs: a subset of ``("labels", "key")``, as the protocol is registered.
      progress: the protocol's ``progress`` option.
      row_name: the rows' ``protocol`` column when it is not the protocol's name.
    """
    images = check_images(images)
    n = images.shape[0]
    if "labels" in needs:
        labels = need_labels(protocol, labels, n)
    seed = need_key(protocol, key) if "key" in needs else None
    if labels is not None and "labels" not in needs:
        labels = check_labels(labels, n)
    key = key if "key" in needs else None
    return Call(protocol, row_name or protocol, images, labels, key, seed, progress)


def views_apply(fn: Callable, params: Any, views: jax.Array) -> Any:
    """``fn(params, x)`` on views ``(n, V, H, W, C)`` -> outputs with axes ``(n, V, ...)``."""
    return jax.vmap(lambda v: fn(params, v), in_axes=1, out_axes=1)(views)


def check_representation(fn: Callable, params: Any, images: Any, layer: str | None) -> Callable:
    """``rep(params, x)``: logits (``layer=None``) or ``fn(params, x)[layer]``, checked once.

    Traces ``fn`` on one image with :func:`jax.eval_shape` (nothing is computed) and raises a
    one-line ValueError when the output does not fit ``layer``.
    """
    probe = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)
    out = jax.eval_shape(fn, params, probe)
    if layer is None:
        if isinstance(out, Mapping):
            raise ValueError(
                f"the function returns a dict of features {sorted(out)}: pass layer=NAME"
            )
        if not hasattr(out, "shape") or len(out.shape) < 2:
            raise ValueError("with layer=None the function must return logits of shape (N, K)")
        return fn
    if not isinstance(out, Mapping) or layer not in out:
        names = sorted(out) if isinstance(out, Mapping) else []
        raise ValueError(
            f"layer must be one of the features_fn outputs {names}, got {brief(layer)}"
        )
    return lambda p, x: fn(p, x)[layer]


def feature_names(features_fn: Callable, params: Any, images: Any) -> list[str]:
    """The names of ``features_fn``'s output dict (sorted), checked with eval_shape."""
    probe = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)
    out = jax.eval_shape(features_fn, params, probe)
    if not isinstance(out, Mapping) or not out:
        raise ValueError("features_fn must return a non-empty dict {layer name: (N, ...) array}")
    return sorted(out)


# ----------------------------------------------------------------------------- transforms
# The transform families themselves (checked options, rows' columns, the functions) are in
# invariance/measure/_families.py.


def direction_offsets(direction: str, d: Any) -> tuple[Any, Any]:
    """``(dy, dx)`` for a shift of ``d`` pixels along ``direction``."""
    zero = jnp.zeros_like(d)
    return {"horizontal": (zero, d), "vertical": (d, zero), "diagonal": (d, d)}[direction]
