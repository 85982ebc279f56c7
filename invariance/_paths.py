"""Where invariance keeps what it writes (one cache folder) and what it ships (package files).

Pure standard library, imported by the lowest layers (``invariance.pooling``'s CPU kernel build
and ``invariance.data``), so it imports nothing from invariance itself.

The cache folder is ``$INVARIANCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/invariance``, else
``~/.cache/invariance``, read from the environment at each call. Its subfolders::

    arrays/               decoded datasets as verified .npy files   (invariance.data._cache)
    tensorflow_datasets/  tfds data_dir: datasets prepared as array_record (invariance.data)
    downloads/            verified downloaded dataset files          (invariance.data._download)
    kernels/              the compiled CPU max-pool kernel           (invariance.pooling)
    jax/                  JAX's persistent compilation cache          (invariance.cli)
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "package_dir"]


def cache_dir() -> Path:
    """The cache folder (see the module docstring), from the environment at call time.

    Returns:
      An absolute or ``~``-expanded path; it may not exist yet (writers create what they need).
    """
    if path := os.environ.get("INVARIANCE_CACHE_DIR"):
        return Path(path).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "invariance"


def package_dir(*parts: str) -> Path:
    """A folder shipped inside the installed ``invariance`` package (also in a non-editable
    install: the files are package data, see ``[tool.setuptools.package-data]``).

    Args:
      *parts: path components below the package's own folder, e.g.
        ``("data", "files", "fashion_mnist")``.

    Returns:
      The path; it exists only if the package ships it.
    """
    return Path(__file__).resolve().parent.joinpath(*parts)
