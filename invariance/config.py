"""Python configs (flax examples / big_vision style): load, override, resolve, hash.

A config file ``configs/NAME.py`` defines ``get_config(profile="quick")`` returning an
``ml_collections.ConfigDict`` and, optionally, ``get_sweep(profile="quick")`` returning a list of
override dicts (dotted keys) — one sweep cell each. A cell's identity is the hash of its resolved
config, so a rerun finds the cells it already finished.

Each resolved cell records the keys its sweep sets (``sweep_keys``): what makes it one row of
its study rather than another. Everything else of the config, less the seed fields
(:data:`SEED_KEYS`), is the cell's *study part* (:func:`study_part`): cells of one table must
share it, which is how sweeps and reports refuse to merge different experiments.

The shipped configs live in the repository's ``configs/`` folder; a wheel carries the same files
as the package ``invariance._configs`` (see ``pyproject.toml``), so :func:`find_config` resolves
names in a checkout and in a plain ``pip install .`` alike.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

__all__ = [
    "PROFILES",
    "SEED_KEYS",
    "ConfigError",
    "apply_overrides",
    "config_dir",
    "config_hash",
    "find_config",
    "flatten",
    "load_config_module",
    "overrides_hash",
    "parse_set",
    "resolve",
    "study_part",
    "to_dict",
]

PROFILES = ("quick", "full", "tiny")
# Fields that only pick which seeds a cell trains: cells differing in them alone are the same
# experiment, and a report averages them (by seed).
SEED_KEYS = ("train.seed", "train.seed_offset", "train.num_seeds", "measure.seed")
# Fields that say which row of its study a cell is, never part of the study itself.
_CELL_KEYS = ("cell_name", "cell_index", "sweep_keys", "progress", "workdir", "report")


def config_dir() -> Path:
    """The folder of the shipped configs: ``configs/`` of a checkout, else the installed copy.

    A checkout is recognised by ``pyproject.toml`` next to the ``invariance`` package; an
    installed wheel carries the same files as ``invariance/_configs``.
    """
    here = Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    if (here.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return here / "_configs"


CONFIG_DIR = config_dir()
# Fields that say where or how verbosely a cell runs, or how it is reported, not what it
# computes: not hashed (a column added to a study's report retrains nothing).
_NOT_HASHED = ("workdir", "progress", "report")


class ConfigError(ValueError):
    """A user error in a config, a config name or an override (one line)."""


def find_config(name_or_path: str) -> Path:
    """Resolves ``pooling_table``, ``configs/pooling_table.py`` or a path to a config file.

    Raises:
        ConfigError: no such file; the message lists the configs shipped in ``configs/``.
    """
    p = Path(name_or_path)
    home = config_dir()
    candidates = [p, home / p.name, home / f"{p.name}.py"]
    for c in candidates:
        if c.is_file() and c.suffix == ".py":
            return c
    shipped = sorted(f.stem for f in home.glob("*.py") if not f.stem.startswith("_"))
    raise ConfigError(
        f"no config {name_or_path!r}: valid are {', '.join(shipped)} or a path to a .py"
    )


def load_config_module(name_or_path: str) -> ModuleType:
    """Imports a config file as a module (it must define ``get_config``)."""
    path = find_config(name_or_path)
    spec = importlib.util.spec_from_file_location(f"invariance_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config {path} line {e.lineno}: syntax error: {e.msg}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config {path} defines no get_config()")
    return module


def _call_config(module: ModuleType, fn: str, profile: str) -> Any:
    """``module.fn(profile)``; an exception in the user's config file becomes a ConfigError."""
    try:
        return getattr(module, fn)(profile)
    except ConfigError:
        raise
    except Exception as e:  # the config file's own code: the user's to fix
        where = getattr(module, "__file__", module.__name__)
        raise ConfigError(
            f"config {where}: {fn}({profile!r}) raised {type(e).__name__}: {e}"
        ) from None


def _get_config(module: ModuleType, profile: str) -> ml_collections.ConfigDict:
    cfg = _call_config(module, "get_config", profile)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(
            f"config {module.__file__}: get_config({profile!r}) returned "
            f"{type(cfg).__name__}, not an ml_collections.ConfigDict"
        )
    return cfg


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """Parses ``["a.b=3", "name=max"]`` into ``{"a.b": 3, "name": "max"}``.

    Values are Python literals where they parse (numbers, tuples, None, True), else strings.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
    """Sets dotted keys in place; an unknown key raises one line listing the valid ones there."""
    for dotted, value in overrides.items():
        node = config
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(parts[:i]) or "the config"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ConfigError(
                    f"unknown config key {dotted!r}: valid keys in {where} are {', '.join(valid)}"
                )
            if i == len(parts) - 1:
                old = node[part]
                if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
                    node[part] = ml_collections.ConfigDict(value)
                else:
                    with node.unlocked():
                        try:
                            node[part] = value
                        except TypeError as e:
                            raise ConfigError(
                                f"bad value for {dotted!r}: {value!r} ({str(e).splitlines()[0]})"
                            ) from None
            else:
                node = node[part]


def to_dict(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """A plain, JSON-serialisable dict (tuples become lists)."""
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return json.loads(json.dumps(d, default=str))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def study_part(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """What a cell shares with every other cell of its study: the flattened config less its
    ``sweep_keys`` (and everything under them), the seed fields :data:`SEED_KEYS` and the cell's
    label and index.

    Args:
        config: a resolved cell config (see :func:`resolve`).

    Returns:
        A flat dict, dotted key -> JSON value.
    """
    d = to_dict(config)
    own = tuple(d.get("sweep_keys") or ())
    flat = flatten({k: v for k, v in d.items() if k not in _CELL_KEYS})
    return {
        k: v
        for k, v in flat.items()
        if k not in SEED_KEYS and not any(k == s or k.startswith(s + ".") for s in own)
    }


def overrides_hash(overrides: dict[str, Any]) -> str:
    """8 hex digits identifying a set of ``--set`` overrides (for default folder names)."""
    blob = json.dumps(to_dict(overrides), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def config_hash(config: ml_collections.ConfigDict | dict) -> str:
    """12 hex digits identifying what a resolved config computes (not where it runs)."""
    d = to_dict(config)
    for k in _NOT_HASHED:
        d.pop(k, None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve(
    name_or_path: str,
    *,
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    sweep: bool = True,
) -> tuple[ml_collections.ConfigDict, list[ml_collections.ConfigDict]]:
    """Loads a config and its sweep.

    Args:
        name_or_path: a config name in ``configs/`` or a path.
        profile: "quick" (CPU minutes), "full" (paper quality, GPU minutes) or "tiny" (tests).
        overrides: dotted-key overrides applied to the base config and every cell.
        sweep: False resolves the base config alone (``invariance train``) and returns no
            cells.

    Returns:
        ``(base, cells)``: the base config and one resolved config per sweep cell (the base
        alone when the file has no ``get_sweep``); each cell records ``cell_index`` and
        ``sweep_keys`` (the keys its sweep sets).

    Raises:
        ConfigError: an unknown profile or key, a config file that does not load, and an
            override of a field the sweep sets per cell (the cell's label would no longer say
            what it trained).
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: valid are {', '.join(PROFILES)}")
    overrides = overrides or {}
    module = load_config_module(name_or_path)
    base = _get_config(module, profile)
    apply_overrides(base, overrides)
    if not sweep:
        return base, []
    spec = _call_config(module, "get_sweep", profile) if hasattr(module, "get_sweep") else [{}]
    if not isinstance(spec, list | tuple) or not all(isinstance(c, dict) for c in spec):
        raise ConfigError(f"config {module.__file__}: get_sweep must return a list of dicts")
    cells = []
    for index, cell_overrides in enumerate(spec):
        cell = _get_config(module, profile)
        apply_overrides(cell, cell_overrides)
        _refuse_relabelling(cell, cell_overrides, overrides, module.__file__)
        apply_overrides(cell, overrides)
        with cell.unlocked():
            cell.cell_index = index  # the row order of the report's tables
            cell.sweep_keys = sorted(cell_overrides)
        cells.append(cell)
    return base, cells


def _refuse_relabelling(
    cell: ml_collections.ConfigDict, own: dict[str, Any], overrides: dict[str, Any], where: str
) -> None:
    """An override may not touch a key the sweep sets per cell (or one inside it): the cell's
    label names what its own keys say, and would lie about what was trained."""
    for key in overrides:
        for k in own:
            if key == k or key.startswith(k + ".") or k.startswith(key + "."):
                raise ConfigError(
                    f"--set {key} changes {k!r}, which the sweep of {where} sets per cell "
                    f"(cell {cell.get('cell_name', '?')!r}): its label would no longer say what "
                    "was trained; edit the config's sweep or write a new config instead"
                )
