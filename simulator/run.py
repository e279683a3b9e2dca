"""One simulated training run: the shared loop (``allocators/loop.py``) over the learning model.

Seeds. The world (features, difficulties, lengths, test set) depends only on the scenario and the
seed, so every method sees the same prompts under the same seed (paired comparisons). Sampling,
the prompt order and the allocator draw from separate generators derived from the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from allocators import loop
from allocators.base import PromptStream, check_numbers, validate
from allocators.loop import RUN_BOUNDS, RunOutput, Schedule
from allocators.registry import MethodSpec, parse_spec
from simulator.model import LearningModel, SimulatedSource
from simulator.scenarios import Scenario, build_world, get_scenario


@dataclass(frozen=True)
class SimConfig:
    scenario: str = "dapo-math"
    method: str = "uniform"
    seed: int = 0
    steps: int = 500
    budget: int = 2048  # rollouts per step
    prompts_per_step: int = 256
    eval_every: int = 10
    frozen: bool = False

    def __post_init__(self) -> None:
        check_numbers(self, RUN_BOUNDS)

    def spec(self) -> MethodSpec:
        return parse_spec(self.method)


def _scenario(cfg: SimConfig) -> Scenario:
    scenario = get_scenario(cfg.scenario)
    return scenario.with_frozen() if cfg.frozen else scenario


def resolve(cfg: SimConfig) -> dict:
    spec = cfg.spec()
    return {
        "mode": "simulate",
        **asdict(cfg),
        "method": spec.label,
        "method_name": spec.name,
        "method_config": asdict(spec.build().config),
        "scenario_config": _scenario(cfg).resolved(),
    }


def schedule(cfg: SimConfig) -> Schedule:
    return Schedule(
        cfg.steps,
        cfg.budget,
        cfg.prompts_per_step,
        cfg.eval_every,
        get_scenario(cfg.scenario).target_accuracy,
    )


def identity(cfg: SimConfig) -> dict:
    """The run's leaderboard identity columns."""
    spec = cfg.spec()
    return loop.identity(
        "simulate",
        cfg.scenario,
        "simulator",
        spec.label,
        spec.name,
        cfg.seed,
        schedule(cfg),
        cfg.frozen,
    )


def check(cfg: SimConfig) -> None:
    """Refuse settings the run cannot use (``SettingsError``/``SpecError``, one line each)."""
    spec = cfg.spec()
    validate(spec.build(), spec.label, cfg.budget, cfg.prompts_per_step, SimulatedSource.provides)


def run_simulation(cfg: SimConfig, progress: Callable[[int], None] | None = None) -> RunOutput:
    """Run ``cfg`` to the end. ``progress(k)`` is called with the number of steps done at every
    evaluation."""
    scenario = _scenario(cfg)
    world = build_world(scenario, cfg.seed)
    model = LearningModel(scenario, world)
    source = SimulatedSource(model, np.random.default_rng([cfg.seed, 1]))
    stream = PromptStream(scenario.num_prompts, np.random.default_rng([cfg.seed, 2]))
    allocator = cfg.spec().build()
    allocator.reset(scenario.num_prompts, np.random.default_rng([cfg.seed, 3]))
    sched = schedule(cfg)

    def on_step(done: int, row: dict) -> None:
        if progress is not None and done and "test_accuracy" in row:
            progress(done)

    prog, _ = loop.run(allocator, source, model, stream, sched, on_step=on_step)
    steps, evals, allocation = loop.tables(prog)
    return RunOutput(
        resolve(cfg), identity(cfg), loop.summarize(prog, sched), steps, evals, allocation
    )
