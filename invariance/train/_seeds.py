"""The seed axis: how many seeds one vmapped pass holds, and mapping a function over seeds.

Training (the step) and evaluation both run ``num_seeds`` stacked models in one program;
:func:`map_seeds` is how either maps one model's function over the leading seed axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def resolve_vmap_seeds(vmap_seeds: int | None, num_seeds: int) -> int:
    """How many seeds one vmapped pass holds: ``vmap_seeds``, or by default all of them on
    GPU / TPU and 1 on the CPU.

    vmap over conv kernels becomes a grouped convolution (``feature_group_count`` = seeds),
    which XLA:CPU runs several times slower per model than an ordinary one
    (``scripts/bench_train.py`` measures it), so on the CPU each seed gets its own copy of the
    model inside the one program instead.
    """
    if vmap_seeds is None:
        vmap_seeds = 1 if jax.default_backend() == "cpu" else num_seeds
    return max(1, min(int(vmap_seeds), num_seeds))


def map_seeds(fn: Callable, xs: tuple, *, vmap_seeds: int | None = None) -> Any:
    """``jax.vmap(fn)(*xs)`` over the leading (seed) axis, ``vmap_seeds`` seeds at a time.

    All seeds at once is a plain ``jax.vmap``. Fewer splits the seeds into chunks, each
    vmapped (or, for 1, called as is: no size-1 vmap), unrolled in the traced program and
    concatenated: one compiled program still, with ``num_seeds / vmap_seeds`` copies of
    ``fn`` (compile time grows accordingly). Not ``jax.lax.map``: XLA:CPU runs convolution
    gradients inside a loop body ~60x slower. The results equal the vmapped ones up to float
    rounding.

    Args:
        fn: a function of one seed's slices of ``xs``.
        xs: a tuple of pytrees whose leaves all have the seed axis first.
        vmap_seeds: seeds per vmapped chunk; None: :func:`resolve_vmap_seeds`'s default (all
            on GPU / TPU, 1 on the CPU).

    Returns:
        ``fn``'s outputs stacked over seeds, as ``jax.vmap(fn)(*xs)`` would give.
    """
    num_seeds = jax.tree.leaves(xs)[0].shape[0]
    vmap_seeds = resolve_vmap_seeds(vmap_seeds, num_seeds)
    if vmap_seeds > 1 and vmap_seeds >= num_seeds:
        return jax.vmap(fn)(*xs)
    outs = []
    for start in range(0, num_seeds, vmap_seeds):
        part = jax.tree.map(lambda a, s=start: a[s : s + vmap_seeds], xs)
        if vmap_seeds == 1:
            out = fn(*jax.tree.map(lambda a: a[0], part))
            outs.append(jax.tree.map(lambda a: a[None], out))
        else:
            outs.append(jax.vmap(fn)(*part))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)
