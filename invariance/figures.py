"""Figures (PNG) of a ``"table"`` report, registered by name in :data:`FIGURES`.

A study's config lists the figures its report draws (``report.figures``); each builder is
``figure(name, rows, out) -> [paths]`` and draws nothing (returns ``[]``) when the rows hold
none of what it plots. Every point is the mean over seeds and every bar or band its 95%
Student-t confidence interval (:func:`invariance.metrics.mean_ci`); a label with one seed has
no interval. The same rows always give byte-identical PNGs: the Agg backend, matplotlib's
default style (whatever the user's matplotlibrc says) and no version or date in the metadata;
each PNG's ``Description`` names the config, commit, jax version and device of its rows.

* ``"accuracy_consistency"``: test accuracy against shift consistency, one point per pooling
  kind with CI bars on both axes, one panel per shift protocol (as in Zhang 2019, "Making
  Convolutional Networks Shift-Invariant Again", Fig. 1: a more accurate classifier is more
  consistent by itself, and this figure is how a reader separates the two).
* ``"sensitivity_profile"``: the radial profile of the translation-sensitivity map
  (Kauderer-Abrams 2017) with CI bands over seeds.
* ``"severity_curves"``: accuracy and consistency with the clean prediction against severity,
  per pooling kind with CI bands, one column per transform the ``severity_curve`` rows cover.
"""

from __future__ import annotations

import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from invariance.io import atomic_write_bytes
from invariance.metrics import mean_ci

__all__ = [
    "FIGURES",
    "accuracy_consistency_points",
    "provenance",
    "row_labels",
    "savefig",
    "sensitivity_profile_bands",
    "severity_curve_bands",
]

Row = dict[str, Any]
# (mean, 95% CI half-width over seeds; NaN with one seed)
Stat = tuple[float, float]

# Options of a severity_curve row that make separate curves (never averaged together).
_SEVERITY_OPTIONS = ("orientation", "vary", "position", "direction", "mode", "fill", "width")


def row_labels(rows: Sequence[Row]) -> list[str]:
    """The rows' labels in table order: by ``cell_index`` (first seen), then by name."""
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(r["label"], r.get("cell_index", len(order)))
    return sorted(order, key=lambda k: (order[k], k))


def _stat(values: Sequence[float]) -> Stat:
    m, h = mean_ci(np.asarray(values, np.float64))
    return float(m), float(h)


def _half(h: float) -> float:
    return 0.0 if math.isnan(h) else h


@contextmanager
def _pyplot():
    """pyplot on the Agg backend under matplotlib's default style (user rc files ignored)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.style.context("default"):
        yield plt


def provenance(name: str, rows: Sequence[Row]) -> str:
    """Where the rows come from: ``"config configs/NAME.py; commit ...; jax ...; device ..."``,
    from the provenance fields every row carries (``"unknown"`` where none has one)."""

    def uniq(key: str) -> str:
        vals = sorted({str(r.get(key)) for r in rows if r.get(key) is not None})
        return ", ".join(vals) or "unknown"

    return (
        f"config configs/{name}.py; commit {uniq('prov_git_commit')}; jax {uniq('prov_jax')}; "
        f"device {uniq('prov_device')} ({uniq('prov_backend')})"
    )


def savefig(fig, path: Path, stamp: str | None = None, caption: str | None = None) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (atomically) and closes it; the bytes depend only
    on what was drawn and ``stamp`` (no software version or date in the metadata).

    Args:
        fig: a matplotlib figure.
        path: the file written.
        stamp: a text kept in the PNG's ``Description`` (e.g. :func:`provenance`).
        caption: a line drawn in red above the figure (the report's ``Partial: ...``, so a
            figure of an unfinished study says so as its table does).
    """
    import matplotlib.pyplot as plt

    if caption:
        fig.text(0.01, 1.0, caption, ha="left", va="bottom", fontsize=9, color="firebrick")
    meta = {"Software": None} if stamp is None else {"Software": None, "Description": stamp}
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _percent_limits(ax, axis: str) -> None:
    """Keeps a percentage axis inside [-2, 102] (a CI of few seeds can reach past 0 or 100)."""
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    lim = (max(lo, -2.0), min(hi, 102.0))
    if axis == "x":
        ax.set_xlim(*lim)
    else:
        ax.set_ylim(*lim)


def _style(plt, i: int) -> dict[str, Any]:
    """The colour and marker of the ``i``-th label, the same in every figure."""
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    markers = "os^vD<>ph*Xd"
    return {"color": colors[(2 * i) % 20 + (2 * i) // 20], "marker": markers[i % len(markers)]}


def accuracy_consistency_points(rows: Sequence[Row]) -> dict[str, dict[str, tuple[Stat, Stat]]]:
    """Per shift protocol and label: (accuracy %, consistency %) as (mean, CI half-width).

    Accuracy is the ``accuracy`` rows' test accuracy; consistency the ``shift_consistency``
    rows' (Zhang 2019). A protocol is named by its mode, max shift and pairs, e.g.
    ``"circular, ±3 px"``. Labels without both are left out.

    Returns:
        ``{protocol title: {label: ((acc_mean, acc_half), (cons_mean, cons_half))}}``.
    """
    acc: dict[str, list[float]] = defaultdict(list)
    cons: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("protocol") == "accuracy" and r.get("accuracy") is not None:
            acc[r["label"]].append(100 * r["accuracy"])
        elif r.get("protocol") == "shift_consistency" and r.get("consistency") is not None:
            title = f"{r.get('mode')}, ±{r.get('max_shift')} px"
            if r.get("pairs") not in (None, "two_shifted"):
                title += f", {r['pairs']}"
            cons[title][r["label"]].append(100 * r["consistency"])
    out: dict[str, dict[str, tuple[Stat, Stat]]] = {}
    for title in sorted(cons):
        by = cons[title]
        out[title] = {
            k: (_stat(acc[k]), _stat(by[k])) for k in row_labels(rows) if k in by and acc[k]
        }
    return out


def _accuracy_consistency(
    name: str, rows: list[Row], out: Path, caption: str | None = None
) -> list[Path]:
    panels = accuracy_consistency_points(rows)
    if not panels:
        return []
    labels = row_labels(rows)
    with _pyplot() as plt:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
        for ax, (title, pts) in zip(axes[0], panels.items(), strict=True):
            for label, ((am, ah), (cm, ch)) in pts.items():
                st = _style(plt, labels.index(label))
                ax.errorbar(
                    cm, am, xerr=_half(ch), yerr=_half(ah), linestyle="none", capsize=3,
                    markersize=6, label=label, **st,
                )  # fmt: skip
            _percent_limits(ax, "x")
            _percent_limits(ax, "y")
            ax.set_xlabel(f"shift consistency % ({title})")
            ax.set_title(f"Accuracy against consistency ({title})", fontsize=10)
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel("test accuracy %")
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(
            handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8
        )
        fig.suptitle("mean ± 95% CI over seeds (Zhang 2019, Fig. 1)", fontsize=9, y=0.995)
        fig.tight_layout()
        return [
            savefig(fig, out / f"{name}_accuracy_consistency.png", provenance(name, rows), caption)
        ]


def sensitivity_profile_bands(rows: Sequence[Row]) -> dict[str, dict[str, dict[int, Stat]]]:
    """The translation-sensitivity profile (Kauderer-Abrams 2017) per map and label: the
    normalised logit distance per ring ``|d|`` as (mean, 95% CI half-width) over seeds.

    A map is named by its layer and shift mode when the rows hold more than one.

    Returns:
        ``{map title ("" for a single map): {label: {ring: (mean, half)}}}``.
    """
    prof = [r for r in rows if r.get("aggregate") == "ring" and r.get("relative_l2") is not None]
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in prof:
        groups[f"{r.get('layer') or 'logits'}, {r.get('mode') or 'circular'} shifts"].append(r)
    out: dict[str, dict[str, dict[int, Stat]]] = {}
    for title in sorted(groups):
        vals: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in groups[title]:
            vals[r["label"]][r["ring"]].append(r["relative_l2"])
        key = title if len(groups) > 1 else ""
        out[key] = {
            k: {ring: _stat(v[ring]) for ring in sorted(v)}
            for k in row_labels(groups[title])
            for v in [vals[k]]
        }
    return out


def _profile_figure(
    name: str, rows: list[Row], out: Path, caption: str | None = None
) -> list[Path]:
    panels = sensitivity_profile_bands(rows)
    if not panels:
        return []
    labels = row_labels(rows)
    with _pyplot() as plt:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, (title, by_label) in zip(axes[0], panels.items(), strict=True):
            for label, by_ring in by_label.items():
                st = _style(plt, labels.index(label))
                radii = list(by_ring)
                m = np.array([by_ring[k][0] for k in radii])
                h = np.array([_half(by_ring[k][1]) for k in radii])
                ax.plot(radii, m, label=label, **st)
                ax.fill_between(radii, m - h, m + h, color=st["color"], alpha=0.15, linewidth=0)
            ax.set_xlabel("shift |d| (pixels)")
            ax.set_ylabel("normalised distance of logits")
            head = "Translation sensitivity (Kauderer-Abrams 2017), radial profile"
            ax.set_title(f"{head}\n{title}" if title else head, fontsize=10)
            ax.legend(fontsize=7, ncol=2, title="band: 95% CI over seeds", title_fontsize=7)
            ax.grid(alpha=0.3)
        return [savefig(fig, out / f"{name}_sensitivity.png", provenance(name, rows), caption)]


def _severity_titles(rows: Sequence[Row]) -> dict[tuple, str]:
    """A title per severity_curve group ``(transform, options)``: the transform, a line mask's
    orientation, and any other option that differs between groups of the same transform."""
    keys = sorted({_severity_key(r) for r in rows}, key=json.dumps)
    titles = {}
    for key in keys:
        transform, opts = key[0], dict(key[1])
        same = [dict(k[1]) for k in keys if k[0] == transform]
        shown = [
            f"{k}={v}" if k != "orientation" else str(v)
            for k, v in opts.items()
            if k == "orientation" or len({json.dumps(o.get(k)) for o in same}) > 1
        ]
        titles[key] = f"{transform} ({', '.join(shown)})" if shown else str(transform)
    return titles


# What a transform's severity is, for the x axis (invariance.measure.severity_curve).
_SEVERITY_UNITS = {
    "random_mask": "fraction of pixels masked",
    "inverse_mask": "fraction of pixels set to the max",
    "occlusion": "side of the occluded square (px)",
    "gaussian_noise": "noise sigma",
    "translate": "shift (px)",
    "rotate": "rotation (degrees)",
}


def _severity_unit(r: Row) -> str:
    if r["transform"] == "line_mask":
        return f"line {r.get('vary') or 'period'} (px)"
    return _SEVERITY_UNITS.get(r["transform"], "severity")


def _severity_rows(rows: Sequence[Row]) -> list[Row]:
    return [
        r
        for r in rows
        if r.get("protocol") == "severity_curve" and isinstance(r.get("severity"), int | float)
    ]


def _severity_key(r: Row) -> tuple:
    return (r["transform"], tuple((k, r[k]) for k in _SEVERITY_OPTIONS if r.get(k) is not None))


def severity_curve_bands(rows: Sequence[Row]) -> dict[str, dict[str, dict[str, dict[float, Stat]]]]:
    """Severity curves of the ``severity_curve`` rows per transform, metric and label.

    Metrics: ``"accuracy"`` (test accuracy under the transform, %) and ``"consistency"``
    (agreement of the top-1 prediction with the clean input's, %), each as (mean, 95% CI
    half-width) over seeds per severity. A transform's options that are strings (e.g. a line
    mask's orientation) name separate curves.

    Returns:
        ``{transform title: {metric: {label: {severity: (mean, half)}}}}``.
    """
    vals: dict[str, dict[str, dict[str, dict[float, list[float]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    )
    sev = _severity_rows(rows)
    titles = _severity_titles(sev)
    for r in sev:
        title = titles[_severity_key(r)]
        for metric in ("accuracy", "consistency"):
            if r.get(metric) is not None:
                vals[title][metric][r["label"]][float(r["severity"])].append(100 * r[metric])
    out: dict[str, dict[str, dict[str, dict[float, Stat]]]] = {}
    order = row_labels(rows) if vals else []
    for title in sorted(vals):
        out[title] = {
            metric: {k: {s: _stat(by[k][s]) for s in sorted(by[k])} for k in order if k in by}
            for metric, by in vals[title].items()
        }
    return out


def _severity_figure(
    name: str, rows: list[Row], out: Path, caption: str | None = None
) -> list[Path]:
    curves = severity_curve_bands(rows)
    if not curves:
        return []
    labels = row_labels(rows)
    sev = _severity_rows(rows)
    titles = _severity_titles(sev)
    units = {titles[_severity_key(r)]: _severity_unit(r) for r in sev}
    metrics = [m for m in ("accuracy", "consistency") if any(m in c for c in curves.values())]
    ylabel = {"accuracy": "test accuracy %", "consistency": "consistency with clean pred. %"}
    with _pyplot() as plt:
        fig, axes = plt.subplots(
            len(metrics), len(curves), figsize=(3.6 * len(curves), 3.3 * len(metrics)),
            squeeze=False,
        )  # fmt: skip
        for j, (title, by_metric) in enumerate(curves.items()):
            for i, metric in enumerate(metrics):
                ax = axes[i, j]
                _severity_panel(plt, ax, by_metric.get(metric, {}), labels)
                _percent_limits(ax, "y")
                ax.set_title(title, fontsize=9)
                ax.set_xlabel(units.get(title, "severity"), fontsize=9)
                ax.grid(alpha=0.3)
                if j == 0:
                    ax.set_ylabel(ylabel[metric])
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(
            handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=6, fontsize=8
        )
        fig.suptitle("Severity curves: mean ± 95% CI over seeds", fontsize=10)
        fig.tight_layout()
        return [savefig(fig, out / f"{name}_severity.png", provenance(name, rows), caption)]


def _severity_panel(plt, ax, by_label: dict[str, dict[float, Stat]], labels: list[str]) -> None:
    """One panel: a line with a CI band per label; where the panel has a single severity, the
    labels' points side by side with CI bars (a band needs two severities)."""
    sevs = sorted({s for by in by_label.values() for s in by})
    single = len(sevs) == 1
    for n, (label, by) in enumerate(by_label.items()):
        st = _style(plt, labels.index(label))
        xs = np.array(list(by), np.float64)
        m = np.array([by[s][0] for s in by])
        h = np.array([_half(by[s][1]) for s in by])
        if single:
            x = np.array([n - (len(by_label) - 1) / 2])
            ax.errorbar(x, m, yerr=h, linestyle="none", capsize=3, label=label, **st)
        else:
            ax.plot(xs, m, label=label, **st)
            ax.fill_between(xs, m - h, m + h, color=st["color"], alpha=0.12, linewidth=0)
    if single:
        ax.set_xticks([0], [f"{sevs[0]:g}"])
        ax.set_xlim(-len(by_label) / 2 - 0.5, len(by_label) / 2 + 0.5)


#: Figures a ``"table"`` report may add, by name: ``figure(name, rows, out, caption=None) ->
#: paths`` (``caption``: see :func:`savefig`).
FIGURES: dict[str, Callable[..., list[Path]]] = {
    "accuracy_consistency": _accuracy_consistency,
    "sensitivity_profile": _profile_figure,
    "severity_curves": _severity_figure,
}
