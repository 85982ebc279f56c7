"""Measurement speed: shift_consistency against a straightforward per-shift Python loop.

    python scripts/bench_measure.py [--images 10000] [--pairs 16] [--chunk 500] [--reps 3]

A SmallCNN(pool="max") is trained for one epoch on Fashion-MNIST (synthetic data with
``--dataset synthetic``), then Zhang 2019 shift consistency (circular shifts, +-3 px, two
shifted copies per pair, offsets drawn per image) is measured over the test images x 16 shift
pairs twice, with the same model and the same offsets:

* ours: ``invariance.measure.shift_consistency`` with its default chunking (one jitted
  program per chunk; the shifts are a vmap inside it; a chunk holds
  ``model_batch // (2 * pairs)`` images so each forward call sees about 64 shifted copies on
  the CPU); its time includes its compile, as the API compiles once per call;
* the loop: for each pair, for each batch of ``--chunk`` images, shift the images on the host
  (numpy, per-image offsets) and call the jitted model on each shifted copy -- what one
  writes first; and the same loop with batches of the model batch ours uses (the loop given
  our tuning);
* the forward-only reference: the jitted model alone on as many unshifted float32
  images, at that model batch, argmax on the host -- no shifts, no comparisons: what the
  forward passes cost when a plain loop pays for them (ours ships uint8 chunks and keeps the
  argmax on the device, so it can come out slightly faster; it is a reference, not a bound).

Throughput is images x transforms (shifted copies evaluated) per second. Timing follows
``invariance.benchmarking`` with whole processes as the calls: every part runs once per round
in its own fresh process (so the peak resident memory of one part does not hide another's),
``--reps`` rounds in a seeded random order each; a part's time is the median of its rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from invariance import benchmarking, runtime

SHIFT = 3


def _offsets(key_seed: int, n: int, pairs: int) -> np.ndarray:
    """The offsets shift_consistency draws: (n, pairs, 2, 2) ints in [-SHIFT, SHIFT]."""
    import jax

    key = jax.random.key(key_seed)

    def one(i, p):
        k = jax.random.fold_in(jax.random.fold_in(key, i), p)
        return jax.random.randint(k, (2, 2), -SHIFT, SHIFT + 1)

    grid = jax.vmap(lambda i: jax.vmap(lambda p: one(i, p))(np.arange(pairs)))(np.arange(n))
    return np.asarray(grid)


def _setup(dataset: str, n: int, workdir: str, train_examples: int = 12000):
    from invariance import data, train

    cfg = train.default_config()
    cfg.dataset = dataset
    cfg.num_epochs = 1
    cfg.train_examples = train_examples
    cfg.progress = False
    cfg.workdir = workdir  # a second call resumes: the model trains once
    result = train.train(cfg)
    import jax

    params = jax.tree_util.tree_map(lambda a: a[0], result.variables)
    images, _ = data.load(dataset, "test")
    return train.make_apply_fn(result.model), params, images[:n]


def _status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB from /proc (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _start() -> tuple[float, float | None]:
    """Marks the start of a timed part: resets the peak-RSS mark to the current RSS (Linux
    ``/proc/self/clear_refs``), so the part's own peak is not hidden by the setup's (training,
    data loading), and returns ``(t0, rss_mb_now)``."""
    rss = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        rss = None  # no reset: the growth column would be meaningless
    return time.perf_counter(), rss


def _report(start: tuple[float, float | None], consistency: float | None) -> dict:
    """The seconds since ``start``, the consistency, this process's peak RSS (setup
    included) and how far the RSS rose above its level at ``start`` during the part."""
    t0, rss0 = start
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hwm = _status_mb("VmHWM")
    growth = None if rss0 is None or hwm is None else max(hwm - rss0, 0.0)
    return {"seconds": dt, "consistency": consistency, "peak_rss_mb": peak, "growth_mb": growth}


def _ours(args) -> dict:
    import jax

    from invariance import measure

    apply_fn, params, images = _setup(args.dataset, args.images, args.workdir, args.train_examples)
    t0 = _start()
    rows = measure.shift_consistency(
        apply_fn,
        params,
        images,
        key=jax.random.key(0),
        max_shift=SHIFT,
        num_pairs=args.pairs,
    )
    return _report(t0, rows[0]["consistency"])


def _jitted_model(args, batch: int):
    """``(f, params, x_all)``: the jitted model, compiled for the full batch and the last,
    shorter one (outside any timing), and the float32 test images."""
    import jax

    apply_fn, params, images = _setup(args.dataset, args.images, args.workdir, args.train_examples)
    f = jax.jit(apply_fn)
    x_all = images.astype(np.float32) / 255.0
    for size in {batch, len(x_all) % batch or batch}:
        f(params, x_all[:size]).block_until_ready()
    return f, params, x_all


def _loop(args, batch: int) -> dict:
    f, params, x_all = _jitted_model(args, batch)
    offsets = _offsets(0, len(x_all), args.pairs)
    h, w = x_all.shape[1:3]
    rows_idx = np.arange(h)
    cols_idx = np.arange(w)

    def shifted(x, off):  # per-image circular roll on the host
        ri = (rows_idx[None, :] - off[:, 0:1]) % h
        ci = (cols_idx[None, :] - off[:, 1:2]) % w
        return x[np.arange(len(x))[:, None, None], ri[:, :, None], ci[:, None, :]]

    t0 = _start()
    agree = 0
    for p in range(args.pairs):
        for s in range(0, len(x_all), batch):
            x = x_all[s : s + batch]
            off = offsets[s : s + batch, p]
            a = np.asarray(f(params, shifted(x, off[:, 0]))).argmax(-1)
            b = np.asarray(f(params, shifted(x, off[:, 1]))).argmax(-1)
            agree += int((a == b).sum())
    return _report(t0, agree / (len(x_all) * args.pairs))


def _forward(args, batch: int) -> dict:
    f, params, x_all = _jitted_model(args, batch)
    t0 = _start()
    for _ in range(2 * args.pairs):  # as many forward passes as the shifted copies
        for s in range(0, len(x_all), batch):
            np.asarray(f(params, x_all[s : s + batch])).argmax(-1)
    return _report(t0, None)


def _specs(args, batch: int) -> dict[str, tuple[str, tuple]]:
    """Part name -> (its label, (the function a fresh process runs, its extra arguments))."""
    return {
        "ours": (
            "invariance.measure.shift_consistency (default chunks; compile included)",
            (_ours,),
        ),
        "loop": (f"per-shift Python loop over batches of {args.chunk}", (_loop, args.chunk)),
        "matched": (f"the same loop over batches of {batch} (ours' model batch)", (_loop, batch)),
        "forward": (
            f"forward-only reference: the jitted model alone, unshifted, batches of {batch}",
            (_forward, batch),
        ),
    }


def run_rounds(specs: dict, args) -> dict[str, dict]:
    """Every part once per round, each run in a fresh process, ``args.reps`` rounds in a
    seeded random order each; per part: the median seconds, each run's seconds, the
    consistency (refused if the runs disagree), the largest peak RSS and RSS growth."""
    runs: dict[str, list[dict]] = {k: [] for k in specs}
    for order in benchmarking.round_orders(list(specs), args.reps, seed=0):
        for name in order:
            target, *extra = specs[name][1]
            runs[name].append(benchmarking.in_fresh_process(target, args, *extra))
            print(f"{name}: {runs[name][-1]['seconds']:.2f} s", flush=True)
    parts = {}
    for k, v in runs.items():
        if len({r["consistency"] for r in v}) != 1:
            raise RuntimeError(f"{k}: the runs gave different consistencies {v}")
        growth = [r["growth_mb"] for r in v]
        parts[k] = {
            "seconds": float(np.median([r["seconds"] for r in v])),
            "seconds_each": [r["seconds"] for r in v],
            "consistency": v[0]["consistency"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in v),
            "growth_mb": None if None in growth else max(growth),
        }
    return parts


def render(parts: dict, labels: dict[str, str], args, command: str) -> str:
    """The Markdown document: provenance, the table, the ratios."""
    n_eval = args.images * args.pairs * 2  # shifted copies through the model
    secs = {k: v["seconds"] for k, v in parts.items()}
    ratio = secs["loop"] / secs["ours"]
    rows = []
    for k, r in parts.items():
        cons = "n/a" if r["consistency"] is None else f"{r['consistency']:.4f}"
        growth = "n/a" if r["growth_mb"] is None else f"{r['growth_mb']:,.0f}"
        rows.append(
            f"| {labels[k]} | {r['seconds']:.2f} | "
            f"{' / '.join(f'{t:.1f}' for t in r['seconds_each'])} | "
            f"{n_eval / r['seconds']:,.0f} | {cons} | {r['peak_rss_mb']:,.0f} | {growth} |"
        )
    return "\n".join(
        [
            "# Measurement benchmark: shift consistency",
            "",
            *benchmarking.header(command, conditions=args.conditions),
            f"SmallCNN(pool=max) trained 1 epoch on {args.train_examples} {args.dataset} images; "
            f"{args.images} test images x {args.pairs} pairs of circular shifts (+-{SHIFT} px, "
            f"per-image offsets, the same in all parts); {n_eval:,} shifted copies evaluated. "
            f"{args.reps} rounds, every part once per round in a fresh seeded random order, each "
            "run in its own process; seconds: the median of a part's runs. Peak RSS: the whole "
            "process, setup (training resume, data loading) included; RSS growth: how far the RSS "
            "rose above its level when the timed part began (the largest over the runs; malloc "
            "keeps freed memory, so this is what the part needed beyond what the setup had left).",
            "",
            "| implementation | seconds | runs (s) | images x transforms / s | consistency "
            "| peak RSS MB | RSS growth MB |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"- Throughput ours / loop of {args.chunk}: {ratio:.2f}x "
            f"(target >= 5x: {'met' if ratio >= 5 else 'MISSED'}).",
            f"- Ours / the loop at ours' model batch: {secs['matched'] / secs['ours']:.2f}x.",
            f"- Ours / the forward-only reference: {secs['forward'] / secs['ours']:.2f}x "
            "(1 would mean ours costs no more than the bare forward passes; the rest is ours' "
            "overhead: compiling, sampling the shifts, comparing the predictions).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=500, help="the plain loop's batch")
    ap.add_argument("--reps", type=int, default=3, help="rounds (one fresh process per part)")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-examples", type=int, default=12000)
    ap.add_argument("--note", default="", help="the measuring conditions, for the header")
    ap.add_argument("--out", default="results/benchmarks/measure.md")
    args = ap.parse_args(argv)
    if min(args.images, args.pairs, args.chunk, args.reps, args.train_examples) < 1:
        ap.error("--images, --pairs, --chunk, --reps and --train-examples must be >= 1")
    command = benchmarking.command_line(
        "scripts/bench_measure.py", sys.argv[1:] if argv is None else argv
    )
    from invariance.io import atomic_write_text
    from invariance.measure import _core

    batch = _core.model_batch()  # what ours aims each forward call at on this backend
    with tempfile.TemporaryDirectory() as wd:
        args.workdir = wd
        _setup(args.dataset, 1, wd, args.train_examples)  # train once, here; the runs resume
        specs = _specs(args, batch)
        load = os.getloadavg()[0]
        parts = run_rounds(specs, args)
        args.conditions = benchmarking.conditions(load, args.note)
    text = render(parts, {k: v[0] for k, v in specs.items()}, args, command)
    print(text)
    print(json.dumps(parts))
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    runtime.reexec_with_steady_malloc()  # before any timing: see invariance/runtime.py
    sys.exit(main())
