"""What does each pooling kind cost in my model? Forward + backward time, as a ratio to max.

    python scripts/time_my_pooling.py [--batch 128] [--rounds 20] [--processes 2]

A research script on the public API only: a small network of our own with
``invariance.pooling.pool(x, kind, **options)`` in place of its pooling, the gradient of its
loss jitted per kind, and ``invariance.benchmarking`` to time the kinds the way the
framework's benchmarks do (interleaved rounds in a seeded random order, the median round,
fresh processes combined by the median; the ratio to max pooling measured in the same run).
"""

from __future__ import annotations

import argparse
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invariance import benchmarking, pooling

OPTIONS = {
    "max": {"window": 2},
    "avg": {"window": 2},
    "lp": {"p": 2.0, "window": 2},
    "max_blur": {"window": 2, "filter_size": 3},
    "aps": {},
}


class Net(nn.Module):
    """conv3x3(32) -> ReLU -> pool -> conv3x3(64) -> ReLU -> pool -> flatten -> dense(10)."""

    kind: str

    @nn.compact
    def __call__(self, x):
        for width in (32, 64):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            x = pooling.pool(x, self.kind, **OPTIONS[self.kind])
        return nn.Dense(10)(x.reshape(len(x), -1))


def one_process(batch: int, rounds: int, seed: int = 0) -> dict[str, float]:
    """Median seconds of one gradient step per kind, in this process."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch))
    calls = {}
    for kind in OPTIONS:
        net = Net(kind)
        params = net.init(jax.random.key(0), x[:1])

        def loss(p, net=net):
            return optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean()

        grad = jax.jit(jax.grad(loss))
        calls[kind] = lambda grad=grad, params=params: jax.block_until_ready(grad(params))
    return benchmarking.medians(benchmarking.interleaved(calls, rounds=rounds, seed=seed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args(argv)
    runs = benchmarking.in_processes(one_process, args.processes, args.batch, args.rounds)
    times = benchmarking.combine(runs)
    print(f"batch {args.batch}; {args.rounds} rounds x {args.processes} fresh processes\n")
    print("| kind | options | ms (fwd + bwd) | / max |")
    print("| --- | --- | --- | --- |")
    for kind, seconds in times.items():
        ratio = benchmarking.ratio(times, kind, "max")
        print(f"| {kind} | {OPTIONS[kind]} | {seconds * 1e3:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
