"""Light copies of finished cells: what a study commits, so it can finish over several runs.

A sweep's workdir holds everything a cell made, checkpoints included (hundreds of MB for a full
study). A *store* keeps only what the tables are made of and what vouches for it, in the same
layout (``STORE/cells/<name>-<hash>/``), small enough to commit:

- the cell's top-level files: ``config.json`` (the resolved config), ``rows.jsonl``,
  ``done.json`` (row count and sha256 of the rows), ``provenance.json`` and any small
  artefact the report draws (``examples.npz``);
- its training record, ``train/metrics.jsonl`` (one row per epoch), ``train/config.json``,
  ``train/provenance.json`` and, for models taken from another cell's training,
  ``train/shared_training.json``;
- never ``checkpoints/``, locks or files over :data:`MAX_FILE_BYTES`.

``invariance reproduce`` keeps ``results/<profile>/<study>/`` as the store of each study: it
copies a cell there as soon as it finishes (:func:`keep`), and before running it puts every
verified cell of the store back into the workdir (:func:`restore`), so a rerun of the same
command, on this machine or another one with the committed store, skips what is committed. A
stored cell is restored only when its ``done.json`` vouches for its rows and its config is the
cell's (same hash); anything else is left alone and redone. The store claims its study like a
workdir (``sweep.json``): cells of another config are refused, never averaged.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from invariance.config import config_hash, to_dict
from invariance.io import atomic_write_bytes
from invariance.sweep import CONFIG_FILE, DONE_FILE, cell_dir, cell_state, read_json

__all__ = ["MAX_FILE_BYTES", "keep", "light_files", "restore"]

#: Files bigger than this are never stored (a checkpoint that landed at the top level, say).
MAX_FILE_BYTES = 8 * 2**20
_TRAIN_FILES = ("metrics.jsonl", "config.json", "provenance.json", "shared_training.json")


def light_files(cell: str | Path) -> list[Path]:
    """The files of a cell folder that a store keeps, relative to it, ``done.json`` last.

    Args:
        cell: a cell folder (``WORKDIR/cells/<name>-<hash>``).

    Returns:
        Relative paths: the top-level regular files (not hidden, at most
        :data:`MAX_FILE_BYTES`), then ``train/{metrics.jsonl, config.json, provenance.json,
        shared_training.json}`` where present, then ``done.json``.
    """
    cell = Path(cell)
    top = [
        p.relative_to(cell)
        for p in sorted(cell.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != DONE_FILE
    ]
    train = [Path("train") / n for n in _TRAIN_FILES if (cell / "train" / n).is_file()]
    files = [p for p in top + train if (cell / p).stat().st_size <= MAX_FILE_BYTES]
    return files + ([Path(DONE_FILE)] if (cell / DONE_FILE).is_file() else [])


def _copy(src: Path, dst: Path) -> None:
    """Copies a finished cell's light files; ``done.json`` goes last, so a copy cut short is
    a pending cell, never a finished one with missing rows."""
    (dst / DONE_FILE).unlink(missing_ok=True)
    for rel in light_files(src):
        atomic_write_bytes(dst / rel, (src / rel).read_bytes())
        shutil.copystat(src / rel, dst / rel)


def keep(cell: str | Path, store: str | Path) -> Path | None:
    """Copies a finished cell of a workdir into ``store/cells/`` (its light files only).

    Args:
        cell: the workdir's cell folder.
        store: the store folder of the cell's study.

    Returns:
        The stored cell's folder, or None when ``cell`` is not finished (failed, damaged or
        pending cells are not stored).
    """
    cell = Path(cell)
    if cell_state(cell)[0] != "finished":
        return None
    dst = Path(store) / "cells" / cell.name
    if cell_state(dst)[0] == "finished" and _same_files(cell, dst):
        return dst
    _copy(cell, dst)
    return dst


def _same_files(a: Path, b: Path) -> bool:
    """Whether ``b`` holds every light file of ``a`` with the same bytes."""
    for rel in light_files(a):
        if not (b / rel).is_file() or (a / rel).read_bytes() != (b / rel).read_bytes():
            return False
    return True


def _vouched(folder: Path, config: dict[str, Any]) -> bool:
    """A stored cell is restored only when finished and made by this very config."""
    if cell_state(folder)[0] != "finished":
        return False
    done = read_json(folder / DONE_FILE)
    stored = read_json(folder / CONFIG_FILE)
    return done.get("hash") == config_hash(config) == config_hash(stored)


def restore(
    cells: Sequence[ml_collections.ConfigDict | dict], store: str | Path, workdir: str | Path
) -> list[Path]:
    """Puts the store's verified copies of ``cells`` into ``workdir`` where it has none.

    Args:
        cells: the study's resolved cells.
        store: the study's store folder.
        workdir: the study's sweep workdir.

    Returns:
        The workdir cell folders restored (the sweep then counts them as finished).
    """
    restored = []
    for c in cells:
        d = to_dict(c)
        src, dst = cell_dir(store, d), cell_dir(workdir, d)
        if cell_state(dst)[0] == "finished" or not _vouched(src, d):
            continue
        _copy(src, dst)
        restored.append(dst)
    return restored
