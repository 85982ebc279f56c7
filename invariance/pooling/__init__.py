"""Pure pooling functions on NHWC arrays, and a registry to pick one by name.

Every function takes ``x`` of shape ``(..., H, W, C)`` with any number of leading batch dims
(so it works unbatched and under ``jax.vmap``) and returns ``(..., H', W', C)`` (or
``(..., C)`` for global pooling). Calls follow dm_pix's style: ``x``, then the ``window``
(windowed kinds) positionally, and every other option keyword-only, e.g.
``max_pool(x, 2, stride=1)``, ``lp_pool(x, 2, p=3)``, ``blur_pool(x, filter_size=5)``.
``window`` and ``stride`` are an int or an ``(h, w)`` pair of ints (a float, string or bool is
refused); ``stride`` defaults to ``window``; ``padding`` is ``"VALID"``, ``"SAME"``, an int
(the same on every side, as ``torch.nn.MaxPool2d(padding=p)``), or
``((top, bottom), (left, right))``. ``x`` must be a float or integer array (not bool).
:func:`pool` picks a function by name (:data:`POOLS`); ``with override(kind, fn):`` computes
one kind with another function within a block (the models' ``Pool`` layer too).

Windowed reductions are written as a reduction over the ``window_h * window_w`` strided slices
of the padded input rather than with ``lax.reduce_window``: XLA fuses the slices into one loop,
and the gradient is a sum of pads instead of XLA's ``select_and_scatter``, whose CPU gradient
for max pooling costs ~75x the forward pass (``scripts/bench_pooling.py`` measures it). On
the CPU, 2x2 max pooling's gradient path uses a compiled XLA FFI kernel when it applies
(``_cpu_kernel.py``), because XLA:CPU cannot write the output and the window index in one pass.

Max / min pooling gradient convention (torch's): each window's whole cotangent goes to ONE
element, the first extreme in row-major order of the window, never split among ties (ties are
common after a ReLU, where many values are exactly 0). Padded positions never win.

Example:
    >>> import jax.numpy as jnp
    >>> fm = jnp.array([[12, 20, 3, 7], [8, 15, 11, 4], [6, 9, 14, 18], [2, 10, 5, 16]],
    ...                dtype=jnp.float32)[..., None]
    >>> max_pool(fm, 2)[..., 0].tolist()
    [[20.0, 11.0], [10.0, 18.0]]
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax

from invariance.pooling._antialiased import (
    APS_NORMS,
    PAD_MODES,
    aps_pool,
    aps_pool_with_index,
    binomial_filter,
    blur_pool,
    max_blur_pool,
)
from invariance.pooling._geometry import PADDING_NAMES, output_size
from invariance.pooling._windowed import (
    GLOBAL_KINDS,
    avg_pool,
    global_pool,
    lp_pool,
    max_pool,
    min_pool,
    mixed_pool,
    stochastic_pool,
)

__all__ = [
    "APS_NORMS",
    "GEOMETRY",
    "GLOBAL_KINDS",
    "PADDING_NAMES",
    "PAD_MODES",
    "POOLS",
    "aps_pool",
    "aps_pool_with_index",
    "avg_pool",
    "binomial_filter",
    "blur_pool",
    "geometry_of",
    "global_pool",
    "lp_pool",
    "max_blur_pool",
    "max_pool",
    "min_pool",
    "mixed_pool",
    "options_of",
    "output_size",
    "override",
    "pool",
    "stochastic_pool",
]

_REGISTRY: dict[str, Callable[..., jax.Array]] = {
    "max": max_pool,
    "min": min_pool,
    "avg": avg_pool,
    "lp": lp_pool,
    "stochastic": stochastic_pool,
    "mixed": mixed_pool,
    "blur": blur_pool,
    "max_blur": max_blur_pool,
    "aps": aps_pool,
    "global_avg": functools.partial(global_pool, kind="avg"),
    "global_max": functools.partial(global_pool, kind="max"),
    "global_min": functools.partial(global_pool, kind="min"),
}

#: Every pooling kind :func:`pool` accepts, by name.
POOLS: tuple[str, ...] = tuple(_REGISTRY)

#: The geometry arguments a pooling function may take (``window`` second and positional;
#: ``stride`` and ``padding`` keyword-only), and the arguments that are not options of a
#: pooling layer (the PRNG key, the train flag, the global kind bound by the registry).
GEOMETRY: tuple[str, ...] = ("window", "stride", "padding")
_NOT_OPTIONS = ("x", *GEOMETRY, "key", "train", "kind")


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown pooling kind {kind!r}: valid are {', '.join(POOLS)}")


@functools.cache
def _parameters(kind: str) -> tuple[str, ...]:
    return tuple(inspect.signature(_REGISTRY[kind]).parameters)


def geometry_of(kind: str) -> tuple[str, ...]:
    """Which of :data:`GEOMETRY` the pooling function of ``kind`` takes, e.g.
    ``("window", "stride", "padding")`` for "max", ``("stride",)`` for "blur", ``()`` for
    "global_avg".

    Example:
        >>> geometry_of("max_blur")
        ('window', 'stride')
    """
    _check_kind(kind)
    return tuple(g for g in GEOMETRY if g in _parameters(kind))


def options_of(kind: str) -> tuple[str, ...]:
    """The keyword-only options of ``kind``'s function beyond geometry, key and train (what a
    model's ``pool_options`` may set), in signature order.

    Example:
        >>> options_of("aps")
        ('norm', 'filter_size', 'pad_mode')
    """
    _check_kind(kind)
    return tuple(n for n in _parameters(kind) if n not in _NOT_OPTIONS)


def pool(x: jax.Array, kind: str, **options: Any) -> jax.Array:
    """Dispatches to a pooling function by name (big_vision's ``pool_type`` style).

    Every function takes ``x``, then (windowed kinds) ``window`` positionally, and everything
    else keyword-only, so this is one lookup: ``pool(x, kind, **options)`` is
    ``fn(x, **options)``.

    Args:
        x: ``(..., H, W, C)``.
        kind: one of :data:`POOLS`: "max", "min", "avg", "lp", "stochastic", "mixed", "blur",
            "max_blur", "aps", "global_avg", "global_max", "global_min".
        **options: keyword arguments of that function, e.g. ``window=2`` for "max",
            ``key=...`` for "stochastic" (or ``train=False``), ``p=2`` for "lp",
            ``alpha=0.5`` for "mixed".

    Returns:
        That function's output.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones).

    Example:
        >>> import jax.numpy as jnp
        >>> pool(jnp.ones((4, 4, 1)), "avg", window=2).shape
        (2, 2, 1)
    """
    _check_kind(kind)
    return _REGISTRY[kind](x, **options)


@contextlib.contextmanager
def override(kind: str, fn: Callable[..., jax.Array]) -> Iterator[None]:
    """Within the block, the pooling kind ``kind`` is computed by ``fn`` instead of its own
    function: :func:`pool` and so every model's ``Pool`` layer
    (:class:`invariance.models.layers.Pool`, which dispatches through :func:`pool`) call
    ``fn``. The kind's own function is restored on exit, also when the block raises; overrides
    nest.

    ``fn`` must take the arguments of the function it replaces (``x`` ``(..., H, W, C)``, then
    the same geometry and options, e.g. ``fn(x, window, *, stride=None, padding="VALID")`` for
    "max"): :func:`geometry_of` and :func:`options_of` still describe the kind's own function.
    The swap acts when a model is traced: a ``jax.jit``-ed function traced before the block
    keeps what it traced, and one traced inside keeps ``fn`` after it (the benchmark
    ``scripts/bench_train.py`` traces SmallCNN's train step with flax's max pooling this way).

    Args:
        kind: one of :data:`POOLS`.
        fn: the replacement, ``fn(x, **options) -> (..., H', W', C)``.

    Raises:
        ValueError: an unknown kind (the message lists the valid ones), or an ``fn`` that is
            not callable.

    Example:
        >>> import jax.numpy as jnp
        >>> with override("max", lambda x, window, **_: x[..., ::window, ::window, :]):
        ...     pool(jnp.arange(4.0).reshape(2, 2, 1), "max", window=2).tolist()
        [[[0.0]]]
        >>> pool(jnp.arange(4.0).reshape(2, 2, 1), "max", window=2).tolist()
        [[[3.0]]]
    """
    _check_kind(kind)
    if not callable(fn):
        raise ValueError(f"override({kind!r}, fn): fn must be callable, got {type(fn).__name__}")
    saved = _REGISTRY[kind]
    _REGISTRY[kind] = fn
    try:
        yield
    finally:
        _REGISTRY[kind] = saved
