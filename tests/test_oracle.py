"""The oracle (allocators/oracle.py), the simulator's exact allocation moments
(``kernels.allocation_moments``: expected informative groups, GRPO gradient variance) and the
report's frozen-mode oracle ratios (``bench.report.oracle_ratios``)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from allocators.advantages import group_normalized
from allocators.base import PromptStream, SettingsError, Step, validate
from allocators.knapsack import Knapsack
from allocators.oracle import Oracle, expected_informative, oracle_counts
from allocators.registry import METHODS, is_reference, parse_specs
from allocators.testing import BernoulliSource, check_allocator
from allocators.uniform import Uniform
from bench import report as R
from bench.cli import main
from simulator.model import LearningModel, SimulatedSource
from simulator.scenarios import build_world, get_scenario


# --------------------------------------------------------------------------------------------
# The oracle's allocation
# --------------------------------------------------------------------------------------------
def _brute_force(p: np.ndarray, budget: int, base: int = 2) -> float:
    best = -1.0
    for extra in itertools.product(range(budget - base * p.size + 1), repeat=p.size):
        if sum(extra) != budget - base * p.size:
            continue
        n = base + np.asarray(extra)
        best = max(best, float(expected_informative(p, n).sum()))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_allocation_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 5))
    p = rng.beta(0.4, 0.4, m)
    if seed == 0:
        p = np.array([0.0, 1.0, 0.5, 1e-4])  # degenerate rates get nothing they cannot use
    budget = 2 * m + int(rng.integers(0, 11))
    counts = oracle_counts(p, budget)
    assert counts.sum() == budget and counts.min() >= 2
    assert expected_informative(p, counts).sum() == pytest.approx(
        _brute_force(p, budget), abs=1e-12
    )


def _simulated_step(seed: int = 0, budget: int = 2048, pps: int = 256):
    sc = replace(get_scenario("dapo-math"), num_prompts=2000, num_test=50).with_frozen()
    model = LearningModel(sc, build_world(sc, seed))
    source = SimulatedSource(model, np.random.default_rng([seed, 1]))
    return model, source


def test_the_oracle_beats_uniform_and_knapsack_on_the_true_rates():
    model, source = _simulated_step()
    stream_rng = np.random.default_rng(2)
    stream = PromptStream(2000, stream_rng)
    knap, uni, ora = Knapsack(), Uniform(), Oracle()
    for a in (knap, uni, ora):
        a.reset(2000, np.random.default_rng(3))
    wins = 0
    for t in range(12):  # past the first epoch knapsack has statistics and differs from uniform
        state = stream.state_dict(), stream_rng.bit_generator.state
        out = {}
        for a in (knap, uni, ora):
            stream.load_state_dict(state[0])
            stream_rng.bit_generator.state = state[1]
            step = Step(t, stream, source, 1024, 128)
            result = a.step(step)
            a.observe(result)
            p = source.true_success_rates(result.prompt_ids)
            out[a.name] = float(expected_informative(p, result.counts.generated).sum())
            assert np.isclose(
                out[a.name], model.allocation_moments(result.prompt_ids, result.counts.generated)[0]
            )
        assert out["oracle"] >= out["uniform"] - 1e-9 and out["oracle"] >= out["knapsack"] - 1e-9
        wins += out["oracle"] > out["uniform"] + 1.0
    assert wins == 12  # strictly better by more than one group on every step


def test_the_oracle_passes_the_suite_and_is_a_reference():
    check_allocator(Oracle)
    assert is_reference("oracle") and not is_reference("uniform")
    assert "oracle" in METHODS
    assert "oracle" not in [s.name for s in parse_specs("all")]
    assert [s.name for s in parse_specs("oracle,uniform")] == ["oracle", "uniform"]
    with pytest.raises(SettingsError, match="reference for the simulator") as exc:
        validate(Oracle(), "oracle", 64, 8, frozenset({"answers"}))
    assert "\n" not in str(exc.value)
    validate(Oracle(), "oracle", 64, 8, BernoulliSource.provides)


# --------------------------------------------------------------------------------------------
# The exact moments against Monte Carlo
# --------------------------------------------------------------------------------------------
def test_exact_moments_match_monte_carlo_of_the_grpo_gradient():
    """Draw the step's rewards many times, build the GRPO estimate of the θ-gradient from the
    project's own advantages and score function, Σ_j A_j (r_j − p)·x / N, and compare its total
    variance and its mean count of mixed groups with the exact figures."""
    model, _ = _simulated_step(seed=4)
    ids = np.array([3, 17, 250, 901, 1500, 42], np.int64)
    counts = np.array([2, 5, 8, 1, 16, 3], np.int64)
    want = np.array([0.1, 0.35, 0.5, 0.7, 0.92, 0.05])
    model.u[ids] = np.log(want / (1 - want)) + model.w.b[ids]  # θ = 0: these rates exactly
    p = model.success_rates(ids)
    assert np.allclose(p, want)
    informative, variance = model.allocation_moments(ids, counts)

    draws = 40_000
    rng = np.random.default_rng(1)
    per = int(counts.sum())
    group = np.tile(np.repeat(np.arange(ids.size), counts), draws) + np.repeat(
        np.arange(draws) * ids.size, per
    )
    prob = p[group % ids.size]
    rewards = (rng.random(group.size) < prob).astype(np.float64)
    adv = group_normalized(group, rewards, draws * ids.size)
    coef = np.bincount(group, weights=adv * (rewards - prob), minlength=draws * ids.size)
    coef = coef.reshape(draws, ids.size)
    grads = coef @ model.w.X[ids] / per  # one θ-gradient estimate per draw
    mc_var = float(grads.var(axis=0, ddof=1).sum())
    succ = np.bincount(group, weights=rewards, minlength=draws * ids.size).reshape(draws, -1)
    mixed = ((succ > 0) & (succ < counts)).sum(axis=1).mean()

    assert variance == pytest.approx(mc_var, rel=0.03)
    assert informative == pytest.approx(mixed, abs=0.03)
    # and the per-group form of the definition, on a group size with a known closed form:
    # n = 2: c(S) = ½/(√½ + eps)·[S = 1], so Var c = ¼·m(1 − m)/(√½ + eps)², m = 2pq, and N = 2
    one = model.allocation_moments(ids[:1], np.array([2]))[1]
    m = 2 * p[0] * (1 - p[0])
    xx = float(model.w.X[ids[0]] @ model.w.X[ids[0]])
    assert one == pytest.approx(xx * 0.25 * m * (1 - m) / (np.sqrt(0.5) + 1e-6) ** 2 / 4, rel=1e-9)


def test_moments_stay_exact_at_extreme_rates_and_large_groups():
    model, _ = _simulated_step(seed=1)
    ids = np.array([5, 6, 7], np.int64)
    for shift in (-60.0, 0.0, 60.0):  # rates near 0, moderate, near 1
        model.u[ids] = shift
        for n in (2, 64, 600, 1500):
            info, var = model.allocation_moments(ids, np.full(3, n))
            assert np.isfinite(info) and np.isfinite(var) and var >= 0
            p = model.success_rates(ids)
            want = float(expected_informative(p, np.full(3, n)).sum())
            assert info == pytest.approx(want, abs=1e-12)
            if shift != 0.0:
                assert info < 1e-12 * n and var < 1e-12
    # a large group through the log-space path gives the same as the recursion
    model.u[ids] = 0.0
    model.theta[:] = 0.0
    p = model.success_rates(ids[:1])[0]
    n = 400
    s = np.arange(n + 1)
    from scipy.stats import binom

    pmf = binom.pmf(s, n, p)
    k = s * (n - s) / n
    c = k / (np.sqrt(k / (n - 1)) + 1e-6)
    xx = float(model.w.X[ids[0]] @ model.w.X[ids[0]])
    want = xx * (pmf @ c**2 - (pmf @ c) ** 2) / n**2
    assert model.allocation_moments(ids[:1], np.array([n]))[1] == pytest.approx(want, rel=1e-9)


def test_learning_runs_compute_the_moments_on_a_stride_frozen_runs_every_step():
    from simulator.run import SimConfig, run_simulation

    frozen = run_simulation(
        SimConfig(method="uniform", steps=12, budget=256, prompts_per_step=32, frozen=True)
    )
    learning = run_simulation(
        SimConfig(method="uniform", steps=12, budget=256, prompts_per_step=32)
    )
    assert frozen.steps["pg_variance"].notna().all()
    assert frozen.steps["expected_informative_groups"].notna().all()
    assert 0 < learning.steps["pg_variance"].notna().sum() < 12
    assert np.isfinite(learning.summary["mean_pg_variance"])


# --------------------------------------------------------------------------------------------
# The report: oracle ratios of frozen runs
# --------------------------------------------------------------------------------------------
def _rows(frozen=True) -> pd.DataFrame:
    rows = []
    for method, scale in (("oracle", 1.0), ("uniform", 0.8), ("knapsack", 0.9)):
        for seed in range(4):
            rows.append(
                {
                    "mode": "simulate",
                    "scenario": "dapo-math",
                    "model": "",
                    "method": method,
                    "method_name": method,
                    "seed": seed,
                    "budget": 2048,
                    "prompts_per_step": 256,
                    "steps": 10,
                    "frozen": frozen,
                    "mean_effective_grad_ratio": 0.7 * scale * (1 + 0.01 * seed),
                    "mean_expected_informative_groups": 150.0 * scale * (1 + 0.01 * seed),
                    "mean_pg_variance": 9e-5 * scale,
                    "budget_unit": "rollouts",
                    "compute_budget": np.nan,  # no compute budget: an empty cell matches
                }
            )
    df = pd.DataFrame(rows)
    df["arm"] = df["method"]
    return df


def test_oracle_ratios_pair_by_seed():
    out = R.oracle_ratios(_rows(), resamples=200, confidence=0.9, seed=0)
    assert set(out["arm"]) == {"uniform", "knapsack"}
    u = out[out.arm == "uniform"].iloc[0]
    assert u["oracle"] == "oracle" and u["paired_seeds"] == 4
    for m in ("effective_grad_ratio", "expected_informative_groups", "pg_variance"):
        assert u[m] == pytest.approx(0.8)
        assert u[f"{m}_low"] <= u[m] <= u[f"{m}_high"]
    assert R.oracle_ratios(_rows(frozen=False), resamples=200, confidence=0.9, seed=0).empty
    no_oracle = _rows()
    assert R.oracle_ratios(no_oracle[no_oracle.method != "oracle"], 200, 0.9, 0).empty


def test_frozen_simulate_then_report_shows_the_oracle_ratios(tmp_path):
    common = ["--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "--frozen",
            "--methods",
            "oracle,uniform,knapsack",
            "--seeds",
            "2",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--budget",
            "256",
            "--prompts-per-step",
            "32",
            "--workers",
            "1",
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "(reference)" in r.output  # the oracle row, marked (the cell may wrap)
    r = CliRunner().invoke(
        main,
        [
            "report",
            "--results",
            str(tmp_path / "results"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "report"),
            "--no-plots",
            "--solvers",
            str(tmp_path / "nope.csv"),
            "--resamples",
            "200",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "against the oracle" in r.output
    csv = pd.read_csv(tmp_path / "report" / "oracle_ratios.csv")
    assert set(csv["arm"]) == {"uniform", "knapsack"}
    assert (csv["expected_informative_groups"] <= 1 + 1e-9).all()
    assert (csv["paired_seeds"] == 2).all()
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Against the oracle (frozen policy)" in md and "`oracle (reference)`" in md
