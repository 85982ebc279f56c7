"""invariance.models: every pooling kind builds, trains and keeps the invariances it promises."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invariance import models as M
from invariance import pooling as P
from invariance.models.layers import _POOL_OPTIONS

KEY = jax.random.key(0)
TINY = {"widths": (4, 8), "hidden": 16}

# XLA's CPU compile dominates these tests; its backend optimisations are not what is tested.
FAST_JIT = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
_init = FAST_JIT(M.init_model, static_argnums=(0, 2))


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _labels(n, num_classes=10):
    return jnp.arange(n) % num_classes


def _apply(model, variables, x, *, train=False, key=KEY):
    """The call pattern of invariance.train: rngs always given, batch_stats mutable if present."""
    rngs = {"pool": key, "dropout": jax.random.fold_in(key, 1)}
    if "batch_stats" in variables:
        return model.apply(variables, x, train=train, rngs=rngs, mutable=["batch_stats"])
    return model.apply(variables, x, train=train, rngs=rngs), {}


def _loss_and_grads(model, variables, x, y, *, train=True):
    """One jitted value_and_grad of the cross-entropy; aux: (logits, new batch_stats)."""

    def loss_fn(params, x, y):
        logits, updates = _apply(model, {**variables, "params": params}, x, train=train)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, (logits, updates)

    grad_fn = FAST_JIT(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, (logits, updates)), grads = grad_fn(variables["params"], x, y)
    return loss, grads, logits, updates, grad_fn


def _all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))


def _grad_norm(tree):
    return float(sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(tree)))


# --------------------------------------------------------------------------------------------
# The Pool layer.


def test_pool_kinds_cover_the_library():
    assert set(M.POOL_KINDS) == set(P.POOLS) | {"strided_conv", "none"}
    assert set(_POOL_OPTIONS) == set(M.POOL_KINDS)
    assert not any(k.startswith("global_") for k in M.DOWNSAMPLE_KINDS)
    assert {"strided_conv", "none", "max", "aps"} <= set(M.DOWNSAMPLE_KINDS)


@pytest.mark.parametrize(
    ("kind", "options", "reference"),
    [
        ("max", {}, lambda x: P.max_pool(x, 2)),
        ("min", {}, lambda x: P.min_pool(x, 2)),
        ("avg", {}, lambda x: P.avg_pool(x, 2)),
        ("lp", {"p": 3}, lambda x: P.lp_pool(x, 2, p=3)),
        ("stochastic", {}, lambda x: P.stochastic_pool(x, 2, train=False)),
        ("mixed", {"alpha": 0.25}, lambda x: P.mixed_pool(x, 2, alpha=0.25)),
        ("blur", {"filter_size": 4}, lambda x: P.blur_pool(x, filter_size=4, stride=2)),
        ("max_blur", {}, lambda x: P.max_blur_pool(x, 2, filter_size=3, stride=2)),
        ("aps", {"filter_size": 3}, lambda x: P.aps_pool(x, stride=2, filter_size=3)),
        ("global_avg", {}, lambda x: P.global_pool(x, kind="avg")),
        ("none", {}, lambda x: x),
    ],
)
def test_pool_matches_the_library(kind, options, reference):
    x = _images((2, 8, 8, 3))
    layer = M.Pool(kind, 2, options=options)
    out = layer.apply(layer.init(KEY, x), x)
    np.testing.assert_allclose(out, reference(x), rtol=1e-6, atol=1e-6)


def test_pool_mixed_starts_at_half_and_strided_conv_is_a_conv():
    x = _images((2, 8, 8, 3))
    mixed = M.Pool("mixed")
    v = mixed.init(KEY, x)
    assert v["params"]["alpha_logit"].shape == (3,)
    np.testing.assert_allclose(mixed.apply(v, x), P.mixed_pool(x, 2, alpha=0.5), rtol=1e-6)
    conv = M.Pool("strided_conv", window=3, stride=2, options={"features": 5})
    v = conv.init(KEY, x)
    assert v["params"]["conv"]["kernel"].shape == (3, 3, 3, 5)
    assert conv.apply(v, x).shape == (2, 3, 3, 5)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("shape,window", [((2, 8, 8, 3), 2), ((3, 7, 9, 4), 2), ((2, 9, 9, 2), 3)])
def test_strided_conv_patch_product_is_the_convolution(shape, window, use_bias):
    # Pool("strided_conv") with window == stride and VALID padding is one matrix product over
    # patches: the same parameters (names, shapes, initial values) and function as nn.Conv.
    x = _images(shape)
    layer = M.Pool("strided_conv", window=window, options={"features": 5, "use_bias": use_bias})
    conv = nn.Conv(5, (window, window), (window, window), "VALID", use_bias=use_bias)
    v = layer.init(KEY, x)
    ref = {"params": {"conv": conv.init(KEY, x)["params"]}}
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, ref)
    key = jax.random.key(3)
    v = jax.tree.map(lambda a: jax.random.normal(key, a.shape), v)  # a nonzero bias too

    def loss(fn, variables, a):
        return jnp.sum(fn(variables, a) ** 2)

    def by_conv(variables, a):
        return conv.apply({"params": variables["params"]["conv"]}, a)

    np.testing.assert_allclose(layer.apply(v, x), by_conv(v, x), rtol=1e-5, atol=1e-5)
    got = jax.grad(functools.partial(loss, layer.apply), argnums=(0, 1))(v, x)
    want = jax.grad(functools.partial(loss, by_conv), argnums=(0, 1))(v, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_strided_conv_initial_parameters_are_nn_convs():
    x = _images((2, 8, 8, 3))
    v = M.Pool("strided_conv", options={"features": 4}).init(KEY, x)
    v_old = M.Pool("strided_conv", padding=((0, 0), (0, 0)), options={"features": 4}).init(KEY, x)
    # The second takes the nn.Conv path (explicit padding): the same initial values.
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_old), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pool_max_blur_circular_keeps_size_and_commutes_with_even_shifts():
    x = _images((1, 8, 8, 2))
    layer = M.Pool("max_blur", options={"pad_mode": "circular"})
    f = lambda a: layer.apply({}, a)  # noqa: E731
    assert f(x).shape == (1, 4, 4, 2)
    np.testing.assert_allclose(
        f(jnp.roll(x, (2, 4), (1, 2))), jnp.roll(f(x), (1, 2), (1, 2)), atol=1e-6
    )


def test_pool_errors_are_one_line():
    with pytest.raises(ValueError, match="strided_conv, none") as e:
        M.Pool("maximum")
    assert "\n" not in str(e.value) and "max_blur" in str(e.value)
    with pytest.raises(ValueError, match="filter_size") as e:
        M.Pool("max", options={"filter_size": 3})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="global_avg"):
        M.SmallCNN(pool="global_avg")


def test_aps_with_index_matches_aps_pool_and_reuses_an_index():
    x = _images((3, 6, 6, 4))
    for norm, filter_size in [("l2", 1), ("l1", 3), ("linf", 2)]:
        y, idx = P.aps_pool_with_index(x, stride=2, norm=norm, filter_size=filter_size)
        np.testing.assert_allclose(y, P.aps_pool(x, stride=2, norm=norm, filter_size=filter_size))
        assert idx.shape == (3,)
    forced = jnp.array([0, 1, 3])
    y, idx = P.aps_pool_with_index(x, index=forced)
    np.testing.assert_array_equal(idx, forced)
    np.testing.assert_array_equal(y[2], x[2, 1::2, 1::2])


# --------------------------------------------------------------------------------------------
# SmallCNN: every kind builds and trains.


@pytest.mark.parametrize("kind", M.DOWNSAMPLE_KINDS)
def test_small_cnn_every_kind_trains(kind):
    model = M.SmallCNN(pool=kind, **TINY)
    x, y = _images((3, 16, 16, 1)), _labels(3)
    variables = _init(model, KEY, (1, 16, 16, 1))
    loss, grads, logits, _, grad_fn = _loss_and_grads(model, variables, x, y)
    assert logits.shape == (3, 10) and _all_finite(logits)
    assert np.isfinite(loss) and _all_finite(grads) and _grad_norm(grads) > 0
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, variables["params"], grads)
    (loss, (logits, _)), grads = grad_fn(stepped, x, y)
    assert np.isfinite(loss) and _all_finite(logits) and _all_finite(grads)


def test_mixed_alpha_is_learned_and_stays_in_the_open_interval():
    model = M.SmallCNN(pool="mixed", **TINY)
    x, y = _images((4, 16, 16, 1)), _labels(4)
    variables = _init(model, KEY, (1, 16, 16, 1))
    params = variables["params"]
    assert params["pool1"]["alpha_logit"].shape == (4,)
    assert params["pool2"]["alpha_logit"].shape == (8,)
    _, grads, _, _, _ = _loss_and_grads(model, {"params": params}, x, y)
    for name in ("pool1", "pool2"):
        assert float(jnp.abs(grads[name]["alpha_logit"]).max()) > 0
    params = jax.tree.map(lambda p, g: p - 1.0 * g, params, grads)
    alpha = jax.nn.sigmoid(params["pool2"]["alpha_logit"])
    assert bool(jnp.all((alpha > 0) & (alpha < 1)))
    assert not np.allclose(alpha, 0.5)


def test_stochastic_samples_in_training_and_is_deterministic_in_evaluation():
    model = M.SmallCNN(pool="stochastic", **TINY)
    x = _images((2, 16, 16, 1))
    variables = _init(model, KEY, (1, 16, 16, 1))
    train = FAST_JIT(lambda k: model.apply(variables, x, train=True, rngs={"pool": k}))
    evaluate = FAST_JIT(lambda k: model.apply(variables, x, rngs={"pool": k}))
    a, b, again = train(jax.random.key(1)), train(jax.random.key(2)), train(jax.random.key(1))
    assert float(jnp.abs(a - b).max()) > 1e-4
    np.testing.assert_array_equal(a, again)
    np.testing.assert_array_equal(evaluate(jax.random.key(1)), evaluate(jax.random.key(3)))
    np.testing.assert_allclose(evaluate(KEY), model.apply(variables, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="pool"):
        model.apply(variables, x, train=True)  # no 'pool' rng


def test_small_cnn_features_and_heads():
    x = _images((2, 28, 28, 1))
    model = M.SmallCNN(pool="max_blur", widths=(4, 8), hidden=16)
    variables = _init(model, KEY, (1, 28, 28, 1))
    logits, feats = FAST_JIT(lambda a: model.apply(variables, a, return_features=True))(x)
    shapes = {k: v.shape for k, v in feats.items()}
    assert shapes == {
        "conv1": (2, 28, 28, 4),
        "pool1": (2, 14, 14, 4),
        "conv2": (2, 14, 14, 8),
        "pool2": (2, 7, 7, 8),
        "head": (2, 16),
    }
    assert logits.shape == (2, 10)
    gap = M.SmallCNN(pool="none", head="gap", widths=(4, 8))
    feats = jax.eval_shape(
        lambda: gap.apply(M.init_model(gap, KEY, (1, 28, 28, 1)), x, return_features=True)[1]
    )
    assert feats["pool2"].shape == (2, 28, 28, 8) and feats["head"].shape == (2, 8)


def test_param_counts_differ_between_heads_as_expected():
    conv = (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8)
    flat = M.SmallCNN(pool="max", widths=(4, 8), hidden=16, head="flatten")
    gap = M.SmallCNN(pool="max", widths=(4, 8), head="gap")
    n_flat = M.count_params(M.init_model(flat, KEY, (1, 16, 16, 1)))  # arrays
    n_gap = M.count_params(jax.eval_shape(lambda: M.init_model(gap, KEY, (1, 16, 16, 1))))
    assert n_flat == conv + (4 * 4 * 8 * 16 + 16) + (16 * 10 + 10)
    assert n_gap == conv + (8 * 10 + 10)


# --------------------------------------------------------------------------------------------
# Shift invariance: exact with circular convs + APS (or no pooling) + GAP; not with max.


def _shift_gaps(model, x, shifts):
    variables = _init(model, KEY, (1,) + x.shape[1:])
    f = FAST_JIT(lambda a: model.apply(variables, a))
    base = f(x)
    return [float(jnp.abs(f(jnp.roll(x, s, axis=(1, 2))) - base).max()) for s in shifts]


SHIFTS = [tuple(int(v) for v in s) for s in np.random.default_rng(1).integers(0, 16, (6, 2))]


@pytest.mark.parametrize(
    ("pool", "options"),
    [("aps", {}), ("aps", {"norm": "l1"}), ("aps", {"filter_size": 3}), ("none", {})],
)
def test_circular_aps_gap_cnn_is_exactly_shift_invariant(pool, options):
    model = M.SmallCNN(
        pool=pool, pool_options=options, head="gap", conv_padding="CIRCULAR", widths=(4, 8)
    )
    gaps = _shift_gaps(model, _images((3, 16, 16, 1)), [*SHIFTS, (1, 0), (0, 1), (1, 1)])
    assert max(gaps) < 1e-5, gaps


@pytest.mark.parametrize(("pool", "threshold"), [("max", 1e-3), ("blur", 1e-4)])
def test_circular_max_or_blur_cnn_is_not_shift_invariant(pool, threshold):
    # Max pooling aliases; BlurPool anti-aliases, but a fixed stride-2 grid is still only
    # invariant to even shifts. (The tolerance of the exact tests is 1e-5.)
    model = M.SmallCNN(pool=pool, head="gap", conv_padding="CIRCULAR", widths=(4, 8))
    gaps = _shift_gaps(model, _images((3, 16, 16, 1)), [(1, 0), (0, 1), (1, 1), (3, 5)])
    assert max(gaps) > threshold, gaps


# --------------------------------------------------------------------------------------------
# Probe and DownsampleInput.


@pytest.mark.parametrize(
    ("pool", "out_hw", "names"),
    [
        (None, 26, ["conv1", "conv2"]),
        ("none", 26, ["conv1", "conv2"]),
        ("max", 25, ["conv1", "pool1", "conv2"]),
        ("avg", 25, ["conv1", "pool1", "conv2"]),
        ("blur", 26, ["conv1", "pool1", "conv2"]),
    ],
)
def test_probe_shapes(pool, out_hw, names):
    model = M.Probe(pool=pool)
    x = _images((2, 28, 28, 1))
    variables = M.init_model(model, KEY, (1, 28, 28, 1))
    out, feats = model.apply(variables, x, return_features=True)
    assert out.shape == (2, out_hw, out_hw, 8)
    assert list(feats) == names
    assert feats["conv1"].shape == (2, 27, 27, 8)
    if pool == "max":
        assert feats["pool1"].shape == (2, 26, 26, 8)
        np.testing.assert_array_equal(feats["pool1"], P.max_pool(feats["conv1"], 2, stride=1))
    assert bool(jnp.all(out >= 0))  # ReLU after the last conv


def test_downsample_input_shapes_and_resizes():
    x = _images((2, 28, 28, 1))
    model = M.DownsampleInput(**TINY)
    logits, feats = model.apply(M.init_model(model, KEY, (1, 28, 28, 1)), x, return_features=True)
    assert logits.shape == (2, 10)
    assert {k: v.shape for k, v in feats.items()} == {
        "resized": (2, 14, 14, 1),
        "conv1": (2, 14, 14, 4),
        "conv2": (2, 14, 14, 8),
        "pool2": (2, 7, 7, 8),
        "head": (2, 16),
    }
    # Same parameter shapes as the SmallCNN it is compared with.
    small = M.SmallCNN(**TINY)
    shapes = lambda m: jax.eval_shape(lambda: M.init_model(m, KEY, (1, 28, 28, 1)))  # noqa: E731
    assert shapes(model) == shapes(small)
    area = M.DownsampleInput(resize="area", **TINY)
    _, feats = area.apply(M.init_model(area, KEY, (1, 28, 28, 1)), x, return_features=True)
    np.testing.assert_allclose(feats["resized"], P.avg_pool(x, 2), rtol=1e-6)
    # Antialiased bilinear 2x shrink: taps (1, 3, 3, 1) / 8 per axis (edges renormalised).
    np.testing.assert_allclose(
        M.DownsampleInput(**TINY)._resize(x)[:, 1:-1, 1:-1],
        _binomial_shrink(np.asarray(x))[:, 1:-1, 1:-1],
        rtol=1e-5,
        atol=1e-6,
    )


def _binomial_shrink(x):
    taps = np.array([1, 3, 3, 1]) / 8
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    rows = sum(taps[i] * xp[:, i : i + 27 : 2] for i in range(4))
    return sum(taps[j] * rows[:, :, j : j + 27 : 2] for j in range(4))


# --------------------------------------------------------------------------------------------
# ResNets.


@pytest.mark.parametrize(
    ("kind", "options"),
    [("max", {}), ("blur", {"filter_size": 4}), ("aps", {"filter_size": 3}), ("strided_conv", {})],
)
def test_resnet_tiny_train_step(kind, options):
    model = M.create_model("resnet_tiny", pool=kind, pool_options=options)
    x, y = _images((2, 32, 32, 3)), _labels(2)
    variables = _init(model, KEY, (1, 32, 32, 3))
    assert set(variables) == {"params", "batch_stats"}
    loss, grads, logits, updates, _ = _loss_and_grads(model, variables, x, y)
    assert logits.shape == (2, 10) and _all_finite(logits)
    assert np.isfinite(loss) and _all_finite(grads) and _grad_norm(grads) > 0
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), updates["batch_stats"], variables["batch_stats"]
    )
    assert max(jax.tree.leaves(moved)) > 0


def test_resnet_aps_circular_is_exactly_shift_invariant():
    model = M.create_model("resnet_tiny", pool="aps", conv_padding="CIRCULAR", width=4)
    gaps = _shift_gaps(model, _images((2, 16, 16, 3)), [(1, 0), (0, 1), (3, 5), (7, 2)])
    assert max(gaps) < 1e-5, gaps


def test_resnet_features_and_shapes():
    model = M.create_model("resnet_tiny", pool="max_blur", width=4)
    x = _images((2, 32, 32, 3))
    variables = _init(model, KEY, (1, 32, 32, 3))
    logits, feats = FAST_JIT(lambda v, a: model.apply(v, a, return_features=True))(variables, x)
    assert logits.shape == (2, 10)
    assert {k: v.shape for k, v in feats.items()} == {
        "stem": (2, 32, 32, 4),
        "stage1": (2, 32, 32, 4),
        "stage2": (2, 16, 16, 8),
        "stage3": (2, 8, 8, 16),
        "stage4": (2, 4, 4, 32),
        "head": (2, 32),
    }


@pytest.mark.parametrize("kind", ["strided_conv", "blur", "aps"])
def test_resnet18_parameter_count(kind):
    model = M.create_model("resnet18", pool=kind)
    shapes = jax.eval_shape(lambda: M.init_model(model, KEY, (1, 32, 32, 3)))
    # The CIFAR ResNet-18 of kuangliu/pytorch-cifar has 11,173,962 parameters.
    assert M.count_params(shapes) == 11_173_962


# --------------------------------------------------------------------------------------------
# Registry, errors, compilation.


def test_create_model_registry_and_errors():
    assert set(M.MODELS) == {"probe", "small_cnn", "resnet18", "resnet_tiny", "downsample_input"}
    assert isinstance(M.create_model("small_cnn"), M.SmallCNN)
    assert M.create_model("resnet_tiny").stage_sizes == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="valid are probe, small_cnn") as e:
        M.create_model("vgg16")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no option.*poool.*valid are .*pool") as e:
        M.create_model("small_cnn", poool="max")
    assert "\n" not in str(e.value)
    for bad in [{"pool": "maxx"}, {"head": "mlp"}, {"conv_padding": "REFLECT"}]:
        with pytest.raises(ValueError) as e:
            M.create_model("small_cnn", **bad)
        assert "\n" not in str(e.value) and "valid are" in str(e.value)
    with pytest.raises(ValueError, match="norm"):
        M.create_model("resnet_tiny", norm="layer")


def test_models_are_hashable_with_dict_options():
    a = M.create_model("small_cnn", pool="blur", pool_options={"filter_size": 5})
    b = M.create_model("small_cnn", pool="blur", pool_options=(("filter_size", 5),))
    assert a == b and hash(a) == hash(b)
    assert a.pool_options == (("filter_size", 5),)


@pytest.mark.parametrize(
    ("name", "options", "shape"),
    [
        ("probe", {"pool": "stochastic"}, (2, 12, 12, 1)),
        ("small_cnn", {**TINY, "pool": "stochastic", "head": "gap"}, (2, 12, 12, 1)),
        ("downsample_input", {**TINY, "size": 6}, (2, 12, 12, 1)),
        ("resnet_tiny", {"width": 4, "norm": "none"}, (2, 8, 8, 3)),
        ("resnet_tiny", {"width": 4}, (2, 8, 8, 3)),
    ],
)
def test_every_model_accepts_the_training_call(name, options, shape):
    model = M.create_model(name, **options)
    variables = _init(model, KEY, (1,) + shape[1:])
    has_norm = options.get("norm") != "none" and name.startswith("resnet")
    assert ("batch_stats" in variables) == has_norm
    step = FAST_JIT(lambda v, a: _apply(model, v, a, train=True))
    out, updates = step(variables, _images(shape))
    assert out.shape[0] == 2 and _all_finite(out)
    assert set(updates) == ({"batch_stats"} if has_norm else set())


def test_jit_equals_eager():
    model = M.SmallCNN(pool="mixed", widths=(4, 8), hidden=16, conv_padding="CIRCULAR")
    x = _images((2, 16, 16, 1))
    variables = M.init_model(model, KEY, (1, 16, 16, 1))
    eager = model.apply(variables, x, return_features=True)
    jitted = jax.jit(lambda v, a: model.apply(v, a, return_features=True))(variables, x)
    for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(e, j, rtol=1e-5, atol=1e-6)


def test_batch_equals_one_example_at_a_time():
    # APS chooses its polyphase component per example: batching must not mix examples.
    model = M.SmallCNN(pool="aps", widths=(4, 8), head="gap")
    x = _images((3, 16, 16, 1))
    variables = _init(model, KEY, (1, 16, 16, 1))
    f = FAST_JIT(lambda a: model.apply(variables, a))
    batched = f(x)
    one_by_one = jnp.concatenate([f(x[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_models_still_take_their_images_and_any_size_with_a_gap_head():
    # The wrong-shape checks (tests/test_faults_api.py) refuse only what the parameters cannot
    # take: a convolutional model with a GAP head runs on any size.
    model = M.create_model("small_cnn", widths=(4, 8), head="gap")
    variables = jax.eval_shape(lambda: M.init_model(model, jax.random.key(0), (1, 28, 28, 1)))
    for shape in [(2, 28, 28, 1), (2, 32, 32, 1)]:
        out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
        assert out.shape == (2, 10)
