"""Tests of invariance.data's downloader against a real HTTP server on 127.0.0.1.

The server (stdlib ``http.server`` in a thread) serves what each test puts in its routes: file
bytes, an HTTP error status, or a connection dropped mid-file; it stops when the test ends, and
by itself after two minutes at most. ``INVARIANCE_DATA_MIRRORS`` points at it, the built-in
mirrors are emptied, and any URL not on 127.0.0.1 fails the test: nothing reaches the internet.
The datasets are tiny, with their published checksums replaced by the tiny files' own.
"""

import gzip
import hashlib
import http.server
import io
import pickle
import shutil
import tarfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from invariance import data
from invariance.data import _cifar, _download, _sources

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
STEMS += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class Mirror:
    """A loopback HTTP server. ``routes[path]`` is bytes (served), an int (that HTTP status),
    or ``(bytes, n)`` (the full Content-Length is announced, n bytes are sent, then the
    connection closes). Unknown paths answer 404; ``requests`` lists the paths asked for."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                route = mirror.routes.get(self.path, 404)
                if isinstance(route, int):
                    self.send_error(route)
                    return
                body, cut = (route, len(route)) if isinstance(route, bytes) else route
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:cut])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.watchdog = threading.Timer(120, self.server.shutdown)
        self.watchdog.daemon = True

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{prefix}/"

    def serve(self, prefix: str, files: dict[str, bytes]) -> None:
        for filename, body in files.items():
            self.routes[f"/{prefix}/{filename}"] = body


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    """A running Mirror; the built-in mirrors emptied, non-loopback URLs refused."""
    real_urlopen = urllib.request.urlopen

    def loopback_only(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        host = urllib.parse.urlsplit(url).hostname
        assert host == "127.0.0.1", f"a test tried to reach {host}"
        return real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", loopback_only)
    monkeypatch.setattr(_sources, "MIRRORS", {name: () for name in _sources.MIRRORS})
    monkeypatch.setattr(_sources, "LOCAL_COPIES", {})
    monkeypatch.setattr(_download, "TIMEOUT_S", 10.0)
    monkeypatch.delenv("INVARIANCE_DATA_DIR", raising=False)
    monkeypatch.setenv("INVARIANCE_CACHE_DIR", str(tmp_path / "cache"))
    server = Mirror()
    server.thread.start()
    server.watchdog.start()
    try:
        yield server
    finally:
        server.watchdog.cancel()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=10)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def publish(monkeypatch, name: str, files: dict[str, bytes]) -> None:
    """Makes ``files`` the published ones of ``name`` (sha256 and size)."""
    published = {
        f: _sources.Published(hashlib.sha256(b).hexdigest(), len(b)) for f, b in files.items()
    }
    monkeypatch.setitem(_sources.DOWNLOADS, name, published)


@pytest.fixture
def mnist_files(monkeypatch):
    """A tiny MNIST (12 train, 5 test images) as published .gz files: (files, arrays)."""
    rng = np.random.default_rng(0)
    arrays = {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
        for split, n in (("train", 12), ("t10k", 5))
    }
    files = {}
    for split, (images, labels) in arrays.items():
        files[f"{split}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(images, 2051), mtime=0)
        files[f"{split}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels, 2049), mtime=0)
    publish(monkeypatch, "mnist", files)
    return files, arrays


def downloads(tmp_path: Path, name: str) -> Path:
    return tmp_path / "cache" / "downloads" / name


def assert_mnist(split, arrays):
    images, labels = data.load("mnist", split)
    expected_images, expected_labels = arrays["train" if split == "train" else "t10k"]
    np.testing.assert_array_equal(images[..., 0], expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_mirror_urls_put_the_environment_first(monkeypatch):
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", " http://a.test/{name} , http://b.test/x/,")
    urls = _download.mirror_urls("mnist", "t10k-labels-idx1-ubyte.gz")
    assert urls[:2] == [
        "http://a.test/mnist/t10k-labels-idx1-ubyte.gz",
        "http://b.test/x/t10k-labels-idx1-ubyte.gz",
    ]
    builtin = [base + "t10k-labels-idx1-ubyte.gz" for base in _sources.MIRRORS["mnist"]]
    assert urls[2:] == builtin and len(builtin) >= 2
    assert all(u.startswith("https://") for bases in _sources.MIRRORS.values() for u in bases)
    hosts = {urllib.parse.urlsplit(u).netloc for u in _sources.MIRRORS["fashion_mnist"]}
    assert len(hosts) >= 2  # Independent mirrors.


def test_good_mirror(mirror, mnist_files, monkeypatch, tmp_path):
    files, arrays = mnist_files
    mirror.serve("good", files)
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", mirror.url("good"))
    assert_mnist("test", arrays)
    folder = downloads(tmp_path, "mnist")
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # No .part left.
    for filename, body in files.items():
        assert (folder / filename).read_bytes() == body
    assert len(mirror.requests) == 4
    # A rebuild (no array cache, no prepared tfds dataset) reuses the verified files.
    for sub in ("arrays", "tensorflow_datasets"):
        shutil.rmtree(tmp_path / "cache" / sub)
    assert_mnist("train", arrays)
    assert len(mirror.requests) == 4


def test_one_mirror_for_both_idx_datasets_through_name(mirror, mnist_files, monkeypatch):
    files, arrays = mnist_files
    publish(monkeypatch, "fashion_mnist", files)  # The same tiny files stand in for both.
    mirror.serve("m/mnist", files)
    mirror.serve("m/fashion_mnist", files)
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", mirror.url("m/{name}"))
    images, labels = data.load("fashion_mnist", "test")  # No shipped copy here: downloaded.
    np.testing.assert_array_equal(images[..., 0], arrays["t10k"][0])
    assert_mnist("test", arrays)
    assert sorted(mirror.requests) == sorted(
        f"/m/{n}/{f}" for n in ("fashion_mnist", "mnist") for f in files
    )


def test_first_mirror_404_then_a_good_one(mirror, mnist_files, monkeypatch):
    files, arrays = mnist_files
    mirror.serve("good", files)
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", f"{mirror.url('gone')},{mirror.url('good')}")
    assert_mnist("train", arrays)
    assert sorted(mirror.requests) == sorted(
        f"/{prefix}/{f}" for prefix in ("gone", "good") for f in files
    )


def test_corrupt_file_is_discarded_and_the_next_mirror_tried(mirror, mnist_files, monkeypatch):
    files, arrays = mnist_files
    name = "train-images-idx3-ubyte.gz"
    bad = bytearray(files[name])
    bad[-10] ^= 0xFF  # Same size, different bytes.
    mirror.serve("bad", {**files, name: bytes(bad)})
    mirror.serve("good", files)
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", f"{mirror.url('bad')},{mirror.url('good')}")
    with pytest.warns(UserWarning, match="served a bad train-images-idx3-ubyte.gz") as record:
        assert_mnist("train", arrays)
    (warning,) = [w for w in record if "served a bad" in str(w.message)]
    message = str(warning.message)
    assert mirror.url("bad") + name in message
    assert hashlib.sha256(bytes(bad)).hexdigest() in message
    assert hashlib.sha256(files[name]).hexdigest() in message


def test_no_good_copy_is_one_error_with_both_hashes(mirror, mnist_files, monkeypatch, tmp_path):
    files, _ = mnist_files
    name = "t10k-labels-idx1-ubyte.gz"
    mirror.serve("bad", {**files, name: files[name][::-1]})
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", f"{mirror.url('bad')},{mirror.url('gone')}")
    with pytest.warns(UserWarning), pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", "test")
    message = str(info.value)
    assert "\n" not in message
    assert f"{name}: no mirror gave a good copy" in message
    assert f"expected sha256 {hashlib.sha256(files[name]).hexdigest()}" in message
    assert f"received sha256 {hashlib.sha256(files[name][::-1]).hexdigest()}" in message
    assert f"{mirror.url('gone')}{name}: HTTP 404" in message
    assert not (downloads(tmp_path, "mnist") / name).exists()


def test_a_mirror_sending_too_much_is_cut_off(mirror, mnist_files, monkeypatch, tmp_path):
    files, _ = mnist_files
    name = "t10k-labels-idx1-ubyte.gz"
    mirror.serve("big", {**files, name: files[name] + bytes(1 << 21)})
    mirror.serve("good", files)
    folder = downloads(tmp_path, "mnist")
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", mirror.url("big"))
    with pytest.raises(
        _download.DownloadError, match=f"sent more than the published {len(files[name])} bytes"
    ):
        _download.fetch("mnist", name, folder, progress=False)
    assert not list(folder.iterdir())
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", f"{mirror.url('big')},{mirror.url('good')}")
    assert _download.fetch("mnist", name, folder, progress=False).read_bytes() == files[name]


def test_dropped_connection_leaves_nothing_and_a_rerun_succeeds(
    mirror, mnist_files, monkeypatch, tmp_path
):
    files, arrays = mnist_files
    name = "train-images-idx3-ubyte.gz"
    mirror.serve("flaky", {**files, name: (files[name], len(files[name]) // 2)})
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", mirror.url("flaky"))
    with pytest.raises(data.DataNotFoundError, match=f"{name}: .*connection dropped after") as info:
        data.load("mnist", "train")
    assert f"{len(files[name]) // 2} of {len(files[name])} bytes" in str(info.value)
    folder = downloads(tmp_path, "mnist")
    assert not (folder / name).exists()
    assert not list(folder.glob("*.part")) and not list(folder.glob(".*"))  # Nothing partial.
    mirror.serve("flaky", files)  # The mirror recovers.
    assert_mnist("train", arrays)


def test_a_bad_file_already_there_is_fetched_again(mirror, mnist_files, monkeypatch, tmp_path):
    files, _ = mnist_files
    name = "t10k-labels-idx1-ubyte.gz"
    mirror.serve("good", files)
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", mirror.url("good"))
    folder = downloads(tmp_path, "mnist")
    folder.mkdir(parents=True)
    (folder / name).write_bytes(b"stale")
    with pytest.warns(UserWarning, match="deleting it and fetching it again"):
        path = _download.fetch("mnist", name, folder, progress=False)
    assert path.read_bytes() == files[name]
    assert _download.fetch("mnist", name, folder, download=False) == path  # No network needed.
    assert _download.fetch("mnist", STEMS[0] + ".gz", tmp_path / "empty", download=False) is None


# CIFAR-10 in its python format.


def cifar_batch(rng, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A pickled batch as in cifar-10-python.tar.gz: (pickle, data (n, 3072), labels (n,))."""
    rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    batch = {b"batch_label": b"tiny", b"labels": labels.tolist(), b"data": rows}
    return pickle.dumps(batch, protocol=2), rows, labels


def cifar_archive(batches: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member, content in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_cifar10_python_archive_is_downloaded_and_decoded(mirror, monkeypatch):
    rng = np.random.default_rng(1)
    batches, rows, labels = {}, {"train": [], "test": []}, {"train": [], "test": []}
    for split, members in _cifar.BATCHES.items():
        for member in members:
            batches[member], r, y = cifar_batch(rng, 3 if split == "train" else 4)
            rows[split].append(r)
            labels[split].append(y)
    archive = cifar_archive(batches)
    publish(monkeypatch, "cifar10", {_cifar.ARCHIVE: archive})
    mirror.serve("cifar", {_cifar.ARCHIVE: archive})
    monkeypatch.setenv("INVARIANCE_DATA_MIRRORS", mirror.url("cifar"))
    for split, n in (("train", 15), ("test", 4)):
        images, y = data.load("cifar10", split)
        assert images.dtype == np.uint8 and images.shape == (n, 32, 32, 3)
        assert y.dtype == np.int32 and y.shape == (n,)
        data_rows = np.concatenate(rows[split])
        np.testing.assert_array_equal(y, np.concatenate(labels[split]))
        # Row layout: 1024 red values, 1024 green, 1024 blue, each 32x32 row-major.
        for i, r, c, ch in [(0, 0, 0, 0), (1, 5, 7, 1), (n - 1, 31, 30, 2), (2, 31, 0, 2)]:
            assert images[i, r, c, ch] == data_rows[i, ch * 1024 + r * 32 + c]
        np.testing.assert_array_equal(images, data_rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    assert mirror.requests == [f"/cifar/{_cifar.ARCHIVE}"]  # Both splits from one download.


def test_cifar10_archive_with_foreign_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("not a batch",))

    batches = {m: pickle.dumps({b"data": Evil()}) for ms in _cifar.BATCHES.values() for m in ms}
    path = tmp_path / _cifar.ARCHIVE
    path.write_bytes(cifar_archive(batches))
    with pytest.raises(ValueError, match="is not a CIFAR-10 batch") as info:
        _cifar.read_archive(path)
    assert str(path) in str(info.value) and "builtins.print" in str(info.value)


def test_cifar10_archive_with_bad_labels_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    batches = {m: cifar_batch(rng, 2)[0] for ms in _cifar.BATCHES.values() for m in ms}
    batches["test_batch"] = pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}, protocol=2
    )
    path = tmp_path / _cifar.ARCHIVE
    path.write_bytes(cifar_archive(batches))
    with pytest.raises(ValueError, match="test_batch labels are not 2 values in 0..9"):
        _cifar.read_archive(path)
