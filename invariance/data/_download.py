"""Our downloader (standard library + tqdm, no TensorFlow): mirrors in order, sha256-verified,
written atomically.

For each file it tries the mirrors in order: first the base URLs in ``$INVARIANCE_DATA_MIRRORS``
(comma-separated; ``{name}`` in one is replaced by the dataset's name, e.g.
``https://mirror.example/{name}/``), then the built-in ones (``_sources.MIRRORS``). A file's URL is
base + file name. Each download streams into a temporary ``.part`` file beside its destination
while its sha256 is computed; only a file whose sha256 and size match the published ones is
renamed to its final name (``os.replace``), so no partial or unverified file is ever visible
there. A mirror that answers with an error, drops the connection or serves different bytes is
skipped (different bytes with a warning) and the next one is tried; when none gives a good copy,
one ``DownloadError`` names the file, the expected sha256 and what each mirror gave.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from invariance.data import _sources

MIRRORS_ENV = "INVARIANCE_DATA_MIRRORS"
TIMEOUT_S = 60.0  # Per socket operation (connect, each read), not per file.
_CHUNK = 1 << 20
_STALE_PART_S = 3600.0  # A .part file untouched this long belongs to a killed download.


class DownloadError(OSError):
    """No mirror gave a copy of a file with the published sha256; the message says what each
    mirror gave."""


def mirror_urls(name: str, filename: str) -> list[str]:
    """The URLs to try for one file, in order: ``$INVARIANCE_DATA_MIRRORS``, then built-in.

    Args:
      name: the dataset (``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``).
      filename: the file's published name, e.g. ``"train-images-idx3-ubyte.gz"``.

    Returns:
      Full URLs, without duplicates.
    """
    bases = [b.strip() for b in os.environ.get(MIRRORS_ENV, "").split(",") if b.strip()]
    bases += _sources.MIRRORS.get(name, ())
    urls = []
    for base in bases:
        base = base.replace("{name}", name)
        url = base if base.endswith("/") else base + "/"
        url += filename
        if url not in urls:
            urls.append(url)
    return urls


def fetch(
    name: str,
    filename: str,
    directory: Path,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path | None:
    """Makes sure ``directory/filename`` holds the published file; downloads it if needed.

    Args:
      name: the dataset, a key of ``_sources.DOWNLOADS``.
      filename: one of its files.
      directory: where the verified file lives (created if needed).
      download: whether to use the network when no verified copy is there.
      progress: show a tqdm progress bar while downloading.

    Returns:
      The verified file's path; None if it is not there and ``download`` is False.

    Raises:
      DownloadError: no mirror gave a good copy (one line: the file, the expected sha256, and
        each mirror's answer or received sha256).
    """
    published = _sources.DOWNLOADS[name][filename]
    target = directory / filename
    if target.is_file():
        got = _sources.file_sha256(target)
        if got == published.sha256:
            return target
        warnings.warn(
            f"invariance: {target} has sha256 {got}, expected {published.sha256}; "
            "deleting it and fetching it again",
            stacklevel=2,
        )
        target.unlink(missing_ok=True)
    if not download:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(directory, filename)
    failures = []
    for url in mirror_urls(name, filename):
        outcome = _download_to(url, target, published, progress=progress)
        if outcome is None:
            return target
        failures.append(f"{url}: {outcome}")
        if outcome.startswith("received sha256"):
            warnings.warn(
                f"invariance: {url} served a bad {filename} ({outcome}, expected sha256 "
                f"{published.sha256}); discarded, trying the next mirror",
                stacklevel=2,
            )
    raise DownloadError(
        f"{filename}: no mirror gave a good copy (expected sha256 {published.sha256}, "
        f"{published.size} bytes): {'; '.join(failures) or 'no mirrors'}"
    )


def _download_to(url: str, target: Path, published: _sources.Published, *, progress: bool):
    """Downloads ``url`` into a temporary file and renames it to ``target`` if it verifies.

    Returns None on success, else one line saying what went wrong; the temporary file is gone.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            result = _stream(url, out, target.name, published.size, progress=progress)
            if isinstance(result, str):
                return result
            digest, size = result
            out.flush()
            os.fsync(out.fileno())
        if digest != published.sha256 or size != published.size:
            return f"received sha256 {digest} ({size} bytes)"
        os.replace(tmp, target)
        return None
    finally:
        tmp.unlink(missing_ok=True)


def _stream(url: str, out, label: str, limit: int, *, progress: bool) -> tuple[str, int] | str:
    """Copies ``url``'s body into ``out``: ``(sha256, bytes)``, or one line saying what failed.

    Stops once more than ``limit`` bytes (the published size) arrive: a mirror cannot fill
    the disk."""
    request = urllib.request.Request(url, headers={"User-Agent": "invariance-data/1"})
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            host = urllib.parse.urlsplit(url).netloc
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"{label} from {host}",
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
                    if size > limit:
                        return f"sent more than the published {limit} bytes"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        return f"unreachable ({e.reason})"
    except http.client.IncompleteRead as e:
        return f"connection dropped after {size + len(e.partial)} bytes"
    except (OSError, http.client.HTTPException) as e:  # Timeouts, resets, bad responses.
        return f"failed after {size} bytes ({type(e).__name__}: {e})"
    if total is not None and size != total:
        return f"connection dropped after {size} of {total} bytes"
    return digest.hexdigest(), size


def _remove_stale_parts(directory: Path, filename: str) -> None:
    """Deletes ``.part`` files of ``filename`` left by a killed download (not a live one)."""
    now = time.time()
    for part in directory.glob(f".{filename}.*.part"):
        try:
            if now - part.stat().st_mtime > _STALE_PART_S:
                part.unlink()
        except OSError:
            pass
