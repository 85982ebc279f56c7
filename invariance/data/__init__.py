"""Datasets as uint8 numpy arrays: Fashion-MNIST (the default), MNIST, CIFAR-10, synthetic shapes.

>>> images, labels = load("synthetic", "test")
>>> images.shape, images.dtype, labels.shape, labels.dtype
((1000, 28, 28, 1), dtype('uint8'), (1000,), dtype('int32'))

``load`` looks for a dataset in this order, and caches what it decodes:

1. The array cache: ``.npy`` files in ``$INVARIANCE_CACHE_DIR`` (else ``~/.cache/invariance``);
   a second load of Fashion-MNIST train takes a few hundredths of a second. Entries are keyed by
   dataset, split and source (``local`` or ``tfds``), not by folder: delete the cache folder to
   read changed files again.
2. Local IDX files (MNIST, Fashion-MNIST): in ``data_dir``, else ``$INVARIANCE_DATA_DIR``, else,
   for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian: ``apt-get install
   dataset-fashion-mnist``); in each, a subfolder named after the dataset comes first. Our tfds
   builders (``fashion_mnist_local``, ``mnist_local``) prepare them once as a tensorflow-datasets
   dataset in ``array_record`` files, read back with ``tfds.data_source``: no TensorFlow needed.
3. tfds' own builders (``fashion_mnist``, ``mnist``, ``cifar10``) over the network; preparing
   those needs TensorFlow.

Nothing found raises one ``DataNotFoundError`` saying where it looked and how to get the data.
``"synthetic"`` is generated, never cached (see ``synthetic``). Everything written goes under
the cache folder: ``arrays/`` (the ``.npy`` files) and ``tensorflow_datasets/`` (tfds' data_dir).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from invariance.data import _cache, _idx
from invariance.data._synthetic import CLASS_NAMES as _SYNTHETIC_CLASS_NAMES
from invariance.data._synthetic import synthetic

DATASETS = ("fashion_mnist", "mnist", "cifar10", "synthetic")
SPLITS = ("train", "test")

_TITLES = {
    "fashion_mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "synthetic": "synthetic shapes",
}
_CLASS_NAMES = {
    "fashion_mnist": _idx.FASHION_MNIST_CLASSES,
    "mnist": _idx.MNIST_CLASSES,
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    "synthetic": _SYNTHETIC_CLASS_NAMES,
}
_LOCAL = ("fashion_mnist", "mnist")  # Datasets our IDX builders can prepare from local files.
_SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}
_SYNTHETIC = {"train": (6000, 0), "test": (1000, 1)}  # split -> (num_examples, seed)

__all__ = ["DATASETS", "SPLITS", "DataNotFoundError", "class_names", "load", "synthetic"]


class DataNotFoundError(FileNotFoundError):
    """No copy of a dataset was found; the message says where ``load`` looked and what to do."""


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def class_names(name: str = "fashion_mnist") -> list[str]:
    """The class names of a dataset, indexed by label.

    Args:
      name: one of ``DATASETS``.

    Returns:
      A list of 10 strings; ``class_names(name)[label]`` names ``label``.

    Raises:
      ValueError: an unknown ``name``.
    """
    _check_name(name)
    return list(_CLASS_NAMES[name])


def load(
    name: str = "fashion_mnist",
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    num_examples: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a dataset split as numpy arrays (see the module docstring for where from).

    Args:
      name: one of ``DATASETS``: ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``,
        ``"synthetic"``.
      split: ``"train"`` or ``"test"``.
      data_dir: a folder holding the four IDX files (``train-images-idx3-ubyte.gz``,
        ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
        ``t10k-labels-idx1-ubyte.gz``), or a parent of a folder named after the dataset holding
        them; overrides ``$INVARIANCE_DATA_DIR``. Only for ``"fashion_mnist"`` and ``"mnist"``.
      download: whether tfds' own builders may download and prepare the dataset when no local
        copy is found (needs network and TensorFlow).
      num_examples: only for ``"synthetic"``: how many images (default 6000 for train, 1000 for
        test).

    Returns:
      ``(images, labels)``: uint8 (N, H, W, C) and int32 (N,) with values in 0..9. Fashion-MNIST
      and MNIST: N = 60000 (train) or 10000 (test), H = W = 28, C = 1, in the IDX files' order.
      CIFAR-10: N = 50000 or 10000, 32x32x3. Synthetic: 28x28x1.

    Raises:
      ValueError: an unknown ``name`` or ``split``, an option the dataset does not take, or a
        corrupt local file (the message names the file and what is wrong).
      DataNotFoundError: no copy found; the message says where ``load`` looked and lists the
        ways to get the data.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if name == "synthetic":
        if data_dir is not None:
            raise ValueError("data_dir is only for fashion_mnist and mnist; synthetic is generated")
        size, seed = _SYNTHETIC[split]
        return synthetic(size if num_examples is None else num_examples, seed=seed)
    if num_examples is not None:
        raise ValueError(f"num_examples is only for synthetic; slice the arrays of {name} instead")
    if data_dir is not None and name not in _LOCAL:
        raise ValueError(f"data_dir is only for {' and '.join(_LOCAL)}; {name} comes from tfds")

    for source in ("local", "tfds"):
        if (cached := _cache.read(name, split, source)) is not None:
            return cached

    from invariance.data import _tfds  # Imports tensorflow_datasets: only on a cache miss.

    tfds_dir = _cache.cache_dir() / "tensorflow_datasets"
    bases: list[Path] = []
    if name in _LOCAL:
        bases = _search_bases(name, data_dir)
        idx_dir = _idx.find_dir(_idx.candidate_dirs(name, bases))
        if _tfds.prepare_local(name, idx_dir, tfds_dir):
            return _read_and_cache(name, split, "local", tfds_dir)
    try:
        _tfds.prepare_stock(name, tfds_dir, download=download)
    except _tfds.Unavailable as e:
        raise DataNotFoundError(_not_found(name, bases, tfds_dir, str(e))) from e
    return _read_and_cache(name, split, "tfds", tfds_dir)


def _search_bases(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    if env := os.environ.get("INVARIANCE_DATA_DIR"):
        return [Path(env)]
    return [Path(d) for d in _SYSTEM_DIRS.get(name, ())]


def _read_and_cache(
    name: str, split: str, source: str, tfds_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    from invariance.data import _tfds

    images, labels = _tfds.read(f"{name}_local" if source == "local" else name, split, tfds_dir)
    try:
        _cache.write(name, split, source, images, labels)
    except OSError as e:
        warnings.warn(f"could not cache {name} {split} arrays: {e}", stacklevel=3)
    return images, labels


def _not_found(name: str, bases: list[Path], tfds_dir: Path, reason: str) -> str:
    """The one-line DataNotFoundError message: where load looked, why tfds did not help, ways."""
    looked = []
    if name in _LOCAL:
        files = ", ".join(_idx.ALL_FILES)
        if bases:
            sub = " or ".join(dict.fromkeys([f"{name}/", f"{name.replace('_', '-')}/"]))
            where = ", ".join(f"{b} (or its {sub} subfolder)" for b in bases)
            looked.append(f"no {files} in {where}")
        else:
            looked.append("no folder of IDX files given (data_dir or INVARIANCE_DATA_DIR)")
    looked.append(f"no prepared tfds dataset in {tfds_dir}")
    looked.append(reason)
    ways = [
        "with network and TensorFlow (pip install tensorflow), load(download=True) lets tfds "
        f"download and prepare {name}"
    ]
    if name == "fashion_mnist":
        ways.append("apt-get install dataset-fashion-mnist (files in /usr/share/datasets)")
    if name in _LOCAL:
        ways.append(
            "put the four IDX .gz files in a folder and set INVARIANCE_DATA_DIR=/dir/with/idx/gz "
            "(or pass data_dir=)"
        )
    numbered = "; ".join(f"({i}) {way}" for i, way in enumerate(ways, 1))
    return f"{_TITLES[name]} ({name}) not found: {'; '.join(looked)}. To get it: {numbered}."
