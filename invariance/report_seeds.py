"""The ``"seed_figures"`` report builder: the seeds' masking experiments as a table of relative
output changes (probe rows with a 95% CI over the probe seeds), masking curves and example
images. :mod:`invariance.report` looks it up by name in ``BUILDERS``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from invariance.figures import savefig
from invariance.io import atomic_write_text
from invariance.metrics import mean_ci

__all__ = ["seed_figures"]

Row = dict[str, Any]


def seed_figures(name: str, rows: list[Row], spec, run_dir: Path, out: Path, *_) -> list[Path]:
    """The ``"seed_figures"`` builder: masking curves, a relative-change table and example
    images (``examples.npz`` of the cells) for the seeds' experiments. The study is one cell,
    so it is whole or has no table: the report's notes (``Partial: ...``) are not used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines, table = _collect(rows)
    written = [_masking_figure(plt, lines, out / f"{name}_masking.png")]
    written.append(_change_table(table, rows, run_dir, name, out / f"{name}.md"))
    for npz in sorted(Path(run_dir).glob("**/examples.npz")):
        written.append(_examples_figure(plt, np.load(npz), out / f"{name}_examples.png"))
        break
    return written


def _collect(rows: Sequence[Row]) -> tuple[dict, dict]:
    """The relative L2 changes by (network, transform) -> severity (random and inverse masks:
    the curves) and by (network, transform, severity) (the table); a probe counts by its
    last layer (conv2), pooling alone by its kind (identity: the input itself)."""
    lines: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    table: dict[tuple[str, str, Any], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("relative_l2") is None:
            continue
        net = r.get("network", "?")
        what = r.get("kind") or r.get("layer") or "output"
        if net.startswith("probe") and what != "conv2":
            continue
        if net.startswith("pooling"):
            net = "input itself" if what == "identity" else f"{what} pool"
        table[(net, r["transform"], _sev(r))].append(r["relative_l2"])
        if r["transform"] in ("random_mask", "inverse_mask"):
            lines[(net, r["transform"])][_sev(r)].append(r["relative_l2"])
    return lines, table


def _masking_figure(plt, lines: dict, path: Path) -> Path:
    """Relative change of the output against the mask ratio, per network; a probe's line has
    a band of its 95% CI over the probe seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, transform in zip(axes, ("random_mask", "inverse_mask"), strict=True):
        for (net, t), by in sorted(lines.items()):
            if t != transform:
                continue
            xs = sorted(by)
            stats = [mean_ci(by[x]) if len(by[x]) > 1 else (by[x][0], 0.0) for x in xs]
            m = np.array([st[0] for st in stats])
            (line,) = ax.plot(xs, m, marker="o", label=net)
            if any(len(by[x]) > 1 for x in xs):
                h = np.array([st[1] for st in stats])
                ax.fill_between(xs, m - h, m + h, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(transform.replace("_", " "))
        ax.set_xlabel("fraction of pixels masked")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative L2 change of the output")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8,
        title="probe bands: 95% CI over the probe seeds", title_fontsize=8,
    )  # fmt: skip
    fig.tight_layout()
    return savefig(fig, path)


def _change_table(table: dict, rows: Sequence[Row], run_dir: Path, name: str, path: Path) -> Path:
    """The Markdown table: one row per network, one column per (transform, severity)."""
    from invariance.report import _stamp  # the report's own stamp (report imports this module)

    seeds = max((len(v) for k, v in table.items() if k[0].startswith("probe")), default=0)
    md = [
        f"# {name}",
        "",
        "Relative L2 change ||f(Tx) - f(x)|| / ||f(x)|| (mean over images); `input itself` is "
        "the change of the masked input. Pooling rows are one measurement on the images; "
        f"probe rows are mean ± 95% CI over {seeds} randomly initialised probe seeds "
        "(Student t).",
        "",
    ]
    nets = sorted({k[0] for k in table})
    cols = sorted({(k[1], k[2]) for k in table})
    md.append("| network | " + " | ".join(f"{t} {s}" for t, s in cols) + " |")
    md.append("| --- | " + " | ".join("---" for _ in cols) + " |")
    for net in nets:
        cells = [_mean_pm(table.get((net, t, s))) for t, s in cols]
        md.append(f"| {net} | " + " | ".join(cells) + " |")
    md += ["", _stamp(rows, run_dir, name), ""]
    return atomic_write_text(path, "\n".join(md))


def _examples_figure(plt, ex, path: Path) -> Path:
    """The seeds' example images: the input, its max pool and both probes' outputs, per mask."""
    panels = [
        ("input", "input"),
        ("max_pool", "max pool 2x2"),
        ("probe_no_pool", "Conv->Conv"),
        ("probe_max", "Conv->MaxPool->Conv"),
    ]
    names = list(ex["names"])
    fig, axes = plt.subplots(len(panels), len(names), figsize=(1.6 * len(names), 6.6))
    for i, (k, title) in enumerate(panels):
        for j, nm in enumerate(names):
            axes[i, j].imshow(ex[k][j, 0], cmap="gray")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(nm, fontsize=8)
            if j == 0:
                axes[i, j].set_ylabel(title, fontsize=8)
    return savefig(fig, path)


def _mean_pm(values: Sequence[float] | None) -> str:
    """``0.298 ± 0.010`` (mean ± 95% CI) for several values, ``0.298`` for one, ``–`` for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return "{:.3f} ± {:.3f}".format(*mean_ci(values))


def _sev(r: Row) -> Any:
    if r.get("transform") == "line_mask":
        return r.get("orientation") or r.get("severity")
    sev = r.get("severity")
    return float(f"{sev:.6g}") if isinstance(sev, float) else sev
