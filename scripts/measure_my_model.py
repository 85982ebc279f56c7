"""Measure your own Flax model with the framework's protocols and print a table.

    python scripts/measure_my_model.py [--pool blur] [--epochs 2] [--images 1000]
    python scripts/measure_my_model.py --dataset synthetic --train-examples 256 --images 32

A research script on the public API only: a small network of our own (not one of
``invariance.models``), trained with ``invariance.train.train(config, model=...)``, then
measured through a plain ``apply_fn(variables, images) -> logits`` -- any function of that
shape works, a model from another codebase included. The pooling inside the network is a
choice (``--pool``): flax.linen's max pooling, or ``invariance.pooling.max_blur_pool`` (Zhang
2019's anti-aliased max pooling), to ask whether blurring buys stability in *your* model.

Rows: the protocols of :data:`MEASUREMENTS`, looked up by name in ``measure.PROTOCOLS``
(every protocol is ``fn(apply_fn, variables, images, *, labels, key, chunk_size, **options)``):
shift consistency (Zhang 2019, circular shifts of up to 3 px); the one-pixel diagonal flip rate
(Azulay & Weiss 2019); accuracy and consistency with the clean prediction under random masking
at three ratios. Add a row by adding a (name, options) pair.
"""

from __future__ import annotations

import argparse
import sys

import flax.linen as nn
import jax
import numpy as np

from invariance import data, measure, pooling, train

POOLS = ("max", "blur")


class MyNet(nn.Module):
    """conv3x3(16) -> ReLU -> pool -> conv3x3(32) -> ReLU -> pool -> mean -> dense(10)."""

    pool: str = "max"

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        for width in (16, 32):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            if self.pool == "blur":
                x = pooling.max_blur_pool(x, window=2, filter_size=3)
            else:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def trained(args) -> tuple[nn.Module, dict]:
    """``MyNet`` trained by ``invariance.train.train``; returns the module and one seed's
    variables."""
    config = train.default_config()
    config.dataset = args.dataset
    config.num_epochs = args.epochs
    config.train_examples = args.train_examples
    config.eval_examples = args.images
    config.batch_size = min(128, args.train_examples)
    config.progress = False
    result = train.train(config, model=MyNet(pool=args.pool))
    seed0 = jax.tree.map(lambda a: a[0], result.variables)  # variables are stacked over seeds
    return result.model, seed0


# (protocol name in measure.PROTOCOLS, its options): every protocol has one call signature.
MEASUREMENTS = [
    ("shift_consistency", {"max_shift": 3, "mode": "circular"}),
    ("one_pixel_flip_rate", {"max_offset": 1}),
    ("severity_curve", {"transform": "random_mask", "severities": [0.1, 0.3, 0.5]}),
]


def measure_all(apply_fn, variables, images, labels) -> list[dict]:
    """The rows of every protocol in :data:`MEASUREMENTS`, looked up in the registry (the
    one-pixel protocol's per-position rows dropped: its overall row is kept)."""
    rows = []
    for name, options in MEASUREMENTS:
        protocol = measure.get_protocol(name)
        out = protocol(apply_fn, variables, images, labels=labels, key=jax.random.key(0), **options)
        rows += [r for r in out if r.get("position") is None]
    return rows


def stability(row: dict) -> tuple[str, float]:
    """The row's stability column: consistency, or 1 - P(top-1 change)."""
    if row.get("consistency") is not None:
        return "consistency", row["consistency"]
    return "1 - P(top-1 change)", 1 - row["p_top1_change"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", choices=POOLS, default="blur")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-examples", type=int, default=12000)
    ap.add_argument("--images", type=int, default=1000, help="test images measured")
    args = ap.parse_args(argv)
    model, variables = trained(args)

    def apply_fn(variables, images):  # any (variables, float images) -> logits function
        return model.apply(variables, images, train=False)

    images, labels = data.load(args.dataset, "test")
    images, labels = images[: args.images], np.asarray(labels[: args.images])
    print(
        f"MyNet(pool={args.pool!r}), {args.epochs} epoch(s) on {args.train_examples} "
        f"{args.dataset} images; {len(images)} test images\n"
    )
    print("| protocol | transform | severity | accuracy | stability | value |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in measure_all(apply_fn, variables, images, labels):
        what, value = stability(row)
        print(
            f"| {row['protocol']} | {row['transform']} | {row['severity']} | "
            f"{row['accuracy']:.4f} | {what} | {value:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
