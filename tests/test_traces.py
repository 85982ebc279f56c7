"""Every protocol compiles its per-chunk step once, however many chunks the images make.

The measure module pads the last chunk to the common size so that one compiled program serves
every chunk (docs/protocols.md, "Conventions"). A model function is called in Python only while
JAX traces it, so ``chex.assert_max_traces`` on the model counts the step's traces: a run over
three chunks (the last one padded) must trace the model no more often than a run over one.
"""

import chex
import jax
import numpy as np
import pytest

from invariance import measure

N = 7  # with CHUNK = 3: chunks of 3, 3 and 1 (padded to 3)
CHUNK = 3
IMAGES = np.random.default_rng(0).uniform(size=(N, 8, 8, 1)).astype(np.float32)
LABELS = np.arange(N, dtype=np.int32) % 3
WEIGHTS = jax.random.normal(jax.random.key(0), (8 * 8, 3))
KEY = jax.random.key(1)


def linear_net(params, x):
    """``(n, 8, 8, 1) -> (n, 3)`` logits: a linear classifier on the flattened image."""
    return x.reshape(x.shape[0], -1) @ params


PROTOCOLS = {
    "shift_consistency": lambda f, c: measure.shift_consistency(
        f, WEIGHTS, IMAGES, labels=LABELS, key=KEY, max_shift=2, chunk_size=c
    ),
    "one_pixel_flip_rate": lambda f, c: measure.one_pixel_flip_rate(
        f, WEIGHTS, IMAGES, labels=LABELS, max_offset=2, chunk_size=c
    ),
    "cifar_p_flip_rate": lambda f, c: measure.cifar_p_flip_rate(
        f, WEIGHTS, IMAGES, labels=LABELS, shift_min=-2, shift_max=2, chunk_size=c
    ),
    "severity_curve": lambda f, c: measure.severity_curve(
        f,
        WEIGHTS,
        IMAGES,
        labels=LABELS,
        key=KEY,
        transform="random_mask",
        severities=[0.1, 0.3],
        chunk_size=c,
    ),
    "spatial_grid_accuracy": lambda f, c: measure.spatial_grid_accuracy(
        f, WEIGHTS, IMAGES, labels=LABELS, num_shifts=2, num_angles=2, chunk_size=c
    ),
    "occlusion_sensitivity_map": lambda f, c: measure.occlusion_sensitivity_map(
        f, WEIGHTS, IMAGES, labels=LABELS, size=4, stride=4, chunk_size=c
    ),
    "translation_sensitivity_map": lambda f, c: measure.translation_sensitivity_map(
        f, WEIGHTS, IMAGES, max_shift=1, chunk_size=c
    ),
}


def _traced_calls(run) -> int:
    """How many times ``run(net)`` calls ``net`` on traced values (i.e. while JAX traces it)."""
    calls = [0]

    def net(params, x):
        calls[0] += isinstance(x, jax.core.Tracer)
        return linear_net(params, x)

    run(net)
    return calls[0]


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocol_traces_its_step_once_over_padded_chunks(name):
    call = PROTOCOLS[name]
    one_chunk = _traced_calls(lambda f: call(f, N))
    assert one_chunk >= 1
    chex.clear_trace_counter()
    call(chex.assert_max_traces(linear_net, n=one_chunk), CHUNK)
    # The check bites: a second run builds a new jitted step, so it traces the model again.
    with pytest.raises(AssertionError, match="traced > "):
        call(chex.assert_max_traces(linear_net, n=one_chunk), CHUNK)
    chex.clear_trace_counter()
