"""Measurement speed: shift_consistency against a straightforward per-shift Python loop.

    python scripts/bench_measure.py [--images 10000] [--pairs 16] [--chunk 500]

A SmallCNN(pool="max") is trained for one epoch on Fashion-MNIST (synthetic data with
``--dataset synthetic``), then Zhang 2019 shift consistency (circular shifts, +-3 px, two
shifted copies per pair, offsets drawn per image) is measured over the test images x 16 shift
pairs twice, with the same model and the same offsets:

* ours: ``invariance.measure.shift_consistency`` (one jitted program per chunk; the shifts
  are a vmap inside it, the images stream through in chunks of ``--chunk / (2 * pairs)`` so
  the model sees about ``--chunk`` images per call; its time includes its compile, as the
  API compiles once per call);
* the loop: for each pair, for each batch, shift the images on the host (numpy, per-image
  offsets) and call the jitted model on each shifted copy — what one writes first.

Throughput is images x transforms (shifted copies evaluated) per second; the peak resident
memory of each part is measured in a fresh child process so one does not hide the other.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time

import numpy as np

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


def _setup(dataset: str, n: int, workdir: str):
    from invariance import data, train

    cfg = train.default_config()
    cfg.dataset = dataset
    cfg.num_epochs = 1
    cfg.train_examples = 12000
    cfg.progress = False
    cfg.workdir = workdir  # a second call resumes: the model trains once
    result = train.train(cfg)
    import jax

    params = jax.tree_util.tree_map(lambda a: a[0], result.variables)
    images, labels = data.load(dataset, "test")
    return train.make_apply_fn(result.model), params, images[:n], labels[:n]


def _ours(args, q) -> None:
    import jax

    from invariance import measure

    apply_fn, params, images, _ = _setup(args.dataset, args.images, args.workdir)
    t0 = time.perf_counter()
    rows = measure.shift_consistency(
        apply_fn,
        params,
        images,
        key=jax.random.key(0),
        max_shift=SHIFT,
        num_pairs=args.pairs,
        chunk_size=max(1, args.chunk // (2 * args.pairs)),  # model batch ~ --chunk
    )
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"seconds": dt, "consistency": rows[0]["consistency"], "peak_rss_mb": rss})


def _loop(args, q) -> None:
    import jax

    apply_fn, params, images, _ = _setup(args.dataset, args.images, args.workdir)
    offsets = _offsets(0, len(images), args.pairs)
    f = jax.jit(apply_fn)
    x_all = images.astype(np.float32) / 255.0
    h, w = x_all.shape[1:3]
    rows_idx = np.arange(h)
    cols_idx = np.arange(w)

    def shifted(x, off):  # per-image circular roll on the host
        ri = (rows_idx[None, :] - off[:, 0:1]) % h
        ci = (cols_idx[None, :] - off[:, 1:2]) % w
        return x[np.arange(len(x))[:, None, None], ri[:, :, None], ci[:, None, :]]

    f(params, x_all[: args.chunk]).block_until_ready()  # compile
    t0 = time.perf_counter()
    agree = 0
    for p in range(args.pairs):
        for s in range(0, len(x_all), args.chunk):
            x = x_all[s : s + args.chunk]
            off = offsets[s : s + args.chunk, p]
            a = np.asarray(f(params, shifted(x, off[:, 0]))).argmax(-1)
            b = np.asarray(f(params, shifted(x, off[:, 1]))).argmax(-1)
            agree += int((a == b).sum())
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"seconds": dt, "consistency": agree / (len(x_all) * args.pairs), "peak_rss_mb": rss})


def _run(target, args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(args, q))
    proc.start()
    out = q.get()
    proc.join()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--out", default="results/benchmarks/measure.md")
    args = ap.parse_args(argv)
    from invariance.io import atomic_write_text, provenance

    with tempfile.TemporaryDirectory() as wd:
        args.workdir = wd
        _setup(args.dataset, 1, wd)  # train once, here; the children resume
        ours, loop = _run(_ours, args), _run(_loop, args)
    n_eval = args.images * args.pairs * 2  # shifted copies through the model
    prov = provenance()
    ratio = loop["seconds"] / ours["seconds"]
    text = "\n".join(
        [
            "# Measurement benchmark: shift consistency",
            "",
            f"Command: `python scripts/bench_measure.py --images {args.images} --pairs {args.pairs}"
            f" --chunk {args.chunk} --dataset {args.dataset}`  ",
            f"Device: {prov['device']} ({prov['backend']}, {prov['cpu']}); jax {prov['jax']}; "
            f"commit {prov['git_commit']}; {prov['date']}.  ",
            f"SmallCNN(pool=max) trained 1 epoch on 12k images; {args.images} test images x "
            f"{args.pairs} pairs of circular shifts (+-{SHIFT} px, per-image offsets, the same in "
            f"both); {n_eval:,} shifted copies evaluated. Peak RSS per part in its own process.",
            "",
            "| implementation | seconds | images x transforms / s | consistency | peak RSS MB |",
            "| --- | --- | --- | --- | --- |",
            f"| invariance.measure.shift_consistency (compile included) | {ours['seconds']:.2f} | "
            f"{n_eval / ours['seconds']:,.0f} | {ours['consistency']:.4f} | "
            f"{ours['peak_rss_mb']:,.0f} |",
            f"| per-shift Python loop over batches of {args.chunk} | {loop['seconds']:.2f} | "
            f"{n_eval / loop['seconds']:,.0f} | {loop['consistency']:.4f} | "
            f"{loop['peak_rss_mb']:,.0f} |",
            "",
            f"Throughput ours / loop: {ratio:.2f}x "
            f"(target >= 5x: {'met' if ratio >= 5 else 'MISSED'}).",
            "",
        ]
    )
    print(text)
    print(json.dumps({"ours": ours, "loop": loop}))
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
