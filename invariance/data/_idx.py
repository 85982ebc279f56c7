"""Finding, reading and checking IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header (magic number, then one uint32 per dimension) followed by the
raw uint8 values. The magic number is 2051 for an images file (N, rows, cols) and 2049 for a
labels file (N,). Files may be gzip-compressed (``*.gz``, as distributed) or plain.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Class names of the IDX datasets (shared by load's class_names and the tfds builders).
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(i) for i in range(10))

# split -> (images file, labels file), without the optional ".gz".
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = tuple(f"{stem}.gz" for pair in FILES.values() for stem in pair)

_MAGIC = {"images": 2051, "labels": 2049}
_NDIM = {"images": 3, "labels": 1}


def candidate_dirs(name: str, bases: Iterable[str | os.PathLike]) -> list[Path]:
    """Folders to search, in order: ``base/<name>``, ``base/<name-with-dashes>``, ``base``.

    Subfolders named after the dataset come first so one INVARIANCE_DATA_DIR can hold both MNIST
    and Fashion-MNIST (whose files have the same names).
    """
    dirs: list[Path] = []
    for base in bases:
        base = Path(base).expanduser()
        for d in (base / name, base / name.replace("_", "-"), base):
            if d not in dirs:
                dirs.append(d)
    return dirs


def find_file(directory: Path, stem: str) -> Path | None:
    """Returns ``directory/stem.gz`` or ``directory/stem`` (the first that exists), else None."""
    for path in (directory / f"{stem}.gz", directory / stem):
        if path.is_file():
            return path
    return None


def find_dir(dirs: Iterable[Path]) -> Path | None:
    """Returns the first folder holding all four IDX files (train and test), else None."""
    for d in dirs:
        if all(find_file(d, stem) for pair in FILES.values() for stem in pair):
            return d
    return None


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Reads one IDX file and checks its header against its size.

    Args:
      path: an IDX file, gzip-compressed if its name ends in ``.gz``.
      kind: ``"images"`` (magic 2051, returns uint8 (N, rows, cols)) or ``"labels"`` (magic 2049,
        returns uint8 (N,)).

    Returns:
      The uint8 array the file holds.

    Raises:
      ValueError: one line naming the file and what is wrong with it.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: cannot be read as a gzip-compressed IDX file ({e})") from e
    ndim = _NDIM[kind]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: only {len(data)} bytes, too short for an IDX {kind} header ({header} bytes)"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[kind]:
        raise ValueError(
            f"{path}: IDX magic number is {magic}, expected {_MAGIC[kind]} for an {kind} file"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} values) but the file holds "
            f"{len(data) - header} values (truncated or not an IDX file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_split(
    directory: Path,
    split: str,
    *,
    image_shape: tuple[int, int] = (28, 28),
    num_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads and checks one split's images and labels files from ``directory``.

    Args:
      directory: folder holding the split's two IDX files (``.gz`` or plain).
      split: ``"train"`` or ``"test"``.
      image_shape: the expected (rows, cols).
      num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
      ``(images, labels)``: uint8 (N, rows, cols, 1) and int32 (N,).

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: one line naming the file and what is wrong (magic number, size, image shape,
        label range, or images and labels counts that differ).
    """
    paths = []
    for stem in FILES[split]:
        path = find_file(directory, stem)
        if path is None:
            raise FileNotFoundError(f"{directory / (stem + '.gz')}: no such file")
        paths.append(path)
    images_path, labels_path = paths
    images = read_idx(images_path, "images")
    labels = read_idx(labels_path, "labels")
    if images.shape[1:] != image_shape:
        raise ValueError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
            f"expected {image_shape[0]}x{image_shape[1]}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() >= num_classes:
        raise ValueError(
            f"{labels_path}: label {int(labels.max())} found, labels must be < {num_classes}"
        )
    return images[..., None].copy(), labels.astype(np.int32)
