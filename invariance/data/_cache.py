"""The array cache: decoded datasets as .npy files, written atomically and verified on read.

Layout under the cache folder (``invariance._paths.cache_dir()``)::

    arrays/v2/<name>-<split>-<source>/images.npy      uint8 (N, H, W, C)
    arrays/v2/<name>-<split>-<source>/labels.npy      int32 (N,)
    arrays/v2/<name>-<split>-<source>/manifest.json   each array's dtype, shape and sha256

Each entry is written as a temporary sibling folder and renamed into place with ``os.replace``,
so a reader sees a whole entry or none. On read every array is checked against the manifest
(dtype, shape, and the sha256 of its bytes, ~0.05 s for Fashion-MNIST's train images): an entry
with a missing, truncated, 0-byte or unreadable file, a bad header or different bytes is never
served; one warning names the file, the entry is deleted, and ``invariance.data.load`` rebuilds
it from its source.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from invariance._paths import cache_dir

__all__ = ["cache_dir", "read", "write"]

_VERSION = "v2"
_ARRAYS = ("images", "labels")
_MANIFEST = "manifest.json"


def _entry(name: str, split: str, source: str) -> Path:
    return cache_dir() / "arrays" / _VERSION / f"{name}-{split}-{source}"


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _describe(array: np.ndarray) -> dict:
    return {"dtype": array.dtype.str, "shape": list(array.shape), "sha256": _sha256(array)}


_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _load_npy(path: Path, expected: dict) -> tuple[np.ndarray | None, str]:
    """Reads one .npy file if its header, size and sha256 match ``expected`` (its manifest
    record): ``(array, "")``, else ``(None, why)``. Nothing is allocated before the header
    matches, so a corrupt header cannot ask for a huge array."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in _HEADER_READERS:
                return None, f"has an unsupported .npy version {version}"
            shape, fortran_order, dtype = _HEADER_READERS[version](f)
            header = {"dtype": dtype.str, "shape": list(shape)}
            if fortran_order or header != {k: expected.get(k) for k in header}:
                return None, (
                    f"has a header for dtype {header['dtype']} shape {header['shape']}, its "
                    f"manifest says dtype {expected.get('dtype')} shape {expected.get('shape')}"
                )
            buffer = bytearray(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
            if (got := f.readinto(buffer)) != len(buffer):
                return None, f"is truncated ({got} of {len(buffer)} data bytes)"
            if f.read(1):
                return None, f"has bytes after its {len(buffer)} data bytes"
    except (OSError, ValueError, EOFError) as e:  # 0-byte, no magic, unreadable header.
        return None, f"is unreadable ({type(e).__name__}: {e})"
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if (sha := _sha256(array)) != expected.get("sha256"):
        return None, f"has sha256 {sha}, its manifest says {expected.get('sha256')}"
    return array, ""


def _check(entry: Path) -> tuple[tuple[np.ndarray, np.ndarray] | None, Path, str]:
    """Loads and verifies an entry: ``(arrays, _, "")``, or ``(None, bad file, why)``."""
    manifest_path = entry / _MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = {key: dict(manifest[key]) for key in _ARRAYS}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, manifest_path, f"is missing or unreadable ({type(e).__name__}: {e})"
    arrays = []
    for key in _ARRAYS:
        path = entry / f"{key}.npy"
        array, why = _load_npy(path, expected[key])
        if array is None:
            return None, path, why
        arrays.append(array)
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]:
        return None, entry, f"holds images {images.shape} and labels {labels.shape}"
    return (images, labels), entry, ""


def read(name: str, split: str, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Returns the cached, verified ``(images, labels)``, or None.

    None if there is no entry, or (after one warning naming the bad file) if the entry fails
    verification; a bad entry is deleted so the caller's rebuild can replace it.
    """
    entry = _entry(name, split, source)
    if not entry.is_dir():
        return None
    arrays, path, why = _check(entry)
    if arrays is None:
        warnings.warn(
            f"invariance: array cache file {path} {why}; not using it, rebuilding "
            f"{name} {split} from its source",
            stacklevel=3,
        )
        shutil.rmtree(entry, ignore_errors=True)
    return arrays


def write(name: str, split: str, source: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """Writes ``(images, labels)`` and their manifest atomically; returns the entry's folder.

    An existing entry is replaced; if another process writes the same entry at the same time,
    one complete copy wins.
    """
    entry = _entry(name, split, source)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        manifest = {}
        for key, array in zip(_ARRAYS, (images, labels), strict=True):
            array = np.ascontiguousarray(array)
            np.save(tmp / f"{key}.npy", array)
            manifest[key] = _describe(array)
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if entry.exists():  # A stale entry another process wrote meanwhile, or a bad one.
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError:
        if not entry.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
