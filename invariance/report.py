"""Tables (Markdown, CSV, LaTeX) and figures (PNG) from a sweep's rows — never typed by hand.

``report(run_dir, out_dir)`` reads every finished cell's ``rows.jsonl`` under ``run_dir`` and
writes, per experiment found there, ``<experiment>.md`` / ``.csv`` / ``.tex`` and figures. The
same rows always give byte-identical tables: nothing in them depends on when the report ran;
each is stamped with the config, git commit, jax version and device recorded in the rows.

What a table may aggregate (see docs/sweeps.md): every cell's rows are verified against its
``done.json`` (a damaged cell is refused, naming the file); the cells of one table must share
their study part (:func:`invariance.config.study_part`: everything but the cell's own sweep
keys and its seeds), else the report refuses to put them together; cells that differ only in
``measure.*`` (a re-measured cell) are separate rows whose label names the difference, with a
note under the table; one seed is never counted twice; failed cells are marked.

Paper-style tables: in each column, the best mean (higher is better unless the column declares
``better="lower"``, e.g. a flip rate; ``better=None``, or a column stored without the key:
nothing in bold) and every value whose 95% CI overlaps the best one's are in bold, ``**x ± y**``
in Markdown and ``\\textbf{}`` in LaTeX; a quantity that is not measured per seed
(``per_seed=False``: parameters, the training time the seeds of a cell share) has no "± 0".
The LaTeX ``tabular`` needs ``booktabs`` and compiles with pdflatex (every special character
escaped, :func:`tex_escape`). The figures a study lists (``report.figures``) are in
:mod:`invariance.figures`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from invariance.config import study_part
from invariance.figures import FIGURES, row_labels
from invariance.io import atomic_write_text
from invariance.metrics import mean_ci
from invariance.report_seeds import seed_figures
from invariance.sweep import EXPECTED_FILE, CellError, cell_state, read_json, read_rows

__all__ = [
    "BETTER",
    "BUILDERS",
    "DEFAULT_REPORT",
    "FIGURES",
    "bold_cells",
    "column",
    "consistency_column",
    "load_rows",
    "report",
    "severity_column",
    "standard_columns",
    "summarise",
    "tex_escape",
    "validate_report",
]

Row = dict[str, Any]
# One table column: {"header", "field", "scale", "where" (row fields to match), "digits"
# (decimals), "count" (a count: thousands separator, no CI), "better" ("higher", "lower" or
# None: which value is best, in bold), "per_seed" (False: one value shared by the seeds, shown
# without a CI)}; see column().
Column = dict[str, Any]
BETTER = ("higher", "lower", None)


def column(
    header: str,
    field: str,
    scale: float = 1,
    *,
    digits: int = 1,
    count: bool = False,
    better: str | None = "higher",
    per_seed: bool = True,
    **where,
) -> Column:
    """One table column: the mean and 95% CI over seeds of ``row[field] * scale`` over the rows
    whose fields equal ``where`` (``None`` matches a field present and null).

    Args:
        header: the column's header (Markdown, CSV and LaTeX).
        field: the row field averaged.
        scale: multiplies the value (100 for percentages).
        digits: decimals shown.
        count: a count (e.g. parameters): thousands separators, no CI.
        better: ``"higher"`` (default) or ``"lower"``: the column's best value, and every value
            whose 95% CI overlaps the best one's, is set in bold; ``None``: nothing is bold (a
            description such as a parameter count, not a score).
        per_seed: ``False`` for a quantity that is not measured per seed (a parameter count, a
            training time shared by the seeds of a cell): shown without a CI when the seeds'
            values are equal (never "± 0").
        **where: the row filter, e.g. ``protocol="shift_consistency", mode="circular"``.

    Returns:
        A plain dict, as a study's config declares it under ``report.columns``.
    """
    if better not in BETTER:
        raise ValueError(f"better must be one of {BETTER}, got {better!r}")
    return {
        "header": header,
        "field": field,
        "scale": scale,
        "where": dict(where),
        "digits": digits,
        "count": count,
        "better": better,
        "per_seed": per_seed,
    }


def consistency_column(mode: str, header: str) -> Column:
    """Shift consistency (Zhang 2019) under ``mode`` shifts, in %."""
    return column(header, "consistency", 100, protocol="shift_consistency", mode=mode)


def severity_column(transform: str, header: str) -> Column:
    """Accuracy under a ``severity_curve`` transform, in %."""
    return column(header, "accuracy", 100, protocol="severity_curve", transform=transform)


def standard_columns(name: str) -> Column:
    """The columns every ``train_measure`` study can show: ``"accuracy"``, ``"params"``,
    ``"train_seconds"`` (the last two are not per seed and never bold)."""
    return {
        "accuracy": column("test acc. %", "accuracy", 100, protocol="accuracy"),
        "params": column(
            "params",
            "num_params",
            protocol="accuracy",
            digits=0,
            count=True,
            better=None,
            per_seed=False,
        ),  # fmt: skip
        "train_seconds": column(
            "train s",
            "train_seconds",
            protocol="accuracy",
            digits=0,
            better=None,
            per_seed=False,
        ),  # fmt: skip
    }[name]


def _cells(run_dir: Path) -> tuple[list[tuple[Path, dict, list[Row]]], list[dict]]:
    """Finished cells as (folder, config, verified rows), and failed cells' records."""
    finished, failed = [], []
    folders = {p.parent for p in run_dir.glob("**/done.json")}
    folders |= {p.parent for p in run_dir.glob("**/failed.json")}
    for cell in sorted(folders):
        state, _ = cell_state(cell)
        if state == "failed":
            rec = read_json(cell / "failed.json")
            failed.append({**rec, "folder": str(cell.relative_to(run_dir))})
            continue
        rows = read_rows(cell)  # CellError naming the file for a damaged cell
        cfg = read_json(cell / "config.json")
        if not isinstance(cfg, dict):
            raise CellError(f"{cell / 'config.json'} does not hold a config (a JSON object)")
        finished.append((cell, cfg, rows))
    return finished, failed


def _unfinished(run_dir: Path, finished: Sequence[tuple], failed: Sequence[dict]) -> dict:
    """Config name -> (labels of the cells an ``expected.json`` under ``run_dir`` lists that
    are neither finished nor failed, how many it lists, how many of them failed)."""
    done = {cell for cell, _, _ in finished}
    broken = {run_dir / f["folder"] for f in failed}
    missing: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path in sorted(run_dir.glob(f"**/{EXPECTED_FILE}")):
        entries = read_json(path)
        if not isinstance(entries, dict) or not isinstance(entries.get("cells"), list):
            raise CellError(f"{path} does not list cells (a JSON object with a 'cells' list)")
        for e in entries["cells"]:
            name, cell = str(e.get("config")), path.parent / "cells" / str(e.get("folder"))
            counts[name][0] += 1
            counts[name][1] += cell in broken
            if cell not in done and cell not in broken:
                missing[name].append(str(e.get("label") or e.get("folder")))
    return {name: (labels, *counts[name]) for name, labels in missing.items()}


def _partial_note(labels: Sequence[str], expected: int, failed: int) -> str:
    finished = expected - len(labels) - failed
    also = f" ({failed} failed)" if failed else ""
    return (
        f"Partial: {finished} of {expected} cells finished{also}; not finished yet: "
        f"{', '.join(labels)}."
    )


def load_rows(run_dir: str | Path) -> list[Row]:
    """Every row of every finished cell under ``run_dir`` (cells in name order), verified.

    Raises:
        CellError: a damaged cell (rows that do not match its ``done.json``) or a file that is
            not valid JSON; the message names the file.
    """
    finished, _ = _cells(Path(run_dir))
    return [r for _, _, rows in finished for r in rows]


def _short(v: Any) -> str:
    return json.dumps(v) if isinstance(v, int | float | str | bool) or v is None else "changed"


def _label_variants(
    name: str, cells: list[tuple[Path, dict, list[Row]]], run_dir: Path
) -> tuple[list[Row], list[str]]:
    """The table's rows, labelled so that cells differing in ``measure.*`` stay apart, and the
    note lines saying how they differ.

    Raises:
        CellError: the cells differ in anything but their own sweep keys, seeds and
            ``measure.*``: they are different experiments.
    """
    parts = [(folder, study_part(cfg)) for folder, cfg, _ in cells]
    keys = sorted({k for _, p in parts for k in p})
    differ = [k for k in keys if len({json.dumps(p.get(k)) for _, p in parts}) > 1]
    trained = [k for k in differ if not k.startswith("measure.")]
    if trained:
        k = trained[0]
        seen: dict[str, Path] = {}
        for folder, p in parts:
            seen.setdefault(json.dumps(p.get(k)), folder)
        where = ", ".join(f"{v} in {f.relative_to(run_dir)}" for v, f in list(seen.items())[:2])
        raise CellError(
            f"{name}: the cells under {run_dir} come from different configs ({k}: {where}); a "
            "table never averages different experiments: report each sweep folder on its own"
        )
    ref: dict[str, str | None] = {}  # the value most cells have (None on a tie: name them all)
    values: dict[str, list[str]] = {}
    for k in differ:
        counts: dict[str, int] = defaultdict(int)
        for _, p in parts:
            counts[json.dumps(p.get(k))] += 1
        top = sorted(counts, key=lambda v: (-counts[v], v))
        ref[k] = top[0] if counts[top[0]] > counts[top[1]] else None
        values[k] = sorted(counts)
    rows: list[Row] = []
    owner: dict[tuple, Path] = {}  # (label, root seed, seed index) -> the cell that has it
    for (folder, p), (_, cfg, mine) in zip(parts, cells, strict=True):
        diff = [k for k in differ if json.dumps(p.get(k)) != ref[k]]
        suffix = ", ".join(f"{k}={_short(p.get(k))}" for k in diff)
        mine = [dict(r, label=f"{r['label']} [{suffix}]") if suffix else r for r in mine]
        root = (cfg.get("train") or {}).get("seed")
        for r in mine:
            if r.get("seed_index") is None or r.get("protocol") != "accuracy":
                continue
            k = (r["label"], root, r["seed_index"])
            if owner.setdefault(k, folder) != folder:
                raise CellError(
                    f"{name}: seed {r['seed_index']} of {r['label']!r} is in two cells "
                    f"({owner[k].relative_to(run_dir)}, {folder.relative_to(run_dir)}); a seed "
                    "is never averaged twice: remove one of them"
                )
        rows += mine
    notes = []
    for k in differ:
        vals = ", ".join(_short(json.loads(v)) for v in values[k])
        where = f"where it is not {_short(json.loads(ref[k]))}" if ref[k] is not None else ""
        notes.append(
            f"Protocols differ between rows: {k} takes {vals}; a row's label names its value "
            f"{where}".rstrip()
            + "."
        )
    return rows, notes


def _matches(row: Row, flt: dict[str, Any]) -> bool:
    return all(k in row and row[k] == v for k, v in flt.items())


def summarise(rows: Sequence[Row], columns: Sequence[Column]) -> list[dict[str, Any]]:
    """Mean and 95% CI half-width over seeds of each column, per row label.

    Returns:
        One dict per label: ``label``, ``n_seeds`` and, per column header, ``(mean, half)``
        (``None`` where no row matched).
    """
    out = []
    for label in row_labels(rows):
        mine = [r for r in rows if r.get("label") == label]
        entry: dict[str, Any] = {"label": label}
        seeds = set()
        for col in columns:
            header, flt, field, scale = col["header"], col["where"], col["field"], col["scale"]
            vals = [r[field] * scale for r in mine if _matches(r, flt) and r.get(field) is not None]
            seeds.update(r.get("seed_index") for r in mine if _matches(r, flt))
            if not vals:
                entry[header] = None
            elif len(vals) == 1 or (not col.get("per_seed", True) and len(set(vals)) == 1):
                entry[header] = (float(vals[0]), float("nan"))
            else:
                m, h = mean_ci(np.asarray(vals, np.float64))
                entry[header] = (float(m), float(h))
        entry["n_seeds"] = len(seeds - {None}) or 1
        out.append(entry)
    return out


def _fmt(v: tuple[float, float] | None, col: Column, pm: str = "±") -> str:
    if v is None:
        return "–"
    m, h = v
    if col.get("count"):
        return f"{m:,.0f}"
    digits = int(col.get("digits", 1))
    if math.isnan(h):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} {pm} {h:.{digits}f}"


def bold_cells(summary: Sequence[dict[str, Any]], columns: Sequence[Column]) -> set[tuple]:
    """The ``(label, header)`` pairs a paper-style table sets in bold: in each column whose
    ``better`` is ``"higher"`` or ``"lower"``, the best mean and every value whose 95% CI
    overlaps the best one's (``|m - m_best| <= h + h_best``; a value without a CI counts as its
    point). A column with ``better=None``, or without the key (a spec stored before columns
    declared a direction: guessing it could bold the worst value), has nothing in bold.

    Args:
        summary: :func:`summarise`'s entries.
        columns: the table's columns.
    """
    bold = set()
    for col in columns:
        better, header = col.get("better"), col["header"]
        if better is None:
            continue
        vals = [(e["label"], e[header]) for e in summary if e.get(header) is not None]
        if not vals:
            continue
        pick = max if better == "higher" else min
        _, (bm, bh) = pick(vals, key=lambda kv: kv[1][0])
        for label, (m, h) in vals:
            if abs(m - bm) <= _half(h) + _half(bh) + 1e-9 * max(1.0, abs(bm)):
                bold.add((label, header))
    return bold


def _half(h: float) -> float:
    return 0.0 if math.isnan(h) else h


# LaTeX for the characters a header, label or value may hold (text mode, pdflatex).
_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "–": "--", "—": "---", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$",
    "µ": r"$\mu$", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}  # fmt: skip


def tex_escape(text: str) -> str:
    """``text`` as LaTeX text that pdflatex compiles: the special characters ``\\ & % $ # _ {
    } ~ ^ < > |`` escaped, and ``± – — × ≤ ≥ µ`` written as LaTeX."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def _bold_note(columns: Sequence[Column]) -> str:
    ranked = [c for c in columns if c.get("better") is not None]
    if not ranked:
        return ""
    lower = [f"'{c['header']}'" for c in ranked if c.get("better") == "lower"]
    note = " In bold: each column's best value and every value whose CI overlaps the best one's"
    return note + (f" (lower is better for {', '.join(lower)})." if lower else ".")


def _stamp(rows: Sequence[Row], run_dir: str | Path, name: str) -> str:
    def uniq(key: str) -> str:
        vals = sorted({str(r.get(key)) for r in rows if r.get(key) is not None})
        return ", ".join(vals) or "unknown"

    return (
        f"Made by `invariance report` from {len(rows)} rows of config "
        f"`configs/{name}.py`; commit {uniq('prov_git_commit')}, jax {uniq('prov_jax')}, device "
        f"{uniq('prov_device')} ({uniq('prov_backend')})."
    )


def _failed_notes(failed: Sequence[dict]) -> list[str]:
    return [
        f"Failed cell {f.get('label')!r} ({f['folder']}/failed.json): loss {f.get('loss')} at "
        f"step {f.get('step')} (epoch {f.get('epoch')}), seed {f.get('seed')}; not in the means."
        for f in failed
    ]


def _tables(
    name: str,
    rows: list[Row],
    spec: dict[str, Any],
    run_dir,
    out: Path,
    notes: Sequence[str] = (),
    failed: Sequence[dict] = (),
) -> list[Path]:
    """The ``"table"`` builder: one row per label, one column per ``spec["columns"]`` entry
    (mean ± 95% CI over seeds), as Markdown, CSV and LaTeX; then ``spec["figures"]``."""
    columns = list(spec["columns"])
    summary = summarise(rows, columns) if rows else []
    headers = [c["header"] for c in columns]
    by_header = {c["header"]: c for c in columns}
    labels = {e["label"] for e in summary}
    for f in sorted(failed, key=lambda f: (f.get("cell_index") or 0, str(f.get("label")))):
        if f.get("label") not in labels:  # a row that says it failed, instead of no row
            summary.append({"label": f"{f.get('label')} (failed)", "n_seeds": 0})
            summary[-1].update({h: None for h in headers})
    seeds = max((e["n_seeds"] for e in summary), default=1)
    bold = bold_cells(summary, columns)
    md = [f"# {name}", "", f"Mean ± 95% CI over {seeds} seeds (Student t).{_bold_note(columns)}"]
    md += ["", "| pooling | " + " | ".join(headers) + " |"]
    md.append("| --- | " + " | ".join("---" for _ in headers) + " |")
    for e in summary:
        cells = [_fmt(e[h], by_header[h]) for h in headers]
        cells = [
            f"**{c}**" if (e["label"], h) in bold else c
            for c, h in zip(cells, headers, strict=True)
        ]
        md.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    extra = [*notes, *_failed_notes(failed)]
    if extra:
        md += ["", *extra]
    md += ["", _stamp(rows, run_dir, name), ""]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "n_seeds"] + [x for h in headers for x in (h, h + " ci95")])
    for e in summary:
        cells = []
        for h in headers:
            v = e[h]
            cells += ["", ""] if v is None else [f"{v[0]:.6g}", f"{v[1]:.6g}"]
        w.writerow([e["label"], e["n_seeds"], *cells])
    tex = [f"% {n}" for n in notes if n.startswith("Partial:")]  # a partial table says so
    tex += ["\\begin{tabular}{l" + "r" * len(headers) + "}", "\\toprule"]
    tex.append("pooling & " + " & ".join(tex_escape(h) for h in headers) + " \\\\")
    tex.append("\\midrule")
    for e in summary:
        vals = [tex_escape(_fmt(e[h], by_header[h])) for h in headers]
        vals = [
            f"\\textbf{{{v}}}" if (e["label"], h) in bold else v
            for v, h in zip(vals, headers, strict=True)
        ]
        tex.append(tex_escape(e["label"]) + " & " + " & ".join(vals) + " \\\\")
    tex += ["\\bottomrule", "\\end{tabular}", ""]
    written = [
        atomic_write_text(out / f"{name}.md", "\n".join(md)),
        atomic_write_text(out / f"{name}.csv", buf.getvalue()),
        atomic_write_text(out / f"{name}.tex", "\n".join(tex)),
    ]
    partial = next((n.split(";")[0] for n in notes if n.startswith("Partial:")), None)
    for fig in spec.get("figures", ()):
        written += FIGURES[fig](name, rows, out, caption=partial)
    return written


#: Report builders by name: ``builder(name, rows, spec, run_dir, out, notes, failed)``.
BUILDERS: dict[str, Callable[..., list[Path]]] = {"table": _tables, "seed_figures": seed_figures}
#: The report of a config that declares none: test accuracy per label.
DEFAULT_REPORT: dict[str, Any] = {
    "builder": "table",
    "columns": [standard_columns("accuracy")],
    "figures": ["sensitivity_profile"],
}
_COLUMN_KEYS = ("header", "field", "scale", "where", "digits", "count")  # + better, per_seed


def validate_report(spec: dict[str, Any] | None) -> None:
    """Checks a study's ``report`` section (builder, figures, columns); one-line ValueError."""
    spec = DEFAULT_REPORT if spec is None else spec
    builder = spec.get("builder")
    if builder not in BUILDERS:
        raise ValueError(f"unknown report builder {builder!r}: valid are {', '.join(BUILDERS)}")
    for fig in spec.get("figures", ()):
        if fig not in FIGURES:
            raise ValueError(f"unknown report figure {fig!r}: valid are {', '.join(FIGURES)}")
    if builder == "table":
        for col in spec.get("columns") or ():
            missing = [k for k in _COLUMN_KEYS if k not in col]
            if missing:
                raise ValueError(
                    f"report column {col.get('header')!r} lacks {', '.join(missing)} "
                    "(build columns with invariance.report.column)"
                )
            if col.get("better") not in BETTER:
                raise ValueError(
                    f"report column {col.get('header')!r}: better must be one of {BETTER}, got "
                    f"{col['better']!r}"
                )
        if not spec.get("columns"):
            raise ValueError("a table report needs report.columns")


def report(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Writes every table and figure the rows under ``run_dir`` support.

    Args:
        run_dir: a sweep folder (or a folder of sweep folders).
        out_dir: where to write; default ``run_dir/report``.

    Returns:
        The paths written.

    Raises:
        CellError: no finished or failed cell under ``run_dir``; a damaged cell or a file that
            is not valid JSON (naming it); cells of different configs in one table, or a seed
            in two cells (see the module doc).
    """
    run_dir = Path(run_dir)
    finished, failed = _cells(run_dir)
    if not finished and not failed:
        raise CellError(f"no finished cells (done.json + rows.jsonl) under {run_dir}")
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    by_exp: dict[str, list] = defaultdict(list)
    for cell in finished:
        by_exp[str(cell[1].get("name") or cell[1].get("experiment", "rows"))].append(cell)
    failed_by: dict[str, list[dict]] = defaultdict(list)
    for f in failed:
        failed_by[str(f.get("cell_config"))].append(f)
    unfinished = _unfinished(run_dir, finished, failed)
    written: list[Path] = []
    for name in sorted(set(by_exp) | set(failed_by)):
        cells = by_exp.get(name, [])
        mine, notes = _label_variants(name, cells, run_dir) if cells else ([], [])
        if name in unfinished:
            notes = [_partial_note(*unfinished[name]), *notes]
        spec = (cells[0][1].get("report") if cells else None) or DEFAULT_REPORT
        try:
            validate_report(spec)
        except ValueError as e:
            where = cells[0][0] / "config.json" if cells else name
            raise CellError(f"{where}: {e}") from None
        build = BUILDERS[spec["builder"]]
        written += build(name, mine, spec, run_dir, out, notes, failed_by.get(name, []))
    return written
