"""Where each dataset's files come from, and the published checksums that vouch for them.

Two kinds of checksum, because the same content travels in differently compressed files:

- ``DOWNLOADS``: the sha256 and size of each file as its publisher distributes it (for MNIST
  and Fashion-MNIST, the ``.gz`` files; for CIFAR-10, the python-format tarball). A download is
  kept only if its bytes match. The IDX values are tensorflow-datasets' published checksums
  (``tensorflow_datasets/url_checksums/{mnist,fashion_mnist}.txt``); the CIFAR-10 value is the
  one Keras' ``cifar10.load_data`` checks (the dataset page, <https://www.cs.toronto.edu/~kriz/
  cifar.html>, publishes its md5, ``c58f30108f718f92721af3b95e74349a``).
- ``CONTENTS``: the sha256 of each decompressed Fashion-MNIST IDX file. The shipped copy and
  the Debian package's copy are checked with these: their gzip headers differ from the
  publisher's (no file name stored), so their ``.gz`` bytes hash differently, while the
  decompressed content is the publisher's.

``MIRRORS`` lists at least two independent public HTTPS mirrors per IDX dataset; CIFAR-10 has one
canonical home. ``$INVARIANCE_DATA_MIRRORS`` puts the user's own first (see ``_download``).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import NamedTuple

from invariance import _paths
from invariance.data import _idx


class Published(NamedTuple):
    """One file as its publisher distributes it."""

    sha256: str
    size: int


DOWNLOADS: dict[str, dict[str, Published]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": Published(
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880
        ),
        "train-labels-idx1-ubyte.gz": Published(
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515
        ),
        "t10k-images-idx3-ubyte.gz": Published(
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102
        ),
        "t10k-labels-idx1-ubyte.gz": Published(
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148
        ),
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": Published(
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422
        ),
        "train-labels-idx1-ubyte.gz": Published(
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881
        ),
        "t10k-images-idx3-ubyte.gz": Published(
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877
        ),
        "t10k-labels-idx1-ubyte.gz": Published(
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542
        ),
    },
    "cifar10": {
        "cifar-10-python.tar.gz": Published(
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071
        ),
    },
}

# Base URLs; a file's URL is base + file name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras' copy
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # tensorflow-datasets' copy
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's copy
    ),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

CONTENTS: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

# Copies on this machine that need no network, in search order: (label, folder).
LOCAL_COPIES: dict[str, tuple[tuple[str, Path], ...]] = {
    "fashion_mnist": (
        ("the shipped copy", _paths.package_dir("data", "files", "fashion_mnist")),
        (
            "the Debian package dataset-fashion-mnist",
            Path("/usr/share/datasets/fashion-mnist"),
        ),
    ),
}


def file_sha256(path: Path, *, decompress: bool = False) -> str:
    """The hex sha256 of a file's bytes, or of its gzip-decompressed content.

    Raises:
      OSError, EOFError, zlib.error: the file cannot be read (or is not gzip data).
    """
    digest = hashlib.sha256()
    with gzip.open(path, "rb") if decompress else open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_contents(name: str, directory: Path) -> str | None:
    """Checks a folder's four IDX files against ``CONTENTS[name]``.

    Args:
      name: a dataset with published contents (``"fashion_mnist"``).
      directory: the folder (``.gz`` or plain IDX files).

    Returns:
      None if every file is there with the published content, else one line saying what is
      missing or which file differs (its path, expected and received sha256).
    """
    for stem, expected in CONTENTS[name].items():
        path = _idx.find_file(directory, stem)
        if path is None:
            return f"no {stem}.gz in {directory}"
        try:
            got = file_sha256(path, decompress=path.suffix == ".gz")
        except (OSError, EOFError, zlib.error) as e:
            return f"{path} cannot be read ({e})"
        if got != expected:
            return f"{path}: content sha256 {got}, expected {expected}"
    return None
