"""The protocol registry: one call signature, lookup by name, validation before any work.

Every protocol is ``fn(apply_fn, variables, images, *, labels=None, key=None, chunk_size=None,
**options) -> rows`` and is registered under its function name with :func:`register`, which
also records the function that checks its options against an image shape. The same checks run
when the protocol is called and in :func:`validate_protocol`, so a config can be refused in
one line before any model is trained.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from invariance.measure import _core as C

__all__ = [
    "COMMON_ARGS",
    "PROTOCOLS",
    "PROTOCOL_SPECS",
    "ProtocolSpec",
    "describe_protocols",
    "get_protocol",
    "register",
    "validate_protocol",
]

#: Keyword arguments every protocol takes besides its options.
COMMON_ARGS = ("labels", "key", "chunk_size")
_POSITIONAL = ("apply_fn", "variables", "images")
#: What a protocol's first argument is: a logits function, a features function, or None.
MODEL_KINDS = ("logits", "features", "none")

#: Protocol name -> function, in registration order.
PROTOCOLS: dict[str, Callable[..., list[dict[str, Any]]]] = {}


@dataclasses.dataclass(frozen=True)
class ProtocolSpec:
    """What the registry knows about one protocol besides the function.

    Attributes:
      fn: the protocol.
      check: ``check(image_shape, **options)``: raises a one-line ValueError for bad options
        (every option of ``fn``, defaults filled in); the protocol calls it too.
      model: what ``apply_fn`` is, one of :data:`MODEL_KINDS`.
      needs: which of ``"labels"`` / ``"key"`` the protocol cannot run without.
    """

    fn: Callable[..., list[dict[str, Any]]]
    check: Callable[..., Any]
    model: str
    needs: tuple[str, ...]

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """The protocol's own keyword-only options (not :data:`COMMON_ARGS`), by name."""
        params = inspect.signature(self.fn).parameters
        return {
            k: p
            for k, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in COMMON_ARGS
        }

    @property
    def open_options(self) -> bool:
        """True when the protocol also takes ``**transform_options`` (checked by ``check``)."""
        params = inspect.signature(self.fn).parameters.values()
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


#: Protocol name -> its :class:`ProtocolSpec` (``measure.PROTOCOL_SPECS``).
PROTOCOL_SPECS: dict[str, ProtocolSpec] = {}


def register(
    *, check: Callable[..., Any], model: str = "logits", needs: tuple[str, ...] = ()
) -> Callable[[Callable], Callable]:
    """Decorator: registers a protocol under its function name in :data:`PROTOCOLS`.

    Args:
      check: ``check(image_shape, **options)``, see :class:`ProtocolSpec`.
      model: one of :data:`MODEL_KINDS`.
      needs: a subset of ``("labels", "key")``.

    Raises:
      TypeError: when the function does not have the common signature (a bug in the library).
    """
    if model not in MODEL_KINDS or not set(needs) <= {"labels", "key"}:
        raise TypeError(f"bad registration: model={model!r}, needs={needs!r}")

    def decorate(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters.values())
        head = tuple(p.name for p in params[:3])
        common = {p.name: p for p in params if p.name in COMMON_ARGS}
        ok = head == _POSITIONAL and len(common) == 3
        ok = ok and all(
            p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in common.values()
        )
        if not ok:
            raise TypeError(
                f"protocol {fn.__name__} must be fn(apply_fn, variables, images, *, labels=None, "
                "key=None, chunk_size=None, **options)"
            )
        if fn.__name__ in PROTOCOLS:
            raise TypeError(f"protocol {fn.__name__} is registered twice")
        PROTOCOLS[fn.__name__] = fn
        PROTOCOL_SPECS[fn.__name__] = ProtocolSpec(fn, check, model, tuple(needs))
        return fn

    return decorate


def _spec(name: Any) -> ProtocolSpec:
    if not isinstance(name, str) or name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {C.brief(name)}: valid are {', '.join(PROTOCOLS)}")
    return PROTOCOL_SPECS[name]


def get_protocol(name: str) -> Callable[..., list[dict[str, Any]]]:
    """The protocol registered as ``name``.

    Raises:
      ValueError: in one line, for an unknown name, listing the valid ones.
    """
    return _spec(name).fn


def validate_protocol(
    name: str, options: Mapping[str, Any], *, image_shape: tuple[int, int, int]
) -> None:
    """Checks a protocol name and its options for images of ``image_shape``, computing nothing.

    Runs the checks the protocol itself runs first: option names (unknown ones, and the
    common arguments ``labels`` / ``key`` / ``chunk_size``, which are not options), missing
    required options, types (integers where integers are meant, bools, names from their
    choices), ranges (ratios in [0, 1], shifts and offsets against the image size, finite
    numbers). Use it to refuse a config before any training.

    Args:
      name: a key of :data:`PROTOCOLS`.
      options: the protocol's keyword options, e.g. ``{"max_shift": 3, "mode": "circular"}``.
      image_shape: ``(H, W, C)`` of the images the protocol will see.

    Raises:
      ValueError: one line naming the protocol, the problem and the valid choices.
    """
    spec = _spec(name)
    shape = C.image_shape(image_shape)
    if not isinstance(options, Mapping):
        raise ValueError(f"options of protocol {name!r} must be a dict, got {C.brief(options)}")
    valid = spec.options
    args = [k for k in options if k in COMMON_ARGS or k in _POSITIONAL]
    if args:
        raise ValueError(
            f"protocol {name!r}: {args} are arguments of every protocol, not options; valid "
            f"options are {sorted(valid)}"
        )
    unknown = [] if spec.open_options else sorted(str(k) for k in options if k not in valid)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for protocol {name!r}: valid are {sorted(valid)}"
        )
    missing = [k for k, p in valid.items() if p.default is p.empty and k not in options]
    if missing:
        raise ValueError(f"protocol {name!r} needs option(s) {missing}")
    resolved = {k: p.default for k, p in valid.items() if p.default is not p.empty}
    resolved.update(options)
    try:
        spec.check(shape, **resolved)
    except ValueError as e:
        raise ValueError(f"protocol {name!r}: {e}") from None


def describe_protocols() -> str:
    """The registry as a Markdown list (the README's list of protocols is generated from it).

    One line per protocol, in registration order: its name, what ``apply_fn`` is, what it
    needs, its options with their defaults (required ones bare) and its docstring's first
    sentence.
    """
    lines = []
    for name, spec in PROTOCOL_SPECS.items():
        opts = [
            k if p.default is p.empty else f"{k}={p.default!r}" for k, p in spec.options.items()
        ]
        if spec.open_options:
            opts.append("**transform_options")
        needs = f"; needs {' and '.join(spec.needs)}" if spec.needs else ""
        doc = " ".join((inspect.getdoc(spec.fn) or "").split("\n\n")[0].split())
        lines.append(f"- `{name}` ({spec.model}{needs}): `{', '.join(opts)}`. {doc}")
    return "\n".join(lines) + "\n"
