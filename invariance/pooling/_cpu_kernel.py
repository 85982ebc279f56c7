"""The compiled CPU kernel for 2x2 / stride-2 max pooling's gradient path, and its fallback.

``_cpu_kernels.cc`` (beside this file) is compiled on first use with the system C++ compiler
into the invariance cache folder (``$INVARIANCE_CACHE_DIR``, else ``~/.cache/invariance``;
``kernels/<hash>.so``, written atomically; with AVX2 where this CPU has it, see
:func:`isa_flags`) and registered with ``jax.ffi`` for the CPU
platform. :func:`forward` and :func:`backward` pick it with ``lax.platform_dependent``, so the
same program still lowers to the pure-XLA formulation on GPU and TPU.

It serves only when the XLA formulation is slow and the kernel has a specialisation: float32,
2x2 windows with stride 2 and no padding, a channel count in :data:`SUPPORTED_CHANNELS`, and
CPU as JAX's default backend. Everything else uses the XLA path, and so does everything when
no compiler is found or the build fails (one warning says why). Environment:
``INVARIANCE_CPU_KERNELS=0`` turns the kernel off; ``INVARIANCE_CPU_KERNEL_ISA=generic`` builds
the portable kernel even where AVX2 is there; ``CXX`` picks the compiler.

Results are bit-identical to the XLA path, except the sign and payload bits of a NaN output
(XLA's own choice among a window's NaNs and their signs follows its code generator), which
``tests/test_cpu_kernel.py`` checks; ``scripts/bench_pooling.py`` measures both paths.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
from jax import lax

SOURCE = Path(__file__).with_name("_cpu_kernels.cc")
SUPPORTED_CHANNELS = (4, 8, 16, 32, 64)  # keep equal to INVARIANCE_FOR_EACH_C in the source
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-w")
_TARGETS = {
    "invariance_max_pool_2x2_fwd": "InvarianceMaxPool2x2Fwd",
    "invariance_max_pool_2x2_bwd": "InvarianceMaxPool2x2Bwd",
}
_lock = threading.Lock()
_loaded: bool | None = None


def enabled() -> bool:
    """False when ``INVARIANCE_CPU_KERNELS=0`` (read at trace time, so a test can toggle it)."""
    return os.environ.get("INVARIANCE_CPU_KERNELS", "1").strip().lower() not in ("0", "false")


def applies(x: jax.Array, win: tuple[int, int], st: tuple[int, int], pads) -> bool:
    """Whether the compiled kernel serves this max pooling: see the module docstring."""
    return (
        win == (2, 2)
        and st == (2, 2)
        and pads == ((0, 0), (0, 0))
        and x.dtype == jnp.float32
        and x.shape[-1] in SUPPORTED_CHANNELS
        and enabled()
        and jax.default_backend() == "cpu"
        # A custom call has no sharding rule: on a multi-device mesh XLA would gather the batch
        # onto every device. The XLA path partitions like any other op.
        and jax.device_count() == 1
        and load()
    )


ISA_CHOICES = ("auto", "generic")


def _cpu_flags_line() -> str:
    """The ``flags`` line of /proc/cpuinfo ("" where there is none)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")


def isa_flags_for(choice: str, system: str, machine: str, cpu_flags: str) -> tuple[str, ...]:
    """The instruction-set flags for a machine: ``("-mavx2",)`` on x86-64 Linux whose
    /proc/cpuinfo ``cpu_flags`` line lists avx2 (``choice`` "auto" or ""), else ``()``: the
    portable build (SSE2 on x86-64, NEON on arm64).

    Raises:
        ValueError: ``choice`` is not one of :data:`ISA_CHOICES`.
    """
    choice = choice.strip().lower() or "auto"
    if choice not in ISA_CHOICES:
        raise ValueError(
            f"INVARIANCE_CPU_KERNEL_ISA={choice!r} is not a valid choice: one of {ISA_CHOICES}"
        )
    if choice == "generic" or system != "Linux" or machine not in ("x86_64", "AMD64"):
        return ()
    return ("-mavx2",) if "avx2" in cpu_flags.split() else ()


def isa_flags() -> tuple[str, ...]:
    """:func:`isa_flags_for` this machine and ``$INVARIANCE_CPU_KERNEL_ISA``.

    The flags are part of the build's cache key, so machines that share a cache folder (a
    cluster's home directory) never load a build their CPU cannot run.
    """
    choice = os.environ.get("INVARIANCE_CPU_KERNEL_ISA", "")
    return isa_flags_for(choice, platform.system(), platform.machine(), _cpu_flags_line())


def build(cache: Path, compiler: str | None = None, isa: tuple[str, ...] | None = None) -> Path:
    """Compiles the kernel source into ``cache/kernels/<hash>.so`` unless it is already there.

    Args:
        cache: the invariance cache folder.
        compiler: the C++ compiler command (may carry a launcher, e.g. "ccache g++"); default
            ``$CXX``, else the first of c++, g++, clang++ on the PATH.
        isa: instruction-set flags; default :func:`isa_flags`.

    Returns:
        The shared library's path.

    Raises:
        RuntimeError: no compiler, or the build failed (its first error line is in the message).
    """
    cxx = (
        compiler
        or os.environ.get("CXX")
        or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    )
    argv = shlex.split(cxx) if cxx else []
    if not argv or not shutil.which(argv[0]):
        raise RuntimeError(f"no C++ compiler found (tried $CXX, c++, g++, clang++; got {cxx!r})")
    try:  # the compiler's own version line, so an upgraded compiler builds anew
        version = subprocess.run(
            [*argv, "--version"], capture_output=True, text=True, timeout=60
        ).stdout.partition("\n")[0]
    except (OSError, subprocess.SubprocessError):
        version = ""
    flags = (*FLAGS, *(isa_flags() if isa is None else isa))
    parts = [SOURCE.read_bytes(), " ".join(flags), jaxlib.__version__, cxx, version]
    if "native" in cxx:  # e.g. CXX="g++ -march=native": the build is this CPU's alone
        parts.append(_cpu_flags_line())
    parts += [platform.machine(), platform.system()]
    key = hashlib.sha256(
        b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)
    ).hexdigest()[:16]
    target = cache / "kernels" / f"max_pool_2x2-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    cmd = [*argv, *flags, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
            first = (errors or proc.stderr.splitlines() or ["(no output)"])[0]
            raise RuntimeError(f"{cxx} could not build {SOURCE.name}: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> bool:
    """Builds (once per machine) and registers the kernel (once per process).

    Returns:
        True if the kernel is registered with ``jax.ffi`` for the CPU; False, after one
        warning naming the reason, if it cannot be built or loaded (the XLA path then serves).
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            from invariance._paths import cache_dir

            try:
                lib = ctypes.CDLL(str(build(cache_dir())))
                for name, symbol in _TARGETS.items():
                    capsule = jax.ffi.pycapsule(getattr(lib, symbol))
                    jax.ffi.register_ffi_target(name, capsule, platform="cpu")
                _loaded = True
            except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
                warnings.warn(
                    f"invariance: CPU max-pool kernel unavailable, using the XLA path "
                    f"(INVARIANCE_CPU_KERNELS=0 skips the build): {e}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _loaded = False
    return _loaded


def _ffi_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    *lead, h, w, c = x.shape
    out = (*lead, h // 2, w // 2, c)
    return jax.ffi.ffi_call(
        "invariance_max_pool_2x2_fwd",
        (jax.ShapeDtypeStruct(out, x.dtype), jax.ShapeDtypeStruct(out, jnp.int8)),
        vmap_method="broadcast_all",
    )(x)


def _ffi_backward(g: jax.Array, idx: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.ffi.ffi_call(
        "invariance_max_pool_2x2_bwd",
        jax.ShapeDtypeStruct(shape, g.dtype),
        vmap_method="broadcast_all",
    )(g, idx)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def forward(x: jax.Array, xla_forward: Callable[[jax.Array], tuple]) -> tuple[jax.Array, jax.Array]:
    """``(y, idx)``: the pooled ``(..., H//2, W//2, C)`` output and the int8 row-major index of
    each window's first maximum; the kernel on CPU, ``xla_forward(x)`` on other platforms.

    Differentiable (the tangent is ``xla_forward``'s), so derivatives that reach through the
    custom VJP's forward rule, e.g. the gradient of a gradient norm, still work.
    """
    return lax.platform_dependent(x, cpu=_ffi_forward, default=xla_forward)


@forward.defjvp
def _forward_jvp(xla_forward, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    _, out_dot = jax.jvp(xla_forward, (x,), (x_dot,))
    return forward(x, xla_forward), out_dot


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def backward(
    g: jax.Array,
    idx: jax.Array,
    shape: tuple[int, ...],
    xla_backward: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """The input cotangent ``(..., H, W, C)`` (``shape``) from the output cotangent ``g`` and the
    window index ``idx`` (both ``(..., H//2, W//2, C)``); the kernel on CPU,
    ``xla_backward(g, idx)`` on other platforms.

    The result is linear in ``g``; its tangent is ``xla_backward(g_dot, idx)``, which JAX can
    also transpose, so forward- and reverse-mode derivatives of a gradient work through it.
    """
    return lax.platform_dependent(
        g, idx, cpu=functools.partial(_ffi_backward, shape=shape), default=xla_backward
    )


@backward.defjvp
def _backward_jvp(shape, xla_backward, primals, tangents):
    g, idx = primals
    g_dot, _ = tangents
    return backward(g, idx, shape, xla_backward), xla_backward(g_dot, idx)


__all__ = [
    "SUPPORTED_CHANNELS",
    "applies",
    "backward",
    "build",
    "enabled",
    "forward",
    "isa_flags",
    "isa_flags_for",
    "load",
]
