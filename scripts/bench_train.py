"""Training speed (ours vs flax.linen.max_pool vs torch), every pooling kind's step time, and
Fashion-MNIST accuracy.

    python scripts/bench_train.py --part speed     [--steps 5] [--reps 15] [--processes 3]
    python scripts/bench_train.py --part kinds     [--steps 5] [--reps 15] [--processes 3]
    python scripts/bench_train.py --part accuracy  [--epochs 10] [--seeds 1]
    python scripts/bench_train.py --part all

Speed: the train step (gather the batch, uint8 -> float, forward, softmax cross-entropy,
backward, AdamW update) of SmallCNN(pool="max") -- conv3x3(32) -> ReLU -> maxpool2 ->
conv3x3(64) -> ReLU -> maxpool2 -> flatten -> dense(128) -> ReLU -> dense(10) -- at batch 128,
exactly as ``invariance.train`` compiles it (``init_train_state`` + ``make_train_step``: jit,
shardings, donated state, mapped over seeds), with (a) our ``pooling.max_pool``, (b)
``flax.linen.max_pool`` patched into the same model, (c) the same network in torch on the CPU
(AdamW, ``torch.set_num_threads(os.cpu_count())``, NCHW and channels_last); and ours with
``num_seeds`` = 1 and 4 (one program training 4 models vs 4 separate runs). A breakdown
(forward, forward + backward, whole step) and profiles of ours (jax.profiler) say where the
time goes; the step's layers alone are timed against torch's.

Kinds: the same step for every row of the pooling-table study (``configs/pooling_table.py``,
its full-profile SmallCNN, widths (32, 64)), next to max pooling's, as a ratio to max's step.

Timing (both parts) follows ``invariance.benchmarking``: each timed call runs ``--steps``
steps; the peers run interleaved, ``--reps`` rounds in a seeded random order each, the median
round per process, in ``--processes`` fresh processes combined by the median over processes.
``--part all`` times speed and kinds in the same processes.

Accuracy: ``invariance.train.train`` with the default config (SmallCNN max, AdamW 1e-3, cosine,
weight decay 1e-4, batch 128) on real Fashion-MNIST; the test accuracy after every epoch.

Each part writes its own marked section of ``results/benchmarks/train.md``
(``invariance.io.write_marked_blocks``: atomically, the other sections kept), headed by
``invariance.benchmarking.header``. The targets, the combining of the processes' times and the
sections' Markdown live in ``scripts/_bench_train_tables.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invariance import benchmarking, pooling, runtime


def _sibling(name: str) -> types.ModuleType:
    """``scripts/<name>.py`` imported by its path, once: this script runs as ``__main__``, is
    re-imported in the spawned timing processes and is imported by path in the tests, and
    scripts/ need not be on the import path in every case."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


_tables = _sibling("_bench_train_tables")
BATCH, LAYERS, STUDY = _tables.BATCH, _tables.LAYERS, _tables.STUDY
combine_kinds, combine_speed = _tables.combine_kinds, _tables.combine_speed
render_accuracy, render_kinds, render_speed = (
    _tables.render_accuracy,
    _tables.render_kinds,
    _tables.render_speed,
)
write_sections = _tables.write_sections

# ----------------------------------------------------------------------------- JAX variants


def _flax_max_pool(x, window, *, stride=None, padding="VALID"):
    """flax.linen's max pooling with ``pooling.max_pool``'s arguments (``pooling.override``)."""
    from invariance.models.layers import as_pair

    stride = window if stride is None else stride
    return nn.max_pool(x, as_pair(window), as_pair(stride), padding)


def _data(n: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    from invariance.data import load

    return load("synthetic", "train", num_examples=n)


def _mesh() -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))


def study_kinds() -> dict[str, dict]:
    """Row label -> SmallCNN options of every row of the pooling-table study (full profile)."""
    from invariance.config import load_config_module

    cells = load_config_module(STUDY).get_sweep("full")
    return {cell["cell_name"]: dict(cell["train.model_options"]) for cell in cells}


def select_rows(kinds: dict[str, dict], rows: str | None) -> dict[str, dict]:
    """``kinds`` restricted to the comma-separated labels ``rows`` (None: all), max first.

    Raises:
        ValueError: a label that is not a row of the study (the message lists the rows).
    """
    if rows is None:
        return kinds
    wanted = ["max", *(r.strip() for r in rows.split(",") if r.strip() != "max")]
    unknown = [r for r in wanted if r not in kinds]
    if unknown:
        raise ValueError(f"no {STUDY} row {unknown[0]!r}: valid are {', '.join(kinds)}")
    return {r: kinds[r] for r in wanted}


def jax_variant(
    num_seeds: int = 1,
    *,
    model_options: dict | None = None,
    flax_pool: bool = False,
    vmap_seeds: int | None = None,
    breakdown: bool = True,
) -> dict[str, Callable]:
    """The train step exactly as ``train`` builds it, and (``breakdown``) its forward and
    forward+backward alone.

    Returns:
        ``{"step": run(k), "fwd": run(k), "fwd+bwd": run(k), "_profile": profile(k)}``: each
        run does k calls and blocks; without ``breakdown`` only ``"step"``.
    """
    from invariance.models import create_model
    from invariance.train import default_config, init_train_state, make_optimizer

    config = default_config()
    config.num_seeds, config.vmap_seeds, config.batch_size = num_seeds, vmap_seeds, BATCH
    images, labels = _data()
    model = create_model("small_cnn", **(model_options or {"pool": "max"}))
    tx = make_optimizer(config, len(images) // (BATCH * jax.device_count()))
    swap = pooling.override("max", _flax_max_pool) if flax_pool else contextlib.nullcontext()
    with swap:  # the models' Pool layer looks "max" up through pooling.pool while traced
        state = init_train_state(model, tx, config, images.shape[1:], mesh=_mesh())
        step, args = _compiled_step(model, tx, config, state, images, labels)
        fns = _loss_calls(model, config, state, images, labels) if breakdown else {}
    box = {"state": state}

    def run_step(k: int) -> None:
        s = box["state"]
        for _ in range(k):
            s, _ = step(s, *args)
        box["state"] = jax.block_until_ready(s)

    def profile(k: int = 10) -> list[dict]:
        return benchmarking.xla_op_times(lambda: run_step(k), step.as_text(), k)

    run_step(2)
    return {"step": run_step, **fns, "_profile": profile}


def _compiled_step(model, tx, config, state, images, labels) -> tuple[Callable, tuple]:
    """``make_train_step`` lowered and compiled on the device-resident data, and the data."""
    from invariance.train import make_train_step

    mesh = _mesh()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    steps_per_epoch = len(images) // (BATCH * mesh.size)
    step = make_train_step(model, tx, config, steps_per_epoch=steps_per_epoch, mesh=mesh)
    perms = np.stack(
        [np.random.default_rng(i).permutation(len(images)) for i in range(config.num_seeds)]
    ).astype(np.int32)
    args = tuple(jax.device_put(a, replicated) for a in (images, labels, perms))
    return step.lower(state, *args).compile(), args


def _loss_calls(model, config, state, images, labels) -> dict[str, Callable]:
    """The step's loss alone (``"fwd"``) and with its gradient (``"fwd+bwd"``), all seeds
    mapped as the step maps them, on a fixed batch: ``run(k)`` does k calls and blocks."""
    from invariance.train import map_seeds

    def loss(params, x, y):
        logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    n = config.num_seeds
    chunk = config.vmap_seeds
    vloss = jax.jit(lambda *a: map_seeds(loss, a, vmap_seeds=chunk))
    vgrad = jax.jit(lambda *a: map_seeds(jax.value_and_grad(loss), a, vmap_seeds=chunk))
    x = jnp.asarray(np.broadcast_to(images[:BATCH], (n, *images[:BATCH].shape)))
    x = x.astype(jnp.float32) / 255
    y = jnp.asarray(np.broadcast_to(labels[:BATCH], (n, BATCH)))
    params = jax.tree.map(jnp.copy, state["variables"]["params"])  # the step donates state
    jax.block_until_ready((vloss(params, x, y), vgrad(params, x, y)))

    def calls(f):
        def run(k: int) -> None:
            for _ in range(k):
                out = f(params, x, y)
            jax.block_until_ready(out)

        return run

    return {"fwd": calls(vloss), "fwd+bwd": calls(vgrad)}


def _layer_inputs() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return (
        rng.random((BATCH, 28, 28, 1), np.float32),
        rng.random((BATCH, 14, 14, 32), np.float32),
        rng.standard_normal((BATCH, 28, 28, 32), np.float32),
        rng.standard_normal((3, 3, 1, 32), np.float32) * 0.1,
        rng.standard_normal((3, 3, 32, 64), np.float32) * 0.1,
    )


def layer_variants() -> dict[str, dict[str, Callable]]:
    """The step's layers alone, ours (XLA:CPU) and torch (channels_last), at batch 128.

    Returns:
        ``{layer: {"ours": run(k), "torch": run(k)}}``; each run does k forward + backward
        passes of ``sum(layer(x)^2) / 2`` and blocks. conv1 needs no input gradient (the image).
    """
    from invariance import pooling

    conv = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

    def jax_run(f, argnums, *args):
        g = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2) / 2, argnums=argnums))
        jax.block_until_ready(g(*args))

        def run(k):
            for _ in range(k):
                out = g(*args)
            jax.block_until_ready(out)

        return run

    x1, x2, a1, w1, w2 = _layer_inputs()
    relu_pool = lambda a: pooling.max_pool(jax.nn.relu(a), window=2)  # noqa: E731
    layers = {
        LAYERS[0]: {"ours": jax_run(conv, 1, x1, w1)},
        LAYERS[1]: {"ours": jax_run(conv, (0, 1), x2, w2)},
        LAYERS[2]: {"ours": jax_run(relu_pool, 0, a1)},
    }
    for name, run in _torch_layers().items():
        layers[name]["torch"] = run
    return layers


def _torch_layers() -> dict[str, Callable]:
    """torch's (channels_last, oneDNN) versions of :data:`LAYERS` ({} without torch)."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(os.cpu_count() or 1)
    cl = torch.channels_last
    x1, x2, a1, _, _ = _layer_inputs()

    def nchw(a, grad=False):
        t = torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=cl)
        return t.requires_grad_(grad)

    c1 = torch.nn.Conv2d(1, 32, 3, padding=1, bias=False).to(memory_format=cl)
    c2 = torch.nn.Conv2d(32, 64, 3, padding=1, bias=False).to(memory_format=cl)
    t1, t2, ta = nchw(x1), nchw(x2, True), nchw(a1, True)

    def torch_run(f, *tensors):
        def run(k):
            for _ in range(k):
                for t in tensors:
                    t.grad = None
                (f() ** 2).sum().div(2).backward()

        run(1)
        return run

    F = torch.nn.functional
    return {
        LAYERS[0]: torch_run(lambda: c1(t1), *c1.parameters()),
        LAYERS[1]: torch_run(lambda: c2(t2), t2, *c2.parameters()),
        LAYERS[2]: torch_run(lambda: F.max_pool2d(torch.relu(ta), 2), ta),
    }


# ---------------------------------------------------------------------------- torch variant


def torch_variant(channels_last: bool) -> dict[str, Callable] | None:
    """The same network and step in torch on the CPU (None if torch is missing)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 7 * 7, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    images, labels = _data()
    images_t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    labels_t = torch.from_numpy(labels.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(images)))
    steps_per_epoch = len(images) // BATCH
    counter = [0]
    loss_fn = torch.nn.CrossEntropyLoss()

    def batch():
        i = counter[0] % steps_per_epoch
        counter[0] += 1
        idx = perm[i * BATCH : (i + 1) * BATCH]
        x = images_t[idx].float().div_(255).contiguous(memory_format=fmt)
        return x, labels_t[idx]

    def run_step(k: int) -> None:
        for _ in range(k):
            x, y = batch()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()

    x0, y0 = batch()

    def run_fwd(k: int) -> None:
        for _ in range(k):
            loss_fn(net(x0), y0)

    def run_grad(k: int) -> None:
        for _ in range(k):
            net.zero_grad(set_to_none=True)
            loss_fn(net(x0), y0).backward()

    run_step(2)
    return {"step": run_step, "fwd": run_fwd, "fwd+bwd": run_grad}


# ------------------------------------------------------------------------------ measurement


def timed(variants: dict[str, dict[str, Callable]], steps: int, reps: int, seed: int) -> dict:
    """Median seconds per step of every ``(variant, part)``, timed by
    ``benchmarking.interleaved`` (a call runs ``steps`` steps; parts named ``_...`` skipped)."""
    fns = {
        (name, part): functools.partial(run, steps)
        for name, parts in variants.items()
        for part, run in parts.items()
        if not part.startswith("_")
    }
    times = benchmarking.interleaved(fns, rounds=reps, seed=seed, warmup=1)
    return {key: t / steps for key, t in benchmarking.medians(times).items()}


def speed_variants() -> tuple[dict[str, dict[str, Callable]], dict[str, tuple[str, int]]]:
    """The speed part's peers, and their labels: name -> (description, models per step)."""
    print("compiling / warming up ...", flush=True)
    variants = {
        "ours": jax_variant(1),
        "flax": jax_variant(1, flax_pool=True),
        "ours x4": jax_variant(4, vmap_seeds=1),
        "ours x4 vmap": jax_variant(4, vmap_seeds=4),
    }
    labels = {
        "ours": ("ours: invariance.pooling.max_pool, num_seeds=1", 1),
        "flax": ("flax.linen.max_pool in the same model, num_seeds=1", 1),
        "ours x4": ("ours, num_seeds=4, vmap_seeds=1 (CPU default: a loop in one program)", 4),
        "ours x4 vmap": ("ours, num_seeds=4, vmap_seeds=4 (jax.vmap: grouped convs)", 4),
    }
    for channels_last in (False, True):
        v = torch_variant(channels_last)
        if v is not None:
            name = "torch channels_last" if channels_last else "torch NCHW"
            variants[name] = v
            labels[name] = (f"torch {torch_version()} CPU, {name.split(' ', 1)[1]}", 1)
    return variants, labels


def measure_speed(steps: int, reps: int, seed: int) -> dict:
    """One process's speed part: step / fwd / fwd+bwd medians, a profile, the layers."""
    variants, labels = speed_variants()
    print(f"timing {len(variants)} variants: {reps} rounds of {steps} steps ...", flush=True)
    times = timed(variants, steps, reps, seed)
    profile = min(
        (variants["ours"]["_profile"](steps) for _ in range(2)),  # the less disturbed of 2
        key=lambda rows: sum(r["ms"] for r in rows),
    )
    layers = timed(layer_variants(), steps, reps, seed)
    return {"times": times, "labels": labels, "profile": profile, "layers": layers}


def measure_kinds(steps: int, reps: int, seed: int, rows: str | None = None) -> dict:
    """One process's kinds part: the step's median seconds of every pooling-table row (or of
    the comma-separated ``rows``; max's always)."""
    kinds = select_rows(study_kinds(), rows)
    print(f"compiling the step of {len(kinds)} pooling kinds ...", flush=True)
    variants = {
        label: {"step": jax_variant(model_options=options, breakdown=False)["step"]}
        for label, options in kinds.items()
    }
    times = timed(variants, steps, reps, seed)
    return {"times": {label: times[(label, "step")] for label in kinds}, "options": kinds}


def child(
    parts: tuple[str, ...], steps: int, reps: int, seed: int = 0, rows: str | None = None
) -> dict:
    """Everything one fresh process times (run by ``benchmarking.in_processes``)."""
    out = {}
    if "speed" in parts:
        out["speed"] = measure_speed(steps, reps, seed)
    if "kinds" in parts:
        out["kinds"] = measure_kinds(steps, reps, seed, rows)
    return out


def torch_version() -> str:
    import torch

    return torch.__version__


# ------------------------------------------------------------------------------- accuracy


def accuracy(
    epochs: int, seeds: int, workdir: str | None, train_examples: int | None = None
) -> dict:
    """``train`` with the default config on Fashion-MNIST (its first ``train_examples``
    training images; None: all 60000); its history and wall time."""
    from invariance.train import default_config, train

    config = default_config()
    config.num_epochs = epochs
    config.num_seeds = seeds
    config.train_examples = train_examples
    config.progress = False
    workdir = workdir or tempfile.mkdtemp(prefix="bench-train-accuracy-")
    t0 = time.perf_counter()
    result = train(config, workdir=workdir)
    return {
        "history": result.history,
        "config": config.to_dict(),
        "seconds": time.perf_counter() - t0,
        "workdir": workdir,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("speed", "kinds", "accuracy", "all"), default="speed")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed call")
    ap.add_argument("--reps", type=int, default=15, help="interleaved rounds per process")
    ap.add_argument("--processes", type=int, default=3, help="fresh processes to combine")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="run directory of the accuracy part")
    ap.add_argument(
        "--train-examples", type=int, default=None, help="accuracy: first N images (default all)"
    )
    ap.add_argument("--rows", default=None, help="kinds: comma-separated rows (default all)")
    ap.add_argument("--note", default="", help="the measuring conditions, for the header")
    ap.add_argument("--out", default="results/benchmarks/train.md")
    args = ap.parse_args(argv)
    if min(args.steps, args.reps, args.processes, args.epochs, args.seeds) < 1:
        ap.error("--steps, --reps, --processes, --epochs and --seeds must be >= 1")
    if args.train_examples is not None and args.train_examples < 1:
        ap.error("--train-examples must be >= 1")
    if args.rows is not None:
        try:
            select_rows(study_kinds(), args.rows)
        except ValueError as e:
            ap.error(str(e))
    argv = sys.argv[1:] if argv is None else argv
    command = benchmarking.command_line("scripts/bench_train.py", argv)
    out = Path(args.out)
    timing = tuple(p for p in ("speed", "kinds") if args.part in (p, "all"))
    if timing:
        load = os.getloadavg()[0]
        runs = benchmarking.in_processes(
            child, args.processes, timing, args.steps, args.reps, rows=args.rows
        )
        conditions = benchmarking.conditions(load, args.note)
        size = {"steps": args.steps, "reps": args.reps, "processes": args.processes}
        sections = {}
        if "speed" in timing:
            result = combine_speed([r["speed"] for r in runs]) | size
            sections["speed"] = render_speed(result, command, conditions)
        if "kinds" in timing:
            result = combine_kinds([r["kinds"] for r in runs]) | size
            sections["kinds"] = render_kinds(result, command, conditions)
        print("\n".join(sections.values()), flush=True)
        write_sections(out, sections)
    if args.part in ("accuracy", "all"):
        result = accuracy(args.epochs, args.seeds, args.workdir, args.train_examples)
        text = render_accuracy(result, command)
        print(text, flush=True)
        write_sections(out, {"accuracy": text})
    return 0


if __name__ == "__main__":
    runtime.reexec_with_steady_malloc()  # before any timing: see invariance/runtime.py
    sys.exit(main())
