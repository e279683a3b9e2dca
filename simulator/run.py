"""One simulated training run: the contract's step loop over the learning model.

Seeds. The world (features, difficulties, lengths, test set) depends only on the scenario and the
seed, so every method sees the same prompts under the same seed (paired comparisons). Sampling,
the prompt order and the allocator draw from separate generators derived from the seed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pandas as pd

from allocators.base import PromptStream, Step
from allocators.metrics import STEP_METRICS, run_metrics, step_metrics
from allocators.registry import MethodSpec, parse_spec
from simulator.model import HIST_BINS, LearningModel, SimulatedSource
from simulator.scenarios import build_world, get_scenario


@dataclass(frozen=True)
class SimConfig:
    scenario: str = "dapo-math"
    method: str = "uniform"
    seed: int = 0
    steps: int = 500
    budget: int = 2048            # rollouts per step
    prompts_per_step: int = 256
    eval_every: int = 10
    frozen: bool = False

    def spec(self) -> MethodSpec:
        return parse_spec(self.method)


@dataclass
class RunOutput:
    config: dict          # resolved: run settings, scenario parameters, method options
    summary: dict         # run-level metrics (the leaderboard columns this run fills)
    steps: pd.DataFrame   # one row per step
    evals: pd.DataFrame   # test accuracy at each evaluation point, with cumulative cost
    allocation: pd.DataFrame  # prompts and rollouts per true-rate decile, per evaluation period


def resolve(cfg: SimConfig) -> dict:
    scenario = get_scenario(cfg.scenario)
    if cfg.frozen:
        scenario = scenario.with_frozen()
    spec = cfg.spec()
    alloc = spec.build()
    return {"mode": "simulate", **asdict(cfg), "method": spec.label,
            "method_name": spec.name, "method_config": asdict(alloc.config),
            "scenario_config": scenario.resolved()}


def run_simulation(cfg: SimConfig, progress: Callable[[int], None] | None = None) -> RunOutput:
    """Run ``cfg`` to the end. ``progress(k)`` is called with the number of steps done."""
    scenario = get_scenario(cfg.scenario)
    if cfg.frozen:
        scenario = scenario.with_frozen()
    world = build_world(scenario, cfg.seed)
    model = LearningModel(scenario, world)
    source = SimulatedSource(model, np.random.default_rng([cfg.seed, 1]))
    stream = PromptStream(scenario.num_prompts, np.random.default_rng([cfg.seed, 2]))
    alloc_rng = np.random.default_rng([cfg.seed, 3])
    allocator = cfg.spec().build()
    allocator.reset(scenario.num_prompts, alloc_rng)
    if hasattr(allocator, "bind_source"):
        allocator.bind_source(source)

    n = cfg.steps
    table = {k: np.zeros(n) for k in STEP_METRICS}
    grad_norm = np.zeros(n)
    eval_steps, eval_rollouts, eval_tokens, eval_acc = [0], [0], [0], [model.test_accuracy()]
    hist_rows = []
    cum_rollouts = cum_tokens = 0
    t_start = time.perf_counter()
    for t in range(n):
        step = Step(t, stream, source, cfg.budget, cfg.prompts_per_step, alloc_rng)
        result = allocator.step(step)
        grad_norm[t] = model.learn(result)
        allocator.observe(result)
        m = step_metrics(result.counts, result.solver_seconds)
        for k in STEP_METRICS:
            table[k][t] = m[k]
        cum_rollouts += m["rollouts"]
        cum_tokens += m["tokens"]
        if (t + 1) % cfg.eval_every == 0 or t + 1 == n:
            eval_steps.append(t + 1)
            eval_rollouts.append(cum_rollouts)
            eval_tokens.append(cum_tokens)
            eval_acc.append(model.test_accuracy())
            hp, hr = model.take_histogram()
            for k in range(HIST_BINS):
                hist_rows.append((t + 1, k / HIST_BINS, (k + 1) / HIST_BINS, int(hp[k]), int(hr[k])))
            if progress is not None:
                progress(t + 1)
    wall = time.perf_counter() - t_start

    steps = pd.DataFrame({"step": np.arange(1, n + 1), **table, "grad_norm": grad_norm})
    steps["cum_rollouts"] = steps["rollouts"].cumsum()
    steps["cum_tokens"] = steps["tokens"].cumsum()
    evals = pd.DataFrame({"step": eval_steps, "rollouts": eval_rollouts, "tokens": eval_tokens,
                          "test_accuracy": eval_acc})
    allocation = pd.DataFrame(hist_rows, columns=["step", "p_low", "p_high", "prompts", "rollouts"])

    er = np.asarray(eval_rollouts, float)
    ea = np.asarray(eval_acc, float)
    summary = {
        "initial_test_accuracy": float(ea[0]),
        **run_metrics(er, ea, scenario.target_accuracy),
        "target_accuracy": scenario.target_accuracy,
        "rollouts": int(cum_rollouts),
        "tokens": int(cum_tokens),
        "train_samples": int(table["train_samples"].sum()),
        "final_train_reward": float(np.nanmean(table["train_reward"][-max(1, cfg.eval_every):])),
        "mean_effective_grad_ratio": float(table["effective_grad_ratio"].mean()),
        "mean_effective_prompt_ratio": float(table["effective_prompt_ratio"].mean()),
        "solver_seconds_per_step": float(table["solver_seconds"].mean()),
        "wall_seconds": wall,
    }
    return RunOutput(resolve(cfg), summary, steps, evals, allocation)
