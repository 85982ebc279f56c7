"""Training: optax, one jitted program per run, sharded over devices, vmapped over seeds.

>>> from invariance.train import default_config, train            # doctest: +SKIP
>>> config = default_config()                                       # doctest: +SKIP
>>> config.num_seeds, config.num_epochs = 4, 10                     # doctest: +SKIP
>>> result = train(config, workdir="runs/small_cnn_max")            # doctest: +SKIP
>>> result.history[-1]["test_accuracy_per_seed"]                    # doctest: +SKIP

How a run is laid out:

- **Devices**: a 1-D ``jax.sharding.Mesh`` over ``jax.devices()`` with axis ``"data"``; each
  seed's global batch (``batch_size * jax.device_count()``) is sharded along it
  (``P(None, "data")`` for ``(num_seeds, batch, ...)`` arrays), variables and optimizer state
  are replicated; the same code runs on one CPU, N GPUs or a TPU slice. No ``pmap``.
- **Seeds**: ``num_seeds`` models are stacked on a leading axis of every variable and optimizer
  state leaf and trained by one step program, each with its own init and data order: a
  ``jax.vmap`` over the seeds on GPU / TPU; on the CPU by default one unrolled copy of the
  model per seed (``vmap_seeds=1``), since XLA:CPU runs the grouped convolutions that vmap
  over conv kernels becomes ~10x slower per model (``scripts/bench_train.py``).
- **One program**: the step (:func:`make_train_step`, on the state of
  :func:`init_train_state`; public, so benchmarks time what training runs) is compiled once
  before the loop (a trace counter raises ``RecompileError`` on a second trace); the training
  set lives on the devices, each step gathers its batch by index, so the host only dispatches.
- **PRNG discipline** (one root key, ``fold_in`` everywhere): model ``i`` has
  ``k_i = fold_in(key(seed), seed_offset + i)``; init ``fold_in(k_i, 0)``; the data order of
  epoch ``e`` (1-based) is ``permutation(fold_in(fold_in(k_i, 1), e))``; step ``s`` (0-based)
  uses ``split(fold_in(fold_in(k_i, 2), s))`` as its ``"pool"`` and ``"dropout"`` keys (and
  ``fold_in(fold_in(fold_in(k_i, 2), s), 3)`` for the ``augment`` of the config, if any). So
  model ``i`` of a vmapped run is the model of a one-seed run with ``seed_offset = i``, and a
  resumed run needs nothing but the epoch and step to continue identically.
- **Run directory** (``workdir``): ``config.json`` (the resolved config), ``provenance.json``
  (:func:`invariance.io.provenance` plus device count, global batch, compile time, key
  derivation), ``metrics.jsonl`` (one row per epoch; rewritten from the checkpoint on resume,
  so never a duplicate row), ``checkpoints/<epoch>/`` (orbax; the last ``keep_checkpoints``).
"""

from invariance.train._config import (
    OPTIMIZERS,
    SCHEDULES,
    default_config,
    make_optimizer,
    make_schedule,
)
from invariance.train._eval import evaluate, make_apply_fn, make_features_fn
from invariance.train._loop import TrainingDivergedError, TrainResult, train
from invariance.train._seeds import map_seeds
from invariance.train._share import adopt_training, training_identity
from invariance.train._step import RecompileError, init_train_state, make_train_step

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "RecompileError",
    "TrainResult",
    "TrainingDivergedError",
    "adopt_training",
    "default_config",
    "evaluate",
    "init_train_state",
    "make_apply_fn",
    "make_features_fn",
    "make_optimizer",
    "make_train_step",
    "make_schedule",
    "map_seeds",
    "train",
    "training_identity",
]
