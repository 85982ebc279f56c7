"""Shared test set-up: deterministic hypothesis, float32 JAX on the CPU."""

import os

# Tests run on the CPU whatever the machine has, so results are the same everywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=30)
settings.load_profile("ci")

MAX_WORKERS = 4  # each worker is a JAX process compiling its own programs (~0.5 GB each)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default in pyproject.toml): one pytest-xdist worker per core, at most
    :data:`MAX_WORKERS`. On 2 cores the suite takes 4.6 min instead of 7.4 min in one process."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
