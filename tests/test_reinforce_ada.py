"""Reinforce-Ada-Seq and -Est (docs/methods.md#ada-seq-balance; quirks Q5–Q7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from allocators.advantages import group_normalized
from allocators.base import PromptStream, Samples, Step
from allocators.registry import parse_spec
from allocators.reinforce_ada_est import est_allocate
from allocators.reinforce_ada_seq import ReinforceAdaSeq, ReinforceAdaSeqPos


# --------------------------------------------------------------------------------------------
# Sources for driving one step by hand
# --------------------------------------------------------------------------------------------
class BernoulliSource:
    """Every prompt succeeds with the same probability p."""

    def __init__(self, p: float, seed: int):
        self.p = p
        self.rng = np.random.default_rng(seed)

    def sample(self, prompt_ids, counts):
        pid = np.repeat(prompt_ids, counts)
        rew = (self.rng.random(pid.size) < self.p).astype(np.float64)
        return Samples.from_request(
            prompt_ids,
            counts,
            rew,
            np.ones(pid.size, np.int64),
            answers=(rew == 0).astype(np.int64),
        )


class ScriptedSource:
    """Prompt i's k-th response (over the whole step) has reward script[i][k]."""

    def __init__(self, script: dict[int, list[int]]):
        self.script = script
        self.pos = {i: 0 for i in script}

    def sample(self, prompt_ids, counts):
        rew = []
        for i, c in zip(prompt_ids.tolist(), counts.tolist()):
            rew.extend(self.script[i][self.pos[i] : self.pos[i] + c])
            self.pos[i] += c
        rew = np.array(rew, float)
        return Samples.from_request(
            prompt_ids,
            counts,
            rew,
            np.ones(rew.size, np.int64),
            answers=(rew == 0).astype(np.int64),
        )


def one_step(allocator, source, num_prompts, budget=None, seed=0):
    rng = np.random.default_rng(seed)
    allocator.reset(num_prompts, rng)
    stream = PromptStream(num_prompts, np.random.default_rng(seed + 1))
    step = Step(0, stream, source, budget or 8 * num_prompts, num_prompts)
    return allocator.step(step)


# --------------------------------------------------------------------------------------------
# docs/methods.md: expected samples and P(unresolved) of Reinforce-Ada-Seq as coded
# --------------------------------------------------------------------------------------------
# p: (pos E[N], pos P(unres), balanced E[N], balanced P(unres)), docs/methods.md
TABLE = {
    0.01: (28.5, 0.725, 31.7, 0.959),
    0.05: (19.2, 0.194, 27.3, 0.520),
    0.1: (13.6, 0.034, 21.0, 0.156),
    0.2: (9.6, 0.001, 13.4, 0.007),
    0.5: (8.0, 0.0, 8.6, 0.0),
    0.9: (8.0, 0.0, 21.0, 0.156),
    0.99: (8.0, 0.0, 31.7, 0.959),
}


def exact_seq(p: float, balanced: bool, per_round=8, rounds=4, n=4) -> tuple[float, float]:
    """Exact E[N] and P(unresolved). The exit rule depends only on the cumulative counts after
    each whole round, and once met stays met, so P(still active after r rounds) is the
    probability that the rule fails on Binomial(8r, p); E[N] = 8 Σ_{r<4} P(active after r)."""
    half = n // 2

    def active_after(k):
        if k == 0:
            return 1.0
        if not balanced:
            return (1 - p) ** k
        # fewer than n/2 positives, or fewer than n − n/2 negatives (disjoint for k ≥ n)
        return binom.cdf(half - 1, k, p) + binom.sf(k - (n - half), k, p)

    e = per_round * sum(active_after(per_round * r) for r in range(rounds))
    return float(e), float(active_after(per_round * rounds))


@pytest.mark.parametrize("p", sorted(TABLE))
def test_exact_matches_spec_table(p):
    e_pos, u_pos, e_bal, u_bal = TABLE[p]
    got_e_pos, got_u_pos = exact_seq(p, False)
    got_e_bal, got_u_bal = exact_seq(p, True)
    # the table prints E[N] to one decimal and P(unresolved) to three
    assert abs(got_e_pos - e_pos) <= 0.05 + 1e-9 and abs(got_e_bal - e_bal) <= 0.05 + 1e-9
    assert abs(got_u_pos - u_pos) <= 0.0005 + 1e-9 and abs(got_u_bal - u_bal) <= 0.0005 + 1e-9
    # GRPO n = 4 column: PNZ(4, p) = 1 − p^4 − (1 − p)^4
    assert 1 - p**4 - (1 - p) ** 4 == pytest.approx(
        {0.01: 0.039, 0.05: 0.185, 0.1: 0.344, 0.2: 0.589, 0.5: 0.875, 0.9: 0.344, 0.99: 0.039}[p],
        abs=6e-4,
    )


@pytest.mark.parametrize("choice", ["positive_focused", "balanced"])
@pytest.mark.parametrize("p", sorted(TABLE))
def test_monte_carlo_of_the_allocator_matches_table(p, choice):
    """The real allocator, run on 150,000 prompts of fixed true p, reproduces the exact values
    within 4 standard errors, and the table to two decimals."""
    cls = ReinforceAdaSeq if choice == "balanced" else ReinforceAdaSeqPos
    m, steps = 50_000, 3
    gen, unresolved = [], 0
    for k in range(steps):
        r = one_step(cls(), BernoulliSource(p, seed=100 + k), m, seed=k)
        gen.append(r.counts.generated)
        unresolved += r.info["unresolved"]
        assert set(np.unique(r.counts.generated)) <= {8, 16, 24, 32}
        assert (r.counts.trained == 4).all()
    gen = np.concatenate(gen)
    e_mc, u_mc = gen.mean(), unresolved / (m * steps)
    e_ex, u_ex = exact_seq(p, choice == "balanced")
    se_e = gen.std() / math.sqrt(gen.size) + 1e-12
    se_u = math.sqrt(max(u_ex * (1 - u_ex), 1e-12) / gen.size)
    assert abs(e_mc - e_ex) <= 4 * se_e + 1e-6
    assert abs(u_mc - u_ex) <= 4 * se_u + 1e-9
    row = TABLE[p]
    e_tab, u_tab = (row[2], row[3]) if choice == "balanced" else (row[0], row[1])
    assert abs(e_mc - e_tab) <= 0.05 + 4 * se_e
    assert abs(u_mc - u_tab) < 0.005


# --------------------------------------------------------------------------------------------
# Seq: exit rules, down-sampling (Q5), fallback, advantage (Q6)
# --------------------------------------------------------------------------------------------
def kept(result, prompt):
    s = result.samples
    g = int(np.flatnonzero(result.prompt_ids == prompt)[0])
    idx = result.train.index
    mine = idx[s.group[idx] == g]
    all_mine = np.flatnonzero(s.group == g)
    return mine, all_mine, result.train.advantages[s.group[idx] == g]


def test_balanced_exit_keeps_the_first_two_of_each_in_generation_order():
    # prompt 0: round 1 has 1 positive; round 2 brings the second -> exits after round 2
    script = {
        0: [0, 1, 0, 0, 0, 0, 0, 0] + [0, 0, 1, 1, 0, 0, 0, 0] + [1] * 16,
        1: [1, 0, 1, 0, 1, 0, 1, 0] + [0] * 24,
    }
    r = one_step(ReinforceAdaSeq(), ScriptedSource(script), 2)
    assert r.counts.generated.tolist() == [16 if p == 0 else 8 for p in r.prompt_ids]
    mine, all_mine, adv = kept(r, 0)
    rewards = r.samples.rewards[all_mine]
    first_pos = all_mine[np.flatnonzero(rewards == 1)[:2]]
    first_neg = all_mine[np.flatnonzero(rewards == 0)[:2]]
    assert sorted(mine.tolist()) == sorted(first_pos.tolist() + first_neg.tolist())
    # pool mean over both rounds: 3 positives of 16
    np.testing.assert_allclose(np.sort(adv), np.sort([1 - 3 / 16] * 2 + [-3 / 16] * 2))
    assert r.info == {"rounds": 2, "unresolved": 0}


def test_random_downsampling_keeps_a_random_subset_of_each_set():
    script = {0: [1, 1, 1, 1, 0, 0, 0, 0] + [0] * 24}
    chosen = set()
    for seed in range(12):
        alloc = parse_spec("ada-seq-balance:downsample=random").build()
        r = one_step(alloc, ScriptedSource({0: list(script[0])}), 1, seed=seed)
        mine, all_mine, adv = kept(r, 0)
        assert (r.samples.rewards[mine] == 1).sum() == 2 and mine.size == 4
        chosen.add(tuple(mine.tolist()))
    assert len(chosen) > 1  # not always the first ones


def test_positive_focused_exits_at_the_first_positive():
    script = {0: [0, 0, 0, 1, 0, 0, 0, 0] + [1] * 24}
    r = one_step(ReinforceAdaSeqPos(), ScriptedSource(script), 1)
    mine, all_mine, adv = kept(r, 0)
    assert r.counts.generated.tolist() == [8]
    # 1 positive + the first 3 negatives
    assert mine.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(np.sort(adv), np.sort([-1 / 8] * 3 + [7 / 8]))


def test_unresolved_prompts_fall_back_and_get_zero_advantage_when_uniform():
    script = {0: [0] * 32, 1: [1] * 32, 2: [0] * 31 + [1]}
    for cls in (ReinforceAdaSeq, ReinforceAdaSeqPos):
        r = one_step(cls(), ScriptedSource({k: list(v) for k, v in script.items()}), 3)
        pos_focused = cls is ReinforceAdaSeqPos
        for prompt in (0, 1, 2):
            mine, all_mine, adv = kept(r, prompt)
            assert mine.size == 4
            if prompt in (0, 1):
                assert np.all(adv == 0.0)
            if prompt == 0:
                assert all_mine.size == 32
        if pos_focused:
            assert r.info["unresolved"] == 1  # prompt 0 only; prompt 2 exits in round 4
        else:
            # balanced: all three unresolved; prompt 2 keeps its one positive + 3 negatives
            assert r.info["unresolved"] == 3
            mine, all_mine, adv = kept(r, 2)
            assert r.samples.rewards[mine].sum() == 1
            np.testing.assert_allclose(np.sort(adv), np.sort([-1 / 32] * 3 + [31 / 32]))


def test_paper_weight_is_one_over_pool_mean():
    script = {0: [1, 0, 0, 0, 1, 0, 0, 0] + [0] * 24}
    alloc = parse_spec("ada-seq-balance:paper_weighted=true").build()
    r = one_step(alloc, ScriptedSource(script), 1)
    np.testing.assert_allclose(r.train.weights, 4.0)  # p̂ = 2/8
    base = one_step(ReinforceAdaSeq(), ScriptedSource({0: list(script[0])}), 1)
    np.testing.assert_allclose(base.train.weights, 1.0)
    np.testing.assert_allclose(r.train.advantages, base.train.advantages)


def test_std_and_local_options():
    script = {0: [1, 0, 0, 0, 1, 0, 0, 0] + [0] * 24}
    r = one_step(
        parse_spec("ada-seq-balance:norm_adv_by_std=true").build(),
        ScriptedSource({0: list(script[0])}),
        1,
    )
    pool = np.array([1, 0, 0, 0, 1, 0, 0, 0], float)
    std = pool.std(ddof=1)
    rw = r.samples.rewards[r.train.index]
    np.testing.assert_allclose(r.train.advantages, (rw - 0.25) / (std + 1e-6))
    r = one_step(
        parse_spec("ada-seq-balance:global_stat_est=false").build(),
        ScriptedSource({0: list(script[0])}),
        1,
    )
    rw = r.samples.rewards[r.train.index]
    np.testing.assert_allclose(r.train.advantages, rw - 0.5)  # the kept 2 + 2


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 40),
    st.floats(0.0, 1.0),
    st.sampled_from(["ada-seq-balance", "ada-seq-pos"]),
    st.sampled_from(["first", "random"]),
    st.integers(0, 10_000),
)
def test_seq_bounds_on_random_batches(m, p, name, downsample, seed):
    r = one_step(
        parse_spec(f"{name}:downsample={downsample}").build(),
        BernoulliSource(p, seed),
        m,
        seed=seed,
    )
    c = r.counts
    assert set(np.unique(c.generated)) <= {8, 16, 24, 32}
    assert (c.trained == 4).all()
    # a resolved balanced group always trains 2 + 2; every pos-focused exit has >= 1 positive
    active_left = r.info["unresolved"]
    assert 0 <= active_left <= m
    if name == "ada-seq-balance":
        resolved = (c.successes >= 2) & (c.generated - c.successes >= 2)
        assert (c.trained_successes[resolved] == 2).all()
    else:
        resolved = c.successes >= 1
        # up to 2 positives, the rest negatives, topped up with positives if negatives are short
        want = np.minimum(c.successes, 2)
        want = want + np.maximum(0, 4 - want - (c.generated - c.successes))
        assert (c.trained_successes[resolved] == np.minimum(want, c.successes)[resolved]).all()
    assert int((~resolved).sum()) == active_left
    assert np.isfinite(r.train.advantages).all()


# --------------------------------------------------------------------------------------------
# Est: allocation (docs/methods.md#ada-est) and advantage
# --------------------------------------------------------------------------------------------
def reference_est(w, total, base, cap):
    """The allocation of ``ray_trainer_ema.py`` restated in plain Python."""
    m = len(w)
    out = [base] * m
    remaining = max(0, total - base * m)
    wsum = sum(w)
    if remaining > 0 and wsum > 0:
        share = [remaining * x / wsum for x in w]
        floors = [math.floor(x) for x in share]
        out = [base + f for f in floors]
        left = remaining - sum(floors)
        frac = sorted(range(m), key=lambda i: share[i] - floors[i], reverse=True)
        for i in range(left):
            out[frac[i % m]] += 1
    if sum(out) > total:  # defensive trim: lowest weights first, down to 1
        excess = sum(out) - total
        order = sorted(range(m), key=lambda i: w[i])
        t = 0
        while excess > 0 and t < m:
            if out[order[t]] > 1:
                out[order[t]] -= 1
                excess -= 1
            else:
                t += 1
    overflow = 0
    for i in range(m):
        if out[i] > cap:
            overflow += out[i] - cap
            out[i] = cap
    cand = [i for i in range(m) if out[i] < cap]
    while overflow > 0 and cand:
        cs = sum(w[i] for i in cand)
        cw = {i: (w[i] if cs > 0 else 1.0) for i in cand}
        cs = cs if cs > 0 else float(len(cand))
        extra = {i: overflow * cw[i] / cs for i in cand}
        fl = {i: math.floor(v) for i, v in extra.items()}
        allocated = 0
        for i in cand:
            add = min(fl[i], cap - out[i])
            out[i] += add
            allocated += add
        overflow -= allocated
        if overflow > 0:
            for i in sorted(cand, key=lambda i: extra[i] - fl[i], reverse=True):
                if overflow <= 0:
                    break
                if out[i] < cap:
                    out[i] += 1
                    overflow -= 1
        cand = [i for i in range(m) if out[i] < cap]
        if allocated == 0 and (not cand or cs == 0):
            break
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.01, 1.0), min_size=1, max_size=64),
    st.integers(1, 40),
    st.integers(1, 4),
    st.integers(4, 40),
)
def test_est_allocation_matches_reference_and_holds_bounds(p_hat, mean, base, cap):
    w = 1.0 / np.sqrt(np.array(p_hat))
    m = w.size
    total = mean * m
    got = est_allocate(w, total, base, cap)
    assert got.tolist() == reference_est(w.tolist(), total, base, cap)
    assert (got >= 1).all() and (got <= max(cap, base)).all()
    assert got.sum() <= max(total, m)
    if base <= cap and base * m <= total:
        assert got.sum() == min(total, cap * m)  # exact, unless the cap binds everywhere
    if base * m <= total and got.max() < cap:
        # larger weight, never fewer rollouts (up to the one of the largest remainder). Not
        # claimed below the base budget (base * m > total) nor when the cap binds: there the
        # official trim and its second rounding pass (our reference) do not keep this order
        order = np.argsort(w)
        assert (np.diff(got[order]) >= -1).all()


def test_est_on_the_simulator_spends_the_budget_and_follows_the_prior():
    from simulator.run import SimConfig, run_simulation

    out = run_simulation(
        SimConfig(
            scenario="hard",
            method="ada-est",
            steps=30,
            budget=2048,
            prompts_per_step=256,
            eval_every=10,
        )
    )
    assert (out.steps.rollouts == 2048).all() and (out.steps.train_samples == 2048).all()
    alloc = parse_spec("ada-est").build()
    alloc.reset(10, np.random.default_rng(0))
    ids = np.arange(10)
    # unseen prompts: prior mean 1/17 for all -> equal weights 1/sqrt(1/17)
    np.testing.assert_allclose(alloc.weights(ids), math.sqrt(17.0))
    # after 8 failures: p̂ = 1/(8 + 17); after 8 successes: 9/25
    alloc.stats.update(np.array([0, 1]), np.repeat([0, 1], 8), np.repeat([0.0, 1.0], 8), 0)
    np.testing.assert_allclose(alloc.weights(ids[:2]), [5.0, 5.0 / 3.0])


def test_est_advantage_options():
    script = {0: [1, 0, 0, 0, 0, 0, 0, 0], 1: [1, 1, 0, 0, 0, 0, 0, 0]}
    # default: the release's (r − mean)/(√mean + 1e-6) (core_algos.py at a24d553c)
    r = one_step(parse_spec("ada-est").build(), ScriptedSource(dict(script)), 2, budget=16)
    s = r.samples
    want = {0: (np.array(script[0]) - 1 / 8) / (math.sqrt(1 / 8) + 1e-6)}
    want[1] = (np.array(script[1]) - 2 / 8) / (math.sqrt(2 / 8) + 1e-6)
    for g in (0, 1):
        pid = r.prompt_ids[g]
        np.testing.assert_allclose(r.train.advantages[s.group == g], want[pid])
    r = one_step(
        parse_spec("ada-est:advantage=grpo").build(),
        ScriptedSource({k: list(v) for k, v in script.items()}),
        2,
        budget=16,
    )
    s = r.samples
    np.testing.assert_allclose(r.train.advantages, group_normalized(s.group, s.rewards, 2))
    r = one_step(
        parse_spec("ada-est:advantage=weighted").build(),
        ScriptedSource({k: list(v) for k, v in script.items()}),
        2,
        budget=16,
    )
    s = r.samples
    w = math.sqrt(17.0)
    np.testing.assert_allclose(
        r.train.advantages, w * group_normalized(s.group, s.rewards, 2, scale_by_std=False)
    )


def test_est_docstring_total_is_an_option():
    a = parse_spec("ada-est:total_factor=2").build()
    assert a.capabilities().spend == "own" and type(a).caps.spend == "budget"
    r = one_step(a, BernoulliSource(0.3, 0), 16, budget=128)
    assert r.counts.generated.sum() == 256
