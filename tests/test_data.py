"""Tests of invariance.data: the search order, IDX files through our tfds builder, the verified
array cache, errors, synthetic.

Offline and deterministic: tiny IDX files are written into tmp_path; INVARIANCE_CACHE_DIR points
at a tmp folder; the built-in mirrors are emptied and any URL other than 127.0.0.1 fails the
test (the downloader itself is tested against a loopback server in test_download.py). The
shipped copy and the Debian package are replaced by tmp folders, except in the tests of the real
Fashion-MNIST, which read the shipped copy.
"""

import gzip
import hashlib
import shutil
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from invariance import data
from invariance.data import _sources, _tfds

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SHIPPED_DIR = Path(data.__file__).parent / "files" / "fashion_mnist"
REAL_LOCAL_COPIES = dict(_sources.LOCAL_COPIES)
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic number, one uint32 per dimension, then the uint8 values."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(directory: Path, split: str, images, labels, *, gz: bool = True) -> None:
    """Writes one split's images (N, 28, 28) and labels (N,) as IDX files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array, magic in zip(STEMS[split], (images, labels), (2051, 2049), strict=True):
        content = idx_bytes(array, magic)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(content, mtime=0))
        else:
            (directory / stem).write_bytes(content)


def tiny(seed: int, n: int):
    """n random 28x28 images and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_dataset(directory: Path, seed: int = 0, *, gz: bool = True):
    """Writes a 20-image train and 7-image test split; returns {split: (images, labels)}."""
    arrays = {"train": tiny(seed, 20), "test": tiny(seed + 100, 7)}
    for split, (images, labels) in arrays.items():
        write_idx(directory, split, images, labels, gz=gz)
    return arrays


def content_sha256(directory: Path) -> dict[str, str]:
    """The sha256 of each decompressed IDX file in ``directory`` (as in _sources.CONTENTS)."""
    return {
        stem: hashlib.sha256(gzip.decompress((directory / f"{stem}.gz").read_bytes())).hexdigest()
        for pair in STEMS.values()
        for stem in pair
    }


def refuse_internet(request, *args, **kwargs):
    url = request.full_url if isinstance(request, urllib.request.Request) else request
    raise AssertionError(f"a test tried to reach {urllib.parse.urlsplit(url).netloc}")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No built-in mirrors, no URL at all, no real local copies, a tmp cache folder."""
    monkeypatch.setattr(_sources, "MIRRORS", {name: () for name in _sources.MIRRORS})
    monkeypatch.setattr(urllib.request, "urlopen", refuse_internet)
    monkeypatch.delenv("INVARIANCE_DATA_MIRRORS", raising=False)
    monkeypatch.delenv("INVARIANCE_DATA_DIR", raising=False)
    monkeypatch.setattr(_sources, "LOCAL_COPIES", {})
    monkeypatch.setenv("INVARIANCE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """INVARIANCE_DATA_DIR and INVARIANCE_CACHE_DIR in tmp_path."""
    idx_dir, cache_dir = tmp_path / "idx", tmp_path / "cache"
    idx_dir.mkdir()
    monkeypatch.setenv("INVARIANCE_DATA_DIR", str(idx_dir))
    return idx_dir, cache_dir


@pytest.fixture
def copies(tmp_path, monkeypatch):
    """Stand-ins for the shipped copy and the Debian package: tmp folders, and the published
    contents set to a tiny dataset's. Returns (shipped, debian, arrays); only shipped holds it."""
    shipped, debian = tmp_path / "shipped", tmp_path / "debian"
    arrays = write_dataset(shipped, seed=5)
    monkeypatch.setitem(_sources.CONTENTS, "fashion_mnist", content_sha256(shipped))
    monkeypatch.setattr(
        _sources,
        "LOCAL_COPIES",
        {"fashion_mnist": (("the shipped copy", shipped), ("the Debian package", debian))},
    )
    return shipped, debian, arrays


def entry_dir(cache_dir: Path, name: str, split: str) -> Path:
    (entry,) = (cache_dir / "arrays" / "v2").glob(f"{name}-{split}-*")
    return entry


def assert_split(loaded, images, labels):
    x, y = loaded
    assert x.dtype == np.uint8 and x.shape == (len(images), 28, 28, 1)
    assert y.dtype == np.int32 and y.shape == (len(labels),)
    np.testing.assert_array_equal(x[..., 0], images)
    np.testing.assert_array_equal(y, labels)


# 1. data_dir / INVARIANCE_DATA_DIR: IDX files through the fashion_mnist_local builder.


def test_local_round_trip_through_tfds_builder(dirs):
    idx_dir, cache_dir = dirs
    arrays = write_dataset(idx_dir)
    for split in ("train", "test"):
        assert_split(data.load("fashion_mnist", split), *arrays[split])
    (source,) = (cache_dir / "tensorflow_datasets").iterdir()
    assert source.name.startswith("dir-")  # Keyed by the folder and its files.
    prepared = source / "fashion_mnist_local" / "1.0.0"
    assert (prepared / "dataset_info.json").is_file()
    assert sorted(p.name for p in prepared.glob("*.array_record*")) == [
        "fashion_mnist_local-test.array_record-00000-of-00001",
        "fashion_mnist_local-train.array_record-00000-of-00001",
    ]
    entries = sorted(p.name for p in (cache_dir / "arrays" / "v2").iterdir())
    assert entries == [f"fashion_mnist-{s}-{source.name}" for s in ("test", "train")]  # No temp.


def test_default_name_and_split_are_fashion_mnist_train(dirs):
    arrays = write_dataset(dirs[0])
    assert_split(data.load(), *arrays["train"])


def test_second_load_hits_the_array_cache(dirs, monkeypatch):
    idx_dir, cache_dir = dirs
    arrays = write_dataset(idx_dir)
    data.load("fashion_mnist", "train")
    shutil.rmtree(cache_dir / "tensorflow_datasets")

    def fail(*args, **kwargs):
        raise AssertionError("tfds used on a cache hit")

    monkeypatch.setattr(_tfds, "read", fail)
    assert_split(data.load("fashion_mnist", "train"), *arrays["train"])


def test_changed_files_in_data_dir_are_read_again(dirs):
    idx_dir, _ = dirs
    write_dataset(idx_dir, seed=1)
    data.load("fashion_mnist", "test")
    shutil.rmtree(idx_dir)
    again = write_dataset(idx_dir, seed=2)  # Same names, new content: a new cache key.
    assert_split(data.load("fashion_mnist", "test"), *again["test"])


def test_data_dir_without_the_files_is_an_error_not_a_fallback(dirs, copies):
    idx_dir, _ = dirs
    write_idx(idx_dir, "train", *tiny(0, 20))  # The test split's files are missing.
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("fashion_mnist", "train")  # The shipped stand-in holds it: not used.
    message = str(info.value)
    assert "\n" not in message and str(idx_dir) in message
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "unset INVARIANCE_DATA_DIR to use the shipped copy" in message


def test_mnist_and_fashion_mnist_in_subfolders_of_one_data_dir(dirs):
    idx_dir, _ = dirs
    fashion = write_dataset(idx_dir / "fashion-mnist", seed=1)
    mnist = write_dataset(idx_dir / "mnist", seed=2, gz=False)  # Plain IDX files work too.
    assert_split(data.load("fashion_mnist", "test"), *fashion["test"])
    assert_split(data.load("mnist", "test"), *mnist["test"])


def test_data_dir_argument_overrides_the_environment(dirs, tmp_path):
    write_dataset(dirs[0], seed=1)
    other = write_dataset(tmp_path / "other", seed=3)
    assert_split(data.load("mnist", "train", data_dir=tmp_path / "other"), *other["train"])


# 2-4. The array cache, the shipped copy, the Debian package.


def test_shipped_copy_is_used_and_cached(copies, tmp_path, monkeypatch):
    shipped, _, arrays = copies
    assert_split(data.load("fashion_mnist", "test"), *arrays["test"])
    shutil.rmtree(shipped)
    shutil.rmtree(tmp_path / "cache" / "tensorflow_datasets")
    monkeypatch.setattr(_tfds, "read", lambda *a, **k: pytest.fail("tfds used on a cache hit"))
    assert_split(data.load("fashion_mnist", "test"), *arrays["test"])  # From the array cache.


def test_prepared_tfds_dataset_is_reused_without_the_files(copies):
    shipped, _, arrays = copies
    data.load("fashion_mnist", "train")  # Prepares both splits.
    shutil.rmtree(shipped)
    assert_split(data.load("fashion_mnist", "test"), *arrays["test"])


def test_debian_copy_serves_when_the_shipped_one_is_bad(copies):
    shipped, debian, arrays = copies
    shutil.copytree(shipped, debian)
    bad = shipped / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros(20), 2049)))  # Valid IDX, wrong content.
    with pytest.warns(UserWarning, match="the shipped copy is not used") as record:
        assert_split(data.load("fashion_mnist", "train"), *arrays["train"])
    (warning,) = [w for w in record if "invariance" in str(w.message)]
    assert str(bad) in str(warning.message) and "expected" in str(warning.message)


# Corrupt cache entries: one warning naming the file, rebuilt from the source, never served.


def damage_zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-50])


def damage_same_size(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[-3] ^= 0xFF  # One value changes; size and header stay.
    path.write_bytes(bytes(content))


def damage_header(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[:8] = b"garbage!"  # Same size, no .npy magic.
    path.write_bytes(bytes(content))


def damage_append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 16)


def damage_huge_shape(path: Path) -> None:
    """Same size; the header now asks for a 5 TB array."""
    content = path.read_bytes()
    old, new = b"(7, 28, 28, 1), }" + b" " * 9, b"(7000000000, 28, 28, 1), }"
    assert old in content and len(old) == len(new)
    path.write_bytes(content.replace(old, new))


def damage_shape(path: Path) -> None:
    np.save(path, np.load(path)[:-1])  # A readable array, one example short.


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("labels.npy", damage_zero_bytes),
        ("images.npy", damage_zero_bytes),
        ("images.npy", damage_truncate),
        ("images.npy", damage_same_size),
        ("labels.npy", damage_same_size),
        ("images.npy", damage_header),
        ("images.npy", damage_huge_shape),
        ("images.npy", damage_append),
        ("labels.npy", damage_shape),
        ("manifest.json", damage_truncate),
        ("manifest.json", Path.unlink),
    ],
)
def test_bad_cache_entry_warns_once_and_is_rebuilt(dirs, file, damage):
    idx_dir, cache_dir = dirs
    arrays = write_dataset(idx_dir)
    data.load("fashion_mnist", "test")
    path = entry_dir(cache_dir, "fashion_mnist", "test") / file
    damage(path)
    with pytest.warns(UserWarning, match="array cache file") as record:
        assert_split(data.load("fashion_mnist", "test"), *arrays["test"])
    (warning,) = [w for w in record if "array cache" in str(w.message)]
    assert str(path) in str(warning.message) and "rebuilding fashion_mnist test" in str(
        warning.message
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Rebuilt: later loads are silent and right.
        assert_split(data.load("fashion_mnist", "test"), *arrays["test"])
        assert_split(data.load("fashion_mnist", "test"), *arrays["test"])


def test_bad_cache_entry_of_a_verified_copy_is_rebuilt(copies, tmp_path):
    shipped, _, arrays = copies
    data.load("fashion_mnist", "train")
    shutil.rmtree(tmp_path / "cache" / "tensorflow_datasets")  # Rebuilt from the files.
    damage_same_size(entry_dir(tmp_path / "cache", "fashion_mnist", "train") / "images.npy")
    with pytest.warns(UserWarning, match="array cache file"):
        assert_split(data.load("fashion_mnist", "train"), *arrays["train"])


# Corrupt files: one ValueError naming the file and what is wrong.


def corrupt(idx_dir: Path, name: str, content: bytes) -> Path:
    write_dataset(idx_dir)
    path = idx_dir / name
    path.write_bytes(gzip.compress(content))
    return path


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("train-images-idx3-ubyte.gz", idx_bytes(np.zeros((20, 28, 28)), 2049), "magic.*2049"),
        ("t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros((7, 28)), 2051), "magic.*2051"),
        ("train-images-idx3-ubyte.gz", idx_bytes(np.zeros((20, 28, 28)), 2051)[:-5], "truncated"),
        ("train-labels-idx1-ubyte.gz", b"\x00\x00", "too short"),
        ("train-labels-idx1-ubyte.gz", idx_bytes(np.full(20, 10), 2049), "label 10"),
        ("train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(19), 2049), "20 images.*19 labels"),
        ("train-images-idx3-ubyte.gz", idx_bytes(np.zeros((20, 32, 32)), 2051), "32x32"),
    ],
)
def test_corrupt_file_raises_one_value_error_naming_it(dirs, name, content, match):
    path = corrupt(dirs[0], name, content)
    with pytest.raises(ValueError, match=match) as info:
        data.load("fashion_mnist", "test")
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_not_gzip_raises_value_error_naming_the_file(dirs):
    idx_dir, cache_dir = dirs
    write_dataset(idx_dir)
    path = idx_dir / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match="gzip") as info:
        data.load("fashion_mnist", "train")
    assert str(path) in str(info.value)
    assert not (cache_dir / "tensorflow_datasets" / "fashion_mnist_local" / "1.0.0").exists()


# Nothing found: one DataNotFoundError saying where it looked and the ways to get the data.


def test_nothing_found_raises_one_clear_error(copies, tmp_path):
    shipped, debian, _ = copies
    shutil.rmtree(shipped)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("fashion_mnist", "train", download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message
    assert str(tmp_path / "cache" / "arrays") in message
    assert f"the shipped copy: no train-images-idx3-ubyte.gz in {shipped}" in message
    assert f"the Debian package: no train-images-idx3-ubyte.gz in {debian}" in message
    assert "download not tried (download=False)" in message
    assert "(1) with a network" in message and "(2) INVARIANCE_DATA_MIRRORS=" in message
    assert "(3) apt-get install dataset-fashion-mnist" in message
    assert "(4) " in message and "INVARIANCE_DATA_DIR=/dir/with/idx/gz" in message


def test_nothing_found_says_why_the_download_failed():
    # No mirror at all here (the autouse fixture empties them): the error says so.
    with pytest.raises(data.DataNotFoundError, match="download failed: .*no mirrors"):
        data.load("mnist", "test")


def test_mnist_not_found_without_a_data_dir():
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", "test", download=False)
    message = str(info.value)
    assert "INVARIANCE_DATA_DIR" in message and "apt-get" not in message and "(4)" not in message


def test_cifar10_not_found_offline():
    with pytest.raises(data.DataNotFoundError, match=r"CIFAR-10 \(cifar10\) not found") as info:
        data.load("cifar10", "train", download=False)
    assert "cifar-10-python.tar.gz" in str(info.value)


# Names, splits and options.


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "imagenet"}, "unknown dataset 'imagenet'; valid: fashion_mnist, mnist, cifar10"),
        ({"split": "validation"}, "unknown split 'validation'; valid: train, test"),
        ({"name": "mnist", "num_examples": 5}, "num_examples is only for synthetic"),
        ({"name": "cifar10", "data_dir": "/tmp"}, "data_dir is only for fashion_mnist and mnist"),
        ({"name": "synthetic", "data_dir": "/tmp"}, "data_dir is only for fashion_mnist and"),
    ],
)
def test_bad_arguments_raise_one_line_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        data.load(**kwargs)
    assert "\n" not in str(info.value)


def test_class_names():
    assert data.DATASETS == ("fashion_mnist", "mnist", "cifar10", "synthetic")
    assert data.class_names() == [
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
    ]
    assert data.class_names("mnist")[7] == "7"
    assert data.class_names("cifar10")[0] == "airplane"
    for name in data.DATASETS:
        names = data.class_names(name)
        assert len(names) == len(set(names)) == 10
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; valid: "):
        data.class_names("svhn")


# Synthetic.


def test_synthetic_splits():
    x_train, y_train = data.load("synthetic", "train")
    x_test, y_test = data.load("synthetic", "test")
    assert x_train.shape == (6000, 28, 28, 1) and x_train.dtype == np.uint8
    assert y_train.shape == (6000,) and y_train.dtype == np.int32
    assert x_test.shape == (1000, 28, 28, 1) and y_test.shape == (1000,)
    np.testing.assert_array_equal(np.bincount(y_train), np.full(10, 600))
    np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 100))
    assert not np.array_equal(x_train[:1000], x_test)
    x_again, y_again = data.load("synthetic", "train")
    np.testing.assert_array_equal(x_train, x_again)
    np.testing.assert_array_equal(y_train, y_again)
    assert data.load("synthetic", "test", num_examples=30)[0].shape == (30, 28, 28, 1)


def test_synthetic_is_fast_and_configurable():
    start = time.perf_counter()
    images, labels = data.synthetic(10_000, seed=5)
    assert time.perf_counter() - start < 5  # About 0.2 s on a laptop core.
    assert images.shape == (10_000, 28, 28, 1) and labels.shape == (10_000,)
    assert data.synthetic(20, seed=0, image_size=40)[0].shape == (20, 40, 40, 1)
    assert not np.array_equal(data.synthetic(20, seed=0)[0], data.synthetic(20, seed=1)[0])
    with pytest.raises(ValueError, match="image_size must be >= 12"):
        data.synthetic(5, image_size=8)
    with pytest.raises(ValueError, match="num_examples must be >= 0"):
        data.synthetic(-1)


@given(n=st.integers(0, 60), seed=st.integers(0, 2**32 - 1))
def test_synthetic_property_balanced_and_deterministic(n, seed):
    images, labels = data.synthetic(n, seed=seed)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int32
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n
    np.testing.assert_array_equal(images, data.synthetic(n, seed=seed)[0])


def test_synthetic_shapes_are_bright_on_a_dark_background():
    images, labels = data.synthetic(500, seed=0)
    x = images[..., 0].astype(np.float32)
    assert np.median(x) < 50  # Background.
    assert (x.reshape(500, -1).max(axis=1) > 140).all()  # Every image holds a shape.


def test_synthetic_classes_are_separable_whatever_the_position():
    """A translation-invariant linear classifier (on |FFT|) does far better than chance (10%)."""

    def features(images):
        spectrum = np.abs(np.fft.rfft2(images[..., 0].astype(np.float32) / 255))
        flat = spectrum.reshape(len(images), -1)
        return np.concatenate([flat, np.ones((len(images), 1), np.float32)], axis=1)

    x_train, y_train = data.synthetic(3000, seed=0)
    x_test, y_test = data.synthetic(1000, seed=1)
    f_train = features(x_train)
    targets = np.eye(10, dtype=np.float32)[y_train]
    gram = f_train.T @ f_train + 1.0 * np.eye(f_train.shape[1], dtype=np.float32)
    weights = np.linalg.solve(gram, f_train.T @ targets)
    accuracy = np.mean(np.argmax(features(x_test) @ weights, axis=1) == y_test)
    assert accuracy > 0.9, accuracy  # 0.996 as written.


# The real Fashion-MNIST, from the shipped copy.


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from invariance import _paths

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("INVARIANCE_CACHE_DIR")
    assert _paths.cache_dir() == tmp_path / "home" / ".cache" / "invariance"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _paths.cache_dir() == tmp_path / "xdg" / "invariance"
    monkeypatch.setenv("INVARIANCE_CACHE_DIR", str(tmp_path / "mine"))
    assert _paths.cache_dir() == tmp_path / "mine"
    assert _paths.package_dir("data", "files") == SHIPPED_DIR.parent


def test_search_order_is_one_documented_list():
    steps = [step for step, _ in data.SEARCH_ORDER]
    assert steps == ["data_dir", "cache", "shipped", "debian", "download"]
    doc = data.__doc__
    marks = ["1. ``data_dir``", "2. The array cache", "3. The shipped", "4. The Debian", "5. A"]
    assert all(m in doc for m in marks)
    assert [doc.index(m) for m in marks] == sorted(doc.index(m) for m in marks)


def test_shipped_copy_has_the_published_content():
    assert REAL_LOCAL_COPIES["fashion_mnist"][0] == ("the shipped copy", SHIPPED_DIR)
    assert _sources.check_contents("fashion_mnist", SHIPPED_DIR) is None
    for line in (SHIPPED_DIR / "SOURCE.md").read_text().splitlines():  # The note agrees.
        for stem, sha in _sources.CONTENTS["fashion_mnist"].items():
            if line.startswith(f"| `{stem}.gz`"):
                assert sha in line
    assert "MIT License" in (SHIPPED_DIR / "LICENSE").read_text()


def test_debian_package_has_the_published_content():
    if not DEBIAN_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed (optional source)")
    assert _sources.check_contents("fashion_mnist", DEBIAN_DIR) is None


def test_real_fashion_mnist_from_the_shipped_copy(monkeypatch):
    monkeypatch.setattr(_sources, "LOCAL_COPIES", REAL_LOCAL_COPIES)
    x_train, y_train = data.load("fashion_mnist", "train", download=False)
    x_test, y_test = data.load("fashion_mnist", "test", download=False)
    assert x_train.shape == (60000, 28, 28, 1) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.int32
    assert x_test.shape == (10000, 28, 28, 1) and y_test.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 1000))
    np.testing.assert_array_equal(y_train[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])  # File order.
    np.testing.assert_array_equal(y_test[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
    start = time.perf_counter()
    x_cached, _ = data.load("fashion_mnist", "train")
    assert time.perf_counter() - start < 2.0  # Verified cache hit: ~0.1 s.
    np.testing.assert_array_equal(x_cached, x_train)


_RACER = """
import sys, time
from pathlib import Path
from invariance import data
from invariance.data import _tfds

generate = _tfds._IdxBuilder._generate_examples

def slow_generate(self, images, labels):  # Holds the preparation open long enough to overlap.
    time.sleep(1.0)
    yield from generate(self, images, labels)

_tfds._IdxBuilder._generate_examples = slow_generate
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
images, labels = data.load("fashion_mnist", "test")
print("loaded", int(images.sum()), int(labels.sum()))
"""


def test_two_processes_preparing_one_dataset_at_once_both_load_it(dirs, tmp_path):
    # The first load in a fresh cache prepares the tfds dataset; two processes doing that at
    # once (a sweep with --processes 2 on a fresh machine) both prepared it and the second
    # rename failed with FileExistsError. Now one prepares and the other waits and reads it.
    import os
    import subprocess
    import sys

    idx_dir, _ = dirs
    arrays = write_dataset(idx_dir)
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(go)],
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    go.touch()
    outputs = [racer.communicate(timeout=120) for racer in racers]
    images, labels = arrays["test"]
    for racer, (out, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err[-2000:]
        assert out.splitlines()[-1] == f"loaded {images.sum()} {labels.sum()}"
