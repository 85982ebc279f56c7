"""Training augmentation (invariance.train._augment) and its use in the train step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from invariance import transforms as T
from invariance.train import _augment as A


def _batch(n=6, h=12, w=12):
    # Distinct values everywhere, so a shift can be identified from its output.
    x = jnp.arange(n * h * w, dtype=jnp.float32).reshape(n, h, w, 1) + 1.0
    return x / x.max()


def _offset_of(src, out, t, mode):
    """The (dy, dx) in -t..t whose translate(src) equals out, or None."""
    hits = [
        (dy, dx)
        for dy in range(-t, t + 1)
        for dx in range(-t, t + 1)
        if np.array_equal(np.asarray(T.translate(src, dy=dy, dx=dx, mode=mode)), out)
    ]
    return hits[0] if len(hits) == 1 else None


@pytest.mark.parametrize("mode", ["constant", "circular"])
def test_translate_stays_within_range_and_varies_per_image(mode):
    x = _batch(n=16)
    spec = A.check_augment({"translate": 2, "translate_mode": mode})
    out = np.asarray(jax.jit(lambda k, x: A.augment_batch(k, x, spec))(jax.random.key(0), x))
    offsets = [_offset_of(x[i], out[i], 2, mode) for i in range(len(x))]
    assert all(o is not None for o in offsets), offsets  # every image: one shift within +-2
    assert len(set(offsets)) > 3  # drawn per image, not one shift for the batch


def test_mask_ratio_within_range_and_deterministic_per_key():
    x = _batch(n=32, h=10, w=10)
    spec = A.check_augment({"mask_ratio": [0.1, 0.5]})
    f = jax.jit(lambda k, x: A.augment_batch(k, x, spec))
    a, b = np.asarray(f(jax.random.key(3), x)), np.asarray(f(jax.random.key(3), x))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.asarray(f(jax.random.key(4), x)))
    ratios = (a == 0).mean(axis=(1, 2, 3))  # x has no zeros of its own
    assert ratios.min() >= 0.1 - 1e-6 and ratios.max() <= 0.5 + 1e-6
    assert ratios.std() > 0.02  # a ratio per image
    kept = a != 0
    np.testing.assert_array_equal(a[kept], np.asarray(x)[kept])  # unmasked pixels untouched


def test_augment_vmaps_over_seeds_like_separate_calls():
    x = jnp.stack([_batch(n=4), _batch(n=4)[::-1]])  # (S, B, H, W, C)
    keys = jax.random.split(jax.random.key(1), 2)
    spec = A.check_augment({"translate": 3, "mask_ratio": [0.2, 0.3]})
    both = jax.jit(jax.vmap(lambda k, x: A.augment_batch(k, x, spec)))(keys, x)
    for s in range(2):
        np.testing.assert_array_equal(
            np.asarray(both[s]), np.asarray(A.augment_batch(keys[s], x[s], spec))
        )


def test_empty_augment_is_identity():
    x = _batch()
    np.testing.assert_array_equal(np.asarray(A.augment_batch(jax.random.key(0), x, {})), x)
    assert A.check_augment(None) == {} and A.check_augment(ml_collections.ConfigDict()) == {}


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"translat": 3}, "unknown train.augment option"),
        ({"translate": -1}, "translate must be an int >= 0"),
        ({"translate": 1.5}, "translate must be an int >= 0"),
        ({"translate": 2, "translate_mode": "wrap"}, "translate_mode must be one of"),
        ({"mask_ratio": [0.5, 0.1]}, "mask_ratio must be"),
        ({"mask_ratio": 0.3}, "mask_ratio must be"),
        ({"mask_ratio": [0.1, 1.5]}, "mask_ratio must be"),
    ],
)
def test_bad_augment_is_one_line(spec, match):
    with pytest.raises(ValueError, match=match):
        A.check_augment(spec)


def test_train_step_applies_augment_and_keeps_plain_runs_unchanged(tmp_path):
    """An augmented run trains differently; a run with an empty augment trains exactly as one
    without the field (the pool / dropout keys are not disturbed)."""
    from invariance.train import default_config, train

    def run(name, augment):
        c = default_config()
        c.dataset, c.train_examples, c.eval_examples = "synthetic", 128, 32
        c.num_epochs, c.batch_size, c.progress = 1, 32, False
        c.model_options = ml_collections.ConfigDict({"pool": "stochastic", "widths": (2, 4)})
        if augment is not None:
            c.augment = augment
        r = train(c, workdir=tmp_path / name)
        return jax.tree.leaves(r.params)

    plain, empty = run("plain", None), run("empty", {})
    shifted = run("shifted", {"translate": 3})
    for a, b in zip(plain, empty, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(a, b) for a, b in zip(plain, shifted, strict=True))


def test_train_refuses_bad_augment_in_one_line(tmp_path):
    from invariance.train import default_config, train

    c = default_config()
    c.dataset, c.train_examples = "synthetic", 64
    c.augment = {"mask_ratio": [0.6, 0.2]}
    with pytest.raises(ValueError, match="mask_ratio must be"):
        train(c, workdir=tmp_path / "bad")


def test_resume_with_another_augment_is_refused(tmp_path):
    """train.augment is an identity field: a checkpoint trained without it is not resumed
    with it (nor the other way round)."""
    from invariance.train import default_config, train

    c = default_config()
    c.dataset, c.train_examples, c.eval_examples = "synthetic", 64, 16
    c.num_epochs, c.stop_after_epochs, c.batch_size, c.progress = 2, 1, 32, False
    c.model_options = ml_collections.ConfigDict({"pool": "max", "widths": (2, 4)})
    train(c, workdir=tmp_path / "run")
    c.augment = {"translate": 2}
    with pytest.raises(ValueError, match="different augment"):
        train(c, workdir=tmp_path / "run")
