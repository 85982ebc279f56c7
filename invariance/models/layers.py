"""The building blocks shared by every model: the :class:`Pool` layer and its option handling.

:class:`Pool` resolves a pooling kind by name (big_vision's ``pool_type`` style): every kind
of :data:`invariance.pooling.POOLS`, plus ``"strided_conv"`` (learned downsampling) and
``"none"`` (identity). Models hold their pooling options as a hashable tuple of
``(name, value)`` pairs, so a model stays a hashable dataclass (usable as a static argument).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from invariance import pooling

__all__ = ["DOWNSAMPLE_KINDS", "POOL_KINDS", "PatchConv", "Pool"]

#: Every kind :class:`Pool` accepts: the pooling library's kinds, "strided_conv" and "none".
POOL_KINDS: tuple[str, ...] = (*pooling.POOLS, "strided_conv", "none")

#: The kinds that keep a spatial map (all but the global ones): what a model's ``pool`` takes.
DOWNSAMPLE_KINDS: tuple[str, ...] = tuple(k for k in POOL_KINDS if not k.startswith("global_"))

# The options each kind accepts (Pool's ``options``), beyond window / stride / padding: the
# keyword-only options of the pooling function, plus the model-only kinds' own.
_POOL_OPTIONS: dict[str, tuple[str, ...]] = {
    **{kind: pooling.options_of(kind) for kind in pooling.POOLS},
    "strided_conv": ("features", "use_bias"),
    "none": (),
}

Options = tuple[tuple[str, Any], ...]


def _hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_hashable(a) for a in v)
    return v


def freeze_options(options: Any) -> Options:
    """``None``, a mapping or an iterable of ``(name, value)`` pairs -> sorted tuple of pairs.

    Example:
        >>> freeze_options({"p": 3, "filter_size": 5})
        (('filter_size', 5), ('p', 3))
    """
    if options is None:
        return ()
    items = options.items() if isinstance(options, Mapping) else options
    try:
        pairs = [(str(k), _hashable(v)) for k, v in items]
    except (TypeError, ValueError):
        raise ValueError(
            f"options must be a mapping or (name, value) pairs, got {options!r}"
        ) from None
    return tuple(sorted(pairs))


def check_kind(kind: Any, valid: tuple[str, ...], what: str = "pooling kind") -> None:
    """Raises a one-line ValueError listing ``valid`` when ``kind`` is not one of them."""
    if kind not in valid:
        raise ValueError(f"unknown {what} {kind!r}: valid are {', '.join(valid)}")


def check_options(kind: str, options: Options) -> None:
    """Raises a one-line ValueError naming the options ``kind`` does not accept."""
    valid = _POOL_OPTIONS[kind]
    bad = sorted(k for k, _ in options if k not in valid)
    if bad:
        raise ValueError(
            f"pooling kind {kind!r} got unknown option(s) {', '.join(bad)}: valid are "
            f"{', '.join(valid) or 'none'} (window / stride / padding are fields of Pool)"
        )


def with_default(options: Options, kind: str, name: str, value: Any) -> Options:
    """``options`` plus ``name=value`` when ``kind`` accepts ``name`` and it is not set."""
    if name in _POOL_OPTIONS.get(kind, ()) and name not in dict(options):
        return freeze_options({**dict(options), name: value})
    return options


class Pool(nn.Module):
    """A pooling layer chosen by name: ``(N, H, W, C) -> (N, H', W', C)`` (``(N, C)`` for the
    global kinds; ``C`` becomes ``options["features"]`` for "strided_conv").

    Every kind of :data:`invariance.pooling.POOLS` is one lookup: the layer passes the
    geometry its function takes (:func:`invariance.pooling.geometry_of`) and ``options``
    (:func:`invariance.pooling.options_of` lists what each kind accepts). Only three cases
    are the model's own: "strided_conv" and "none", a learned "mixed" weight, and the
    "stochastic" key. Kinds and the options they take (``options`` is a mapping or
    ``(name, value)`` pairs):

    - "max", "min", "avg" (``count_include_pad``), "lp" (``p``, default 2): windowed
      reductions of :mod:`invariance.pooling` with ``window``, ``stride``, ``padding``.
    - "stochastic" (Zeiler & Fergus 2013): samples one activation per window with probability
      proportional to it when ``train=True``, drawing from the ``'pool'`` rng stream
      (``self.make_rng("pool")``); the deterministic expectation when ``train=False``.
      VALID padding only.
    - "mixed" (Yu et al. 2014): ``alpha * max + (1 - alpha) * avg`` with a learned
      per-channel ``alpha = sigmoid(alpha_logit)`` (param ``alpha_logit``, shape ``(C,)``,
      initialised to 0, i.e. alpha 0.5); a fixed ``alpha`` option disables learning.
    - "blur" (Zhang 2019 BlurPool alone): binomial low-pass then subsampling by ``stride``
      (``window`` is unused; the filter is ``filter_size``, default 3, padded by
      ``pad_mode``, default "reflect").
    - "max_blur" (Zhang 2019 MaxBlurPool, :func:`invariance.pooling.max_blur_pool`): max over
      ``window`` at stride 1 (dense), then BlurPool with ``stride``. With
      ``pad_mode="circular"`` the dense max first pads circularly by ``window - 1`` at the
      end, so the map keeps its size and a circular shift commutes with it; otherwise it is
      VALID and ``H`` shrinks by ``window - 1`` (Zhang's).
    - "aps" (Chaman & Dokmanić 2021): adaptive polyphase sampling by ``stride`` (``norm``
      "l2"/"l1"/"linf", optional blur ``filter_size`` with ``pad_mode``, default circular).
      Avoid ``norm="l1"`` with ``filter_size > 1`` on non-negative maps: a binomial blur
      (circular padding) removes the Nyquist frequency, so every polyphase component then has
      the same l1 norm (the sum): rounding decides, and exact shift invariance is lost.
    - "global_avg", "global_max", "global_min": one value per channel, for heads.
    - "strided_conv": a learned ``Conv(features, kernel=window, strides=stride, padding)``
      (``features`` defaults to the input's ``C``; ``use_bias`` default True); with
      ``window == stride`` and VALID padding computed as :class:`PatchConv` (the same
      parameters and function, one matrix product).
    - "none": the identity.

    For every downsampling kind ``stride`` defaults to ``window`` (so the default
    ``window=2`` halves H and W).

    Attributes:
        kind: one of :data:`POOL_KINDS`.
        window: int or (h, w), default 2.
        stride: int or (h, w); ``None`` means ``window``.
        padding: as the pooling library: "VALID", "SAME", an int or ((t, b), (l, r)); for
            "strided_conv" anything ``flax.linen.Conv`` accepts.
        options: the kind's extra options (see above).

    Raises:
        ValueError: an unknown kind (listing :data:`POOL_KINDS`) or option, at construction.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> layer = Pool("max_blur", window=2)
        >>> x = jnp.ones((1, 8, 8, 3))
        >>> layer.apply(layer.init(jax.random.key(0), x), x).shape
        (1, 4, 4, 3)
    """

    kind: str
    window: Any = 2
    stride: Any = None
    padding: Any = "VALID"
    options: Any = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", freeze_options(self.options))
        check_kind(self.kind, POOL_KINDS)
        check_options(self.kind, self.options)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Pools ``x`` of shape ``(N, H, W, C)``; ``train`` matters for "stochastic" only."""
        kind, opts = self.kind, dict(self.options)
        stride = self.window if self.stride is None else self.stride
        if kind == "none":
            return x
        if kind == "strided_conv":
            features, use_bias = opts.get("features", x.shape[-1]), opts.get("use_bias", True)
            window, stride = as_pair(self.window), as_pair(stride)
            if window == stride and self.padding == "VALID":
                return PatchConv(features, window, use_bias, name="conv")(x)
            return nn.Conv(
                features,
                kernel_size=window,
                strides=stride,
                padding=self.padding,
                use_bias=use_bias,
                name="conv",
            )(x)
        if kind == "mixed" and "alpha" not in opts:  # learned, per channel
            logit = self.param("alpha_logit", nn.initializers.zeros, (x.shape[-1],))
            opts["alpha"] = nn.sigmoid(logit)
        if kind == "stochastic":
            opts.update(train=train, key=self.make_rng("pool") if train else None)
        geometry = {"window": self.window, "stride": stride, "padding": self.padding}
        geometry = {k: v for k, v in geometry.items() if k in pooling.geometry_of(kind)}
        return pooling.pool(x, kind, **geometry, **opts)


class PatchConv(nn.Module):
    """``nn.Conv(features, kernel_size=window, strides=window, padding="VALID")`` computed as
    one matrix product over non-overlapping patches: ``(..., H, W, C) -> (..., H // kh,
    W // kw, features)``.

    The same parameters (``kernel`` ``(kh, kw, C, features)``, ``bias`` ``(features,)``, the
    same initialisers, so the same initial values under the same name) and the same function
    as the convolution; XLA:CPU's strided convolution, and above all its gradient, costs
    several times this product (``scripts/bench_train.py --part kinds``).

    Attributes:
        features: output channels.
        window: the (kh, kw) patch, equal to the stride.
        use_bias: add a learned bias.
    """

    features: int
    window: tuple[int, int]
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.window
        *lead, h, w, c = x.shape
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (kh, kw, c, self.features), jnp.float32
        )
        bias = (
            self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias
            else None
        )
        ho, wo = h // kh, w // kw
        x = x[..., : ho * kh, : wo * kw, :].reshape(*lead, ho, kh, wo, kw, c)
        y = jnp.einsum("...hiwjc,ijcf->...hwf", x, kernel.astype(x.dtype))
        return y if bias is None else y + bias.astype(y.dtype)


def as_pair(v: Any) -> tuple[int, int]:
    """An int or an (h, w) pair -> an (h, w) tuple of ints."""
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))
