"""Pooling alone, no model: how far does each pooling kind's output move under a rotation?

    python scripts/pooling_under_rotation.py [--degrees 5 15 30] [--images 500]
    python scripts/pooling_under_rotation.py --dataset synthetic --images 16 --degrees 10

A research script on the public API only. For each pooling kind and each angle, the mean over
images of ``||pool(x) - pool(rotate(x))|| / ||pool(x)||`` (``invariance.measure``'s
``pooling_stability``), next to the same distance without pooling (the "identity" row): a
kind below the identity row damps the rotation's change, one above amplifies it. A second
column recomputes max pooling's distance by hand from ``invariance.pooling`` and
``invariance.transforms``, so the table can be checked without trusting the protocol.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from invariance import data, measure, pooling, transforms

KINDS = ("max", "avg", "lp", "max_blur", "aps")


def by_hand(images: np.ndarray, degrees: float) -> float:
    """Max pooling's mean relative L2 change under ``rotate(degrees)``, computed directly."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    turned = jax.vmap(lambda im: transforms.rotate(im, degrees=degrees))(x)
    a = pooling.max_pool(x, window=2)
    b = pooling.max_pool(turned, window=2)
    num = jnp.linalg.norm((a - b).reshape(len(x), -1), axis=1)
    den = jnp.linalg.norm(a.reshape(len(x), -1), axis=1)
    return float(jnp.mean(num / den))


def table(images: np.ndarray, degrees: list[float]) -> dict[str, list[float]]:
    """kind (and "identity") -> the relative L2 change at each angle."""
    out: dict[str, list[float]] = {}
    for deg in degrees:
        rows = measure.pooling_stability(  # no model: apply_fn and variables are None
            None,
            None,
            images,
            key=jax.random.key(0),
            transform="rotate",
            kinds=list(KINDS),
            severity=deg,
        )
        for row in rows:
            out.setdefault(row["kind"], []).append(row["relative_l2"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--degrees", type=float, nargs="+", default=[5.0, 15.0, 30.0])
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--images", type=int, default=500)
    args = ap.parse_args(argv)
    images, _ = data.load(args.dataset, "test")
    images = np.asarray(images[: args.images])
    rel = table(images, args.degrees)
    print(f"{len(images)} {args.dataset} test images; relative L2 change of the pooled map\n")
    print("| kind | " + " | ".join(f"{d:g} deg" for d in args.degrees) + " |")
    print("| --- |" + " --- |" * len(args.degrees))
    for kind, values in rel.items():
        print(f"| {kind} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    hand = [by_hand(images, d) for d in args.degrees]
    print("| max, by hand | " + " | ".join(f"{v:.4f}" for v in hand) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
