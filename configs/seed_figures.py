"""Masking claims 1-4 of docs/seeds.md on Fashion-MNIST T-shirts, as figures and numbers.

Command:  invariance sweep seed_figures --profile quick && invariance report runs/seed_figures-quick
Runtime:  quick ~1 min on a 2-core CPU; full (1000 images, 20 probe seeds): 8.5 min, measured
          on the 2-core CPU (one process on both cores; config.json to done.json).
Numbers:  results/quick/seed_figures.md, results/full/seed_figures.md.

Pooling alone (max, avg, min; 2x2, stride 2 and stride 1) and the two Probe networks
(Conv(2x2) -> MaxPool(2x2, stride 1) -> Conv(2x2) against Conv(2x2) -> Conv(2x2), random
initialisation, several seeds) under random masking 0.1-0.5, vertical / horizontal / grid line
masks and inverse masking (pixels set to the image maximum): relative L2 change of the output,
next to the change of the input itself.
"""

import ml_collections


def get_config(profile="quick"):
    c = ml_collections.ConfigDict()
    c.name = "seed_figures"
    c.cell_name = "seed_figures"
    c.experiment = "seed_figures"
    c.profile = profile
    c.progress = True
    c.dataset = "synthetic" if profile == "tiny" else "fashion_mnist"
    transforms = [{"transform": "random_mask", "severity": r} for r in (0.1, 0.2, 0.3, 0.4, 0.5)]
    transforms += [
        {"transform": "line_mask", "severity": 4, "orientation": o}
        for o in ("vertical", "horizontal", "grid")
    ]
    transforms += [{"transform": "inverse_mask", "severity": r} for r in (0.1, 0.3, 0.5)]
    c.seed_figures = ml_collections.ConfigDict(
        {
            "class_index": 0,  # T-shirt/top
            "num_images": {"tiny": 32, "quick": 300, "full": 1000}[profile],
            "num_examples": 4,
            "seed": 0,
            "transforms": transforms,
            "pool_kinds": ["max", "avg", "min"],
            "pool_options": {"max": {"window": 2}, "avg": {"window": 2}, "min": {"window": 2}},
            "probe_pools": ["none", "max"] if profile != "full" else ["none", "max", "avg"],
            "probe_seeds": {"tiny": 2, "quick": 3, "full": 20}[profile],
        }
    )
    c.report = {"builder": "seed_figures"}  # figures and a relative-change table
    return c
