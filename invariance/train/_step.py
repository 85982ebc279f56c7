"""The train step and its state: ``init_train_state`` and ``make_train_step``, the program
:func:`invariance.train.train` compiles once and calls every step (public, so benchmarks and
research code time and reuse exactly what training runs)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from invariance.train._augment import augment_batch, check_augment
from invariance.train._eval import DATA_AXIS, to_float
from invariance.train._seeds import map_seeds, resolve_vmap_seeds

# Streams folded into each model's key (see the package docstring: PRNG discipline).
INIT_STREAM, DATA_STREAM, STEP_STREAM = 0, 1, 2
# Folded into a step's key for ``config.augment`` (the pool / dropout split is unchanged).
AUGMENT_STREAM = 3


class RecompileError(RuntimeError):
    """The train step was traced a second time: a shape, dtype or sharding changed."""


def _init_variables(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> Any:
    """One model's variables for float32 inputs ``(1, *input_shape)`` (eval-mode init)."""
    from invariance.models import init_model

    return init_model(model, key, (1, *input_shape))


def _seed_keys(seed: int, seed_offset: int, num_seeds: int) -> jax.Array:
    """Model ``i``'s key: ``fold_in(key(seed), seed_offset + i)``; shape (num_seeds,)."""
    root = jax.random.key(seed)
    ids = jnp.arange(num_seeds) + seed_offset
    return jax.vmap(lambda s: jax.random.fold_in(root, s))(ids)


def _config_keys(config: ml_collections.ConfigDict) -> jax.Array:
    return _seed_keys(config.seed, config.seed_offset, config.num_seeds)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _permutations(
    seed: int, seed_offset: int, num_seeds: int, n: int, epoch: jax.Array
) -> jax.Array:
    """Each model's data order of ``epoch`` (1-based): int32 (num_seeds, n)."""

    def one(key):
        key = jax.random.fold_in(jax.random.fold_in(key, DATA_STREAM), epoch)
        return jax.random.permutation(key, n).astype(jnp.int32)

    return jax.vmap(one)(_seed_keys(seed, seed_offset, num_seeds))


@functools.lru_cache(maxsize=64)
def _jitted_init(model: nn.Module, input_shape: tuple[int, ...]) -> Callable:
    # One seed per call: compiling the vmapped init costs twice as long on the CPU (threefry),
    # and this compiled program is reused by every run of the same model in the process.
    return jax.jit(functools.partial(_init_variables, model, input_shape=input_shape))


def _default_mesh() -> Mesh:
    """The 1-D mesh ``train`` runs on: every device, axis ``"data"``."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def init_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    input_shape: tuple[int, ...],
    *,
    mesh: Mesh | None = None,
) -> dict:
    """The stacked train state of ``config.num_seeds`` models at step 0, as :func:`train`
    starts it (each seed's init key as in the package docstring), replicated on ``mesh``.

    Args:
        model: the Flax module.
        tx: the optax transformation (e.g. :func:`make_optimizer`).
        config: a config shaped like ``default_config()`` (``seed``, ``seed_offset``,
            ``num_seeds`` are read).
        input_shape: one image's shape ``(H, W, C)``.
        mesh: the device mesh; None: all devices on one ``"data"`` axis.

    Returns:
        ``{"variables", "opt_state", "step"}``: every variables and optimizer-state leaf has
        leading axis ``num_seeds``; ``step`` is int32 ``()`` 0.
    """
    mesh = _default_mesh() if mesh is None else mesh
    try:
        init = _jitted_init(model, tuple(input_shape))
    except TypeError:  # an unhashable module
        init = jax.jit(functools.partial(_init_variables, model, input_shape=tuple(input_shape)))
    keys = _config_keys(config)
    per_seed = [init(jax.random.fold_in(keys[i], INIT_STREAM)) for i in range(config.num_seeds)]
    variables = jax.tree.map(lambda *a: jnp.stack(a), *per_seed)
    state = {
        "variables": variables,
        "opt_state": jax.vmap(tx.init)(variables["params"]),
        "step": jnp.zeros((), jnp.int32),
    }
    return jax.device_put(state, NamedSharding(mesh, P()))


def _abstract_state(model, tx, config, input_shape, sharding) -> dict:
    """The train state's shapes, dtypes and shardings, without computing it (no compile)."""

    def init():
        keys = _config_keys(config)
        variables = jax.vmap(lambda k: _init_variables(model, k, tuple(input_shape)))(keys)
        opt_state = jax.vmap(tx.init)(variables["params"])
        return {"variables": variables, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}

    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), jax.eval_shape(init)
    )


def _step_fn(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    global_batch: int,
    batch_sharding: NamedSharding,
) -> Callable:
    """The (unjitted) train step for all seeds; see :func:`make_train_step`.

    ``images`` uint8 (N, H, W, C) and ``labels`` (N,) are the whole training set (replicated);
    ``perms`` int32 (num_seeds, N) the epoch's per-seed orders. The step takes batch
    ``state["step"] % steps_per_epoch`` of each order, shards it over the mesh's data axis,
    and runs forward, loss, gradient and update of every seed (:func:`map_seeds`: one
    ``jax.vmap``, or ``config.vmap_seeds`` seeds per vmapped chunk).
    """
    traces = [0]
    augment = check_augment(config.get("augment"))

    def loss_and_update(variables, opt_state, x, y, key):
        if augment:  # invariance.train._augment: per seed and step, from the step's key
            x = augment_batch(jax.random.fold_in(key, AUGMENT_STREAM), x, augment)
        params = variables["params"]
        rest = {k: v for k, v in variables.items() if k != "params"}
        k_pool, k_dropout = jax.random.split(key)
        rngs = {"pool": k_pool, "dropout": k_dropout}

        def loss_fn(p):
            if rest:
                logits, new_rest = model.apply(
                    {"params": p, **rest}, x, train=True, rngs=rngs, mutable=list(rest)
                )
            else:
                logits, new_rest = model.apply({"params": p}, x, train=True, rngs=rngs), {}
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, new_rest)

        (loss, (logits, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return {"params": params, **new_rest}, opt_state, loss, accuracy

    def step_fn(state, images, labels, perms):
        traces[0] += 1
        if traces[0] > 1:
            raise RecompileError(
                "the train step was traced twice (a shape, dtype or sharding changed); "
                "every step must reuse one compiled program"
            )
        step = state["step"]
        start = (step % steps_per_epoch) * global_batch
        idx = lax.dynamic_slice_in_dim(perms, start, global_batch, axis=1)  # (S, B)
        idx = lax.with_sharding_constraint(idx, batch_sharding)
        x = to_float(jnp.take(images, idx, axis=0))  # (S, B, H, W, C) float32 in [0, 1]
        y = jnp.take(labels, idx, axis=0)
        step_keys = jax.vmap(
            lambda k: jax.random.fold_in(jax.random.fold_in(k, STEP_STREAM), step)
        )(_config_keys(config))
        variables, opt_state, loss, accuracy = map_seeds(
            loss_and_update,
            (state["variables"], state["opt_state"], x, y, step_keys),
            vmap_seeds=resolve_vmap_seeds(config.vmap_seeds, config.num_seeds),
        )
        new_state = {"variables": variables, "opt_state": opt_state, "step": step + 1}
        return new_state, {"loss": loss, "accuracy": accuracy}

    return step_fn


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    steps_per_epoch: int,
    mesh: Mesh | None = None,
) -> jax.stages.Wrapped:
    """The train step :func:`train` runs, jitted as it runs it (shardings, donated state).

    ``step(state, images, labels, perms) -> (state, metrics)``: ``state`` as
    :func:`init_train_state` makes it (donated: do not reuse the argument); ``images`` uint8
    ``(N, H, W, C)`` and ``labels`` int32 ``(N,)`` the whole training set, replicated;
    ``perms`` int32 ``(num_seeds, N)`` each seed's data order of the epoch. The step takes
    batch ``state["step"] % steps_per_epoch`` of every order (``config.batch_size`` images per
    device, sharded over the mesh's ``"data"`` axis), converts it to float in [0, 1], and runs
    forward, softmax cross-entropy, gradient and the ``tx`` update of every seed
    (:func:`invariance.train.map_seeds` with ``config.vmap_seeds``); step ``s`` of model ``i``
    draws its ``"pool"`` / ``"dropout"`` keys as the package docstring says. ``metrics`` holds
    ``loss`` and ``accuracy``, float32 ``(num_seeds,)``, of the batch before the update.

    The function may be traced once only: a second trace (a shape, dtype or sharding changed)
    raises :class:`RecompileError`. Lower and compile it ahead of the loop as :func:`train`
    does (``step.lower(state, images, labels, perms).compile()``), or call it directly.

    Args:
        model: the Flax module, called as ``model.apply(variables, x, train=True,
            rngs={"pool", "dropout"})`` (with ``mutable`` for collections other than params).
        tx: the optax transformation.
        config: a config shaped like ``default_config()``.
        steps_per_epoch: the number of batches per epoch (``N // global batch``).
        mesh: the device mesh; None: all devices on one ``"data"`` axis.

    Returns:
        The jitted step.
    """
    mesh = _default_mesh() if mesh is None else mesh
    replicated = NamedSharding(mesh, P())
    step_fn = _step_fn(
        model,
        tx,
        config,
        steps_per_epoch=steps_per_epoch,
        global_batch=config.batch_size * mesh.size,
        batch_sharding=NamedSharding(mesh, P(None, DATA_AXIS)),
    )
    return jax.jit(
        step_fn,
        in_shardings=(replicated, replicated, replicated, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
