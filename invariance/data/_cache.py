"""The array cache: decoded datasets as .npy files, written atomically.

Layout under the cache folder (``$INVARIANCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/invariance``,
else ``~/.cache/invariance``)::

    arrays/v1/<name>-<split>-<source>/images.npy   uint8 (N, H, W, C)
    arrays/v1/<name>-<split>-<source>/labels.npy   int32 (N,)
    tensorflow_datasets/                            the tfds data_dir (prepared array_record)

Each ``<name>-<split>-<source>`` folder is written as a temporary sibling and renamed into place
with ``os.replace``, so a reader sees both files or neither.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

_VERSION = "v1"


def cache_dir() -> Path:
    """The cache folder, from the environment at call time."""
    if path := os.environ.get("INVARIANCE_CACHE_DIR"):
        return Path(path).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "invariance"


def _entry(name: str, split: str, source: str) -> Path:
    return cache_dir() / "arrays" / _VERSION / f"{name}-{split}-{source}"


def read(name: str, split: str, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Returns the cached ``(images, labels)``, or None if absent or unreadable."""
    entry = _entry(name, split, source)
    try:
        images = np.load(entry / "images.npy")
        labels = np.load(entry / "labels.npy")
    except (OSError, ValueError):
        return None
    ok = (
        images.dtype == np.uint8
        and images.ndim == 4
        and labels.dtype == np.int32
        and labels.shape == images.shape[:1]
    )
    return (images, labels) if ok else None


def write(name: str, split: str, source: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """Writes ``(images, labels)`` atomically; returns the entry's folder.

    An existing entry is replaced; if another process writes the same entry at the same time,
    one complete copy wins.
    """
    entry = _entry(name, split, source)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        if entry.exists():  # A stale or unreadable entry: read() returned None.
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError:
        if not entry.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
