"""Shared test set-up: deterministic hypothesis, float32 JAX on the CPU."""

import os

# Tests run on the CPU whatever the machine has, so results are the same everywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=30)
settings.load_profile("ci")
