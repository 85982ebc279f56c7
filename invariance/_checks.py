"""Tiny private helpers shared by the lowest layers (transforms, pooling, measure): pure JAX.

Nothing here imports another module of the package, so any module may import it.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["is_concrete"]


def is_concrete(v: Any) -> bool:
    """True when ``v`` has a value now (not a jax Tracer inside jit / vmap / grad).

    Options are validated only when concrete: under a trace their value is unknown, and
    branching on it would break ``jit`` and ``vmap``.
    """
    return not isinstance(v, jax.core.Tracer)
