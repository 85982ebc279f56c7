"""Shared test set-up: deterministic hypothesis, float32 JAX on the CPU."""

import os
import warnings

# Tests run on the CPU whatever the machine has, so results are the same everywhere.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=30)
settings.load_profile("ci")

MAX_WORKERS = 4  # each worker is a JAX process compiling its own programs (~0.5 GB each)


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default in pyproject.toml): one pytest-xdist worker per core, at most
    :data:`MAX_WORKERS`. On 2 cores the suite takes 4.6 min instead of 7.4 min in one process."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- the fast selection

# Tests left out of the inner loop, ``python -m pytest -m fast`` (CONTRIBUTING.md, "Tests"):
# each took more than about a second in one process (``python -m pytest -n 0 -m "not slow"
# --durations=0``; the time is the slowest parameter's, on the 2-core CI VM). Listed by file and
# test function: every parametrisation of a listed test is left out.
NOT_FAST: tuple[str, ...] = ()


@pytest.hookimpl(tryfirst=True)  # before -m / -k deselect, so that -m fast sees the marks
def pytest_collection_modifyitems(config, items):
    """Marks every collected test ``fast`` except the ``slow`` ones and those in
    :data:`NOT_FAST`. On a whole-suite run, warns about a ``NOT_FAST`` entry that names no
    collected test (renamed or removed: update the list)."""
    seen = set()
    for item in items:
        name = item.nodeid.split("[", 1)[0]
        seen.add(name)
        if name not in NOT_FAST and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)
    stale = [n for n in NOT_FAST if n not in seen]
    if stale and config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        warnings.warn(pytest.PytestWarning(f"NOT_FAST names no test: {stale}"), stacklevel=1)


# ----------------------------------------------------------------------------- jit / vmap checker


def _check_jit_vmap(fn, *batch, atol=0.0, rtol=0.0):
    """dm_pix's pattern: ``fn`` per element of ``batch`` (arrays sharing a leading axis) gives
    the same under ``jax.jit`` as eagerly, and ``jax.vmap(fn)`` (eager and jitted) equals the
    stacked loop. Returns the stacked loop (a pytree like ``fn``'s output)."""
    import jax
    import numpy as np

    n = len(batch[0])
    jitted = jax.jit(fn)
    loop = []
    for i in range(n):
        args = [b[i] for b in batch]
        eager = fn(*args)
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol),
            jitted(*args),
            eager,
        )
        loop.append(eager)
    want = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *loop)
    for got in (jax.vmap(fn)(*batch), jax.jit(jax.vmap(fn))(*batch)):
        jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol), got, want)
    return want


@pytest.fixture
def check_jit_vmap():
    """The shared "jit == eager, vmap == loop" checker: ``check_jit_vmap(fn, *batch, atol=,
    rtol=)``; see :func:`_check_jit_vmap`."""
    return _check_jit_vmap
