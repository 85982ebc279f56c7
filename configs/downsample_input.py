"""Seed 002's claim: resizing the input to 14x14 instead of the first max pool keeps reasonable
accuracy. SmallCNN(max) against DownsampleInput(14) (resize -> conv -> conv-pool -> head).

Command:  invariance sweep downsample_input --profile quick
          invariance report runs/downsample_input-quick
Runtime:  quick ~1 min on a 2-core CPU; full (2 cells, 60k images, 6 epochs, 3 seeds),
          measured on the 2-core CPU by `invariance reproduce --profile full --processes 2`
          (one core a cell, next to another cell): "max pool (28 -> 14)" trains nothing (it
          takes the pooling table's max models, same training config) and measured in 34 s;
          "resize input to 14" trained in 562 s (6 epochs of 84-118 s) and measured in 38 s.
          On one GPU a few minutes, an estimate never measured on a GPU.
Numbers:  results/quick/downsample_input.md, results/full/downsample_input.md.
"""

from invariance.experiment import train_measure_config
from invariance.report import consistency_column, standard_columns

COLUMNS = [
    standard_columns("accuracy"),
    consistency_column("circular", "consistency circ. ±3 %"),
    consistency_column("constant", "consistency const. ±3 %"),
    standard_columns("params"),
    standard_columns("train_seconds"),
]


def get_config(profile="quick"):
    c = train_measure_config("downsample_input", profile)
    c.measure.protocols = [
        {"fn": "shift_consistency", "max_shift": 3, "mode": "circular", "pairs": "two_shifted"},
        {"fn": "shift_consistency", "max_shift": 3, "mode": "constant", "pairs": "two_shifted"},
    ]
    c.report = {"builder": "table", "columns": COLUMNS, "figures": ["sensitivity_profile"]}
    return c


def get_sweep(profile="quick"):
    widths = get_config(profile).train.model_options.widths
    return [
        {
            "cell_name": "max pool (28 -> 14)",
            "train.model": "small_cnn",
            "train.model_options": {"pool": "max", "widths": widths},
        },
        {
            "cell_name": "resize input to 14",
            "train.model": "downsample_input",
            "train.model_options": {"size": 14, "pool": "max", "widths": widths},
        },
    ]
