"""Benchmarks (pytest-benchmark; skipped in the default run, run with
``python -m pytest tests/benchmarks --benchmark-enable``). They report numbers, assert nothing
about time."""

from __future__ import annotations

import pytest

from simulator.run import SimConfig, run_simulation

CFG = SimConfig(
    scenario="dapo-math",
    method="uniform",
    seed=0,
    steps=500,
    budget=2048,
    prompts_per_step=256,
    eval_every=50,
)


@pytest.fixture(scope="module", autouse=True)
def compiled():
    run_simulation(SimConfig(**{**CFG.__dict__, "steps": 3}))


def test_simulator_uniform_256x8(benchmark):
    out = benchmark.pedantic(run_simulation, args=(CFG,), rounds=5, iterations=1)
    benchmark.extra_info["rollouts"] = out.summary["rollouts"]
    benchmark.extra_info["rollouts_per_second"] = out.summary["rollouts"] / benchmark.stats["min"]
