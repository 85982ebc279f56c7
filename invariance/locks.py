"""Folder locks: one process per sweep workdir, cell folder or trained run.

A lock is an exclusive ``flock`` on ``FOLDER/.lock``; the file records the holder's PID and
host, so a second process stops with one line naming them. The kernel releases a ``flock``
when its holder dies, so a lock left by a dead process is free again (the stale PID in the
file is simply overwritten). ``lock`` refuses a held folder and is re-entrant within a process;
``wait_for`` waits its turn (one process prepares a shared cache entry while the others wait).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_FILE", "LockError", "lock", "wait_for"]

LOCK_FILE = ".lock"


class LockError(RuntimeError):
    """Another live process holds the folder's lock; the message names its PID."""


_HELD: dict[Path, tuple[int, int]] = {}  # folder -> (fd, depth): re-entrant within a process
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def lock(folder: str | Path) -> Iterator[Path]:
    """Holds ``folder/.lock`` (an exclusive ``flock``; the file records the holder's PID).

    Re-entrant in one process. A lock file left by a dead process is taken over (the kernel
    released its ``flock`` when it died).

    Raises:
        LockError: another live process holds the lock (the message names its PID).
    """
    import fcntl

    folder = Path(folder).resolve()
    with _HELD_LOCK:
        if folder in _HELD:
            fd, depth = _HELD[folder]
            _HELD[folder] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if not reentered:
        path = folder / LOCK_FILE
        fd = _open_lock_file(folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            pid = holder[0] if holder else "?"
            host = holder[1] if len(holder) > 1 else "?"
            raise LockError(
                f"{folder} is in use by process {pid} on {host} (lock {path}); wait for it to "
                "end, or use another folder"
            ) from None
        _record_holder(fd)
        with _HELD_LOCK:
            _HELD[folder] = (fd, 1)
    try:
        yield folder
    finally:
        with _HELD_LOCK:
            fd, depth = _HELD[folder]
            if depth > 1:
                _HELD[folder] = (fd, depth - 1)
            else:
                del _HELD[folder]
                os.close(fd)  # releases the flock; the file stays (its PID is then stale)


def _open_lock_file(folder: Path) -> int:
    """Opens (creating it and its folder) ``folder/.lock``; returns the descriptor, unlocked."""
    folder.mkdir(parents=True, exist_ok=True)
    return os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)


def _record_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)


@contextlib.contextmanager
def wait_for(folder: str | Path) -> Iterator[Path]:
    """Holds ``folder/.lock`` exclusively, first waiting for any other holder to release it.

    For work that several processes may start at once and only one should do (preparing a
    dataset in a shared cache): the others wait, then find it done. Not re-entrant, and it
    excludes other threads of this process too (each call opens its own file description).
    """
    import fcntl

    folder = Path(folder).resolve()
    fd = _open_lock_file(folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _record_holder(fd)
        yield folder
    finally:
        os.close(fd)  # releases the flock
