"""Process-level settings for CPU runs: steady glibc malloc for XLA:CPU's large buffers.

glibc's malloc and XLA:CPU: XLA allocates each program's output buffers on its worker threads.
glibc serves a large block (tens of MB) with ``mmap`` and unmaps it on free, or trims it off
the heap's top, so every call page-faults its outputs in again; how often depends on where the
first buffers landed, so the same program runs at different speeds in different processes.
Measured on the 2-core development VM: ``jax.jit(lambda x: 2 * x)`` on a 25.7 MB array took
8.4-10.5 ms with 4,000-6,300 page faults per call in some processes and ~1 ms in others; the
2x2 max-pool backward (25.7 MB output) still took 900-2,200 faults per call with one arena
alone, and 0-63 with the three settings below:

- ``MALLOC_ARENA_MAX=1``: one arena for every thread;
- ``MALLOC_MMAP_MAX_=0``: large blocks come from the heap, not from ``mmap``;
- ``MALLOC_TRIM_THRESHOLD_=2**36``: freed memory stays in the heap for reuse.

The cost is that the process keeps its peak heap until it exits (the quick reproduce peaked at
2.5 GB RSS instead of 1.2 GB, and ran in 5 min 7 s instead of 7 min 50 s). The ``invariance``
command and the benchmark scripts start themselves with these settings (unless the user set any
of the three); measured, the SmallCNN gradient step at batch 128 took 34-36 ms with them and
51-56 ms without. A script of yours can call :func:`reexec_with_steady_malloc` first. glibc
reads the settings when the process starts (``mallopt`` later does not reach the arenas that
numpy's and JAX's threads already made), hence the re-exec.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

ENV = "MALLOC_ARENA_MAX"
SETTINGS = {ENV: "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36)}


def glibc() -> bool:
    """True on Linux with glibc (where ``MALLOC_ARENA_MAX`` means something)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def reexec_with_steady_malloc(argv: Sequence[str] | None = None) -> None:
    """Restarts this Python process with :data:`SETTINGS` in its environment, unless any of
    them is set already (then nothing changes: the user chose their malloc settings) or this is
    not glibc.

    Call it first in a script's ``if __name__ == "__main__":`` block (never from library code:
    it replaces the running process). See the module docstring for why.

    Args:
        argv: the interpreter's arguments after the executable (the script or ``-m module``,
            then its arguments); default ``sys.orig_argv[1:]``, so ``python -m pkg.mod`` is
            re-run as a module, not as a file.
    """
    if any(k in os.environ for k in SETTINGS) or not glibc():
        return
    argv = list(sys.orig_argv[1:] if argv is None else argv)
    os.environ.update(SETTINGS)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv])


def malloc_note() -> str:
    """One line for a benchmark header: the malloc arena setting this process runs with."""
    if not glibc():
        return f"malloc: the platform's ({platform.system()}), no arena setting."
    set_ = [f"{k}={os.environ[k]}" for k in SETTINGS if k in os.environ]
    if not set_:
        return "malloc: glibc defaults (none of " + ", ".join(SETTINGS) + " set)."
    return f"malloc: glibc with {' '.join(set_)} (see invariance/runtime.py for why)."
