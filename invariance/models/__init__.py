"""Flax Linen CNNs whose pooling is chosen by name, and a registry to build them.

Models (each ``__call__(x, *, train=False, return_features=False)`` on ``x`` of shape
``(N, H, W, C)``, float in [0, 1], returning logits ``(N, num_classes)`` or
``(logits, features)``, ``features`` a dict from layer name to array):

- :class:`Probe` — the seed's Conv(2x2) -> MaxPool(2x2, stride 1) -> Conv(2x2) feature map.
- :class:`SmallCNN` — two conv/pool stages and a flatten or global-average head.
- :class:`DownsampleInput` — seed 002: resize the input to 14x14 instead of the first pool.
- :class:`ResNet` / :data:`ResNet18` / :data:`ResNetTiny` — CIFAR ResNets (He et al. 2016)
  whose downsampling is max, BlurPool (Zhang 2019), APS (Chaman & Dokmanić 2021), ...

Every pooling kind goes through :class:`Pool`. Randomness: stochastic pooling (Zeiler &
Fergus 2013) draws from the ``'pool'`` rng stream when ``train=True``; passing
``rngs={"pool": ..., "dropout": ...}`` to any model is harmless. BatchNorm statistics live in
the ``"batch_stats"`` collection (ResNets only).

Applied to images its parameters were not made for (another channel count, or another size
under a "flatten" head), every model raises a one-line ValueError naming the images' shape and
the shape its parameters expect (:func:`~invariance.models.cnn.check_input`), not a Flax scope
error; a "gap" head takes any size.

Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model("small_cnn", pool="aps", widths=(4, 8), head="gap")
    >>> variables = init_model(model, jax.random.key(0), (1, 28, 28, 1))
    >>> logits, feats = model.apply(variables, jnp.zeros((2, 28, 28, 1)), return_features=True)
    >>> logits.shape, feats["pool2"].shape
    ((2, 10), (2, 7, 7, 8))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from invariance.models.cnn import (
    CONV_PADDINGS,
    HEADS,
    RESIZE_METHODS,
    DownsampleInput,
    Probe,
    SmallCNN,
)
from invariance.models.layers import DOWNSAMPLE_KINDS, POOL_KINDS, Pool
from invariance.models.resnet import NORMS, BasicBlock, ResNet, ResNet18, ResNetTiny

__all__ = [
    "CONV_PADDINGS",
    "DOWNSAMPLE_KINDS",
    "HEADS",
    "MODELS",
    "NORMS",
    "POOL_KINDS",
    "RESIZE_METHODS",
    "BasicBlock",
    "DownsampleInput",
    "Pool",
    "Probe",
    "ResNet",
    "ResNet18",
    "ResNetTiny",
    "SmallCNN",
    "count_params",
    "create_model",
    "init_model",
]

#: Model constructors by name (classes or ``functools.partial`` variants of them).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "probe": Probe,
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet_tiny": ResNetTiny,
    "downsample_input": DownsampleInput,
}


def _fields(ctor: Callable[..., nn.Module]) -> tuple[str, ...]:
    cls = ctor.func if isinstance(ctor, functools.partial) else ctor
    return tuple(
        f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")
    )


def create_model(name: str, **options: Any) -> nn.Module:
    """Builds a model of :data:`MODELS` by name (big_vision style).

    Args:
        name: "probe", "small_cnn", "resnet18", "resnet_tiny" or "downsample_input".
        **options: the model's fields, e.g. ``pool="blur"``, ``pool_options={"filter_size": 3}``.

    Returns:
        The (unbound) Flax module.

    Raises:
        ValueError: in one line, an unknown name (listing :data:`MODELS`), an option the
            model does not have (listing its fields), or a bad option value.

    Example:
        >>> create_model("resnet_tiny", pool="blur").pool
        'blur'
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: valid are {', '.join(MODELS)}")
    ctor = MODELS[name]
    valid = _fields(ctor)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(bad)}: valid are {', '.join(valid)}"
        )
    try:
        return ctor(**options)
    except TypeError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"bad options for model {name!r} ({msg}): valid are {', '.join(valid)}"
        ) from None


def init_model(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """Initialises ``model`` on zeros of ``input_shape`` (with the batch dim), eval mode.

    Args:
        model: any model of this module.
        key: a PRNG key, used for the ``"params"`` and ``"pool"`` streams.
        input_shape: e.g. ``(1, 28, 28, 1)``.

    Returns:
        The variables: ``{"params": ...}`` plus ``"batch_stats"`` for models with BatchNorm.
    """
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    return dict(model.init({"params": key, "pool": key}, x, train=False))


def count_params(params: Any) -> int:
    """The number of scalars in ``params`` (a params tree, or variables with a "params" key).

    Works on arrays and on ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``).
    """
    if isinstance(params, Mapping) and "params" in params:
        params = params["params"]
    return int(sum(math.prod(getattr(leaf, "shape", ())) for leaf in jax.tree.leaves(params)))
