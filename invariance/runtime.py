"""Process-level settings for timing runs on the CPU.

glibc's malloc and XLA:CPU: XLA allocates each program's output buffers on its worker threads.
glibc gives threads their own malloc arenas; a worker arena serves a large buffer (tens of MB)
with ``mmap`` and unmaps it on free, so every call page-faults its outputs in again. Measured on
the 2-core development VM: ``jax.jit(lambda x: 2 * x)`` on a 25.7 MB array took 8.4-10.5 ms
with 4,000-6,300 page faults per call in some processes and ~1 ms in others, depending on where
the first buffers landed; started with ``MALLOC_ARENA_MAX=1`` (one arena, which keeps freed
blocks for reuse) it took 0.85-1.3 ms in every process. The benchmark scripts therefore run with
one arena; for CPU training, ``MALLOC_ARENA_MAX=1 invariance ...`` does the same.

glibc reads the setting when the process starts (``mallopt`` later does not reach the arenas
that numpy's and JAX's threads already made), hence the re-exec.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

ENV = "MALLOC_ARENA_MAX"


def glibc() -> bool:
    """True on Linux with glibc (where ``MALLOC_ARENA_MAX`` means something)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def reexec_with_one_malloc_arena(argv: Sequence[str] | None = None) -> None:
    """Restarts this Python process with ``MALLOC_ARENA_MAX=1`` if it is not set yet.

    Call it first in a script's ``if __name__ == "__main__":`` block (never from library code:
    it replaces the running process). A value already in the environment is kept (the user's
    choice wins), and nothing happens off glibc. See the module docstring for why.

    Args:
        argv: the script and its arguments; default ``sys.argv``.
    """
    if ENV in os.environ or not glibc():
        return
    argv = list(sys.argv if argv is None else argv)
    os.environ[ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv])


def malloc_note() -> str:
    """One line for a benchmark header: the malloc arena setting this process runs with."""
    if not glibc():
        return f"malloc: the platform's ({platform.system()}), no arena setting."
    value = os.environ.get(ENV)
    if value is None:
        return f"malloc: glibc default arenas ({ENV} unset)."
    return f"malloc: glibc with {ENV}={value} (see invariance/runtime.py for why)."
