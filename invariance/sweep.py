"""Resumable sweeps: one cell per resolved config, identified by its hash.

A cell's folder is ``WORKDIR/cells/<name>-<hash>``. A cell is finished when its ``done.json``
exists; that file is written (atomically) after the cell's rows, so a killed sweep loses at most
the cells in flight, and a rerun skips every finished cell. Backends: ``local`` (in this process,
or a small pool of processes) and ``submitit`` (SLURM; ``cluster="local"`` runs the same code
path on this machine, which is how the tests exercise it).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from invariance.config import config_hash, to_dict
from invariance.io import atomic_write_json

__all__ = ["BACKENDS", "cell_dir", "is_done", "pending_cells", "run_sweep"]

BACKENDS = ("local", "submitit")

CellFn = Callable[[dict[str, Any], str], Any]


def cell_dir(workdir: str | Path, config: ml_collections.ConfigDict | dict) -> Path:
    """``WORKDIR/cells/<name>-<hash>`` for a resolved cell config."""
    d = to_dict(config)
    label = str(d.get("cell_name") or d.get("name") or "cell").replace("/", "_").replace(" ", "_")
    return Path(workdir) / "cells" / f"{label}-{config_hash(d)}"


def is_done(directory: str | Path) -> bool:
    """Whether a cell folder holds a finished cell (its ``done.json``)."""
    return (Path(directory) / "done.json").is_file()


def pending_cells(
    cells: Sequence[ml_collections.ConfigDict | dict], workdir: str | Path
) -> list[tuple[dict[str, Any], Path]]:
    """The cells not finished yet, as (plain config dict, folder) pairs, in sweep order."""
    out = []
    seen = set()
    for c in cells:
        d = to_dict(c)
        folder = cell_dir(workdir, d)
        if folder in seen:  # two overrides that resolve to the same config: one cell
            continue
        seen.add(folder)
        if not is_done(folder):
            out.append((d, folder))
    return out


def _run_one(cell_fn: CellFn, config: dict[str, Any], folder: str) -> str:
    folder_p = Path(folder)
    folder_p.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder_p / "config.json", config)
    cell_fn(config, folder)
    atomic_write_json(folder_p / "done.json", {"hash": config_hash(config)})
    return folder


def run_sweep(
    cells: Sequence[ml_collections.ConfigDict | dict],
    workdir: str | Path,
    *,
    cell_fn: CellFn,
    backend: str = "local",
    processes: int = 1,
    cluster: str | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Runs every unfinished cell; returns every cell's folder (finished ones included).

    Args:
        cells: resolved cell configs (see :func:`invariance.config.resolve`).
        workdir: the sweep folder; cells go to ``workdir/cells``.
        cell_fn: ``cell_fn(config_dict, folder)`` computes one cell and writes its rows. It must
            be importable (a module-level function) for the process-pool and submitit backends.
        backend: "local" or "submitit".
        processes: local backend: cells run at once (1 = in this process).
        cluster: submitit backend: None lets submitit choose (SLURM where available), "local"
            runs jobs as local processes, "debug" in this process.
        slurm: submitit backend: executor parameters, e.g. ``{"slurm_partition": "gpu",
            "gpus_per_node": 1, "timeout_min": 60}``.
        progress: print a line per cell.

    Raises:
        ValueError: unknown backend, processes < 1.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: valid are {', '.join(BACKENDS)}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    todo = pending_cells(cells, workdir)
    all_dirs = [cell_dir(workdir, c) for c in cells]
    if progress:
        print(f"sweep: {len(set(all_dirs))} cells, {len(todo)} to run, in {workdir}", flush=True)
    if not todo:
        return all_dirs
    if backend == "local" and processes == 1:
        for i, (cfg, folder) in enumerate(todo):
            if progress:
                print(f"[{i + 1}/{len(todo)}] {folder.name}", flush=True)
            _run_one(cell_fn, cfg, str(folder))
    elif backend == "local":
        ctx = mp.get_context("spawn")  # JAX is not fork-safe
        with cf.ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            futures = {pool.submit(_run_one, cell_fn, c, str(f)): f for c, f in todo}
            for fut in cf.as_completed(futures):
                fut.result()
                if progress:
                    print(f"done {futures[fut].name}", flush=True)
    else:
        import submitit

        executor = submitit.AutoExecutor(folder=workdir / "submitit", cluster=cluster)
        executor.update_parameters(**(slurm or {}))
        jobs = executor.map_array(
            _run_one, [cell_fn] * len(todo), [c for c, _ in todo], [str(f) for _, f in todo]
        )
        for job in jobs:
            job.result()
            if progress:
                print(f"done job {job.job_id}", flush=True)
    return all_dirs
