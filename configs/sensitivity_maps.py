"""Translation-sensitivity maps and radial profiles (Kauderer-Abrams 2017) per pooling choice.

Command:  invariance sweep sensitivity_maps --profile quick
          invariance report runs/sensitivity_maps-quick
Runtime:  quick ~3 min on a 2-core CPU; full ~20 GPU minutes (an estimate,
          never measured on a GPU).
Numbers:  results/quick/sensitivity_maps.md (the pooling table's cells also carry a map).
"""

from invariance.experiment import train_measure_config

KINDS = {
    "max": {"pool": "max"},
    "avg": {"pool": "avg"},
    "max_blur (3)": {"pool": "max_blur", "pool_options": {"filter_size": 3}},
    "aps": {"pool": "aps"},
    "strided_conv": {"pool": "strided_conv"},
}


def get_config(profile="quick"):
    c = train_measure_config("sensitivity_maps", profile)
    c.measure.protocols = [
        {"fn": "translation_sensitivity_map", "max_shift": 8 if profile == "full" else 6},
    ]
    return c


def get_sweep(profile="quick"):
    widths = get_config(profile).train.model_options.widths
    kinds = ("max", "aps") if profile == "tiny" else tuple(KINDS)
    return [{"cell_name": k, "train.model_options": {**KINDS[k], "widths": widths}} for k in kinds]
