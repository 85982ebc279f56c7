"""Sharing a finished training between runs that would train the same models.

Two training configs train bit-identical models when everything that decides the parameters is
equal: data, model, optimizer, schedule, seeds, augmentation, epochs and ``vmap_seeds`` (which
changes float rounding). Fields that only say how a call runs, is logged or checkpointed do not
count (:data:`NOT_TRAINED`), and ``augment`` is compared after :func:`check_augment`, so an
absent, None or empty augmentation is the same "none". :func:`adopt_training` lets a new run
directory start from another run's final checkpoint (hard links, so no bytes are copied and the
donor is never written), and :func:`invariance.train.train` then restores it and trains nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import ml_collections

from invariance.io import atomic_write_text, link_or_copy
from invariance.train import _checkpoint as ckpt_lib
from invariance.train._augment import check_augment

__all__ = ["NOT_TRAINED", "SHARED_FILE", "adopt_training", "finished_epoch", "training_identity"]

#: Config fields that never change the trained parameters (nor the per-epoch history).
NOT_TRAINED = (
    "workdir",
    "progress",
    "log_every_steps",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "stop_after_epochs",
    "eval_batch_size",
)
#: Written into a run directory that adopted another run's training: where it came from.
SHARED_FILE = "shared_training.json"


def training_identity(config: ml_collections.ConfigDict | dict[str, Any]) -> dict[str, Any]:
    """The part of a training config that decides the trained models, as plain JSON values.

    Args:
        config: a training config (:func:`invariance.train.default_config` shaped), a
            ConfigDict or the dict of a run's ``config.json``.

    Returns:
        A dict: every field but :data:`NOT_TRAINED`, tuples as lists, ``augment`` as
        :func:`check_augment` returns it (``{}`` when absent). Two configs train the same
        models exactly when their identities are equal.
    """
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    for k in NOT_TRAINED:
        d.pop(k, None)
    d["augment"] = check_augment(d.get("augment"))
    return json.loads(json.dumps(d, sort_keys=True))


def finished_epoch(run_dir: Path) -> int | None:
    """The epoch of ``run_dir``'s finished training, read without touching it: its
    ``config.json`` names ``num_epochs`` and ``checkpoints/<num_epochs>`` is a complete orbax
    checkpoint (orbax renames a checkpoint into place only once it is written). None otherwise."""
    try:
        cfg = json.loads((run_dir / ckpt_lib.CONFIG_FILE).read_text())
        epochs = int(cfg["num_epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    final = run_dir / ckpt_lib.CHECKPOINT_DIR / str(epochs)
    if not (final / "_CHECKPOINT_METADATA").is_file():
        return None
    return epochs


def adopt_training(
    run_dir: Path, config: ml_collections.ConfigDict, donors: list[Path]
) -> Path | None:
    """Starts ``run_dir`` from the first donor run that trained the same models to the end.

    Args:
        run_dir: the new run's directory; left alone if it holds checkpoints already (a run
            of its own, resumed as usual).
        config: the new run's training config.
        donors: candidate run directories, in order of preference.

    Returns:
        The donor adopted, or None. On adoption ``run_dir/checkpoints/<epoch>`` is hard-linked
        (copied where links are impossible) from the donor's final checkpoint, its
        ``metrics.jsonl`` and ``provenance.json`` (what trained the models) are copied, and
        :data:`SHARED_FILE` names the run that trained the models (the donor, or the one the
        donor took them from; its path relative to ``run_dir``). The run's own
        ``config.json`` is written by :func:`invariance.train.train` when it restores the
        checkpoint.
    """
    if (run_dir / ckpt_lib.CHECKPOINT_DIR).exists():
        return None
    want = training_identity(config)
    for donor in donors:
        epoch = finished_epoch(donor)
        if epoch is None or donor.resolve() == run_dir.resolve():
            continue
        try:
            theirs = training_identity(json.loads((donor / ckpt_lib.CONFIG_FILE).read_text()))
        except (OSError, ValueError, TypeError):  # unreadable or invalid: not a donor
            continue
        if theirs != want:
            continue
        _link_run(donor, run_dir, epoch)
        return donor
    return None


def _link_run(donor: Path, run_dir: Path, epoch: int) -> None:
    """Fills ``run_dir`` from ``donor``'s final checkpoint; the checkpoint folder appears
    last and whole (renamed into place), so a kill leaves no half-adopted run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (ckpt_lib.METRICS_FILE, ckpt_lib.PROVENANCE_FILE):
        if (donor / name).is_file():
            shutil.copy2(donor / name, run_dir / name)
    trained_in = donor.resolve()
    lent = donor / SHARED_FILE
    if lent.is_file():  # the donor took its models from another run: name the one that trained
        try:
            trained_in = (donor / json.loads(lent.read_text())["trained_in"]).resolve()
        except (OSError, ValueError, KeyError, TypeError):
            pass
    # Relative, so the record reads the same in a committed store on another machine.
    record = {"trained_in": os.path.relpath(trained_in, run_dir.resolve()), "epoch": epoch}
    atomic_write_text(run_dir / SHARED_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp = run_dir / f".{ckpt_lib.CHECKPOINT_DIR}.adopting"
    shutil.rmtree(tmp, ignore_errors=True)
    src = donor / ckpt_lib.CHECKPOINT_DIR / str(epoch)
    shutil.copytree(src, tmp / str(epoch), copy_function=link_or_copy)
    os.replace(tmp, run_dir / ckpt_lib.CHECKPOINT_DIR)
