"""Scenario files: a user's own scenario as TOML (docs/simulator.md#scenario-files).

A file sets any field of ``Scenario`` (``simulator/scenarios.py``) at the top level. It may start
from a built-in preset, ``base = "dapo-math"``, and override some of its fields; without a base
every field it leaves out takes the dataclass default. ``name`` defaults to the file's stem and
must not be a built-in's name. A ``pool`` (a pass-rate file, docs/simulator.md#pools-from-pass-rates,
relative to the scenario file) replaces the initial pass-rate distribution and, where the file
has tokens, the length model: ``pool_mode = "mixture"`` (the default) fits a Beta mixture to its
counts when the file is loaded, ``"prompts"`` keeps the prompts themselves (each prompt's
initial rate drawn from its own posterior when a world is built). Fields the file sets itself
win over fitted ones.

    base = "dapo-math"
    name = "my-pool"
    lr = 0.5
    pass_rate_mixture = [[0.4, 0.3, 8.0], [0.6, 1.0, 1.0]]

Every problem is one ``ScenarioError`` line naming the file and the key: unknown keys (with the
nearest field), wrong types, values out of range (``SCENARIO_BOUNDS``), an unknown base.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import sys
import typing
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from allocators.base import SettingsError, check_numbers
from simulator.scenarios import SCENARIOS, Scenario

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message is one line naming the file and key."""


# Inclusive ranges of the numeric fields; the built-in presets satisfy them too (a test checks).
SCENARIO_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "num_prompts": (1, 10_000_000),
    "num_test": (1, 1_000_000),
    "dim": (1, 65_536),
    "transfer": (0.0, 0.999),
    "lr": (0.0, 1e6),
    "memorization_lr": (0.0, 1e7),
    "median_tokens": (1.0, 1e6),
    "prompt_length_sigma": (0.0, 5.0),
    "difficulty_length_slope": (-20.0, 20.0),
    "wrong_length_factor": (0.01, 100.0),
    "sample_length_sigma": (0.0, 5.0),
    "max_tokens": (1, 10_000_000),
    "n_wrong_answers": (0, 10_000),
    "wrong_answer_conc": (0.0, 100.0),
    "target_accuracy": (0.0, 1.0),
    "domain_strength": (0.0, 0.999),
    "steps_per_prompt": (1, 32),
}
# The feature matrices of a world hold (num_prompts + num_test) x dim doubles (x steps_per_prompt).
MAX_WORLD_VALUES = 400_000_000
FILE_KEYS = ("base",)  # keys of a file that are not Scenario fields


def is_scenario_file(ref: str) -> bool:
    return ref.endswith(".toml")


def load_scenario_file(path: str | Path) -> Scenario:
    """The scenario a TOML file describes (``ScenarioError`` on any problem)."""
    p = Path(path)
    try:
        stat = p.stat()
    except OSError as exc:
        raise ScenarioError(f"scenario file {p}: {exc.strerror or exc}") from None
    return _load(str(p.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int) -> Scenario:
    where = f"scenario file {path}"
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ScenarioError(f"{where}: {exc.strerror or exc}") from None
    known = {f.name: f for f in fields(Scenario)}
    for key in data:
        if key not in known and key not in FILE_KEYS:
            near = difflib.get_close_matches(key, [*known, *FILE_KEYS], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ScenarioError(f"{where}: unknown key {key!r}{hint}")
    base_name = data.get("base")
    if base_name is not None:
        if not isinstance(base_name, str) or base_name not in SCENARIOS:
            raise ScenarioError(
                f"{where}: base {base_name!r} is not a built-in scenario ({', '.join(SCENARIOS)})"
            )
    hints = typing.get_type_hints(Scenario)
    values = {k: _convert(k, v, hints[k], where) for k, v in data.items() if k in known}
    values.setdefault("name", Path(path).stem)
    if values["name"] in SCENARIOS:
        raise ScenarioError(
            f"{where}: name {values['name']!r} is a built-in scenario's; give the file's "
            "scenario a name of its own (key 'name')"
        )
    values.setdefault("summary", f"scenario file {Path(path).name}")
    values.setdefault(
        "calibration",
        f"from {Path(path).name}" + (f", based on {base_name}" if base_name else ""),
    )
    if values.get("pool"):
        values = _with_pool(values, Path(path).parent, where)
    if base_name is not None:
        scenario = replace(SCENARIOS[base_name], **values)
    else:
        scenario = Scenario(**values)
    check_scenario(scenario, where)
    return scenario


def check_scenario(s: Scenario, where: str) -> None:
    """Ranges and relations of a scenario's fields (``ScenarioError`` naming the key)."""
    try:
        check_numbers(s, SCENARIO_BOUNDS)
    except SettingsError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    if s.transfer**2 + s.domain_strength**2 > 1.0:
        raise ScenarioError(f"{where}: transfer² + domain_strength² must be at most 1")
    steps = getattr(s, "steps_per_prompt", 1)
    if (s.num_prompts + s.num_test) * s.dim * steps > MAX_WORLD_VALUES:
        raise ScenarioError(
            f"{where}: (num_prompts + num_test) x dim is too large for memory "
            f"(at most {MAX_WORLD_VALUES:,} values)"
        )
    if s.pool and s.pool_mode == "prompts" and s.domains:
        raise ScenarioError(
            f'{where}: pool_mode = "prompts" keeps the prompts of a pool without domains; '
            'use pool_mode = "mixture" for a pool with a domain column'
        )
    names = [d[0] for d in s.domains]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{where}: domain names must be distinct")
    for v in s.validation_sets:
        if v not in names:
            raise ScenarioError(f"{where}: validation set {v!r} is not a domain ({names})")


def _convert(key: str, value: Any, hint: Any, where: str) -> Any:
    """A TOML value as the Scenario field ``key`` of type ``hint`` wants it."""
    origin = typing.get_origin(hint)
    if key == "pass_rate_mixture":
        return _mixture(value, f"{where}: key {key!r}")
    if key == "domains":
        return _domains(value, where)
    if key == "validation_sets":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ScenarioError(f"{where}: key {key!r} must be a list of domain names")
        return tuple(value)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise ScenarioError(f"{where}: key {key!r} must be one of {choices}, not {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ScenarioError(f"{where}: key {key!r} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{where}: key {key!r} must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{where}: key {key!r} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise ScenarioError(f"{where}: key {key!r} must be a finite number, not {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ScenarioError(f"{where}: key {key!r} must be a string, not {value!r}")
        return value
    raise ScenarioError(f"{where}: key {key!r} cannot be set from a file")  # pragma: no cover


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _mixture(value: Any, where: str) -> tuple[tuple[float, float, float], ...]:
    """A list of [weight, a, b] Beta components, each positive."""
    ok = isinstance(value, list) and value
    ok = ok and all(
        isinstance(c, list) and len(c) == 3 and all(_number(x) and x > 0 for x in c) for c in value
    )
    if not ok:
        raise ScenarioError(
            f"{where} must be a list of [weight, a, b] Beta components, each positive "
            "(e.g. [[0.3, 0.3, 8.0], [0.7, 1.0, 1.0]])"
        )
    return tuple((float(w), float(a), float(b)) for w, a, b in value)


def _domains(value: Any, where: str) -> tuple:
    """``[[domains]]`` tables (name, train_share, test_share, mixture) or the Python form's
    lists [name, train share, test share, mixture]."""
    if not isinstance(value, list) or not value:
        raise ScenarioError(f"{where}: key 'domains' must be a list of domain tables")
    out = []
    for k, d in enumerate(value):
        at = f"{where}: domains[{k}]"
        if isinstance(d, dict):
            extra = set(d) - {"name", "train_share", "test_share", "mixture"}
            if extra:
                raise ScenarioError(f"{at}: unknown key {sorted(extra)[0]!r}")
            try:
                d = [d["name"], d["train_share"], d["test_share"], d["mixture"]]
            except KeyError as exc:
                raise ScenarioError(f"{at}: missing key {exc.args[0]!r}") from None
        if not isinstance(d, list) or len(d) != 4:
            raise ScenarioError(f"{at} must be [name, train share, test share, mixture]")
        name, train, test, mix = d
        if not isinstance(name, str) or not name:
            raise ScenarioError(f"{at}: name must be a non-empty string")
        for label, share in (("train_share", train), ("test_share", test)):
            if not _number(share) or not 0 <= share <= 1:
                raise ScenarioError(f"{at}: {label} must be a number in [0, 1]")
        out.append((name, float(train), float(test), _mixture(mix, f"{at}: mixture")))
    return tuple(out)


def _with_pool(values: dict, folder: Path, where: str) -> dict:
    """``values`` with the pool file resolved (absolute path, content digest) and, in mixture
    mode, its fitted mixture, size and length model filling the fields the file left out."""
    from simulator import pools

    path = Path(values["pool"])
    if not path.is_absolute():
        path = folder / path
    mode = values.get("pool_mode", "mixture")
    try:
        pool = pools.build_pool(path, mode)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except (pools.PoolError, OSError) as exc:
        raise ScenarioError(f"{where}: pool: {exc}") from None
    out = {**values, "pool": str(path.resolve()), "pool_digest": digest}
    for key, fitted in pool.scenario_fields().items():
        out.setdefault(key, fitted)
    return out


def lookup(ref: str) -> Scenario:
    """A built-in scenario by name or a scenario file by path (``ScenarioError`` naming the
    built-ins when ``ref`` is neither)."""
    if is_scenario_file(ref):
        return load_scenario_file(ref)
    if ref not in SCENARIOS:
        raise ScenarioError(
            f"unknown scenario {ref!r} (built-in: {', '.join(SCENARIOS)}; or a .toml file)"
        )
    return SCENARIOS[ref]


def origin(s: Scenario, ref: str) -> str:
    """Where a scenario came from, for ``--list-scenarios``."""
    if not is_scenario_file(ref):
        return "built-in (simulator/scenarios.py)"
    return f"file {ref}" + (f" (pool {Path(s.pool).name}, {s.pool_mode})" if s.pool else "")


def dump_scenario(s: Scenario, base: str | None = None) -> str:
    """The TOML text of ``s``: ``base = ...`` and the fields that differ from that preset (every
    field without a base). ``load_scenario_file`` of the text gives ``s`` back."""
    ref = SCENARIOS[base] if base else Scenario(name=s.name, summary="", calibration="")
    lines = [f"base = {_toml(base)}"] if base else []
    for f in fields(Scenario):
        value = getattr(s, f.name)
        if f.name in ("name", "summary", "calibration") or value != getattr(ref, f.name):
            if f.name == "pool_digest":
                continue  # set again from the file on loading
            lines.append(f"{f.name} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    """A TOML value of a scalar or (nested) tuple of scalars."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")  # pragma: no cover
