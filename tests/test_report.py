"""Paper-style tables and the report's figures (issue 14 §2), from rows built by hand."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from invariance import figures as F
from invariance import report as R
from invariance.metrics import mean_ci

NAME = "study"


def _acc_rows(label, accs, index, params=1000, seconds=6.0, **extra):
    """One ``accuracy`` row per seed, as train_measure writes them."""
    return [
        {
            "label": label,
            "cell_index": index,
            "protocol": "accuracy",
            "accuracy": a,
            "seed_index": s,
            "num_params": params,
            "train_seconds": seconds,
            **extra,
        }
        for s, a in enumerate(accs)
    ]


def _table(tmp_path, rows, columns, figures=()):
    spec = {"builder": "table", "columns": columns, "figures": list(figures)}
    R.validate_report(spec)
    out = tmp_path / "out"
    paths = R.BUILDERS["table"](NAME, rows, spec, tmp_path, out, [], [])
    return {p.suffix: p.read_text() for p in paths if p.suffix in (".md", ".csv", ".tex")}


def _md_cells(md, label):
    (line,) = [ln for ln in md.splitlines() if ln.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_best_value_and_every_overlapping_value_are_bold_in_md_and_tex(tmp_path):
    rows = (
        _acc_rows("a", [0.80, 0.81, 0.79], 0)  # 80.0 ± 2.5: the best
        + _acc_rows("b", [0.78, 0.78, 0.77], 1)  # 77.7 ± 1.4: CIs overlap (2.3 <= 3.9)
        + _acc_rows("c", [0.70, 0.70, 0.71], 2)  # 70.3 ± 1.4: they do not
    )
    flips = {"a": [0.30, 0.29, 0.30], "b": [0.25, 0.25, 0.26], "c": [0.20, 0.21, 0.19]}
    for r in rows:  # a rate that is better low: c is the best there, nothing overlaps it
        r["flip"] = flips[r["label"]][r["seed_index"]]
    flip = R.column("flip %", "flip", 100, better="lower", protocol="accuracy")
    cols = [R.standard_columns("accuracy"), flip, R.standard_columns("params")]
    t = _table(tmp_path, rows, cols)
    md, tex = t[".md"], t[".tex"]
    m, h = mean_ci(np.array([80.0, 81.0, 79.0]))
    assert _md_cells(md, "a")[:2] == [f"**{m:.1f} ± {h:.1f}**", "29.7 ± 1.4"]
    assert _md_cells(md, "b")[:2] == ["**77.7 ± 1.4**", "25.3 ± 1.4"]
    assert _md_cells(md, "c")[:2] == ["70.3 ± 1.4", "**20.0 ± 2.5**"]
    # Parameters describe the network, they do not rank it: never bold, never "± 0".
    assert [_md_cells(md, k)[2] for k in "abc"] == ["1,000"] * 3
    assert "In bold: each column's best value" in md and "lower is better for 'flip %'" in md
    assert r"a & \textbf{80.0 $\pm$ 2.5} & 29.7 $\pm$ 1.4 & 1,000 \\" in tex
    assert r"c & 70.3 $\pm$ 1.4 & \textbf{20.0 $\pm$ 2.5} & 1,000 \\" in tex
    # The CSV keeps the numbers, unformatted.
    got = list(csv.reader(t[".csv"].splitlines()))
    assert got[0][:4] == ["label", "n_seeds", "test acc. %", "test acc. % ci95"]
    assert got[1][:4] == ["a", "3", "80", f"{h:.6g}"]


def test_bold_cells_rules():
    cols = [R.column("x", "x"), R.column("y", "y", better="lower"), R.column("z", "z", better=None)]
    summary = [
        {"label": "p", "x": (10.0, 1.0), "y": (5.0, float("nan")), "z": (1.0, 0.1)},
        {"label": "q", "x": (8.0, 1.0), "y": (5.0, float("nan")), "z": (9.0, 0.1)},  # x: 2 <= 2
        {"label": "r", "x": (7.9, 1.0), "y": (5.5, 0.4), "z": None},  # x: 2.1 > 2; y: 0.5 > 0.4
        {"label": "s (failed)", "x": None, "y": None, "z": None},
    ]
    assert R.bold_cells(summary, cols) == {("p", "x"), ("q", "x"), ("p", "y"), ("q", "y")}
    # A spec stored before columns declared a direction: no guess, nothing in bold.
    old = [{k: v for k, v in c.items() if k not in ("better", "per_seed")} for c in cols]
    assert R.bold_cells(summary, old) == set()
    R.validate_report({"builder": "table", "columns": old})
    with pytest.raises(ValueError, match="better must be one of"):
        R.column("x", "x", better="best")
    bad = {"builder": "table", "columns": [dict(cols[0], better="max")]}
    with pytest.raises(ValueError, match=r"report column 'x': better must be one of"):
        R.validate_report(bad)


def test_quantities_that_are_not_per_seed_have_no_plus_minus_zero(tmp_path):
    rows = _acc_rows("a", [0.8, 0.7], 0, params=206922, seconds=6.2)
    # Two cells of one label that took different times: the spread is real, it is shown.
    rows += _acc_rows("b", [0.8], 1, seconds=10.0) + [
        dict(r, seed_index=1) for r in _acc_rows("b", [0.7], 1, seconds=12.0)
    ]
    cols = [R.standard_columns(k) for k in ("accuracy", "params", "train_seconds")]
    t = _table(tmp_path, rows, cols)
    assert _md_cells(t[".md"], "a") == ["**75.0 ± 63.5**", "206,922", "6"]
    assert _md_cells(t[".md"], "b") == ["**75.0 ± 63.5**", "1,000", "11 ± 13"]
    assert r"a & \textbf{75.0 $\pm$ 63.5} & 206,922 & 6 \\" in t[".tex"]
    got = {r[0]: r for r in csv.reader(t[".csv"].splitlines())}
    assert got["a"][4:] == ["206922", "nan", "6.2", "nan"]  # no CI, not a CI of 0
    # A per-seed column keeps its CI even when the seeds agree (APS: 100.0 ± 0.0).
    cons = R.column("c %", "accuracy", 100, protocol="accuracy")
    t = _table(tmp_path, _acc_rows("a", [1.0, 1.0], 0), [cons])
    assert _md_cells(t[".md"], "a") == ["**100.0 ± 0.0**"]


def test_tex_escapes_every_special_character():
    assert R.tex_escape("a_b & 50% #1 ±3 {x} ~y^2 $5 \\ <|> – ×") == (
        r"a\_b \& 50\% \#1 $\pm$3 \{x\} \textasciitilde{}y\textasciicircum{}2 \$5 "
        r"\textbackslash{} \textless{}\textbar{}\textgreater{} -- $\times$"
    )


def _hostile_table(tmp_path):
    rows = _acc_rows("max_blur (3) & #1 [measure.x=50%]", [0.8, 0.7], 0)
    rows += _acc_rows("b", [0.6, 0.7], 1)
    cols = [
        R.column("acc. ±3 px % & #_~^", "accuracy", 100, protocol="accuracy"),
        R.column("missing {x}", "nothing", protocol="accuracy"),
        R.standard_columns("params"),
    ]
    return _table(tmp_path, rows, cols)[".tex"]


def test_table_tex_holds_only_escaped_ascii(tmp_path):
    tex = _hostile_table(tmp_path)
    assert tex.isascii(), tex
    body = [ln for ln in tex.splitlines() if ln.endswith("\\\\")]
    assert len(body) == 3
    for line in body:
        plain = line.replace("\\&", "").replace("\\%", "").replace("\\#", "").replace("\\_", "")
        assert plain.count("&") == 3, line  # 4 columns: only the separators are bare
        assert not any(ch in plain for ch in "%#_~^"), line
    assert r"\textbf{75.0 $\pm$ 63.5}" in tex and " -- " in tex  # a missing value


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_table_tex_compiles_with_pdflatex(tmp_path):
    kpse = shutil.which("kpsewhich")
    if kpse is None or not subprocess.run([kpse, "booktabs.sty"], capture_output=True).stdout:
        pytest.skip("booktabs.sty (the tables' rules) is not installed")
    tex = _hostile_table(tmp_path)
    doc = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
    (tmp_path / "doc.tex").write_text(doc + tex + "\n\\end{document}\n")
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    assert "Missing character" not in (tmp_path / "doc.log").read_text()
    assert (tmp_path / "doc.pdf").stat().st_size > 0


# ------------------------------------------------------------------------------------------
# Figures.


def _study_rows(shift=0.0):
    """Two kinds, three seeds: accuracy, two consistency protocols, severity curves (two
    severities of random_mask, one of a grid line mask) and a sensitivity profile."""
    rows = []
    for k, (label, acc) in enumerate([("max", 0.85), ("max_blur (3)", 0.80)]):
        for s in range(3):
            base = {"label": label, "cell_index": k, "seed_index": s, "prov_git_commit": "abc1234"}
            rows.append({**base, "protocol": "accuracy", "accuracy": acc + 0.01 * s})
            for mode, c in (("circular", 0.6), ("constant", 0.55)):
                rows.append(
                    {**base, "protocol": "shift_consistency", "mode": mode, "max_shift": 3,
                     "pairs": "two_shifted", "consistency": c + 0.1 * k + 0.02 * s + shift}
                )  # fmt: skip
            for sev in (0.1, 0.3):
                rows.append(
                    {**base, "protocol": "severity_curve", "transform": "random_mask",
                     "severity": sev, "fill": 0.0, "mode": None, "accuracy": acc - sev + 0.01 * s,
                     "consistency": 1 - sev - 0.01 * s - shift}
                )  # fmt: skip
            rows.append(
                {**base, "protocol": "severity_curve", "transform": "line_mask", "severity": 4,
                 "orientation": "grid", "vary": "period", "fill": 0.0, "mode": None,
                 "accuracy": acc / 2, "consistency": 0.5 + 0.01 * s}
            )  # fmt: skip
            for ring in range(4):
                rows.append(
                    {**base, "protocol": "translation_sensitivity", "aggregate": "ring",
                     "ring": ring, "layer": "logits", "mode": "circular",
                     "relative_l2": ring * (0.1 + 0.05 * k) + 0.01 * s}
                )  # fmt: skip
    return rows


def test_accuracy_consistency_points_are_means_and_cis_over_seeds():
    pts = F.accuracy_consistency_points(_study_rows())
    assert list(pts) == ["circular, ±3 px", "constant, ±3 px"]
    assert list(pts["circular, ±3 px"]) == ["max", "max_blur (3)"]
    (am, ah), (cm, ch) = pts["circular, ±3 px"]["max_blur (3)"]
    want_a = mean_ci(np.array([80.0, 81.0, 82.0]))
    want_c = mean_ci(np.array([70.0, 72.0, 74.0]))
    np.testing.assert_allclose([am, ah, cm, ch], [*want_a, *want_c])


def test_severity_bands_per_transform_metric_and_label():
    bands = F.severity_curve_bands(_study_rows())
    assert list(bands) == ["line_mask (grid)", "random_mask"]
    acc = bands["random_mask"]["accuracy"]["max"]
    assert list(acc) == [0.1, 0.3]
    np.testing.assert_allclose(acc[0.3], mean_ci(np.array([55.0, 56.0, 57.0])))
    cons = bands["line_mask (grid)"]["consistency"]["max_blur (3)"]
    np.testing.assert_allclose(cons[4.0], mean_ci(np.array([50.0, 51.0, 52.0])))
    # Options that differ between rows of one transform are separate curves, never averaged.
    rows = _study_rows() + [
        dict(r, fill="max", accuracy=0.0)
        for r in _study_rows()
        if r.get("transform") == "random_mask"
    ]
    assert sorted(F.severity_curve_bands(rows)) == [
        "line_mask (grid)",
        "random_mask (fill=0.0)",
        "random_mask (fill=max)",
    ]


def test_sensitivity_profile_bands_over_seeds():
    bands = F.sensitivity_profile_bands(_study_rows())
    assert list(bands) == [""]
    m, h = bands[""]["max_blur (3)"][2]
    np.testing.assert_allclose([m, h], mean_ci(np.array([0.3, 0.31, 0.32])))
    # Two maps (a layer and the logits) are two panels, not one averaged line.
    rows = _study_rows() + [dict(r, layer="conv2") for r in _study_rows() if "ring" in r]
    assert sorted(F.sensitivity_profile_bands(rows)) == [
        "conv2, circular shifts",
        "logits, circular shifts",
    ]


@pytest.mark.parametrize(
    ("figure", "file"),
    [
        ("accuracy_consistency", "study_accuracy_consistency.png"),
        ("sensitivity_profile", "study_sensitivity.png"),
        ("severity_curves", "study_severity.png"),
    ],
)
def test_figures_are_byte_identical_for_the_same_rows(tmp_path, figure, file):
    def draw(folder, rows):
        (path,) = R.FIGURES[figure](NAME, rows, tmp_path / folder)
        assert path.name == file
        return path.read_bytes()

    a, b = draw("a", _study_rows()), draw("b", _study_rows())
    assert a[:8] == b"\x89PNG\r\n\x1a\n" and a == b
    assert b"matplotlib" not in a.lower()  # no software version in the metadata ...
    assert b"config configs/study.py; commit abc1234; jax unknown" in a  # ... but the rows'
    from PIL import Image

    assert Image.open(tmp_path / "a" / file).text["Description"].startswith("config configs/")
    # Different numbers give a different picture (the test can fail).
    changed = [
        dict(r, relative_l2=r["relative_l2"] * 2) if "ring" in r else r for r in _study_rows(0.2)
    ]
    assert draw("c", changed) != a
    # Rows without what a figure plots: nothing is drawn.
    assert (
        R.FIGURES[figure](NAME, [r for r in _study_rows() if r["protocol"] == "x"], tmp_path) == []
    )


def test_pooling_table_declares_the_new_figures_and_directions():
    from invariance import config as C

    _, cells = C.resolve("pooling_table", profile="tiny")
    spec = C.to_dict(cells[0])["report"]
    R.validate_report(spec)
    assert spec["figures"] == ["sensitivity_profile", "accuracy_consistency", "severity_curves"]
    better = {c["header"]: c["better"] for c in spec["columns"]}
    assert better["1-px P(top-1 change) %"] == "lower" and better["test acc. %"] == "higher"
    assert better["params"] is None and better["train s"] is None
    assert json.loads(json.dumps(spec)) == spec  # stored in each cell's config.json


def test_report_writes_tables_and_figures_byte_identically(tmp_path):
    from invariance.sweep import run_sweep

    spec = {
        "builder": "table",
        "columns": [R.standard_columns("accuracy"), R.consistency_column("circular", "c %")],
        "figures": ["accuracy_consistency", "severity_curves", "sensitivity_profile"],
    }

    def cell_fn(config, folder):
        rows = [r for r in _study_rows() if r["label"] == config["cell_name"]]
        text = "".join(json.dumps({**r, "experiment": NAME}) + "\n" for r in rows)
        (Path(folder) / "rows.jsonl").write_text(text)

    cells = [
        {"name": NAME, "experiment": NAME, "cell_name": k, "cell_index": i,
         "sweep_keys": ["cell_name"], "train": {"seed": 0}, "report": spec}
        for i, k in enumerate(["max", "max_blur (3)"])
    ]  # fmt: skip
    run_sweep(cells, tmp_path / "w", cell_fn=cell_fn, progress=False)
    a = R.report(tmp_path / "w", tmp_path / "a")
    b = R.report(tmp_path / "w", tmp_path / "b")
    assert [p.name for p in a] == [
        "study.md", "study.csv", "study.tex", "study_accuracy_consistency.png",
        "study_severity.png", "study_sensitivity.png",
    ]  # fmt: skip
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert "| max | **86.0 ± 2.5** | 62.0 ± 5.0 |" in a[0].read_text()
