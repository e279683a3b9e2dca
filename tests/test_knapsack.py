"""Knapsack RL (allocators/knapsack.py): the official state, base allocation, fallbacks, quirks
Q1/Q2, exact totals, the advantage clip, and the spec's reference numbers (docs/methods.md#knapsack)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from allocators import solvers as S
from allocators.base import Samples, Step
from allocators.knapsack import Knapsack, KnapsackConfig, probability_cost
from allocators.registry import parse_spec


def make(num_prompts: int = 64, **options) -> Knapsack:
    a = Knapsack(KnapsackConfig(**options))
    a.reset(num_prompts, np.random.default_rng(0))
    return a


def visit(a: Knapsack, prompt: int, rewards: list[int], step: int = 0) -> None:
    a.stats.update(
        np.array([prompt]), np.zeros(len(rewards), np.int64), np.asarray(rewards, np.float64), step
    )


# --------------------------------------------------------------------------------------------
# reference numbers (docs/methods.md)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "p, cost", [(0.5, 3.3), (0.2, 10.3), (0.1, 21.9), (0.05, 44.9), (0.01, 229.1)]
)
def test_probability_cost_matches_the_spec_table(p, cost):
    assert probability_cost(p, 0.9) == pytest.approx(cost, abs=0.05)
    # PNZ at that cost is 0.9: the cost is the N with PNZ(N, p) >= alpha
    n = probability_cost(p, 0.9)
    assert 1 - max(p, 1 - p) ** n == pytest.approx(0.9)


@pytest.mark.parametrize(
    "p, pnz", [(0.5, 0.992), (0.2, 0.832), (0.1, 0.570), (0.05, 0.337), (0.01, 0.077)]
)
def test_value_factor_is_the_spec_pnz(p, pnz):
    pr = S.knapsack_problem(np.array([p]), k0_value="natural")
    assert S.values(pr, np.array([8]))[0] / (p * (1 - p) ** 2) == pytest.approx(pnz, abs=5e-4)


# --------------------------------------------------------------------------------------------
# 1. state
# --------------------------------------------------------------------------------------------
def test_state_follows_the_official_estimator():
    a = make()
    valid, p = a.state(np.array([0]))
    assert not valid[0] and p[0] == 0.0  # unseen: [0, 0.0, 0]
    visit(a, 0, [1, 0, 0, 0, 0, 0, 0], step=0)  # 7 rewards: not valid yet
    valid, p = a.state(np.array([0]))
    assert not valid[0] and p[0] == pytest.approx(1 / 7)
    visit(a, 0, [1, 1], step=1)  # 9 rewards: valid
    valid, p = a.state(np.array([0]))
    assert valid[0] and p[0] == pytest.approx(3 / 9)  # the last (at most) 16 rewards
    visit(a, 0, [0] * 10, step=2)  # 19 rewards: window of 16
    assert a.state(np.array([0]))[1][0] == pytest.approx(2 / 16)
    visit(a, 0, [1] * 20 + [0] * 12, step=3)  # a visit of >= 16: that visit only
    assert a.state(np.array([0]))[1][0] == pytest.approx(20 / 32)
    b = make(epoch_estimation=False)  # always the last 16 rewards
    visit(b, 0, [1] * 20 + [0] * 12)
    assert b.state(np.array([0]))[1][0] == 0.25


# --------------------------------------------------------------------------------------------
# 2.-5. allocation
# --------------------------------------------------------------------------------------------
def test_unseen_prompts_get_n():
    a = make()
    counts, info = a.budgets(np.zeros(8, bool), np.zeros(8), 64)
    assert counts.tolist() == [8] * 8 and info["effective_prompts"] == 0


def test_no_effective_prompt_sends_the_residual_to_the_failed_ones():
    a = make()
    valid = np.ones(6, bool)
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    counts, _ = a.budgets(valid, p, 48)  # base 2 each = 12; residual 36 over 3
    assert counts.tolist() == [14, 2, 14, 2, 14, 2]
    counts, _ = a.budgets(valid, p, 49)  # +1 to the first in batch order
    assert counts.tolist() == [15, 2, 14, 2, 14, 2]
    counts, _ = a.budgets(valid, np.ones(6), 48)  # nothing failed: everybody n
    assert counts.tolist() == [8] * 6


def test_fallback_gives_the_excess_to_failed_prompts():
    a = make()
    valid = np.ones(8, bool)
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 1.0, 1.0])
    counts, info = a.budgets(valid, p, 64)
    # residual 64 - 16 = 48; cost floor(3.32) = 3 each: C = 12 < 48 -> 36 to the two p=0 prompts
    assert info["fallback"] == 1.0 and info["fallback_effective_ratio"] == pytest.approx(12 / 48)
    assert counts[4:6].tolist() == [2 + 18, 2 + 18] and counts[6:].tolist() == [2, 2]
    assert counts[:4].sum() == 4 * 2 + 12 and counts.sum() == 64
    off, info = make(allow_fallback=False).budgets(valid, p, 64)
    assert info["fallback"] == 0.0 and off[4:].tolist() == [2, 2, 2, 2]


def test_fallback_counts_unseen_prompts_as_failed():
    """The official success_rates array is 0 for invalid prompts: they are fallback targets."""
    a = make()
    valid = np.array([True] * 4 + [False])
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.0])
    counts, _ = a.budgets(valid, p, 64)  # base 8 + 8; residual 48; C = 12
    assert counts[4] == 8 + 36


def test_fallback_without_failed_prompts_goes_to_the_other_non_effective_ones():
    a = make()
    valid = np.ones(4, bool)
    p = np.array([0.5, 0.5, 1.0, 1.0])
    counts, _ = a.budgets(valid, p, 40)  # residual 32, C = 6 -> 26 over the two p=1
    assert counts[2:].tolist() == [15, 15] and counts.sum() == 40


def test_all_effective_with_fallback_does_not_divide_by_zero():
    a = make()
    counts, info = a.budgets(np.ones(4, bool), np.full(4, 0.5), 40)
    assert counts.sum() == 40 and info["fallback"] == 0.0


def test_q2_uncapped_top_up_exceeds_max_n_and_capped_does_not():
    valid = np.ones(4, bool)
    p = np.array([0.5, 0.25, 0.0, 1.0])
    faithful, _ = make(max_n=6, allow_fallback=False).budgets(valid, p, 40)
    assert faithful.sum() == 40
    assert faithful[:2].tolist() == [18, 18] and faithful[2:].tolist() == [2, 2]  # 2+4+12 each
    clean, _ = make(max_n=6, allow_fallback=False, topup="capped").budgets(valid, p, 40)
    assert clean.sum() == 40 and clean[:2].tolist() == [6, 6] and clean[2] == 2 + 24


def test_q1_changes_the_allocation():
    valid = np.ones(2, bool)
    p = np.array([0.3, 0.02])
    zero, _ = make(allow_fallback=False).budgets(valid, p, 14)
    natural, _ = make(allow_fallback=False, k0_value="natural").budgets(valid, p, 14)
    assert zero.tolist() == [11, 3] and natural.tolist() == [12, 2]


@pytest.mark.parametrize("solver", ["dp", "dp_table", "greedy"])
def test_solvers_reach_the_same_objective(solver):
    rng = np.random.default_rng(5)
    valid = rng.random(96) < 0.9
    p = rng.integers(0, 17, 96) / 16
    fast, _ = make().budgets(valid, p, 768)
    other, _ = make(solver=solver).budgets(valid, p, 768)
    assert other.sum() == fast.sum() == 768
    eff = valid & (p > 0) & (p < 1)
    pr = S.knapsack_problem(p[eff])
    assert S.objective(pr, fast[eff] - 2) == pytest.approx(
        S.objective(pr, other[eff] - 2), rel=1e-12
    )
    assert np.array_equal(fast[~eff], other[~eff])


def test_budget_below_the_base():
    a = make()
    valid = np.array([True, True, False, False])
    p = np.array([0.5, 0.0, 0.0, 0.0])
    counts, _ = a.budgets(valid, p, 12)  # base 2+2+8+8 = 20 > 12: unseen share 8
    assert counts.tolist() == [2, 2, 4, 4]
    counts, _ = a.budgets(valid, p, 7)  # not even min_n each: an even split
    assert counts.tolist() == [2, 2, 2, 1]


states = st.lists(
    st.tuples(
        st.booleans(),
        st.one_of(
            st.sampled_from([0.0, 1.0]),
            st.integers(0, 16).map(lambda j: j / 16),
            st.floats(0.0, 1.0),
        ),
    ),
    min_size=1,
    max_size=48,
)


@settings(max_examples=200, deadline=None)
@given(
    states=states,
    per_prompt=st.floats(0.5, 40.0),
    topup=st.sampled_from(["uncapped", "capped"]),
    k0=st.sampled_from(["zero", "natural"]),
    fallback=st.booleans(),
    cost=st.sampled_from(["probability", "expectation"]),
)
@example(
    states=[(False, 0.0)] * 8,
    per_prompt=2.0,
    topup="uncapped",
    k0="zero",
    fallback=True,
    cost="probability",
)  # all unseen, at the minimum
@example(
    states=[(False, 0.0)] * 8,
    per_prompt=1.0,
    topup="uncapped",
    k0="zero",
    fallback=True,
    cost="probability",
)  # all unseen, below it
@example(
    states=[(True, 0.0), (True, 1.0)] * 4,
    per_prompt=2.0,
    topup="capped",
    k0="zero",
    fallback=True,
    cost="probability",
)  # no effective prompt
@example(
    states=[(True, 0.5)] * 8,
    per_prompt=200.0,
    topup="capped",
    k0="natural",
    fallback=False,
    cost="probability",
)  # every prompt effective, past caps
def test_totals_are_exact_and_nothing_is_negative(states, per_prompt, topup, k0, fallback, cost):
    valid = np.array([v for v, _ in states])
    p = np.array([q for _, q in states])
    m = p.size
    budget = int(per_prompt * m)
    a = make(topup=topup, k0_value=k0, allow_fallback=fallback, cost_estimation=cost)
    counts, _ = a.budgets(valid, p, budget)
    assert counts.dtype == np.int64 and counts.shape == (m,)
    assert counts.sum() == budget and (counts >= 0).all()
    eff = valid & (p > 0) & (p < 1)
    base = np.where(~valid, 8, 2)
    if budget >= base.sum():  # no prompt below its base
        assert (counts >= base).all()
        # capped: no effective prompt past max_n (except a p̂ < 1e-38 that float32, like the
        # official arrays, rounds to 0: the official fallback then targets it too)
        p32 = p.astype(np.float32)
        if topup == "capped" and not eff.all():
            assert (counts[eff & (p32 > 0)] <= 128).all()
    if budget >= 2 * m:
        assert (counts >= 1).all()


# --------------------------------------------------------------------------------------------
# 6. advantages, and the loop
# --------------------------------------------------------------------------------------------
class _NoSource:
    def sample(self, prompt_ids, counts):
        raise AssertionError


def test_advantages_are_clipped_at_five():
    a = make()
    step = Step(0, None, _NoSource(), 93, 1)
    step.add_prompts(np.array([0]))
    rewards = np.zeros(93)
    rewards[0] = 1.0
    samples = Samples(
        np.zeros(93, np.int64), np.zeros(93, np.int64), rewards, np.ones(93, np.int64)
    )
    adv = a.build(step, samples).advantages
    assert adv.max() == 5.0  # (1 − 1/93)/std ≈ 9.5 before the clip
    assert adv.min() == pytest.approx(-(1 / 93) / (math.sqrt(1 / 93) + 1e-6))
    unclipped = make(adv_clip=0).build(step, samples).advantages
    assert unclipped.max() == pytest.approx((92 / 93) * math.sqrt(93), rel=1e-5)  # ≈ 9.54


def test_runs_in_the_simulator_with_exact_budgets(harness):
    h = harness("hard", seed=0, budget=2048, prompts_per_step=256)
    a = h.start(parse_spec("knapsack").build())
    spent, varied, fallbacks = [], False, 0
    for _ in range(45):  # > 2 epochs of the 5,000-prompt scenario
        r = h.step(a)
        spent.append(r.counts.generated.sum())
        varied |= r.counts.generated.max() > 8
        fallbacks += r.info["fallback"] > 0
    assert all(s == 2048 for s in spent)
    assert varied and fallbacks > 0
    assert r.info["effective_prompts"] > 0


def test_label_names_the_quirk_options():
    spec = parse_spec("knapsack:k0_value=natural:topup=capped:solver=dp")
    assert spec.label == "knapsack:k0_value=natural:solver=dp:topup=capped"
