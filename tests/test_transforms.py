"""Tests for invariance.transforms: references, jit == eager, vmap == loop, properties, errors.

Compilation dominates the runtime on a CPU, so most tests share one batch shape (3, 6, 6, 2),
and loops and property tests call jitted functions whose options are traced (one compile per
shape, whatever the option values).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from hypothesis import given, settings
from hypothesis import strategies as st

from invariance import transforms as T
from invariance._checks import is_concrete

KEY = jax.random.key(0)
SHAPE = (3, 6, 6, 2)

# Options traced: one compile per image shape (and static string option).
random_mask_j = jax.jit(T.random_mask, static_argnames="fill")
translate_j = jax.jit(T.translate, static_argnames="mode")


def _images(shape=SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 2.0, size=shape).astype(np.float32)


def _assert_close(a, b, atol=0.0):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


def _check_jit_and_vmaps(check, fn, options, atol=0.0, random=False):
    """fn(images, option) through the shared checker (``check_jit_vmap`` in conftest): jit ==
    eager and vmap == loop, over the options and over the images.

    For deterministic ops the per-image results also equal the batched call; random ops draw
    independently per image in a batch, so there (random=True) they must not.
    """
    x, opts = _images(), jnp.asarray(options)
    sweep = check(lambda o: fn(x, o), opts, atol=atol)
    assert sweep.shape == (len(options), *SHAPE)
    loop = check(lambda im: fn(im, opts[0]), x, atol=atol)
    eager = fn(x, opts[0])
    if random:
        assert not np.allclose(loop, eager)
    else:
        _assert_close(loop, eager, atol)


# ----------------------------------------------------------------------------- references


def _line_mask_ref(x, orientation, period, width, offset, fill):
    out = x.copy()
    h, w = x.shape[-3:-1]
    for i in range(h):
        if orientation in ("horizontal", "grid") and (i - offset) % period < width:
            out[..., i, :, :] = fill
    for j in range(w):
        if orientation in ("vertical", "grid") and (j - offset) % period < width:
            out[..., :, j, :] = fill
    return out


def _occlude_ref(x, top, left, height, width, fill):
    out = x.copy()
    h, w = x.shape[-3:-1]
    for i in range(h):
        for j in range(w):
            if top <= i < top + height and left <= j < left + width:
                out[..., i, j, :] = fill
    return out


def _translate_constant_ref(x, dy, dx):
    out = np.zeros_like(x)
    h, w = x.shape[-3:-1]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[..., i, j, :] = x[..., i - dy, j - dx, :]
    return out


def _masked_positions(x, out):
    """(..., H, W) bool: where any channel changed, after checking all channels agree."""
    changed = np.asarray(out) != x
    np.testing.assert_array_equal(changed.any(-1), changed.all(-1))
    return changed.any(-1)


# ----------------------------------------------------------------------------- random_mask


@settings(max_examples=20)
@given(
    hw=st.sampled_from([(1, 1), (1, 7), (5, 3), (6, 6)]),
    ratio=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_random_mask_masks_exact_count_on_every_channel(hw, ratio, seed):
    h, w = hw
    x = _images((2, h, w, 3), seed) + 10.0  # no pixel equals the fill
    out = np.asarray(random_mask_j(jax.random.key(seed), x, ratio=ratio, fill=-5.0))
    expected = int(np.round(np.float32(ratio) * np.float32(h * w)))  # float32, half to even
    masked = _masked_positions(x, out)
    np.testing.assert_array_equal(masked.sum((-2, -1)), [expected, expected])
    np.testing.assert_array_equal(out[masked], -5.0)
    np.testing.assert_array_equal(out[~masked], x[~masked])


def test_random_mask_extremes_and_python_round():
    x = _images((4, 10, 10, 2)) + 10.0
    _assert_close(T.random_mask(KEY, x, ratio=0.0), x)
    _assert_close(T.random_mask(KEY, x, ratio=1.0, fill=3.0), np.full_like(x, 3.0))
    for ratio in (0.1, 0.25, 0.33, 0.5):
        masked = _masked_positions(x, random_mask_j(KEY, x, ratio=ratio))
        assert (masked.sum((-2, -1)) == round(ratio * 100)).all()


def test_random_mask_independent_per_image_in_leading_dims():
    x = _images((2, 3, 6, 6, 2)) + 10.0
    masked = _masked_positions(x, random_mask_j(KEY, x, ratio=0.5)).reshape(6, 36)
    assert len({row.tobytes() for row in masked}) == 6


def test_random_mask_is_uniform_over_positions():
    x = np.ones((4, 4, 1), np.float32)
    outs = jax.vmap(lambda k: T.random_mask(k, x, ratio=0.5))(jax.random.split(KEY, 400))
    freq = np.asarray(outs == 0).mean(0)[..., 0]
    assert np.all(np.abs(freq - 0.5) < 0.12), freq


def test_random_mask_jit_and_vmap_over_images_and_ratios(check_jit_vmap):
    # vmap with a shared key gives each image the same mask, exactly as the loop does.
    _check_jit_and_vmaps(
        check_jit_vmap,
        lambda x, r: T.random_mask(KEY, x, ratio=r, fill="max"),
        [0.1, 0.2, 0.3, 0.4, 0.5],
        random=True,
    )


# ----------------------------------------------------------------------------- fill


@pytest.mark.parametrize("fill", ["max", "min"])
def test_fill_extreme_is_per_image(fill):
    x = _images()
    x[1] *= 4.0  # different extremes per image
    reduce = np.max if fill == "max" else np.min
    out = np.asarray(T.occlude(x, top=1, left=1, height=2, width=3, fill=fill))
    for i in range(3):
        np.testing.assert_array_equal(out[i, 1:3, 1:4], reduce(x[i]))
        np.testing.assert_array_equal(out[i, 0], x[i, 0])
    out = np.asarray(random_mask_j(KEY, x, ratio=0.4, fill=fill))
    masked = np.asarray(random_mask_j(KEY, x, ratio=0.4, fill=np.nan)[..., 0] != x[..., 0])
    for i in range(3):
        np.testing.assert_array_equal(out[i][masked[i]], reduce(x[i]))
        np.testing.assert_array_equal(out[i][~masked[i]], x[i][~masked[i]])


def test_fill_in_rotate_and_traced_numeric_fill(check_jit_vmap):
    x = _images()
    out = np.asarray(T.rotate(x, degrees=45.0, fill="min"))
    for i in range(3):
        assert out[i, 0, 0, 0] == x[i].min()
    _check_jit_and_vmaps(
        check_jit_vmap,
        lambda x, f: T.line_mask(x, orientation="grid", period=3, fill=f),
        [-1.0, 0.0, 7.0],
    )


# ----------------------------------------------------------------------------- line_mask


@pytest.mark.parametrize("orientation", ["vertical", "horizontal", "grid"])
@pytest.mark.parametrize(
    ("period", "width", "offset"), [(1, 1, 0), (3, 1, 0), (4, 2, 5), (3, 0, 1), (2, 3, -1)]
)
def test_line_mask_matches_reference(orientation, period, width, offset):
    x = _images((2, 7, 9, 3))
    got = T.line_mask(
        x, orientation=orientation, period=period, width=width, offset=offset, fill=-3.0
    )
    _assert_close(got, _line_mask_ref(x, orientation, period, width, offset, -3.0))


def test_line_mask_jit_and_vmap_over_options(check_jit_vmap):
    opts = [(2, 1, 0), (3, 2, 1), (4, 0, 2), (5, 1, 3)]

    def fn(x, o):
        return T.line_mask(x, orientation="vertical", period=o[0], width=o[1], offset=o[2])

    _check_jit_and_vmaps(check_jit_vmap, fn, opts)
    x = _images()
    sweep = jax.vmap(lambda o: fn(x, o))(jnp.asarray(opts))
    for i, (p, w, o) in enumerate(opts):
        _assert_close(sweep[i], _line_mask_ref(x, "vertical", p, w, o, 0.0))


# ----------------------------------------------------------------------------- occlude


@settings(max_examples=20)
@given(
    top=st.integers(-4, 8),
    left=st.integers(-4, 8),
    height=st.integers(0, 8),
    width=st.integers(0, 8),
)
def test_occlude_matches_reference_and_clips(top, left, height, width):
    x = _images()
    got = T.occlude(x, top=top, left=left, height=height, width=width, fill=0.5)
    _assert_close(got, _occlude_ref(x, top, left, height, width, 0.5))


def test_occlude_jit_and_vmap_over_positions_is_an_occlusion_map(check_jit_vmap):
    tops, lefts = np.meshgrid(np.arange(0, 6, 2), np.arange(-1, 6, 2), indexing="ij")
    positions = np.stack([tops.ravel(), lefts.ravel()], -1)

    def fn(x, p):
        return T.occlude(x, top=p[0], left=p[1], height=2, width=3)

    _check_jit_and_vmaps(check_jit_vmap, fn, positions)
    x = _images()
    sweep = jax.vmap(lambda p: fn(x, p))(jnp.asarray(positions))
    for i, (t, l) in enumerate(positions):
        _assert_close(sweep[i], _occlude_ref(x, t, l, 2, 3, 0.0))


# ----------------------------------------------------------------------------- translate


@settings(max_examples=20)
@given(dy=st.integers(-9, 9), dx=st.integers(-9, 9))
def test_translate_matches_roll_and_constant_reference(dy, dx):
    x = _images()
    _assert_close(translate_j(x, dy=dy, dx=dx), np.roll(x, (dy, dx), axis=(-3, -2)))
    const = translate_j(x, dy=dy, dx=dx, mode="constant")
    _assert_close(const, _translate_constant_ref(x, dy, dx))


@pytest.mark.parametrize("mode", ["circular", "constant"])
def test_translate_eager_static_shifts(mode):
    x = _images()
    for dy, dx in [(0, 0), (2, -1), (-6, 7)]:
        _assert_close(
            T.translate(x, dy=dy, dx=dx, mode=mode), translate_j(x, dy=dy, dx=dx, mode=mode)
        )
    _assert_close(T.translate(x, dy=0, dx=0, mode=mode), x)


@settings(max_examples=20)
@given(
    hw=st.sampled_from([(1, 1), (4, 7), (6, 6)]),
    dy=st.integers(-8, 8),
    dx=st.integers(-8, 8),
)
def test_translate_circular_inverts_and_constant_zero_fills_exactly(hw, dy, dx):
    h, w = hw
    x = _images((h, w, 2)) + 10.0  # no zeros of its own
    _assert_close(translate_j(translate_j(x, dy=dy, dx=dx), dy=-dy, dx=-dx), x)
    zero_rows = (np.asarray(translate_j(x, dy=dy, dx=0, mode="constant")) == 0).all((-2, -1))
    assert zero_rows.sum() == min(abs(dy), h)
    zero_cols = (np.asarray(translate_j(x, dy=0, dx=dx, mode="constant")) == 0).all((-3, -1))
    assert zero_cols.sum() == min(abs(dx), w)
    if dy > 0:
        assert zero_rows[: min(dy, h)].all()  # content moved down: the top rows are empty
    if dx > 0:
        assert zero_cols[: min(dx, w)].all()  # content moved right: the left columns are empty


@pytest.mark.parametrize("mode", ["circular", "constant"])
def test_translate_jit_and_vmap_over_images_and_shifts(mode, check_jit_vmap):
    shifts = [(s, -s) for s in range(-7, 9)]  # the CIFAR-P translate frames (diagonal)
    _check_jit_and_vmaps(
        check_jit_vmap, lambda x, s: T.translate(x, dy=s[0], dx=s[1], mode=mode), shifts
    )


# ----------------------------------------------------------------------------- rotate


def test_rotate_zero_is_identity_and_full_turn_nearly_so():
    x = _images()
    _assert_close(T.rotate(x, degrees=0.0), x)
    _assert_close(T.rotate(x, degrees=360.0), x, atol=1e-5)
    _assert_close(T.rotate(x, degrees=-720.0), x, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, -1])
def test_rotate_multiples_of_90_match_rot90_counter_clockwise(k):
    x = _images()
    _assert_close(T.rotate(x, degrees=90.0 * k), np.rot90(x, k, axes=(-3, -2)), atol=1e-5)


def test_rotate_90_on_non_square_fills_outside():
    # H=4, W=6, centre (1.5, 2.5): output (r, c) samples input (c - 1, 4 - r), inside for c in 1..4.
    x = _images((4, 6, 1)) + 10.0
    ref = np.full_like(x, -1.0)
    for r in range(4):
        for c in range(1, 5):
            ref[r, c] = x[c - 1, 4 - r]
    _assert_close(T.rotate(x, degrees=90.0, fill=-1.0), ref, atol=1e-5)


@pytest.mark.parametrize("degrees", [17.0, -17.0, 33.3, 123.0, 90.0])
@pytest.mark.parametrize("shape", [(7, 9, 2), (6, 6, 2)])
def test_rotate_matches_scipy_bilinear(degrees, shape):
    # scipy.ndimage.rotate(axes=(1, 0), order=1, mode="constant") has the same convention.
    x = _images(shape)
    ref = scipy.ndimage.rotate(
        x, degrees, axes=(1, 0), reshape=False, order=1, mode="constant", cval=-7.0
    )
    _assert_close(T.rotate(x, degrees=degrees, fill=-7.0), ref, atol=1e-5)


def test_rotate_jit_and_vmap_over_images_and_angles(check_jit_vmap):
    _check_jit_and_vmaps(
        check_jit_vmap,
        lambda x, d: T.rotate(x, degrees=d, fill="max"),
        np.linspace(-30.0, 30.0, 5),
        atol=1e-6,
    )


# ----------------------------------------------------------------------------- gaussian_noise


def test_gaussian_noise_std_mean_and_zero_sigma():
    x = np.zeros((4, 64, 64, 3), np.float32)
    noisy = np.asarray(T.gaussian_noise(KEY, x, sigma=0.3))
    assert abs(noisy.std() - 0.3) < 0.01 and abs(noisy.mean()) < 0.01
    assert not np.allclose(noisy[0], noisy[1])  # each image gets its own noise
    y = _images()
    _assert_close(T.gaussian_noise(KEY, y, sigma=0.0), y)


def test_gaussian_noise_jit_and_vmap_over_images_and_sigmas(check_jit_vmap):
    _check_jit_and_vmaps(
        check_jit_vmap,
        lambda x, s: T.gaussian_noise(KEY, x, sigma=s),
        [0.1, 0.0, 0.2, 0.4],
        1e-6,
        random=True,
    )


def test_rotate_translate_reference_cases():
    x = jnp.asarray(_images()[0])
    out = T.rotate_translate(x, dy=2.0, dx=-3.0, degrees=0.0)
    np.testing.assert_array_equal(out, T.translate(x, dy=2, dx=-3, mode="constant"))
    half = T.rotate_translate(x, dy=0.0, dx=0.5, degrees=0.0)
    np.testing.assert_allclose(half[:, 1:], (x[:, 1:] + x[:, :-1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(half[:, 0], x[:, 0] / 2, rtol=1e-6)
    quarter = T.rotate_translate(x, dy=0.0, dx=0.0, degrees=90.0)
    np.testing.assert_allclose(quarter, np.rot90(x, axes=(0, 1)), atol=1e-5)


def test_rotate_translate_jit_and_vmap_over_images_and_transforms(check_jit_vmap):
    grid = [(0.0, 0.0, 0.0), (1.5, -1.0, 10.0), (-2.0, 0.5, -30.0), (0.0, 1.0, 90.0)]
    _check_jit_and_vmaps(
        check_jit_vmap,
        lambda x, t: T.rotate_translate(x, dy=t[0], dx=t[1], degrees=t[2]),
        grid,
        1e-5,
    )


# ----------------------------------------------------------------------------- errors


IMG = np.zeros((4, 4, 1), np.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: T.random_mask(KEY, IMG, ratio=-0.1), r"ratio must be in \[0, 1\], got -0.1"),
        (lambda: T.random_mask(KEY, IMG, ratio=1.5), r"ratio must be in \[0, 1\], got 1.5"),
        (
            lambda: T.random_mask(KEY, IMG, ratio=0.5, fill="mean"),
            r"fill must be a number or one of \['max', 'min'\], got 'mean'",
        ),
        (
            lambda: T.line_mask(IMG, orientation="diagonal", period=2),
            r"orientation must be one of \['vertical', 'horizontal', 'grid'\], got 'diagonal'",
        ),
        (lambda: T.line_mask(IMG, orientation="grid", period=0), r"period must be >= 1, got 0"),
        (
            lambda: T.line_mask(IMG, orientation="grid", period=2, width=-1),
            r"width must be >= 0, got -1",
        ),
        (
            lambda: T.line_mask(IMG, orientation="grid", period=2, fill="top"),
            r"fill must be a number or one of",
        ),
        (
            lambda: T.occlude(IMG, top=0, left=0, height=-1, width=2),
            r"height must be >= 0, got -1",
        ),
        (lambda: T.occlude(IMG, top=0, left=0, height=1, width=-2), r"width must be >= 0, got -2"),
        (
            lambda: T.occlude(IMG, top=0, left=0, height=1, width=1, fill="avg"),
            r"fill must be a number or one of",
        ),
        (
            lambda: T.translate(IMG, dy=1, dx=1, mode="reflect"),
            r"mode must be one of \['circular', 'constant'\], got 'reflect'",
        ),
        (lambda: T.rotate(IMG, degrees=10.0, fill="mode"), r"fill must be a number or one of"),
        (lambda: T.gaussian_noise(KEY, IMG, sigma=-1.0), r"sigma must be >= 0, got -1.0"),
        (lambda: T.random_mask(KEY, IMG, ratio=jnp.float32(2.0)), r"ratio must be in \[0, 1\]"),
    ],
)
def test_bad_options_raise_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: T.random_mask(KEY, x, ratio=0.5),
        lambda x: T.line_mask(x, orientation="grid", period=2),
        lambda x: T.occlude(x, top=0, left=0, height=1, width=1),
        lambda x: T.translate(x, dy=1, dx=1),
        lambda x: T.rotate(x, degrees=10.0),
        lambda x: T.gaussian_noise(KEY, x, sigma=0.1),
    ],
)
def test_rank_below_three_raises(call):
    with pytest.raises(ValueError, match=r"image must be \(\.\.\., H, W, C\), got shape \(4, 4\)"):
        call(np.zeros((4, 4), np.float32))


def test_traced_options_skip_validation():
    assert is_concrete(0.5) and is_concrete(jnp.float32(0.5))
    seen = []
    jax.jit(lambda r: seen.append(is_concrete(r)) or r)(1.0)
    assert seen == [False]
    # Under a trace the value is unknown, so no check runs (and nothing is branched on).
    random_mask_j(KEY, IMG, ratio=1.5)
    translate_j(IMG, dy=1, dx=1)
