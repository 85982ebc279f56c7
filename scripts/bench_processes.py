"""Cells at once on a CPU: train-step throughput of N pinned worker processes against one.

    python scripts/bench_processes.py [--processes N] [--window 15] [--reps 3] [--seeds 3]

What ``invariance sweep --processes N`` and ``invariance reproduce --processes N`` buy on this
machine. Every configuration runs the max-pooling SmallCNN train step exactly as
``invariance.train`` builds it (batch 128, synthetic data) in fresh worker processes started
by the sweep's own pool maker (``invariance._procs.worker_pool``):

* ``1 process``: one worker on every core, what ``--processes 1`` does (the peer);
* ``N pinned``: N workers at once, each on its own share of the cores
  (``invariance._procs.core_share``), what ``--processes N`` does;
* ``N unpinned``: N workers at once, each free to use every core (each XLA thread pool as
  large as all the cores): what pinning avoids.

Each step trains ``--seeds`` models in one program (the full study's cells train 3 seeds so).
The workers compile, meet at a barrier, then count their steps in the same ``--window``
seconds (a step by the fraction of its time inside the window), and go on stepping a little
longer so that no worker idles while another is timed. A configuration's throughput is the
sum over its workers of steps per second. The configurations run in ``--reps`` rounds, each
round in a fresh seeded random order (``invariance.benchmarking.round_orders``); a
configuration's figure is the median over its rounds, and the table gives it as a ratio to
the peer's. results/benchmarks/processes.md was made before steps were counted by fraction
(whole steps ending in the window: about half a step per worker less, ~1% at 15 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

from invariance import benchmarking, runtime
from invariance._procs import worker_pool


def _bench_train():
    """``scripts/bench_train.py``, imported by its path (its train step is the one timed)."""
    if "bench_train" not in sys.modules:
        path = Path(__file__).with_name("bench_train.py")
        spec = importlib.util.spec_from_file_location("bench_train", path)
        assert spec is not None and spec.loader is not None
        sys.modules["bench_train"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["bench_train"]


def worker_steps(window: float, barrier, seeds: int = 3) -> dict:
    """In a pool worker: compiles the train step of ``seeds`` models in one program (as a
    cell trains its seeds), waits for the other workers, then steps for ``window`` seconds
    and counts the steps inside it (a step by the fraction of its time in the window, so a
    window shorter than a step still measures); it keeps stepping for :data:`TAIL` seconds
    more, so every worker stays busy until every window has closed (a worker that stopped
    early would hand its cores to the others and flatter the unpinned configuration).
    Returns ``{"steps", "seconds", "cores"}`` (this process's cores)."""
    run = _bench_train().jax_variant(seeds, breakdown=False)["step"]
    run(2)  # compile and first touch
    barrier.wait(timeout=600)  # a worker that died does not hang the others
    start = time.monotonic()  # the barrier releases every worker at once: the windows align
    end = start + window
    steps = 0.0  # each step counts by the fraction of its time inside the window
    while True:
        a = time.monotonic()
        run(1)
        b = time.monotonic()
        steps += max(0.0, min(b, end) - max(a, start)) / (b - a)
        if b >= end + TAIL:
            break
    return {"steps": steps, "seconds": window, "cores": sorted(os.sched_getaffinity(0))}


#: Seconds every worker keeps stepping after its window (longer than the barrier's skew and
#: than one step, so no worker stops while another's window is open).
TAIL = 2.0


def one_configuration(processes: int, pin: bool, window: float, seeds: int = 3) -> dict:
    """Runs ``processes`` workers at once (pinned to their shares with ``pin``). Returns
    ``{"steps_per_s": total, "workers": [worker_steps results]}``."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        with worker_pool(processes, pin_cores=pin) as pool:  # as the sweep makes its pool
            futures = [pool.submit(worker_steps, window, barrier, seeds) for _ in range(processes)]
            workers = [f.result() for f in futures]
    return {"steps_per_s": sum(w["steps"] / w["seconds"] for w in workers), "workers": workers}


def run_rounds(n: int, window: float, reps: int, seeds: int = 3) -> dict[str, dict]:
    """Every configuration once per round, ``reps`` rounds in seeded random orders.
    Returns label -> ``{"processes", "pin", "rates": [steps/s per round], "cores": [...]}``."""
    configs = {"1 process": (1, True), f"{n} pinned": (n, True), f"{n} unpinned": (n, False)}
    out = {
        k: {"processes": p, "pin": pin, "rates": [], "cores": None}
        for k, (p, pin) in configs.items()
    }
    for r, order in enumerate(benchmarking.round_orders(list(configs), reps)):
        for label in order:
            processes, pin = configs[label]
            result = one_configuration(processes, pin, window, seeds)
            out[label]["rates"].append(result["steps_per_s"])
            out[label]["cores"] = [w["cores"] for w in result["workers"]]
            print(f"round {r + 1}: {label}: {result['steps_per_s']:.2f} steps/s", flush=True)
    return out


def render(parts: dict[str, dict], args, command: str, conditions: str) -> str:
    """The Markdown document: provenance, the table of throughputs and ratios."""
    peer = float(np.median(parts["1 process"]["rates"]))
    rows = []
    for label, part in parts.items():
        rate = float(np.median(part["rates"]))
        cores = "; ".join(",".join(map(str, c)) for c in part["cores"])
        each = " / ".join(f"{x:.2f}" for x in part["rates"])
        rows.append(
            f"| {label} | {part['processes']} | {cores} | {rate:.2f} | {each} | "
            f"{1000 * part['processes'] / rate:.0f} | {rate / peer:.2f}x |"
            if rate > 0 and peer > 0
            else f"| {label} | {part['processes']} | {cores} | {rate:.2f} | {each} | n/a | n/a |"
        )
    return "\n".join(
        [
            "# Cells at once: train-step throughput of N pinned processes",
            "",
            *benchmarking.header(command, conditions=conditions),
            f"SmallCNN(pool=max), batch 128, {args.seeds} seeds in one program (the train step "
            "as `invariance.train` builds it for a cell); "
            f"the workers meet at a barrier, then each counts its steps in the same "
            f"{args.window:g} s window, a step by the fraction of its time inside it (and keeps "
            f"stepping {TAIL:g} s more, so none idles while "
            f"another is timed); {args.reps} rounds in seeded random orders; steps/s: the median "
            "over the rounds of the sum over the workers.",
            "",
            "| configuration | processes | cores of each worker | steps/s | rounds | ms per step "
            "and worker | throughput vs 1 process |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=max(2, cores or 1), help="default: cores")
    ap.add_argument("--window", type=float, default=15.0, help="timed seconds per worker")
    ap.add_argument("--reps", type=int, default=3, help="rounds")
    ap.add_argument("--seeds", type=int, default=3, help="models per step (the full study's 3)")
    ap.add_argument("--note", default="", help="the measuring conditions, for the header")
    ap.add_argument("--out", default="results/benchmarks/processes.md")
    args = ap.parse_args(argv)
    if args.processes < 2 or min(args.window, args.reps, args.seeds) <= 0:
        ap.error("--processes must be >= 2, --window, --reps and --seeds > 0")
    command = benchmarking.command_line(
        "scripts/bench_processes.py", sys.argv[1:] if argv is None else argv
    )
    from invariance.io import atomic_write_text

    load = os.getloadavg()[0]
    parts = run_rounds(args.processes, args.window, args.reps, args.seeds)
    text = render(parts, args, command, benchmarking.conditions(load, args.note))
    print(text)
    print(json.dumps(parts))
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    runtime.reexec_with_steady_malloc()  # before any timing: see invariance/runtime.py
    sys.exit(main())
