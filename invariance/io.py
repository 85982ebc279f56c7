"""Atomic file writes and provenance stamps, shared by training, sweeps, reports and scripts.

Every file the framework writes goes through :func:`atomic_write_text` (or ``_bytes``): the
content lands in a temporary file in the same folder and is renamed over the target, so a
killed process never leaves a half-written result and never corrupts one already there.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "link_or_copy",
    "provenance",
    "write_marked_blocks",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    Args:
        path: the target file; its parent folders are created.
        data: the bytes to write.

    Returns:
        The target path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link of file ``src`` at ``dst`` (no bytes copied; files written atomically are
    replaced, never written through, so the two stay independent), or a copy where the file
    system has no hard links. Usable as ``shutil.copytree(..., copy_function=)``."""
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@functools.lru_cache(maxsize=1)
def _git_commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes to tracked files), read once
    per process: the code a process runs is the code it imported, so rows made later in a long
    run keep the commit they were computed with even if the checkout moves on meanwhile."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_VECTOR_FLAGS = ("avx512f", "avx2", "avx", "sse4_2")  # widest first


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its widest x86 vector extension, e.g. ``"AMD EPYC (avx2)"``.

    XLA:CPU compiles for the host's instruction set, so floating-point sums can round
    differently on another CPU: the same training config, seeds and code trained on two VMs
    gave test accuracies that differ by up to 0.3 point. This names the CPU a row came from.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read from the system when None; where there
            is none, ``platform.processor()`` is used).

    Returns:
        A string; ``"unknown"`` when nothing names the CPU.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return platform.processor() or "unknown"
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    name = model.group(1).strip() if model else (platform.processor() or "unknown")
    present = set(flags.group(1).split()) if flags else set()
    vector = next((f for f in _VECTOR_FLAGS if f in present), None)
    return f"{name} ({vector})" if vector else name


def provenance() -> dict[str, str]:
    """Where and with what a result was made: git commit, versions, device, date.

    Returns:
        A flat dict of strings: ``git_commit``, ``jax``, ``flax``, ``backend``, ``device``,
        ``device_count``, ``cpu`` (architecture and core count), ``cpu_model`` (see
        :func:`cpu_model`), ``python``, ``date`` (UTC, ISO 8601).
    """
    import flax
    import jax

    devices = jax.devices()
    return {
        "git_commit": _git_commit(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "device_count": str(len(devices)),
        "cpu": f"{platform.machine()} x{os.cpu_count()}",
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


_MARKED_BLOCK = r"<!-- (\S+) -->\n?(.*?)\n?<!-- /\1 -->"


def write_marked_blocks(
    path: str | os.PathLike,
    blocks: Mapping[str, str] | Callable[[str], str | None],
    *,
    initial: str = "",
) -> Path:
    """Rewrites the marked blocks of a Markdown file, atomically, keeping everything else.

    A block is ``<!-- NAME -->`` ... ``<!-- /NAME -->`` (NAME without spaces, e.g. ``speed``
    or ``results:pooling_table``); it is written back as ``<!-- NAME -->``, a newline, the
    new body stripped of surrounding blank lines, a newline, ``<!-- /NAME -->``. Text outside
    the blocks, and blocks not asked for, are kept byte for byte.

    Args:
        path: the Markdown file; if it does not exist, ``initial`` is its text.
        blocks: either a mapping NAME -> body (a NAME with no block in the file is appended
            at the end as a new block, in the mapping's order), or a function called with the
            NAME of every block in the file, returning its new body or None to keep it (it
            may raise, e.g. when a body's source is missing: then nothing is written).
        initial: the text to start from when ``path`` does not exist.

    Returns:
        The path written.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else initial
    if callable(blocks):
        body_of = blocks
        missing: list[str] = []
    else:
        found = set(re.findall(_MARKED_BLOCK, text, flags=re.S))
        names = {name for name, _ in found}
        missing = [name for name in blocks if name not in names]
        body_of = blocks.get

    def replace(m: re.Match) -> str:
        body = body_of(m.group(1))
        if body is None:
            return m.group(0)
        body = body.strip("\n")
        return f"<!-- {m.group(1)} -->\n{body}\n<!-- /{m.group(1)} -->"

    new = re.sub(_MARKED_BLOCK, replace, text, flags=re.S)
    for name in missing:
        body = blocks[name].strip("\n")  # type: ignore[index]
        new = new.rstrip("\n") + "\n\n" if new.strip() else ""
        new += f"<!-- {name} -->\n{body}\n<!-- /{name} -->\n"
    return atomic_write_text(path, new)
