"""The benchmark harness: one timing protocol and one provenance header for every benchmark.

The scripts under ``scripts/`` (``bench_pooling``, ``bench_train``, ``bench_measure``) and any
research code that times its own variants use it, so every figure they print is made the same
way:

1. **Peers in the same run.** The variants compared run in the same process and are reported
   as ratios to a peer measured alongside (``ratio``), never against a number from another day.
2. **Interleaved rounds, a seeded random order each round** (:func:`interleaved`): every round
   times each peer once, so a load that comes and goes on a shared machine hits every peer
   alike; the order is drawn afresh each round (:func:`round_orders`), so no peer always
   follows the same neighbour (whether the neighbour evicted its inputs from the cache or left
   them warm is the same lottery for all). A cyclic rotation is not enough: it keeps every
   peer's neighbour fixed.
3. **The median** of a peer's rounds is its time in that process: robust to the rounds a
   neighbour process disturbed, unlike the mean, and not biased towards a lucky round, unlike
   the minimum.
4. **Fresh processes** (:func:`in_processes`): the whole measurement runs in N fresh Python
   processes and each time is the median over processes of the per-process medians
   (:func:`combine`): on a VM a process can land in a slow or a fast mode for its whole life
   (e.g. where its buffers fall in memory): six one-process runs of the same commit once gave
   a pooling ratio of 0.43 twice and 0.52-0.54 four times.
5. **The provenance header** (:func:`header`): the command that makes the table (with the
   environment switches that change what runs), commit, jax / flax versions, device, CPU,
   date and the malloc settings, so a number can be traced and regenerated.

>>> from invariance import benchmarking                                # doctest: +SKIP
>>> times = benchmarking.interleaved({"a": f, "b": g}, rounds=30, seed=0)  # doctest: +SKIP
>>> med = benchmarking.medians(times)                                   # doctest: +SKIP
>>> benchmarking.ratio(med, "a", "b")                                   # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

from invariance._procs import end_with_parent

__all__ = [
    "ENV_SWITCHES",
    "combine",
    "command_line",
    "conditions",
    "header",
    "in_fresh_process",
    "in_processes",
    "interleaved",
    "medians",
    "ratio",
    "round_orders",
    "xla_op_times",
]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

# Environment variables that change what a benchmark runs: written into its command line.
ENV_SWITCHES = ("XLA_FLAGS", "INVARIANCE_CPU_KERNELS", "INVARIANCE_CPU_KERNEL_ISA")


def round_orders(names: Sequence[K], rounds: int, seed: int = 0) -> list[list[K]]:
    """The order of the peers in each round: a fresh permutation per round, seeded.

    Args:
        names: the peers.
        rounds: how many rounds.
        seed: seeds ``numpy.random.default_rng``; the same seed gives the same orders.

    Returns:
        ``rounds`` lists, each a permutation of ``names``.
    """
    rng = np.random.default_rng(seed)
    return [[names[i] for i in rng.permutation(len(names))] for _ in range(rounds)]


def interleaved(
    fns: Mapping[K, Callable[[], object]],
    *,
    rounds: int,
    seed: int = 0,
    rounds_of: Mapping[K, int] | None = None,
    before: Callable[[], object] | None = None,
    warmup: int = 2,
) -> dict[K, list[float]]:
    """Wall seconds of each ``fn()``, one per round, timed in interleaved rounds.

    Every round times each peer once, in the round's order from :func:`round_orders`. Each
    ``fn`` must block until its work is done (``jax.block_until_ready``).

    Args:
        fns: peer name -> a function of no arguments.
        rounds: rounds to time.
        seed: the seed of the orders (give each process its own).
        rounds_of: peer -> how many of the rounds include it (slow peers can take fewer; the
            first ``rounds_of[name]`` rounds); default ``rounds`` for all.
        before: run untimed before every timed call (e.g. a sweep that evicts the caches).
        warmup: untimed calls of each ``fn`` first (compile, first touch).

    Returns:
        peer -> list of seconds, in round order.

    Raises:
        ValueError: ``rounds`` < 1, or ``rounds_of`` names a peer not in ``fns``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    rounds_of = dict(rounds_of or {})
    unknown = sorted(map(str, set(rounds_of) - set(fns)))
    if unknown:
        raise ValueError(f"rounds_of names unknown peers {unknown}; peers are {list(fns)}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[K, list[float]] = {name: [] for name in fns}
    for r, order in enumerate(round_orders(list(fns), rounds, seed)):
        for name in order:
            if r >= rounds_of.get(name, rounds):
                continue
            if before is not None:
                before()
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def medians(times: Mapping[K, Sequence[float]]) -> dict[K, float]:
    """peer -> the median of its rounds (the per-process statistic)."""
    return {name: float(np.median(v)) for name, v in times.items()}


def combine(runs: Sequence[Mapping[K, float]]) -> dict[K, float]:
    """One figure per peer from several processes: the median over processes.

    Args:
        runs: one mapping peer -> seconds (or any statistic) per process.

    Returns:
        peer -> the median over processes.

    Raises:
        ValueError: no runs, or the processes measured different peers (a result that could
            not be vouched for is refused, not averaged).
    """
    if not runs:
        raise ValueError("no runs to combine")
    keys = list(runs[0])
    for i, run in enumerate(runs[1:], 1):
        if set(run) != set(keys):
            raise ValueError(
                f"process {i} measured {sorted(map(str, run))}, process 0 {sorted(map(str, keys))}"
            )
    return {k: float(np.median([run[k] for run in runs])) for k in keys}


def ratio(times: Mapping[K, float], name: K, peer: K) -> float:
    """``times[name] / times[peer]``: below 1 means ``name`` is faster than ``peer``."""
    return times[name] / times[peer]


def in_fresh_process(target: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``target(*args, **kwargs)`` in a new Python process (``spawn``); returns its result.

    The child starts from nothing (no JAX state, fresh allocator, fresh buffer placement) and
    inherits the environment, and ends itself if this process dies (a killed benchmark
    leaves nothing running). ``target`` must be importable by name (a module-level function
    of a module or of the running script) and its arguments and result picklable. An
    exception in the child is raised here.
    """
    context = multiprocessing.get_context("spawn")
    watch = {"initializer": end_with_parent, "initargs": (os.getpid(),)}
    with ProcessPoolExecutor(max_workers=1, mp_context=context, **watch) as pool:
        return pool.submit(target, *args, **kwargs).result()


def in_processes(
    target: Callable[..., T],
    processes: int,
    *args: Any,
    report: Callable[[int, T], object] | None = None,
    **kwargs: Any,
) -> list[T]:
    """``target(*args, seed=p, **kwargs)`` in ``processes`` fresh processes, one after another.

    Process ``p`` gets ``seed=p``, so each process draws its own sequence of round orders.

    Args:
        target: see :func:`in_fresh_process`.
        processes: how many processes (>= 1).
        report: called as ``report(p, result)`` after each process (progress lines).

    Returns:
        The results, in process order.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1; got {processes}")
    results = []
    for p in range(processes):
        result = in_fresh_process(target, *args, seed=p, **kwargs)
        if report is not None:
            report(p, result)
        results.append(result)
    return results


def command_line(script: str, argv: Sequence[str]) -> str:
    """The shell command that reran this benchmark: the :data:`ENV_SWITCHES` that are set,
    ``python <script>`` and the arguments, quoted."""
    prefix = "".join(
        f"{name}={shlex.quote(os.environ[name])} " for name in ENV_SWITCHES if os.environ.get(name)
    )
    return f"{prefix}python {script} {shlex.join(argv)}".rstrip()


def header(command: str, *, conditions: str | None = None) -> list[str]:
    """The provenance lines every benchmark table starts with (Markdown, hard line breaks).

    Args:
        command: what made the table (:func:`command_line`).
        conditions: the measuring conditions in words (load, what else ran), if known.

    Returns:
        Lines: the command; device, backend, CPU, device count, jax and flax versions, commit
        and date (:func:`invariance.io.provenance`); the malloc settings
        (:func:`invariance.runtime.malloc_note`); the conditions.
    """
    from invariance import runtime
    from invariance.io import provenance

    prov = provenance()
    lines = [
        f"Command: `{command}`  ",
        f"Device: {prov['device']} ({prov['backend']}, {prov['cpu']}, {prov['device_count']} "
        f"device(s)); jax {prov['jax']}, flax {prov['flax']}; commit {prov['git_commit']}; "
        f"{prov['date']}.  ",
        f"{runtime.malloc_note()}  ",
    ]
    if conditions:
        lines.append(f"Conditions: {conditions}  ")
    return lines


def conditions(load_before: float, note: str = "") -> str:
    """The measuring conditions in words: the 1-minute load average before the timing
    (``os.getloadavg()[0]`` taken then) and now, the core count, and ``note``."""
    text = (
        f"1-minute load average {load_before:.1f} before the timing and "
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores"
    )
    return f"{text}; {note}" if note else text


def xla_op_times(run: Callable[[], object], hlo: str, steps: int) -> list[dict]:
    """XLA op times of ``run()`` (``jax.profiler``), summed over threads, per step: where
    the time of a compiled program goes.

    Args:
        run: runs the program ``steps`` times and blocks.
        hlo: the program's HLO text (``compiled.as_text()``), to name each op's source.
        steps: how many times ``run`` runs it (the times are divided by it).

    Returns:
        Rows ``{op, what, ms}`` sorted by time; ``what`` is the HLO instruction's output shape
        and the JAX operation it came from (its metadata ``op_name``), when it has one.
    """
    import collections
    import glob
    import re
    import tempfile

    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            run()
        data = ProfileData.from_file(sorted(glob.glob(f"{d}/**/*.xplane.pb", recursive=True))[-1])
        total: collections.Counter = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if line.name == "python":
                    continue
                for ev in line.events:
                    if not ev.name.startswith(("ThunkExecutor", "$")):
                        total[ev.name] += ev.duration_ns
    rows = []
    for op, ns in total.most_common():
        m = re.search(rf"^\s*(?:ROOT )?%?{re.escape(op)} = (\S+) ", hlo, re.M)
        if m is None:
            continue  # not an HLO instruction of the step (runtime bookkeeping)
        line = hlo[m.start() : hlo.find("\n", m.start())]
        src = re.search(r'op_name="([^"]+)"', line)
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if src is None and called:  # a fusion without metadata: look inside its computation
            body = re.search(rf"^%?{re.escape(called.group(1))} .*?^}}", hlo, re.M | re.S)
            src = body and re.search(r'op_name="([^"]+)"', body.group(0))
        what = m.group(1) + (f" <- {src.group(1)}" if src else "")
        rows.append({"op": op, "what": what, "ms": ns / steps / 1e6})
    return rows
