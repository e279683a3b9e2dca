"""The shared check suite (``allocators/testing.py``) over every registered method, on a small
frozen simulated world (it provides everything a method may need, gradients included) and on the
suite's own ``BernoulliSource``; and planted bugs of each kind that the suite must catch."""

from __future__ import annotations

import re
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from allocators.base import SettingsError, validate
from allocators.knapsack import Knapsack
from allocators.registry import METHODS, parse_spec
from allocators.testing import (
    BernoulliSource,
    check_allocator,
    check_config_unchanged,
    check_state_round_trip,
    check_step_invariants,
    parametrize_with_checks,
)
from allocators.uniform import Uniform
from simulator.model import LearningModel, SimulatedSource
from simulator.scenarios import build_world, get_scenario

SMALL = replace(get_scenario("dapo-math"), num_prompts=120, num_test=50).with_frozen()


class FrozenSimSource(SimulatedSource):
    """The simulator's source on a policy that never moves: its only state is its generator."""

    def __init__(self, seed: int):
        super().__init__(
            LearningModel(SMALL, build_world(SMALL, seed)), np.random.default_rng([seed, 1])
        )

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def simulated(seed: int):
    return FrozenSimSource(seed), SMALL.num_prompts


def _maker(name: str):
    return lambda: parse_spec(name).build()


MAKERS = {name: _maker(name) for name in sorted(METHODS)}


@parametrize_with_checks(MAKERS, simulated)
def test_registered_methods_pass_the_suite(make, check, sources):
    check(make, sources)


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in METHODS
        if not parse_spec(n).build().capabilities().needs - BernoulliSource.provides
    ),
)
def test_the_suite_runs_on_its_own_source(name):
    check_allocator(MAKERS[name])


def test_a_method_needing_what_the_source_lacks_is_refused():
    cropi = parse_spec("cropi").build()
    with pytest.raises(SettingsError, match="needs gradients.*score=random"):
        validate(cropi, "cropi", 64, 8, BernoulliSource.provides)
    validate(parse_spec("cropi:score=random").build(), "cropi", 64, 8, BernoulliSource.provides)
    with pytest.raises(SettingsError, match="below uniform's minimum of 2 rollouts x 8"):
        validate(Uniform(), "uniform", 15, 8)


# --------------------------------------------------------------------------------------------
# Planted bugs: the suite fails for each kind
# --------------------------------------------------------------------------------------------
class Forgetful(Knapsack):
    """Does not restore its statistics."""

    def load_state_dict(self, state: dict) -> None:
        pass


class Mutating(Uniform):
    """Changes its own config while running."""

    def run_step(self, step):
        self.config.eps *= 2
        return super().run_step(step)


class Overspending(Uniform):
    """Spends one rollout more than the budget."""

    def allocate(self, step, groups):
        counts, info = super().allocate(step, groups)
        counts[0] += 1
        return counts, info


@pytest.mark.parametrize(
    "bug, check",
    [
        (Forgetful, check_state_round_trip),
        (Mutating, check_config_unchanged),
        (Overspending, check_step_invariants),
    ],
)
def test_the_suite_catches_planted_bugs(bug, check):
    with pytest.raises(AssertionError):
        check(bug)
    with pytest.raises(AssertionError):
        check_allocator(bug)


def test_the_readme_example_method_passes_the_suite():
    """The complete example method of the README's "Adding a method" section."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Adding a method.*?```python\n(.*?)```", text, re.S)
    assert block, "README has no Adding a method example"
    module = types.ModuleType("readme_example")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    try:
        exec(compile(block.group(1), "README.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and v.__module__ == module.__name__ and hasattr(v, "run_step")
    ]
    assert classes
    for cls in classes:
        check_allocator(cls)
