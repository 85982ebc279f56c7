"""invariance reproduce keeps each study's finished cells (light files only) under OUT/STUDY/;
a rerun restores them instead of recomputing, and the report regenerates byte-identically."""

import json
import shutil
from pathlib import Path

import pytest

from invariance import cli, experiment, store

STUDY = "downsample_input"  # two tiny cells: the cheapest study that trains

# One xdist worker for the module and test_cli's end-to-end test: they share one tiny reproduce.
pytestmark = pytest.mark.xdist_group("tiny_reproduce")


@pytest.fixture(scope="module")
def reproduced(tiny_reproduce):
    """The shared tiny reproduce (conftest): its stores in ``root/results``, its workdir in
    ``root/runs``; this module's study is one of its three."""
    root, proc, _ = tiny_reproduce
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _stored_cells(root: Path) -> list[Path]:
    return sorted((root / "results" / STUDY / "cells").iterdir())


def test_finished_cells_are_stored_without_checkpoints(reproduced):
    cells = _stored_cells(reproduced)
    assert len(cells) == 2
    expected = json.loads((reproduced / "results" / STUDY / "expected.json").read_text())
    assert sorted(e["folder"] for e in expected["cells"]) == [c.name for c in cells]
    for cell in cells:
        names = {p.relative_to(cell).as_posix() for p in cell.rglob("*") if p.is_file()}
        assert {"config.json", "rows.jsonl", "done.json", "provenance.json"} <= names
        assert "train/metrics.jsonl" in names
        assert not any("checkpoint" in n or n.endswith(".lock") for n in names)
        assert (cell / "rows.jsonl").read_bytes() == (
            reproduced / "runs" / STUDY / "cells" / cell.name / "rows.jsonl"
        ).read_bytes()


def test_the_downsampling_tables_max_row_is_the_pooling_tables_max_model(reproduced):
    """Both studies ask for the same training (tiny max pooling): one set of models serves
    both tables, whether the second cell took the first one's checkpoint or (had it started
    before the first finished) trained the same models itself."""
    runs = reproduced / "runs"
    (pool,) = (runs / "pooling_table" / "cells").glob("max-*")
    (down,) = (runs / "downsample_input" / "cells").glob("max_pool*")
    shared = down / "train" / "shared_training.json"
    if shared.exists():
        trained_in = json.loads(shared.read_text())["trained_in"]
        assert (down / "train" / trained_in).resolve() == (pool / "train").resolve()
        assert (
            (reproduced / "results" / STUDY / "cells" / down.name / "train")
            .joinpath("shared_training.json")
            .is_file()
        )  # the store keeps where the models came from
    rows = [
        {r["seed_index"]: r["test_accuracy"] for r in map(json.loads, f.open())}
        for f in (pool / "rows.jsonl", down / "rows.jsonl")
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_a_rerun_restores_the_stored_cells_instead_of_computing_them(
    reproduced, tmp_path, monkeypatch, capsys
):
    """A fresh machine with the committed store only (no workdir): nothing is recomputed."""
    shutil.copytree(reproduced / "results", tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "REPRODUCE_CONFIGS", (STUDY,))

    def must_not_run(config, folder):
        raise AssertionError(f"cell {folder} was recomputed")

    monkeypatch.setattr(experiment, "run_cell", must_not_run)
    args = ["reproduce", "--profile", "tiny", "--set", "progress=False"]
    assert cli.main([*args, "--workdir", "runs", "--out", "results"]) == 0
    assert "2 cells restored" in capsys.readouterr().out
    table = "results/downsample_input.md"
    assert (tmp_path / table).read_bytes() == (reproduced / table).read_bytes()


def test_a_damaged_or_foreign_stored_cell_is_not_restored(reproduced, tmp_path):
    shutil.copytree(reproduced / "results", tmp_path / "results")
    cells_cfg = [json.loads((c / "config.json").read_text()) for c in _stored_cells(tmp_path)]
    kept = tmp_path / "results" / STUDY
    bad, other = _stored_cells(tmp_path)
    rows = bad / "rows.jsonl"
    rows.write_text(rows.read_text().replace('"accuracy": 0.', '"accuracy": 1.', 1))
    cfg = json.loads((other / "config.json").read_text())
    cfg["train"]["num_epochs"] = 99  # a stored cell whose config is not the cell's
    (other / "config.json").write_text(json.dumps(cfg))
    assert store.restore(cells_cfg, kept, tmp_path / "runs" / STUDY) == []


def test_a_store_of_another_config_is_refused_in_one_line(reproduced, tmp_path, capsys):
    shutil.copytree(reproduced / "results", tmp_path / "results")
    args = ["reproduce", "--profile", "tiny", "--set", "progress=False"]
    args += ["--set", "train.num_epochs=2", "--workdir", str(tmp_path / "runs")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "REPRODUCE_CONFIGS", (STUDY,))
        rc = cli.main([*args, "--out", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "another resolved config" in err and "num_epochs" in err


def test_the_report_of_a_copied_store_is_byte_identical(reproduced, tmp_path, monkeypatch):
    """What results/full promises: `invariance report` on a copy of the committed store
    writes the committed tables and figures byte for byte."""
    shutil.copytree(reproduced / "results", tmp_path / "results")
    made = sorted(p for p in (reproduced / "results").iterdir() if p.is_file())
    for p in made:
        (tmp_path / "results" / p.name).unlink()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "results", "--out", "results"]) == 0
    assert made, "the reproduce wrote no tables"
    for p in made:
        assert (tmp_path / "results" / p.name).read_bytes() == p.read_bytes(), p.name


REPO = Path(__file__).resolve().parents[1]
STORES = sorted(p.name for p in (REPO / "results").iterdir() if any(p.glob("*/cells")))


@pytest.mark.parametrize("profile", STORES or ["(no committed store)"])
def test_committed_results_regenerate_byte_identically(profile, tmp_path, monkeypatch):
    """Every committed table and figure of a committed store (results/full) is what
    `invariance report results/PROFILE --out results/PROFILE` makes from its rows."""
    if not STORES:
        pytest.skip("results/ holds no store yet")
    src = REPO / "results" / profile
    made = sorted(
        p for p in src.iterdir() if p.is_file() and p.suffix in {".md", ".csv", ".tex", ".png"}
    )
    if not made:
        pytest.skip(f"results/{profile} holds cells but no tables yet")
    shutil.copytree(src, tmp_path / "results" / profile)
    for p in made:
        (tmp_path / "results" / profile / p.name).unlink()
    monkeypatch.chdir(tmp_path)
    out = f"results/{profile}"
    assert cli.main(["report", out, "--out", out]) == 0
    for p in made:
        assert (tmp_path / out / p.name).read_bytes() == p.read_bytes(), p.name
