"""invariance: how stable are a CNN's outputs under translations and occlusions?

A JAX research framework: pure pooling and transform functions, Flax CNN variants with a
pooling choice, training that scales from a CPU to many devices, and stability metrics and
measurement protocols that write tidy rows for paper-style tables.
"""

from invariance import data, io, metrics, pooling, transforms
from invariance.pooling import (
    POOLS,
    aps_pool,
    avg_pool,
    blur_pool,
    global_pool,
    lp_pool,
    max_blur_pool,
    max_pool,
    min_pool,
    mixed_pool,
    output_size,
    pool,
    stochastic_pool,
)

__version__ = "0.1.0"

# Heavier modules (optax, orbax, matplotlib behind them) load on first use:
# ``invariance.train`` or ``from invariance import train`` both work.
_LAZY = ("config", "experiment", "measure", "models", "report", "sweep", "train")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"invariance.{name}")
    raise AttributeError(f"module 'invariance' has no attribute {name!r}")


__all__ = [
    "config",
    "experiment",
    "measure",
    "models",
    "report",
    "sweep",
    "train",
    "POOLS",
    "aps_pool",
    "avg_pool",
    "blur_pool",
    "global_pool",
    "lp_pool",
    "max_blur_pool",
    "max_pool",
    "min_pool",
    "mixed_pool",
    "output_size",
    "pool",
    "data",
    "io",
    "metrics",
    "pooling",
    "transforms",
    "stochastic_pool",
]
