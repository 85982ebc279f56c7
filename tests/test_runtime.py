"""invariance.runtime: the steady-malloc re-exec used by the benchmark scripts."""

import os
import subprocess
import sys

import pytest

from invariance import runtime

ARGV = ["-c", f"import os; print(os.environ.get({runtime.ENV!r}))"]
CHILD = (
    "import os; from invariance import runtime; "
    f"runtime.reexec_with_steady_malloc({ARGV!r}); "
    f"print('not re-executed', os.environ.get({runtime.ENV!r}))"
)


def _run(env_value):
    env = {k: v for k, v in os.environ.items() if k not in runtime.SETTINGS}
    if env_value is not None:
        env[runtime.ENV] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not runtime.glibc(), reason="MALLOC_ARENA_MAX is a glibc setting")
def test_reexec_sets_the_settings_and_keeps_a_users_value():
    assert _run(None) == "1"  # the re-executed process printed the setting it started with
    assert _run("4") == "not re-executed 4"


def test_malloc_note_names_the_setting(monkeypatch):
    for name in runtime.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert "none of MALLOC_ARENA_MAX" in runtime.malloc_note() or not runtime.glibc()
    monkeypatch.setenv(runtime.ENV, "1")
    note = runtime.malloc_note()
    assert (f"{runtime.ENV}=1" in note) if runtime.glibc() else ("no arena setting" in note)


def test_a_module_is_reexecuted_as_a_module(tmp_path):
    """``python -m mod`` comes back as ``-m mod`` (``sys.orig_argv``), with the settings."""
    (tmp_path / "probe_mod.py").write_text(
        "import os\nfrom invariance import runtime\nruntime.reexec_with_steady_malloc()\n"
        f"print(__spec__.name if __spec__ else None, os.environ.get({runtime.ENV!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in runtime.SETTINGS}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "probe_mod"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    expected = "probe_mod 1" if runtime.glibc() else "probe_mod None"
    assert out.stdout.strip() == expected
