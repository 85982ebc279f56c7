"""Datasets as uint8 numpy arrays: Fashion-MNIST (the default), MNIST, CIFAR-10, synthetic shapes.

>>> images, labels = load("synthetic", "test")
>>> images.shape, images.dtype, labels.shape, labels.dtype
((1000, 28, 28, 1), dtype('uint8'), (1000,), dtype('int32'))

``load`` looks for a dataset in this order (``SEARCH_ORDER``; docs/data.md says the same):

1. ``data_dir``, else ``$INVARIANCE_DATA_DIR`` (Fashion-MNIST, MNIST): a folder of the four IDX
   files, or a parent of a ``fashion_mnist/``, ``fashion-mnist/`` or ``mnist/`` folder holding
   them. When given, it is the only source: files missing there are an error, never a silent
   fallback. Its arrays are cached under a key made of the folder and its files' sizes and
   modification times, so changed files are read again.
2. The array cache: verified ``.npy`` files under the cache folder (``$INVARIANCE_CACHE_DIR``,
   else ``$XDG_CACHE_HOME/invariance``, else ``~/.cache/invariance``); a warm load of
   Fashion-MNIST train takes a fraction of a second. Every array is checked against its
   recorded sha256 on read; a bad entry is reported once and rebuilt (see ``_cache``).
3. The shipped copy (Fashion-MNIST): the four IDX files inside the package,
   ``invariance/data/files/fashion_mnist/`` (MIT licence and source beside them).
4. The Debian package (Fashion-MNIST): ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``). Copies 3 and 4 are used only if every file's
   decompressed content has the published sha256.
5. A download (``download=True``, the default), by our own downloader, no TensorFlow: the IDX
   files of Fashion-MNIST or MNIST, or CIFAR-10's python-format tarball, from
   ``$INVARIANCE_DATA_MIRRORS`` then at least two public HTTPS mirrors, each file verified
   by its published sha256 (see ``_download``). Verified files stay in the cache's
   ``downloads/`` folder, so a rebuild needs no network.

IDX files (1, 3, 4, 5) go through our tfds builders (``fashion_mnist_local``, ``mnist_local``),
which prepare a tensorflow-datasets dataset in ``array_record`` files read back with
``tfds.data_source``: no TensorFlow needed. CIFAR-10 batches are decoded with numpy.
Nothing found raises one ``DataNotFoundError`` saying where ``load`` looked and how to get the
data. ``"synthetic"`` is generated, never cached (see ``synthetic``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from invariance import _paths
from invariance.data import _cache, _idx, _sources
from invariance.data._synthetic import CLASS_NAMES as _SYNTHETIC_CLASS_NAMES
from invariance.data._synthetic import synthetic

DATASETS = ("fashion_mnist", "mnist", "cifar10", "synthetic")
SPLITS = ("train", "test")

# Where load looks, in order (the module docstring and docs/data.md describe each step).
SEARCH_ORDER = (
    ("data_dir", "the data_dir argument, else $INVARIANCE_DATA_DIR (IDX datasets; then alone)"),
    ("cache", "the array cache (verified .npy files in the cache folder)"),
    ("shipped", "the copy shipped in the package (fashion_mnist)"),
    ("debian", "the Debian package dataset-fashion-mnist (fashion_mnist)"),
    ("download", "a verified download: $INVARIANCE_DATA_MIRRORS, then the built-in mirrors"),
)

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
_IDX_DATASETS = ("fashion_mnist", "mnist")  # Datasets our IDX builders prepare.
_VERIFIED = "verified"  # Cache source of copies checked against published sha256s (steps 3-5).
_SYNTHETIC = {"train": (6000, 0), "test": (1000, 1)}  # split -> (num_examples, seed)

__all__ = [
    "DATASETS",
    "SEARCH_ORDER",
    "SPLITS",
    "DataNotFoundError",
    "class_names",
    "load",
    "synthetic",
]


class DataNotFoundError(FileNotFoundError):
    """No good copy of a dataset was found; the message says where ``load`` looked and what
    to do."""


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
    """Loads a dataset split as numpy arrays (``SEARCH_ORDER`` and the module docstring say
    from where).

    Args:
      name: one of ``DATASETS``: ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``,
        ``"synthetic"``.
      split: ``"train"`` or ``"test"``.
      data_dir: a folder holding the four IDX files (``train-images-idx3-ubyte.gz``,
        ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
        ``t10k-labels-idx1-ubyte.gz``, or the same without ``.gz``), or a parent of a folder
        named after the dataset holding them; overrides ``$INVARIANCE_DATA_DIR``. Only for
        ``"fashion_mnist"`` and ``"mnist"``.
      download: whether the downloader may use the network when no other copy is found.
      num_examples: only for ``"synthetic"``: how many images (default 6000 for train, 1000 for
        test).

    Returns:
      ``(images, labels)``: uint8 (N, H, W, C) and int32 (N,) with values in 0..9. Fashion-MNIST
      and MNIST: N = 60000 (train) or 10000 (test), H = W = 28, C = 1, in the IDX files' order.
      CIFAR-10: N = 50000 or 10000, 32x32x3 (RGB), in the batches' order. Synthetic: 28x28x1.

    Raises:
      ValueError: an unknown ``name`` or ``split``, an option the dataset does not take, or a
        corrupt file in ``data_dir`` (the message names the file and what is wrong).
      DataNotFoundError: no good copy found (one line: where ``load`` looked, why each place
        did not serve, and the ways to get the data).
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
    if data_dir is not None and name not in _IDX_DATASETS:
        raise ValueError(
            f"data_dir is only for {' and '.join(_IDX_DATASETS)}; {name} is downloaded "
            "(INVARIANCE_DATA_MIRRORS names mirrors)"
        )

    if name in _IDX_DATASETS and (bases := _user_bases(data_dir)):  # 1. data_dir
        return _load_user_dir(name, split, bases)
    if (cached := _cache.read(name, split, _VERIFIED)) is not None:  # 2. the array cache
        return cached
    if name == "cifar10":
        return _load_cifar10(split, download)
    return _load_idx(name, split, download)


def _user_bases(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir)]
    if env := os.environ.get("INVARIANCE_DATA_DIR"):
        return [Path(env)]
    return []


def _fingerprint(directory: Path) -> str:
    """A cache key for a user's folder: its path and its files' sizes and modification times."""
    digest = hashlib.sha256(os.fsencode(directory.resolve()))
    for pair in _idx.FILES.values():
        for stem in pair:
            path = _idx.find_file(directory, stem)
            if path is None:  # find_dir saw all four: removed since.
                raise DataNotFoundError(f"{directory / stem}.gz: removed while being read")
            stat = path.stat()
            digest.update(f"\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return "dir-" + digest.hexdigest()[:16]


def _load_user_dir(name: str, split: str, bases: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    idx_dir = _idx.find_dir(_idx.candidate_dirs(name, bases))
    if idx_dir is None:
        sub = " or ".join(dict.fromkeys([f"{name}/", f"{name.replace('_', '-')}/"]))
        where = ", ".join(f"{b} (or its {sub} subfolder)" for b in bases)
        raise DataNotFoundError(
            f"{_TITLES[name]} ({name}) not found: no {', '.join(_idx.ALL_FILES)} in {where}, "
            "the folder given by data_dir or INVARIANCE_DATA_DIR (when set, the only place "
            f"searched). Put the four IDX files there, or unset INVARIANCE_DATA_DIR to use "
            f"{'the shipped copy' if name == 'fashion_mnist' else 'a download'}."
        )
    source = _fingerprint(idx_dir)
    if (cached := _cache.read(name, split, source)) is not None:
        return cached
    return _prepare_and_cache(name, split, source, idx_dir)


def _load_idx(name: str, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Steps 3-5 for an IDX dataset, after a cache miss."""
    from invariance.data import _download, _tfds  # tfds imports take a while: cache misses only.

    tfds_dir = _tfds_dir(_VERIFIED)
    if _tfds.prepare_local(name, None, tfds_dir):  # Prepared earlier from a verified copy.
        return _read_and_cache(name, split, _VERIFIED)
    looked = [_step_cache(name, split)]
    for label, directory in _sources.LOCAL_COPIES.get(name, ()):  # 3. shipped, 4. Debian
        problem = _sources.check_contents(name, directory)
        if problem is None:
            return _prepare_and_cache(name, split, _VERIFIED, directory)
        if _idx.find_dir([directory]) is not None:  # There, but not the published content.
            warnings.warn(f"invariance: {label} is not used: {problem}", stacklevel=3)
        looked.append(f"{label}: {problem}")
    downloads = _paths.cache_dir() / "downloads" / name  # 5. a download
    try:
        found = [
            _download.fetch(name, filename, downloads, download=download)
            for filename in _sources.DOWNLOADS[name]
        ]
    except _download.DownloadError as e:
        raise DataNotFoundError(_not_found(name, [*looked, f"download failed: {e}"])) from e
    if None in found:
        looked.append(f"no verified download in {downloads}, download not tried (download=False)")
        raise DataNotFoundError(_not_found(name, looked))
    return _prepare_and_cache(name, split, _VERIFIED, downloads)


def _load_cifar10(split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Step 5 for CIFAR-10, after a cache miss: the verified tarball, decoded with numpy."""
    from invariance.data import _cifar, _download

    downloads = _paths.cache_dir() / "downloads" / "cifar10"
    try:
        archive = _download.fetch("cifar10", _cifar.ARCHIVE, downloads, download=download)
    except _download.DownloadError as e:
        raise DataNotFoundError(
            _not_found("cifar10", [_step_cache("cifar10", split), f"download failed: {e}"])
        ) from e
    if archive is None:
        looked = [
            _step_cache("cifar10", split),
            f"no verified {_cifar.ARCHIVE} in {downloads}, download not tried (download=False)",
        ]
        raise DataNotFoundError(_not_found("cifar10", looked))
    splits = _cifar.read_archive(archive)
    for other, (images, labels) in splits.items():
        _write_cache("cifar10", other, _VERIFIED, images, labels)
    return splits[split]


def _tfds_dir(source: str) -> Path:
    return _paths.cache_dir() / "tensorflow_datasets" / source


def _prepare_and_cache(
    name: str, split: str, source: str, idx_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    from invariance.data import _tfds

    _tfds.prepare_local(name, idx_dir, _tfds_dir(source))
    return _read_and_cache(name, split, source)


def _read_and_cache(name: str, split: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    from invariance.data import _tfds

    images, labels = _tfds.read(f"{name}_local", split, _tfds_dir(source))
    _write_cache(name, split, source, images, labels)
    return images, labels


def _write_cache(name: str, split: str, source: str, images, labels) -> None:
    try:
        _cache.write(name, split, source, images, labels)
    except OSError as e:
        warnings.warn(f"invariance: could not cache {name} {split} arrays: {e}", stacklevel=4)


def _step_cache(name: str, split: str) -> str:
    return f"no {name} {split} entry in the array cache ({_paths.cache_dir() / 'arrays'})"


def _not_found(name: str, looked: list[str]) -> str:
    """The one-line DataNotFoundError message: where load looked, why, and the ways."""
    ways = [
        "with a network, load(download=True) (the default) downloads it, verified, from "
        + ", ".join(_sources.MIRRORS[name])
    ]
    ways.append(
        "INVARIANCE_DATA_MIRRORS=https://your.mirror/path/ puts your own mirror of "
        f"{', '.join(_sources.DOWNLOADS[name])} first"
    )
    if name == "fashion_mnist":
        ways.append("apt-get install dataset-fashion-mnist (files in /usr/share/datasets)")
    if name in _IDX_DATASETS:
        ways.append(
            "put the four IDX .gz files in a folder and set INVARIANCE_DATA_DIR=/dir/with/idx/gz "
            "(or pass data_dir=)"
        )
    numbered = "; ".join(f"({i}) {way}" for i, way in enumerate(ways, 1))
    return f"{_TITLES[name]} ({name}) not found: {'; '.join(looked)}. To get it: {numbered}."
