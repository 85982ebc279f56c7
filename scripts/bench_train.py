"""Training speed (ours vs flax.linen.max_pool vs torch) and Fashion-MNIST accuracy.

    python scripts/bench_train.py --part speed     [--steps 20] [--reps 7]
    python scripts/bench_train.py --part accuracy  [--epochs 10] [--seeds 1]
    python scripts/bench_train.py --part all

Speed: the train step (gather the batch, uint8 -> float, forward, softmax cross-entropy,
backward, AdamW update) of SmallCNN(pool="max") — conv3x3(32) -> ReLU -> maxpool2 ->
conv3x3(64) -> ReLU -> maxpool2 -> flatten -> dense(128) -> ReLU -> dense(10) — at batch 128,
as ``invariance.train`` compiles it (jit, shardings, donated state, vmapped over seeds), with
(a) our ``pooling.max_pool``, (b) ``flax.linen.max_pool`` patched into the same model, (c) the
same network in torch on the CPU (AdamW, ``torch.set_num_threads(os.cpu_count())``, NCHW and
channels_last); and ours with ``num_seeds`` = 1 and 4 (one program training 4 models vs 4
separate runs). Each variant runs blocks of ``--steps`` steps, interleaved with the others,
``--reps`` times; the median block gives the step time, so a shared, noisy machine slows all
variants alike. A breakdown (forward, forward + backward, whole step) says where the time goes.

Accuracy: ``invariance.train.train`` with the default config (SmallCNN max, AdamW 1e-3, cosine,
weight decay 1e-4, batch 128) on real Fashion-MNIST; the test accuracy after every epoch.

Both parts write their own section of ``results/benchmarks/train.md`` (atomically; the other
section is kept), stamped with ``invariance.io.provenance()`` and the command.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
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

from invariance.io import atomic_write_text, provenance

BATCH = 128
SPEED_TARGET = 1.0  # num_seeds=4: per-model step time / one-seed step time must be below this.
ACCURACY_TARGET = 0.91
SECTIONS = ("speed", "accuracy")


# ----------------------------------------------------------------------------- JAX variants


def _flax_max_pool(x, window, stride=None, padding="VALID"):
    from invariance.models.layers import as_pair

    stride = window if stride is None else stride
    return nn.max_pool(x, as_pair(window), as_pair(stride), padding)


class _patched_max_pool:
    """Swaps ``pooling.max_pool`` (as the models' Pool layer sees it) for flax.linen's."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        from invariance.models import layers

        self.module, self.saved = layers.pooling, layers.pooling.max_pool
        if self.enabled:
            self.module.max_pool = _flax_max_pool

    def __exit__(self, *exc):
        self.module.max_pool = self.saved


def _data(n: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    from invariance.data import load

    return load("synthetic", "train", num_examples=n)


def jax_variant(
    num_seeds: int, *, flax_pool: bool = False, vmap_seeds: int | None = None
) -> dict[str, Callable]:
    """The train step exactly as ``train`` builds it, plus its forward and forward+backward.

    Returns:
        ``{"step": run(k), "fwd": run(k), "fwd+bwd": run(k)}``: each runs k calls and blocks.
    """
    from invariance.models import create_model
    from invariance.train import default_config, make_optimizer
    from invariance.train._eval import map_seeds, resolve_vmap_seeds
    from invariance.train._loop import _init_state, _make_step

    config = default_config()
    config.num_seeds = num_seeds
    config.vmap_seeds = vmap_seeds
    chunk = resolve_vmap_seeds(vmap_seeds, num_seeds)
    images, labels = _data()
    steps_per_epoch = len(images) // BATCH
    model = create_model("small_cnn", pool="max")
    tx = make_optimizer(config, steps_per_epoch)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    with _patched_max_pool(flax_pool):
        state = _init_state(model, tx, config, images.shape[1:], replicated)
        step = jax.jit(
            _make_step(
                model,
                tx,
                config,
                steps_per_epoch=steps_per_epoch,
                global_batch=BATCH * mesh.size,
                batch_sharding=batch_sharding,
            ),
            in_shardings=(replicated,) * 4,
            out_shardings=(replicated, replicated),
            donate_argnums=(0,),
        )
        dev_images = jax.device_put(images, replicated)
        dev_labels = jax.device_put(labels, replicated)
        perms = jax.device_put(
            np.stack(
                [np.random.default_rng(i).permutation(len(images)) for i in range(num_seeds)]
            ).astype(np.int32),
            replicated,
        )
        step = step.lower(state, dev_images, dev_labels, perms).compile()

        def loss(params, x, y):
            logits = model.apply({"params": params}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        vloss = jax.jit(lambda *a: map_seeds(loss, a, vmap_seeds=chunk))
        vgrad = jax.jit(lambda *a: map_seeds(jax.value_and_grad(loss), a, vmap_seeds=chunk))
        x = jnp.asarray(np.broadcast_to(images[:BATCH], (num_seeds, *images[:BATCH].shape)))
        x = x.astype(jnp.float32) / 255
        y = jnp.asarray(np.broadcast_to(labels[:BATCH], (num_seeds, BATCH)))
        params = jax.tree.map(jnp.copy, state["variables"]["params"])  # the step donates state
        jax.block_until_ready((vloss(params, x, y), vgrad(params, x, y)))

    box = {"state": state}

    def run_step(k: int) -> None:
        s = box["state"]
        for _ in range(k):
            s, _ = step(s, dev_images, dev_labels, perms)
        box["state"] = jax.block_until_ready(s)

    def run_fwd(k: int) -> None:
        for _ in range(k):
            out = vloss(params, x, y)
        jax.block_until_ready(out)

    def run_grad(k: int) -> None:
        for _ in range(k):
            out = vgrad(params, x, y)
        jax.block_until_ready(out)

    run_step(2)
    return {"step": run_step, "fwd": run_fwd, "fwd+bwd": run_grad}


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


def measure(variants: dict[str, dict[str, Callable]], steps: int, reps: int) -> dict:
    """Median seconds per call of each (variant, part); blocks interleaved across variants."""
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for name, parts in variants.items():
            for part, run in parts.items():
                t0 = time.perf_counter()
                run(steps)
                times.setdefault((name, part), []).append((time.perf_counter() - t0) / steps)
    return {key: float(np.median(v)) for key, v in times.items()}


def speed(steps: int, reps: int) -> dict:
    variants: dict[str, dict[str, Callable]] = {}
    labels: dict[str, tuple[str, int]] = {}  # name -> (description, models per step)
    print("compiling / warming up ...", flush=True)
    variants["ours"] = jax_variant(1)
    labels["ours"] = ("ours: invariance.pooling.max_pool, num_seeds=1", 1)
    variants["flax"] = jax_variant(1, flax_pool=True)
    labels["flax"] = ("flax.linen.max_pool in the same model, num_seeds=1", 1)
    variants["ours x4"] = jax_variant(4, vmap_seeds=1)
    labels["ours x4"] = ("ours, num_seeds=4, vmap_seeds=1 (CPU default: a loop in one program)", 4)
    variants["ours x4 vmap"] = jax_variant(4, vmap_seeds=4)
    labels["ours x4 vmap"] = ("ours, num_seeds=4, vmap_seeds=4 (jax.vmap: grouped convs)", 4)
    for cl in (False, True):
        v = torch_variant(cl)
        if v is not None:
            name = "torch channels_last" if cl else "torch NCHW"
            variants[name] = v
            labels[name] = (f"torch {torch_version()} CPU, {name.split(' ', 1)[1]}", 1)
    print(f"timing {len(variants)} variants: {reps} x {steps} steps each ...", flush=True)
    t = measure(variants, steps, reps)
    return {"times": t, "labels": labels, "steps": steps, "reps": reps}


def torch_version() -> str:
    import torch

    return torch.__version__


def render_speed(result: dict, command: str) -> str:
    t, labels = result["times"], result["labels"]
    prov = provenance()
    lines = [
        '## Speed: train step, SmallCNN(pool="max"), batch 128',
        "",
        f"Command: `{command}`  ",
        f"Device: {prov['device']} ({prov['backend']}, {prov['cpu']}, {prov['device_count']} "
        f"device(s)); jax {prov['jax']}, flax {prov['flax']}; commit {prov['git_commit']}; "
        f"{prov['date']}.  ",
        f"Median of {result['reps']} interleaved blocks of {result['steps']} steps. A step: "
        "gather the batch, uint8 -> float, forward, cross-entropy, backward, AdamW update.",
        "",
        "| variant | ms / step | images/s (all models) | images/s per model | fwd ms | "
        "fwd+bwd ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, (desc, models) in labels.items():
        step = t[(name, "step")]
        lines.append(
            f"| {desc} | {step * 1e3:.2f} | {BATCH * models / step:.0f} | "
            f"{BATCH / step:.0f} | {t[(name, 'fwd')] * 1e3:.2f} | "
            f"{t[(name, 'fwd+bwd')] * 1e3:.2f} |"
        )
    ours, flax_, four = t[("ours", "step")], t[("flax", "step")], t[("ours x4", "step")]
    lines += ["", "Ratios (step time; below 1 means ours is faster):", ""]
    lines.append(f"- ours / flax.linen.max_pool model: {ours / flax_:.3f}")
    torch_names = [n for n in labels if n.startswith("torch")]
    if torch_names:
        best = min(torch_names, key=lambda n: t[(n, "step")])
        tb = t[(best, "step")]
        lines.append(f"- ours / torch (best layout: {best.split(' ', 1)[1]}): {ours / tb:.3f}")
        for part in ("fwd", "fwd+bwd"):
            lines.append(f"  - {part}: ours / torch = {t[('ours', part)] / t[(best, part)]:.3f}")
    per_model = four / 4 / ours
    verdict = "met" if per_model < SPEED_TARGET else "MISSED"
    lines.append(
        f"- num_seeds=4 (CPU default, vmap_seeds=1), per model / num_seeds=1: {per_model:.3f} "
        f"(target < {SPEED_TARGET}: {verdict}; 4 models cost {four / ours:.2f}x one model's "
        "step)"
    )
    vm = t[("ours x4 vmap", "step")]
    lines.append(
        f"- num_seeds=4 with jax.vmap over all seeds (vmap_seeds=4), per model / num_seeds=1: "
        f"{vm / 4 / ours:.3f} (4 models cost {vm / ours:.2f}x one model's step: XLA:CPU "
        "runs the grouped convolutions that vmap over kernels becomes far slower)"
    )
    lines += ["", "Where the time goes (ours, num_seeds=1):", ""]
    fwd, grad = t[("ours", "fwd")], t[("ours", "fwd+bwd")]
    lines.append(
        f"- forward {fwd * 1e3:.2f} ms ({fwd / ours:.0%} of the step), backward "
        f"{(grad - fwd) * 1e3:.2f} ms ({(grad - fwd) / ours:.0%}), gather + uint8->float + "
        f"AdamW update + dispatch {(ours - grad) * 1e3:.2f} ms ({(ours - grad) / ours:.0%})."
    )
    if torch_names:
        lines.append(
            f"- torch ({best.split(' ', 1)[1]}): forward {t[(best, 'fwd')] * 1e3:.2f} ms, "
            f"backward {(t[(best, 'fwd+bwd')] - t[(best, 'fwd')]) * 1e3:.2f} ms, rest "
            f"{(tb - t[(best, 'fwd+bwd')]) * 1e3:.2f} ms."
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- accuracy


def accuracy(epochs: int, seeds: int, workdir: str | None) -> dict:
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
    prov = provenance()
    c = result["config"]
    hist = result["history"]
    lines = [
        '## Accuracy: SmallCNN(pool="max") on Fashion-MNIST',
        "",
        f"Command: `{command}`  ",
        f"Device: {prov['device']} ({prov['backend']}, {prov['cpu']}, {prov['device_count']} "
        f"device(s)); jax {prov['jax']}, flax {prov['flax']}; commit {prov['git_commit']}; "
        f"{prov['date']}.  ",
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
        lines.append(
            f"Per seed: {', '.join(f'{a:.4f}' for a in hist[-1]['test_accuracy_per_seed'])}."
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- output


def merge(path: Path, sections: dict[str, str]) -> str:
    """The document with ``sections`` replaced (or added) and the other sections kept."""
    old = path.read_text() if path.exists() else ""
    kept = {}
    for name in SECTIONS:
        m = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->\n", old, re.S)
        if m:
            kept[name] = m.group(1)
    kept.update(sections)
    parts = [
        "# Training benchmark",
        "",
        "Written by `scripts/bench_train.py`; each section is rewritten by its own `--part`.",
        "",
    ]
    for name in SECTIONS:
        body = kept.get(name, f"## {name.title()}\n\nNot run yet (`--part {name}`).\n")
        parts.append(f"<!-- {name} -->\n{body}<!-- /{name} -->\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("speed", "accuracy", "all"), default="speed")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed block")
    ap.add_argument("--reps", type=int, default=7, help="timed blocks per variant")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="run directory of the accuracy part")
    ap.add_argument("--out", default="results/benchmarks/train.md")
    args = ap.parse_args(argv)
    command = "python scripts/bench_train.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    if args.part in ("speed", "all"):
        text = render_speed(speed(args.steps, args.reps), command)
        print(text, flush=True)
        atomic_write_text(out, merge(out, {"speed": text}))
    if args.part in ("accuracy", "all"):
        text = render_accuracy(accuracy(args.epochs, args.seeds, args.workdir), command)
        print(text, flush=True)
        atomic_write_text(out, merge(out, {"accuracy": text}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
