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
``invariance.benchmarking.header``.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invariance import benchmarking, pooling, runtime
from invariance.io import write_marked_blocks

BATCH = 128
SPEED_TARGET = 1.0  # num_seeds=4: per-model step time / one-seed step time must be below this.
KINDS_TARGET = 1.3  # every kind's step / max's step must be at most this (issue 14).
ACCURACY_TARGET = 0.91
SECTIONS = ("speed", "kinds", "accuracy")
STUDY = "pooling_table"


# ----------------------------------------------------------------------------- JAX variants


def _flax_max_pool(x, window, *, stride=None, padding="VALID"):
    from invariance.models.layers import as_pair

    stride = window if stride is None else stride
    return nn.max_pool(x, as_pair(window), as_pair(stride), padding)


class _patched_max_pool:
    """Swaps the "max" entry of the pooling registry (the one the models' Pool layer looks
    up through ``pooling.pool``) for flax.linen's max pooling, while the step is traced."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.saved = pooling._REGISTRY["max"]

    def __enter__(self):
        if self.enabled:
            pooling._REGISTRY["max"] = _flax_max_pool

    def __exit__(self, *exc):
        pooling._REGISTRY["max"] = self.saved


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
    with _patched_max_pool(flax_pool):
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


def categorize(rows: list[dict]) -> dict[str, float]:
    """Profile rows -> ms per kind: convolutions, layout copies, pooling, dense, the rest."""
    kinds = dict.fromkeys(("convolutions", "layout copies", "pooling", "dense", "rest"), 0.0)
    for r in rows:
        op, what = r["op"], r["what"]
        shape = re.match(r"\w+\[([\d,]*)\]", what)
        rank = len(shape.group(1).split(",")) if shape else 0
        if op.startswith(("transpose", "copy")) or op == "aten::copy_":
            kind = "layout copies"
        elif "convolution" in op or "conv_general_dilated" in what:
            kind = "convolutions"
        elif op.startswith("ynn_fusion") and "dot_general" not in what:
            kind = "convolutions" if rank >= 4 else "dense"
        elif "pool" in op or "/pool" in what:
            kind = "pooling"
        elif "dot_general" in what or op in ("aten::mm", "aten::addmm", "aten::linear"):
            kind = "dense"
        else:
            kind = "rest"
        kinds[kind] += r["ms"]
    return kinds


LAYERS = (
    "conv1 3x3 1->32, 28x28 (fwd + dW)",
    "conv2 3x3 32->64, 14x14 (fwd + dX + dW)",
    "ReLU + max pool 2x2, 28x28x32 (fwd + bwd)",
)


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


def combine_speed(runs: list[dict]) -> dict:
    """The speed part over processes: medians over processes, the least disturbed profile,
    and the per-process ratios (their spread shows the noise)."""
    times = benchmarking.combine([r["times"] for r in runs])
    per_process = {
        peer: [benchmarking.ratio(r["times"], ("ours", "step"), (peer, "step")) for r in runs]
        for peer in ("flax", "torch channels_last")
        if ("ours", "step") in times and (peer, "step") in times
    }
    return {
        "times": times,
        "labels": runs[0]["labels"],
        "profile": min((r["profile"] for r in runs), key=lambda rows: sum(x["ms"] for x in rows)),
        "layers": benchmarking.combine([r["layers"] for r in runs]),
        "per_process": per_process,
    }


def combine_kinds(runs: list[dict]) -> dict:
    """The kinds part over processes: each kind's median step and its ratio to max's, the
    ratio of the combined medians and, for the spread, each process's own ratio."""
    times = benchmarking.combine([r["times"] for r in runs])
    if "max" not in times:
        raise ValueError(f"the {STUDY} study has no 'max' row to compare with: {list(times)}")
    per_process = {k: [benchmarking.ratio(r["times"], k, "max") for r in runs] for k in times}
    return {"times": times, "options": runs[0]["options"], "per_process": per_process}


def torch_version() -> str:
    import torch

    return torch.__version__


# --------------------------------------------------------------------------------- render


def _protocol_line(steps: int, reps: int, processes: int) -> str:
    return (
        f"Each timed call runs {steps} steps; {reps} interleaved rounds (every peer once per "
        f"round, in a fresh seeded random order) in each of {processes} fresh processes: the "
        "median round per process, the median over processes (``invariance.benchmarking``)."
    )


def render_speed(result: dict, command: str, conditions: str) -> str:
    """The speed section: the step table, the ratios, the profile, the layers."""
    t, labels = result["times"], result["labels"]
    lines = [
        '## Speed: train step, SmallCNN(pool="max"), batch 128',
        "",
        *benchmarking.header(command, conditions=conditions),
        _protocol_line(result["steps"], result["reps"], result["processes"]),
        "A step: gather the batch, uint8 -> float, forward, cross-entropy, backward, AdamW "
        "update. fwd / fwd+bwd: the loss alone and the loss with its gradient, run as separate "
        "calls on a fixed batch.",
        "",
        "| variant | ms / step | images/s (all models) | images/s per model | fwd ms | "
        "fwd+bwd ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, (desc, models) in labels.items():
        step = t[(name, "step")]
        lines.append(
            f"| {desc} | {step * 1e3:.2f} | {BATCH * models / step:.0f} | {BATCH / step:.0f} | "
            f"{t[(name, 'fwd')] * 1e3:.2f} | {t[(name, 'fwd+bwd')] * 1e3:.2f} |"
        )
    lines += ["", "Ratios (step time; below 1 means ours is faster):", ""]
    lines += _speed_ratio_lines(result)
    lines += _profile_lines(result["profile"])
    lines += _layer_lines(result["layers"])
    return "\n".join(lines) + "\n"


def _speed_ratio_lines(result: dict) -> list[str]:
    t, per = result["times"], result["per_process"]
    ours, four = t[("ours", "step")], t[("ours x4", "step")]

    def spread(peer):
        return ", ".join(f"{r:.3f}" for r in per.get(peer, []))

    lines = [
        f"- ours / flax.linen.max_pool model: {ours / t[('flax', 'step')]:.3f} "
        f"(per process {spread('flax')})"
    ]
    torch_names = [n for n in result["labels"] if n.startswith("torch")]
    if torch_names:
        best = min(torch_names, key=lambda n: t[(n, "step")])
        lines.append(
            f"- ours / torch (best layout: {best.split(' ', 1)[1]}): "
            f"{ours / t[(best, 'step')]:.3f} (ours / torch channels_last per process "
            f"{spread('torch channels_last')})"
        )
        for part in ("fwd", "fwd+bwd"):
            lines.append(f"  - {part}: ours / torch = {t[('ours', part)] / t[(best, part)]:.3f}")
    per_model = four / 4 / ours
    verdict = "met" if per_model < SPEED_TARGET else "MISSED"
    vm = t[("ours x4 vmap", "step")]
    lines += [
        f"- num_seeds=4 (CPU default, vmap_seeds=1), per model / num_seeds=1: {per_model:.3f} "
        f"(target < {SPEED_TARGET}: {verdict}; 4 models cost {four / ours:.2f}x one model's "
        "step)",
        f"- num_seeds=4 with jax.vmap over all seeds (vmap_seeds=4), per model / num_seeds=1: "
        f"{vm / 4 / ours:.3f} (4 models cost {vm / ours:.2f}x one model's step: XLA:CPU "
        "runs the grouped convolutions that vmap over kernels becomes far slower)",
    ]
    return lines


def _profile_lines(rows: list[dict]) -> list[str]:
    kinds = categorize(rows)
    total = sum(kinds.values())
    parts = ", ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in kinds.items() if v)
    lines = [
        "",
        "Profile of our step (jax.profiler; XLA:CPU op time summed over threads, per step; the "
        f"least disturbed of 2 runs per process): {parts}; total {total:.1f} ms. Top 10 ops:",
        "",
        "| op | output <- source | ms | share |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows[:10]:
        what = r["what"].replace("|", "/")[:110]
        lines.append(f"| {r['op']} | {what} | {r['ms']:.2f} | {r['ms'] / total:.0%} |")
    return lines


def _layer_lines(layers: dict) -> list[str]:
    lines = [
        "",
        "The step's layers alone (forward + backward of sum(y^2)/2; ms, timed like the steps):",
        "",
        "| layer | ours (XLA:CPU) | torch channels_last (oneDNN) | ours / torch |",
        "| --- | --- | --- | --- |",
    ]
    for name in LAYERS:
        ours_ms = layers[(name, "ours")] * 1e3
        torch_s = layers.get((name, "torch"))
        if torch_s is None:
            lines.append(f"| {name} | {ours_ms:.2f} | n/a | n/a |")
        else:
            torch_ms = torch_s * 1e3
            lines.append(f"| {name} | {ours_ms:.2f} | {torch_ms:.2f} | {ours_ms / torch_ms:.2f} |")
    return lines


def render_kinds(result: dict, command: str, conditions: str) -> str:
    """The kinds section: every pooling-table row's step time and its ratio to max's."""
    t, per = result["times"], result["per_process"]
    widths = {tuple(o.get("widths", ())) for o in result["options"].values()}
    lines = [
        f"## Kinds: the train step of every {STUDY} row, SmallCNN, batch 128",
        "",
        *benchmarking.header(command, conditions=conditions),
        _protocol_line(result["steps"], result["reps"], result["processes"]),
        f"Rows and options: the {STUDY} study's full profile (widths "
        f"{', '.join(map(str, sorted(widths)))}), one seed; the step as ``train`` compiles it. "
        "Ratio: the kind's step / max's step (medians over processes); per process: the same "
        f"ratio within each process. Target: at most {KINDS_TARGET}x max's step (issue 14).",
        "",
        "| row | options | ms / step | / max | per process | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, seconds in t.items():
        opts = {k: v for k, v in result["options"][label].items() if k != "widths"}
        r = seconds / t["max"]
        spread = ", ".join(f"{x:.2f}" for x in per[label])
        verdict = "met" if r <= KINDS_TARGET else "MISSED"
        lines.append(
            f"| {label} | `{opts}` | {seconds * 1e3:.2f} | {r:.2f} | {spread} | {verdict} |"
        )
    slow = [k for k in t if t[k] / t["max"] > KINDS_TARGET]
    lines += [
        "",
        f"Over {KINDS_TARGET}x max's step: {', '.join(slow) if slow else 'none'}.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- accuracy


def accuracy(epochs: int, seeds: int, workdir: str | None) -> dict:
    """``train`` with the default config on Fashion-MNIST; its history and wall time."""
    from invariance.train import default_config, train

    config = default_config()
    config.num_epochs = epochs
    config.num_seeds = seeds
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


def render_accuracy(result: dict, command: str) -> str:
    """The accuracy section: the test accuracy after every epoch, and the verdict."""
    c = result["config"]
    hist = result["history"]
    lines = [
        '## Accuracy: SmallCNN(pool="max") on Fashion-MNIST',
        "",
        *benchmarking.header(command),
        f"Config: {c['optimizer']} lr {c['learning_rate']} ({c['schedule']}), weight decay "
        f"{c['weight_decay']}, batch {c['batch_size']} per device, {c['num_epochs']} epochs, "
        f"{c['num_seeds']} seed(s), seed {c['seed']}; 60000 train / 10000 test images. "
        f"Wall time {result['seconds']:.0f} s (compile and evaluation included).",
        "",
        "| epoch | train loss | train accuracy | test accuracy | images/s | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in hist:
        lines.append(
            f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_accuracy']:.4f} | "
            f"{r['test_accuracy']:.4f} | {r['images_per_second']:.0f} | {r['seconds']:.1f} |"
        )
    final = hist[-1]["test_accuracy"]
    verdict = "met" if final >= ACCURACY_TARGET else "MISSED"
    lines += [
        "",
        f"Final test accuracy {final:.4f} (target >= {ACCURACY_TARGET}: {verdict}); best "
        f"{max(r['test_accuracy'] for r in hist):.4f}.",
    ]
    if len(hist[-1]["test_accuracy_per_seed"]) > 1:
        per = ", ".join(f"{a:.4f}" for a in hist[-1]["test_accuracy_per_seed"])
        lines.append(f"Per seed: {per}.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- output


def write_sections(path: Path, sections: dict[str, str]) -> None:
    """Rewrites ``sections`` of the document (``io.write_marked_blocks``), the rest kept."""
    initial = "\n".join(
        [
            "# Training benchmark",
            "",
            "Written by `scripts/bench_train.py`; each section is rewritten by its own `--part`.",
            "",
            *(
                f"<!-- {n} -->\n## {n.title()}\n\nNot run yet (`--part {n}`).\n<!-- /{n} -->\n"
                for n in SECTIONS
            ),
        ]
    )
    write_marked_blocks(path, sections, initial=initial)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("speed", "kinds", "accuracy", "all"), default="speed")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed call")
    ap.add_argument("--reps", type=int, default=15, help="interleaved rounds per process")
    ap.add_argument("--processes", type=int, default=3, help="fresh processes to combine")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="run directory of the accuracy part")
    ap.add_argument("--rows", default=None, help="kinds: comma-separated rows (default all)")
    ap.add_argument("--note", default="", help="the measuring conditions, for the header")
    ap.add_argument("--out", default="results/benchmarks/train.md")
    args = ap.parse_args(argv)
    if min(args.steps, args.reps, args.processes, args.epochs, args.seeds) < 1:
        ap.error("--steps, --reps, --processes, --epochs and --seeds must be >= 1")
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
        text = render_accuracy(accuracy(args.epochs, args.seeds, args.workdir), command)
        print(text, flush=True)
        write_sections(out, {"accuracy": text})
    return 0


if __name__ == "__main__":
    runtime.reexec_with_steady_malloc()  # before any timing: see invariance/runtime.py
    sys.exit(main())
