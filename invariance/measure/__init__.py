"""Measurement protocols: model x transform family x severity -> tidy rows.

Each protocol follows the paper it names (docs/protocols.md) and returns rows
that record how the number was made, so results are comparable with the literature and any
number can be regenerated.

Conventions
-----------
* **One signature.** Every protocol is ``fn(apply_fn, variables, images, *, labels=None,
  key=None, chunk_size=None, **options) -> rows`` and is registered by name in
  :data:`PROTOCOLS` (:func:`register`); :func:`get_protocol` looks one up and
  :func:`validate_protocol` checks a name and its options against an image shape without
  computing anything (the same checks the protocol runs first). A protocol that needs
  ``labels`` or ``key`` raises a one-line ValueError without them.
* **Models.** ``apply_fn(variables, images) -> logits (n, K)`` for float32 images
  ``(n, H, W, C)``; per-layer protocols take a features function ``apply_fn(variables,
  images) -> {name: (n, ...) array}`` instead (a Flax model exposes both with
  ``model.apply`` and e.g. ``capture_intermediates`` / ``sow``), and
  :func:`pooling_stability` takes ``None`` (no model). Both are plain functions: each
  protocol closes over them in one ``jax.jit``-ed per-chunk function built per call (never
  cached globally).
* **Images** ``(N, H, W, C)``: uint8 are scaled to float32 in [0, 1] (divided by 255) inside
  the jitted step, floats are cast to float32. Shifts, fills and noise levels act on that
  float scale.
* **Chunks.** Images stream through in chunks of ``chunk_size`` images; the default
  (``None``) sizes chunks so that one forward call sees about 64 model inputs on the CPU
  (the fastest batch there; larger calls are slower, much slower under glibc's default
  malloc: see ``_core.MODEL_BATCH``) and 1024 on a GPU or TPU. Every chunk is padded to the
  same size so the step compiles once, and one call evaluates the chunk
  under every transform of the protocol (a ``vmap`` over the transform parameters; grid
  protocols accept ``transform_batch`` to bound memory with ``lax.map``). Per-image values
  come back to the host and are averaged there in float64.
* **Randomness.** Image ``i`` (its global index) uses ``jax.random.fold_in(key, i)``; the
  key's data is logged as ``seed``. Protocols without randomness take no key
  (``seed=None``).
* **Chunking changes nothing** but rounding: every image gets the same draws and the same
  transforms whatever ``chunk_size``, so counting columns (consistency, accuracy, flip
  rates) are identical. Float columns (distances, probabilities) can differ in the last
  float32 bits, because XLA rounds a reduction or a matmul differently for different batch
  shapes (on the CPU even ``jnp.sum(x, -1)`` of one row depends on how many rows there are).
* **Rows** are dicts of JSON-serialisable Python scalars and strings (``seed`` is a list of
  ints). Every row has the keys of :data:`ROW_KEYS` -- ``protocol``, ``transform``,
  ``severity``, ``mode`` ("circular" / "constant" for shifts), ``pairs`` (what is compared
  with what), ``max_shift``, ``shift_range`` (``"lo..hi"``), ``seed``, ``n_images`` -- with
  ``None`` where a field does not apply, followed by the protocol's metric columns. Always
  report accuracy next to a stability figure: the output-level protocols carry it.
* **Errors.** Bad options raise a one-line ``ValueError`` naming the valid choices: integers
  where integers are meant, finite numbers, ratios in [0, 1], shifts and offsets smaller than
  the image. Images holding NaN or inf are refused, and so are NaN model outputs: ``argmax``
  of NaN logits is class 0 on every view, which would read as perfect agreement.

Protocols
---------
* :func:`shift_consistency` -- Zhang 2019 consistency under random shifts.
* :func:`one_pixel_flip_rate` -- Azulay & Weiss 2019 P(top-1 change) and MAC.
* :func:`cifar_p_flip_rate` -- Hendrycks & Dietterich 2019 flip probability.
* :func:`spatial_grid_accuracy` -- Engstrom et al. 2019 grid and worst-case accuracy.
* :func:`severity_curve` -- accuracy / consistency / logit change per severity.
* :func:`occlusion_sensitivity_map` -- Zeiler & Fergus 2014 (per-image maps:
  :func:`occlusion_maps`).
* :func:`translation_sensitivity_map` -- Kauderer-Abrams 2017 maps and radial profiles as rows
  (arrays: :func:`translation_maps`).
* :func:`layer_stability` -- per-layer feature distance under a transform.
* :func:`equivariance_error` -- shift equivariance of a feature map.
* :func:`pooling_stability` -- pooling operators alone, no model.
"""

from invariance.measure._core import DIRECTIONS, MODES, PAIRS, ROW_KEYS, TRANSFORMS
from invariance.measure._registry import (
    COMMON_ARGS,
    PROTOCOL_SPECS,
    PROTOCOLS,
    ProtocolSpec,
    describe_protocols,
    get_protocol,
    register,
    validate_protocol,
)
from invariance.measure.corruptions import (
    occlusion_maps,
    occlusion_sensitivity_map,
    severity_curve,
)
from invariance.measure.pools import pooling_stability
from invariance.measure.representations import (
    equivariance_error,
    layer_stability,
    translation_maps,
    translation_sensitivity_map,
)
from invariance.measure.shifts import (
    cifar_p_flip_rate,
    one_pixel_flip_rate,
    shift_consistency,
    spatial_grid_accuracy,
)

__all__ = [
    "COMMON_ARGS",
    "DIRECTIONS",
    "MODES",
    "PAIRS",
    "PROTOCOLS",
    "PROTOCOL_SPECS",
    "ROW_KEYS",
    "ProtocolSpec",
    "TRANSFORMS",
    "cifar_p_flip_rate",
    "describe_protocols",
    "equivariance_error",
    "get_protocol",
    "layer_stability",
    "occlusion_maps",
    "occlusion_sensitivity_map",
    "one_pixel_flip_rate",
    "pooling_stability",
    "register",
    "severity_curve",
    "shift_consistency",
    "spatial_grid_accuracy",
    "translation_maps",
    "translation_sensitivity_map",
    "validate_protocol",
]
