"""Python configs (flax examples / big_vision style): load, override, resolve, hash.

A config file ``configs/NAME.py`` defines ``get_config(profile="quick")`` returning an
``ml_collections.ConfigDict`` and, optionally, ``get_sweep(profile="quick")`` returning a list of
override dicts (dotted keys) — one sweep cell each. A cell's identity is the hash of its resolved
config, so a rerun finds the cells it already finished.
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
    "ConfigError",
    "apply_overrides",
    "config_hash",
    "find_config",
    "load_config_module",
    "parse_set",
    "resolve",
    "to_dict",
]

PROFILES = ("quick", "full", "tiny")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Fields that say where or how verbosely a cell runs, not what it computes: not hashed.
_NOT_HASHED = ("workdir", "progress")


class ConfigError(ValueError):
    """A user error in a config, a config name or an override (one line)."""


def find_config(name_or_path: str) -> Path:
    """Resolves ``pooling_table``, ``configs/pooling_table.py`` or a path to a config file.

    Raises:
        ConfigError: no such file; the message lists the configs shipped in ``configs/``.
    """
    p = Path(name_or_path)
    candidates = [p, CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.py"]
    for c in candidates:
        if c.is_file() and c.suffix == ".py":
            return c
    shipped = sorted(f.stem for f in CONFIG_DIR.glob("*.py") if not f.stem.startswith("_"))
    raise ConfigError(
        f"no config {name_or_path!r}: valid are {', '.join(shipped)} or a path to a .py"
    )


def load_config_module(name_or_path: str) -> ModuleType:
    """Imports a config file as a module (it must define ``get_config``)."""
    path = find_config(name_or_path)
    spec = importlib.util.spec_from_file_location(f"invariance_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {path} defines no get_config()")
    return module


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


def config_hash(config: ml_collections.ConfigDict | dict) -> str:
    """12 hex digits identifying what a resolved config computes (not where it runs)."""
    d = to_dict(config)
    for k in _NOT_HASHED:
        d.pop(k, None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve(
    name_or_path: str, *, profile: str = "quick", overrides: dict[str, Any] | None = None
) -> tuple[ml_collections.ConfigDict, list[ml_collections.ConfigDict]]:
    """Loads a config and its sweep.

    Args:
        name_or_path: a config name in ``configs/`` or a path.
        profile: "quick" (CPU minutes), "full" (paper quality, GPU minutes) or "tiny" (tests).
        overrides: dotted-key overrides applied to the base config and every cell.

    Returns:
        ``(base, cells)``: the base config and one resolved config per sweep cell (the base
        alone when the file has no ``get_sweep``).
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: valid are {', '.join(PROFILES)}")
    module = load_config_module(name_or_path)
    base = module.get_config(profile)
    apply_overrides(base, overrides or {})
    sweep = module.get_sweep(profile) if hasattr(module, "get_sweep") else [{}]
    cells = []
    for index, cell_overrides in enumerate(sweep):
        cell = module.get_config(profile)
        apply_overrides(cell, cell_overrides)
        apply_overrides(cell, overrides or {})
        with cell.unlocked():
            cell.cell_index = index  # the row order of the report's tables
        cells.append(cell)
    return base, cells
