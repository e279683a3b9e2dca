"""CoBA-RL (allocators/coba.py): estimates, the Beta schedule, the allocation steps and quirk Q4,
checked against a plain-Python reference of the official ``BetaAllocator.allocate`` written from
docs/methods.md#coba (heapq greedy, sequential weighted leftover)."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from allocators.base import PromptStream, Samples, Step
from allocators.coba import Coba, CobaConfig, transform_failure_rate
from allocators.registry import parse_spec


def make(num_prompts: int = 64, **options) -> Coba:
    a = Coba(CobaConfig(**options))
    a.reset(num_prompts, np.random.default_rng(0))
    return a


# --------------------------------------------------------------------------------------------
# a plain-Python reference of the official allocate()
# --------------------------------------------------------------------------------------------
def reference(rates, budget, alpha, beta, n_low=2, n_up=128, s=0.01, q4_fixed=False):
    m = len(rates)
    if all(r is None for r in rates) or budget < m * n_low:
        return [budget // m + (1 if i < budget % m else 0) for i in range(m)]
    p = [0.5 if r is None else r for r in rates]
    out = [n_low] * m
    left = budget - m * n_low
    if left == 0:
        return out
    hard = [i for i in range(m) if p[i] < 0.05]
    easy = [i for i in range(m) if p[i] > 0.99]
    expl = [i for i in range(m) if 0.05 <= p[i] <= 0.99]
    ratio = (0.8 if len(expl) > m / 2 else 0.6 + (0.8 - 0.6) * (len(expl) / m * 2)) if expl else 0.6
    eb = int(left * ratio)
    if expl and eb > 0:
        ps = [min(max(p[i], s), 1 - s) for i in expl]
        mean = sum(ps) / len(ps)
        var = sum((x - mean) ** 2 for x in ps) / len(ps)
        tau = 3.0 + 9.0 * min(max(var / 0.1667, 0.0), 1.0)
        log_b = math.log(
            math.exp(math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta))
        )

        def value(x, n):
            x2 = min(max(x, 1e-10), 1 - 1e-10)
            pdf = math.exp((alpha - 1) * math.log(x2) + (beta - 1) * math.log(1 - x2) - log_b)
            return (1 - math.exp(-n / tau * x * (1 - x))) * pdf

        n = [n_low] * len(expl)
        heap = [
            (-(value(ps[j], n_low + 1) - value(ps[j], n_low)), j)
            for j in range(len(expl))
            if n_low < n_up
        ]
        heapq.heapify(heap)
        r = eb
        while r > 0 and heap:
            _, j = heapq.heappop(heap)
            n[j] += 1
            r -= 1
            if n[j] < n_up:
                heapq.heappush(heap, (-(value(ps[j], n[j] + 1) - value(ps[j], n[j])), j))
        for j, i in enumerate(expl):
            out[i] = n[j]
        left -= sum(n) - len(expl) * n_low

    def uniform(group, left):
        avail = [i for i in group if out[i] < n_up]
        if not avail or left <= 0:
            return left
        per, rem = divmod(left, len(avail))
        for k, i in enumerate(avail):
            give = min(per + (1 if k < rem else 0), n_up - out[i])
            out[i] += give
            left -= give
        return left

    def weighted(group, left):
        avail = [i for i in group if out[i] < n_up]
        if not avail:
            return left
        w = [(1 - min(max(p[i], 1e-6), 1 - 1e-6)) for i in avail]
        tw = sum(w)
        if q4_fixed:
            shares = [left * x / tw for x in w]
            spare = left
            for i, sh in zip(avail, shares):
                give = min(math.floor(sh), n_up - out[i])
                out[i] += give
                spare -= give
            order = sorted(range(len(avail)), key=lambda k: -(shares[k] - math.floor(shares[k])))
            for k in order:
                if spare <= 0:
                    break
                if out[avail[k]] < n_up:
                    out[avail[k]] += 1
                    spare -= 1
            left = spare
        else:
            for i, x in zip(avail, w):
                give = min(int(left * x / tw), n_up - out[i])
                out[i] += give
                left -= give
        return uniform(avail, left) if left > 0 else left

    for group in (hard, expl, easy):
        if left <= 0:
            break
        if group:
            left = weighted(group, left)
    return out


def rates_with_nan(rates):
    return np.array([np.nan if r is None else r for r in rates])


# --------------------------------------------------------------------------------------------
# Beta schedule
# --------------------------------------------------------------------------------------------
def test_transform_matches_the_spec_examples():
    assert transform_failure_rate(0.413) == pytest.approx(0.295, abs=5e-4)
    assert transform_failure_rate(0.30) == pytest.approx(0.119, abs=5e-4)
    assert transform_failure_rate(0.7) == 0.7  # only once f <= 0.5


class _Pattern:
    """A source whose prompt i answers correctly ``succ[i]`` of its first rollouts."""

    def __init__(self, succ: dict[int, int]):
        self.succ = succ

    def sample(self, prompt_ids, counts):
        rewards = np.concatenate(
            [(np.arange(c) < self.succ[int(i)]).astype(float) for i, c in zip(prompt_ids, counts)]
        )
        n = int(counts.sum())
        return Samples.from_request(prompt_ids, counts, rewards, np.ones(n, np.int64))


def run_step(a: Coba, prompts, succ, budget, t):
    stream = PromptStream(len(prompts), np.random.default_rng(t))
    stream._order = np.asarray(prompts)
    step = Step(t, stream, _Pattern(succ), budget, len(prompts))
    r = a.step(step)
    a.observe(r)
    return r


def test_beta_parameters_follow_the_previous_steps_failure_rate():
    a = make(8)
    assert (a.beta_alpha, a.beta_beta) == (9.0, 2.0)  # S − 2, 2 before any statistics
    # in-step success rates 0, 0.25, 0.5, 0.75 (4 rollouts each): f = 1 − 0.375 = 0.625
    run_step(a, [0, 1, 2, 3], {0: 0, 1: 1, 2: 2, 3: 3}, 16, 0)
    assert a.beta_alpha == pytest.approx(1 + 9 * 0.625) and a.beta_beta == pytest.approx(
        11 - (1 + 9 * 0.625)
    )
    # window 1: only the latest step counts; f = 0.25 → f' = σ(−2.5)
    r = run_step(a, [4, 5, 6, 7], {4: 4, 5: 4, 6: 2, 7: 2}, 16, 1)
    assert r.info["beta_alpha"] == pytest.approx(1 + 9 * 0.625)  # allocation used the old one
    assert a.beta_alpha == pytest.approx(1 + 9 * transform_failure_rate(0.25))


def test_class_preset_and_window():
    a = parse_spec("coba@class").build()
    assert (a.config.n_up, a.config.beta_params_sum, a.config.sliding_window_size) == (32, 7.0, 3)
    a.reset(8, np.random.default_rng(0))
    run_step(a, [0, 1, 2, 3], {0: 0, 1: 0, 2: 0, 3: 0}, 16, 0)  # f = 1
    run_step(a, [4, 5, 6, 7], {4: 4, 5: 4, 6: 4, 7: 4}, 16, 1)  # f = 0
    assert a.beta_alpha == pytest.approx(1 + 5 * 0.5)  # window 3: mean f = 0.5
    # p̂ of prompt 0 over its visits: 0/4 now; after another visit with 4 successes of n,
    # (0 + 4)/(4 + n)
    r = run_step(a, [0, 1, 2, 3], {0: 4, 1: 0, 2: 0, 3: 0}, 16, 2)
    n = r.counts.generated[0]
    assert a.success_rates(np.array([0]))[0] == pytest.approx(4 / (4 + n))


# --------------------------------------------------------------------------------------------
# allocation
# --------------------------------------------------------------------------------------------
def test_unseen_batches_and_small_budgets_split_evenly():
    a = make()
    assert a.budgets(np.full(5, np.nan), 23)[0].tolist() == [5, 5, 5, 4, 4]
    assert a.budgets(np.array([0.5, 0.2, np.nan]), 5)[0].tolist() == [2, 2, 1]  # < M·n_low


def test_categories_and_exploration_share():
    a = make()
    p = np.array([0.049, 0.05, 0.99, 0.991, 0.5, 0.5])
    counts, info = a.budgets(p, 60)
    # explore = {0.05, 0.99, 0.5, 0.5}: 4 > 6/2 → ratio 0.8 of R = 48 → EB = 38
    explore = counts[[1, 2, 4, 5]].sum() - 4 * 2
    assert explore >= 38 and counts.sum() == 60
    assert counts.tolist() == reference([0.049, 0.05, 0.99, 0.991, 0.5, 0.5], 60, 9.0, 2.0)


def test_greedy_ties_go_to_the_smaller_index():
    a = make(n_up=4)
    counts, _ = a.budgets(np.full(4, 0.5), 8 + 3)  # R = 3, EB = 2 (0.8), leftover 1
    assert counts.tolist() == [4, 3, 2, 2]


def test_q4_faithful_gives_earlier_prompts_more():
    p = np.array([0.0, 0.0, 0.0, 0.5])  # three very hard prompts, weights equal
    faithful, _ = make().budgets(p, 8 + 30)
    fixed, _ = make(q4="fixed").budgets(p, 8 + 30)
    # R = 30; explore is 1 of 4 → ratio 0.7, EB = 21 to the explore prompt; leftover 9:
    # faithful: int(9/3) = 3, then int(6/3) = 2, then int(4/3) = 1; top-up 3 → +1 each
    assert faithful.tolist() == [2 + 4, 2 + 3, 2 + 2, 2 + 21]
    assert fixed.tolist() == [2 + 3, 2 + 3, 2 + 3, 2 + 21]
    assert fixed.tolist() == reference([0.0, 0.0, 0.0, 0.5], 38, 9.0, 2.0, q4_fixed=True)


def test_caps_hold_and_what_cannot_be_placed_stays_unspent():
    a = make(n_up=10)
    counts, info = a.budgets(np.array([0.5, 0.01, 0.999]), 100)
    assert counts.tolist() == [10, 10, 10] and info["unspent"] == 70


@settings(max_examples=150, deadline=None)
@given(
    rates=st.lists(
        st.one_of(
            st.none(),
            st.sampled_from([0.0, 1.0, 0.05, 0.99]),
            st.integers(0, 16).map(lambda j: j / 16),
            st.floats(0, 1),
        ),
        min_size=1,
        max_size=40,
    ),
    per_prompt=st.floats(0.5, 40.0),
    n_up=st.sampled_from([2, 3, 8, 32, 128]),
    f=st.floats(0.0, 1.0),
    q4=st.sampled_from(["faithful", "fixed"]),
)
@example(rates=[None] * 6, per_prompt=2.0, n_up=128, f=0.5, q4="faithful")  # all unseen
@example(rates=[0.0, 1.0, 0.5] * 3, per_prompt=2.0, n_up=128, f=0.5, q4="faithful")  # at the min
@example(rates=[0.0, 1.0, 0.5] * 3, per_prompt=1.0, n_up=128, f=0.5, q4="faithful")  # below it
@example(rates=[0.0, 0.01, 1.0, 0.999], per_prompt=20.0, n_up=8, f=0.2, q4="fixed")  # no explore
def test_matches_the_reference_and_respects_bounds(rates, per_prompt, n_up, f, q4):
    a = make(n_up=n_up, q4=q4)
    a.failure_window.append(f)
    a.update_beta()
    budget = int(per_prompt * len(rates))
    counts, info = a.budgets(rates_with_nan(rates), budget)
    assert counts.tolist() == reference(
        rates, budget, a.beta_alpha, a.beta_beta, n_up=n_up, q4_fixed=q4 == "fixed"
    )
    assert counts.sum() <= budget and (counts >= 0).all()
    m = len(rates)
    if budget >= 2 * m and not all(r is None for r in rates):
        assert (counts >= 2).all() and (counts <= n_up).all()
        if counts.sum() < budget:  # only the caps stop the spending
            assert info["unspent"] == budget - counts.sum() > 0


def test_fast_solver_option_reaches_the_same_objective():
    rng = np.random.default_rng(3)
    p = rng.integers(0, 17, 200) / 16
    greedy, _ = make().budgets(p, 200 * 16)
    fast, _ = make(solver="fast").budgets(p, 200 * 16)
    assert greedy.sum() == fast.sum() == 3200
    # same multiset of counts per distinct p̂ (allocations differ only between tied prompts)
    for v in np.unique(p):
        assert sorted(greedy[p == v]) == sorted(fast[p == v])


def test_runs_in_the_simulator(harness):
    h = harness("hard", seed=0, budget=4096, prompts_per_step=256)
    a = h.start(parse_spec("coba").build())
    alphas = set()
    for _ in range(45):
        r = h.step(a)
        assert r.counts.generated.sum() + r.info.get("unspent", 0) == 4096
        assert r.counts.generated.min() >= 2 and r.counts.generated.max() <= 128
        alphas.add(round(r.info["beta_alpha"], 6))
    assert len(alphas) > 10 and r.counts.generated.max() > 16
