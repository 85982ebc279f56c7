"""Pooling speed: ours against flax.linen, torch (channels_last) and the seeds' numpy loop.

    python scripts/bench_pooling.py [--reps 30] [--processes 3]
                                    [--out results/benchmarks/pooling.md]

Input (256, 28, 28, 32) float32, 2x2 windows, stride 2 and stride 1; forward, and forward +
backward (the pooled output and the input cotangent for a random output cotangent). Prints and
writes a Markdown table of median milliseconds, effective GB/s and ratios, with this machine's
copy bandwidth as the floor. Peers run in the same process, timed in interleaved rounds in a
fresh random order each (see :func:`interleaved_ms`), so the ratios hold on a noisy, shared
machine even when the absolute times drift; and the whole measurement runs in several fresh
processes (see :func:`combine` for why), whose medians are combined. A last line times the
stride-2 max-pool gradients (ours, the XLA path, torch) with cold caches: a read-only sweep of
64 MiB before every call.

"ours max_pool" is what ``pooling.max_pool`` runs: at stride 2 its gradient path uses the
compiled CPU kernel (``invariance/pooling/_cpu_kernel.py``) where it applies; the "XLA path" row
is the same function traced with ``INVARIANCE_CPU_KERNELS=0`` (at stride 1 both are the XLA
path, so the pair's gap there shows the noise).

Effective bytes: forward = |x| + |y|; forward + backward = 2|x| + 2|y| (read x, write y, read
the cotangent of y, write the cotangent of x).

XLA_FLAGS in the environment are honoured and written into the table's command line, e.g.
``XLA_FLAGS=--xla_cpu_use_fusion_emitters=false python scripts/bench_pooling.py --out
results/benchmarks/pooling_legacy_emitters.md`` measures XLA:CPU's previous loop emitters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

# Peers are timed in interleaved rounds: torch's OpenMP workers must sleep, not spin, between
# calls, or they steal the cores from the XLA call that follows (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invariance import pooling, runtime
from invariance.io import atomic_write_text, provenance
from invariance.pooling import _cpu_kernel

SHAPE = (256, 28, 28, 32)
TORCH_MAX = "torch max_pool2d (channels_last)"
COLD_SWEEP_BYTES = 64 << 20  # twice this VM's 32 MiB last-level cache


def interleaved_ms(
    fns: dict[str, Callable[[], object]],
    reps: dict[str, int],
    seed: int = 0,
    before: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Wall times (ms, one per round) of each ``fn()``, timed in interleaved rounds.

    Every round times each function once, so a load that comes and goes on a shared machine
    hits every peer alike and the ratios between them stay meaningful. Each round runs the
    peers in a fresh random order (seeded), so no peer always follows the same neighbour:
    whether the neighbour's buffers evicted a peer's inputs from the cache, or left them warm
    (its own forward pass), is then the same lottery for every peer. (A cyclic rotation of one
    order is not enough: it keeps every peer's neighbour fixed.) ``reps[name]`` rounds include
    that function (slow peers can take fewer). ``before()``, if given, runs untimed before
    every timed call (e.g. a sweep that evicts the caches). Each ``fn`` must block until done.
    """
    for fn in fns.values():  # warm-up: compile and first-touch
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    rng = np.random.default_rng(seed)
    for r in range(max(reps.values())):
        for i in rng.permutation(len(names)):
            name = names[i]
            if r < reps[name]:
                fn = fns[name]
                if before is not None:
                    before()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: [t * 1e3 for t in v] for k, v in times.items()}


def seed_pool2d(fm: np.ndarray, size: int = 2, stride: int = 2) -> np.ndarray:
    """The seeds' reference loop (seeds/001 ``pool2d``, mode='max'), one 2-D map."""
    out_h = (fm.shape[0] - size) // stride + 1
    out_w = (fm.shape[1] - size) // stride + 1
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[i, j] = np.max(fm[i * stride : i * stride + size, j * stride : j * stride + size])
    return out


def jax_impls(stride: int) -> dict[str, Callable]:
    return {
        "ours max_pool": lambda x: pooling.max_pool(x, 2, stride=stride),
        XLA_PATH: lambda x: pooling.max_pool(x, 2, stride=stride),  # traced with the kernel off
        "flax.linen.max_pool": lambda x: nn.max_pool(x, (2, 2), (stride, stride)),
        "ours avg_pool": lambda x: pooling.avg_pool(x, 2, stride=stride),
        "flax.linen.avg_pool": lambda x: nn.avg_pool(x, (2, 2), (stride, stride)),
    }


XLA_PATH = "ours max_pool, XLA path (INVARIANCE_CPU_KERNELS=0)"


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def traced_with(f: Callable, kernels: str | None) -> Callable:
    """``f`` with ``INVARIANCE_CPU_KERNELS=kernels`` while JAX traces it (None: as set)."""

    def g(*args):
        with _env("INVARIANCE_CPU_KERNELS", kernels):
            return f(*args)

    return g


def fwd_bwd(f: Callable, kernels: str | None = None) -> Callable:
    def run(x, g):
        y, vjp = jax.vjp(f, x)
        return y, vjp(g)[0]

    return jax.jit(traced_with(run, kernels))


def bench(reps: int, seed: int = 0) -> tuple[list[dict], dict]:
    """One process's measurement: table rows and the floor / ratio extras (see :func:`combine`)."""
    key = jax.random.key(0)
    x = jax.random.normal(key, SHAPE, jnp.float32)
    nbytes_x = x.size * 4
    src = np.asarray(x)
    dst = np.empty_like(src)
    xla_copy = jax.jit(lambda a: a * 1.0001)
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        xt = torch.from_numpy(src.transpose(0, 3, 1, 2).copy())
        xt = xt.contiguous(memory_format=torch.channels_last)
    except ImportError:
        torch = None

    # Every timed callable, keyed (stride, impl, "fwd" | "fwdbwd"), plus the copy floor.
    fns: dict = {
        ("copy", "numpy"): lambda: np.copyto(dst, src),
        ("copy", "xla"): lambda: xla_copy(x).block_until_ready(),
    }
    reps_of: dict = {k: reps for k in fns}
    ny: dict[int, int] = {}
    for stride in (2, 1):
        ho = (SHAPE[1] - 2) // stride + 1
        y_shape = (SHAPE[0], ho, ho, SHAPE[3])
        ny[stride] = int(np.prod(y_shape)) * 4
        g = jax.random.normal(jax.random.key(1), y_shape, jnp.float32)
        for name, f in jax_impls(stride).items():
            kernels = "0" if name == XLA_PATH else None
            fj, fb = jax.jit(traced_with(f, kernels)), fwd_bwd(f, kernels)
            uses_kernel = "invariance_max_pool" in fb.lower(x, g).as_text()
            if uses_kernel and name != "ours max_pool":  # the labels must say what ran
                raise RuntimeError(f"{name} at stride {stride} unexpectedly uses the CPU kernel")
            if name == "ours max_pool" and stride == 2:
                kernel_used = uses_kernel
            fns[(stride, name, "fwd")] = lambda fj=fj: fj(x).block_until_ready()
            fns[(stride, name, "fwdbwd")] = lambda fb=fb, g=g: jax.block_until_ready(fb(x, g))
            slow = "flax" in name and "max" in name  # XLA's select_and_scatter gradient
            reps_of[(stride, name, "fwd")] = reps
            reps_of[(stride, name, "fwdbwd")] = max(3, reps // 10) if slow else reps
        if torch is not None:
            F = torch.nn.functional
            gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())
            gt = gt.contiguous(memory_format=torch.channels_last)
            for kind, op in (("max", F.max_pool2d), ("avg", F.avg_pool2d)):
                xg = xt.clone().requires_grad_(True)

                def fb_t(op=op, xg=xg, gt=gt, stride=stride):
                    y = op(xg, 2, stride)
                    y.backward(gt)
                    xg.grad = None

                def f_t(op=op, stride=stride):
                    with torch.no_grad():
                        op(xt, 2, stride)

                name = f"torch {kind}_pool2d (channels_last)"
                fns[(stride, name, "fwd")], fns[(stride, name, "fwdbwd")] = f_t, fb_t
                reps_of[(stride, name, "fwd")] = reps_of[(stride, name, "fwdbwd")] = reps
    raw = interleaved_ms(fns, reps_of, seed)
    t = {k: float(np.median(v)) for k, v in raw.items()}
    t_np, t_xla = t.pop(("copy", "numpy")), t.pop(("copy", "xla"))
    bandwidth = 2 * nbytes_x / (min(t_np, t_xla) * 1e-3) / 1e9  # GB/s
    floor = {"copy_ms_numpy": t_np, "copy_ms_xla": t_xla, "bandwidth_gbs": bandwidth}
    floor["kernel_used"] = kernel_used
    floor["kernel_build"] = "AVX2" if "-mavx2" in _cpu_kernel.isa_flags() else "portable"
    # The torch target's ratio round by round: its spread shows how much of a verdict is noise.
    torch_key = (2, TORCH_MAX, "fwdbwd")
    if torch_key in raw:
        per_round = np.asarray(raw[(2, "ours max_pool", "fwdbwd")]) / np.asarray(raw[torch_key])
        floor["torch_ratio_rounds"] = [float(r) for r in per_round]
        # The stride-2 max-pool gradients again, each call after a read-only sweep of 2x the
        # last-level cache: x, the cotangent and the outputs all start in DRAM, for all alike.
        sweep = np.ones(COLD_SWEEP_BYTES // 4, np.float32)
        trio = {k: fns[k] for k in ((2, n, "fwdbwd") for n in ("ours max_pool", XLA_PATH))}
        trio[torch_key] = fns[torch_key]
        cold = interleaved_ms(trio, dict.fromkeys(trio, reps), seed, before=sweep.sum)
        floor["cold_ms"] = [float(np.median(cold[k])) for k in trio]  # ours, XLA path, torch
    rows: list[dict] = []
    for (stride, name, part), ms in t.items():
        if part == "fwd":
            rows.append(
                dict(
                    stride=stride,
                    impl=name,
                    fwd=ms,
                    fwdbwd=t[(stride, name, "fwdbwd")],
                    ny=ny[stride],
                )
            )
    for stride in (2, 1):
        # The seeds' loop: time 64 single-channel maps, extrapolate to 256 x 32 maps.
        maps = src[:2].transpose(0, 3, 1, 2).reshape(-1, 28, 28)
        t0 = time.perf_counter()
        for m in maps:
            seed_pool2d(m, 2, stride)
        per_map = (time.perf_counter() - t0) / len(maps)
        rows.append(
            dict(
                stride=stride,
                impl="seeds' numpy loop (extrapolated)",
                fwd=per_map * SHAPE[0] * SHAPE[3] * 1e3,
                fwdbwd=float("nan"),
                ny=ny[stride],
            )
        )
    rows.sort(key=lambda r: -r["stride"])
    return rows, floor


def ours_over(rows: list[dict], peer: str = TORCH_MAX) -> float | None:
    """Ours / ``peer``, max pooling forward + backward at stride 2 (None where the peer was not
    measured, e.g. torch not importable)."""
    by = {(r["stride"], r["impl"]): r["fwdbwd"] for r in rows}
    other = by.get((2, peer))
    return None if other is None else by[(2, "ours max_pool")] / other


def combine(runs: list[tuple[list[dict], dict]]) -> tuple[list[dict], dict]:
    """One table from :func:`bench` runs in separate processes: each time is the median over
    processes of the per-process medians; the derived columns are computed from those.

    Separate processes, because on this VM a process can land in a slow or a fast mode (e.g.
    where its buffers fall in memory) that holds for its whole life: six single-process runs
    of the same commit gave a torch ratio of 0.43 twice and 0.52-0.54 four times.
    """
    nbytes_x = int(np.prod(SHAPE)) * 4
    keyed = [{(r["stride"], r["impl"]): r for r in run_rows} for run_rows, _ in runs]
    rows = [dict(r) for r in runs[0][0]]
    for r in rows:
        key = (r["stride"], r["impl"])
        for part in ("fwd", "fwdbwd"):
            r[part] = float(np.median([by[key][part] for by in keyed]))
    floor = {
        k: float(np.median([run[1][k] for run in runs]))
        for k in ("copy_ms_numpy", "copy_ms_xla", "bandwidth_gbs")
    }
    floor["processes"] = len(runs)
    floor["kernel_used"] = all(run[1]["kernel_used"] for run in runs)
    floor["kernel_build"] = "/".join(sorted({run[1]["kernel_build"] for run in runs}))
    floor["xla_path_ratio_by_process"] = [ours_over(run_rows, XLA_PATH) for run_rows, _ in runs]
    if all("torch_ratio_rounds" in run[1] for run in runs):
        pooled = np.concatenate([run[1]["torch_ratio_rounds"] for run in runs])
        floor["torch_ratio_quartiles"] = [float(q) for q in np.percentile(pooled, [25, 50, 75])]
        floor["torch_ratio_by_process"] = [ours_over(run_rows) for run_rows, _ in runs]
    if all("cold_ms" in run[1] for run in runs):
        floor["cold_ratio_by_process"] = [o / t for o, _, t in (run[1]["cold_ms"] for run in runs)]
        cold = np.median([run[1]["cold_ms"] for run in runs], axis=0)
        floor["cold_ms"] = [float(ms) for ms in cold]
    for r in rows:
        r["gbs_fwd"] = (nbytes_x + r["ny"]) / (r["fwd"] * 1e-3) / 1e9
        r["gbs_fwdbwd"] = 2 * (nbytes_x + r["ny"]) / (r["fwdbwd"] * 1e-3) / 1e9
        r["floor_fwd"] = (nbytes_x + r["ny"]) / (floor["bandwidth_gbs"] * 1e9) * 1e3
    return rows, floor


def bench_in_processes(reps: int, processes: int) -> tuple[list[dict], dict]:
    """:func:`bench` in ``processes`` fresh Python processes (same environment), combined."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(processes):
            path = Path(tmp) / f"run{p}.json"
            cmd = [sys.executable, __file__, "--reps", str(reps), "--child-json", str(path)]
            cmd += ["--seed", str(p)]  # each process its own sequence of orders
            subprocess.run(cmd, check=True)
            rows, floor = json.loads(path.read_text())
            runs.append((rows, floor))
            print(
                f"process {p + 1}/{processes}: ours / torch fwd+bwd = {ours_over(rows)}",
                flush=True,
            )
    return combine(runs)


DEFAULT_OUT = "results/benchmarks/pooling.md"


def command(reps: int, processes: int, out: str) -> str:
    """The command line that makes this table, XLA_FLAGS and the INVARIANCE_CPU_KERNEL*
    switches included when set."""
    prefix = "".join(
        f"{name}={shlex.quote(os.environ[name])} "
        for name in ("XLA_FLAGS", "INVARIANCE_CPU_KERNELS", "INVARIANCE_CPU_KERNEL_ISA")
        if os.environ.get(name)
    )
    suffix = f" --out {out}" if out != DEFAULT_OUT else ""
    return f"{prefix}python scripts/bench_pooling.py --reps {reps} --processes {processes}{suffix}"


def render(rows: list[dict], floor: dict, reps: int, processes: int, out: str = DEFAULT_OUT) -> str:
    prov = provenance()
    lines = [
        "# Pooling benchmark",
        "",
        f"Command: `{command(reps, processes, out)}`  ",
        f"Input {SHAPE} float32 NHWC (torch: NCHW in channels_last), 2x2 windows; "
        f"{reps} interleaved rounds (every peer timed once per round, in a fresh random order) "
        f"in each of {processes} fresh processes: the median over processes of each process's "
        "median.  ",
        f"Device: {prov['device']} ({prov['backend']}, {prov['cpu']}); jax {prov['jax']}, "
        f"flax {prov['flax']}; commit {prov['git_commit']}; {prov['date']}.  ",
        f"{runtime.malloc_note()}  ",
        "ours max_pool at stride 2, forward + backward: "
        + (
            f"the compiled CPU kernel, {floor['kernel_build']} build "
            "(invariance/pooling/_cpu_kernel.py).  "
            if floor["kernel_used"]
            else "the XLA path (the CPU kernel was off or not available here).  "
        ),
        f"Copy bandwidth floor: {floor['bandwidth_gbs']:.1f} GB/s (numpy copy "
        f"{floor['copy_ms_numpy']:.2f} ms, XLA copy {floor['copy_ms_xla']:.2f} ms for |x|).",
        "",
        "| stride | implementation | fwd ms | fwd GB/s | fwd / floor | fwd+bwd ms | fwd+bwd GB/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        fb = "n/a" if np.isnan(r["fwdbwd"]) else f"{r['fwdbwd']:.2f}"
        fbg = "n/a" if np.isnan(r["fwdbwd"]) else f"{r['gbs_fwdbwd']:.1f}"
        lines.append(
            f"| {r['stride']} | {r['impl']} | {r['fwd']:.2f} | {r['gbs_fwd']:.1f} | "
            f"{r['fwd'] / r['floor_fwd']:.2f}x | {fb} | {fbg} |"
        )
    lines += ["", "## Targets (max_pool, stride 2, this machine)", ""]
    by = {(r["stride"], r["impl"]): r for r in rows}
    ours = by[(2, "ours max_pool")]
    checks = [
        (
            "fwd+bwd vs flax.linen.max_pool gradient (target <= 0.10)",
            ours_over(rows, "flax.linen.max_pool"),
            0.10,
        ),
        ("fwd vs the copy-bandwidth floor (target <= 1.5)", ours["fwd"] / ours["floor_fwd"], 1.5),
    ]
    torch_ratio = ours_over(rows)
    if torch_ratio is not None:
        checks.insert(0, ("fwd+bwd vs torch channels_last (target <= 0.50)", torch_ratio, 0.50))
    else:
        lines.append("torch is not importable here: the torch target was not measured.")
    for label, ratio, target in checks:
        verdict = "met" if ratio <= target else "MISSED"
        lines.append(f"- {label}: {ratio:.3f} — {verdict}")
    if "torch_ratio_quartiles" in floor:
        q25, q50, q75 = floor["torch_ratio_quartiles"]
        lines.append(
            f"- the torch ratio round by round (ours / torch fwd+bwd, same round, all "
            f"processes): median {q50:.3f}, quartiles {q25:.3f}-{q75:.3f}"
        )
        per = ", ".join(f"{r:.3f}" for r in floor["torch_ratio_by_process"])
        lines.append(f"- the torch ratio in each process: {per}")
    if "cold_ms" in floor:
        o, x, t = floor["cold_ms"]
        per = ", ".join(f"{r:.3f}" for r in floor["cold_ratio_by_process"])
        lines.append(
            f"- cold caches (a read-only sweep of {COLD_SWEEP_BYTES >> 20} MiB before every "
            f"call; fwd+bwd at stride 2, {reps} rounds): ours {o:.2f} ms, the XLA path "
            f"{x:.2f} ms, torch {t:.2f} ms; ours / torch {o / t:.3f} (per process {per})"
        )
    per = ", ".join(f"{r:.3f}" for r in floor["xla_path_ratio_by_process"])
    lines.append(
        f"- stride 2: ours fwd+bwd / the same without the CPU kernel (XLA path) = "
        f"{ours_over(rows, XLA_PATH):.3f} (in each process: {per})"
    )
    for stride in (1,):
        o, f = by[(stride, "ours max_pool")], by[(stride, "flax.linen.max_pool")]
        lines.append(
            f"- stride {stride}: ours fwd+bwd / flax.linen gradient = "
            f"{o['fwdbwd'] / f['fwdbwd']:.3f}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--processes", type=int, default=3, help="fresh processes to combine")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--child-json", help=argparse.SUPPRESS)  # one process's raw result
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # its peer orders
    args = ap.parse_args(argv)
    if args.child_json:
        atomic_write_text(args.child_json, json.dumps(bench(args.reps, args.seed)))
        return 0
    if args.reps < 1 or args.processes < 1:
        ap.error("--reps and --processes must be >= 1")
    rows, floor = bench_in_processes(args.reps, args.processes)
    text = render(rows, floor, args.reps, args.processes, args.out)
    print(text)
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    runtime.reexec_with_steady_malloc()  # before any timing: see invariance/runtime.py
    sys.exit(main())
