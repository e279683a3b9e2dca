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
from allocators.base import PromptStream, SettingsError, check_numbers, validate
from allocators.cost import CostModel
from allocators.loop import RUN_BOUNDS, RunOutput, Schedule, check_units
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
    budget_unit: str = "rollouts"  # rollouts | tokens
    compute_unit: str = ""  # "" (none) | rollouts | tokens | seconds
    compute_budget: float = 0.0  # total compute of the run, in compute_unit
    cost_model: str = ""  # a cost model JSON file (allocators/cost.py); "": the defaults

    def __post_init__(self) -> None:
        check_numbers(self, RUN_BOUNDS)
        check_units(self.budget, self.budget_unit, self.compute_unit, self.compute_budget)

    def cost(self) -> CostModel:
        return CostModel.load(self.cost_model) if self.cost_model else CostModel()

    def spec(self) -> MethodSpec:
        return parse_spec(self.method)


def _scenario(cfg: SimConfig) -> Scenario:
    scenario = get_scenario(cfg.scenario)
    return scenario.with_frozen() if cfg.frozen else scenario


# Settings added in 0.3 enter the resolved config (and its hash) only when they are not their
# defaults, so every earlier run keeps its config hash (and a sweep its resume point).
_ADDED = {"budget_unit": "rollouts", "compute_unit": "", "compute_budget": 0.0, "cost_model": ""}


def resolve(cfg: SimConfig) -> dict:
    spec = cfg.spec()
    scenario = _scenario(cfg)
    out = {
        "mode": "simulate",
        **{k: v for k, v in asdict(cfg).items() if k not in _ADDED or v != _ADDED[k]},
        # a scenario file is known by its scenario's name and content, not by its path
        "scenario": scenario.name,
        "method": spec.label,
        "method_name": spec.name,
        "method_config": asdict(spec.build().config),
        "scenario_config": scenario.resolved(),
    }
    if cfg.cost_model:
        out["cost_model"] = cfg.cost().to_dict()
    return out


def schedule(cfg: SimConfig) -> Schedule:
    return Schedule(
        cfg.steps,
        cfg.budget,
        cfg.prompts_per_step,
        cfg.eval_every,
        get_scenario(cfg.scenario).target_accuracy,
        cfg.budget_unit,
        cfg.compute_unit,
        cfg.compute_budget,
    )


def identity(cfg: SimConfig) -> dict:
    """The run's leaderboard identity columns."""
    spec = cfg.spec()
    return loop.identity(
        "simulate",
        get_scenario(cfg.scenario).name,
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
    validate(
        spec.build(),
        spec.label,
        cfg.budget,
        cfg.prompts_per_step,
        SimulatedSource.provides,
        cfg.budget_unit,
    )
    cost = cfg.cost()
    if cfg.compute_unit:
        scenario = _scenario(cfg)
        model = LearningModel(scenario, build_world(scenario, cfg.seed))
        one = loop.per_step_reference(schedule(cfg), model.reference_length(), cost)
        if cfg.compute_budget < one[cfg.compute_unit]:
            raise SettingsError(
                f"a compute budget of {cfg.compute_budget:g} {cfg.compute_unit} is less than one "
                f"step of uniform GRPO ({one[cfg.compute_unit]:,.6g} {cfg.compute_unit})"
            )


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

    cost = cfg.cost()
    prog, _ = loop.run(allocator, source, model, stream, sched, on_step=on_step, cost=cost)
    return loop.output(resolve(cfg), identity(cfg), prog, sched, cost)
