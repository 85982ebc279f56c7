"""The training loop: one jitted, sharded, donated step for all seeds; resumable epochs."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from invariance.io import atomic_write_json, provenance
from invariance.train import _checkpoint as ckpt_lib
from invariance.train._config import (
    IDENTITY_FIELDS,
    RUNTIME_FIELDS,
    make_optimizer,
    make_schedule,
    validate,
)
from invariance.train._eval import Evaluator
from invariance.train._seeds import resolve_vmap_seeds
from invariance.train._step import (
    DATA_STREAM,
    INIT_STREAM,
    STEP_STREAM,
    _abstract_state,
    _default_mesh,
    _permutations,
    init_train_state,
    make_train_step,
)

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or inf; the message names the step, epoch and seed.

    Attributes:
        step: the 1-based global step whose loss was not finite.
        epoch: the 1-based epoch it belongs to.
        seed: the seed id (``seed_offset + index``) of the first model that diverged.
        run_dir: the run directory, which keeps everything written before.
    """

    def __init__(self, message: str, *, step: int, epoch: int, seed: int, run_dir: Path):
        super().__init__(message)
        self.step, self.epoch, self.seed, self.run_dir = step, epoch, seed, run_dir


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        variables: the models' variables stacked over seeds: every leaf has leading axis
            ``num_seeds`` (``{"params": ...}`` and maybe ``"batch_stats"``), replicated on the
            mesh.
        history: one dict per epoch (also the rows of ``run_dir/metrics.jsonl``): ``epoch``,
            ``step``, ``train_loss``, ``train_accuracy``, ``test_accuracy`` (means over seeds)
            and the same with ``_per_seed`` (lists), ``learning_rate``, ``images_per_second``
            (all seeds together), ``images_per_second_per_model``, ``seconds`` (training),
            ``eval_seconds``.
        run_dir: the run directory.
        model: the Flax module (for :func:`make_apply_fn` and :func:`evaluate`).
        config: the resolved config of this call.
    """

    variables: Any
    history: list[dict]
    run_dir: Path
    model: nn.Module
    config: ml_collections.ConfigDict

    @property
    def params(self) -> Any:
        """``variables["params"]``, stacked over seeds."""
        return self.variables["params"]


def _load_data(config: ml_collections.ConfigDict) -> tuple[np.ndarray, ...]:
    from invariance.data import load

    out = []
    for split, n in (("train", config.train_examples), ("test", config.eval_examples)):
        options = {"num_examples": n} if config.dataset == "synthetic" and n else {}
        images, labels = load(config.dataset, split, **options)
        if n is not None:
            images, labels = images[:n], labels[:n]
        out += [np.asarray(images), np.asarray(labels, np.int32)]
    return tuple(out)


def _check_resume(run_dir: Path, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError if an identity field differs from the checkpointed run's config.json;
    warns about changed hyperparameters."""
    path = run_dir / ckpt_lib.CONFIG_FILE
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = json.loads(config.to_json())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    fatal = [k for k in changed if k in IDENTITY_FIELDS]
    if fatal:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fatal)
        raise ValueError(
            f"{run_dir} holds a checkpointed run with a different {', '.join(fatal)} ({diffs}); "
            "use a new workdir"
        )
    soft = [k for k in changed if k not in RUNTIME_FIELDS]
    if soft:
        warnings.warn(
            f"resuming {run_dir} with changed {', '.join(soft)}: the run is no longer the same "
            "as an uninterrupted one",
            stacklevel=3,
        )


def _resolve(config: ml_collections.ConfigDict, workdir: Any) -> ml_collections.ConfigDict:
    config = copy.deepcopy(config)
    if workdir is not None:
        config.workdir = str(workdir)
    if config.workdir is None:
        config.workdir = tempfile.mkdtemp(prefix="invariance-train-")
    validate(config)
    return config


def _mean_row(prefix: str, per_seed: np.ndarray) -> dict:
    values = [float(v) for v in per_seed]
    return {prefix: float(np.mean(values)), f"{prefix}_per_seed": values}


def train(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | Path | None = None,
    model: nn.Module | None = None,
) -> TrainResult:
    """Trains ``config.num_seeds`` models in one compiled program; resumes a killed run.

    Each step is one call of one jitted program (compiled once, ahead of the loop): for every
    seed (``jax.vmap`` over variables, optimizer state, batch and key; on the CPU by default
    one unrolled copy per seed, see ``vmap_seeds``) it gathers the seed's batch from the
    device-resident training set, converts uint8 to float in [0, 1], runs forward, softmax
    cross-entropy, gradient and the optax update. The global batch
    (``batch_size * jax.device_count()``) is sharded over a 1-D mesh of all devices
    (axis ``"data"``), variables and optimizer state are replicated, and the state buffers are
    donated. The last partial batch of an epoch is dropped, so shapes never change.

    If ``run_dir/checkpoints`` holds a checkpoint, training resumes from the newest one
    (variables, optimizer state, step, history; data orders and keys derive from the epoch
    and step), ending with the same parameters as an uninterrupted run.

    Args:
        config: a config shaped like :func:`default_config`.
        workdir: the run directory; overrides ``config.workdir``.
        model: a Flax module to train instead of
            ``invariance.models.create_model(config.model, **config.model_options)``;
            called as ``model.apply(variables, x, train=..., rngs={"pool", "dropout"})`` with
            ``x`` float32 (N, H, W, C), returning logits (N, num_classes).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: an invalid config field, a training set smaller than one global batch, or
            a workdir holding a run with different identity fields.
        TrainingDivergedError: a loss became NaN or inf (checked every ``log_every_steps``
            steps); checkpoints and metrics written before are kept.
    """
    config = _resolve(config, workdir)
    run_dir = Path(config.workdir)
    is_writer = jax.process_index() == 0
    if is_writer:
        run_dir.mkdir(parents=True, exist_ok=True)

    mesh = _default_mesh()
    global_batch = config.batch_size * mesh.size
    train_x, train_y, test_x, test_y = _load_data(config)
    steps_per_epoch = len(train_x) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_x)} training examples are fewer than one global batch of {global_batch} "
            f"(batch_size {config.batch_size} x {mesh.size} devices)"
        )
    if model is None:
        from invariance.models import create_model

        model = create_model(config.model, **config.model_options.to_dict())
    tx = make_optimizer(config, steps_per_epoch)
    input_shape = train_x.shape[1:]
    last_epoch = min(config.num_epochs, config.stop_after_epochs or config.num_epochs)

    checkpoints = ckpt_lib.Checkpoints(run_dir, keep=config.keep_checkpoints)
    try:
        start_epoch, state, history = _restore_or_init(
            checkpoints, run_dir, model, tx, config, input_shape, mesh
        )
        if is_writer:
            atomic_write_json(run_dir / ckpt_lib.CONFIG_FILE, config.to_dict())
            ckpt_lib.rewrite_metrics(run_dir, history)
        if start_epoch < last_epoch:
            state = _run_epochs(
                state,
                model,
                tx,
                config,
                data=(train_x, train_y, test_x, test_y),
                mesh=mesh,
                epochs=range(start_epoch + 1, last_epoch + 1),
                history=history,
                checkpoints=checkpoints,
                run_dir=run_dir,
            )
    finally:
        checkpoints.close()
    return TrainResult(
        variables=state["variables"], history=history, run_dir=run_dir, model=model, config=config
    )


def _restore_or_init(
    checkpoints: ckpt_lib.Checkpoints,
    run_dir: Path,
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    input_shape: tuple[int, ...],
    mesh: Mesh,
) -> tuple[int, dict, list[dict]]:
    """``(start_epoch, state, history)``: the newest checkpoint's (after checking that the
    run is the same one), or epoch 0 with a fresh state and no history."""
    start_epoch = checkpoints.latest_epoch() or 0
    if not start_epoch:
        return 0, init_train_state(model, tx, config, input_shape, mesh=mesh), []
    _check_resume(run_dir, config)
    abstract = _abstract_state(model, tx, config, input_shape, NamedSharding(mesh, P()))
    state, meta = checkpoints.restore(start_epoch, abstract)
    log.info("resuming %s from epoch %d", run_dir, start_epoch)
    return start_epoch, state, list(meta["history"])[:start_epoch]


def _epoch_orders(config: ml_collections.ConfigDict, n: int, epoch: int, mesh: Mesh) -> jax.Array:
    """Every seed's data order of ``epoch``, int32 ``(num_seeds, n)``, replicated."""
    perms = _permutations(config.seed, config.seed_offset, config.num_seeds, n, np.int32(epoch))
    return jax.device_put(perms, NamedSharding(mesh, P()))


def _run_epochs(
    state: dict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    *,
    data: tuple[np.ndarray, ...],
    mesh: Mesh,
    epochs: range,
    history: list[dict],
    checkpoints: ckpt_lib.Checkpoints,
    run_dir: Path,
) -> dict:
    """Compiles the step, then trains, evaluates, checkpoints and logs ``epochs``.

    Appends each epoch's row to ``history`` (in place) and returns the final state.
    """
    train_x, train_y, test_x, test_y = data
    replicated = NamedSharding(mesh, P())
    steps_per_epoch = len(train_x) // (config.batch_size * mesh.size)
    is_writer = jax.process_index() == 0
    images = jax.device_put(train_x, replicated)
    labels = jax.device_put(train_y, replicated)
    evaluator = Evaluator(
        test_x,
        test_y,
        batch_size=(config.eval_batch_size or config.batch_size) * mesh.size,
        mesh=mesh,
    )
    t0 = time.perf_counter()
    step = (
        make_train_step(model, tx, config, steps_per_epoch=steps_per_epoch, mesh=mesh)
        .lower(
            state,
            images,
            labels,
            jax.ShapeDtypeStruct((config.num_seeds, len(train_x)), jnp.int32, sharding=replicated),
        )
        .compile()
    )
    compile_seconds = time.perf_counter() - t0
    if is_writer:
        _write_provenance(
            run_dir, config, mesh, steps_per_epoch, (len(train_x), len(test_x)), compile_seconds
        )
    for epoch in epochs:
        perms = _epoch_orders(config, len(train_x), epoch, mesh)
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.num_epochs}",
            disable=not config.progress,
            unit="step",
        )
        state, sums, seconds = _train_epoch(
            step,
            state,
            (images, labels, perms),
            config,
            epoch=epoch,
            steps_per_epoch=steps_per_epoch,
            images_per_step=config.batch_size * mesh.size * config.num_seeds,
            bar=bar,
            failure_note=lambda: (
                f"{run_dir} keeps the checkpoints of epochs {checkpoints.all_epochs()} and "
                f"{len(history)} metrics rows"
            ),
            run_dir=run_dir,
        )
        t_eval = time.perf_counter()
        test_accuracy = evaluator(model, state["variables"], vmap_seeds=config.vmap_seeds)
        timing = {"seconds": seconds, "eval_seconds": time.perf_counter() - t_eval}
        row = _epoch_row(config, epoch, steps_per_epoch, mesh.size, sums, test_accuracy, timing)
        bar.set_postfix(
            loss=f"{row['train_loss']:.4f}",
            test_acc=f"{row['test_accuracy']:.4f}",
            img_s=f"{row['images_per_second']:.0f}",
        )
        bar.close()
        _finish_epoch(row, state, history, config, checkpoints, run_dir, last=epochs[-1])
    return state


def _write_provenance(
    run_dir: Path,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    steps_per_epoch: int,
    examples: tuple[int, int],
    compile_seconds: float,
) -> None:
    """``run_dir/provenance.json``: :func:`provenance` plus the run's layout (``examples``:
    train and eval counts), the step's compile time and the key derivation."""
    atomic_write_json(
        run_dir / ckpt_lib.PROVENANCE_FILE,
        {
            **provenance(),
            "device_count": mesh.size,
            "global_batch_size": config.batch_size * mesh.size,
            "steps_per_epoch": steps_per_epoch,
            "train_examples": examples[0],
            "eval_examples": examples[1],
            "compile_seconds": round(compile_seconds, 3),
            "seeds": [config.seed_offset + i for i in range(config.num_seeds)],
            "vmap_seeds": resolve_vmap_seeds(config.vmap_seeds, config.num_seeds),
            "keys": (
                f"model i: k = fold_in(key({config.seed}), seed_offset + i); init "
                f"fold_in(k, {INIT_STREAM}); epoch e order "
                f"permutation(fold_in(fold_in(k, {DATA_STREAM}), e)); step s (0-based) "
                f"split(fold_in(fold_in(k, {STEP_STREAM}), s)) -> pool, dropout"
            ),
        },
    )


def _train_epoch(
    step: Callable,
    state: dict,
    arrays: tuple[jax.Array, jax.Array, jax.Array],
    config: ml_collections.ConfigDict,
    *,
    epoch: int,
    steps_per_epoch: int,
    images_per_step: int,
    bar: Any,
    failure_note: Callable[[], str],
    run_dir: Path,
) -> tuple[dict, tuple[np.ndarray, np.ndarray], float]:
    """Runs one epoch's steps; fetches the metrics every ``log_every_steps`` steps.

    Returns:
        ``(state, (loss_sum, accuracy_sum), seconds)``: the sums over the epoch's steps per
        seed, float64 ``(num_seeds,)``, and the epoch's training seconds.

    Raises:
        TrainingDivergedError: a fetched loss is not finite.
    """
    loss_sum = np.zeros(config.num_seeds)
    acc_sum = np.zeros(config.num_seeds)
    done = 0
    t_epoch = time.perf_counter()
    pending: list[dict] = []
    for i in range(steps_per_epoch):
        state, metrics = step(state, *arrays)
        pending.append(metrics)
        if (i + 1) % config.log_every_steps and i + 1 < steps_per_epoch:
            continue
        got = jax.device_get(pending)
        pending = []
        losses = np.stack([g["loss"] for g in got])  # (k, num_seeds)
        bad = np.argwhere(~np.isfinite(losses))
        if len(bad):
            bar.close()
            j, s = (int(v) for v in bad[0])
            gstep = (epoch - 1) * steps_per_epoch + done + j + 1
            seed = config.seed_offset + s
            raise TrainingDivergedError(
                f"training diverged: loss {losses[j, s]} at step {gstep} (epoch {epoch}) "
                f"for seed {seed} (model {s} of {config.num_seeds}); {failure_note()}",
                step=gstep,
                epoch=epoch,
                seed=seed,
                run_dir=run_dir,
            )
        loss_sum += losses.sum(0)
        acc_sum += np.stack([g["accuracy"] for g in got]).sum(0)
        done += len(got)
        bar.update(len(got))
        bar.set_postfix(
            loss=f"{losses[-1].mean():.4f}",
            img_s=f"{done * images_per_step / (time.perf_counter() - t_epoch):.0f}",
        )
    return state, (loss_sum, acc_sum), time.perf_counter() - t_epoch


def _epoch_row(
    config: ml_collections.ConfigDict,
    epoch: int,
    steps_per_epoch: int,
    device_count: int,
    sums: tuple[np.ndarray, np.ndarray],
    test_accuracy: np.ndarray,
    timing: dict[str, float],
) -> dict:
    """One ``metrics.jsonl`` row (see :class:`TrainResult`'s ``history``)."""
    global_batch = config.batch_size * device_count
    seconds = timing["seconds"]
    gstep = epoch * steps_per_epoch
    loss_sum, acc_sum = sums
    return {
        "epoch": epoch,
        "step": gstep,
        **_mean_row("train_loss", loss_sum / steps_per_epoch),
        **_mean_row("train_accuracy", acc_sum / steps_per_epoch),
        **_mean_row("test_accuracy", test_accuracy),
        "learning_rate": float(make_schedule(config, steps_per_epoch)(gstep - 1)),
        "images_per_second": steps_per_epoch * global_batch * config.num_seeds / seconds,
        "images_per_second_per_model": steps_per_epoch * global_batch / seconds,
        "seconds": seconds,
        "eval_seconds": timing["eval_seconds"],
    }


def _finish_epoch(
    row: dict,
    state: dict,
    history: list[dict],
    config: ml_collections.ConfigDict,
    checkpoints: ckpt_lib.Checkpoints,
    run_dir: Path,
    *,
    last: int,
) -> None:
    """Appends ``row`` to ``history``, checkpoints (every ``checkpoint_every_epochs`` and at
    the ``last`` epoch), then appends the row to ``metrics.jsonl`` and logs it."""
    epoch = row["epoch"]
    history.append(row)
    if epoch % config.checkpoint_every_epochs == 0 or epoch == last:
        checkpoints.save(epoch, state, {"epoch": epoch, "history": history})
    if jax.process_index() == 0:
        ckpt_lib.append_metrics(run_dir, row)
    log.info(
        "epoch %d: loss %.4f, test accuracy %.4f, %.0f images/s",
        epoch,
        row["train_loss"],
        row["test_accuracy"],
        row["images_per_second"],
    )
