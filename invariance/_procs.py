"""Child processes: the one watcher that ends them with their parent (the sweep's process pool
and the benchmark harness's fresh processes both install it), and the sweep workers' shares of
the CPU cores.

Why the cores are split: XLA:CPU gives every process a thread pool as large as the cores it may
run on, so N workers on all cores run N x cores threads that preempt each other. A worker
pinned to its own cores (``os.sched_setaffinity``, before its XLA backend starts) gets a pool of
that size. ``python scripts/bench_processes.py`` measures it: on the 2-core development VM, the
3-seed SmallCNN train step ran 1.47x the steps per second in two pinned 1-core workers as in
one process on both cores, and 1.37x in two unpinned workers (3 rounds; the rounds spread by
about 10%, so pinned against unpinned is not resolved; results/benchmarks/processes.md).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["core_share", "end_with_parent", "stop_pool", "sweep_worker", "worker_pool"]


def end_with_parent(parent: int, period: float = 0.5) -> None:
    """Process initializer: a daemon thread ends this process (``os._exit(70)``) once its
    parent, PID ``parent``, is gone (the process was re-parented), checked every ``period``
    seconds. So a killed sweep or benchmark leaves no worker computing on."""

    def watch() -> None:
        while True:
            time.sleep(period)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def core_share(index: int, processes: int, cores: Sequence[int]) -> list[int]:
    """The CPU cores of worker ``index`` of ``processes`` workers sharing ``cores``.

    With at least as many cores as workers, each worker gets a contiguous slice of the sorted
    cores and the slices differ in size by at most one; with more workers than cores, worker
    ``i`` gets core ``i mod len(cores)`` alone.

    Args:
        index: the worker's number, ``0 <= index < processes``.
        processes: how many workers share the cores.
        cores: the core IDs to share (e.g. ``os.sched_getaffinity(0)``), at least one.

    Returns:
        A non-empty sorted list of core IDs.
    """
    cores = sorted(cores)
    if not cores or not 0 <= index < processes:
        raise ValueError(f"no share {index} of {processes} workers on cores {cores}")
    n = len(cores)
    if processes >= n:
        return [cores[index % n]]
    return cores[index * n // processes : (index + 1) * n // processes]


def sweep_worker(parent: int, counter: Any = None, processes: int = 1) -> None:
    """Process initializer of the sweep's pool: :func:`end_with_parent`, then (with a shared
    ``counter``, a ``multiprocessing.Value("i")`` that numbers the workers) pins this process
    to its :func:`core_share` of the cores it may use. It runs before the worker's first cell,
    so before JAX starts its CPU backend, whose thread pool then has the share's size."""
    end_with_parent(parent)
    if counter is None or not hasattr(os, "sched_setaffinity"):
        return
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    os.sched_setaffinity(0, core_share(index % processes, processes, os.sched_getaffinity(0)))


def worker_pool(processes: int, *, pin_cores: bool = True) -> cf.ProcessPoolExecutor:
    """The sweep's process pool: ``processes`` spawned workers (JAX is not fork-safe), each
    started by :func:`sweep_worker`: it ends with this process and, with ``pin_cores``, runs
    on its own :func:`core_share` of the cores. ``scripts/bench_processes.py`` times workers
    made by this same function."""
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0) if pin_cores else None
    return cf.ProcessPoolExecutor(
        processes,
        mp_context=ctx,
        initializer=sweep_worker,
        initargs=(os.getpid(), counter, processes),
    )


def stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stops ``pool`` now: cancels its queued tasks and ends the workers running tasks (SIGTERM).

    ``shutdown(cancel_futures=True)`` alone lets running tasks finish, and the interpreter joins
    the workers at exit, so a sweep whose cell raised would compute on for as long as its other
    cells take (half an hour on the full study) after printing the error.
    """
    if terminate := getattr(pool, "terminate_workers", None):  # Python 3.14+
        terminate()
        return
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
