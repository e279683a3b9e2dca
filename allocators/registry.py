"""Registry: method names → allocator classes, and the method-spec syntax of the command line.

A spec is ``name``, optionally a preset ``name@preset``, optionally options
``name:key=value:key=value`` (values parsed by the field's type in the method's Config
dataclass; booleans accept true/false/1/0/yes/no). Examples: ``uniform``,
``knapsack:k0_value=natural``, ``coba@class``.

To add a method: write ``allocators/<method>.py`` with an ``Allocator`` subclass, then add it to
``METHODS`` below. It then appears in ``bench simulate``, ``bench train`` and the shared check
suite (``allocators/testing.py``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from allocators.base import Allocator, AllocatorConfig
from allocators.cgrpo import Cgrpo
from allocators.coba import Coba
from allocators.cropi import Cropi
from allocators.dapo import Dapo
from allocators.greso import Greso
from allocators.knapsack import Knapsack
from allocators.oracle import Oracle
from allocators.reinforce_ada_est import ReinforceAdaEst
from allocators.reinforce_ada_seq import ReinforceAdaSeq, ReinforceAdaSeqPos
from allocators.uniform import Uniform
from allocators.variance_optimal import VarianceOptimal

METHODS: dict[str, type[Allocator]] = {
    cls.name: cls
    for cls in (
        Uniform,
        ReinforceAdaSeq,
        ReinforceAdaSeqPos,
        ReinforceAdaEst,
        Dapo,
        Greso,
        VarianceOptimal,
        Cgrpo,
        Cropi,
        Knapsack,
        Coba,
        Oracle,
    )
}


def is_reference(name: str) -> bool:
    """Whether registry name ``name`` is a reference for the simulator (the oracle), never a
    method to deploy (``Capabilities.reference``); ``all`` leaves those out."""
    cls = METHODS.get(name)
    return cls is not None and cls.caps.reference


class SpecError(ValueError):
    """A method spec that names an unknown method, preset or option, or a bad value."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    preset: str | None
    options: tuple[tuple[str, object], ...]

    def build(self) -> Allocator:
        cls = METHODS[self.name]
        values = dict(cls.caps.presets[self.preset]) if self.preset else {}
        values.update(dict(self.options))
        return cls(cls.Config(**values))

    @property
    def label(self) -> str:
        """Canonical text of the spec (name, preset, options sorted)."""
        out = self.name + (f"@{self.preset}" if self.preset else "")
        for k, v in sorted(self.options):
            out += f":{k}={_fmt(v)}"
        return out


def _fmt(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _coerce(cls: type[AllocatorConfig], key: str, raw: str, method: str) -> object:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if key not in names:
        accepted = ", ".join(names) or "none"
        raise SpecError(f"method {method!r} has no option {key!r} (options: {accepted})")
    typ = hints[key]
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if raw not in choices:
            raise SpecError(
                f"option {method}:{key} must be one of {', '.join(map(str, choices))}, not {raw!r}"
            )
        return raw
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ in (int, float, str):
            return typ(raw)
    except ValueError:
        raise SpecError(f"option {method}:{key} expects {typ.__name__}, got {raw!r}") from None
    raise SpecError(f"option {method}:{key} cannot be set from the command line")


def parse_spec(text: str) -> MethodSpec:
    parts = text.strip().split(":")
    head = parts[0]
    name, _, preset = head.partition("@")
    if name not in METHODS:
        raise SpecError(f"unknown method {name!r} (methods: {', '.join(sorted(METHODS))})")
    cls = METHODS[name]
    presets = cls.caps.presets
    if preset and preset not in presets:
        raise SpecError(
            f"method {name!r} has no preset {preset!r} (presets: {', '.join(presets) or 'none'})"
        )
    options = []
    for item in parts[1:]:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise SpecError(f"bad option {item!r} in {text!r}: expected key=value")
        options.append((key, _coerce(cls.Config, key, raw, name)))
    spec = MethodSpec(name, preset or None, tuple(options))
    try:
        spec.build()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"method {text!r}: {exc}") from None
    return spec


def parse_specs(text: str) -> list[MethodSpec]:
    """Comma-separated specs; ``all`` expands to every registered method with defaults, the
    references (``is_reference``: the oracle) left out."""
    out: list[MethodSpec] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "all":
            out.extend(MethodSpec(n, None, ()) for n in METHODS if not is_reference(n))
        else:
            out.append(parse_spec(item))
    if not out:
        raise SpecError(f"no method given (methods: {', '.join(sorted(METHODS))})")
    seen = set()
    unique = []
    for s in out:
        if s.label not in seen:
            seen.add(s.label)
            unique.append(s)
    return unique
