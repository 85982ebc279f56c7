"""Small CNNs for 28x28 grey images: the seeds' Probe, SmallCNN, and DownsampleInput.

Every model's ``__call__(x, *, train=False, return_features=False)`` takes ``x`` of shape
``(N, H, W, C)``, float, already scaled to [0, 1], and returns logits ``(N, num_classes)``, or
``(logits, features)`` with ``features`` a dict from layer name to that layer's output.

Applied with existing variables to images their parameters were not made for (another channel
count; another size under a "flatten" head), a model raises a one-line ValueError naming the
images' shape and the shape the parameters expect (:func:`check_input`, :func:`check_flatten`),
not Flax's scope error. Convolutional models with a "gap" head take any size.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from invariance import pooling
from invariance.models.layers import (
    DOWNSAMPLE_KINDS,
    Pool,
    check_kind,
    check_options,
    freeze_options,
    with_default,
)

__all__ = [
    "CONV_PADDINGS",
    "HEADS",
    "RESIZE_METHODS",
    "DownsampleInput",
    "Probe",
    "SmallCNN",
    "check_flatten",
    "check_input",
]

#: Padding of the 3x3 convolutions: zeros ("SAME") or periodic ("CIRCULAR", flax's
#: ``jnp.pad(mode="wrap")`` then a VALID conv).
CONV_PADDINGS = ("SAME", "CIRCULAR")
#: Classifier heads: flatten -> Dense(hidden) -> ReLU -> Dense, or global average -> Dense.
HEADS = ("flatten", "gap")
#: How DownsampleInput resizes its input.
RESIZE_METHODS = ("bilinear", "area", "nearest")


def _check_pool(pool: str, options: Any) -> tuple[tuple[str, Any], ...]:
    """Validates a model's downsampling kind and its options; returns the frozen options."""
    check_kind(pool, DOWNSAMPLE_KINDS)
    options = freeze_options(options)
    check_options(pool, options)
    return options


def _pool_options(pool: str, options: Any, conv_padding: str) -> Any:
    """Circular networks blur with circular padding too (unless the options say otherwise)."""
    if conv_padding == "CIRCULAR":
        return with_default(options, pool, "pad_mode", "circular")
    return options


def _params_of(module: nn.Module, layer: str) -> Any:
    """The existing params of child ``layer`` of ``module`` (None while initialising)."""
    if module.is_initializing() or not module.has_variable("params", layer):
        return None
    return module.get_variable("params", layer)


def check_input(module: nn.Module, x: jax.Array, first_conv: str) -> None:
    """Refuses images that do not fit ``module``'s parameters, in one line naming both shapes.

    ``x`` must be ``(N, H, W, C)``; once the module has parameters, ``C`` must be the input
    channel count of its first convolution ``first_conv`` (its kernel is
    ``(kh, kw, C, features)``). Called first in every model's ``__call__``.

    Raises:
      ValueError: for a rank other than 4 or another channel count.
    """
    name = type(module).__name__
    if x.ndim != 4:
        raise ValueError(f"{name} takes images (N, H, W, C), got shape {tuple(x.shape)}")
    params = _params_of(module, first_conv)
    if params is not None and params["kernel"].shape[-2] != x.shape[-1]:
        c = params["kernel"].shape[-2]
        raise ValueError(
            f"{name}: images of shape {tuple(x.shape)} have {x.shape[-1]} channel(s), but its "
            f"parameters were made for images (N, H, W, {c}) ({first_conv!r} kernel "
            f"{tuple(params['kernel'].shape)})"
        )


def check_flatten(module: nn.Module, images: tuple[int, ...], x: jax.Array, layer: str) -> None:
    """Refuses a feature map whose flattened size does not fit Dense ``layer``'s parameters.

    Args:
      module: the model.
      images: the shape of the images the model was applied to (for the message).
      x: the ``(N, h, w, c)`` map the flatten head is about to see.
      layer: the Dense layer's name.

    Raises:
      ValueError: naming the images' shape, the map's and the size the parameters take.
    """
    params = _params_of(module, layer)
    size = math.prod(x.shape[1:])
    if params is not None and params["kernel"].shape[0] != size:
        want = params["kernel"].shape[0]
        c = x.shape[-1]
        side = math.isqrt(want // c)
        hw = f"a {(side, side, c)} map" if side * side * c == want else "another map size"
        raise ValueError(
            f"{type(module).__name__}: images of shape {tuple(images)} give its flatten head a "
            f"{tuple(x.shape[1:])} map ({size} inputs), but its parameters take {want} ({hw}): "
            "they were initialised on images of another size (a 'gap' head takes any size)"
        )


def _head(
    module: nn.Module, images: tuple[int, ...], x: jax.Array, head: str, hidden: int, classes: int
) -> tuple[jax.Array, jax.Array]:
    """(N, H, W, C) -> (logits (N, num_classes), the representation fed to the classifier)."""
    if head == "gap":
        z = pooling.global_pool(x, kind="avg")
    else:
        check_flatten(module, images, x, "hidden")
        z = nn.relu(nn.Dense(hidden, name="hidden")(x.reshape(x.shape[0], -1)))
    return nn.Dense(classes, name="classifier")(z), z


class Probe(nn.Module):
    """The seed's probe network (000): ``Conv(2x2) -> Pool(2x2, stride 1) -> Conv(2x2)``, or
    ``Conv(2x2) -> Conv(2x2)`` when ``pool`` is None (or "none").

    A feature extractor, not a classifier: its "logits" are the final feature map, so the
    seed's claim (pooling filters masking noise that conv -> conv carries forward) is measured
    on maps. Layers: Conv(features, kernel x kernel, VALID, bias) -> ReLU -> [Pool(pool,
    window 2, stride 1)] -> Conv(features, kernel x kernel, VALID, bias) -> ReLU. With the
    seed's 2x2 kernels and no padding every layer shrinks H and W by 1: a 28x28 input gives
    conv1 27x27, pool1 26x26, conv2 25x25 (26x26 without the pool). Anti-aliased kinds at
    stride 1 keep or shrink the size as :class:`Pool` documents ("blur" keeps 27x27).

    Attributes:
        pool: a kind of :data:`~invariance.models.DOWNSAMPLE_KINDS`, or None for no pool.
        features: channels of both convolutions.
        kernel: the convolutions' kernel size.
        pool_options: options of the pool (see :class:`Pool`).

    Returns:
        ``__call__`` returns ``(N, H - 3, W - 3, features)`` (``H - 2`` without a pool), and
        with ``return_features`` also ``{"conv1", "pool1" (when pooled), "conv2"}``.
    """

    pool: str | None = None
    features: int = 8
    kernel: int = 2
    pool_options: Any = ()

    def __post_init__(self) -> None:
        if self.pool is not None and self.pool != "none":
            object.__setattr__(self, "pool_options", _check_pool(self.pool, self.pool_options))
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False) -> Any:
        check_input(self, x, "conv1")
        feats: dict[str, jax.Array] = {}
        k = (self.kernel, self.kernel)
        x = feats["conv1"] = nn.relu(nn.Conv(self.features, k, padding="VALID", name="conv1")(x))
        if self.pool is not None and self.pool != "none":
            layer = Pool(self.pool, 2, 1, options=self.pool_options, name="pool1")
            x = feats["pool1"] = layer(x, train=train)
        x = feats["conv2"] = nn.relu(nn.Conv(self.features, k, padding="VALID", name="conv2")(x))
        return (x, feats) if return_features else x


class SmallCNN(nn.Module):
    """A small classifier: ``[Conv3x3 -> ReLU -> Pool] x len(widths)`` then a head.

    Layers (default ``widths=(32, 64)``, 28x28x1 input, a halving kind such as "max"):
    conv1 Conv(32, 3x3, conv_padding) -> ReLU (28x28x32) -> pool1 Pool(pool, 2, 2) (14x14x32)
    -> conv2 Conv(64, 3x3) -> ReLU (14x14x64) -> pool2 Pool(pool, 2, 2) (7x7x64) -> head:

    - "flatten": Flatten -> Dense(hidden=128) -> ReLU -> Dense(num_classes).
    - "gap": global average pool -> Dense(num_classes). With ``conv_padding="CIRCULAR"`` and
      ``pool`` "aps" or "none" the network is exactly invariant to circular shifts.

    ``pool="none"`` keeps the full resolution: with the "flatten" head the Dense layer then
    sees 28*28*64 = 50176 inputs (6.4M weights); with "gap" it is the study's "no pooling,
    GAP head" row. "max_blur" shrinks each map by 1 before subsampling (28 -> 27 -> 14,
    14 -> 13 -> 7) unless its ``pad_mode`` is "circular". With ``conv_padding="CIRCULAR"``
    the blur kinds default to ``pad_mode="circular"``.

    Attributes:
        num_classes: number of logits.
        pool: a kind of :data:`~invariance.models.DOWNSAMPLE_KINDS` (window 2, stride 2).
        widths: channels of each conv stage.
        head: "flatten" or "gap".
        conv_padding: "SAME" or "CIRCULAR".
        pool_options: options of every pool layer (see :class:`Pool`), a mapping or pairs.
        hidden: width of the "flatten" head's hidden Dense layer.

    Returns:
        ``__call__`` returns ``(N, num_classes)`` logits, and with ``return_features`` also
        ``{"conv1", "pool1", "conv2", "pool2", ..., "head"}`` ("head" is what the classifier
        Dense sees: the hidden activations, or the GAP vector).
    """

    num_classes: int = 10
    pool: str = "max"
    widths: tuple[int, ...] = (32, 64)
    head: str = "flatten"
    conv_padding: str = "SAME"
    pool_options: Any = ()
    hidden: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool_options", _check_pool(self.pool, self.pool_options))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        check_kind(self.head, HEADS, "head")
        check_kind(self.conv_padding, CONV_PADDINGS, "conv_padding")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False) -> Any:
        check_input(self, x, "conv1")
        images = x.shape
        feats: dict[str, jax.Array] = {}
        options = _pool_options(self.pool, self.pool_options, self.conv_padding)
        for i, width in enumerate(self.widths, start=1):
            conv = nn.Conv(width, (3, 3), padding=self.conv_padding, name=f"conv{i}")
            x = feats[f"conv{i}"] = nn.relu(conv(x))
            layer = Pool(self.pool, 2, 2, options=options, name=f"pool{i}")
            x = feats[f"pool{i}"] = layer(x, train=train)
        logits, feats["head"] = _head(self, images, x, self.head, self.hidden, self.num_classes)
        return (logits, feats) if return_features else logits


class DownsampleInput(nn.Module):
    """Seed 002's claim: down-sample the input to ``size x size`` INSTEAD of the first pool.

    Layers (defaults, 28x28x1 input): resize to 14x14 (``resize``) -> conv1 Conv(32, 3x3,
    conv_padding) -> ReLU (14x14x32) -> conv2 Conv(64, 3x3) -> ReLU (14x14x64) -> pool2
    Pool(pool, 2, 2) (7x7x64) -> the same head as :class:`SmallCNN`. Compared with
    ``SmallCNN(widths=(32, 64))`` the convolutions and the head have the same shapes; only the
    first pool (on conv1's features) becomes a resize of the image before conv1.

    Resize methods: "bilinear" (default) is ``jax.image.resize(method="linear",
    antialias=True)``, which when shrinking widens the triangle kernel by the scale factor
    (as PIL's bilinear; for 28 -> 14 the taps are (1, 3, 3, 1) / 8 per axis); "area" averages
    non-overlapping blocks (``avg_pool`` by ``H // size``; ``H`` and ``W`` must be multiples
    of ``size``); "nearest" is ``jax.image.resize(method="nearest")``.

    Attributes:
        num_classes, pool, widths, head, conv_padding, pool_options, hidden: as
            :class:`SmallCNN` (``widths`` are the two conv widths).
        size: the side of the resized input.
        resize: one of :data:`RESIZE_METHODS`.

    Returns:
        ``__call__`` returns ``(N, num_classes)``, and with ``return_features`` also
        ``{"resized", "conv1", "conv2", "pool2", "head"}``.
    """

    num_classes: int = 10
    size: int = 14
    pool: str = "max"
    widths: tuple[int, ...] = (32, 64)
    head: str = "flatten"
    conv_padding: str = "SAME"
    pool_options: Any = ()
    hidden: int = 128
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool_options", _check_pool(self.pool, self.pool_options))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != 2:
            raise ValueError(f"DownsampleInput needs two widths, got {self.widths!r}")
        check_kind(self.head, HEADS, "head")
        check_kind(self.conv_padding, CONV_PADDINGS, "conv_padding")
        check_kind(self.resize, RESIZE_METHODS, "resize method")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False) -> Any:
        check_input(self, x, "conv1")
        images = x.shape
        feats: dict[str, jax.Array] = {}
        x = feats["resized"] = self._resize(x)
        for i, width in enumerate(self.widths, start=1):
            conv = nn.Conv(width, (3, 3), padding=self.conv_padding, name=f"conv{i}")
            x = feats[f"conv{i}"] = nn.relu(conv(x))
        options = _pool_options(self.pool, self.pool_options, self.conv_padding)
        x = feats["pool2"] = Pool(self.pool, 2, 2, options=options, name="pool2")(x, train=train)
        logits, feats["head"] = _head(self, images, x, self.head, self.hidden, self.num_classes)
        return (logits, feats) if return_features else logits

    def _resize(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        s = self.size
        if self.resize == "area":
            if h % s or w % s:
                raise ValueError(f"area resize needs H, W multiples of size {s}, got {(h, w)}")
            return pooling.avg_pool(x, (h // s, w // s))
        method = "linear" if self.resize == "bilinear" else "nearest"
        x = jnp.asarray(x, jnp.result_type(x.dtype, jnp.float32))
        return jax.image.resize(x, (n, s, s, c), method=method, antialias=True)
