"""Peer methods (docs/methods.md#dapo): DAPO dynamic sampling, GRESO, variance-optimal (GVM),
C-GRPO."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocators.advantages import group_normalized
from allocators.base import PromptStream, Samples, Step
from allocators.cgrpo import aps_scores, conformal_quantile, singleton
from allocators.greso import skip_mask, streaks
from allocators.registry import parse_spec
from allocators.stats import PromptStats
from allocators.variance_optimal import bounded_proportional


class RateSource:
    """Prompt i succeeds with probability rates[i]; a wrong answer is one of ``wrong`` distractors
    (uniform), a right one is answer 0."""

    def __init__(self, rates, seed=0, wrong=3):
        self.rates = np.asarray(rates, float)
        self.rng = np.random.default_rng(seed)
        self.wrong = wrong

    def sample(self, prompt_ids, counts):
        pid = np.repeat(prompt_ids, counts)
        ok = self.rng.random(pid.size) < self.rates[pid]
        ans = np.where(ok, 0, self.rng.integers(1, self.wrong + 1, pid.size))
        return Samples.from_request(
            prompt_ids, counts, ok.astype(float), np.ones(pid.size, np.int64), answers=ans
        )


class Driver:
    """Steps an allocator on a ``RateSource`` (no learning: the rates stay fixed)."""

    def __init__(self, allocator, rates, prompts_per_step, budget, seed=0):
        self.alloc = allocator
        self.source = RateSource(rates, seed)
        n = len(rates)
        self.rng = np.random.default_rng(seed + 7)
        self.stream = PromptStream(n, np.random.default_rng(seed + 8))
        self.alloc.reset(n, self.rng)
        self.m, self.budget, self.t = prompts_per_step, budget, 0

    def step(self):
        st_ = Step(self.t, self.stream, self.source, self.budget, self.m)
        r = self.alloc.step(st_)
        self.alloc.observe(r)
        self.t += 1
        return r


def trained_groups(r):
    return np.unique(r.samples.group[r.train.index])


def assert_trained_groups_mixed(r):
    c = r.counts
    g = trained_groups(r)
    assert ((c.trained_successes[g] > 0) & (c.trained_successes[g] < c.trained[g])).all()


# --------------------------------------------------------------------------------------------
# DAPO
# --------------------------------------------------------------------------------------------
def test_dapo_keeps_the_first_mixed_groups_and_counts_every_rollout():
    rates = np.array([0.0] * 50 + [0.5] * 50)  # half the pool can never be mixed
    d = Driver(parse_spec("dapo").build(), rates, prompts_per_step=16, budget=128)
    for _ in range(5):
        r = d.step()
        c = r.counts
        assert r.samples.rewards.size == c.generated.sum()
        assert (c.generated == 8).all()  # n = budget / prompts
        assert r.samples.rewards.size == r.info["gen_batches"] * 48 * 8  # 3x over-sampling
        g = trained_groups(r)
        assert g.size == 16 and (c.trained[g] == 8).all()
        assert_trained_groups_mixed(r)
        # the trained groups are the first 16 mixed ones in generation order
        mixed = np.flatnonzero((c.successes > 0) & (c.successes < c.generated))
        assert g.tolist() == mixed[:16].tolist()
        s = r.samples
        idx = r.train.index
        np.testing.assert_allclose(
            r.train.advantages, group_normalized(s.group[idx], s.rewards[idx], c.generated.size)
        )


def test_dapo_stops_at_the_refill_limit():
    d = Driver(
        parse_spec("dapo:max_gen_batches=2:gen_batch_factor=1").build(),
        np.zeros(200),
        prompts_per_step=16,
        budget=64,
    )
    r = d.step()
    assert r.info == {"gen_batches": 2, "kept_groups": 0, "short": 16}
    assert r.train.index.size == 0 and r.samples.rewards.size == 2 * 16 * 4


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 24), st.integers(2, 8), st.floats(0.0, 1.0), st.integers(0, 1000))
def test_dapo_bounds_on_random_batches(m, n, spread, seed):
    rng = np.random.default_rng(seed)
    rates = np.clip(rng.random(300) * spread, 0, 1)
    d = Driver(parse_spec("dapo").build(), rates, prompts_per_step=m, budget=m * n, seed=seed)
    r = d.step()
    c = r.counts
    assert (c.generated == n).all() and np.unique(r.prompt_ids).size == r.prompt_ids.size
    g = trained_groups(r)
    assert g.size <= m and (c.trained[g] == n).all()
    assert r.train.index.size == c.trained.sum()
    assert_trained_groups_mixed(r)
    assert r.info["gen_batches"] <= 10


# --------------------------------------------------------------------------------------------
# GRESO
# --------------------------------------------------------------------------------------------
def reference_streaks(visits):
    """visits: list of (n, s) oldest first."""
    easy = 0
    for n, s in reversed(visits):
        if s == n:
            easy += 1
        else:
            break
    hard = 0
    for _n, s in reversed(visits):
        if s == 0:
            hard += 1
        else:
            break
    return easy, hard


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 4), st.integers(0, 4)), max_size=12),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 8),
)
def test_greso_streaks_match_the_visit_history(histories, window):
    stats = PromptStats(len(histories), reward_buffer=0, visit_window=window)
    step = 0
    for i, visits in enumerate(histories):
        for n, s in visits:
            s = min(s, n)
            rewards = np.array([1.0] * s + [0.0] * (n - s))
            stats.update(np.array([i]), np.zeros(n, np.int64), rewards, step)
            step += 1
    ids = np.arange(len(histories))
    easy, hard = streaks(ids, stats.win_n, stats.win_s, stats.win_pos, stats.win_fill)
    for i, visits in enumerate(histories):
        ref = reference_streaks([(n, min(s, n)) for n, s in visits][-window:])
        assert (easy[i], hard[i]) == ref


def test_greso_skip_probability_and_exploration_floor():
    rng = np.random.default_rng(0)
    k = 200_000
    for streak, p, expect in [
        (0, 0.5, 0.0),
        (1, 0.5, 0.5),
        (3, 0.5, 0.875),
        (20, 0.5, 0.99),
        (2, 0.9, 0.19),
    ]:
        e = np.full(k, streak)
        z = np.zeros(k, np.int64)
        easy_rate = skip_mask(e, z, rng.random(k), rng.random(k), p, 0.5, 0.01).mean()
        hard_rate = skip_mask(z, e, rng.random(k), rng.random(k), 0.5, p, 0.01).mean()
        assert easy_rate == pytest.approx(expect, abs=0.005)
        assert hard_rate == pytest.approx(expect, abs=0.005)


def test_greso_skips_zero_variance_prompts_and_adapts_exploration():
    rates = np.array([1.0] * 60 + [0.5] * 60)  # half always all-correct
    d = Driver(parse_spec("greso").build(), rates, prompts_per_step=8, budget=64)
    skipped, easy_sampled, sampled = 0, 0, 0
    for t in range(120):
        r = d.step()
        assert_trained_groups_mixed(r)
        assert trained_groups(r).size <= 8
        assert np.unique(r.prompt_ids).size == r.prompt_ids.size
        skipped += r.info["skipped"]
        if t >= 100:
            # late steps: the easy prompts (half the pool) are mostly skipped before rollout
            easy_sampled += int((r.prompt_ids < 60).sum())
            sampled += r.prompt_ids.size
    assert skipped > 0
    assert d.alloc.p_easy < 0.5  # too many easy prompts sampled -> explore less
    assert d.alloc.p_hard > 0.5  # no all-wrong prompt at all -> explore more
    assert easy_sampled < 0.2 * sampled


# --------------------------------------------------------------------------------------------
# Variance-optimal (GVM)
# --------------------------------------------------------------------------------------------
def continuous(w, total, lo, hi):
    a, b = 0.0, hi / w.min()
    for _ in range(200):
        mid = (a + b) / 2
        if np.clip(mid * w, lo, hi).sum() < total:
            a = mid
        else:
            b = mid
    return np.clip(b * w, lo, hi)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.02, 0.98), min_size=1, max_size=80),
    st.integers(1, 40),
    st.integers(1, 4),
    st.integers(4, 64),
)
def test_gvm_rounding_holds_budget_and_bounds(p, per_prompt, lo, hi):
    p = np.array(p)
    w = np.sqrt((1 - p) / p)
    m = p.size
    total = per_prompt * m
    n = bounded_proportional(w, total, lo, hi)
    assert n.sum() == min(max(total, m * lo), m * hi)
    assert (n >= lo).all() and (n <= hi).all()
    if m * lo <= total <= m * hi:
        x = continuous(w, total, lo, hi)
        assert np.abs(n - x).max() < 1.0 + 1e-6
    order = np.argsort(w, kind="stable")
    assert (np.diff(n[order]) >= -1).all()


def test_gvm_reinforce_ada_weights_and_simulated_budget():
    a = parse_spec("gvm@reinforce-ada").build()
    a.reset(4, np.random.default_rng(0))
    ids = np.arange(4)
    np.testing.assert_allclose(a.weights(ids), 1.0)  # unseen: p̂ = 0.5
    # prompt 0: 8 failures (p̂ = 1/10); prompt 1: 8 successes (9/10); prompt 2: 0/100 (clamped)
    a.stats.update(
        np.array([0, 1, 2]),
        np.repeat([0, 1, 2], [8, 8, 100]),
        np.concatenate([np.zeros(8), np.ones(8), np.zeros(100)]),
        0,
    )
    np.testing.assert_allclose(a.p_hat(ids), [0.1, 0.9, 0.02, 0.5])
    np.testing.assert_allclose(a.weights(ids), np.sqrt([9.0, 1 / 9, 49.0, 1.0]))
    raft = parse_spec("gvm@raft").build()
    raft.reset(4, np.random.default_rng(0))
    raft.stats.load_state_dict(a.stats.state_dict())
    np.testing.assert_allclose(raft.weights(ids), 1 / np.sqrt([0.1, 0.9, 0.02, 0.5]))
    rates = np.concatenate([np.full(40, 0.05), np.full(40, 0.95)])
    d = Driver(parse_spec("gvm@reinforce-ada").build(), rates, prompts_per_step=16, budget=128)
    hard_share = []
    for _ in range(30):
        r = d.step()
        c = r.counts
        assert c.generated.sum() == 128 and (c.generated >= 2).all() and (c.generated <= 32).all()
        hard_share.append(c.generated[r.prompt_ids < 40].sum() / c.generated.sum())
    assert np.mean(hard_share[-10:]) > 0.7  # the log objective spends on the hard half


# --------------------------------------------------------------------------------------------
# C-GRPO
# --------------------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=50), st.floats(0.01, 0.99))
def test_conformal_quantile_definition(scores, delta):
    q = conformal_quantile(np.array(scores), delta)
    if not scores:
        assert q == 1.0
        return
    s = sorted(scores)
    idx = min(max(math.ceil((len(s) + 1) * (1 - delta)), 1), len(s))
    assert q == s[idx - 1]


def test_aps_score_cases():
    grid = np.array([4])
    one = np.ones((1, 1))
    half = np.full((1, 1), 0.5)
    # correct answer absent -> 1
    assert aps_scores(np.array([[1, 1, 2, 3]]), grid, half, half, 4)[0, 0] == 1.0
    # correct answer the unique mode with mass 3/4 -> U * 3/4
    assert aps_scores(np.array([[0, 0, 0, 1]]), grid, half, half, 4)[0, 0] == pytest.approx(0.375)
    # correct second (2/5) behind a mode of mass 3/5 -> 3/5 + U * 2/5
    assert aps_scores(np.array([[2, 2, 2, 0, 0]]), np.array([5]), one * 0.5, half, 4)[
        0, 0
    ] == pytest.approx(0.8)
    # tie between the correct answer and one other (each 1/2): ahead with probability 1/2
    u_tie = np.random.default_rng(0).random((4000, 1))
    rows = np.tile([0, 1, 0, 1], (4000, 1))
    s = aps_scores(rows, grid, np.zeros((4000, 1)), u_tie, 2)[:, 0]
    assert set(np.round(s, 9)) == {0.0, 0.5} and s.mean() == pytest.approx(0.25, abs=0.02)
    # scores at several budgets use the first k answers
    s = aps_scores(
        np.array([[1, 1, 0, 0, 0, 0, 0, 0]]),
        np.array([2, 8]),
        np.zeros((1, 2)),
        np.zeros((1, 2)),
        2,
    )
    assert s[0, 0] == 1.0 and s[0, 1] == pytest.approx(0.0)


def test_singleton_rule():
    counts = np.array([[4, 0, 0], [3, 1, 0], [1, 1, 2]])
    active = np.arange(3)
    assert singleton(active, counts, 0, 4, 1.0).tolist() == [True, False, False]
    assert singleton(active, counts, 0, 4, 0.75).tolist() == [True, True, False]
    assert singleton(active, counts, 0, 4, 0.5).tolist() == [True, True, True]


def test_cgrpo_stops_early_holds_out_calibration_and_recalibrates():
    # a third always right, a third always wrong with one fixed answer, a third coin flips
    rates = np.array([1.0] * 100 + [0.0] * 100 + [0.5] * 100)
    alloc = parse_spec("cgrpo:num_calibration=24:recalibrate_every=5").build()
    d = Driver(alloc, rates, prompts_per_step=20, budget=160)
    d.source.wrong = 1  # one wrong answer: the always-wrong prompts agree on it
    held = set(alloc.calibration_ids.tolist())
    grid = {2, 4, 8, 16, 32}
    for t in range(12):
        r = d.step()
        c = r.counts
        calib = np.isin(r.prompt_ids, list(held))
        assert r.info["calibrated"] == (t % 5 == 0)
        if t % 5 == 0:
            assert calib.sum() == 24 and (c.generated[calib] == 32).all()
            assert (c.trained[calib] == 0).all()
        else:
            assert calib.sum() == 0
        train = ~calib
        assert train.sum() == 20 and (c.trained[train] == c.generated[train]).all()
        assert set(np.unique(c.generated[train])) <= grid
        # unanimous prompts (always right or always the same wrong answer) stop at 2
        pid = r.prompt_ids[train]
        assert (c.generated[train][pid < 200] == 2).all()
    assert 0.05 <= alloc.delta <= 0.95


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 16), st.integers(2, 8), st.integers(0, 1000))
def test_greso_bounds_on_random_batches(m, n, seed):
    rng = np.random.default_rng(seed)
    rates = rng.choice([0.0, 1.0, 0.3, 0.7], size=150)
    d = Driver(parse_spec("greso").build(), rates, prompts_per_step=m, budget=m * n, seed=seed)
    for _ in range(8):
        r = d.step()
        c = r.counts
        assert (c.generated == n).all() and np.unique(r.prompt_ids).size == r.prompt_ids.size
        g = trained_groups(r)
        assert g.size <= m and (c.trained[g] == n).all()
        assert_trained_groups_mixed(r)
        assert r.info["gen_rounds"] <= 10
        assert 0.05 <= d.alloc.p_easy <= 0.95 and 0.05 <= d.alloc.p_hard <= 0.95


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 24), st.integers(0, 1000), st.sampled_from(["2,4,8,16,32", "3,5,9"]))
def test_cgrpo_bounds_on_random_batches(m, seed, grid):
    rng = np.random.default_rng(seed)
    rates = rng.random(200)
    alloc = parse_spec(f"cgrpo:num_calibration=10:recalibrate_every=3:budget_grid={grid}").build()
    d = Driver(alloc, rates, prompts_per_step=m, budget=8 * m, seed=seed)
    sizes = {int(x) for x in grid.split(",")}
    for _ in range(4):
        r = d.step()
        c = r.counts
        train = ~np.isin(r.prompt_ids, alloc.calibration_ids)
        assert train.sum() == m and np.unique(r.prompt_ids).size == r.prompt_ids.size
        assert set(np.unique(c.generated[train])) <= sizes
        assert (c.trained[train] == c.generated[train]).all() and (c.trained[~train] == 0).all()
        assert np.isfinite(r.train.advantages).all()
