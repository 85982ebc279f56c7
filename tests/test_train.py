"""Training: loss falls, every pooling kind trains, devices/seeds/resume/repeat invariance, NaN.

All runs use a few hundred synthetic images and tiny widths, so the file runs in a couple of
minutes on a 2-core CPU. Parameters are compared exactly where the program is the same
(repeat, resume) and within float tolerance where the reduction order changes (4 devices vs
1, vmapped seeds vs separate runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invariance.data import load
from invariance.models import DOWNSAMPLE_KINDS
from invariance.train import (
    RecompileError,
    TrainingDivergedError,
    default_config,
    evaluate,
    init_train_state,
    make_apply_fn,
    make_features_fn,
    make_optimizer,
    make_train_step,
    train,
)
from invariance.train._checkpoint import read_metrics

REPO = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("images_per_second", "images_per_second_per_model", "seconds", "eval_seconds")


def small_config(**overrides):
    """SmallCNN(4, 8) on 256 synthetic images, batch 32: 8 steps per epoch."""
    config = default_config()
    config.dataset = "synthetic"
    config.train_examples = 256
    config.eval_examples = 128
    config.batch_size = 32
    config.num_epochs = 2
    config.learning_rate = 3e-3
    config.model_options.widths = (4, 8)
    config.model_options.hidden = 16
    config.progress = False
    config.log_every_steps = 4
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_equal(a, b) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_trees_close(a, b, **tol) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tol)


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Two epochs of the reference run (cosine schedule with warmup, two seeds)."""
    config = small_config(num_seeds=2, warmup_epochs=0.5)
    return train(config, workdir=tmp_path_factory.mktemp("uninterrupted"))


def test_small_cnn_loss_falls_and_run_dir_is_complete(tmp_path):
    """create_model("small_cnn", widths=(8, 16)) through the config: the default path."""
    config = small_config(num_epochs=4, learning_rate=1e-2)
    config.model_options = {"pool": "max", "widths": (8, 16)}
    result = train(config, workdir=tmp_path)
    assert result.model.widths == (8, 16)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0] - 0.2 and losses == sorted(losses, reverse=True), losses
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert [row["step"] for row in result.history] == [8, 16, 24, 32]
    assert read_metrics(tmp_path) == result.history
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_options"] == {"pool": "max", "widths": [8, 16]}
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["global_batch_size"] == 32 and prov["steps_per_epoch"] == 8
    assert prov["cpu_model"] and prov["cpu_model"] != "unknown"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]
    row = result.history[-1]
    assert len(row["test_accuracy_per_seed"]) == 1 and 0 <= row["test_accuracy"] <= 1
    assert row["images_per_second"] > 0
    assert leaves(result.params)[0].shape[0] == 1  # stacked over seeds


@pytest.mark.parametrize("kind", DOWNSAMPLE_KINDS)
def test_every_pooling_kind_trains_a_step(kind):
    """The train step of SmallCNN(4, 8) with each pooling kind: finite loss, params move.

    Step-level (the program ``train`` compiles, without its run directory) to keep 11
    compilations cheap; ``train`` itself is exercised end to end with "max" elsewhere.
    """
    from invariance.models import create_model

    config = small_config(num_seeds=2, vmap_seeds=2)  # jax.vmap (train's CPU default loops)
    model = create_model("small_cnn", pool=kind, widths=(4, 8), hidden=16)
    tx = make_optimizer(config, 1)
    state = init_train_state(model, tx, config, (28, 28, 1))
    kernel = lambda st: np.array(leaves(st["variables"]["params"]["conv1"])[-1])  # noqa: E731
    before = kernel(state)  # the step donates its state
    images, labels = load("synthetic", "train", num_examples=32)
    perms = np.stack([np.arange(32), np.arange(32)[::-1]]).astype(np.int32)
    step = make_train_step(model, tx, config, steps_per_epoch=1)
    new_state, metrics = step(state, images, labels, perms)
    loss = np.asarray(metrics["loss"])
    assert loss.shape == (2,) and np.isfinite(loss).all(), loss
    assert all(np.isfinite(x).all() for x in leaves(new_state["variables"]))
    assert int(new_state["step"]) == 1
    assert not np.array_equal(kernel(new_state), before)


def test_the_public_step_is_what_train_runs(tmp_path):
    """init_train_state + make_train_step, driven by hand with the data orders the package
    docstring defines, end bit-identical to train() after one epoch (two seeds)."""
    config = small_config(num_seeds=2, num_epochs=1)
    result = train(config, workdir=tmp_path)
    images, labels = load("synthetic", "train", num_examples=256)
    labels = np.asarray(labels, np.int32)
    steps = len(images) // config.batch_size
    tx = make_optimizer(config, steps)
    state = init_train_state(result.model, tx, config, images.shape[1:])
    step = make_train_step(result.model, tx, config, steps_per_epoch=steps)

    def order(i, epoch=1):  # permutation(fold_in(fold_in(k_i, 1), e)), k_i = fold_in(key, i)
        k = jax.random.fold_in(jax.random.key(config.seed), config.seed_offset + i)
        k = jax.random.fold_in(jax.random.fold_in(k, 1), epoch)
        return jax.random.permutation(k, len(images)).astype(jnp.int32)

    perms = jnp.stack([order(i) for i in range(config.num_seeds)])
    losses = []
    for _ in range(steps):
        state, metrics = step(state, images, labels, perms)
        losses.append(np.asarray(metrics["loss"]))
    assert_trees_equal(state["variables"], result.variables)
    assert int(state["step"]) == steps
    np.testing.assert_allclose(
        np.mean(losses, 0), result.history[0]["train_loss_per_seed"], rtol=1e-6
    )


_FOUR_DEVICES = textwrap.dedent(
    """
    import jax
    import numpy as np
    from test_train import small_config, leaves
    from invariance.train import train

    assert jax.device_count() == 4, jax.devices()
    config = small_config(batch_size=8, num_seeds=2, warmup_epochs=0.5)
    result = train(config, workdir={workdir!r})
    np.savez({out!r}, *leaves(result.params))
    """
)


def test_four_devices_match_one(uninterrupted, tmp_path, child_env):
    """Per-device batch 8 on 4 devices == per-device batch 32 on 1 (the same global batch)."""
    script = _FOUR_DEVICES.format(workdir=str(tmp_path / "four"), out=str(tmp_path / "four.npz"))
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = child_env(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")  # the suite's flags, and 4 CPUs
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = uninterrupted
    four = read_metrics(tmp_path / "four")
    prov = json.loads((tmp_path / "four" / "provenance.json").read_text())
    assert prov["device_count"] == 4 and prov["global_batch_size"] == 32
    for a, b in zip(one.history, four, strict=True):
        np.testing.assert_allclose(a["train_loss_per_seed"], b["train_loss_per_seed"], rtol=1e-5)
        np.testing.assert_allclose(a["test_accuracy_per_seed"], b["test_accuracy_per_seed"])
    with np.load(tmp_path / "four.npz") as f:
        params4 = [f[f"arr_{i}"] for i in range(len(f.files))]
    # Adam divides by sqrt(v): reduction-order noise in near-zero gradients shows up at 1e-5.
    for x, y in zip(leaves(one.params), params4, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)


def test_vmapped_seeds_equal_separate_runs(uninterrupted, tmp_path):
    for i in range(2):
        config = small_config(num_seeds=1, seed_offset=i, warmup_epochs=0.5)
        single = train(config, workdir=tmp_path / str(i))
        seed_i = jax.tree.map(lambda a, i=i: a[i : i + 1], uninterrupted.params)
        assert_trees_close(seed_i, single.params, rtol=1e-4, atol=1e-5)
        for a, b in zip(uninterrupted.history, single.history, strict=True):
            np.testing.assert_allclose(a["train_loss_per_seed"][i], b["train_loss"], rtol=1e-5)
    # jax.vmap over both seeds (the GPU / TPU default) trains the same models.
    config = small_config(num_seeds=2, warmup_epochs=0.5, vmap_seeds=2)
    vmapped = train(config, workdir=tmp_path / "vmapped")
    assert_trees_close(vmapped.params, uninterrupted.params, rtol=1e-4, atol=1e-5)
    # The seeds differ from each other: own init and own data order.
    first = leaves(uninterrupted.params)[0]
    assert not np.allclose(first[0], first[1])


def test_identical_runs_give_identical_params(uninterrupted, tmp_path):
    again = train(uninterrupted.config, workdir=tmp_path)
    assert_trees_equal(uninterrupted.variables, again.variables)
    assert strip_timing(again.history) == strip_timing(uninterrupted.history)


def test_resume_after_a_preemption_equals_uninterrupted(uninterrupted, tmp_path):
    config = small_config(num_seeds=2, warmup_epochs=0.5, stop_after_epochs=1)
    first = train(config, workdir=tmp_path)
    assert len(first.history) == 1 and len(read_metrics(tmp_path)) == 1
    # A kill between the checkpoint and the metrics append, or a torn line, is healed.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "torn')
    config.stop_after_epochs = None
    resumed = train(config, workdir=tmp_path)
    assert_trees_equal(uninterrupted.variables, resumed.variables)
    assert strip_timing(resumed.history) == strip_timing(uninterrupted.history)
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2]
    # A finished run called again trains nothing and returns the same.
    again = train(config, workdir=tmp_path)
    assert_trees_equal(uninterrupted.variables, again.variables)


_KILLED = textwrap.dedent(
    """
    import os, signal
    from test_train import small_config
    from invariance.train import _checkpoint, train

    def die(run_dir, row):  # SIGKILL after epoch 1's checkpoint, before its metrics row
        os.kill(os.getpid(), signal.SIGKILL)

    _checkpoint.append_metrics = die
    train(small_config(num_seeds=2, warmup_epochs=0.5), workdir={workdir!r})
    """
)


def test_resume_after_sigkill_equals_uninterrupted(uninterrupted, tmp_path, child_env):
    script = _KILLED.format(workdir=str(tmp_path))
    env = child_env(JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, cwd=REPO)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert read_metrics(tmp_path) == []  # killed before the row was appended
    resumed = train(small_config(num_seeds=2, warmup_epochs=0.5), workdir=tmp_path)
    assert_trees_equal(uninterrupted.variables, resumed.variables)
    assert [row["epoch"] for row in read_metrics(tmp_path)] == [1, 2]


def test_resume_extends_num_epochs(tmp_path):
    """1 epoch, then num_epochs=2 in the same workdir (a constant schedule; SGD)."""
    config = small_config(schedule="constant", optimizer="sgd", learning_rate=0.05)
    reference = train(config, workdir=tmp_path / "reference")
    assert reference.history[1]["train_loss"] < reference.history[0]["train_loss"]
    config.num_epochs = 1
    train(config, workdir=tmp_path / "resumed")
    config.num_epochs = 2
    resumed = train(config, workdir=tmp_path / "resumed")
    assert_trees_equal(reference.params, resumed.params)
    assert len(read_metrics(tmp_path / "resumed")) == 2


def test_resume_with_another_model_is_refused(uninterrupted):
    config = small_config(num_seeds=2, warmup_epochs=0.5)
    config.model_options.widths = (4, 16)
    with pytest.raises(ValueError, match="model_options"):
        train(config, workdir=uninterrupted.run_dir)


def test_nan_loss_raises_and_keeps_what_was_written(tmp_path):
    config = small_config(stop_after_epochs=1)
    train(config, workdir=tmp_path)
    metrics_before = (tmp_path / "metrics.jsonl").read_text()
    config.stop_after_epochs = None
    config.learning_rate = 1e30
    with pytest.warns(UserWarning, match="learning_rate"):
        with pytest.raises(TrainingDivergedError) as info:
            train(config, workdir=tmp_path)
    e = info.value
    assert 8 < e.step <= 16 and e.epoch == 2 and e.seed == 0
    assert f"at step {e.step} (epoch 2) for seed 0" in str(e)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics_before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]
    assert (tmp_path / "config.json").exists() and (tmp_path / "provenance.json").exists()


@pytest.mark.parametrize(
    "field, value, valid",
    [
        ("optimizer", "adam", "adamw, sgd"),
        ("schedule", "linear", "cosine, constant"),
        ("dataset", "imagenet", "fashion_mnist"),
    ],
)
def test_unknown_choice_is_a_one_line_error(field, value, valid, tmp_path):
    config = small_config(**{field: value})
    with pytest.raises(ValueError, match=valid) as e:
        train(config, workdir=tmp_path)
    assert "\n" not in str(e.value) and repr(value) in str(e.value)


def test_evaluate_and_apply_fns_agree_with_a_loop(uninterrupted):
    images, labels = load("synthetic", "test", num_examples=100)
    model, variables = uninterrupted.model, uninterrupted.variables
    accuracy = evaluate(model, variables, images, labels, batch_size=48)  # 3 chunks, padded
    apply_fn = jax.jit(make_apply_fn(model))
    features_fn = make_features_fn(model)
    for i in range(2):
        one = jax.tree.map(lambda a, i=i: a[i], variables)
        logits = apply_fn(one, images)
        assert logits.shape == (100, 10)
        assert accuracy[i] == pytest.approx(np.mean(np.argmax(logits, -1) == labels))
        # Float input in [0, 1] is the same as uint8.
        np.testing.assert_allclose(apply_fn(one, images / 255.0), logits, rtol=1e-5, atol=1e-5)
        logits_f, feats = features_fn(one, images[:4])
        np.testing.assert_allclose(logits_f, logits[:4], rtol=1e-5, atol=1e-5)
        assert "pool2" in feats
    last = uninterrupted.history[-1]["test_accuracy_per_seed"]
    test_images, test_labels = load("synthetic", "test", num_examples=128)
    np.testing.assert_allclose(
        evaluate(model, variables, test_images, test_labels, batch_size=64), last
    )


class _TinyBatchNormNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> global average -> Dense: exercises batch_stats."""

    @nn.compact
    def __call__(self, x, *, train=False, return_features=False):
        x = nn.Conv(4, (3, 3), strides=2)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = x.mean(axis=(1, 2))
        logits = nn.Dense(10)(x)
        return (logits, {"gap": x}) if return_features else logits


def test_a_custom_model_with_batch_stats_trains(tmp_path):
    result = train(
        small_config(num_seeds=2, num_epochs=1), workdir=tmp_path, model=_TinyBatchNormNet()
    )
    stats = result.variables["batch_stats"]
    mean = leaves(stats)[0]
    assert mean.shape[0] == 2 and np.abs(mean).sum() > 0  # running means moved from 0
    assert not np.allclose(mean[0], mean[1])
    assert np.isfinite(result.history[0]["train_loss"])


def test_a_second_trace_of_the_step_raises():
    config = small_config(batch_size=8)
    model = _TinyBatchNormNet()
    tx = make_optimizer(config, 4)
    step = make_train_step(model, tx, config, steps_per_epoch=4)
    variables = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False))(
        jax.random.split(jax.random.key(0), 1)
    )
    state = {
        "variables": variables,
        "opt_state": jax.vmap(tx.init)(variables["params"]),
        "step": jnp.zeros((), jnp.int32),
    }
    perms = jnp.zeros((1, 32), jnp.int32)
    labels = jnp.zeros((32,), jnp.int32)
    jax.eval_shape(step, state, jnp.zeros((32, 8, 8, 1), jnp.uint8), labels, perms)
    with pytest.raises(RecompileError):
        jax.eval_shape(step, state, jnp.zeros((32, 9, 9, 1), jnp.uint8), labels, perms)


def test_map_seeds_lives_with_the_seed_axis_not_evaluation():
    """The train step's seed mapping is its own module, shared by training and evaluation."""
    from invariance.train import _eval, _seeds, _step

    assert _step.map_seeds is _seeds.map_seeds and _eval.map_seeds is _seeds.map_seeds
    assert "def map_seeds" not in Path(_eval.__file__).read_text()
    xs = (jnp.arange(12.0).reshape(4, 3),)
    for chunk in (1, 2, 4):
        out = _seeds.map_seeds(lambda a: a * 2 + a.sum(), xs, vmap_seeds=chunk)
        np.testing.assert_allclose(out, jax.vmap(lambda a: a * 2 + a.sum())(*xs))


def test_cpu_model_names_the_cpu_and_its_widest_vector_extension():
    from invariance.io import cpu_model

    info = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    assert cpu_model(info) == "AMD EPYC 7B13 (avx2)"
    assert cpu_model(info.replace("avx2 ", "avx2 avx512f ")) == "AMD EPYC 7B13 (avx512f)"
    assert cpu_model("model name : Some CPU\n") == "Some CPU"
    assert cpu_model() == cpu_model(None) and cpu_model()
