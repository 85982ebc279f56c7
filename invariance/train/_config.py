"""The training config: defaults, validation, and the optax optimizer and schedule it names."""

from __future__ import annotations

import math

import ml_collections
import optax
from ml_collections import config_dict

from invariance.train._augment import check_augment

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")

# Fields a resumed run must share with the run that wrote the checkpoint: changing any of them
# makes a different experiment (or a checkpoint that cannot be restored).
IDENTITY_FIELDS = (
    "dataset",
    "model",
    "model_options",
    "num_seeds",
    "seed",
    "seed_offset",
    "optimizer",
    "train_examples",
    "augment",
)
# Fields that only say how (long) this call runs; they may change freely between calls.
RUNTIME_FIELDS = (
    "num_epochs",
    "stop_after_epochs",
    "workdir",
    "progress",
    "log_every_steps",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "eval_batch_size",
    "vmap_seeds",
)


def default_config() -> ml_collections.ConfigDict:
    """The default training config: SmallCNN with max pooling on Fashion-MNIST, AdamW, cosine.

    Fields:
        dataset: a name of :data:`invariance.data.DATASETS`.
        model: a model name for ``invariance.models.create_model``.
        model_options: keyword options for ``create_model`` (e.g. ``pool="max"``).
        num_epochs: epochs of the whole run (the schedule spans them).
        batch_size: examples per device per step and per seed; the global batch is
            ``batch_size * jax.device_count()``.
        eval_batch_size: per-device chunk for test-set evaluation (None: ``batch_size``).
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum ``momentum``, decoupled weight decay
            added to the gradient, i.e. L2).
        learning_rate: the peak learning rate.
        weight_decay: AdamW's decoupled decay, or SGD's L2 coefficient.
        momentum: SGD's momentum (unused by AdamW).
        schedule: ``"cosine"`` (decay to 0 at the last step) or ``"constant"``; both after a
            linear warmup from 0 over ``warmup_epochs`` (may be fractional).
        num_seeds: independent models trained in one compiled program (vmapped).
        seed: the root PRNG seed of the run.
        seed_offset: model ``i`` of this run is seed ``seed_offset + i``: a run with
            ``num_seeds=1, seed_offset=i`` trains the same model as index ``i`` of a vmapped run.
        vmap_seeds: how many seeds one vmapped pass of the step holds; the chunks are
            unrolled in the same compiled program. None: all of them on GPU / TPU, 1 on the
            CPU, where vmap over conv kernels (a grouped convolution) is several times slower
            per model. Changes float rounding only.
        train_examples: use only the first N training examples (None: all).
        eval_examples: evaluate on the first N test examples (None: all).
        workdir: the run directory (checkpoints, config.json, metrics.jsonl); None: a new
            temporary folder.
        checkpoint_every_epochs: save a checkpoint every N epochs (and after the last).
        keep_checkpoints: how many of the latest checkpoints to keep.
        log_every_steps: how often the progress bar is refreshed and losses are checked for
            NaN / inf (each check waits for the device).
        progress: show a tqdm progress bar per epoch.
        stop_after_epochs: end this call once this many epochs are done (None: ``num_epochs``);
            the schedule still spans ``num_epochs``: a deliberate pre-emption, for
            time-limited jobs and for tests of resuming.

    A config may also hold ``augment`` (absent here, so a config without it hashes as before):
    the training augmentation of :mod:`invariance.train._augment`, e.g. ``{"translate": 3}``
    or ``{"mask_ratio": [0.1, 0.5]}``; an identity field of the run.

    Returns:
        A fresh, mutable ``ml_collections.ConfigDict``.
    """
    return ml_collections.ConfigDict(
        {
            "dataset": "fashion_mnist",
            "model": "small_cnn",
            "model_options": ml_collections.ConfigDict({"pool": "max"}),
            "num_epochs": 10,
            "batch_size": 128,
            "eval_batch_size": config_dict.placeholder(int),
            "optimizer": "adamw",
            "learning_rate": 1e-3,
            "weight_decay": 1e-4,
            "momentum": 0.9,
            "schedule": "cosine",
            "warmup_epochs": 0.0,
            "num_seeds": 1,
            "seed": 0,
            "seed_offset": 0,
            "vmap_seeds": config_dict.placeholder(int),
            "train_examples": config_dict.placeholder(int),
            "eval_examples": config_dict.placeholder(int),
            "workdir": config_dict.placeholder(str),
            "checkpoint_every_epochs": 1,
            "keep_checkpoints": 2,
            "log_every_steps": 50,
            "progress": True,
            "stop_after_epochs": config_dict.placeholder(int),
        }
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line ``ValueError`` for a config field with an invalid value.

    Args:
        config: a config shaped like :func:`default_config`.

    Raises:
        ValueError: an unknown optimizer, schedule or dataset, or a non-positive size.
    """
    from invariance.data import DATASETS

    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; valid: {', '.join(DATASETS)}")
    for name in ("num_epochs", "batch_size", "num_seeds", "checkpoint_every_epochs"):
        if int(config[name]) < 1:
            raise ValueError(f"config.{name} must be >= 1, got {config[name]}")
    for name in (
        "eval_batch_size",
        "train_examples",
        "eval_examples",
        "stop_after_epochs",
        "vmap_seeds",
    ):
        if config[name] is not None and int(config[name]) < 1:
            raise ValueError(f"config.{name} must be >= 1 or None, got {config[name]}")
    if config.keep_checkpoints < 1 or config.log_every_steps < 1:
        raise ValueError("config.keep_checkpoints and config.log_every_steps must be >= 1")
    if config.seed_offset < 0 or config.warmup_epochs < 0:
        raise ValueError("config.seed_offset and config.warmup_epochs must be >= 0")
    if not math.isfinite(config.learning_rate) or config.learning_rate <= 0:
        raise ValueError(f"config.learning_rate must be positive, got {config.learning_rate}")
    check_augment(config.get("augment"))


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule over ``num_epochs * steps_per_epoch`` steps.

    Args:
        config: the training config (``schedule``, ``learning_rate``, ``warmup_epochs``,
            ``num_epochs``).
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        An optax schedule: step -> learning rate.

    Raises:
        ValueError: an unknown schedule name.
    """
    total = config.num_epochs * steps_per_epoch
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total)
    lr = config.learning_rate
    if config.schedule == "cosine":
        if warmup == 0:
            return optax.cosine_decay_schedule(lr, total)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1))
    if config.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.warmup_constant_schedule(0.0, lr, warmup)
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """The optax optimizer a config names, with its schedule.

    Args:
        config: the training config (``optimizer``, ``weight_decay``, ``momentum`` and the
            schedule's fields).
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        ``optax.adamw(schedule, weight_decay=...)``, or for ``"sgd"``
        ``chain(add_decayed_weights(weight_decay), sgd(schedule, momentum=...))``.

    Raises:
        ValueError: an unknown optimizer or schedule name.
    """
    schedule = make_schedule(config, steps_per_epoch)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.sgd(schedule, momentum=config.momentum),
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
