"""The `invariance` command, sweeps and reports, end to end on synthetic data (profile tiny)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from invariance import config as C
from invariance.report import report
from invariance.sweep import cell_dir, run_sweep


def _cli(args, tmp_path, timeout=600, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", INVARIANCE_CACHE_DIR=str(tmp_path / "cache"))
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "invariance.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


# ------------------------------------------------------------------------------------------
# Configs.


def test_configs_resolve_and_hash_identity():
    for name in (
        "pooling_table",
        "seed_figures",
        "downsample_input",
        "sensitivity_maps",
        "cifar10_blurpool",
        "circular_backbone",
        "augmentation",
    ):
        for profile in ("tiny", "quick", "full"):
            base, cells = C.resolve(name, profile=profile)
            hashes = {C.config_hash(c) for c in cells}
            assert len(hashes) == len(cells)  # every cell is its own identity
    _, cells = C.resolve("pooling_table", profile="quick")
    assert len(cells) == 11  # the pool-free row is the full profile's alone
    _, full = C.resolve("pooling_table", profile="full")
    assert len(full) == 12
    a = C.to_dict(cells[0])
    b = dict(a, workdir="/elsewhere", progress=False)
    assert C.config_hash(a) == C.config_hash(b)  # where it runs is not what it computes
    assert C.config_hash(dict(a, name="other")) != C.config_hash(a)


def test_overrides_and_their_errors():
    base, _ = C.resolve(
        "pooling_table",
        profile="tiny",
        overrides=C.parse_set(["train.num_epochs=3", "train.optimizer=sgd"]),
    )
    assert base.train.num_epochs == 3 and base.train.optimizer == "sgd"
    with pytest.raises(C.ConfigError, match="unknown config key 'train.num_epoch': valid keys"):
        C.resolve("pooling_table", profile="tiny", overrides={"train.num_epoch": 1})
    with pytest.raises(C.ConfigError, match="no config 'nope': valid are .*pooling_table"):
        C.find_config("nope")
    with pytest.raises(C.ConfigError, match="needs key=value"):
        C.parse_set(["epochs"])
    with pytest.raises(C.ConfigError, match="unknown profile"):
        C.resolve("pooling_table", profile="huge")


# ------------------------------------------------------------------------------------------
# Sweeps: resumable, every cell exactly once.


def _counting_cell(config, folder):
    """A cell that logs each run, and dies on the cell named in $DIE_AT (once)."""
    log = Path(config["log"])
    with log.open("a") as f:
        f.write(config["cell_name"] + "\n")
    marker = Path(folder) / "died"
    if os.environ.get("DIE_AT") == config["cell_name"] and not marker.exists():
        marker.write_text("x")
        raise KeyboardInterrupt  # stands in for a kill in the middle of the cell
    (Path(folder) / "rows.jsonl").write_text(json.dumps({"label": config["cell_name"]}) + "\n")


def test_killed_sweep_reruns_only_unfinished_cells(tmp_path, monkeypatch):
    log = tmp_path / "log.txt"
    cells = [{"name": "t", "cell_name": f"c{i}", "log": str(log)} for i in range(4)]
    monkeypatch.setenv("DIE_AT", "c2")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cells, tmp_path / "w", cell_fn=_counting_cell, progress=False)
    assert log.read_text().split() == ["c0", "c1", "c2"]
    run_sweep(cells, tmp_path / "w", cell_fn=_counting_cell, progress=False)
    run_sweep(cells, tmp_path / "w", cell_fn=_counting_cell, progress=False)  # nothing left
    runs = log.read_text().split()
    assert runs == ["c0", "c1", "c2", "c2", "c3"]  # only the cell in flight ran twice
    for c in cells:
        assert (cell_dir(tmp_path / "w", c) / "done.json").is_file()


def test_sweep_bad_backend():
    with pytest.raises(ValueError, match="unknown backend 'ray': valid are local, submitit"):
        run_sweep([{"name": "x"}], "/tmp/unused", cell_fn=_counting_cell, backend="ray")


def test_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    log = tmp_path / "log.txt"
    cells = [{"name": "t", "cell_name": f"s{i}", "log": str(log)} for i in range(2)]
    run_sweep(
        cells,
        tmp_path / "w",
        cell_fn=_counting_cell,
        backend="submitit",
        cluster="debug",
        progress=False,
    )
    assert sorted(log.read_text().split()) == ["s0", "s1"]
    assert all((cell_dir(tmp_path / "w", c) / "done.json").is_file() for c in cells)


# ------------------------------------------------------------------------------------------
# The CLI's user errors (in process) and the real CLI in a subprocess.


@pytest.mark.parametrize(
    "args,match",
    [
        (["sweep", "nope", "--profile", "tiny"], "no config 'nope': valid are"),
        (
            ["sweep", "pooling_table", "--profile", "tiny", "--set", "train.epochs=2"],
            "unknown config key 'train.epochs'",
        ),
        (
            [
                "train",
                "pooling_table",
                "--profile",
                "tiny",
                "--set",
                "train.model_options={'pool': 'median'}",
            ],
            "unknown pooling kind 'median'",
        ),
        (
            ["train", "pooling_table", "--profile", "tiny", "--set", "train.optimizer=adam"],
            "optimizer",
        ),
        (
            ["train", "pooling_table", "--profile", "tiny", "--set", "train.dataset=mnist"],
            "INVARIANCE_DATA_DIR",
        ),
        (["report", "does-not-exist"], "no such folder"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, match, capsys, monkeypatch):
    """The CLI in this process (a fresh Python + JAX per case cost ~5 s each); the process's
    own exit status is the next test's."""
    from invariance import cli

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("INVARIANCE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("INVARIANCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_enable_compilation_cache", lambda: None)
    monkeypatch.chdir(tmp_path)
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("invariance: error: "), err
    assert match in lines[0]


def test_a_user_error_exits_the_real_process_with_status_2(tmp_path):
    """``python -m invariance.cli`` in a subprocess: status 2, the error as its last stderr
    line, no traceback (one case; the others run in process above)."""
    (tmp_path / "empty").mkdir()
    r = _cli(
        ["train", "pooling_table", "--profile", "tiny", "--set", "train.dataset=mnist"],
        tmp_path,
        timeout=300,
        env_extra={"INVARIANCE_DATA_DIR": str(tmp_path / "empty")},
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("invariance: error: ")
    assert "INVARIANCE_DATA_DIR" in last


@pytest.mark.slow
@pytest.mark.xdist_group("tiny_reproduce")  # the reproduce is shared with test_store
def test_reproduce_tiny_end_to_end_and_report_is_byte_identical(
    tiny_reproduce, tmp_path, capsys, monkeypatch
):
    """The real CLI trains and reports the tiny study, its studies' cells in one queue of two
    pinned worker processes (the conftest fixture); the rerun (in this process: it trains
    nothing, so a second Python + JAX start would check nothing more) finds every cell
    finished, and its tables and report's are byte-identical."""
    from invariance import cli

    root, r, seconds = tiny_reproduce
    assert r.returncode == 0, r.stderr[-3000:]
    out = root / "results"
    for name in ("pooling_table", "downsample_input"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{name}.{ext}").is_file()
    assert (out / "seed_figures.md").is_file() and (out / "seed_figures_examples.png").is_file()
    assert (out / "pooling_table_sensitivity.png").is_file()
    table = (out / "pooling_table.md").read_text()
    for label in ("max", "max_blur (3)", "aps"):
        assert f"| {label} |" in table
    assert "commit" in table and "jax" in table and "Partial" not in table
    # A rerun finds every cell finished: nothing trains again.
    shutil.copytree(root / "runs", tmp_path / "runs")
    monkeypatch.setenv("INVARIANCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_enable_compilation_cache", lambda: None)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["reproduce", "--profile", "tiny", "--workdir", "runs", "--out", "out2"])
    out2 = capsys.readouterr()
    assert code == 0 and out2.out.count(", 0 to run") == 3, out2.err[-3000:]  # all 3 studies
    for ext in ("md", "csv", "tex"):
        a = (out / f"pooling_table.{ext}").read_bytes()
        assert a == (tmp_path / "out2" / f"pooling_table.{ext}").read_bytes()
    # report regenerates byte-identical tables from the same rows.
    report(tmp_path / "runs", tmp_path / "out3")
    assert (out / "seed_figures.md").read_bytes() == (
        tmp_path / "out3" / "seed_figures.md"
    ).read_bytes()
    assert seconds < 900


def test_update_readme_replaces_marked_blocks(tmp_path):
    from invariance.cli import UserError, update_readme

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "pooling_table.md").write_text("# pooling_table\n\n| a |\n| --- |\n| 1 |\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- results:pooling_table -->\nold\n<!-- /results:pooling_table -->\nend\n"
    )
    update_readme(readme, tmp_path / "t")
    text = readme.read_text()
    assert "old" not in text and "| 1 |" in text and "# pooling_table" not in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    update_readme(readme, tmp_path / "t")
    assert readme.read_text() == text  # idempotent
    readme.write_text("<!-- results:missing -->\n<!-- /results:missing -->\n")
    with pytest.raises(UserError, match="results:missing"):
        update_readme(readme, tmp_path / "t")
    # A folder's own blocks (results:DIR/NAME) are filled; another folder's are kept.
    both = (
        "<!-- results:t/pooling_table -->\nold t\n<!-- /results:t/pooling_table -->\n"
        "<!-- results:quick/pooling_table -->\nold quick\n<!-- /results:quick/pooling_table -->\n"
    )
    readme.write_text(both)
    update_readme(readme, tmp_path / "t")
    assert readme.read_text() == both.replace("old t", "| a |\n| --- |\n| 1 |")
    readme.write_text(
        "<!-- results:quick/pooling_table -->\n<!-- /results:quick/pooling_table -->\n"
    )
    with pytest.raises(UserError, match="no results block for .*results:t/NAME"):
        update_readme(readme, tmp_path / "t")
