"""The shared solvers (allocators/solvers.py): optimality against brute force, agreement of the
four solvers, the official tie rules, and totals/bounds over random inputs (hypothesis)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from allocators import solvers as S

RATES = [0.0, 1.0, 0.5, 0.25, 1 / 16, 15 / 16, 0.125]


def brute_force(pr: S.Problem, budget: int) -> float:
    """Best objective over every allocation with Σ k = min(budget, n·K)."""
    total = min(budget, pr.size * pr.cap)
    best = -np.inf
    for ks in itertools.product(range(pr.cap + 1), repeat=pr.size):
        if sum(ks) == total:
            best = max(best, S.objective(pr, np.array(ks)))
    return best


def random_problem(rng: np.random.Generator, m: int, cap: int, discrete: bool) -> S.Problem:
    p = rng.choice(RATES, size=m) if discrete else rng.random(m)
    if rng.random() < 0.5:
        min_n = int(rng.integers(1, 4))
        k0 = "zero" if rng.random() < 0.5 else "natural"
        return S.knapsack_problem(p, min_n=min_n, max_n=min_n + cap, k0_value=k0)
    return S.coba_problem(
        p,
        alpha=rng.uniform(1, 10),
        beta=rng.uniform(1, 10),
        tau=rng.uniform(3, 12),
        n_low=2,
        n_up=2 + cap,
    )


def test_every_solver_reaches_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    for trial in range(150):
        m = int(rng.integers(1, 5))
        cap = int(rng.integers(0, 6))
        pr = random_problem(rng, m, cap, discrete=trial % 2 == 0)
        budget = int(rng.integers(0, m * cap + 3))
        best = brute_force(pr, budget)
        for method in S.SOLVERS:
            k = S.solve(pr, budget, method)
            assert k.sum() == min(budget, m * cap)
            assert np.isclose(S.objective(pr, k), best, rtol=1e-12, atol=1e-300), (method, trial)


def test_solvers_agree_on_medium_problems():
    rng = np.random.default_rng(1)
    for trial in range(40):
        m = int(rng.integers(20, 200))
        cap = int(rng.integers(1, 127))
        pr = random_problem(rng, m, cap, discrete=trial % 2 == 0)
        budget = int(rng.integers(0, m * min(cap, 12) + 1))
        ref = S.objective(pr, S.solve(pr, budget, "dp_table"))
        for method in ("fast", "greedy"):
            k = S.solve(pr, budget, method)
            assert k.sum() == min(budget, m * cap)
            assert S.objective(pr, k) == pytest.approx(ref, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("kind", ["knapsack", "coba"])
@pytest.mark.parametrize("discrete", [False, True])
def test_fast_matches_greedy_on_large_problems(kind, discrete):
    """From 65,536 prompts on the fast solver samples and windows; still exact."""
    rng = np.random.default_rng(2)
    m = 70_000
    p = rng.integers(0, 17, m) / 16 if discrete else rng.random(m)
    pr = S.knapsack_problem(p) if kind == "knapsack" else S.coba_problem(p, 3.0, 8.0, 5.0)
    for per_prompt in (3, 6):
        budget = m * (per_prompt - 2)
        fast, greedy = S.solve(pr, budget, "fast"), S.solve(pr, budget, "greedy")
        assert fast.sum() == budget and fast.min() >= 0 and fast.max() <= pr.cap
        assert S.objective(pr, fast) == pytest.approx(S.objective(pr, greedy), rel=1e-12)


def test_dp_formulations_give_the_same_allocation():
    rng = np.random.default_rng(3)
    for _ in range(10):
        pr = random_problem(rng, int(rng.integers(1, 30)), int(rng.integers(1, 20)), True)
        budget = int(rng.integers(0, pr.size * pr.cap + 5))
        assert np.array_equal(S.solve(pr, budget, "dp"), S.solve(pr, budget, "dp_table"))


def test_greedy_and_fast_break_ties_by_smaller_index():
    pr = S.knapsack_problem(np.full(3, 0.25), min_n=2, max_n=4)
    for method in ("greedy", "fast"):
        assert S.solve(pr, 1, method).tolist() == [1, 0, 0]
        assert S.solve(pr, 4, method).tolist() == [2, 1, 1]
    pr = S.coba_problem(np.full(4, 0.4), 5.0, 6.0, 7.0, n_low=2, n_up=5)
    for method in ("greedy", "fast"):
        assert S.solve(pr, 6, method).tolist() == [2, 2, 1, 1]


def test_dp_keeps_the_official_tie_rules():
    """Option k = 0 first, strict improvement: with two identical prompts and one rollout, the
    first prompt (decided earlier in the recursion) gets it."""
    pr = S.knapsack_problem(np.array([0.3, 0.3]), min_n=2, max_n=5)
    assert S.solve(pr, 1, "dp").tolist() == [1, 0]
    assert S.solve(pr, 3, "dp").tolist() == [2, 1]


def test_knapsack_value_and_quirk_q1():
    p = 0.5
    pr = S.knapsack_problem(np.array([p]), min_n=2, max_n=10, k0_value="zero")
    expected = (1 - p**8 - (1 - p) ** 8) * p * (1 - p) ** 2
    assert S.values(pr, np.array([8]))[0] == pytest.approx(expected, rel=1e-15)
    assert S.objective(pr, np.array([0])) == 0.0  # Q1: v(0) = 0
    natural = S.knapsack_problem(np.array([p]), min_n=2, max_n=10, k0_value="natural")
    assert S.objective(natural, np.array([0])) == pytest.approx(0.5 * 0.25 * 0.5)  # V(2)
    assert S.objective(natural, np.array([6])) == pytest.approx(expected)


def test_q1_favours_a_first_extra_rollout():
    """Under Q1 a prompt's first extra rollout is worth all of V(min_n + 1), not the increment
    V(min_n + 1) − V(min_n): a hard prompt gets its first extra rollout earlier than under the
    natural objective."""
    p = np.array([0.3, 0.02])
    zero = S.knapsack_problem(p, k0_value="zero")
    natural = S.knapsack_problem(p, k0_value="natural")
    for method in S.SOLVERS:
        assert S.solve(zero, 10, method).tolist() == [9, 1]
        assert S.solve(natural, 10, method).tolist() == [10, 0]


def test_coba_beta_pdf_matches_scipy():
    x = np.linspace(0.01, 0.99, 25)
    for a, b in ((9.0, 2.0), (1.0, 10.0), (3.4, 7.6)):
        assert np.allclose(S.beta_pdf(x, a, b), stats.beta.pdf(x, a, b), rtol=1e-12)


def test_coba_value_formula():
    pr = S.coba_problem(np.array([0.3, 0.999]), alpha=4.0, beta=7.0, tau=5.0, smoothing=0.01)
    assert pr.p.tolist() == [0.3, 0.99]  # p̃ clipped to [0.01, 0.99]
    n = np.array([10, 10])
    expected = (1 - np.exp(-10 / 5.0 * pr.p * (1 - pr.p))) * stats.beta.pdf(pr.p, 4.0, 7.0)
    assert np.allclose(S.values(pr, n), expected, rtol=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        S.solve(S.knapsack_problem(np.array([0.5])), 3, "simplex")
    with pytest.raises(ValueError):
        S.knapsack_problem(np.array([0.5]), min_n=0)
    with pytest.raises(ValueError):
        S.knapsack_problem(np.array([0.5]), k0_value="half")
    with pytest.raises(ValueError):
        S.coba_problem(np.array([0.5]), 2.0, 2.0, tau=0.0)


rates = st.lists(
    st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)), min_size=0, max_size=40
)


@settings(max_examples=150, deadline=None)
@given(
    p=rates,
    cap=st.integers(0, 130),
    budget=st.integers(-5, 3000),
    kind=st.sampled_from(["knapsack", "coba"]),
    k0=st.sampled_from(["zero", "natural"]),
    method=st.sampled_from(["fast", "greedy"]),
)
def test_totals_and_bounds_hold(p, cap, budget, kind, k0, method):
    p = np.asarray(p, np.float64)
    pr = (
        S.knapsack_problem(p, min_n=2, max_n=2 + cap, k0_value=k0)
        if kind == "knapsack"
        else S.coba_problem(p, 5.0, 6.0, 7.5, n_low=2, n_up=2 + cap)
    )
    k = S.solve(pr, budget, method)
    assert k.dtype == np.int64 and k.shape == p.shape
    assert k.sum() == max(0, min(budget, p.size * cap))
    assert (k >= 0).all() and (k <= cap).all()
