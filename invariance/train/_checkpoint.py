"""The run directory: orbax checkpoints of the train state, config.json, metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from invariance.io import atomic_write_text

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
CHECKPOINT_DIR = "checkpoints"


class Checkpoints:
    """Orbax checkpoints of a run, one per saved epoch, in ``run_dir/checkpoints/<epoch>``.

    Each checkpoint holds two items: ``state`` (the train state pytree: stacked variables,
    optimizer state, step; saved with ``StandardSave``, restored with the shardings of a
    template) and ``meta`` (JSON: the epoch and the metrics history up to it). Saving is
    synchronous, so a checkpoint is complete on disk when :meth:`save` returns; orbax writes
    it to a temporary folder and renames it, so a killed save leaves no partial checkpoint.
    """

    def __init__(self, run_dir: Path, *, keep: int):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            Path(run_dir).absolute() / CHECKPOINT_DIR,
            options=options,
            item_names=("state", "meta"),
        )

    def latest_epoch(self) -> int | None:
        """The epoch of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_epochs(self) -> list[int]:
        """The epochs with a checkpoint on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, epoch: int, state: Any, meta: dict) -> None:
        """Writes the checkpoint of ``epoch`` (and deletes the ones beyond ``keep``)."""
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, epoch: int, template: Any) -> tuple[Any, dict]:
        """Reads ``(state, meta)`` of ``epoch``; arrays get ``template``'s shapes and shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = self._manager.restore(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()


def metrics_line(row: dict) -> str:
    """One metrics.jsonl line (sorted keys, newline-terminated)."""
    return json.dumps(row, sort_keys=True) + "\n"


def rewrite_metrics(run_dir: Path, history: list[dict]) -> None:
    """Replaces ``metrics.jsonl`` atomically with one line per row of ``history``."""
    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(metrics_line(r) for r in history))


def append_metrics(run_dir: Path, row: dict) -> None:
    """Appends one row to ``metrics.jsonl`` (flushed and fsynced).

    An append cut short by a kill can leave a partial last line; the next resume rewrites the
    file from the checkpointed history, so that line never survives a resume.
    """
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(metrics_line(row))
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl`` (empty if there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
