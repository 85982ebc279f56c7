"""Fault tests for the API layer (issue 12 section 4, issue 13 protocol registry and layering).

Each test fails on the code before the fix: bad numbers (NaN images, NaN logits, NaN options,
fractional shifts, shifts larger than the image) must be refused in one line or propagate as
NaN, never become a confident answer; every protocol has one signature and is looked up and
validated by name; a model applied to images its parameters were not made for names both
shapes. Models are tiny hand-made functions, images 8x8; nothing is downloaded.
"""

import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invariance import experiment, measure, metrics, models
from invariance import transforms as T
from invariance.train import _eval

KEY = jax.random.key(0)
N, H, W, K = 4, 8, 8, 3
IMAGES = np.random.default_rng(0).uniform(0, 1, (N, H, W, 1)).astype(np.float32)
LABELS = np.array([0, 1, 2, 0], np.int32)
LIN = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(H * W, K)), jnp.float32)}


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"]


def nan_on_image_2(params, x):
    """Logits that are NaN for the images whose top-left pixel is NaN-marked (value 0.5)."""
    marked = jnp.any(x[:, :1, :1, 0] == 0.5, axis=(1, 2))
    return linear(params, x) + jnp.where(marked, jnp.nan, 0.0)[:, None]


def features(params, x):
    return {"conv": jnp.tile(x, (1, 1, 1, 2)), "logits": linear(params, x)}


def nan_features(params, x):
    return {"conv": jnp.full((x.shape[0], H, W, 2), jnp.nan), "logits": linear(params, x)}


def _one_line(info):
    assert "\n" not in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- NaN


def test_shift_consistency_refuses_nan_images():
    # Before: consistency 1.0 and accuracy 1.0 (argmax of NaN logits is class 0 everywhere).
    nan_images = np.full((N, H, W, 1), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"images must be finite: 4 of 4 images") as info:
        measure.shift_consistency(linear, LIN, nan_images, key=KEY, labels=np.zeros(N, np.int32))
    _one_line(info)


def test_protocols_refuse_inf_images():
    bad = IMAGES.copy()
    bad[3, 1, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"1 of 4 images hold NaN or inf \(first: image 3\)"):
        measure.one_pixel_flip_rate(linear, LIN, bad, max_offset=1)


NAN_CALLS = {
    "shift_consistency": dict(key=KEY, labels=LABELS, max_shift=1),
    "one_pixel_flip_rate": dict(labels=LABELS, max_offset=1),
    "cifar_p_flip_rate": dict(labels=LABELS, shift_min=0, shift_max=1),
    "spatial_grid_accuracy": dict(labels=LABELS, max_shift=1, num_shifts=2, num_angles=1),
    "severity_curve": dict(labels=LABELS, key=KEY, transform="gaussian_noise", severities=[0]),
    "occlusion_sensitivity_map": dict(labels=LABELS, size=4, stride=4, fill=0.25),
    "translation_sensitivity_map": dict(max_shift=1),
}


@pytest.mark.parametrize("name", sorted(NAN_CALLS))
def test_protocols_refuse_nan_logits(name):
    # The model gives NaN logits on image 2 (all 0.5) alone: at least its clean view, or its
    # circularly shifted ones, is NaN in every protocol.
    x = IMAGES.copy()
    x[2] = 0.5
    with pytest.raises(ValueError, match=r"NaN on \d+ of 4 images \(first: image 2\)") as info:
        measure.get_protocol(name)(nan_on_image_2, LIN, x, **NAN_CALLS[name])
    assert name in str(info.value)
    _one_line(info)


@pytest.mark.parametrize(
    "call",
    [
        lambda f: measure.layer_stability(
            f, LIN, IMAGES, key=KEY, transform="gaussian_noise", severity=0.1
        ),
        lambda f: measure.translation_sensitivity_map(f, LIN, IMAGES, max_shift=1, layer="conv"),
        lambda f: measure.equivariance_error(
            f, LIN, IMAGES, layer="conv", total_stride=1, shifts=[(1, 0)]
        ),
    ],
    ids=["layer_stability", "translation_sensitivity_map", "equivariance_error"],
)
def test_feature_protocols_refuse_nan_features(call):
    # Before: relative_l2 0.0 and cosine 1.0 -- NaN features read as perfectly stable.
    call(features)  # the same call on finite features works
    with pytest.raises(ValueError, match=r"NaN on 4 of 4 images"):
        call(nan_features)


def test_metrics_propagate_nan():
    a = np.array([[1.0, 2.0, 0.0], [np.nan, np.nan, np.nan]], np.float32)
    b = np.array([[1.0, 2.0, 0.0], [np.nan, np.nan, np.nan]], np.float32)
    # Before: 1.0, 0.0, 1.0, 0.0, [0, 0], [1, 1] -- agreement on NaN.
    assert np.isnan(metrics.consistency(a, b))
    assert np.isnan(metrics.top1_change(a, b))
    assert np.isnan(metrics.accuracy(a, np.array([1, 0])))
    assert np.isnan(metrics.flip_rate(np.stack([a, b], axis=1)))
    np.testing.assert_array_equal(np.isnan(metrics.relative_l2(a, b)), [False, True])
    np.testing.assert_array_equal(np.isnan(metrics.cosine_similarity(a, b)), [False, True])
    np.testing.assert_array_equal(np.isnan(metrics.relative_l2(np.zeros((1, 3)), a[1:])), [True])
    # Finite inputs keep their values and conventions.
    assert metrics.consistency(a[:1], b[:1]) == 1.0
    assert metrics.relative_l2(np.zeros((1, 3)), np.ones((1, 3)))[0] == np.inf


# ----------------------------------------------------------------------------- transform options


IMG = np.zeros((4, 4, 1), np.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: T.rotate(IMG, degrees=np.nan), "degrees must be a finite number, got nan"),
        (lambda: T.rotate(IMG, degrees=np.inf), "degrees must be a finite number"),
        (
            lambda: T.line_mask(IMG, orientation="grid", period=np.nan),
            "period must be an integer",
        ),
        (lambda: T.line_mask(IMG, orientation="grid", period=2.5), "period must be an integer"),
        (lambda: T.line_mask(IMG, orientation="grid", period=2, width=1.5), "width must be an"),
        (lambda: T.line_mask(IMG, orientation="grid", period=2, offset=0.5), "offset must be"),
        (lambda: T.translate(IMG, dy=1.5, dx=0), r"dy must be an integer \(whole pixels\)"),
        (lambda: T.translate(IMG, dy=0, dx=np.float32(2.0)), "dx must be an integer"),
        (lambda: T.translate(IMG, dy=True, dx=0), "dy must be an integer"),
        (lambda: T.occlude(IMG, top=0.5, left=0, height=1, width=1), "top must be an integer"),
        (lambda: T.occlude(IMG, top=0, left=0, height=np.nan, width=1), "height must be an"),
        (lambda: T.gaussian_noise(KEY, IMG, sigma=np.nan), "sigma must be a finite number"),
        (
            lambda: T.rotate_translate(IMG, dy=np.nan, dx=0.0, degrees=0.0),
            "dy must be a finite number",
        ),
        (lambda: T.to_float(np.zeros((2, 2), np.int32)), "must be uint8"),
    ],
)
def test_transform_options_are_checked(call, match):
    # Before: rotate(nan) blank, line_mask(nan) masks nothing, translate(1.5) shifts by 1 ...
    with pytest.raises(ValueError, match=match) as info:
        call()
    _one_line(info)


def test_traced_fractional_shift_is_refused_under_jit():
    # The dtype is static, so the integer check holds inside a trace too.
    with pytest.raises(ValueError, match="dy must be an integer"):
        jax.jit(lambda d: T.translate(IMG, dy=d, dx=0))(1.5)


def test_traced_options_keep_working_under_jit_and_vmap(check_jit_vmap):
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(6, 6, 1)), jnp.float32)
    ints = jnp.array([[1, 2], [0, 0], [-3, 5]], jnp.int32)
    out = check_jit_vmap(lambda d: T.translate(x, dy=d[0], dx=d[1]), ints)
    np.testing.assert_array_equal(out[0], np.roll(x, (1, 2), axis=(0, 1)))
    check_jit_vmap(lambda p: T.line_mask(x, orientation="grid", period=p), jnp.array([1, 2, 3]))
    check_jit_vmap(
        lambda o: T.occlude(x, top=o[0], left=o[1], height=o[2], width=o[2]),
        jnp.array([[0, 0, 2], [3, 1, 4]], jnp.int32),
    )
    check_jit_vmap(lambda d: T.rotate(x, degrees=d), jnp.array([0.0, 15.0, 90.0]), atol=1e-6)
    check_jit_vmap(
        lambda t: T.rotate_translate(x, dy=t[0], dx=t[1], degrees=t[2]),
        jnp.array([[0.5, -1.0, 10.0], [0.0, 0.0, 0.0]]),
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- protocol options


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("shift_consistency", dict(key=KEY, max_shift=8), r"max_shift must be at most 7"),
        ("one_pixel_flip_rate", dict(max_offset=9), r"max_offset must be at most 7"),
        ("cifar_p_flip_rate", dict(shift_min=-7, shift_max=8), r"shift_max must be at most 7"),
        ("spatial_grid_accuracy", dict(labels=LABELS, max_shift=20.0), "max_shift must be at"),
        ("translation_sensitivity_map", dict(max_shift=8), "max_shift must be at most 7"),
        (
            "severity_curve",
            dict(labels=LABELS, key=KEY, transform="translate", severities=[1, 8]),
            "translate severities must be at most 7",
        ),
        (
            "severity_curve",
            dict(labels=LABELS, key=KEY, transform="occlusion", severities=[9]),
            r"occlusion severities \(square sides\) must be at most min\(H, W\) = 8",
        ),
        (
            "severity_curve",
            dict(labels=LABELS, key=KEY, transform="rotate", severities=[np.nan]),
            "severities must be a non-empty 1-D list of numbers",
        ),
        ("shift_consistency", dict(key=KEY, max_shift=1.5), "max_shift must be an int"),
        ("shift_consistency", dict(key=KEY, progress="yes"), "progress must be True or False"),
        ("spatial_grid_accuracy", dict(labels=LABELS, max_angle=np.nan), "max_angle must be a"),
    ],
)
def test_protocols_check_options_against_the_image(name, options, match):
    # Before: shifts as large as the image (which wrap round or blank it) were measured.
    with pytest.raises(ValueError, match=match) as info:
        measure.get_protocol(name)(linear, LIN, IMAGES, **options)
    _one_line(info)


def test_equivariance_refuses_shifts_larger_than_the_image():
    with pytest.raises(ValueError, match=r"shifts \(dx\) must be at most 7"):
        measure.equivariance_error(
            features, LIN, IMAGES, layer="conv", total_stride=1, shifts=[(0, 8)]
        )


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("severity_curve", dict(key=KEY, transform="rotate", severities=[5]), "needs labels"),
        ("severity_curve", dict(labels=LABELS, transform="rotate", severities=[5]), "needs a PRNG"),
        ("shift_consistency", {}, "shift_consistency needs a PRNG key"),
        ("spatial_grid_accuracy", {}, "spatial_grid_accuracy needs labels"),
        ("occlusion_sensitivity_map", {}, "needs labels"),
    ],
)
def test_missing_labels_or_key_is_one_clear_error(name, options, match):
    with pytest.raises(ValueError, match=match) as info:
        measure.get_protocol(name)(linear, LIN, IMAGES, **options)
    _one_line(info)


# ----------------------------------------------------------------------------- registry

ALL = [
    "shift_consistency",
    "one_pixel_flip_rate",
    "cifar_p_flip_rate",
    "spatial_grid_accuracy",
    "severity_curve",
    "occlusion_sensitivity_map",
    "translation_sensitivity_map",
    "layer_stability",
    "equivariance_error",
    "pooling_stability",
]


def test_every_protocol_is_registered_with_one_signature():
    assert sorted(measure.PROTOCOLS) == sorted(ALL)
    for name, fn in measure.PROTOCOLS.items():
        assert fn is getattr(measure, name) and measure.get_protocol(name) is fn
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:3]] == ["apply_fn", "variables", "images"]
        common = {p.name: p for p in params[3:6]}
        assert list(common) == ["labels", "key", "chunk_size"], name
        assert all(p.kind is p.KEYWORD_ONLY and p.default is None for p in common.values())
    with pytest.raises(ValueError, match="unknown protocol 'shift': valid are .*shift_consistency"):
        measure.get_protocol("shift")


def test_the_registry_drives_the_protocol_list():
    lines = measure.describe_protocols().splitlines()
    assert [line.split("`")[1] for line in lines] == list(measure.PROTOCOLS)
    (shift,) = [line for line in lines if line.startswith("- `shift_consistency`")]
    assert "needs key" in shift and "max_shift=3, mode='circular'" in shift and "Zhang" in shift


def test_every_protocol_returns_rows():
    # Before: the sensitivity maps returned dicts, so dispatch needed a five-way if-chain.
    rows = measure.translation_sensitivity_map(linear, LIN, IMAGES, max_shift=1)
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
    maps = measure.translation_maps(rows)
    assert maps["map"].shape == (3, 3) and maps["map"][1, 1] == pytest.approx(0.0, abs=1e-6)
    assert maps["profile"].shape == maps["radii"].shape == (2,)
    occ = measure.occlusion_sensitivity_map(linear, LIN, IMAGES, labels=LABELS, size=4, stride=4)
    assert isinstance(occ, list) and occ[0]["n_positions"] == 4
    with pytest.raises(ValueError, match="one translation_sensitivity_map call"):
        measure.translation_maps(rows[:3])


def test_run_protocol_is_a_lookup():
    spec = {"fn": "occlusion_sensitivity_map", "size": 4, "stride": 4, "num_images": 2}
    rows = experiment._run_protocol(spec, linear, LIN, IMAGES, LABELS, KEY, None)
    assert rows[0]["protocol"] == "occlusion_sensitivity" and rows[0]["n_images"] == 2
    assert set(experiment.PROTOCOL_FNS) == set(ALL) - {
        "layer_stability",
        "equivariance_error",
        "pooling_stability",
    }
    with pytest.raises(ValueError, match="unknown protocol 'layer_stability': valid are"):
        experiment._run_protocol({"fn": "layer_stability"}, linear, LIN, IMAGES, LABELS, KEY, None)


SHAPE = (28, 28, 1)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("shift", {}, r"unknown protocol 'shift': valid are"),
        ("shift_consistency", {"max_shfit": 3}, r"unknown option\(s\) \['max_shfit'\]"),
        ("shift_consistency", {"key": 0}, r"\['key'\] are arguments of every protocol"),
        ("shift_consistency", {"chunk_size": 8}, r"\['chunk_size'\] are arguments"),
        ("shift_consistency", {"max_shift": 3.0}, r"'shift_consistency': max_shift must be an int"),
        ("shift_consistency", {"max_shift": True}, "max_shift must be an int"),
        ("shift_consistency", {"max_shift": 28}, "max_shift must be at most 27"),
        ("shift_consistency", {"mode": "wrap"}, r"mode must be one of \['circular', 'constant'\]"),
        ("one_pixel_flip_rate", {"max_offset": 0}, "max_offset must be an int >= 1"),
        ("cifar_p_flip_rate", {"shift_min": -30}, "shift_min must be at most 27"),
        ("cifar_p_flip_rate", {"shift_min": 3, "shift_max": 3}, "shift_max must be > shift_min"),
        ("spatial_grid_accuracy", {"max_shift": np.nan}, "max_shift must be a finite number"),
        ("spatial_grid_accuracy", {"max_angle": 400}, "max_angle must be at most 180"),
        ("spatial_grid_accuracy", {"transform_batch": 0}, "transform_batch must be an int >= 1"),
        ("severity_curve", {"severities": [0.1]}, r"needs option\(s\) \['transform'\]"),
        (
            "severity_curve",
            {"transform": "random_mask", "severities": [0.1, 1.5]},
            r"ratios in \[0, 1\]",
        ),
        ("severity_curve", {"transform": "random_mask", "severities": ["a"]}, "list of numbers"),
        ("severity_curve", {"transform": "line_mask", "severities": [2.5]}, "whole numbers"),
        (
            "severity_curve",
            {"transform": "line_mask", "severities": [2], "period": 2.0},
            "period must be an int",
        ),
        ("severity_curve", {"transform": "rotate", "severities": [5], "fill": np.nan}, "fill"),
        (
            "severity_curve",
            {"transform": "rotate", "severities": [5], "radius": 1},
            r"unknown option\(s\) \['radius'\] for transform 'rotate'",
        ),
        (
            "severity_curve",
            {"transform": "translate", "severities": [28], "direction": "vertical"},
            "translate severities must be at most 27",
        ),
        ("occlusion_sensitivity_map", {"size": 29}, r"size must be <= min\(H, W\) = 28"),
        ("occlusion_sensitivity_map", {"fill": np.inf}, "fill must be a finite number"),
        ("translation_sensitivity_map", {}, r"needs option\(s\) \['max_shift'\]"),
        ("translation_sensitivity_map", {"max_shift": 30}, "max_shift must be at most 27"),
        ("translation_sensitivity_map", {"max_shift": 2, "layer": 3}, "layer must be None or"),
        (
            "layer_stability",
            {"transform": "gaussian_noise", "severity": [0.1, 0.2]},
            "severity must be a single number",
        ),
        (
            "equivariance_error",
            {"layer": "c", "total_stride": 2, "shifts": [(2, 1)]},
            "not divisible by total_stride=2",
        ),
        (
            "pooling_stability",
            {"transform": "rotate", "severity": 5, "kinds": ["median"]},
            "kind must be one of",
        ),
        (
            "pooling_stability",
            {
                "transform": "rotate",
                "severity": 5,
                "kinds": ["lp"],
                "pool_options": {"lp": {"wndow": 2}},
            },
            "bad pool_options for 'lp'",
        ),
    ],
)
def test_validate_protocol_refuses_in_one_line(name, options, match):
    with pytest.raises(ValueError, match=match) as info:
        measure.validate_protocol(name, options, image_shape=SHAPE)
    _one_line(info)


def test_validate_protocol_accepts_what_the_protocols_run():
    for spec in [
        {"fn": "shift_consistency", "max_shift": 3, "mode": "constant", "pairs": "two_shifted"},
        {"fn": "one_pixel_flip_rate", "max_offset": 3, "mode": "constant"},
        {
            "fn": "severity_curve",
            "transform": "line_mask",
            "severities": [4],
            "orientation": "grid",
        },
        {"fn": "severity_curve", "transform": "occlusion", "severities": [8]},
        {"fn": "translation_sensitivity_map", "max_shift": 8},
        {"fn": "spatial_grid_accuracy"},
        {"fn": "cifar_p_flip_rate"},
        {"fn": "occlusion_sensitivity_map"},
        {"fn": "layer_stability", "transform": "random_mask", "severity": 0.3},
        {"fn": "equivariance_error", "layer": "c", "total_stride": 2, "shifts": [(2, 0)]},
        {"fn": "pooling_stability", "transform": "rotate", "severity": 5, "kinds": ["max", "lp"]},
    ]:
        options = dict(spec)
        measure.validate_protocol(options.pop("fn"), options, image_shape=SHAPE)
    with pytest.raises(ValueError, match="image_shape must be three positive ints"):
        measure.validate_protocol("cifar_p_flip_rate", {}, image_shape=(28, 28))


def test_validation_and_the_protocol_agree():
    # One checker serves both: what validate_protocol refuses, the protocol refuses too.
    options = {"max_shift": 8}
    with pytest.raises(ValueError, match="max_shift must be at most 7") as checked:
        measure.validate_protocol("shift_consistency", options, image_shape=(H, W, 1))
    with pytest.raises(ValueError, match="max_shift must be at most 7") as ran:
        measure.shift_consistency(linear, LIN, IMAGES, key=KEY, **options)
    assert str(checked.value).endswith(str(ran.value))


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("name", "options", "init", "apply", "match"),
    [
        ("small_cnn", {"widths": (4, 8)}, (1, 28, 28, 1), (2, 32, 32, 1), "flatten head"),
        ("small_cnn", {"widths": (4, 8)}, (1, 28, 28, 1), (2, 28, 28, 3), "3 channel"),
        ("resnet18", {}, (1, 32, 32, 3), (2, 32, 32, 1), "1 channel"),
        ("probe", {"pool": "max"}, (1, 28, 28, 1), (2, 28, 28, 3), "3 channel"),
        ("downsample_input", {"widths": (4, 8)}, (1, 28, 28, 1), (2, 28, 28, 2), "2 channel"),
        ("small_cnn", {"widths": (4, 8)}, (1, 28, 28, 1), (28, 28, 1), r"takes images \(N, H, W"),
    ],
)
def test_model_on_wrong_images_names_both_shapes(name, options, init, apply, match):
    # Before: flax.errors.ScopeParamShapeError about a kernel deep inside the model.
    model = models.create_model(name, **options)
    variables = jax.eval_shape(lambda: models.init_model(model, KEY, init))
    x = jax.ShapeDtypeStruct(apply, jnp.float32)
    with pytest.raises(ValueError, match=match) as info:
        jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    message = str(info.value)
    assert str(tuple(apply)) in message
    if len(apply) == 4 and "channel" in match:
        assert f"(N, H, W, {init[-1]})" in message
    _one_line(info)


# ----------------------------------------------------------------------------- layering


def _definitions(pattern: str) -> list[str]:
    root = Path(__file__).resolve().parents[1] / "invariance"
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(pattern, p.read_text(), flags=re.MULTILINE)
    )


def test_one_home_for_each_shared_helper():
    assert _definitions(r"^def rotate_translate\(") == ["transforms.py"]
    assert _definitions(r"^def to_float\(") == ["transforms.py"]
    assert _eval.to_float is T.to_float
    assert _definitions(r"^def _?argmax\(") == ["measure/_core.py"]
    assert _definitions(r"^def _?is_concrete\(") == ["_checks.py"]


def test_docstrings_cite_files_in_the_repository():
    assert _definitions(r"PROTOCOLS\.md") == []
