"""Faults of the layer above training: sweeps, reports and the CLI never give a silently wrong
table (issue 12), bad configs fail before any data is loaded, and the configs ship with the
package (issue 11). Synthetic cells (a cell function writing rows) wherever training is not
the point; two tiny real trainings where it is."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from invariance import cli
from invariance import config as C
from invariance.sweep import (
    CellError,
    LockError,
    StudyMismatchError,
    cell_dir,
    cell_state,
    lock,
    pending_cells,
    read_rows,
    run_sweep,
)

REPO = Path(__file__).resolve().parent.parent


def _main(args, capsys, monkeypatch, tmp_path):
    """The CLI in this process (no compilation cache), run in ``tmp_path``: (status, err)."""
    monkeypatch.setattr(cli, "_enable_compilation_cache", lambda: None)
    monkeypatch.chdir(tmp_path)
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err, match):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("invariance: error: "), err
    assert match in lines[0], lines[0]


# ------------------------------------------------------------------------------------------
# Synthetic cells: rows per seed, no training.


def _rows_cell(config, folder):
    """Writes one accuracy row per seed; ``config["fail"]`` raises a divergence instead."""
    from invariance.train import TrainingDivergedError

    log = config.get("log")
    if log:
        with open(log, "a") as f:
            f.write(config["cell_name"] + "\n")
    if config.get("fail"):
        raise TrainingDivergedError(
            "training diverged: loss nan at step 3 (epoch 1) for seed 1 (model 1 of 2)",
            step=3,
            epoch=1,
            seed=1,
            run_dir=Path(folder),
        )
    t = config["train"]
    rows = [
        {
            "label": config["cell_name"],
            "cell_index": config.get("cell_index", 0),
            "cell_config": config["name"],
            "experiment": config["name"],
            "protocol": "accuracy",
            "accuracy": config.get("acc", 0.5) + 0.01 * s,
            "seed_index": t["seed_offset"] + s,
        }
        for s in range(t["num_seeds"])
    ]
    text = config.get("raw_rows") or "".join(json.dumps(r) + "\n" for r in rows)
    (Path(folder) / "rows.jsonl").write_text(text)


def _cells(n=2, epochs=1, seed_offset=0, log=None, **extra):
    return [
        {
            "name": "fake",
            "experiment": "fake",
            "cell_name": f"c{i}",
            "cell_index": i,
            "sweep_keys": ["cell_name", "acc"],
            "acc": 0.5 + 0.1 * i,
            "log": str(log) if log else None,
            "train": {"num_epochs": epochs, "num_seeds": 2, "seed": 0, "seed_offset": seed_offset},
            **extra,
        }
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------------
# 1. Wrong tables, silently.


def test_overrides_never_share_a_folder_or_a_table(tmp_path):
    # The default workdir is named after the overrides.
    plain = cli._default_workdir("pooling_table", "tiny", [])
    three = cli._default_workdir("pooling_table", "tiny", ["train.num_epochs=3"])
    assert plain == Path("runs/pooling_table-tiny") and three != plain
    assert cli._default_workdir("pooling_table", "tiny", ["train.num_epochs=3"]) == three
    # An explicit shared workdir refuses a sweep of another resolved config ...
    wd = tmp_path / "w"
    run_sweep(_cells(epochs=1), wd, cell_fn=_rows_cell, progress=False)
    with pytest.raises(StudyMismatchError, match=r"train.num_epochs: 1 -> 3"):
        run_sweep(_cells(epochs=3), wd, cell_fn=_rows_cell, progress=False)
    # ... but more seeds of the same config are the same study, averaged by seed.
    run_sweep(_cells(seed_offset=2), wd, cell_fn=_rows_cell, progress=False)
    from invariance.report import report

    (md,) = [p for p in report(wd, tmp_path / "out") if p.suffix == ".md"]
    assert "over 4 seeds" in md.read_text()
    # Two sweeps of different configs reported from a common parent: refused, not averaged.
    run_sweep(_cells(epochs=3), tmp_path / "p" / "b", cell_fn=_rows_cell, progress=False)
    run_sweep(_cells(epochs=1), tmp_path / "p" / "a", cell_fn=_rows_cell, progress=False)
    with pytest.raises(CellError, match="different configs .*train.num_epochs"):
        report(tmp_path / "p", tmp_path / "out2")


def test_a_partial_table_says_which_cells_are_not_finished(tmp_path, monkeypatch):
    from invariance.report import report

    wd = tmp_path / "w"
    cells = _cells(n=3)
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)
    (md,) = [p for p in report(wd, tmp_path / "a") if p.suffix == ".md"]
    assert "Partial" not in md.read_text()
    (cell_dir(wd, cells[2]) / "done.json").unlink()  # c2 pending, as in a run still going
    written = report(wd, tmp_path / "b")
    text = {p.suffix: p.read_text() for p in written}
    assert "Partial: 2 of 3 cells finished; not finished yet: c2." in text[".md"]
    assert text[".tex"].startswith("% Partial: 2 of 3 cells finished; not finished yet: c2.\n")
    assert "| c2 |" not in text[".md"]
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)  # c2 finishes
    (md,) = [p for p in report(wd, tmp_path / "c") if p.suffix == ".md"]
    assert "Partial" not in md.read_text() and "| c2 |" in md.read_text()
    # Its figures carry the same line (drawn above them).
    from invariance import report as report_lib

    seen = []
    spy = {"spy": lambda name, rows, out, caption=None: seen.append(caption) or []}
    monkeypatch.setattr(report_lib, "FIGURES", spy)
    spec = {**report_lib.DEFAULT_REPORT, "figures": ["spy"]}
    note = "Partial: 2 of 3 cells finished; not finished yet: c2."
    report_lib._tables("fake", [], spec, wd, tmp_path / "e", [note])
    report_lib._tables("fake", [], spec, wd, tmp_path / "e", [])
    assert seen == ["Partial: 2 of 3 cells finished", None]
    (wd / "expected.json").write_text("[1, 2]")
    with pytest.raises(CellError, match="expected.json does not list cells"):
        report(wd, tmp_path / "d")


def test_report_updates_the_readme_blocks_of_its_out_folder(tmp_path, capsys, monkeypatch):
    run_sweep(_cells(n=2), tmp_path / "w", cell_fn=_rows_cell, progress=False)
    readme = tmp_path / "README.md"
    kept = "<!-- results:quick/fake -->\nquick table\n<!-- /results:quick/fake -->\n"
    readme.write_text(f"<!-- results:t/fake -->\nstale\n<!-- /results:t/fake -->\n{kept}")
    code, _, err = _main(
        ["report", "w", "--out", "t", "--update-readme", "README.md"], capsys, monkeypatch, tmp_path
    )
    assert code == 0, err
    text = readme.read_text()
    assert "stale" not in text and "| c1 |" in text and text.endswith(kept)


def test_report_never_counts_a_seed_twice(tmp_path):
    from invariance.report import report

    run_sweep(_cells(), tmp_path / "p" / "a", cell_fn=_rows_cell, progress=False)
    cells = _cells()
    for c in cells:
        c["train"]["num_seeds"] = 3  # seeds 0, 1 again, and 2
    run_sweep(cells, tmp_path / "p" / "b", cell_fn=_rows_cell, progress=False)
    with pytest.raises(CellError, match="seed 0 of 'c0' is in two cells"):
        report(tmp_path / "p", tmp_path / "out")


def test_report_shows_a_protocol_difference_between_rows(tmp_path):
    from invariance.report import report

    wd = tmp_path / "w"
    cells = _cells(n=3, measure={"eval_examples": 64})
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)
    md_before = report(wd, tmp_path / "a")[0].read_text()
    assert "Protocols differ" not in md_before
    again = dict(cells[1], measure={"eval_examples": 32})  # a re-measured cell: its own hash
    run_sweep([again], wd, cell_fn=_rows_cell, progress=False, claim=False)
    md = report(wd, tmp_path / "b")[0].read_text()
    assert "| c1 |" in md and "| c1 [measure.eval_examples=32] |" in md
    assert "| c0 |" in md and "| c2 |" in md and "c0 [" not in md
    assert (
        "measure.eval_examples takes 32, 64; a row's label names its value where it is not 64" in md
    )


def test_override_of_a_key_the_sweep_sets_per_cell_is_refused():
    with pytest.raises(C.ConfigError, match="sets per cell .*label would no longer say"):
        C.resolve("pooling_table", profile="tiny", overrides={"train.model_options.pool": "avg"})
    with pytest.raises(C.ConfigError, match="sets per cell"):
        C.resolve("downsample_input", profile="tiny", overrides={"train.model": "small_cnn"})
    _, cells = C.resolve("pooling_table", profile="tiny", overrides={"train.num_epochs": 2})
    assert [c.cell_name for c in cells] == ["max", "max_blur (3)", "aps"]
    assert [c.train.model_options.pool for c in cells] == ["max", "max_blur", "aps"]


@pytest.mark.parametrize("damage", ["cut", "emptied", "deleted", "bad_done"])
def test_damaged_cell_is_refused_by_report_and_redone_by_sweep(tmp_path, damage):
    from invariance.report import report

    log = tmp_path / "log.txt"
    cells = _cells(log=log)
    for c in cells:
        c["train"]["num_seeds"] = 3
    wd = tmp_path / "w"
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)
    folder = cell_dir(wd, cells[1])
    rows = folder / "rows.jsonl"
    done = json.loads((folder / "done.json").read_text())
    assert done["rows"] == 3 and len(done["rows_sha256"]) == 64
    if damage == "cut":  # at a line boundary: still valid JSON lines, one fewer
        rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:2]))
    elif damage == "emptied":
        rows.write_text("")
    elif damage == "deleted":
        rows.unlink()
    else:
        (folder / "done.json").write_text("{not json")
    assert cell_state(folder)[0] == "damaged"
    with pytest.raises(
        CellError, match=str(folder / ("done.json" if damage == "bad_done" else ""))
    ):
        report(wd, tmp_path / "out")
    assert [f for _, f in pending_cells(cells, wd)] == [folder]
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)
    assert log.read_text().split() == ["c0", "c1", "c1"]  # only the damaged cell again
    assert len(read_rows(folder)) == 3
    report(wd, tmp_path / "out")


def test_invalid_json_in_rows_names_file_and_line(tmp_path, capsys, monkeypatch):
    cells = _cells(n=1, raw_rows='{"label": "c0", "protocol": "accuracy"}\n{oops\n')
    wd = tmp_path / "w"
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)
    code, _, err = _main(["report", str(wd)], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, "rows.jsonl line 2 is not valid JSON")


# ------------------------------------------------------------------------------------------
# Real tiny trainings: re-measurement and divergence.

_MINI = """
from invariance.experiment import train_measure_config


def get_config(profile="tiny"):
    c = train_measure_config("mini", "tiny")
    c.train.num_seeds = 1
    c.train.train_examples = 128
    c.train.log_every_steps = 1
    c.progress = False
    c.measure.protocols = [
        {"fn": "shift_consistency", "max_shift": 2, "mode": "circular", "pairs": "two_shifted"}
    ]
    return c


def get_sweep(profile="tiny"):
    return [
        {"cell_name": "ok"},
        {"cell_name": "diverges", "train.learning_rate": 1e30},
    ]
"""


@pytest.fixture(scope="module")
def mini_sweep(tmp_path_factory, child_env):
    """One healthy and one diverging tiny cell, swept by the real CLI in a subprocess."""
    tmp = tmp_path_factory.mktemp("mini")
    (tmp / "mini.py").write_text(_MINI)
    env = child_env(JAX_PLATFORMS="cpu", INVARIANCE_CACHE_DIR=str(tmp / "cache"))
    r = subprocess.run(
        [sys.executable, "-m", "invariance.cli", "sweep", "mini.py", "--profile", "tiny"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp,
    )
    return tmp, r


@pytest.mark.xdist_group("mini_sweep")  # one worker: one sweep for the three
def test_diverging_cell_is_recorded_and_the_others_go_on(mini_sweep, tmp_path):
    from invariance.report import report

    tmp, r = mini_sweep
    assert r.returncode == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    summary = [line for line in r.stdout.splitlines() if line.startswith("sweep: 1 of 2")]
    assert summary and "1 failed" in summary[0] and "diverges-" in summary[0], r.stdout
    wd = tmp / "runs" / "mini-tiny"
    (ok,) = wd.glob("cells/ok-*")
    (bad,) = wd.glob("cells/diverges-*")
    assert cell_state(ok)[0] == "finished" and cell_state(bad)[0] == "failed"
    failed = json.loads((bad / "failed.json").read_text())
    assert failed["seed"] == 0 and failed["step"] >= 1 and failed["loss"] in ("nan", "inf")
    assert not (bad / "done.json").exists()
    md = (Path(report(wd, tmp_path / "out")[0])).read_text()
    assert "| diverges (failed) |" in md and "Failed cell 'diverges'" in md
    assert "| ok |" in md


@pytest.mark.xdist_group("mini_sweep")
def test_remeasure_keeps_identities_and_the_report_shows_the_difference(
    mini_sweep, tmp_path, capsys, monkeypatch
):
    """``invariance measure`` in this process (the sweep above ran the real CLI in a
    subprocess; a second Python + JAX start per command would check nothing more)."""
    from invariance.report import report

    tmp, _ = mini_sweep
    wd = tmp / "runs" / "mini-tiny"
    (ok,) = wd.glob("cells/ok-*")
    before = {p: p.read_bytes() for p in ok.rglob("*") if p.is_file() and p.name != ".lock"}
    monkeypatch.setenv("INVARIANCE_CACHE_DIR", str(tmp / "cache"))
    code, _, err = _main(
        ["measure", str(ok), "--set", "measure.eval_examples=32"], capsys, monkeypatch, tmp
    )
    assert code == 0, err[-2000:]
    assert "Traceback" not in err
    after = {p: p.read_bytes() for p in ok.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # the measured cell is untouched
    new = [p for p in wd.glob("cells/ok-*") if p != ok]
    assert len(new) == 1 and cell_state(new[0])[0] == "finished"
    for folder in (ok, new[0]):  # every folder's hash is its config's
        cfg = json.loads((folder / "config.json").read_text())
        assert folder.name.endswith(C.config_hash(cfg))
    assert json.loads((new[0] / "config.json").read_text())["measure"]["eval_examples"] == 32
    hist = [json.loads(x) for x in (new[0] / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 1  # the trained checkpoint was reused, nothing retrained
    md = report(wd, tmp_path / "out")[0].read_text()
    # one cell each way: both rows name their value
    assert "| ok [measure.eval_examples=64] |" in md and "| ok [measure.eval_examples=32] |" in md
    assert "Protocols differ between rows: measure.eval_examples takes 32, 64;" in md
    # measure refuses to change what was trained
    code, _, err = _main(
        ["measure", str(ok), "--set", "train.num_epochs=5"], capsys, monkeypatch, tmp
    )
    _one_line_error(code, err, "measure changes only measure.* keys")


@pytest.mark.xdist_group("mini_sweep")
def test_failed_attempt_keeps_the_runs_config_json(mini_sweep, tmp_path, capsys, monkeypatch):
    """A diverging resume with changed hyperparameters leaves the run's config.json as it was.
    The run is the sweep's healthy cell (the same train config as ``train mini.py``), copied:
    the first ``train`` finds it finished and trains nothing."""
    import shutil

    tmp, _ = mini_sweep
    # The healthy cell, or its re-measured copy (the same trained run, hard-linked).
    ok = sorted((tmp / "runs" / "mini-tiny").glob("cells/ok-*"))[0]
    shutil.copytree(ok / "train", tmp_path / "run")
    (tmp_path / "mini.py").write_text(_MINI)
    wd = str(tmp_path / "run")
    code, _, err = _main(
        ["train", "mini.py", "--profile", "tiny", "--workdir", wd], capsys, monkeypatch, tmp_path
    )
    assert code == 0, err
    before = (tmp_path / "run" / "config.json").read_bytes()
    with pytest.warns(UserWarning, match="changed learning_rate"):
        code, _, err = _main(
            ["train", "mini.py", "--profile", "tiny", "--workdir", wd]
            + ["--set", "train.learning_rate=1e30", "--set", "train.num_epochs=2"],
            capsys,
            monkeypatch,
            tmp_path,
        )
    assert code == 1 and "training diverged" in err and "Traceback" not in err
    assert (tmp_path / "run" / "config.json").read_bytes() == before


# ------------------------------------------------------------------------------------------
# 3. One line and exit 2 for every error the user can fix; a library bug keeps its traceback.


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


_NAN_DECAY = """
from invariance.experiment import train_measure_config


def get_config(profile):
    c = train_measure_config("nan_decay", profile)
    c.train.weight_decay = float("nan")
    return c
"""


@pytest.mark.parametrize(
    "case,match",
    [
        ("workdir_is_file", "is a file"),
        ("workdir_under_file", "lies under the file"),
        ("out_is_file", "is a file"),
        ("syntax_error", "line 2: syntax error"),
        ("get_config_raises", "get_config('tiny') raised KeyError"),
        ("get_config_returns_dict", "returned dict, not an ml_collections.ConfigDict"),
        ("slurm_not_object", "--slurm must be a JSON object, got list"),
        ("zero_widths", "widths must be positive integers"),
        ("bool_epochs", "train.num_epochs must be an integer, got True"),
        ("nan_weight_decay", "train.weight_decay must be a finite number >= 0, got nan"),
        ("inf_momentum", "train.momentum must be a finite number >= 0, got inf"),
        ("bad_config_json", "config.json is not valid JSON"),
        ("processes_zero", "--processes must be >= 1"),
        ("reproduce_processes_zero", "--processes must be >= 1, got 0"),
    ],
)
def test_user_errors_are_one_line_exit_2(case, match, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("invariance.data.load", _no_data)
    sweep = ["sweep", "pooling_table", "--profile", "tiny"]
    (tmp_path / "afile").write_text("x")
    args = {
        "workdir_is_file": sweep + ["--workdir", "afile"],
        "workdir_under_file": sweep + ["--workdir", "afile/w"],
        "out_is_file": ["report", ".", "--out", "afile"],
        "syntax_error": ["sweep", _write(tmp_path / "syn.py", "x = 1\ndef get_config(:\n")],
        "get_config_raises": [
            "sweep",
            _write(tmp_path / "raises.py", "def get_config(p):\n    return {}['x']\n"),
            "--profile",
            "tiny",
        ],
        "get_config_returns_dict": [
            "sweep",
            _write(tmp_path / "returns.py", "def get_config(p):\n    return {'a': 1}\n"),
            "--profile",
            "tiny",
        ],
        "slurm_not_object": sweep + ["--slurm", "[1]"],
        "zero_widths": ["train", "pooling_table", "--profile", "tiny"]
        + ["--set", "train.model_options.widths=(0, 8)"],
        "bool_epochs": sweep + ["--set", "train.num_epochs=True"],
        "nan_weight_decay": ["sweep", _write(tmp_path / "nan.py", _NAN_DECAY), "--profile", "tiny"],
        "inf_momentum": sweep + ["--set", "train.momentum=1e999"],  # parses to inf
        "bad_config_json": [
            "measure",
            str(Path(_write(tmp_path / "w/cells/x-1/config.json", "{bad")).parent),
        ],
        "processes_zero": sweep + ["--processes", "0"],
        "reproduce_processes_zero": ["reproduce", "--profile", "tiny", "--processes", "0"],
    }[case]
    code, _, err = _main(args, capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, match)


def test_unwritable_workdir_is_one_line(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the permission check see what a user would
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, m: False if Path(p).resolve() == ro else real(p, m)
        )
    monkeypatch.setattr("invariance.data.load", _no_data)
    try:
        code, _, err = _main(
            ["sweep", "pooling_table", "--profile", "tiny", "--workdir", "ro/w"],
            capsys,
            monkeypatch,
            tmp_path,
        )
    finally:
        ro.chmod(0o755)
    _one_line_error(code, err, "ro is not writable")


def test_library_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    def buggy(args):
        raise ValueError("a bug inside the library")

    monkeypatch.setitem(cli.COMMANDS, "report", buggy)
    with pytest.raises(ValueError, match="a bug inside the library"):
        _main(["report", "."], capsys, monkeypatch, tmp_path)


# ------------------------------------------------------------------------------------------
# Issue 11 §3: every cell is validated before any data is loaded; --dry-run.


def _no_data(*args, **kwargs):
    raise AssertionError("data was loaded before every cell was validated")


_TWO_CELLS = """
from invariance.experiment import train_measure_config


def get_config(profile="tiny"):
    c = train_measure_config("two", "tiny")
    c.measure.protocols = [{{"fn": "shift_consistency", "max_shift": 2}}]
    return c


def get_sweep(profile="tiny"):
    return [{{"cell_name": "good"}}, {{"cell_name": "bad", {bad}}}]
"""


@pytest.mark.parametrize(
    "bad,match",
    [
        ('"train.model_options": {"pool": "median"}', "cell 'bad': unknown pooling kind 'median'"),
        (
            '"train.model_options": {"pool": "lp", "pool_options": {"q": 2}}',
            "got unknown option(s) q",
        ),
        ('"train.model": "vgg"', "unknown model 'vgg': valid are"),
        ('"train.optimizer": "adam"', "unknown optimizer 'adam'"),
        ('"train.schedule": "linear"', "unknown schedule 'linear'"),
        ('"train.dataset": "imagenet"', "unknown dataset 'imagenet'"),
        ('"measure.protocols": [{"fn": "nope"}]', "unknown protocol 'nope': valid are"),
        (
            '"measure.protocols": [{"fn": "shift_consistency", "max_shift": 40}]',
            "28x28 images",
        ),
        (
            '"measure.protocols": [{"fn": "shift_consistency", "radius": 2}]',
            "unknown option(s) ['radius']",
        ),
        (
            '"measure.protocols": [{"fn": "severity_curve", "transform": "blur", '
            '"severities": [1]}]',
            "transform",
        ),
    ],
)
def test_every_cell_is_validated_before_data_is_loaded(bad, match, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("invariance.data.load", _no_data)
    path = _write(tmp_path / "two.py", _TWO_CELLS.format(bad=bad))
    for command in (["sweep", path, "--profile", "tiny"], ["sweep", path, "--dry-run"]):
        code, _, err = _main(command, capsys, monkeypatch, tmp_path)
        _one_line_error(code, err, match)
    assert not (tmp_path / "runs").exists()


def test_train_and_reproduce_validate_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("invariance.data.load", _no_data)
    code, _, err = _main(
        ["train", "pooling_table", "--profile", "tiny", "--set", "train.num_epochs=0"],
        capsys,
        monkeypatch,
        tmp_path,
    )
    _one_line_error(code, err, "num_epochs must be >= 1")
    # reproduce checks the cells of every config before it runs the first one
    bad = '"measure.protocols": [{"fn": "shift_consistency", "max_shift": 28}]'
    path = _write(tmp_path / "two.py", _TWO_CELLS.format(bad=bad))
    monkeypatch.setattr(cli, "REPRODUCE_CONFIGS", ("seed_figures", path))
    code, _, err = _main(["reproduce", "--profile", "tiny"], capsys, monkeypatch, tmp_path)
    _one_line_error(code, err, "28x28 images")
    assert not (tmp_path / "runs" / "reproduce-tiny" / "seed_figures" / "cells").exists()


def test_dry_run_lists_cells_hashes_and_state(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("invariance.data.load", _no_data)
    code, out, err = _main(
        ["sweep", "pooling_table", "--profile", "tiny", "--dry-run", "--workdir", "w"],
        capsys,
        monkeypatch,
        tmp_path,
    )
    assert code == 0, err
    _, cells = C.resolve("pooling_table", profile="tiny")
    for c in cells:
        assert f"pending  {cell_dir('w', c).name}" in out
    assert "3 cells, 0 finished, 3 to run" in out
    # A finished cell shows as finished (a fake one: its rows verified by its done.json).
    folder = cell_dir(tmp_path / "w", cells[0])
    folder.mkdir(parents=True)
    (folder / "rows.jsonl").write_text("{}\n")
    import hashlib

    sha = hashlib.sha256(b"{}\n").hexdigest()
    (folder / "done.json").write_text(json.dumps({"rows": 1, "rows_sha256": sha}))
    code, out, _ = _main(
        ["sweep", "pooling_table", "--profile", "tiny", "--dry-run", "--workdir", "w"],
        capsys,
        monkeypatch,
        tmp_path,
    )
    assert f"finished {folder.name}" in out and "1 finished, 2 to run" in out
    code, out, _ = _main(
        ["reproduce", "--profile", "tiny", "--dry-run"], capsys, monkeypatch, tmp_path
    )
    assert code == 0 and "seed_figures" in out and "downsample_input" in out
    assert not (tmp_path / "runs" / "reproduce-tiny" / "pooling_table" / "cells").exists()


# ------------------------------------------------------------------------------------------
# 2. Locks and processes.

_HOLD = """
import time
from invariance.sweep import lock
with lock({folder!r}):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_process_gets_one_line_naming_the_holder(tmp_path, capsys, monkeypatch, child_env):
    folder = tmp_path / "w"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(folder=str(folder))],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match=f"in use by process {holder.pid} "):
            with lock(folder):
                pass
        with pytest.raises(LockError, match=str(holder.pid)):
            run_sweep(_cells(), folder, cell_fn=_rows_cell, progress=False)
        monkeypatch.setattr("invariance.data.load", _no_data)
        code, _, err = _main(
            ["sweep", "pooling_table", "--profile", "tiny", "--workdir", str(folder)],
            capsys,
            monkeypatch,
            tmp_path,
        )
        _one_line_error(code, err, f"in use by process {holder.pid}")
        code, _, err = _main(
            ["train", "pooling_table", "--profile", "tiny", "--workdir", str(folder)],
            capsys,
            monkeypatch,
            tmp_path,
        )
        _one_line_error(code, err, f"in use by process {holder.pid}")  # trainings lock too
    finally:
        holder.kill()
        holder.wait()
    # The holder died: its lock is stale and taken over.
    assert str(holder.pid) in (folder / ".lock").read_text()
    with lock(folder):
        assert (folder / ".lock").read_text().split()[0] == str(os.getpid())
    with lock(folder), lock(folder):  # re-entrant in one process
        pass


def test_cell_folders_are_locked_too(tmp_path, child_env):
    cells = _cells(n=1)
    folder = cell_dir(tmp_path / "w", cells[0])
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(folder=str(folder))],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match=str(holder.pid)):
            run_sweep(cells, tmp_path / "w", cell_fn=_rows_cell, progress=False)
    finally:
        holder.kill()
        holder.wait()


_POOL_PARENT = """
from invariance.sweep import run_sweep
from sleepy import sleepy_cell
cells = [{{"name": "s", "cell_name": f"c{{i}}", "pids": {pids!r}}} for i in range(6)]
run_sweep(cells, {wd!r}, cell_fn=sleepy_cell, processes=2, progress=False)
"""

_SLEEPY = """
import os, time
from pathlib import Path


def sleepy_cell(config, folder):
    Path(config["pids"], str(os.getpid())).write_text("x")
    time.sleep(30)
    (Path(folder) / "rows.jsonl").write_text("{}\\n")
"""


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_pool_workers_end_when_their_parent_dies(tmp_path, child_env):
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc")
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "sleepy.py").write_text(_SLEEPY)
    script = _POOL_PARENT.format(pids=str(pids), wd=str(tmp_path / "w"))
    parent = subprocess.Popen([sys.executable, "-c", script], env=child_env(tmp_path))
    try:
        deadline = time.time() + 60
        while len(list(pids.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 15
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    alive = [p for p in workers if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "workers outlived their parent"
    assert len(list(pids.iterdir())) == 2  # and no queued cell started after the parent died


# ------------------------------------------------------------------------------------------
# Issue 11 §4: the configs ship with the package.


def test_packages_list_is_complete():
    import tomllib

    from setuptools import find_packages

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set(find_packages(str(REPO), include=["invariance*"]))
    assert found <= listed, f"add {sorted(found - listed)} to pyproject.toml's packages"


def test_wheel_carries_the_configs_and_finds_them_outside_a_checkout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((REPO / name).read_bytes())
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.npy", "*.gz")
    shutil.copytree(REPO / "invariance", src / "invariance", ignore=ignore)
    shutil.copytree(REPO / "configs", src / "configs", ignore=ignore)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("invariance-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    shipped = sorted(p.name for p in (REPO / "configs").glob("*.py"))
    assert sorted(p.name for p in (site / "invariance" / "_configs").glob("*.py")) == shipped
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import invariance, invariance.config as C; "
        "print(invariance.__file__); print(C.find_config('pooling_table')); "
        "print(len(C.resolve('pooling_table', profile='full')[1]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=elsewhere,
        env={**env, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    pkg, config, n = r.stdout.split()
    assert Path(pkg).is_relative_to(site)
    assert Path(config) == site / "invariance" / "_configs" / "pooling_table.py"
    assert n == "12"  # the full profile: 11 pooling kinds and the pool-free row
    # results of a command go under the folder it runs in
    assert cli._default_workdir("reproduce", "quick", []) == Path("runs/reproduce-quick")


# ------------------------------------------------------------------------------------------
# Issue 13: a study is one file: its config declares its report.


def test_a_studys_config_declares_its_report_columns(tmp_path):
    from invariance.report import column, report, standard_columns

    log = tmp_path / "log.txt"
    cells = _cells(log=log, report={"builder": "table", "columns": [standard_columns("accuracy")]})
    wd = tmp_path / "w"
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)
    md = report(wd, tmp_path / "a")[0].read_text()
    assert "| pooling | test acc. % |" in md
    # A column added in the study's config: no cell reruns, the next report shows it.
    extra = column("acc. x1000", "accuracy", 1000, digits=0, protocol="accuracy")
    for c in cells:
        c["report"] = {"builder": "table", "columns": [standard_columns("accuracy"), extra]}
    assert cell_dir(wd, cells[0]).name.endswith(C.config_hash(cells[0]))
    run_sweep(cells, wd, cell_fn=_rows_cell, progress=False)
    assert log.read_text().split() == ["c0", "c1"]  # nothing ran again
    md = report(wd, tmp_path / "b")[0].read_text()
    assert (
        "| pooling | test acc. % | acc. x1000 |" in md
        and "| c0 | **50.5 ± 6.4** | **505 ± 64** |" in md
    )
    # An unknown builder or figure is a one-line error before anything runs.
    from invariance.experiment import validate_cell

    _, real = C.resolve("pooling_table", profile="tiny")
    bad = C.to_dict(real[0])
    bad["report"]["figures"] = ["histogram"]
    with pytest.raises(C.ConfigError, match="unknown report figure 'histogram': valid are"):
        validate_cell(bad)
