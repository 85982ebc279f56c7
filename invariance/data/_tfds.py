"""The tensorflow-datasets side, without TensorFlow: our IDX builders.

Imported lazily by ``invariance.data`` (importing tfds takes a fraction of a second), so loading
the synthetic dataset or a cached array never touches tfds. Whatever copy of the IDX files
``load`` settles on (a user's folder, the shipped copy, the Debian package's, a verified
download) is handed to these builders, each in its own tfds data_dir.

Our builders, ``fashion_mnist_local`` and ``mnist_local``, prepare the same tfds dataset as tfds'
``fashion_mnist`` / ``mnist`` (image (28, 28, 1) uint8 as PNG, label ``ClassLabel(10)``) from
local IDX files, written as ``array_record`` so ``tfds.data_source`` reads it with random access.
tfds' stock image features encode PNG through TensorFlow; our builders hand them PNG bytes encoded
with Pillow instead, and tfds decodes PNG with Pillow too, so neither step needs TensorFlow. Unlike
the stock builders they keep the files' example order (``disable_shuffling``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from invariance import locks
from invariance.data import _idx

FILE_FORMAT = "array_record"


@contextlib.contextmanager
def _quiet_absl():
    """Hides tfds' absl warnings that are expected here ("Variant folder ... has no
    dataset_info.json" before preparing; "OpenCV is not installed ..." when decoding with Pillow).
    """
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Prepares an MNIST-format tfds dataset from the four IDX files in ``idx_dir``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Prepared from local IDX files."}
    CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
    HOMEPAGE: ClassVar[str] = ""

    def __init__(self, *, idx_dir: str | os.PathLike | None = None, **kwargs):
        """``idx_dir`` is needed to prepare the dataset, not to read a prepared one."""
        self._idx_dir = None if idx_dir is None else Path(idx_dir)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name}: prepared from local IDX files, in their order.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        if self._idx_dir is None:
            raise ValueError(f"{self.name} is not prepared: pass idx_dir=/folder/with/idx/files")
        # Read and check both splits before writing anything.
        arrays = {split: _idx.read_split(self._idx_dir, split) for split in _idx.FILES}
        return {split: self._generate_examples(*pair) for split, pair in arrays.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": _encode_png(image), "label": int(label)}


class FashionMnistLocal(_IdxBuilder):
    """Fashion-MNIST (Xiao et al., 2017) prepared from local IDX files."""

    CLASS_NAMES = _idx.FASHION_MNIST_CLASSES
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"


class MnistLocal(_IdxBuilder):
    """MNIST (LeCun et al., 1998) prepared from local IDX files."""

    CLASS_NAMES = _idx.MNIST_CLASSES
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


LOCAL_BUILDERS = {"fashion_mnist": FashionMnistLocal, "mnist": MnistLocal}


def read(name: str, split: str, tfds_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decodes a prepared split with ``tfds.data_source``: uint8 (N, H, W, C), int32 (N,)."""
    with _quiet_absl():
        source = tfds.data_source(
            name,
            split=split,
            data_dir=os.fspath(tfds_dir),
            download=False,
            builder_kwargs={"file_format": FILE_FORMAT},
        )
        examples = source.__getitems__(range(len(source)))
    images = np.stack([ex["image"] for ex in examples]).astype(np.uint8, copy=False)
    labels = np.array([ex["label"] for ex in examples], dtype=np.int32)
    return images, labels


def _builder(name: str, idx_dir: Path | None, tfds_dir: Path) -> _IdxBuilder:
    with _quiet_absl():
        return LOCAL_BUILDERS[name](idx_dir=idx_dir, data_dir=tfds_dir, file_format=FILE_FORMAT)


def prepare_local(name: str, idx_dir: Path | None, tfds_dir: Path) -> bool:
    """Prepares ``<name>_local`` in ``tfds_dir`` from ``idx_dir`` unless already there.

    Processes that start at once (a sweep's workers on a fresh machine) prepare it once: each
    waits for ``tfds_dir/.locks/<name>``, and one that gets it after another prepared the
    dataset finds it done.

    Returns whether the dataset is prepared (False: not prepared and no ``idx_dir``).
    """
    if _builder(name, idx_dir, tfds_dir).is_prepared():
        return True
    if idx_dir is None:
        return False
    with locks.wait_for(tfds_dir / ".locks" / name):
        builder = _builder(name, idx_dir, tfds_dir)  # Sees a dataset prepared while waiting.
        if not builder.is_prepared():
            builder.download_and_prepare(
                file_format=FILE_FORMAT, download_dir=tfds_dir / "downloads"
            )
    return True
