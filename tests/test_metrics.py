"""Tests for invariance.metrics: numpy references, hand-made cases, jit/vmap, edge cases, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from invariance import metrics
from invariance.metrics import (
    accuracy,
    consistency,
    cosine_similarity,
    flip_rate,
    invariance_score,
    kl_divergence,
    mean_abs_change,
    mean_ci,
    radial_profile,
    relative_l2,
    top1_change,
)


def _logits(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- numpy references


def test_accuracy_matches_numpy():
    logits = _logits(0, (3, 50, 7))
    labels = np.random.default_rng(1).integers(0, 7, size=(3, 50))
    want = np.mean(logits.argmax(-1) == labels)
    np.testing.assert_allclose(accuracy(logits, labels), want, rtol=1e-6)
    assert accuracy(logits, logits.argmax(-1)) == 1.0


def test_consistency_and_top1_change_match_numpy():
    a, b = _logits(0, (64, 5)), _logits(1, (64, 5))
    want = np.mean(a.argmax(-1) == b.argmax(-1))
    np.testing.assert_allclose(consistency(a, b), want, rtol=1e-6)
    np.testing.assert_allclose(top1_change(a, b), 1 - want, rtol=1e-6)


def test_mean_abs_change_matches_numpy():
    a, b = _logits(2, (40, 6)), _logits(3, (40, 6))
    yhat = a.argmax(-1)
    rows = np.arange(40)
    want = np.mean(np.abs(_softmax(a)[rows, yhat] - _softmax(b)[rows, yhat]))
    np.testing.assert_allclose(mean_abs_change(a, b), want, rtol=1e-5)


def test_flip_rate_matches_numpy_loop():
    x = _logits(4, (9, 6, 3))  # (m, n, K)
    pred = x.argmax(-1)
    m, n = pred.shape
    want = sum(pred[i, j] != pred[i, j - 1] for i in range(m) for j in range(1, n)) / (m * (n - 1))
    np.testing.assert_allclose(flip_rate(x), want, rtol=1e-6)
    # The same data with the frame axis first.
    np.testing.assert_allclose(flip_rate(np.swapaxes(x, 0, 1), axis=0), want, rtol=1e-6)


def test_relative_l2_and_cosine_match_numpy():
    a, b = _logits(5, (8, 3, 4, 2)), _logits(6, (8, 3, 4, 2))
    fa, fb = a.reshape(8, -1), b.reshape(8, -1)
    rel = np.linalg.norm(fa - fb, axis=1) / np.linalg.norm(fa, axis=1)
    cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
    assert relative_l2(a, b).shape == (8,)
    np.testing.assert_allclose(relative_l2(a, b), rel, rtol=1e-5)
    np.testing.assert_allclose(cosine_similarity(a, b), cos, rtol=1e-5, atol=1e-6)


def test_kl_divergence_matches_numpy():
    a, b = _logits(7, (2, 10, 5)), _logits(8, (2, 10, 5))
    pa, pb = _softmax(a.astype(np.float64)), _softmax(b.astype(np.float64))
    want = np.sum(pa * (np.log(pa) - np.log(pb)), axis=-1)
    out = kl_divergence(a, b)
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(out) >= -1e-6)


# ----------------------------------------------------------------------------- identities


@settings(max_examples=10)
@given(st.integers(0, 2**31 - 1))
def test_identity_gives_perfect_scores(seed):
    a = _logits(seed, (6, 4))
    assert consistency(a, a) == 1.0
    assert top1_change(a, a) == 0.0
    assert mean_abs_change(a, a) == 0.0
    np.testing.assert_array_equal(relative_l2(a, a), 0.0)
    np.testing.assert_allclose(cosine_similarity(a, a), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(kl_divergence(a, a), 0.0)
    assert flip_rate(np.broadcast_to(a[:, None], (6, 5, 4))) == 0.0


# ----------------------------------------------------------------------------- hand-made cases


def test_flip_rate_hand_made():
    eye = np.eye(3, dtype=np.float32)
    seq1 = eye[[0, 0, 1, 1, 2]]  # predictions 0 0 1 1 2: 2 flips of 4
    seq2 = eye[[0, 1, 0, 1, 0]]  # 4 flips of 4
    assert flip_rate(seq1[None]) == 0.5
    assert flip_rate(np.stack([seq1, seq2])) == 0.75
    assert flip_rate(eye[[2, 2]][None]) == 0.0  # two frames is the minimum


def test_mean_abs_change_hand_made():
    a = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32))
    b = np.log(np.array([[0.4, 0.5, 0.1], [0.3, 0.1, 0.6]], np.float32))
    # yhat from a = (0, 2): |0.7 - 0.4| = 0.3 and |0.8 - 0.6| = 0.2, even though row 0's top-1
    # changes in b; the probability of a's class is compared.
    np.testing.assert_allclose(mean_abs_change(a, b), 0.25, rtol=1e-5)
    assert top1_change(a, b) == 0.5


def test_distance_edge_cases_and_finite_gradients():
    z = np.zeros((3, 4), np.float32)
    one = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(relative_l2(z, z), 0.0)
    np.testing.assert_array_equal(relative_l2(z, one), np.inf)
    np.testing.assert_array_equal(relative_l2(one, z), 1.0)
    np.testing.assert_array_equal(cosine_similarity(z, z), 1.0)
    np.testing.assert_array_equal(cosine_similarity(z, one), 0.0)
    np.testing.assert_array_equal(cosine_similarity(one, z), 0.0)
    np.testing.assert_allclose(cosine_similarity(one, -one), -1.0)
    for f in (relative_l2, cosine_similarity):
        for x, y in ((z, z), (one, one), (z, one), (one, z)):
            ga, gb = jax.grad(lambda p, q, f=f: jnp.sum(f(p, q)), argnums=(0, 1))(x, y)
            assert np.all(np.isfinite(ga)) and np.all(np.isfinite(gb)), (f.__name__, x, y)


def test_gradients_match_finite_differences():
    a, b = _logits(9, (3, 5)).astype(np.float64), _logits(10, (3, 5)).astype(np.float64)
    with jax.enable_x64():
        a, b = jnp.asarray(a), jnp.asarray(b)
        for f in (relative_l2, cosine_similarity, kl_divergence):
            check_grads(lambda p, q, f=f: f(p, q), (a, b), order=1, modes=("rev",))


def test_kl_with_masked_class_is_finite():
    a = jnp.array([[0.0, -jnp.inf, 1.0]])
    b = jnp.array([[0.5, 0.2, 0.1]])
    out = kl_divergence(a, b)
    assert np.isfinite(out).all() and float(out[0]) > 0


def test_radial_profile_known_rings():
    # Map value = ring index, so each ring's mean is its radius.
    dy, dx = np.meshgrid(np.arange(7) - 3, np.arange(7) - 3, indexing="ij")
    ring = np.rint(np.hypot(dy, dx))
    radii, values = radial_profile(jnp.asarray(ring, jnp.float32))
    np.testing.assert_array_equal(radii, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(values, radii, rtol=1e-6)

    # 3x3 by hand: centre 0, ring 1 = the 4 edge neighbours, the 4 corners (sqrt 2 -> 1) too.
    m = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 6.0], [7.0, 8.0, 9.0]])
    radii, values = radial_profile(m)
    np.testing.assert_array_equal(radii, [0, 1])
    np.testing.assert_allclose(values, [0.0, 40.0 / 8])
    # Off-centre: corner (0, 0) as the zero shift. Ring 1: |d| in {1, 1, sqrt 2} -> 2, 4, 0;
    # ring 2: |d| in {2, 2, sqrt 5, sqrt 5} -> 3, 7, 6, 8; ring 3: sqrt 8 -> 9.
    radii, values = radial_profile(m, center=(0, 0))
    np.testing.assert_array_equal(radii, [0, 1, 2, 3])
    np.testing.assert_allclose(values, [1.0, 6.0 / 3, 24.0 / 4, 9.0])
    # Leading axes are kept.
    _, values = radial_profile(jnp.stack([m, 2 * m]))
    np.testing.assert_allclose(values, [[0.0, 5.0], [0.0, 10.0]])


def test_radial_profile_matches_numpy_on_random_map():
    m = _logits(11, (9, 9))
    dy, dx = np.meshgrid(np.arange(9) - 4, np.arange(9) - 4, indexing="ij")
    ring = np.rint(np.hypot(dy, dx)).astype(int)
    radii, values = radial_profile(m)
    want = [m[ring == r].mean() for r in np.unique(ring)]
    np.testing.assert_array_equal(radii, np.unique(ring))
    np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- mean_ci


def test_mean_ci_known_values():
    m, hw = mean_ci([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.302653
    assert m == 2.0
    np.testing.assert_allclose(hw, 4.302653 / math.sqrt(3), rtol=1e-6)
    m, hw = mean_ci([2.0, 4.0])  # s = sqrt(2), n = 2, t_{0.975, 1} = 12.706205 -> 12.706205
    np.testing.assert_allclose((m, hw), (3.0, 12.706205), rtol=1e-6)
    m, hw = mean_ci(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), confidence=0.99)  # t_{0.995, 4}
    np.testing.assert_allclose(hw, 4.604095 * math.sqrt(2.5) / math.sqrt(5), rtol=1e-6)
    m, hw = mean_ci([5.0])
    assert m == 5.0 and math.isnan(hw)


@pytest.mark.parametrize(
    ("confidence", "df", "t"),
    [
        (0.95, 1, 12.706205),
        (0.95, 2, 4.302653),
        (0.95, 5, 2.570582),
        (0.95, 10, 2.228139),
        (0.95, 30, 2.042272),
        (0.95, 100, 1.983972),
        (0.90, 7, 1.894579),
        (0.99, 4, 4.604095),
        (0.95, 100_000, 1.959988),
    ],
)
def test_t_critical_matches_tables(confidence, df, t):
    np.testing.assert_allclose(metrics._t_critical(confidence, df), t, rtol=2e-6)


# ----------------------------------------------------------------------------- invariance score


def test_invariance_score_constructed_case():
    # 100 clean inputs, 3 units; rate 0.01 -> each unit fires on exactly its largest input.
    clean = np.tile(np.arange(100, dtype=np.float32)[:, None], (1, 3))
    traj = np.zeros((100, 4, 3), np.float32)
    traj[99, :, 0] = 1000.0  # unit 0: fires on the whole trajectory of its firing input
    traj[99, :2, 1] = 1000.0  # unit 1: on half of it
    traj[:, :, 2] = 1000.0  # unit 2: on every trajectory point, but only n = 99 counts
    traj[99, :, 2] = 0.0  # ... and there it never fires
    score = invariance_score(clean, traj)
    np.testing.assert_allclose(score, [1.0 / 0.01, 0.5 / 0.01, 0.0], rtol=1e-5)


def test_invariance_score_matches_numpy_and_dead_unit_is_nan():
    rng = np.random.default_rng(12)
    clean = rng.normal(size=(200, 5)).astype(np.float32)
    traj = (clean[:, None, :] + 0.5 * rng.normal(size=(200, 6, 5))).astype(np.float32)
    clean[:, 4] = 0.0  # a dead ReLU unit never fires
    traj[:, :, 4] = 0.0
    rate = 0.05
    t = np.quantile(clean, 1 - rate, axis=0)
    want = []
    for u in range(5):
        fire = clean[:, u] > t[u]
        g = fire.mean()
        want.append((traj[fire, :, u] > t[u]).mean() / g if g > 0 else np.nan)
    out = invariance_score(clean, traj, rate=rate)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert np.isnan(out[4]) and np.all(np.asarray(out[:4]) > 1)


# ----------------------------------------------------------------------------- jit and vmap


_PAIRS = (consistency, top1_change, mean_abs_change, relative_l2, cosine_similarity, kl_divergence)


@pytest.mark.parametrize("f", _PAIRS, ids=lambda f: f.__name__)
def test_pair_metrics_jit_and_vmap(f, check_jit_vmap):
    a, b = _logits(13, (4, 16, 5)), _logits(14, (4, 16, 5))
    check_jit_vmap(f, a, b, rtol=1e-6, atol=1e-7)


def test_other_metrics_jit_and_vmap(check_jit_vmap):
    logits, labels = _logits(15, (3, 20, 4)), np.random.default_rng(16).integers(0, 4, (3, 20))
    loop = check_jit_vmap(accuracy, logits, labels, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(accuracy)(logits, labels), np.mean(loop), rtol=1e-6)

    seq = _logits(17, (3, 5, 8, 4))
    check_jit_vmap(flip_rate, seq, rtol=1e-6)
    check_jit_vmap(lambda s: flip_rate(s, axis=0), seq, rtol=1e-6)

    maps = _logits(18, (2, 5, 5))
    radii, values = check_jit_vmap(radial_profile, maps, rtol=1e-6)
    np.testing.assert_array_equal(radii[0], radial_profile(maps)[0])
    np.testing.assert_allclose(values, radial_profile(maps)[1], rtol=1e-6)

    clean, traj = _logits(19, (2, 50, 3)), _logits(20, (2, 50, 4, 3))
    check_jit_vmap(lambda c, t: invariance_score(c, t, rate=0.1), clean, traj, rtol=1e-6)
    check_jit_vmap(invariance_score, clean, traj, rtol=1e-6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: accuracy(np.zeros((4, 3)), np.zeros(5, int)), "labels must have shape"),
        (lambda: accuracy(np.zeros((4, 3)), np.zeros(4)), "labels must be integers"),
        (lambda: accuracy(np.float32(1.0), np.int32(0)), "logits must have shape"),
        (lambda: consistency(np.zeros((4, 3)), np.zeros((4, 2))), "same shape"),
        (lambda: consistency(np.float32(0), np.float32(0)), "logits_a must have shape"),
        (lambda: top1_change(np.zeros((4, 3)), np.zeros((3, 3))), "same shape"),
        (lambda: mean_abs_change(np.zeros((4, 3)), np.zeros(3)), "same shape"),
        (lambda: kl_divergence(np.zeros((2, 3)), np.zeros((2, 4))), "same shape"),
        (lambda: relative_l2(np.zeros((2, 3)), np.zeros((3, 2))), "same shape"),
        (lambda: relative_l2(np.float32(1), np.float32(1)), "a must have shape"),
        (lambda: cosine_similarity(np.zeros((2, 3)), np.zeros((2, 3, 1))), "same shape"),
        (lambda: flip_rate(np.zeros((4, 1, 3))), "at least 2 frames"),
        (lambda: flip_rate(np.zeros((4, 5, 3)), axis=-1), "class"),
        (lambda: flip_rate(np.zeros((4, 5, 3)), axis=2), "class"),
        (lambda: flip_rate(np.zeros((4, 5, 3)), axis=3), "frame axis"),
        (lambda: flip_rate(np.zeros((4, 5, 3)), axis=1.0), "frame axis"),
        (lambda: flip_rate(np.zeros(3)), "logits_seq must have shape"),
        (lambda: radial_profile(np.zeros(5)), "sensitivity_map must have shape"),
        (lambda: radial_profile(np.zeros((3, 3)), center=(3, 0)), "center must be"),
        (lambda: radial_profile(np.zeros((3, 3)), center=(1,)), "center must be"),
        (lambda: radial_profile(np.zeros((3, 3)), center=(1.0, 1)), "center must be"),
        (lambda: invariance_score(np.zeros((4, 2)), np.zeros((4, 3, 3))), "trajectories"),
        (lambda: invariance_score(np.zeros((4, 2)), np.zeros((4, 2))), "trajectories"),
        (lambda: invariance_score(np.zeros(4), np.zeros((4, 3, 1))), "trajectories"),
        (lambda: invariance_score(np.zeros((4, 2)), np.zeros((4, 3, 2)), rate=1.0), "rate"),
        (lambda: invariance_score(np.zeros((4, 2)), np.zeros((4, 3, 2)), rate=0), "rate"),
        (lambda: mean_ci([]), "non-empty 1-D"),
        (lambda: mean_ci([[1.0, 2.0]]), "non-empty 1-D"),
        (lambda: mean_ci([1.0, 2.0], confidence=95), "confidence"),
        (lambda: mean_ci([1.0, 2.0], confidence=0.0), "confidence"),
    ],
)
def test_errors_are_one_line_value_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
