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

__all__ = [
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
