"""CIFAR-10 (Krizhevsky, 2009) from its python-format tarball, decoded with numpy.

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` (the
50,000 training images, in that order) and ``test_batch`` (10,000). Each batch is a pickled dict
with ``b"data"``, a uint8 array (N, 3072) whose rows are an image's red, green then blue planes
of 32x32 values in row-major order, and ``b"labels"``, N ints in 0..9.

Only verified archives reach this module (``_download.fetch`` checks the published sha256), and
the unpickler still accepts nothing but the numpy array types a batch holds, so a wrong archive
fails with a ValueError instead of running code.
"""

from __future__ import annotations

import codecs
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

ARCHIVE = "cifar-10-python.tar.gz"
_FOLDER = "cifar-10-batches-py"
BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch: dicts, lists, bytes, str, ints and numpy arrays only."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # How Python 3 writes bytes in protocol 2.
            return codecs.encode
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")


def _read_batch(archive: tarfile.TarFile, member: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        f = archive.extractfile(f"{_FOLDER}/{member}")
        if f is None:
            raise KeyError(member)
        batch = _BatchUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"])
    except (KeyError, TypeError, ValueError, AttributeError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"{path}: {_FOLDER}/{member} is not a CIFAR-10 batch ({e!r})") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: {member} data is {data.dtype} {data.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (len(data),) or not np.isin(labels, np.arange(10)).all():
        raise ValueError(f"{path}: {member} labels are not {len(data)} values in 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def read_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decodes both splits of a CIFAR-10 python-format tarball.

    Args:
      path: ``cifar-10-python.tar.gz`` (or a tarball with the same layout).

    Returns:
      ``{"train": (images, labels), "test": (images, labels)}``: uint8 (N, 32, 32, 3) in RGB
      order and int32 (N,), in the batches' order (N = 50000 and 10000 for the real archive).

    Raises:
      ValueError: one line naming the archive and what is wrong with it.
    """
    try:
        with tarfile.open(path, "r:gz") as archive:
            splits = {}
            for split, members in BATCHES.items():
                pairs = [_read_batch(archive, member, path) for member in members]
                splits[split] = (
                    np.concatenate([p[0] for p in pairs]),
                    np.concatenate([p[1] for p in pairs]),
                )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot be read as a CIFAR-10 tarball ({e})") from e
    return splits
