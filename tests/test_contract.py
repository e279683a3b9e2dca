"""Shared contract checks, parametrised over the registry: every method inherits them."""

from __future__ import annotations

import numpy as np
import pytest

from allocators.base import StepResult
from allocators.metrics import step_metrics
from allocators.registry import METHODS, parse_spec
from simulator.run import SimConfig, run_simulation

ALL = sorted(METHODS)


def check_step(r: StepResult, cls, budget: int) -> None:
    s = r.samples
    n = len(s)
    m = r.prompt_ids.size
    assert m > 0
    # the batch holds distinct prompts
    assert np.unique(r.prompt_ids).size == m
    # every sample belongs to a group of the batch and carries its prompt id
    assert s.group.shape == (n,) and s.rewards.shape == (n,) and s.lengths.shape == (n,)
    assert n == 0 or (s.group.min() >= 0 and s.group.max() < m)
    assert np.array_equal(s.prompt_ids, r.prompt_ids[s.group])
    assert set(np.unique(s.rewards)) <= {0.0, 1.0}
    assert (s.lengths >= 1).all()
    # counts: non-negative, add up, within the budget
    c = r.counts
    for arr in (c.generated, c.successes, c.tokens, c.trained, c.trained_successes):
        assert arr.shape == (m,) and (arr >= 0).all()
    assert c.generated.sum() == n and (c.successes <= c.generated).all()
    assert (c.trained_successes <= c.trained).all()
    if cls.uses_budget:
        assert n <= budget, f"{cls.name} spent {n} rollouts of a budget of {budget}"
    # the training batch indexes real samples, once each, with finite advantages and weights
    tb = r.train
    k = tb.index.size
    assert tb.advantages.shape == (k,) and tb.weights.shape == (k,)
    assert np.unique(tb.index).size == k
    assert k == 0 or (tb.index.min() >= 0 and tb.index.max() < n)
    assert np.isfinite(tb.advantages).all() and np.isfinite(tb.weights).all()
    assert (tb.weights >= 0).all()
    assert r.solver_seconds >= 0
    # metrics in range
    met = step_metrics(c, r.solver_seconds)
    assert 0.0 <= met["effective_grad_ratio"] <= 1.0
    assert 0.0 <= met["effective_prompt_ratio"] <= 1.0
    assert n == 0 or 0.0 <= met["train_reward"] <= 1.0
    assert met["rollouts"] == n and met["train_samples"] == k


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scenario", ["dapo-math", "hard", "easy"])
def test_steps_hold_the_contract(name, scenario, harness):
    h = harness(scenario, seed=1, budget=512, prompts_per_step=64)
    cls = METHODS[name]
    alloc = h.start(parse_spec(name).build())
    for _ in range(12):
        check_step(h.step(alloc), cls, h.budget)


@pytest.mark.parametrize("name", ALL)
def test_budget_at_the_minimum(name, harness):
    cls = METHODS[name]
    m = 32
    h = harness("dapo-math", seed=2, budget=m * cls.min_rollouts_per_prompt, prompts_per_step=m)
    alloc = h.start(parse_spec(name).build())
    for _ in range(6):
        check_step(h.step(alloc), cls, h.budget)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_numbers(name):
    cfg = SimConfig(scenario="dapo-math", method=name, seed=3, steps=15, budget=512,
                    prompts_per_step=64, eval_every=5)
    a, b = run_simulation(cfg), run_simulation(cfg)
    timing = ["solver_seconds"]
    pd_a, pd_b = a.steps.drop(columns=timing), b.steps.drop(columns=timing)
    assert pd_a.equals(pd_b)
    assert a.evals.equals(b.evals)
    assert a.allocation.equals(b.allocation)
    other = run_simulation(SimConfig(**{**cfg.__dict__, "seed": 4}))
    assert not other.steps.drop(columns=timing).equals(pd_a)


@pytest.mark.parametrize("name", ALL)
def test_run_summary_in_range(name):
    out = run_simulation(SimConfig(scenario="easy", method=name, seed=0, steps=10, budget=512,
                                   prompts_per_step=64, eval_every=5))
    s = out.summary
    for key in ("initial_test_accuracy", "final_test_accuracy", "auc_test_accuracy",
                "mean_effective_grad_ratio", "mean_effective_prompt_ratio"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["rollouts"] == out.steps.rollouts.sum() > 0
    assert s["tokens"] >= s["rollouts"]
    assert out.config["method_name"] == name
