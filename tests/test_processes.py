"""Sweeps over a process pool: each worker on its own share of the CPU cores, and several
sweeps (``invariance reproduce``'s studies) run as one queue."""

import json
import os
import time
from pathlib import Path

import pytest

from invariance._procs import core_share
from invariance.sweep import read_rows, run_sweep, run_sweeps


def test_core_shares_are_disjoint_cover_the_cores_and_fit_any_count():
    assert core_share(0, 1, {3, 1, 2}) == [1, 2, 3]
    assert [core_share(i, 2, range(4)) for i in range(2)] == [[0, 1], [2, 3]]
    assert [core_share(i, 2, range(5)) for i in range(2)] == [[0, 1], [2, 3, 4]]
    assert [core_share(i, 3, [0, 1]) for i in range(3)] == [[0], [1], [0]]
    for p in range(1, 7):
        shares = [core_share(i, p, range(6)) for i in range(p)]
        assert sorted(c for s in shares for c in s) == list(range(6))
    with pytest.raises(ValueError, match="no share 2 of 2"):
        core_share(2, 2, [0, 1])
    with pytest.raises(ValueError, match="no share"):
        core_share(0, 1, [])


def _affinity_cell(config, folder):
    """Records the worker's PID and CPU affinity (and, with ``fail``, diverges)."""
    from invariance.train import TrainingDivergedError

    if config.get("bug"):
        raise RuntimeError("a bug in the cell")
    if config.get("fail"):
        raise TrainingDivergedError(
            "training diverged: loss nan at step 1", step=1, epoch=1, seed=0, run_dir=Path(folder)
        )
    time.sleep(0.3)  # long enough that both workers take cells
    row = {"label": config["cell_name"], "pid": os.getpid()}
    row["cores"] = sorted(os.sched_getaffinity(0))
    (Path(folder) / "rows.jsonl").write_text(json.dumps(row) + "\n")


def _cells(prefix, n, **extra):
    return [
        {"name": prefix, "cell_name": f"{prefix}{i}", "sweep_keys": ["cell_name"], **extra}
        for i in range(n)
    ]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity here")
def test_each_pool_worker_runs_on_its_own_share_of_the_cores(tmp_path):
    cores = os.sched_getaffinity(0)
    result = run_sweep(
        _cells("c", 4), tmp_path / "w", cell_fn=_affinity_cell, processes=2, progress=False
    )
    rows = [r for f in result.folders for r in read_rows(f)]
    by_pid = {r["pid"]: r["cores"] for r in rows}
    shares = [core_share(i, 2, cores) for i in range(2)]
    assert all(c in shares for c in by_pid.values()), (by_pid, shares)
    if len(by_pid) == 2:  # both workers took cells: different shares
        assert len({tuple(c) for c in by_pid.values()}) == (2 if len(cores) > 1 else 1)
    assert os.sched_getaffinity(0) == cores  # the parent keeps all its cores
    # Unpinned: each worker keeps every core.
    free = run_sweep(
        _cells("u", 2),
        tmp_path / "u",
        cell_fn=_affinity_cell,
        processes=2,
        progress=False,
        pin_cores=False,
    )
    assert {tuple(r["cores"]) for f in free.folders for r in read_rows(f)} == {tuple(sorted(cores))}


@pytest.mark.parametrize("processes", [1, 2])
def test_several_sweeps_run_as_one_queue_and_keep_their_own_results(tmp_path, processes):
    seen = []
    first, second = _cells("a", 2), [*_cells("b", 1), *_cells("bad", 1, fail=True)]
    results = run_sweeps(
        [(first, tmp_path / "a"), (second, tmp_path / "b")],
        cell_fn=_affinity_cell,
        processes=processes,
        progress=False,
        on_finished=seen.append,
    )
    assert [len(r.folders) for r in results] == [2, 2]
    assert results[0].failed == []
    assert [Path(f["folder"]).name.split("-")[0] for f in results[1].failed] == ["bad0"]
    assert sorted(p.name.split("-")[0] for p in seen) == ["a0", "a1", "b0"]
    assert all(p.parent.parent in (tmp_path / "a", tmp_path / "b") for p in seen)
    # A rerun finds the finished cells and redoes only the failed one.
    again = run_sweeps(
        [(first, tmp_path / "a"), (second, tmp_path / "b")],
        cell_fn=_affinity_cell,
        processes=processes,
        progress=False,
        on_finished=seen.append,
    )
    assert len(seen) == 3 and len(again[1].failed) == 1


def test_one_workdir_given_twice_is_refused(tmp_path):
    with pytest.raises(ValueError, match="a workdir is given twice"):
        run_sweeps(
            [(_cells("a", 1), tmp_path / "a"), (_cells("b", 1), tmp_path / "x" / ".." / "a")],
            cell_fn=_affinity_cell,
        )


def test_fewer_cells_than_processes_run_in_this_process(tmp_path):
    """One cell and --processes 2: no pool (its second worker would idle on half the cores)."""
    result = run_sweep(
        _cells("one", 1), tmp_path / "w", cell_fn=_affinity_cell, processes=2, progress=False
    )
    (row,) = read_rows(result.folders[0])
    assert row["pid"] == os.getpid()


def test_a_bug_in_a_pool_cell_stops_the_sweep_like_the_serial_path(tmp_path):
    cells = [*_cells("bug", 1, bug=True), *_cells("c", 7)]
    with pytest.raises(RuntimeError, match="a bug in the cell"):
        run_sweep(cells, tmp_path / "w", cell_fn=_affinity_cell, processes=2, progress=False)
    finished = [p for p in (tmp_path / "w" / "cells").iterdir() if (p / "done.json").exists()]
    assert len(finished) < 7  # the queued cells were cancelled, not run to the end


_BUGGY_SWEEP = """
import sys, time
from pathlib import Path
from invariance.sweep import run_sweep


def cell(config, folder):
    if config["cell_name"] == "bug":
        time.sleep(1.0)  # the other worker has started its long cell by now
        raise RuntimeError("a bug in the cell")
    time.sleep(120)


if __name__ == "__main__":
    cells = [{"name": n, "cell_name": n, "sweep_keys": ["cell_name"]} for n in ("bug", "long")]
    run_sweep(cells, Path(sys.argv[1]), cell_fn=cell, processes=2, progress=False)
"""


def test_a_bug_in_a_pool_cell_ends_the_process_without_waiting_for_other_cells(tmp_path):
    # The error used to surface at once but the process lived on until every running cell had
    # finished (the pool's workers were joined at exit): on the full study, a worker's crash
    # left the sweep computing for half an hour after its traceback.
    import subprocess
    import sys

    script = tmp_path / "buggy_sweep.py"
    script.write_text(_BUGGY_SWEEP)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "a bug in the cell" in done.stderr
    assert time.perf_counter() - start < 60
