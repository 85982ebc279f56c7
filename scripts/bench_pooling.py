"""Pooling speed: ours against flax.linen, torch (channels_last) and the seeds' numpy loop.

    python scripts/bench_pooling.py [--reps 30] [--processes 3] [--batch 256]
                                    [--out results/benchmarks/pooling.md]

Input (256, 28, 28, 32) float32, 2x2 windows, stride 2 and stride 1; forward, and forward +
backward (the pooled output and the input cotangent for a random output cotangent). Prints and
writes a Markdown table of median milliseconds, effective GB/s and ratios, with this machine's
copy bandwidth as the floor. Timing follows ``invariance.benchmarking``: peers in the same
process, interleaved rounds in a seeded random order each, the median of the rounds, the whole
measurement in ``--processes`` fresh processes combined by the median over processes. A last
line times the stride-2 max-pool gradients (ours, the XLA path, torch) with cold caches: a
read-only sweep of 64 MiB before every call.

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
import os
import sys
import time

# Peers are timed in interleaved rounds: torch's OpenMP workers must sleep, not spin, between
# calls, or they steal the cores from the XLA call that follows (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from invariance import benchmarking, pooling, runtime
from invariance.io import atomic_write_text
from invariance.pooling import _cpu_kernel

SHAPE = (256, 28, 28, 32)
TORCH_MAX = "torch max_pool2d (channels_last)"
XLA_PATH = "ours max_pool, XLA path (INVARIANCE_CPU_KERNELS=0)"
SEEDS_LOOP = "seeds' numpy loop (extrapolated)"
COLD_SWEEP_BYTES = 64 << 20  # twice this VM's 32 MiB last-level cache
DEFAULT_OUT = "results/benchmarks/pooling.md"


def seed_pool2d(fm: np.ndarray, size: int = 2, stride: int = 2) -> np.ndarray:
    """The seeds' reference loop (seed 001's ``pool2d``, docs/seeds.md; mode='max'), one map."""
    out_h = (fm.shape[0] - size) // stride + 1
    out_w = (fm.shape[1] - size) // stride + 1
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            out[i, j] = np.max(fm[i * stride : i * stride + size, j * stride : j * stride + size])
    return out


def jax_impls(stride: int) -> dict[str, Callable]:
    """The JAX peers at ``stride``, 2x2 windows (options by keyword)."""
    return {
        "ours max_pool": lambda x: pooling.max_pool(x, window=2, stride=stride),
        XLA_PATH: lambda x: pooling.max_pool(x, window=2, stride=stride),  # kernel off
        "flax.linen.max_pool": lambda x: nn.max_pool(x, (2, 2), (stride, stride)),
        "ours avg_pool": lambda x: pooling.avg_pool(x, window=2, stride=stride),
        "flax.linen.avg_pool": lambda x: nn.avg_pool(x, (2, 2), (stride, stride)),
    }


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
    """Jitted ``(x, g) -> (f(x), the cotangent of x for output cotangent g)``."""

    def run(x, g):
        y, vjp = jax.vjp(f, x)
        return y, vjp(g)[0]

    return jax.jit(traced_with(run, kernels))


def _jax_peers(x: jax.Array, stride: int, reps: int) -> tuple[dict, dict, bool]:
    """``(fns, rounds_of, kernel_used)`` of the JAX peers at ``stride``, keyed
    ``(stride, impl, "fwd" | "fwdbwd")``; kernel_used: ours used the CPU kernel."""
    g = jax.random.normal(jax.random.key(1), _pooled_shape(x.shape, stride), jnp.float32)
    fns, rounds_of, kernel_used = {}, {}, False
    for name, f in jax_impls(stride).items():
        kernels = "0" if name == XLA_PATH else None
        fj, fb = jax.jit(traced_with(f, kernels)), fwd_bwd(f, kernels)
        uses_kernel = "invariance_max_pool" in fb.lower(x, g).as_text()
        if uses_kernel and name != "ours max_pool":  # the labels must say what ran
            raise RuntimeError(f"{name} at stride {stride} unexpectedly uses the CPU kernel")
        kernel_used = kernel_used or uses_kernel
        fns[(stride, name, "fwd")] = lambda fj=fj: fj(x).block_until_ready()
        fns[(stride, name, "fwdbwd")] = lambda fb=fb: jax.block_until_ready(fb(x, g))
        if "flax" in name and "max" in name:  # XLA's select_and_scatter gradient is slow
            rounds_of[(stride, name, "fwdbwd")] = max(3, reps // 10)
    return fns, rounds_of, kernel_used


def _torch_peers(src: np.ndarray, stride: int) -> dict:
    """torch's max / avg pool2d in channels_last at ``stride`` ({} without torch)."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(os.cpu_count() or 1)
    F = torch.nn.functional
    xt = torch.from_numpy(src.transpose(0, 3, 1, 2).copy())
    xt = xt.contiguous(memory_format=torch.channels_last)
    g = np.asarray(jax.random.normal(jax.random.key(1), _pooled_shape(src.shape, stride)))
    gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=torch.channels_last
    )
    fns = {}
    for kind, op in (("max", F.max_pool2d), ("avg", F.avg_pool2d)):
        xg = xt.clone().requires_grad_(True)

        def fb_t(op=op, xg=xg):
            op(xg, 2, stride).backward(gt)
            xg.grad = None

        def f_t(op=op):
            with torch.no_grad():
                op(xt, 2, stride)

        name = f"torch {kind}_pool2d (channels_last)"
        fns[(stride, name, "fwd")], fns[(stride, name, "fwdbwd")] = f_t, fb_t
    return fns


def _seeds_loop_ms(src: np.ndarray, stride: int) -> float:
    """The seeds' loop on the maps of 2 images, extrapolated to all of ``src``'s maps (ms)."""
    n, h, w, c = src.shape
    maps = src[:2].transpose(0, 3, 1, 2).reshape(-1, h, w)
    t0 = time.perf_counter()
    for m in maps:
        seed_pool2d(m, 2, stride)
    return (time.perf_counter() - t0) / len(maps) * n * c * 1e3


def _pooled_shape(shape: tuple[int, ...], stride: int) -> tuple[int, ...]:
    """The output shape of a 2x2 VALID pool at ``stride``."""
    n, h, w, c = shape
    return (n, (h - 2) // stride + 1, (w - 2) // stride + 1, c)


def bench(reps: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> dict:
    """One process's measurement: median ms per peer, keyed ``(stride, impl, part)`` (and
    ``("copy", "numpy" | "xla")``), the torch ratio of every round, and the cold-cache trio."""
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    src = np.asarray(x)
    dst = np.empty_like(src)
    xla_copy = jax.jit(lambda a: a * 1.0001)
    fns: dict = {
        ("copy", "numpy"): lambda: np.copyto(dst, src),
        ("copy", "xla"): lambda: xla_copy(x).block_until_ready(),
    }
    rounds_of: dict = {}
    kernel_used = False
    for stride in (2, 1):
        jfns, jrounds, used = _jax_peers(x, stride, reps)
        fns |= jfns | _torch_peers(src, stride)
        rounds_of |= jrounds
        kernel_used = kernel_used or (used and stride == 2)
    raw = benchmarking.interleaved(fns, rounds=reps, seed=seed, rounds_of=rounds_of)
    ms = {k: v * 1e3 for k, v in benchmarking.medians(raw).items()}
    for stride in (2, 1):
        ms[(stride, SEEDS_LOOP, "fwd")] = _seeds_loop_ms(src, stride)
    out = {
        "ms": ms,
        "kernel_used": kernel_used,
        "kernel_build": "AVX2" if "-mavx2" in _cpu_kernel.isa_flags() else "portable",
        "shape": tuple(shape),
    }
    torch_key, ours_key = (2, TORCH_MAX, "fwdbwd"), (2, "ours max_pool", "fwdbwd")
    if torch_key in raw:
        # The torch target's ratio round by round: its spread shows how much is noise.
        out["torch_ratio_rounds"] = list(np.asarray(raw[ours_key]) / np.asarray(raw[torch_key]))
        # The same gradients after a read-only sweep of 2x the last-level cache before every
        # call: x, the cotangent and the outputs all start in DRAM, for all alike.
        sweep = np.ones(COLD_SWEEP_BYTES // 4, np.float32)
        trio = {k: fns[k] for k in (ours_key, (2, XLA_PATH, "fwdbwd"), torch_key)}
        cold = benchmarking.interleaved(trio, rounds=reps, seed=seed, before=sweep.sum)
        out["cold_ms"] = [v * 1e3 for v in benchmarking.medians(cold).values()]
    return out


def ours_over(ms: dict, peer: str = TORCH_MAX) -> float | None:
    """Ours / ``peer``, max pooling forward + backward at stride 2, from a ``ms`` dict (None
    where the peer was not measured, e.g. torch not importable)."""
    other = ms.get((2, peer, "fwdbwd"))
    return None if other is None else ms[(2, "ours max_pool", "fwdbwd")] / other


def combine(runs: list[dict]) -> tuple[dict, dict]:
    """``(ms, extras)`` of :func:`bench` runs in separate processes: each time the median
    over processes (``benchmarking.combine``); the per-process ratios kept to show spread."""
    ms = benchmarking.combine([run["ms"] for run in runs])
    extras: dict = {
        "processes": len(runs),
        "kernel_used": all(run["kernel_used"] for run in runs),
        "kernel_build": "/".join(sorted({run["kernel_build"] for run in runs})),
        "shape": runs[0]["shape"],
        "xla_path_ratio_by_process": [ours_over(run["ms"], XLA_PATH) for run in runs],
    }
    if all("torch_ratio_rounds" in run for run in runs):
        pooled = np.concatenate([run["torch_ratio_rounds"] for run in runs])
        extras["torch_ratio_quartiles"] = [float(q) for q in np.percentile(pooled, [25, 50, 75])]
        extras["torch_ratio_by_process"] = [ours_over(run["ms"]) for run in runs]
        extras["cold_ratio_by_process"] = [o / t for o, _, t in (run["cold_ms"] for run in runs)]
        extras["cold_ms"] = [float(v) for v in np.median([run["cold_ms"] for run in runs], 0)]
    nbytes_x = int(np.prod(runs[0]["shape"])) * 4
    t_np, t_xla = ms.pop(("copy", "numpy")), ms.pop(("copy", "xla"))
    extras["copy_ms_numpy"], extras["copy_ms_xla"] = t_np, t_xla
    extras["bandwidth_gbs"] = 2 * nbytes_x / (min(t_np, t_xla) * 1e-3) / 1e9
    return ms, extras


def table_rows(ms: dict, bandwidth_gbs: float, shape: tuple[int, ...]) -> list[dict]:
    """One row per (stride, impl): fwd / fwdbwd ms, effective GB/s, the copy floor's ms.

    Effective bytes: forward = |x| + |y|; forward + backward = 2|x| + 2|y|.
    """
    nbytes_x = int(np.prod(shape)) * 4
    rows = []
    for (stride, impl, part), fwd in ms.items():
        if part != "fwd":
            continue
        nbytes = nbytes_x + int(np.prod(_pooled_shape(shape, stride))) * 4
        fwdbwd = ms.get((stride, impl, "fwdbwd"), float("nan"))
        rows.append(
            dict(
                stride=stride,
                impl=impl,
                fwd=fwd,
                fwdbwd=fwdbwd,
                gbs_fwd=nbytes / (fwd * 1e-3) / 1e9,
                gbs_fwdbwd=2 * nbytes / (fwdbwd * 1e-3) / 1e9,
                floor_fwd=nbytes / (bandwidth_gbs * 1e9) * 1e3,
            )
        )
    return sorted(rows, key=lambda r: -r["stride"])  # stable: impl order kept


def render(ms: dict, extras: dict, reps: int, command: str) -> str:
    """The Markdown document: provenance, the table, the targets."""
    kernel = (
        f"the compiled CPU kernel, {extras['kernel_build']} build "
        "(invariance/pooling/_cpu_kernel.py)."
        if extras["kernel_used"]
        else "the XLA path (the CPU kernel was off or not available here)."
    )
    lines = [
        "# Pooling benchmark",
        "",
        *benchmarking.header(command),
        f"Input {extras['shape']} float32 NHWC (torch: NCHW in channels_last), 2x2 windows; "
        f"{reps} interleaved rounds (every peer timed once per round, in a fresh random order) "
        f"in each of {extras['processes']} fresh processes: the median over processes of each "
        "process's median.  ",
        f"ours max_pool at stride 2, forward + backward: {kernel}  ",
        f"Copy bandwidth floor: {extras['bandwidth_gbs']:.1f} GB/s (numpy copy "
        f"{extras['copy_ms_numpy']:.2f} ms, XLA copy {extras['copy_ms_xla']:.2f} ms for |x|).",
        "",
        "| stride | implementation | fwd ms | fwd GB/s | fwd / floor | fwd+bwd ms | fwd+bwd GB/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table_rows(ms, extras["bandwidth_gbs"], extras["shape"]):
        na = np.isnan(r["fwdbwd"])
        fb = "n/a" if na else f"{r['fwdbwd']:.2f}"
        fbg = "n/a" if na else f"{r['gbs_fwdbwd']:.1f}"
        lines.append(
            f"| {r['stride']} | {r['impl']} | {r['fwd']:.2f} | {r['gbs_fwd']:.1f} | "
            f"{r['fwd'] / r['floor_fwd']:.2f}x | {fb} | {fbg} |"
        )
    lines += ["", "## Targets (max_pool, stride 2, this machine)", ""]
    lines += target_lines(ms, extras, reps)
    return "\n".join(lines) + "\n"


def target_lines(ms: dict, extras: dict, reps: int) -> list[str]:
    """The verdicts against the targets and the spread of the ratios, one line each."""
    ours = next(
        r
        for r in table_rows(ms, extras["bandwidth_gbs"], extras["shape"])
        if (r["stride"], r["impl"]) == (2, "ours max_pool")
    )
    checks = [
        ("fwd+bwd vs flax.linen.max_pool gradient (target <= 0.10)", "flax.linen.max_pool", 0.10),
    ]
    lines = []
    if ours_over(ms) is not None:
        checks.insert(0, ("fwd+bwd vs torch channels_last (target <= 0.50)", TORCH_MAX, 0.50))
    else:
        lines.append("torch is not importable here: the torch target was not measured.")
    verdicts = [(label, ours_over(ms, peer), target) for label, peer, target in checks]
    fwd_floor = ours["fwd"] / ours["floor_fwd"]
    verdicts.append(("fwd vs the copy-bandwidth floor (target <= 1.5)", fwd_floor, 1.5))
    for label, value, target in verdicts:
        lines.append(f"- {label}: {value:.3f} — {'met' if value <= target else 'MISSED'}")
    if "torch_ratio_quartiles" in extras:
        q25, q50, q75 = extras["torch_ratio_quartiles"]
        per = ", ".join(f"{r:.3f}" for r in extras["torch_ratio_by_process"])
        o, x, t = extras["cold_ms"]
        cold = ", ".join(f"{r:.3f}" for r in extras["cold_ratio_by_process"])
        lines += [
            f"- the torch ratio round by round (ours / torch fwd+bwd, same round, all "
            f"processes): median {q50:.3f}, quartiles {q25:.3f}-{q75:.3f}",
            f"- the torch ratio in each process: {per}",
            f"- cold caches (a read-only sweep of {COLD_SWEEP_BYTES >> 20} MiB before every "
            f"call; fwd+bwd at stride 2, {reps} rounds): ours {o:.2f} ms, the XLA path "
            f"{x:.2f} ms, torch {t:.2f} ms; ours / torch {o / t:.3f} (per process {cold})",
        ]
    per = ", ".join(f"{r:.3f}" for r in extras["xla_path_ratio_by_process"])
    stride1 = ms[(1, "ours max_pool", "fwdbwd")] / ms[(1, "flax.linen.max_pool", "fwdbwd")]
    lines += [
        f"- stride 2: ours fwd+bwd / the same without the CPU kernel (XLA path) = "
        f"{ours_over(ms, XLA_PATH):.3f} (in each process: {per})",
        f"- stride 1: ours fwd+bwd / flax.linen gradient = {stride1:.3f}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30, help="interleaved rounds per process")
    ap.add_argument("--processes", type=int, default=3, help="fresh processes to combine")
    ap.add_argument("--batch", type=int, default=SHAPE[0], help="images in the input (smoke: 4)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.reps < 1 or args.processes < 1 or args.batch < 2:
        ap.error("--reps and --processes must be >= 1, --batch >= 2")
    shape = (args.batch, *SHAPE[1:])
    argv = sys.argv[1:] if argv is None else argv
    command = benchmarking.command_line("scripts/bench_pooling.py", argv)

    def progress(p: int, run: dict) -> None:
        print(f"process {p + 1}/{args.processes}: ours / torch fwd+bwd = {ours_over(run['ms'])}")

    runs = benchmarking.in_processes(bench, args.processes, args.reps, shape, report=progress)
    ms, extras = combine(runs)
    text = render(ms, extras, args.reps, command)
    print(text)
    atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    runtime.reexec_with_steady_malloc()  # before any timing: see invariance/runtime.py
    sys.exit(main())
