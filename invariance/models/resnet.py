"""CIFAR-style ResNets (He et al. 2016) whose every downsampling uses a chosen pooling kind.

The layout follows the CIFAR ResNet-18 of kuangliu/pytorch-cifar and the APS / BlurPool
papers' CIFAR experiments: a 3x3 stem without an initial max pool, four stages of
:class:`BasicBlock` with widths ``width * (1, 2, 4, 8)``, stride 2 at stages 2-4, global
average pooling and a Dense classifier. With ``pool="strided_conv"`` it is the plain baseline
(11,173,962 parameters for ResNet-18 with 10 classes, as the reference).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax

from invariance import pooling
from invariance.models.cnn import CONV_PADDINGS, _check_pool, _pool_options, check_input
from invariance.models.layers import Pool, check_kind

__all__ = ["NORMS", "BasicBlock", "ResNet", "ResNet18", "ResNetTiny"]

#: Normalisation after each convolution: BatchNorm ("batch_stats" collection) or none.
NORMS = ("batch", "none")

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    Without downsampling: conv1 3x3 -> BN -> ReLU -> conv2 3x3 -> BN, identity shortcut (a
    1x1 conv + BN when the channel count changes). With ``downsample`` (halving H and W):

    - "strided_conv" (baseline): conv1 has stride 2; shortcut 1x1 conv stride 2 -> BN.
    - "aps" (Chaman & Dokmanić 2021): conv1 (stride 1) -> BN -> ReLU -> APS; the shortcut
      takes the SAME polyphase component of ``x`` (as achaman2/truly_shift_invariant_cnns),
      then 1x1 conv -> BN. Exactly shift-equivariant with circular convs.
    - "blur" / "max_blur" (Zhang 2019) and every other kind: conv1 (stride 1) -> BN -> ReLU
      -> Pool(kind, 2, 2) (the strided conv becomes conv + ReLU + BlurPool for "blur"); the
      shortcut is Pool(kind, 2, 2) on ``x`` -> 1x1 conv -> BN (Zhang's order: pooling before
      the 1x1 conv, equal to the reverse for the linear kinds, and it keeps the pooled values
      non-negative, as "lp" and "stochastic" need, since ``x`` follows a ReLU).
    - "none": no downsampling at all (stride 1 everywhere).

    Attributes:
        features: output channels.
        downsample: halve H and W (first block of stages 2-4).
        pool: the downsampling kind.
        pool_options: its options (frozen pairs).
        conv_padding: "SAME" or "CIRCULAR".
        norm: "batch" or "none".
    """

    features: int
    downsample: bool = False
    pool: str = "strided_conv"
    pool_options: Any = ()
    conv_padding: str = "SAME"
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kind = self.pool if self.downsample else "none"
        strided = kind == "strided_conv"
        conv = functools.partial(nn.Conv, use_bias=self.norm == "none", kernel_init=_CONV_INIT)
        norm = functools.partial(_norm, self.norm, train)
        y = conv(self.features, (3, 3), 2 if strided else 1, self.conv_padding, name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        index = None
        if kind == "aps":
            y, index = pooling.aps_pool_with_index(y, stride=2, **dict(self.pool_options))
        elif kind not in ("none", "strided_conv"):
            y = Pool(kind, 2, 2, options=self.pool_options, name="pool")(y, train=train)
        y = conv(self.features, (3, 3), 1, self.conv_padding, name="conv2")(y)
        y = norm("bn2")(y)

        shortcut = x
        if kind != "none" or x.shape[-1] != self.features:
            if kind == "aps":
                shortcut, _ = pooling.aps_pool_with_index(
                    x, stride=2, **dict(self.pool_options), index=index
                )
            elif kind not in ("none", "strided_conv"):
                layer = Pool(kind, 2, 2, options=self.pool_options, name="shortcut_pool")
                shortcut = layer(x, train=train)
            proj = conv(self.features, (1, 1), 2 if strided else 1, "VALID", name="shortcut")
            shortcut = norm("shortcut_bn")(proj(shortcut))
        return nn.relu(y + shortcut)


def _norm(kind: str, train: bool, name: str) -> Any:
    """BatchNorm (torch's momentum 0.1 and eps 1e-5) named ``name``, or the identity.

    Called inside a compact method, so the BatchNorm belongs to the calling module.
    """
    if kind == "none":
        return lambda y: y
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class ResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition").

    Layers: stem Conv(width, 3x3, stride 1) -> BN -> ReLU; stage ``i`` (1-based) is
    ``stage_sizes[i-1]`` :class:`BasicBlock` s of ``width * 2**(i-1)`` channels, the first
    block of stages 2.. downsampling by 2 with the chosen ``pool`` kind (see
    :class:`BasicBlock`); global average pool -> Dense(num_classes). A 32x32 input gives maps
    of 32, 16, 8 and 4 pixels ("max_blur" with reflect padding also gives 16, 8, 4).

    BatchNorm keeps running statistics in the ``"batch_stats"`` collection and uses them when
    ``train=False`` (apply with ``mutable=["batch_stats"]`` when training). Convs use
    kaiming-normal (fan out) initialisation and no bias when followed by BatchNorm.

    Attributes:
        stage_sizes: blocks per stage; ResNet-18 is (2, 2, 2, 2).
        num_classes: number of logits.
        pool: the downsampling kind, one of :data:`~invariance.models.DOWNSAMPLE_KINDS`.
        width: channels of the stem and first stage.
        conv_padding: "SAME" or "CIRCULAR" (circular padding then a VALID conv). With
            "CIRCULAR", ``pool="aps"`` and ``train=False`` the network is exactly invariant
            to circular shifts when H and W are multiples of 2**(len(stage_sizes) - 1).
        norm: "batch" or "none".
        pool_options: options of every pool (see :class:`~invariance.models.Pool`), e.g.
            ``{"filter_size": 3}`` for "blur", "max_blur" or "aps".

    Returns:
        ``__call__`` returns ``(N, num_classes)``, and with ``return_features`` also
        ``{"stem", "stage1", ..., "stage4", "head"}`` ("head": the GAP vector).
    """

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    num_classes: int = 10
    pool: str = "max"
    width: int = 64
    conv_padding: str = "SAME"
    norm: str = "batch"
    pool_options: Any = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool_options", _check_pool(self.pool, self.pool_options))
        object.__setattr__(self, "stage_sizes", tuple(int(s) for s in self.stage_sizes))
        check_kind(self.conv_padding, CONV_PADDINGS, "conv_padding")
        check_kind(self.norm, NORMS, "norm")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False) -> Any:
        check_input(self, x, "stem")
        feats: dict[str, jax.Array] = {}
        options = _pool_options(self.pool, self.pool_options, self.conv_padding)
        stem = nn.Conv(
            self.width,
            (3, 3),
            padding=self.conv_padding,
            use_bias=self.norm == "none",
            kernel_init=_CONV_INIT,
            name="stem",
        )
        x = feats["stem"] = nn.relu(_norm(self.norm, train, "stem_bn")(stem(x)))
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                x = BasicBlock(
                    self.width * 2**i,
                    downsample=i > 0 and j == 0,
                    pool=self.pool,
                    pool_options=options,
                    conv_padding=self.conv_padding,
                    norm=self.norm,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)
            feats[f"stage{i + 1}"] = x
        z = feats["head"] = pooling.global_pool(x, kind="avg")
        logits = nn.Dense(self.num_classes, name="classifier")(z)
        return (logits, feats) if return_features else logits


#: ResNet-18 for 32x32 inputs (CIFAR layout): ``ResNet(stage_sizes=(2, 2, 2, 2))``.
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))

#: A tiny ResNet for tests (flax examples' ``_ResNet1``): one block per stage, width 8.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), width=8)
