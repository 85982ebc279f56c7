"""Experiments: what one sweep cell computes, from a resolved config to tidy rows.

``run_cell(config, folder)`` dispatches on ``config["experiment"]``:

* ``"train_measure"`` — train ``config.train`` (``num_seeds`` models in one program; or take
  them from a finished cell that trained the same models,
  :func:`invariance.sweep.trained_donors` and :func:`invariance.train.adopt_training`), then
  run every protocol of ``config.measure.protocols`` on the first ``measure.eval_examples``
  test images, for every seed. Rows carry the cell's label, seed index, test accuracy,
  parameter count and training time next to each protocol's own fields.
* ``"seed_figures"`` — claims 1-4 of docs/seeds.md: pooling alone and the two Probe
  networks (Conv -> MaxPool(2x2, stride 1) -> Conv against Conv -> Conv, random
  initialisation, several seeds) under random, line and inverse masking of Fashion-MNIST
  T-shirts; also saves example images (``examples.npz``) for the report's figures.

Rows go to ``folder/rows.jsonl`` (written atomically, once the cell is complete).

:func:`validate_cells` checks every resolved cell (model and its pooling options, traced on the
dataset's image shape without computing anything; protocol names and options; dataset,
optimizer, schedule and every number of the training config) before a sweep loads any data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from invariance import data, measure, models, pooling, transforms
from invariance import train as train_lib
from invariance.config import ConfigError
from invariance.io import atomic_write_bytes, atomic_write_text, provenance
from invariance.sweep import trained_donors

__all__ = [
    "EXPERIMENTS",
    "IMAGE_SHAPES",
    "PROTOCOL_FNS",
    "keep_config_on_failure",
    "protocol_id",
    "protocol_key",
    "run_cell",
    "validate_cell",
    "validate_cells",
]

#: Each dataset's image shape (H, W, C), known without loading it (for validation).
IMAGE_SHAPES = {
    "fashion_mnist": (28, 28, 1),
    "mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "synthetic": (28, 28, 1),
}

#: The protocols a ``train_measure`` config may name: those of :data:`measure.PROTOCOLS` that
#: measure a logits function (the others take a features function or no model).
PROTOCOL_FNS = tuple(n for n, spec in measure.PROTOCOL_SPECS.items() if spec.model == "logits")


def _write_rows(folder: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    atomic_write_text(folder / "rows.jsonl", text)


def _run_protocol(
    spec: dict[str, Any],
    apply_fn: Callable,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    chunk_size: int | None,
) -> list[dict[str, Any]]:
    spec = dict(spec)
    name = spec.pop("fn")
    num_images = spec.pop("num_images", None)  # a protocol may use only the first N images
    if num_images is not None:
        images, labels = images[:num_images], labels[:num_images]
    if name not in PROTOCOL_FNS:
        raise ValueError(f"unknown protocol {name!r}: valid are {', '.join(PROTOCOL_FNS)}")
    fn = measure.get_protocol(name)
    return fn(apply_fn, params, images, labels=labels, key=key, chunk_size=chunk_size, **spec)


def protocol_id(spec: dict[str, Any]) -> int:
    """A protocol entry's 31-bit id: the first four bytes of the sha256 of its JSON (sorted
    keys). It depends on what the entry says, not on where it stands in the list, so adding,
    removing or reordering a study's protocols leaves every other protocol's numbers as they
    were."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def protocol_key(root: jax.Array, seed_index: int, spec: dict[str, Any]) -> jax.Array:
    """The PRNG key of one protocol entry for one trained seed:
    ``fold_in(fold_in(root, seed_index), protocol_id(spec))``, with ``root`` the key of
    ``measure.seed`` and ``seed_index`` the seed's index in the cell."""
    return jax.random.fold_in(jax.random.fold_in(root, seed_index), protocol_id(spec))


@contextlib.contextmanager
def keep_config_on_failure(run_dir: str | Path) -> Iterator[None]:
    """Restores ``run_dir/config.json`` as it was if the block raises (e.g. a diverged attempt
    with changed hyperparameters): a failed attempt never rewrites the record of a run that was
    already there. A first attempt keeps the file it wrote (it describes its checkpoints)."""
    path = Path(run_dir) / "config.json"
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    except BaseException:
        if before is not None:
            atomic_write_bytes(path, before)
        raise


def train_measure(cfg: ml_collections.ConfigDict, folder: Path) -> list[dict[str, Any]]:
    """Trains the cell's models, then measures every protocol for every seed (see module doc)."""
    tcfg = ml_collections.ConfigDict(cfg.train.to_dict())
    tcfg.workdir = str(folder / "train")
    tcfg.progress = bool(cfg.get("progress", True))
    # A finished cell that trained the same models (another study's row, say) lends them:
    # the rows of both come from one training, which runs once.
    train_lib.adopt_training(Path(tcfg.workdir), tcfg, trained_donors(folder))
    t0 = time.perf_counter()
    with keep_config_on_failure(tcfg.workdir):
        result = train_lib.train(tcfg)
    wall = time.perf_counter() - t0
    train_seconds = float(sum(h.get("seconds", 0.0) for h in result.history)) or wall
    mcfg = cfg.measure
    images, labels = data.load(tcfg.dataset, "test")
    n = mcfg.eval_examples or len(images)
    images, labels = images[:n], labels[:n]
    apply_fn = train_lib.make_apply_fn(result.model)
    num_seeds = int(tcfg.num_seeds)
    test_acc = np.asarray(
        train_lib.evaluate(result.model, result.variables, images, labels, batch_size=500)
    ).reshape(num_seeds)
    one = jax.tree_util.tree_map(lambda a: a[0], result.variables)
    n_params = models.count_params(one["params"])
    root = jax.random.key(int(mcfg.seed))
    rows: list[dict[str, Any]] = []
    protocols = [dict(p) for p in mcfg.protocols]
    for s in range(num_seeds):
        variables = jax.tree_util.tree_map(lambda a, s=s: a[s], result.variables)
        base = {
            "experiment": cfg.name,
            "label": cfg.cell_name,
            "cell_index": cfg.get("cell_index", 0),
            "model": tcfg.model,
            "model_options": json.dumps(tcfg.model_options.to_dict(), sort_keys=True),
            "dataset": tcfg.dataset,
            "seed_index": int(tcfg.seed_offset) + s,
            "test_accuracy": float(test_acc[s]),
            "num_params": int(n_params),
            "train_seconds": train_seconds,
            "epochs": int(tcfg.num_epochs),
            "train_examples": tcfg.train_examples,
        }
        rows.append({**base, "protocol": "accuracy", "accuracy": float(test_acc[s])})
        for spec in protocols:
            key = protocol_key(root, s, spec)
            out = _run_protocol(spec, apply_fn, variables, images, labels, key, mcfg.chunk_size)
            rows.extend({**base, **r} for r in out)
    return rows


def seed_figures(cfg: ml_collections.ConfigDict, folder: Path) -> list[dict[str, Any]]:
    """The seeds' masking experiments as numbers, plus example images (see module doc)."""
    s = cfg.seed_figures
    images, labels = data.load(cfg.dataset, "test")
    shirts = images[labels == int(s.class_index)][: int(s.num_images)]
    key = jax.random.key(int(s.seed))
    rows: list[dict[str, Any]] = []
    base = {"experiment": cfg.name, "label": cfg.cell_name, "dataset": cfg.dataset}
    pool_options = {k: dict(v) for k, v in s.pool_options.to_dict().items()}
    for i, t in enumerate(dict(t) for t in s.transforms):
        transform, severity = t.pop("transform"), t.pop("severity")
        k = jax.random.fold_in(key, i)
        out = measure.pooling_stability(
            None,
            None,
            shirts,
            transform=transform,
            kinds=list(s.pool_kinds),
            key=k,
            severity=severity,
            pool_options=pool_options,
            **t,
        )
        rows.extend({**base, "network": "pooling alone", **r} for r in out)
        for pool_kind in s.probe_pools:
            for seed in range(int(s.probe_seeds)):
                pool_kind = None if pool_kind in ("", "none") else pool_kind
                model = models.create_model("probe", pool=pool_kind)
                variables = models.init_model(model, jax.random.key(seed), (1, *shirts.shape[1:]))
                features_fn = train_lib.make_features_fn(model)
                out = measure.layer_stability(
                    lambda p, x, f=features_fn: f(p, x)[1],
                    variables,
                    shirts,
                    transform=transform,
                    severity=severity,
                    key=k,
                    **t,
                )
                net = f"probe({pool_kind})" if pool_kind else "probe(no pool)"
                rows.extend({**base, "network": net, "probe_seed": seed, **r} for r in out)
    _save_examples(cfg, shirts[: int(s.num_examples)], folder)
    return rows


def _save_examples(cfg: ml_collections.ConfigDict, shirts: np.ndarray, folder: Path) -> None:
    """Inputs under each example mask, max-pooled, and both Probes' outputs, for the figures."""
    s = cfg.seed_figures
    x = jnp.asarray(shirts, jnp.float32) / 255.0
    key = jax.random.key(int(s.seed))
    masked = {
        "clean": x,
        "random 0.3": transforms.random_mask(key, x, ratio=0.3),
        "vertical": transforms.line_mask(x, orientation="vertical", period=4),
        "horizontal": transforms.line_mask(x, orientation="horizontal", period=4),
        "grid": transforms.line_mask(x, orientation="grid", period=4),
        "inverse 0.1": transforms.random_mask(key, x, ratio=0.1, fill="max"),
    }
    arrays: dict[str, np.ndarray] = {"names": np.array(list(masked))}
    arrays["input"] = np.stack([np.asarray(v[..., 0]) for v in masked.values()])
    arrays["max_pool"] = np.stack(
        [np.asarray(pooling.max_pool(v, 2)[..., 0]) for v in masked.values()]
    )
    for pool_kind, name in ((None, "probe_no_pool"), ("max", "probe_max")):
        model = models.create_model("probe", pool=pool_kind)
        variables = models.init_model(model, jax.random.key(0), (1, *x.shape[1:]))
        outs = [np.asarray(model.apply(variables, v)).mean(-1) for v in masked.values()]
        arrays[name] = np.stack(outs)
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(folder / "examples.npz", buf.getvalue())


EXPERIMENTS: dict[str, Callable[[ml_collections.ConfigDict, Path], list[dict[str, Any]]]] = {
    "train_measure": train_measure,
    "seed_figures": seed_figures,
}


def run_cell(config: dict[str, Any], folder: str) -> None:
    """Computes one sweep cell and writes ``rows.jsonl`` and ``provenance.json`` to ``folder``.

    Args:
        config: a resolved cell config as a plain dict (see :mod:`invariance.config`).
        folder: the cell's folder (created if missing).
    """
    cfg = ml_collections.ConfigDict(config)
    kind = cfg.get("experiment")
    if kind not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {kind!r}: valid are {', '.join(EXPERIMENTS)}")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    rows = EXPERIMENTS[kind](cfg, path)
    stamp = {k: prov[k] for k in ("git_commit", "jax", "backend", "device", "device_count")}
    _write_rows(
        path,
        [
            {**r, "cell_config": cfg.get("name"), **{"prov_" + k: v for k, v in stamp.items()}}
            for r in rows
        ],
    )
    atomic_write_text(path / "provenance.json", json.dumps(prov, indent=2, sort_keys=True) + "\n")


# Per-profile sizes shared by the train_measure configs: (dataset, train_examples, epochs,
# num_seeds, widths, eval_examples).
PROFILE_SIZES = {
    "tiny": dict(
        dataset="synthetic",
        train_examples=256,
        num_epochs=1,
        num_seeds=2,
        widths=(4, 8),
        eval_examples=64,
        batch_size=64,
    ),
    "quick": dict(
        dataset="fashion_mnist",
        train_examples=12000,
        num_epochs=2,
        num_seeds=3,
        widths=(16, 32),
        eval_examples=1000,
        batch_size=128,
    ),
    # All 60k training images; 6 epochs: measured on the 2-core CPU, max pooling at widths
    # (32, 64), one seed, reached 88.5, 90.2, 90.7, 91.3, 91.6% test accuracy after epochs 1-5 of
    # a 5-epoch cosine schedule (41 s per epoch), so 5 epochs leave no margin over 91.5%.
    "full": dict(
        dataset="fashion_mnist",
        train_examples=None,
        num_epochs=6,
        num_seeds=3,
        widths=(32, 64),
        eval_examples=None,
        batch_size=128,
    ),
}


def train_measure_config(name: str, profile: str) -> ml_collections.ConfigDict:
    """The base of a ``train_measure`` config: SmallCNN(max) sized by ``profile``.

    Args:
        name: the config's name (``configs/NAME.py``).
        profile: "tiny" (tests, synthetic data), "quick" (CPU minutes) or "full".

    Returns:
        A ConfigDict with ``name``, ``cell_name``, ``experiment``, ``profile``, ``progress``,
        ``train`` (:func:`invariance.train.default_config` resized) and ``measure``
        (``eval_examples``, ``chunk_size``, ``seed``, ``protocols``: a list of dicts, each with
        ``fn``, a protocol name of :data:`PROTOCOL_FNS`, optionally ``num_images`` (use only
        the first N evaluation images), and the protocol's keyword options) and ``report``
        (:data:`invariance.report.DEFAULT_REPORT`: a study replaces it with its own columns
        and figures).
    """
    if profile not in PROFILE_SIZES:
        raise ValueError(f"unknown profile {profile!r}: valid are {', '.join(PROFILE_SIZES)}")
    size = PROFILE_SIZES[profile]
    tcfg = train_lib.default_config()
    tcfg.dataset = size["dataset"]
    tcfg.train_examples = size["train_examples"]
    tcfg.num_epochs = size["num_epochs"]
    tcfg.num_seeds = size["num_seeds"]
    tcfg.batch_size = size["batch_size"]
    tcfg.model_options = ml_collections.ConfigDict({"pool": "max", "widths": size["widths"]})
    c = ml_collections.ConfigDict()
    c.name = name
    c.cell_name = "max"
    c.experiment = "train_measure"
    c.profile = profile
    c.progress = True
    c.train = tcfg
    c.measure = ml_collections.ConfigDict(
        {"eval_examples": size["eval_examples"], "chunk_size": None, "seed": 0, "protocols": []}
    )
    from invariance.report import DEFAULT_REPORT

    c.report = ml_collections.ConfigDict(json.loads(json.dumps(DEFAULT_REPORT)))
    return c


# ------------------------------------------------------------------------------------------
# Validation: every cell, before anything is loaded or trained.

_INT_FIELDS = (
    "num_epochs",
    "batch_size",
    "num_seeds",
    "seed",
    "seed_offset",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "log_every_steps",
)
_OPT_INT_FIELDS = (
    "eval_batch_size",
    "train_examples",
    "eval_examples",
    "stop_after_epochs",
    "vmap_seeds",
)
_FLOAT_FIELDS = ("learning_rate", "weight_decay", "momentum", "warmup_epochs")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_numbers(t: dict[str, Any]) -> None:
    """Integers where integers belong (never booleans), finite non-negative rates."""
    for name in _INT_FIELDS + _OPT_INT_FIELDS:
        v = t.get(name)
        if name in _OPT_INT_FIELDS and v is None:
            continue
        if not _is_int(v):
            raise ConfigError(f"train.{name} must be an integer, got {v!r}")
    for name in _FLOAT_FIELDS:
        v = t.get(name)
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"train.{name} must be a finite number >= 0, got {v!r}")
    widths = t.get("model_options", {}).get("widths")
    if widths is not None and (
        not isinstance(widths, list | tuple) or not all(_is_int(w) and w > 0 for w in widths)
    ):
        raise ConfigError(f"train.model_options.widths must be positive integers, got {widths!r}")


def _check_protocol(name: Any, options: dict[str, Any], image_shape: tuple) -> None:
    """A protocol a ``train_measure`` cell can run (:data:`PROTOCOL_FNS`), with valid options."""
    if name not in PROTOCOL_FNS:
        raise ValueError(f"unknown protocol {name!r}: valid are {', '.join(PROTOCOL_FNS)}")
    measure.validate_protocol(name, options, image_shape=image_shape)


def _validate_train_measure(c: dict[str, Any]) -> None:
    from invariance.train._config import validate as validate_train

    t = c.get("train")
    if not isinstance(t, dict):
        raise ConfigError("a train_measure config needs a train section")
    _check_numbers(t)
    validate_train(ml_collections.ConfigDict(t))
    model = models.create_model(t["model"], **t.get("model_options", {}))
    shape = IMAGE_SHAPES.get(t["dataset"])  # None: not listed, the model is checked on load
    if shape is not None:
        jax.eval_shape(lambda: models.init_model(model, jax.random.key(0), (1, *shape)))
    m = c.get("measure", {})
    n = m.get("eval_examples")
    if n is not None and (not _is_int(n) or n < 1):
        raise ConfigError(f"measure.eval_examples must be an integer >= 1 or None, got {n!r}")
    for spec in m.get("protocols", []):
        spec = dict(spec)
        name = spec.pop("fn", None)
        num_images = spec.pop("num_images", None)
        if num_images is not None and (not _is_int(num_images) or num_images < 1):
            raise ConfigError(f"protocol {name!r}: num_images must be an integer >= 1 or None")
        if shape is not None:
            _check_protocol(name, spec, shape)
        elif name not in PROTOCOL_FNS:
            raise ValueError(f"unknown protocol {name!r}: valid are {', '.join(PROTOCOL_FNS)}")


def _validate_seed_figures(c: dict[str, Any]) -> None:
    from invariance.measure._families import resolve_transform

    if c.get("dataset") not in IMAGE_SHAPES:
        raise ConfigError(
            f"unknown dataset {c.get('dataset')!r}: valid are {', '.join(IMAGE_SHAPES)}"
        )
    s = c.get("seed_figures", {})
    for kind in s.get("pool_kinds", []):
        if kind not in pooling.POOLS:
            raise ConfigError(
                f"unknown pooling kind {kind!r}: valid are {', '.join(pooling.POOLS)}"
            )
    for kind in s.get("probe_pools", []):
        if kind not in ("", "none"):
            models.create_model("probe", pool=kind)
    for t in s.get("transforms", []):
        t = dict(t)
        name, _ = t.pop("transform", None), t.pop("severity", None)
        resolve_transform(name, t.pop("fill", 0.0), t)


def validate_cell(config: dict[str, Any] | ml_collections.ConfigDict) -> None:
    """Checks one resolved cell without loading data or training (see module doc), and the
    study's ``report`` section (:func:`invariance.report.validate_report`).

    Raises:
        ConfigError: one line naming the cell, the field and the valid choices.
    """
    from invariance.report import validate_report

    c = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    kind = c.get("experiment")
    where = f"cell {c.get('cell_name', c.get('name'))!r}"
    try:
        validate_report(c.get("report"))
        if kind == "train_measure":
            _validate_train_measure(c)
        elif kind == "seed_figures":
            _validate_seed_figures(c)
        else:
            raise ConfigError(f"unknown experiment {kind!r}: valid are {', '.join(EXPERIMENTS)}")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (ValueError, TypeError) as e:  # raised by the validators above: the config's fault
        raise ConfigError(f"{where}: {' '.join(str(e).split())}") from None


def validate_cells(cells: Sequence[dict[str, Any] | ml_collections.ConfigDict]) -> None:
    """:func:`validate_cell` for every cell; stops at the first invalid one."""
    for c in cells:
        validate_cell(c)
