"""Evaluation: pure apply functions for one model, and chunked, vmapped test accuracy."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from invariance import transforms
from invariance.train._seeds import map_seeds, resolve_vmap_seeds

DATA_AXIS = "data"


to_float = transforms.to_float  # one image-scale rule for train and measure


def _eval_rngs() -> dict[str, jax.Array]:
    # Fixed keys, for models whose eval path still asks for one (none should use it).
    key = jax.random.key(0)
    return {"pool": key, "dropout": key}


def make_apply_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """A pure ``apply_fn(variables, images) -> logits`` for ONE model, in eval mode.

    The function is not jitted (jit or vmap it as needed); it converts uint8 images to float
    in [0, 1] itself, so the measurement code can feed raw dataset images or transformed floats.

    Args:
        model: the Flax module (e.g. ``TrainResult.model``).

    Returns:
        ``apply_fn(variables, images)``: ``variables`` of one seed (``{"params": ...}`` and
        maybe ``"batch_stats"``; take seed ``i`` of a stacked tree with
        ``jax.tree.map(lambda a: a[i], variables)``), ``images`` uint8 or float
        ``(N, H, W, C)`` -> logits float32 ``(N, num_classes)``.
    """

    def apply_fn(variables: Any, images: jax.Array) -> jax.Array:
        return model.apply(variables, to_float(images), train=False, rngs=_eval_rngs())

    return apply_fn


def make_features_fn(model: nn.Module) -> Callable[[Any, jax.Array], tuple[jax.Array, Any]]:
    """Like :func:`make_apply_fn`, returning ``(logits, features)`` (``return_features=True``).

    Args:
        model: a Flax module whose ``__call__`` takes ``return_features=True``.

    Returns:
        ``features_fn(variables, images) -> (logits (N, num_classes), features)``; the
        features are whatever the model returns with them (e.g. the penultimate activations).
    """

    def features_fn(variables: Any, images: jax.Array) -> tuple[jax.Array, Any]:
        return model.apply(
            variables, to_float(images), train=False, rngs=_eval_rngs(), return_features=True
        )

    return features_fn


@functools.partial(jax.jit, static_argnames=("model", "vmap_seeds"))
def _count_correct(
    model: nn.Module,
    variables: Any,
    images: jax.Array,
    labels: jax.Array,
    valid: jax.Array,
    vmap_seeds: int,
) -> jax.Array:
    """Correct predictions per seed over chunks: images (K, B, H, W, C) -> int32 (S,)."""
    apply_fn = make_apply_fn(model)
    num_seeds = jax.tree.leaves(variables)[0].shape[0]

    def chunk(total, xs):
        x, y, m = xs
        logits = map_seeds(lambda v: apply_fn(v, x), (variables,), vmap_seeds=vmap_seeds)
        hits = (jnp.argmax(logits, -1) == y) & m  # logits (S, B, classes)
        return total + hits.sum(-1, dtype=jnp.int32), None

    total, _ = jax.lax.scan(chunk, jnp.zeros((num_seeds,), jnp.int32), (images, labels, valid))
    return total


class Evaluator:
    """Test accuracy of stacked models on a fixed image set, placed on the devices once.

    The set is padded to whole chunks of ``batch_size`` (rounded up to a multiple of the
    device count), each chunk sharded over the mesh's batch axis; one jitted call scans over
    the chunks with the models mapped over seeds (:func:`map_seeds`), so one evaluation is one
    dispatch and the program is compiled once per model, set shape and seed count.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        mesh: Mesh | None = None,
    ):
        mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
        n = len(images)
        if n == 0 or len(labels) != n:
            raise ValueError(f"need matching, non-empty images and labels; got {n}, {len(labels)}")
        batch = -(-int(batch_size) // mesh.size) * mesh.size
        chunks = -(-n // batch)
        pad = chunks * batch - n
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([np.asarray(labels, np.int32), np.zeros((pad,), np.int32)])
        valid = np.arange(chunks * batch) < n
        sharded = NamedSharding(mesh, P(None, DATA_AXIS))
        self.replicated = NamedSharding(mesh, P())
        self.num_examples = n
        self.images = jax.device_put(images.reshape(chunks, batch, *images.shape[1:]), sharded)
        self.labels = jax.device_put(labels.reshape(chunks, batch), sharded)
        self.valid = jax.device_put(valid.reshape(chunks, batch), sharded)

    def __call__(
        self, model: nn.Module, variables: Any, *, vmap_seeds: int | None = None
    ) -> np.ndarray:
        """Accuracy per seed, float64 ``(num_seeds,)``, of stacked ``variables``."""
        variables = jax.device_put(variables, self.replicated)
        num_seeds = jax.tree.leaves(variables)[0].shape[0]
        correct = _count_correct(
            model,
            variables,
            self.images,
            self.labels,
            self.valid,
            resolve_vmap_seeds(vmap_seeds, num_seeds),
        )
        return np.asarray(jax.device_get(correct), np.float64) / self.num_examples


def evaluate(
    model: nn.Module,
    variables: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 1024,
    vmap_seeds: int | None = None,
) -> np.ndarray:
    """Top-1 accuracy of each of ``num_seeds`` stacked models (vmapped, chunked, jitted).

    Args:
        model: the Flax module.
        variables: variables stacked over seeds: every leaf has leading axis ``num_seeds``
            (as ``TrainResult.variables``; for one model add the axis with
            ``jax.tree.map(lambda a: a[None], v)``).
        images: uint8 (or float in [0, 1]) ``(N, H, W, C)``.
        labels: int ``(N,)``.
        batch_size: images per chunk over all devices (rounded up to a multiple of the device
            count); bounds memory, not the result.
        vmap_seeds: seeds per vmapped pass (see ``default_config``); None: all on GPU / TPU,
            1 on the CPU.

    Returns:
        float64 ``(num_seeds,)``: the fraction of the N images each model classifies correctly.
    """
    evaluator = Evaluator(np.asarray(images), np.asarray(labels), batch_size=batch_size)
    return evaluator(model, variables, vmap_seeds=vmap_seeds)
