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
    images (``examples.npz`` of the cells) for the seeds' experiments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # Relative change of the output against the mask ratio, per network.
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
        key = (net, r["transform"])
        table[(key[0], r["transform"], _sev(r))].append(r["relative_l2"])
        if r["transform"] in ("random_mask", "inverse_mask"):
            lines[key][_sev(r)].append(r["relative_l2"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, transform in zip(axes, ("random_mask", "inverse_mask"), strict=True):
        for (net, t), by in sorted(lines.items()):
            if t == transform:
                xs = sorted(by)
                ax.plot(xs, [np.mean(by[x]) for x in xs], marker="o", label=net)
        ax.set_title(transform.replace("_", " "))
        ax.set_xlabel("fraction of pixels masked")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative L2 change of the output")
    axes[1].legend(fontsize=7)
    written.append(savefig(fig, out / f"{name}_masking.png"))
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
    from invariance.report import _stamp  # the report's own stamp (report imports this module)

    md += ["", _stamp(rows, run_dir, name), ""]
    written.append(atomic_write_text(out / f"{name}.md", "\n".join(md)))
    for npz in sorted(Path(run_dir).glob("**/examples.npz")):
        ex = np.load(npz)
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
        written.append(savefig(fig, out / f"{name}_examples.png"))
        break
    return written


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
