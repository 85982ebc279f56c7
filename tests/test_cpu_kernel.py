"""The compiled CPU max-pool kernel: bit-identical to the XLA path, chosen only where it applies,
and a clean fallback when it cannot be built."""

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invariance import pooling
from invariance.pooling import _cpu_kernel

needs_kernel = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not _cpu_kernel.load(),
    reason="the C++ kernel could not be built here (see the warning), or JAX is not on the CPU",
)


def _f32(bits: int) -> np.float32:
    return np.array([bits], np.uint32).view(np.float32)[0]


NEG_NAN, NAN_2 = _f32(0xFFC00000), _f32(0x7FC00001)  # x86's 0/0, and another payload


def _values(key, shape):
    """ReLU'd, rounded normals (many exact ties and zeros) with special windows planted in every
    channel (so every vector lane sees them), cycling over: a NaN at each window position, a
    negative NaN after a finite maximum, two NaN payloads, both orders of signed zeros, -inf
    windows and +inf."""
    x = np.array(jnp.round(jax.nn.relu(jax.random.normal(key, shape)) * 4) / 4)
    h, w, c = shape[-3:]
    nh, nw = h // 2, w // 2
    for wi in range(nh):
        for wj in range(nw):
            for ch in range(c):
                win = x[..., 2 * wi : 2 * wi + 2, 2 * wj : 2 * wj + 2, ch]  # a view
                pattern = (wi * nw + wj + ch + 1) % 8
                at = ch % 4
                vals = win.reshape(*win.shape[:-2], 4).copy()
                if pattern == 1:
                    vals[..., at] = np.nan
                elif pattern == 2:
                    vals[..., 0] = 1.0
                    vals[..., 1 + ch % 3] = NEG_NAN
                elif pattern == 3:
                    vals[..., ch % 2] = NAN_2
                    vals[..., 2 + ch % 2] = NEG_NAN
                elif pattern == 4:
                    vals[...] = [-0.0, 0.0, -0.0, -0.0]
                elif pattern == 5:
                    vals[...] = [0.0, -0.0, -0.0, 0.0]
                elif pattern == 6:
                    vals[...] = -np.inf
                elif pattern == 7:
                    vals[..., at] = np.inf
                win[...] = vals.reshape(win.shape)
    return jnp.asarray(x)


def _fwd_bwd(x, g, **pool_kw):
    y, vjp = jax.vjp(lambda x: pooling.max_pool(x, 2, **pool_kw), x)
    return y, vjp(g)[0]


def _both_paths(fn, *args, monkeypatch):
    """fn(*args) jitted with the kernel, then with INVARIANCE_CPU_KERNELS=0; and the HLO of each."""
    out = []
    for flag in ("1", "0"):
        monkeypatch.setenv("INVARIANCE_CPU_KERNELS", flag)
        jitted = jax.jit(lambda *a: fn(*a))  # a new function: JAX caches traces per function
        hlo = jitted.lower(*args).as_text()
        out.append((jitted(*args), hlo))
    return out


def _assert_same(a, b):
    """Bit for bit, signed zeros included; NaN where the other has NaN (their sign and payload
    bits follow XLA's code generator on the XLA path, which the kernel does not copy)."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        nan = np.isnan(u)
        np.testing.assert_array_equal(nan, np.isnan(v))
        np.testing.assert_array_equal(u[~nan].view(np.uint32), v[~nan].view(np.uint32))


@needs_kernel
@pytest.mark.parametrize(
    "shape",
    [
        (3, 8, 8, 32),  # even sides
        (2, 9, 11, 16),  # odd rows and columns: never read, zero gradient
        (5, 9, 11, 16),  # the same, split over several threads' chunks
        (7, 6, 4),  # unbatched
        (2, 3, 5, 4, 64),  # two leading dims
        (1, 3, 3, 8),
    ],
)
def test_kernel_matches_xla_path_bitwise(shape, monkeypatch):
    x = _values(jax.random.key(0), shape)
    out_shape = (*shape[:-3], shape[-3] // 2, shape[-2] // 2, shape[-1])
    g = jax.random.normal(jax.random.key(1), out_shape)
    (kern, hlo_k), (xla, hlo_x) = _both_paths(_fwd_bwd, x, g, monkeypatch=monkeypatch)
    assert "invariance_max_pool_2x2_fwd" in hlo_k and "invariance_max_pool_2x2_bwd" in hlo_k
    assert "invariance_max_pool" not in hlo_x
    _assert_same(kern, xla)
    y, dx = kern
    # The NaN propagates to its window's output; each window's cotangent goes to one element.
    assert np.isnan(np.asarray(y)[..., 0, 0, 0]).all()
    np.testing.assert_allclose(
        np.asarray(dx).sum(axis=(-3, -2)), np.asarray(g).sum(axis=(-3, -2)), rtol=1e-5
    )


@needs_kernel
def test_min_pool_uses_the_kernel_too(monkeypatch):
    x = _values(jax.random.key(2), (2, 6, 6, 8))
    g = jax.random.normal(jax.random.key(3), (2, 3, 3, 8))

    def fb(x, g):
        y, vjp = jax.vjp(lambda x: pooling.min_pool(x, 2), x)
        return y, vjp(g)[0]

    (kern, hlo_k), (xla, _) = _both_paths(fb, x, g, monkeypatch=monkeypatch)
    assert "invariance_max_pool_2x2_fwd" in hlo_k
    _assert_same(kern, xla)


@pytest.mark.parametrize(
    "shape, kw, dtype",
    [
        ((2, 8, 8, 3), {}, jnp.float32),  # channel count without a specialisation
        ((2, 8, 8, 32), {}, jnp.bfloat16),
        ((2, 9, 9, 32), {"stride": 1}, jnp.float32),  # overlapping windows
        ((2, 9, 9, 32), {"padding": "SAME"}, jnp.float32),  # a padded row and column
    ],
)
def test_kernel_only_where_it_applies(shape, kw, dtype, monkeypatch):
    monkeypatch.setenv("INVARIANCE_CPU_KERNELS", "1")
    x = jnp.ones(shape, dtype)
    fn = jax.jit(lambda x: jax.grad(lambda x: pooling.max_pool(x, 2, **kw).sum())(x))
    assert "invariance_max_pool" not in fn.lower(x).as_text()


def test_no_kernel_on_several_devices(monkeypatch):
    """A custom call has no sharding rule: with more than one device the XLA path serves."""
    monkeypatch.setenv("INVARIANCE_CPU_KERNELS", "1")
    monkeypatch.setattr(jax, "device_count", lambda *a: 4)
    assert not _cpu_kernel.applies(jnp.ones((2, 8, 8, 32)), (2, 2), (2, 2), ((0, 0), (0, 0)))


def test_inference_keeps_the_xla_forward(monkeypatch):
    """Without a gradient the plain XLA forward (already at copy bandwidth) serves."""
    monkeypatch.setenv("INVARIANCE_CPU_KERNELS", "1")
    x = jnp.ones((2, 8, 8, 32))
    assert "invariance_max_pool" not in jax.jit(lambda x: pooling.max_pool(x, 2)).lower(x).as_text()


@needs_kernel
def test_vmap_of_grad_and_second_order_match(monkeypatch):
    x = _values(jax.random.key(4), (3, 2, 6, 6, 16))
    g = jax.random.normal(jax.random.key(5), (3, 2, 3, 3, 16))

    def per_example_grads(x, g):  # vmap over the kernel's calls: a leading batch dim
        return jax.vmap(lambda xi, gi: _fwd_bwd(xi, gi)[1])(x, g)

    def second_order(x, g):  # differentiate the backward pass itself (linear in g)
        _, vjp = jax.vjp(lambda x: pooling.max_pool(x, 2), x)
        return jax.grad(lambda g: jnp.sum(vjp(g)[0] ** 2))(g)

    def gradient_penalty(x, g):  # through x: the grad of a gradient norm (double backprop)
        x = jnp.nan_to_num(x, nan=0.5, posinf=2.0, neginf=-2.0)

        def penalty(x):
            dx = jax.grad(lambda x: jnp.sum(pooling.max_pool(x, 2) ** 2 * g))(x)
            return jnp.sum(dx**2)

        return jax.grad(penalty)(x)

    def forward_over_reverse(x, g):  # a directional derivative of the input cotangent in g
        _, vjp = jax.vjp(lambda x: pooling.max_pool(x, 2), x)
        return jax.jvp(lambda g: vjp(g)[0], (g,), (jnp.ones_like(g),))

    for fn in (per_example_grads, second_order, gradient_penalty, forward_over_reverse):
        (kern, hlo_k), (xla, _) = _both_paths(fn, x, g, monkeypatch=monkeypatch)
        assert "invariance_max_pool_2x2_bwd" in hlo_k
        _assert_same(kern, xla)


@needs_kernel
def test_build_is_cached_and_atomic(tmp_path):
    first = _cpu_kernel.build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert _cpu_kernel.build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary left


def test_build_errors_name_the_problem(tmp_path):
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        _cpu_kernel.build(tmp_path, compiler=str(tmp_path / "missing-c++"))
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'fake.cc:1: error: boom' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    message = "could not build _cpu_kernels.cc: fake.cc:1: error: boom"
    with pytest.raises(RuntimeError, match=message):
        _cpu_kernel.build(tmp_path / "cache", compiler=str(broken))
    assert list((tmp_path / "cache" / "kernels").iterdir()) == []  # nothing half-written


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    def fail(cache, compiler=None):
        raise RuntimeError("no C++ compiler found (test)")

    monkeypatch.setattr(_cpu_kernel, "_loaded", None)
    monkeypatch.setattr(_cpu_kernel, "build", fail)
    monkeypatch.setenv("INVARIANCE_CACHE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="using the XLA path .*: no C\\+\\+ compiler"):
        assert _cpu_kernel.load() is False
    assert _cpu_kernel.load() is False  # decided once per process, no second warning
    x = _values(jax.random.key(6), (2, 4, 4, 8))
    g = jnp.ones((2, 2, 2, 8))
    fn = jax.jit(_fwd_bwd)
    assert "invariance_max_pool" not in fn.lower(x, g).as_text()
    assert np.isfinite(np.asarray(fn(x, g)[1])).all()


def test_env_switch_reads_common_spellings(monkeypatch):
    for value, expected in (("0", False), ("false", False), ("1", True), ("", True)):
        monkeypatch.setenv("INVARIANCE_CPU_KERNELS", value)
        assert _cpu_kernel.enabled() is expected
    monkeypatch.delenv("INVARIANCE_CPU_KERNELS")
    assert _cpu_kernel.enabled() and os.environ.get("INVARIANCE_CPU_KERNELS") is None


def test_isa_flags_follow_the_cpu_and_the_choice(monkeypatch):
    avx2 = "flags\t\t: fpu sse2 avx avx2 fma"
    assert _cpu_kernel.isa_flags_for("", "Linux", "x86_64", avx2) == ("-mavx2",)
    assert _cpu_kernel.isa_flags_for("auto", "Linux", "x86_64", avx2) == ("-mavx2",)
    assert _cpu_kernel.isa_flags_for("generic", "Linux", "x86_64", avx2) == ()
    assert _cpu_kernel.isa_flags_for("", "Linux", "x86_64", "flags : fpu sse2 avx") == ()
    assert _cpu_kernel.isa_flags_for("", "Linux", "aarch64", "Features : fp asimd") == ()
    assert _cpu_kernel.isa_flags_for("", "Darwin", "x86_64", "") == ()
    with pytest.raises(ValueError, match="'avx512' is not a valid choice: one of"):
        _cpu_kernel.isa_flags_for("avx512", "Linux", "x86_64", avx2)
    monkeypatch.setenv("INVARIANCE_CPU_KERNEL_ISA", "generic")
    assert _cpu_kernel.isa_flags() == ()


@needs_kernel
def test_build_key_includes_the_isa(tmp_path):
    """Machines sharing a cache folder must not load each other's AVX2 build."""
    probe = ("-DINVARIANCE_KEY_PROBE",)  # a flag every compiler accepts
    assert _cpu_kernel.build(tmp_path, isa=()) != _cpu_kernel.build(tmp_path, isa=probe)
    assert _cpu_kernel.build(tmp_path) == _cpu_kernel.build(tmp_path, isa=_cpu_kernel.isa_flags())


_PORTABLE_CHECK = """
import jax
from invariance import pooling
from invariance.pooling import _cpu_kernel
from test_cpu_kernel import _assert_same, _values
assert _cpu_kernel.isa_flags() == () and _cpu_kernel.load()
shapes = [(3, 8, 8, 32), (2, 9, 11, 16), (7, 6, 4), (1, 3, 3, 8), (2, 5, 7, 64), (2, 5, 7, 4)]
for shape in shapes:
    x = _values(jax.random.key(0), shape)
    *lead, h, w, c = shape
    g = jax.random.normal(jax.random.key(1), (*lead, h // 2, w // 2, c))
    outs = []
    for flag in ("1", "0"):
        _cpu_kernel.os.environ["INVARIANCE_CPU_KERNELS"] = flag
        def fb(x, g):
            y, vjp = jax.vjp(lambda x: pooling.max_pool(x, 2), x)
            return y, vjp(g)[0]
        f = jax.jit(fb)
        assert ("invariance_max_pool_2x2_bwd" in f.lower(x, g).as_text()) == (flag == "1")
        outs.append(f(x, g))
    _assert_same(*outs)
print("portable build: the same results")
"""


@needs_kernel
def test_portable_build_matches_xla_path(tmp_path, child_env):
    """The SSE2 / NEON build (no -mavx2), which CI machines with AVX2 never load by default."""
    import subprocess
    import sys

    env = child_env(INVARIANCE_CPU_KERNEL_ISA="generic", INVARIANCE_CACHE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", _PORTABLE_CHECK],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the same results" in proc.stdout
