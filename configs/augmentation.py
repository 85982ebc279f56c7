"""Augmentation against architecture: does training on shifts (or masks) buy more than pooling?

SmallCNN (the pooling table's backbone: zero padding, flatten head) on Fashion-MNIST with max,
max_blur (3) (Zhang 2019) and aps (Chaman & Dokmanić 2021) pooling, each trained three ways:
plainly, with random translations of up to +-3 px per axis (zero fill, a new offset per image
and step; ``train.augment = {"translate": 3}``) and, as its own row, with random masking of a
ratio uniform in 0.1-0.5 per image and step (``{"mask_ratio": [0.1, 0.5]}``, the seeds'
masking; invariance/train/_augment.py). Azulay & Weiss 2019 argue that augmentation teaches
the shifts it shows and does not generalise beyond them, so shifts are measured inside the
trained range (+-3) and outside it (+-6; and 4-6 px diagonal shifts on their own), next to
the masking robustness each training buys.

Command:  invariance sweep augmentation --profile quick
          invariance report runs/augmentation-quick
          (part of `invariance reproduce --profile full`; in the quick profile it runs with
          `invariance sweep` only: see FULL_ONLY_CONFIGS in invariance/cli.py)
Runtime:  quick: not yet measured on the 2-core CPU (9 cells x 3 seeds, 12k train images,
          2 epochs); full (60k images, 6 epochs, 3 seeds), measured on the 2-core CPU with
          two cells at a time (`--processes 2`, one core each): each of the eight trained
          cells trained in 1026-1486 s (`train s` in the table), then measured in 5-6 min;
          about 3.4 core-hours in all. The plain max row trains nothing under `invariance
          reproduce`: it takes the pooling table's max models (the same training config);
          the plain max_blur (3) and aps rows do the same when the pooling table's
          checkpoints are on disk (in the committed run they were not, and trained their
          own). A GPU time is an estimate until measured on one.
Numbers:  results/<profile>/augmentation.md / .csv / .tex (written by the commands above;
          the tiny profile, synthetic data, is what the tests run).

Columns: test accuracy; shift consistency (Zhang 2019, two shifted copies per image) under
zero-fill shifts of +-3 px (inside the trained range) and +-6 px (beyond it), and under
circular shifts of +-3 px; consistency with the clean prediction under a diagonal zero-fill
shift of 3 px and of 6 px; accuracy and consistency with the clean prediction under random
masking at ratio 0.3 and 0.5; parameters; training time; mean +- 95% CI over seeds. The rows
hold the whole curves (diagonal shifts 1-6 px, mask ratios 0.1-0.5), drawn with CI bands in
the severity-curves figure, next to the accuracy-against-consistency figure (Zhang 2019,
Fig. 1).
"""

from invariance.experiment import train_measure_config
from invariance.report import column, standard_columns

# Pooling rows -> SmallCNN options; training rows -> train.augment.
KINDS = {
    "max": {"pool": "max"},
    "max_blur (3)": {"pool": "max_blur", "pool_options": {"filter_size": 3}},
    "aps": {"pool": "aps"},
}
AUGMENTS = {
    "": {},
    " + translate (3 px)": {"translate": 3},
    " + mask (0.1-0.5)": {"mask_ratio": [0.1, 0.5]},
}
# The tiny profile (tests, synthetic data) runs one cell of each training.
TINY_CELLS = ("max", "max + translate (3 px)", "aps + mask (0.1-0.5)")
TRAINED_SHIFT, BEYOND_SHIFT = 3, 6
MASK_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5]


def _shift(mode, s, header):
    return column(header, "consistency", 100, protocol="shift_consistency", mode=mode, max_shift=s)


def _curve(transform, field, severity, header):
    return column(
        header, field, 100, protocol="severity_curve", transform=transform, severity=severity
    )


COLUMNS = [
    standard_columns("accuracy"),
    _shift("constant", TRAINED_SHIFT, "consistency const. ±3 %"),
    _shift("constant", BEYOND_SHIFT, "consistency const. ±6 %"),
    _shift("circular", TRAINED_SHIFT, "consistency circ. ±3 %"),
    _curve("translate", "consistency", TRAINED_SHIFT, "agree diag. 3 px %"),
    _curve("translate", "consistency", BEYOND_SHIFT, "agree diag. 6 px %"),
    _curve("random_mask", "accuracy", 0.3, "acc. random mask 0.3 %"),
    _curve("random_mask", "accuracy", 0.5, "acc. random mask 0.5 %"),
    _curve("random_mask", "consistency", 0.5, "agree random mask 0.5 %"),
    standard_columns("params"),
    standard_columns("train_seconds"),
]


def get_config(profile="quick"):
    c = train_measure_config("augmentation", profile)
    c.train.augment = {}
    shifts = [
        {"fn": "shift_consistency", "max_shift": s, "mode": m, "pairs": "two_shifted"}
        for s, m in ((TRAINED_SHIFT, "constant"), (BEYOND_SHIFT, "constant"))
    ]
    shifts.append(
        {"fn": "shift_consistency", "max_shift": TRAINED_SHIFT, "mode": "circular"},
    )
    c.measure.protocols = [
        *shifts,
        {
            "fn": "severity_curve",
            "transform": "translate",
            "severities": list(range(1, BEYOND_SHIFT + 1)),
            "direction": "diagonal",
            "mode": "constant",
        },
        {"fn": "severity_curve", "transform": "random_mask", "severities": MASK_RATIOS},
    ]
    c.report = {
        "builder": "table",
        "columns": COLUMNS,
        "figures": ["accuracy_consistency", "severity_curves"],
    }
    return c


def get_sweep(profile="quick"):
    widths = get_config(profile).train.model_options.widths
    cells = [
        {
            "cell_name": f"{k}{a}",
            "train.model_options": {**KINDS[k], "widths": widths},
            "train.augment": AUGMENTS[a],
        }
        for k in KINDS
        for a in AUGMENTS
    ]
    return [c for c in cells if profile != "tiny" or c["cell_name"] in TINY_CELLS]
