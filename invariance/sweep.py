"""Resumable sweeps: one cell per resolved config, identified by its hash (see docs/sweeps.md).

A cell's folder is ``WORKDIR/cells/<name>-<hash>``. A cell is *finished* when its ``done.json``
exists and vouches for its rows: ``done.json`` is written (atomically) after ``rows.jsonl`` and
records the number of rows and the file's sha256, so a cut, emptied or deleted ``rows.jsonl``
makes the cell *damaged*: :func:`read_rows` refuses it and a rerun redoes it. A killed sweep
loses at most the cells in flight. A cell whose training diverged (``TrainingDivergedError``)
is *failed*: ``failed.json`` records the step, seed and loss, and the sweep goes on with the
other cells.

Locks: a sweep holds ``WORKDIR/.lock`` and each cell run holds ``CELL/.lock`` (``flock``, with
the holder's PID written inside): a second process on the same folder stops with one line
naming the holder; a lock left by a dead process is free again. Workers of the process pool end
when their parent dies.

Backends: ``local`` (in this process, or a pool of processes, each pinned to its own share of
the CPU cores; :func:`run_sweeps` runs several sweeps as one queue) and ``submitit`` (SLURM;
``cluster="local"`` runs the same code path on this machine, which is how the tests exercise it).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from invariance._procs import stop_pool, worker_pool
from invariance.config import config_hash, study_part, to_dict
from invariance.io import atomic_write_json
from invariance.locks import LockError, lock

__all__ = [
    "BACKENDS",
    "CellError",
    "LockError",
    "StudyMismatchError",
    "SweepResult",
    "claim_workdir",
    "config_diff",
    "cell_dir",
    "cell_state",
    "is_done",
    "lock",
    "pending_cells",
    "read_json",
    "read_rows",
    "record_expected",
    "record_shared_training",
    "run_sweep",
    "trained_donors",
    "run_sweeps",
]

BACKENDS = ("local", "submitit")
CONFIG_FILE, ROWS_FILE, DONE_FILE, FAILED_FILE, STUDY_FILE, EXPECTED_FILE = (
    "config.json",
    "rows.jsonl",
    "done.json",
    "failed.json",
    "sweep.json",
    "expected.json",
)

#: In a folder of sweep workdirs (a reproduce's): the workdirs whose cells share trainings.
SHARED_TRAINING_FILE = "shared_training.json"

CellFn = Callable[[dict[str, Any], str], Any]


class CellError(ValueError):
    """A cell's files cannot be vouched for (damaged, unreadable, invalid JSON): one line naming
    the file. The user fixes it by rerunning the sweep (which redoes a damaged cell)."""


class StudyMismatchError(ValueError):
    """A workdir holds the cells of another resolved config (other than its seeds)."""


def cell_dir(workdir: str | Path, config: ml_collections.ConfigDict | dict) -> Path:
    """``WORKDIR/cells/<name>-<hash>`` for a resolved cell config."""
    d = to_dict(config)
    label = str(d.get("cell_name") or d.get("name") or "cell").replace("/", "_").replace(" ", "_")
    return Path(workdir) / "cells" / f"{label}-{config_hash(d)}"


# ------------------------------------------------------------------------------------------
# Completeness.


def _digest(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return data.count(b"\n"), hashlib.sha256(data).hexdigest()


def read_json(path: str | Path) -> Any:
    """Reads a JSON file; a missing or invalid one raises :class:`CellError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CellError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CellError(f"{path} is not valid JSON ({e})") from None


def _damage(folder: Path) -> str | None:
    """Why a folder holding ``done.json`` is not a finished cell, or None when it is one."""
    done = read_json(folder / DONE_FILE)
    rows = folder / ROWS_FILE
    if not isinstance(done, dict) or "rows_sha256" not in done:
        return f"{folder / DONE_FILE} records no row count and checksum (an older version)"
    if not rows.is_file():
        return f"{rows} is missing although {DONE_FILE} says the cell finished"
    n, sha = _digest(rows)
    if (n, sha) != (done.get("rows"), done["rows_sha256"]):
        return (
            f"{rows} is damaged: {n} rows (sha256 {sha[:12]}), {DONE_FILE} recorded "
            f"{done.get('rows')} rows (sha256 {done['rows_sha256'][:12]})"
        )
    return None


def cell_state(folder: str | Path) -> tuple[str, str]:
    """``(state, detail)``: "finished", "failed" (detail: the failure), "damaged" (detail: which
    file and why) or "pending"."""
    folder = Path(folder)
    if (folder / DONE_FILE).is_file():
        try:
            why = _damage(folder)
        except CellError as e:
            why = str(e)
        return ("damaged", why) if why else ("finished", "")
    if (folder / FAILED_FILE).is_file():
        try:
            info = read_json(folder / FAILED_FILE)
            return "failed", str(info.get("message", "")) if isinstance(info, dict) else ""
        except CellError as e:
            return "failed", str(e)
    return "pending", ""


def is_done(directory: str | Path) -> bool:
    """Whether a cell folder holds a finished cell whose rows match its ``done.json``."""
    return cell_state(directory)[0] == "finished"


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """A finished cell's rows, verified against its ``done.json``.

    Raises:
        CellError: one line naming the file, for a damaged cell or a line that is not JSON.
    """
    folder = Path(folder)
    why = _damage(folder)
    if why:
        raise CellError(f"{why}; rerun the sweep to redo the cell")
    rows = []
    path = folder / ROWS_FILE
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CellError(f"{path} line {i} is not valid JSON ({e})") from None
    return rows


def pending_cells(
    cells: Sequence[ml_collections.ConfigDict | dict], workdir: str | Path
) -> list[tuple[dict[str, Any], Path]]:
    """The cells not finished yet (pending, failed or damaged), as (plain config dict, folder)
    pairs, in sweep order."""
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


# ------------------------------------------------------------------------------------------
# A workdir holds one study.


def _part_hash(part: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


def config_diff(a: dict[str, Any], b: dict[str, Any], limit: int = 4) -> str:
    """``"k: a -> b; ..."`` over the flat keys where two flat dicts differ (at most ``limit``)."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    text = "; ".join(f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in keys[:limit])
    return text + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def claim_workdir(workdir: str | Path, cells: Sequence[ml_collections.ConfigDict | dict]) -> None:
    """Records the study of ``cells`` in ``workdir/sweep.json``, or checks it is the one there.

    The study is the set of the cells' :func:`invariance.config.study_part`: a rerun with
    other seeds, or a sweep that adds cells, is the same study; a rerun whose overrides change
    anything else (epochs, data, protocols, ...) is not, and would be averaged with the cells
    already there.

    Raises:
        StudyMismatchError: ``workdir`` holds another study (the message names the first keys
            that differ).
    """
    parts: dict[str, dict[str, Any]] = {}
    for c in cells:
        part = study_part(c)
        parts.setdefault(_part_hash(part), part)
    path = Path(workdir) / STUDY_FILE
    if path.is_file():
        old = read_json(path)
        old_parts = old.get("parts", {}) if isinstance(old, dict) else {}
        if set(parts) != set(old_parts):
            a: dict[str, Any] = next(iter(old_parts.values()), {})
            b: dict[str, Any] = next(iter(parts.values()), {})
            raise StudyMismatchError(
                f"{workdir} holds the cells of another resolved config ({config_diff(a, b)}); "
                "cells of different configs must not be averaged: pass another --workdir (the "
                "default one is named after the --set overrides)"
            )
        return
    atomic_write_json(path, {"parts": parts})


def record_expected(folder: str | Path, cells: Sequence[ml_collections.ConfigDict | dict]) -> None:
    """Writes ``folder/expected.json``: every cell the latest sweep (or reproduce) of this
    folder asked for, as ``{"cells": [{"folder", "label", "config"}, ...]}``, so that
    :func:`invariance.report.report` can say which are not finished yet instead of showing
    a partial table as if it were whole.

    Args:
        folder: a sweep workdir or a reproduce store (its cells live in ``folder/cells``).
        cells: the resolved cells asked for.
    """
    entries: dict[str, dict[str, Any]] = {}
    for c in cells:
        d = to_dict(c)
        name = cell_dir(folder, d).name
        entries.setdefault(
            name, {"folder": name, "label": d.get("cell_name"), "config": d.get("name")}
        )
    atomic_write_json(Path(folder) / EXPECTED_FILE, {"cells": list(entries.values())})


def record_shared_training(root: str | Path, workdirs: Sequence[str | Path]) -> None:
    """Writes ``root/shared_training.json``: the sweep workdirs in ``root`` (a reproduce's)
    whose cells may reuse each other's finished trainings (:func:`trained_donors`).

    Args:
        root: the folder holding the workdirs.
        workdirs: workdirs directly inside ``root``.
    """
    names = sorted({Path(w).name for w in workdirs})
    atomic_write_json(Path(root) / SHARED_TRAINING_FILE, {"workdirs": names})


def trained_donors(folder: str | Path) -> list[Path]:
    """The run directories (``CELL/train``) of finished cells that a cell at ``folder``
    (``WORKDIR/cells/NAME-HASH``) may take its trained models from: the other finished cells
    of its workdir, then, where ``shared_training.json`` beside the workdir names it
    (:func:`record_shared_training`), those of the other workdirs named there; each in name
    order. Whether a donor trained the same
    models is :func:`invariance.train.adopt_training`'s check, not this list's."""
    folder = Path(folder)
    workdir = folder.parent.parent
    workdirs = [workdir]
    shared = workdir.parent / SHARED_TRAINING_FILE
    if shared.is_file():
        try:
            names = read_json(shared).get("workdirs", [])
        except (CellError, AttributeError):
            names = []
        if workdir.name in names:  # a workdir not named there shares with no other
            workdirs += [workdir.parent / n for n in names if n != workdir.name]
    donors = []
    for w in workdirs:
        for cell in sorted((w / "cells").glob("*")):
            if cell != folder and (cell / "train").is_dir() and is_done(cell):
                donors.append(cell / "train")
    return donors


# ------------------------------------------------------------------------------------------
# Running cells.


def _failures() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this cell's config fails", not "the library has a bug"."""
    from invariance.train import TrainingDivergedError

    return (TrainingDivergedError,)


def _failure_record(config: dict[str, Any], err: BaseException) -> dict[str, Any]:
    loss = None
    text = str(err)
    if "loss " in text:
        loss = text.split("loss ", 1)[1].split()[0]
    return {
        "label": config.get("cell_name"),
        "cell_index": config.get("cell_index", 0),
        "cell_config": config.get("name"),
        "error": type(err).__name__,
        "step": getattr(err, "step", None),
        "epoch": getattr(err, "epoch", None),
        "seed": getattr(err, "seed", None),
        "loss": loss,
        "message": " ".join(text.split()),
    }


def _run_one(cell_fn: CellFn, config: dict[str, Any], folder: str) -> dict[str, Any]:
    """Runs one cell under its lock; returns ``{"folder", "status", ...failure fields}``."""
    folder_p = Path(folder)
    with lock(folder_p):
        if is_done(folder_p):  # another process finished it meanwhile
            return {"folder": folder, "status": "finished"}
        for stale in (DONE_FILE, FAILED_FILE):
            (folder_p / stale).unlink(missing_ok=True)
        atomic_write_json(folder_p / CONFIG_FILE, config)
        try:
            cell_fn(config, folder)
        except _failures() as e:
            record = _failure_record(config, e)
            atomic_write_json(folder_p / FAILED_FILE, record)
            return {"folder": folder, "status": "failed", **record}
        rows = folder_p / ROWS_FILE
        if not rows.is_file():
            raise RuntimeError(f"cell function {cell_fn!r} wrote no {rows}")
        n, sha = _digest(rows)
        done = {"hash": config_hash(config), "rows": n, "rows_sha256": sha}
        atomic_write_json(folder_p / DONE_FILE, done)
    return {"folder": folder, "status": "finished"}


def _refresh_finished(cells, workdir: Path, todo: set[Path]) -> None:
    """A finished cell's ``config.json`` takes the fields that are not hashed (its report
    section): a column added to a study shows in the next report without rerunning a cell."""
    for c in cells:
        d = to_dict(c)
        folder = cell_dir(workdir, d)
        path = folder / CONFIG_FILE
        if folder in todo or not path.is_file():
            continue
        try:
            same = json.loads(path.read_text()) == d
        except json.JSONDecodeError:
            same = False
        if not same:
            with lock(folder):
                atomic_write_json(path, d)


@dataclasses.dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
        folders: every cell's folder, in sweep order (finished ones included).
        failed: one record per failed cell (``folder``, ``label``, ``step``, ``seed``, ``loss``,
            ``message``), also written to the cell's ``failed.json``.
    """

    folders: list[Path]
    failed: list[dict[str, Any]]

    def summary(self) -> str:
        """One line: how many cells finished and which failed."""
        n = len(dict.fromkeys(self.folders))
        if not self.failed:
            return f"sweep: all {n} cells finished"
        what = "; ".join(
            f"{Path(f['folder']).name}: loss {f.get('loss')} at step {f.get('step')}, "
            f"seed {f.get('seed')}"
            for f in self.failed
        )
        done = n - len(self.failed)
        return f"sweep: {done} of {n} cells finished, {len(self.failed)} failed ({what})"


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
    claim: bool = True,
    on_finished: Callable[[Path], Any] | None = None,
    pin_cores: bool = True,
) -> SweepResult:
    """Runs every unfinished cell under the workdir's lock; failed cells do not stop the others.

    Args:
        cells: resolved cell configs (see :func:`invariance.config.resolve`).
        workdir: the sweep folder; cells go to ``workdir/cells``.
        cell_fn: ``cell_fn(config_dict, folder)`` computes one cell and writes its
            ``rows.jsonl``. It must be importable (a module-level function) for the
            process-pool and submitit backends.
        backend: "local" or "submitit".
        processes: local backend: cells run at once (1 = in this process).
        cluster: submitit backend: None lets submitit choose (SLURM where available), "local"
            runs jobs as local processes, "debug" in this process.
        slurm: submitit backend: executor parameters, e.g. ``{"slurm_partition": "gpu",
            "gpus_per_node": 1, "timeout_min": 60}``.
        progress: print a line per cell.
        claim: record or check the workdir's study (:func:`claim_workdir`); ``invariance
            measure`` passes False to add a re-measured cell (its own hash, its own row in
            the report) to a sweep's folder.
        on_finished: called with each cell's folder as soon as the cell finishes (in this
            process; ``invariance reproduce`` copies it into its store, see
            :mod:`invariance.store`).
        pin_cores: local backend with ``processes > 1``: each worker runs on its own share
            of this process's CPU cores (:func:`invariance._procs.core_share`), so the
            workers' XLA thread pools do not preempt each other.

    Returns:
        A :class:`SweepResult`.

    Raises:
        ValueError: unknown backend, processes < 1.
        LockError: another process runs a sweep in ``workdir``.
    """
    return run_sweeps(
        [(cells, workdir)],
        cell_fn=cell_fn,
        backend=backend,
        processes=processes,
        cluster=cluster,
        slurm=slurm,
        progress=progress,
        claim=claim,
        on_finished=on_finished,
        pin_cores=pin_cores,
    )[0]


def run_sweeps(
    sweeps: Sequence[tuple[Sequence[ml_collections.ConfigDict | dict], str | Path]],
    *,
    cell_fn: CellFn,
    backend: str = "local",
    processes: int = 1,
    cluster: str | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
    claim: bool = True,
    on_finished: Callable[[Path], Any] | None = None,
    pin_cores: bool = True,
) -> list[SweepResult]:
    """Runs several sweeps' unfinished cells as one queue, in sweep order, under all their
    workdirs' locks: with a process pool, a sweep's last cells share the cores with the next
    sweep's first (``invariance reproduce --processes N`` runs its studies so).

    Args:
        sweeps: ``(cells, workdir)`` per sweep, as :func:`run_sweep` takes them; the
            workdirs must differ.
        cell_fn, backend, processes, cluster, slurm, progress, claim, on_finished,
            pin_cores: as in :func:`run_sweep` (``on_finished`` gets every sweep's cells;
            a cell's workdir is ``folder.parent.parent``; submitit writes its logs to the
            first workdir with cells to run).

    Returns:
        One :class:`SweepResult` per sweep, in order.

    Raises:
        ValueError: unknown backend, processes < 1, a workdir given twice.
        LockError: another process runs a sweep in one of the workdirs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: valid are {', '.join(BACKENDS)}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    run = _Run(cell_fn, backend, processes, cluster, slurm, progress, on_finished, pin_cores)
    pairs = [(cells, Path(workdir)) for cells, workdir in sweeps]
    if len({w.resolve() for _, w in pairs}) < len(pairs):
        raise ValueError(f"a workdir is given twice: {', '.join(str(w) for _, w in pairs)}")
    with contextlib.ExitStack() as held:
        for _, workdir in pairs:  # every lock first: a refusal changes no workdir
            held.enter_context(lock(workdir))
        for cells, workdir in pairs if claim else ():
            claim_workdir(workdir, cells)
        for cells, workdir in pairs if claim else ():
            record_expected(workdir, cells)
        todo = [job for cells, workdir in pairs for job in _prepare(cells, workdir, run.say)]
        results = _execute(todo, run)
    return [
        SweepResult(
            folders=[cell_dir(workdir, c) for c in cells],
            failed=[r for r in results if r["status"] == "failed" and _within(r, workdir)],
        )
        for cells, workdir in pairs
    ]


def _within(result: dict[str, Any], workdir: Path) -> bool:
    return Path(result["folder"]).parent.parent == workdir


@dataclasses.dataclass
class _Run:
    """How :func:`run_sweeps` runs its cells (its keyword arguments)."""

    cell_fn: CellFn
    backend: str
    processes: int
    cluster: str | None
    slurm: dict[str, Any] | None
    progress: bool
    on_finished: Callable[[Path], Any] | None
    pin_cores: bool

    def say(self, *args: Any) -> None:
        """Prints a progress line (with ``progress``)."""
        if self.progress:
            print(*args, flush=True)

    def finished(self, result: dict[str, Any]) -> dict[str, Any]:
        """Passes a finished cell's folder to ``on_finished``; returns ``result``."""
        if self.on_finished is not None and result["status"] == "finished":
            self.on_finished(Path(result["folder"]))
        return result


def _prepare(cells, workdir: Path, say: Callable[..., None]) -> list[tuple[dict, Path]]:
    """The sweep's unfinished cells, after refreshing the finished ones' configs and saying
    which damaged or failed cells are redone."""
    todo = pending_cells(cells, workdir)
    n = len({cell_dir(workdir, c) for c in cells})
    say(f"sweep: {n} cells, {len(todo)} to run, in {workdir}")
    _refresh_finished(cells, workdir, {f for _, f in todo})
    for _, folder in todo:
        state, detail = cell_state(folder)
        if state in ("damaged", "failed"):
            say(f"redoing {state} cell {folder.name}: {detail}")
    return todo


def _execute(todo: list[tuple[dict, Path]], run: _Run) -> list[dict[str, Any]]:
    """Runs the cells with the run's backend; returns their results in completion order."""
    results: list[dict[str, Any]] = []
    if not todo:
        return results
    # No more workers than cells: a worker would idle on its share of the cores.
    processes = min(run.processes, len(todo))
    if run.backend == "local" and processes == 1:
        for i, (cfg, folder) in enumerate(todo):
            run.say(f"[{i + 1}/{len(todo)}] {folder.name}")
            results.append(run.finished(_run_one(run.cell_fn, cfg, str(folder))))
    elif run.backend == "local":
        with worker_pool(processes, pin_cores=run.pin_cores) as pool:
            futures = {pool.submit(_run_one, run.cell_fn, c, str(f)): f for c, f in todo}
            try:
                for fut in cf.as_completed(futures):
                    results.append(run.finished(fut.result()))
                    run.say(f"{results[-1]['status']} {futures[fut].name}")
            except BaseException:  # a bug in a cell, or Ctrl-C: stop, as the serial path does
                stop_pool(pool)
                raise
    else:
        import submitit

        logs = todo[0][1].parent.parent / "submitit"  # the first workdir with cells to run
        executor = submitit.AutoExecutor(folder=logs, cluster=run.cluster)
        executor.update_parameters(**(run.slurm or {}))
        jobs = executor.map_array(
            _run_one, [run.cell_fn] * len(todo), [c for c, _ in todo], [str(f) for _, f in todo]
        )
        for job in jobs:
            results.append(run.finished(job.result()))
            run.say(f"{results[-1]['status']} job {job.job_id}")
    return results
