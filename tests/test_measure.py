"""Tests for invariance.measure: loop references, exact invariances, chunking, rows, errors.

Models are tiny hand-made functions of a params dict: a linear classifier (fast to compile,
used for the loop references) and three circular-convolution networks (global average pooling,
APS downsampling, max-pool downsampling with a dense head) for the invariance properties.
Images are small random arrays; nothing is downloaded.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from invariance import measure, metrics, pooling
from invariance import transforms as T
from invariance.measure import _core

KEY = jax.random.key(0)
translate_j = jax.jit(T.translate, static_argnames="mode")  # shifts traced: one compile
N, H, W, CH, K = 64, 16, 16, 1, 10


def _images(n=N, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, H, W, CH)).astype(np.float32)


def _labels(n=N, seed=1):
    return np.random.default_rng(seed).integers(0, K, n).astype(np.int32)


IMAGES, LABELS = _images(), _labels()

# ----------------------------------------------------------------------------- models


def _linear_params(seed=0):
    r = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(r.normal(size=(H * W * CH, K)) / 8, jnp.float32),
        "b": jnp.asarray(r.normal(size=(K,)), jnp.float32),
    }


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


LIN = _linear_params()


def _conv(x, w):
    """Circular 3x3 convolution, stride 1: wrap-pad by 1, then a VALID convolution."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    return lax.conv_general_dilated(
        xp, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _conv_params(seed=0, dense_in=8):
    r = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(r.normal(size=shape) / np.sqrt(np.prod(shape[:-1])), jnp.float32)

    return {"c1": normal(3, 3, CH, 8), "c2": normal(3, 3, 8, 8), "d": normal(dense_in, K)}


def gap_features(params, x):
    h1 = jax.nn.relu(_conv(x, params["c1"]))
    h2 = jax.nn.relu(_conv(h1, params["c2"]))
    return {"conv1": h1, "conv2": h2, "logits": jnp.mean(h2, axis=(1, 2)) @ params["d"]}


def gap_net(params, x):
    return gap_features(params, x)["logits"]


def aps_net(params, x):
    h = pooling.aps_pool(jax.nn.relu(_conv(x, params["c1"])), stride=2)
    h = pooling.aps_pool(jax.nn.relu(_conv(h, params["c2"])), stride=2)
    return jnp.mean(h, axis=(1, 2)) @ params["d"]


def maxpool_net(params, x):
    h = pooling.max_pool(jax.nn.relu(_conv(x, params["c1"])), 2)
    h = pooling.max_pool(jax.nn.relu(_conv(h, params["c2"])), 2)
    h = h - jnp.mean(h, axis=(1, 2), keepdims=True)  # centred, so no one class always wins
    return h.reshape(h.shape[0], -1) @ params["d"]


GAP = _conv_params()
DENSE = _conv_params(dense_in=(H // 4) * (W // 4) * 8)


def _pred(logits):
    return np.argmax(np.asarray(logits), axis=-1)


def _check_rows(rows, protocol):
    for row in rows:
        assert set(measure.ROW_KEYS) <= set(row)
        assert row["protocol"] == protocol
        assert json.loads(json.dumps(row)) == row


# ----------------------------------------------------------------------------- loop references


@pytest.mark.parametrize(
    ("pairs", "chunk_size"), [("two_shifted", 5), ("original_vs_shifted", 1000)]
)
def test_shift_consistency_matches_loop(pairs, chunk_size):
    x, y, s, num_pairs = IMAGES[:16], LABELS[:16], 3, 2
    rows = measure.shift_consistency(
        linear,
        LIN,
        x,
        key=KEY,
        labels=y,
        max_shift=s,
        mode="constant",
        pairs=pairs,
        num_pairs=num_pairs,
        chunk_size=chunk_size,
    )
    agree = []
    for i in range(len(x)):
        for p in range(num_pairs):
            k = jax.random.fold_in(jax.random.fold_in(KEY, i), p)
            off = np.asarray(jax.random.randint(k, (2, 2), -s, s + 1))
            a = translate_j(x[i], dy=off[0, 0], dx=off[0, 1], mode="constant")
            b = translate_j(x[i], dy=off[1, 0], dx=off[1, 1], mode="constant")
            if pairs == "original_vs_shifted":
                a, b = x[i], a
            agree.append(_pred(linear(LIN, a[None])) == _pred(linear(LIN, b[None])))
    (row,) = rows
    _check_rows(rows, "shift_consistency")
    assert row["consistency"] == pytest.approx(np.mean(agree), abs=1e-12)
    assert row["accuracy"] == pytest.approx(np.mean(_pred(linear(LIN, x)) == y), abs=1e-12)
    assert 0.0 < row["consistency"] < 1.0
    assert (row["pairs"], row["mode"], row["max_shift"], row["shift_range"]) == (
        pairs,
        "constant",
        3,
        "-3..3",
    )
    assert row["seed"] == jax.random.key_data(KEY).tolist() and row["n_images"] == 16


def test_severity_curve_matches_loop():
    x, y, ratios = IMAGES[:16], LABELS[:16], [0.0, 0.25, 0.5]
    rows = measure.severity_curve(
        linear,
        LIN,
        x,
        labels=y,
        transform="random_mask",
        severities=ratios,
        key=KEY,
        fill=0.5,
        chunk_size=5,
    )
    _check_rows(rows, "severity_curve")
    clean = np.asarray(linear(LIN, x))
    for row, r in zip(rows, ratios, strict=True):
        masked = np.stack(
            [T.random_mask(jax.random.fold_in(KEY, i), x[i], ratio=r, fill=0.5) for i in range(16)]
        )
        logits = np.asarray(linear(LIN, masked))
        rel = np.linalg.norm(clean - logits, axis=1) / np.linalg.norm(clean, axis=1)
        assert row["severity"] == r and row["fill"] == 0.5
        assert row["accuracy"] == pytest.approx(np.mean(_pred(logits) == y), abs=1e-12)
        assert row["clean_accuracy"] == pytest.approx(np.mean(_pred(clean) == y), abs=1e-12)
        assert row["consistency"] == pytest.approx(np.mean(_pred(logits) == _pred(clean)))
        assert row["relative_l2"] == pytest.approx(rel.mean(), rel=1e-5, abs=1e-7)
    assert rows[0]["consistency"] == 1.0 and rows[0]["relative_l2"] == 0.0
    assert rows[2]["relative_l2"] > rows[1]["relative_l2"] > 0


def test_flip_rates_match_loop():
    x, m = IMAGES[:12], 2
    logits = np.stack(
        [
            np.asarray(linear(LIN, translate_j(x, dy=d, dx=d, mode="constant")))
            for d in range(-m, m + 1)
        ],
        axis=1,
    )  # (n, F, K)
    rows = measure.one_pixel_flip_rate(linear, LIN, x, max_offset=m)
    _check_rows(rows, "one_pixel_flip_rate")
    assert [r["position"] for r in rows] == [-2, -1, 0, 1, None]
    prob = np.asarray(jax.nn.softmax(logits, axis=-1))
    changes, macs = [], []
    for j in range(2 * m):
        a, b = _pred(logits[:, j]), _pred(logits[:, j + 1])
        mac = np.abs(prob[np.arange(12), j, a] - prob[np.arange(12), j + 1, a])
        changes.append(np.mean(a != b))
        macs.append(mac.mean())
        assert rows[j]["p_top1_change"] == pytest.approx(changes[-1], abs=1e-12)
        assert rows[j]["mac"] == pytest.approx(macs[-1], rel=1e-5)
    assert rows[-1]["p_top1_change"] == pytest.approx(np.mean(changes), abs=1e-12)
    assert rows[-1]["mac"] == pytest.approx(np.mean(macs), rel=1e-5)

    rows = measure.cifar_p_flip_rate(
        linear, LIN, x, shift_min=-2, shift_max=3, direction="vertical"
    )
    _check_rows(rows, "cifar_p_flip_rate")
    frames = np.stack(
        [_pred(linear(LIN, translate_j(x, dy=d, dx=0, mode="constant"))) for d in range(-2, 4)], 1
    )
    assert rows[0]["flip_rate"] == pytest.approx(np.mean(frames[:, 1:] != frames[:, :-1]))
    assert rows[0]["n_frames"] == 6 and rows[0]["shift_range"] == "-2..3"


def test_occlusion_map_shapes_and_values():
    x, y = IMAGES[:5], LABELS[:5]
    out = measure.occlusion_maps(linear, LIN, x, labels=y, size=6, stride=4, fill="mean")
    assert out["p_true"].shape == out["top_class"].shape == (5, 3, 3)
    np.testing.assert_array_equal(out["tops"], [0, 4, 8])
    _check_rows(out["rows"], "occlusion_sensitivity")
    i, a, b = 3, 1, 2
    occ = T.occlude(x[i], top=4 * a, left=4 * b, height=6, width=6, fill=float(x[i].mean()))
    logits = linear(LIN, occ[None])
    np.testing.assert_allclose(out["p_true"][i, a, b], jax.nn.softmax(logits)[0, y[i]], rtol=1e-5)
    assert out["top_class"][i, a, b] == _pred(logits)[0]
    drop = out["clean_p_true"][:, None, None] - out["p_true"]
    assert out["rows"][0]["mean_drop"] == pytest.approx(drop.mean(), rel=1e-5)
    assert out["rows"][0]["n_positions"] == 9


# ----------------------------------------------------------------------------- identities


SEVERITY_ZERO = [
    ("random_mask", 0.0, {}),
    ("inverse_mask", 0.0, {}),
    ("line_mask", 0, {"vary": "width", "orientation": "grid"}),
    ("occlusion", 0, {"position": "random"}),
    ("gaussian_noise", 0.0, {}),
    ("translate", 0, {"direction": "diagonal", "mode": "constant"}),
    ("rotate", 0.0, {}),
]


@pytest.mark.parametrize(("transform", "zero", "options"), SEVERITY_ZERO)
def test_severity_zero_is_identity(transform, zero, options):
    sev = [zero, 4] if transform in ("line_mask", "occlusion", "translate") else [zero, 0.3]
    rows = measure.severity_curve(
        linear,
        LIN,
        IMAGES[:8],
        labels=LABELS[:8],
        transform=transform,
        severities=sev,
        key=KEY,
        **options,
    )
    assert rows[0]["consistency"] == 1.0 and rows[0]["relative_l2"] == 0.0
    assert rows[0]["accuracy"] == rows[0]["clean_accuracy"]
    assert rows[1]["relative_l2"] > 0
    assert set(T.FILLS) | {0.0, None} >= {rows[0]["fill"]}
    _check_rows(rows, "severity_curve")


def test_zero_shift_is_identity():
    (row,) = measure.shift_consistency(gap_net, GAP, IMAGES[:8], key=KEY, max_shift=0)
    assert row["consistency"] == 1.0
    out = measure.translation_maps(
        measure.translation_sensitivity_map(gap_net, GAP, IMAGES[:8], max_shift=0)
    )
    assert out["map"].shape == (1, 1) and out["map"][0, 0] == 0.0
    assert out["cosine_map"][0, 0] == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- invariance


@pytest.mark.parametrize(
    ("net", "pairs"),
    [(gap_net, "two_shifted"), (gap_net, "original_vs_shifted"), (aps_net, "two_shifted")],
    ids=["gap-two", "gap-orig", "aps-two"],
)
def test_circular_networks_are_exactly_shift_consistent(net, pairs):
    (row,) = measure.shift_consistency(
        net, GAP, IMAGES, key=KEY, max_shift=3, pairs=pairs, num_pairs=2
    )
    assert row["consistency"] == 1.0


def test_maxpool_dense_network_is_not_shift_consistent():
    (row,) = measure.shift_consistency(maxpool_net, DENSE, IMAGES, key=KEY, max_shift=3)
    assert row["consistency"] < 1.0


def test_equivariance_error_of_circular_convolutions():
    shifts = [(0, 0), (1, -2), (3, 5)]
    rows = measure.equivariance_error(
        gap_features, GAP, IMAGES[:8], layer="conv2", total_stride=1, shifts=shifts
    )
    _check_rows(rows, "equivariance_error")
    assert [(r["dy"], r["dx"]) for r in rows] == shifts
    assert max(r["relative_l2"] for r in rows) < 1e-6
    with pytest.raises(ValueError, match="not divisible by total_stride=2"):
        measure.equivariance_error(
            gap_features, GAP, IMAGES[:8], layer="conv2", total_stride=2, shifts=[(2, 1)]
        )


def test_translation_sensitivity_map_profile():
    rows = measure.translation_sensitivity_map(
        gap_features, GAP, IMAGES[:8], max_shift=2, layer="conv1"
    )
    out = measure.translation_maps(rows)
    assert out["map"].shape == out["cosine_map"].shape == (5, 5)
    np.testing.assert_array_equal(out["radii"], [0, 1, 2, 3])
    radii, profile = metrics.radial_profile(jnp.asarray(out["map"]))
    np.testing.assert_allclose(out["profile"], profile, rtol=1e-6)
    assert out["map"][2, 2] == 0.0 and out["map"][2, 3] > 0.0
    _check_rows(rows, "translation_sensitivity")
    cells = [r for r in rows if r["aggregate"] == "cell"]
    assert len(cells) == 25 and cells[0]["layer"] == "conv1"
    # Circular shifts leave globally pooled logits unchanged.
    logits = measure.translation_sensitivity_map(gap_net, GAP, IMAGES[:8], max_shift=2)
    assert measure.translation_maps(logits)["map"].max() < 1e-5


# ----------------------------------------------------------------------------- chunking


def test_chunk_images_aims_each_forward_call_at_the_model_batch(monkeypatch):
    monkeypatch.setitem(_core.MODEL_BATCH, jax.default_backend(), 64)
    assert _core.model_batch() == 64
    assert _core.chunk_images(None, 32) == 2
    assert _core.chunk_images(None, 200) == 1  # never 0
    assert _core.chunk_images(None, 1) == 64
    assert _core.chunk_images(5, 32) == 5  # an explicit size wins
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        _core.chunk_images(0, 1)
    assert _core.grid_chunking(None, 4, 9) == (16, 4)  # 4 transforms per forward call
    assert _core.grid_chunking(None, None, 9) == (7, None)  # all 9 at once
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        _core.grid_chunking(0, 0, 9)  # chunk_size is checked first, as before it had a default
    with pytest.raises(ValueError, match="transform_batch must be an int >= 1"):
        _core.grid_chunking(None, 0, 9)


def _recording_net():
    """``(net, seen)``: maxpool_net that records, at trace time, the images per forward call
    (the views are vmapped, so this is the chunk of images)."""
    seen = []

    def net(params, x):
        seen.append(x.shape[0])
        return maxpool_net(params, x)

    return net, seen


def test_default_chunk_counts_the_views_of_each_image(monkeypatch):
    monkeypatch.setitem(_core.MODEL_BATCH, jax.default_backend(), 16)
    net, seen = _recording_net()
    measure.shift_consistency(net, DENSE, IMAGES, key=KEY, num_pairs=4)  # 8 views / image
    assert seen == [2]
    seen.clear()
    measure.severity_curve(
        net,
        DENSE,
        IMAGES,
        labels=LABELS,
        transform="gaussian_noise",
        severities=[0.1, 0.2],
        key=KEY,
    )
    assert set(seen) == {8}  # 2 views / image (and the clean call on the same chunk)


def test_default_chunk_counts_the_transforms_evaluated_at_once(monkeypatch):
    # Grid protocols evaluate transform_batch transforms per forward call (lax.map), or all.
    monkeypatch.setitem(_core.MODEL_BATCH, jax.default_backend(), 24)
    net, seen = _recording_net()
    occ = dict(size=8, stride=4)  # 9 positions on 16x16 images
    measure.occlusion_sensitivity_map(net, DENSE, IMAGES, labels=LABELS, **occ)
    assert max(seen) == 2  # 24 // 9
    seen.clear()
    measure.occlusion_sensitivity_map(net, DENSE, IMAGES, labels=LABELS, transform_batch=3, **occ)
    assert max(seen) == 8  # 24 // 3


# Columns that count events (exact whenever the per-image draws are the same); the others are
# float means, which XLA may round differently for different batch shapes (see measure docs).
COUNTS = {"consistency", "accuracy", "clean_accuracy", "top_class_change", "worst_case_accuracy"}


def _assert_rows_match(small, big):
    assert len(small) == len(big)
    for a, b in zip(small, big, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float) and k not in COUNTS:
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-6), k
            else:
                assert a[k] == b[k], k


CHUNKED = {
    "shift": lambda **kw: measure.shift_consistency(
        maxpool_net, DENSE, IMAGES, key=KEY, labels=LABELS, **kw
    ),
    "severity": lambda **kw: measure.severity_curve(
        maxpool_net,
        DENSE,
        IMAGES,
        labels=LABELS,
        transform="random_mask",
        severities=[0.1, 0.4],
        key=KEY,
        **kw,
    ),
    "tsm": lambda **kw: measure.translation_sensitivity_map(
        gap_features, GAP, IMAGES, max_shift=1, layer="conv2", transform_batch=4, **kw
    ),
    "occlusion": lambda **kw: measure.occlusion_maps(
        maxpool_net, DENSE, IMAGES, labels=LABELS, size=8, stride=4, **kw
    ),
    "layers": lambda **kw: measure.layer_stability(
        gap_features, GAP, IMAGES, transform="gaussian_noise", severity=0.2, key=KEY, **kw
    ),
}


@pytest.mark.parametrize("name", sorted(CHUNKED))
@pytest.mark.parametrize("small_chunks", [7, None])
def test_chunked_equals_unchunked(name, small_chunks, monkeypatch):
    # None: the automatic size, here forced down to a few images per call.
    monkeypatch.setitem(_core.MODEL_BATCH, jax.default_backend(), 16)
    small, big = CHUNKED[name](chunk_size=small_chunks), CHUNKED[name](chunk_size=1000)
    if isinstance(small, dict):
        for k in small:
            if k == "rows":
                continue
            if np.issubdtype(small[k].dtype, np.integer):
                np.testing.assert_array_equal(small[k], big[k])
            else:
                np.testing.assert_allclose(small[k], big[k], rtol=1e-6, atol=1e-6)
        small, big = small["rows"], big["rows"]
    _assert_rows_match(small, big)


# ----------------------------------------------------------------------------- other protocols


def test_spatial_grid_tiny():
    rows = measure.spatial_grid_accuracy(
        maxpool_net,
        DENSE,
        IMAGES[:16],
        labels=LABELS[:16],
        max_shift=2,
        max_angle=20,
        num_shifts=3,
        num_angles=3,
        transform_batch=4,
    )
    _check_rows(rows, "spatial_grid")
    points, (summary,) = rows[:-1], rows[-1:]
    assert len(points) == 27 and summary["n_transforms"] == 27
    assert {(p["dy"], p["dx"], p["angle"]) for p in points} >= {(0.0, 0.0, 0.0), (2.0, -2.0, 20.0)}
    assert summary["accuracy"] == pytest.approx(np.mean([p["accuracy"] for p in points]))
    assert summary["worst_case_accuracy"] <= min(p["accuracy"] for p in points)
    assert summary["worst_case_accuracy"] <= summary["accuracy"]
    identity = next(p for p in points if (p["dy"], p["dx"], p["angle"]) == (0.0, 0.0, 0.0))
    assert identity["accuracy"] == summary["clean_accuracy"]


def test_layer_stability_rows():
    rows = measure.layer_stability(
        gap_features,
        GAP,
        IMAGES[:8],
        transform="line_mask",
        severity=4,
        key=KEY,
        layers=["conv2", "conv1"],
        orientation="horizontal",
    )
    _check_rows(rows, "layer_stability")
    assert [r["layer"] for r in rows] == ["conv2", "conv1"]
    assert all(r["relative_l2"] > 0 and r["input_relative_l2"] > 0 for r in rows)
    assert rows[0]["orientation"] == "horizontal" and rows[0]["period"] is None
    assert rows[0]["severity"] == 4 and rows[0]["width"] == 1 and rows[0]["vary"] == "period"


def test_pooling_stability_rows():
    x = IMAGES[:8]
    rows = measure.pooling_stability(
        None,
        None,
        x,
        transform="random_mask",
        kinds=["max", "avg"],
        key=KEY,
        severity=0.3,
        pool_options={"avg": {"window": 4}},
    )
    _check_rows(rows, "pooling_stability")
    assert [r["kind"] for r in rows] == ["identity", "max", "avg"]
    xt = np.stack([T.random_mask(jax.random.fold_in(KEY, i), x[i], ratio=0.3) for i in range(8)])
    ref = np.linalg.norm((x - xt).reshape(8, -1), axis=1) / np.linalg.norm(x.reshape(8, -1), axis=1)
    assert rows[0]["relative_l2"] == pytest.approx(ref.mean(), rel=1e-5)
    pa, pt = pooling.avg_pool(x, 4), pooling.avg_pool(xt, 4)
    ref = metrics.relative_l2(pa, pt)
    assert rows[2]["relative_l2"] == pytest.approx(float(np.mean(ref)), rel=1e-5)
    assert json.loads(rows[2]["pool_options"]) == {"window": 4}
    assert all(r["input_relative_l2"] == rows[0]["relative_l2"] for r in rows)
    stoch = measure.pooling_stability(
        None,
        None,
        x,
        transform="gaussian_noise",
        kinds=["stochastic"],
        key=KEY,
        severity=0.0,
        pool_options={"stochastic": {"train": True}},
    )
    assert stoch[1]["relative_l2"] == 0.0  # the same draws on x and T x


def test_uint8_images_are_scaled():
    u8 = np.random.default_rng(3).integers(0, 256, (8, H, W, CH), dtype=np.uint8)
    a = measure.severity_curve(
        linear, LIN, u8, labels=LABELS[:8], transform="rotate", severities=[10.0], key=KEY
    )
    b = measure.severity_curve(
        linear,
        LIN,
        u8.astype(np.float32) / 255,
        labels=LABELS[:8],
        transform="rotate",
        severities=[10.0],
        key=KEY,
    )
    # XLA may turn the in-graph division by 255 into a multiplication: equal up to rounding.
    _assert_rows_match(a, b)


def test_progress_bar(capsys):
    measure.cifar_p_flip_rate(linear, LIN, IMAGES[:4], shift_min=0, shift_max=1, progress=True)
    assert "cifar_p" in capsys.readouterr().err


# ----------------------------------------------------------------------------- errors


def _sc(**kw):
    return measure.shift_consistency(linear, LIN, IMAGES[:4], key=KEY, **kw)


def _sev(**kw):
    kw = {"transform": "random_mask", "severities": [0.1], "key": KEY, **kw}
    return measure.severity_curve(linear, LIN, IMAGES[:4], labels=LABELS[:4], **kw)


ERRORS = [
    (lambda: _sc(mode="reflect"), "mode must be one of"),
    (lambda: _sc(pairs="three"), "pairs must be one of"),
    (lambda: _sc(max_shift=-1), "max_shift must be an int >= 0"),
    (lambda: _sc(chunk_size=0), "chunk_size must be an int >= 1"),
    (lambda: _sc(num_pairs=0), "num_pairs must be an int >= 1"),
    (lambda: _sc(labels=[1, 2]), "labels must be integers of shape"),
    (
        lambda: measure.shift_consistency(linear, LIN, IMAGES[:4], key=3),
        "key must be one jax PRNG key",
    ),
    (lambda: measure.shift_consistency(linear, LIN, IMAGES[0], key=KEY), "images must have shape"),
    (lambda: _sev(transform="blur"), "transform must be one of"),
    (lambda: _sev(severities=[1.5]), r"ratios in \[0, 1\]"),
    (lambda: _sev(severities=[]), "non-empty 1-D"),
    (lambda: _sev(fill="median"), "fill must be one of"),
    (lambda: _sev(transform="translate", severities=[0.5]), "whole numbers"),
    (lambda: _sev(transform="translate", severities=[1], mode="edge"), "mode must be one of"),
    (lambda: _sev(transform="line_mask", severities=[0]), "line_mask severities must be >= 1"),
    (lambda: _sev(transform="line_mask", severities=[2], orientation="x"), "orientation must"),
    (lambda: _sev(transform="occlusion", severities=[2], position="edge"), "position must"),
    (lambda: _sev(transform="rotate", severities=[2], radius=3), "unknown option"),
    (lambda: _sev(transform="line_mask", severities=[2], vary="offset"), "vary must be one of"),
    (lambda: _sev(transform="translate", severities=[2], direction="up"), "direction must"),
    (lambda: _sev(transform="gaussian_noise", severities=[-0.1]), "must be >= 0"),
    (
        lambda: measure.translation_sensitivity_map(linear, LIN, IMAGES[:4], max_shift=-1),
        "max_shift must be an int >= 0",
    ),
    (
        lambda: measure.translation_sensitivity_map(
            linear, LIN, IMAGES[:4], max_shift=1, mode="wrap"
        ),
        "mode must be one of",
    ),
    (
        lambda: measure.spatial_grid_accuracy(
            linear, LIN, IMAGES[:4], labels=LABELS[:4], transform_batch=0
        ),
        "transform_batch must be an int >= 1",
    ),
    (
        lambda: measure.occlusion_sensitivity_map(
            linear, LIN, IMAGES[:4], labels=LABELS[:4], stride=0
        ),
        "stride must be an int >= 1",
    ),
    (
        lambda: measure.pooling_stability(
            None, None, IMAGES[:4], transform="rotate", kinds=[], key=KEY, severity=5
        ),
        "kinds must be a non-empty list",
    ),
    (lambda: measure.one_pixel_flip_rate(linear, LIN, IMAGES[:4], max_offset=0), "max_offset"),
    (lambda: measure.cifar_p_flip_rate(linear, LIN, IMAGES[:4], shift_min=0.5), "shift_min must"),
    (
        lambda: measure.cifar_p_flip_rate(linear, LIN, IMAGES[:4], shift_min=2, shift_max=2),
        "shift_max must be > shift_min",
    ),
    (lambda: measure.cifar_p_flip_rate(linear, LIN, IMAGES[:4], direction="up"), "direction must"),
    (
        lambda: measure.spatial_grid_accuracy(
            linear, LIN, IMAGES[:4], labels=LABELS[:4], num_angles=0
        ),
        "num_angles must be an int >= 1",
    ),
    (
        lambda: measure.spatial_grid_accuracy(
            linear, LIN, IMAGES[:4], labels=LABELS[:4], max_shift=-1
        ),
        "max_shift must be a finite number >= 0",
    ),
    (
        lambda: measure.translation_sensitivity_map(
            linear, LIN, IMAGES[:4], max_shift=1, layer="c"
        ),
        "layer must be one of the features_fn outputs",
    ),
    (
        lambda: measure.translation_sensitivity_map(gap_features, GAP, IMAGES[:4], max_shift=1),
        "pass layer=NAME",
    ),
    (
        lambda: measure.equivariance_error(
            gap_features, GAP, IMAGES[:4], layer="logits", total_stride=1, shifts=[(1, 1)]
        ),
        "must be a feature map",
    ),
    (
        lambda: measure.equivariance_error(
            gap_features, GAP, IMAGES[:4], layer="conv1", total_stride=1, shifts=[1, 2]
        ),
        "integer \\(dy, dx\\) pairs",
    ),
    (
        lambda: measure.layer_stability(
            gap_features, GAP, IMAGES[:4], transform="rotate", severity=5, key=KEY, layers=["x"]
        ),
        "layers must be a non-empty list",
    ),
    (
        lambda: measure.layer_stability(
            linear, LIN, IMAGES[:4], transform="rotate", severity=5, key=KEY
        ),
        "features_fn must return a non-empty dict",
    ),
    (
        lambda: measure.pooling_stability(
            None, None, IMAGES[:4], transform="rotate", kinds=["median"], key=KEY, severity=5
        ),
        "kind must be one of",
    ),
    (
        lambda: measure.pooling_stability(
            None, None, IMAGES[:4], transform="rotate", kinds=["max", "max"], key=KEY, severity=5
        ),
        "kinds must not repeat",
    ),
    (
        lambda: measure.pooling_stability(
            None,
            None,
            IMAGES[:4],
            transform="rotate",
            kinds=["max"],
            key=KEY,
            severity=5,
            pool_options={"avg": {}},
        ),
        "pool_options has kinds",
    ),
    (
        lambda: measure.pooling_stability(
            None, None, IMAGES[:4], transform="rotate", kinds=["max"], key=KEY, severity=[1, 2]
        ),
        "severity must be a single number",
    ),
    (
        lambda: measure.occlusion_sensitivity_map(
            linear, LIN, IMAGES[:4], labels=LABELS[:4], size=17
        ),
        "size must be <= min",
    ),
    (
        lambda: measure.occlusion_sensitivity_map(
            linear, LIN, IMAGES[:4], labels=LABELS[:4], fill="max"
        ),
        "fill must be one of \\['mean'\\]",
    ),
]


@pytest.mark.parametrize(("call", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_value_errors(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
