"""The chain learning model (``steps_per_prompt``, docs/simulator.md#the-chain-model).

Prompt i needs k_i steps, z_ij = x_ij·θ + u_i − b_ij, p_i = Π_j σ(z_ij), and a sample's score is
(r − p_i)·e_i with e_i = Σ_j (1 − σ_ij)·x_ij/(1 − p_i). These tests check

- that with one step the chain kernels are the one-step kernels, kernel by kernel and over whole
  runs, and that the one-step world and config hash are unchanged;
- the simulator's statistical tests (tests/test_simulator.py) through the chain kernels at one
  step and at three;
- the algebra against finite differences: the score, the update ``chain_learn`` takes (the
  gradient of the GRPO surrogate), CROPI's per-prompt gradient, GVM's gradient norms, and their
  stability as p → 1;
- the worlds (initial rate exactly p0), the allocation moments against Monte Carlo, and short
  learning runs at k = 3 (test accuracy rises, the effective-gradient ratio decays, Knapsack
  beats uniform on it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import test_simulator as one_step  # the one-step statistical tests, run again below
from conftest import SimHarness

import simulator.run as simrun
from allocators.advantages import group_normalized
from allocators.base import Samples
from simulator import kernels as K
from simulator.model import LearningModel, SimulatedSource, chain_layouts
from simulator.run import SimConfig, run_simulation
from simulator.scenarios import SCENARIOS, STEPS_PER_PROMPT, build_world, get_scenario


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _ragged(seed: int, n: int = 7, d: int = 5, kmax: int = 4):
    """A small ragged layout with k_i from 1 to ``kmax`` and a random policy (θ, u)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, kmax + 1, n)
    k[0], k[1] = 1, kmax  # both ends present
    start = np.concatenate([[0], np.cumsum(k)]).astype(np.int64)
    Xs = rng.normal(0.0, 0.7, (start[-1], d))
    bs = rng.normal(-0.5, 1.0, start[-1])
    theta = rng.normal(0.0, 0.5, d)
    u = rng.normal(0.0, 0.3, n)
    return start, Xs, bs, theta, u


def _np_rates(start, Xs, bs, theta, u, ids):
    """p_i = Π_j σ(z_ij), by numpy."""
    out = []
    for i in ids:
        z = Xs[start[i] : start[i + 1]] @ theta + u[i] - bs[start[i] : start[i + 1]]
        out.append(np.prod(_sig(z)))
    return np.array(out)


def _fd(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite-difference gradient of the scalar f at x."""
    g = np.empty_like(x)
    for c in range(x.size):
        hi, lo = x.copy(), x.copy()
        hi[c] += h
        lo[c] -= h
        g[c] = (f(hi) - f(lo)) / (2 * h)
    return g


class ChainHarness(SimHarness):
    """``SimHarness`` whose model runs the chain kernels, at ``k`` steps per prompt (k = 1: the
    one-step world's trivial layout)."""

    k = 1

    def __init__(self, scenario="dapo-math", seed=0, budget=512, prompts_per_step=64):
        super().__init__(scenario, seed, budget, prompts_per_step)
        self.scenario = dataclasses.replace(self.scenario, steps_per_prompt=self.k)
        self.world = build_world(self.scenario, seed)
        self.model = LearningModel(self.scenario, self.world, chain=True)
        self.source = SimulatedSource(self.model, np.random.default_rng([seed, 1]))


class ChainHarness3(ChainHarness):
    k = 3


HARNESSES = pytest.mark.parametrize("h_cls", [ChainHarness, ChainHarness3], ids=["k1", "k3"])


@pytest.fixture
def chain_through_run(monkeypatch):
    """``run_simulation`` with every model on the chain kernels."""
    monkeypatch.setattr(
        simrun, "LearningModel", lambda s, w: LearningModel(s, w, chain=True), raising=True
    )


def _register(monkeypatch, base: str, k: int, **changes) -> str:
    name = f"{base}-chain{k}"
    s = dataclasses.replace(get_scenario(base), name=name, steps_per_prompt=k, **changes)
    monkeypatch.setitem(SCENARIOS, name, s)
    return name


# --------------------------------------------------------------------------------------------
# The scenario field and the worlds
# --------------------------------------------------------------------------------------------
def test_the_one_step_world_and_config_hash_are_unchanged():
    for name, s in SCENARIOS.items():
        if not name.endswith(".toml"):
            assert "steps_per_prompt" not in s.resolved()
    s1 = get_scenario("dapo-math")
    s3 = dataclasses.replace(s1, steps_per_prompt=3)
    assert s3.resolved()["steps_per_prompt"] == 3
    w1, w3 = build_world(s1, 4), build_world(s3, 4)
    assert w1.step_start is None and w1.Xs is None and w1.Xs_test is None
    # the chain block draws from its own generator: every one-step array is the same draw
    for f in ("X", "b", "log_len", "X_test", "b_test", "p0", "domain", "domain_test"):
        assert np.array_equal(getattr(w1, f), getattr(w3, f)), f
    assert w3.step_start.tolist()[:4] == [0, 3, 6, 9] and w3.step_start[-1] == 3 * s1.num_prompts
    assert np.array_equal(w3.Xs[::3], w1.X)  # step 0 is the one-step features
    assert w3.Xs.shape == (3 * s1.num_prompts, s1.dim) and w3.bs.shape == (3 * s1.num_prompts,)


@pytest.mark.parametrize("bad", [0, 33, -1, 2.5, "3", True, None])
def test_steps_per_prompt_out_of_range_is_one_line(bad):
    s = dataclasses.replace(get_scenario("hard"), steps_per_prompt=bad)
    for call in (s.resolved, lambda: build_world(s, 0)):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert "steps_per_prompt" in msg and "\n" not in msg
        assert f"{STEPS_PER_PROMPT[0]} to {STEPS_PER_PROMPT[1]}" in msg


@pytest.mark.parametrize("k", [2, 5])
def test_initial_rate_is_exactly_p0(k):
    s = dataclasses.replace(get_scenario("dapo-math"), steps_per_prompt=k)
    w = build_world(s, 1)
    m = LearningModel(s, w)
    ids = np.arange(s.num_prompts)
    np.testing.assert_allclose(m.success_rates(ids), w.p0, rtol=1e-12)
    one = LearningModel(get_scenario("dapo-math"), build_world(get_scenario("dapo-math"), 1))
    assert m.test_accuracy() == pytest.approx(one.test_accuracy(), rel=1e-12)
    # the split is uneven (flat Dirichlet weights): each step holds part of the difficulty
    share = np.log(_sig(-w.bs)).reshape(-1, k) / np.log(w.p0)[:, None]
    np.testing.assert_allclose(share.sum(axis=1), 1.0, rtol=1e-9)
    assert share.min() > 0 and share.max() < 1
    assert share.max(axis=1).mean() > 1.0 / k + 0.1  # a bottleneck step, on average


def test_domain_worlds_have_chains_drawn_by_the_domain_recipe():
    base = get_scenario("cropi-math")
    s = dataclasses.replace(base, num_prompts=900, num_test=300, dim=48, steps_per_prompt=3)
    w = build_world(s, 2)
    one = build_world(dataclasses.replace(s, steps_per_prompt=1), 2)
    assert np.array_equal(w.X, one.X) and np.array_equal(w.X_test, one.X_test)
    m = LearningModel(s, w)
    np.testing.assert_allclose(m.success_rates(np.arange(900)), w.p0, rtol=1e-12)
    # later steps of a domain's prompts share its direction: their mean lines up with step 0's
    later = w.Xs.reshape(900, 3, 48)[:, 1:]
    for dom in range(3):
        sel = w.domain == dom
        a, b = later[sel].mean(axis=(0, 1)), w.X[sel].mean(axis=0)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.8
    src = SimulatedSource(m, np.random.default_rng(0))
    assert set(src.validation_sets()) == {"gsm8k", "math"}


# --------------------------------------------------------------------------------------------
# With one step the chain kernels are the one-step kernels
# --------------------------------------------------------------------------------------------
def test_chain_kernels_at_one_step_are_the_one_step_kernels():
    s = get_scenario("easy")
    w = build_world(s, 3)
    (start, Xs, bs), (tstart, tXs, tbs) = chain_layouts(w)
    rng = np.random.default_rng(0)
    theta = rng.normal(0, 0.4, s.dim)
    u = rng.normal(0, 0.5, s.num_prompts)
    u[:3] = (40.0, -40.0, 800.0)  # p → 1, p → 0, 1 − p underflows
    ids = np.concatenate([[0, 1, 2], rng.choice(np.arange(3, s.num_prompts), 61, replace=False)])
    ids = ids.astype(np.int64)
    assert np.array_equal(
        K.chain_success_rates(ids, start, Xs, theta, u, bs),
        K.success_rates(ids, w.X, theta, u, w.b),
    )
    p, E, eu = K.chain_directions(ids, start, Xs, theta, u, bs)
    assert np.array_equal(E, w.X[ids]) and np.all(eu == 1.0)
    counts = rng.integers(1, 9, ids.size).astype(np.int64)
    args = (w.log_len, 0.47, 0.3, 4096, True, 8, 1.0)
    a = K.draw(np.random.default_rng(5), ids, counts, w.X, theta, u, w.b, *args)
    b = K.chain_draw(np.random.default_rng(5), ids, counts, start, Xs, theta, u, bs, *args)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    _, rew, length, _ = a
    assert K.chain_mean_success(tstart, tXs, theta, tbs) == K.mean_success(
        w.X_test, theta, w.b_test
    )
    assert np.array_equal(
        K.chain_sample_log_probs(ids, counts, rew, start, Xs, theta, u, bs),
        K.sample_log_probs(ids, counts, rew, w.X, theta, u, w.b),
    )
    beh = K.sample_log_probs(ids, counts, rew, w.X, 0.9 * theta, u, w.b)
    assert np.array_equal(
        K.chain_offpolicy_grpo_gradients(ids, counts, rew, beh, start, Xs, theta, u, bs, 1e-4),
        K.offpolicy_grpo_gradients(ids, counts, rew, beh, w.X, theta, u, w.b, 1e-4),
    )
    x_sq = np.einsum("ij,ij->i", w.X, w.X)
    gen = np.concatenate([counts[:-2], [0, 600]]).astype(np.int64)
    want = K.allocation_moments(ids, gen, w.X, x_sq, theta, u, w.b, 1e-6)
    got = K.chain_allocation_moments(ids, gen, start, Xs, theta, u, bs, 1e-6)
    # the same sums, but 1 − p is rounded once differently (σ(−z) against e^-|z|·σ(|z|)) and
    # Var c = E c² − (E c)² cancels up to ~10⁴×: equal to rounding, not to the bit
    assert got[0] == pytest.approx(want[0], rel=1e-13)
    assert got[1] == pytest.approx(want[1], rel=1e-10)
    # the update, every aggregation and both optimisers
    group = np.repeat(np.arange(ids.size), counts)
    index = rng.permutation(group.size)[: group.size - 5].astype(np.int64)
    adv, weight = rng.normal(size=index.size), rng.uniform(0.5, 1.5, index.size)
    for agg in (0, 1, 2):
        for opt in (0, 1):
            states = []
            for kern, geo in ((K.learn, (w.X,)), (K.chain_learn, (start, Xs))):
                th, uu, m, v = theta.copy(), u.copy(), np.full(s.dim, 0.1), np.full(s.dim, 0.2)
                hp, hr = np.zeros(10, np.int64), np.zeros(10, np.int64)
                norm = kern(
                    ids, group, rew, length, index, adv, weight, counts, *geo, th, uu,
                    w.b if kern is K.learn else bs, agg, 1200.0, 0.7, 300.0, opt, m, v, 3,
                    0.9, 0.999, 1e-8, hp, hr,
                )  # fmt: skip
                states.append((norm, th, uu, m, v, hp, hr))
            for x, y in zip(*states, strict=True):
                assert np.array_equal(x, y), (agg, opt)


@pytest.mark.parametrize("method", ["uniform", "knapsack", "gvm"])
def test_a_run_on_the_chain_kernels_at_one_step_is_todays_run(method, monkeypatch):
    cfg = SimConfig(method=method, steps=40, budget=512, prompts_per_step=64, eval_every=10)
    today = run_simulation(cfg)
    monkeypatch.setattr(simrun, "LearningModel", lambda s, w: LearningModel(s, w, chain=True))
    chain = run_simulation(cfg)
    moments = ["expected_informative_groups", "pg_variance"]
    timing = [c for c in today.steps.columns if "second" in c]
    a, b = today.steps.drop(columns=moments + timing), chain.steps.drop(columns=moments + timing)
    assert a.equals(b)
    np.testing.assert_allclose(chain.steps[moments], today.steps[moments], rtol=1e-12)
    assert today.evals.equals(chain.evals) and today.allocation.equals(chain.allocation)


def test_cropi_on_the_chain_kernels_at_one_step_is_todays_cropi(monkeypatch):
    base = get_scenario("cropi-math")
    name = "cropi-small"
    small = dataclasses.replace(base, name=name, num_prompts=1500, num_test=300, dim=64)
    monkeypatch.setitem(SCENARIOS, name, small)
    cfg = SimConfig(
        scenario=name, method="cropi", steps=6, budget=256, prompts_per_step=32, eval_every=3
    )
    today = run_simulation(cfg)
    monkeypatch.setattr(simrun, "LearningModel", lambda s, w: LearningModel(s, w, chain=True))
    chain = run_simulation(cfg)
    cols = ["effective_grad_ratio", "rollouts", "tokens", "train_reward", "grad_norm"]
    assert today.steps[cols].equals(chain.steps[cols])
    assert today.evals.equals(chain.evals)


# --------------------------------------------------------------------------------------------
# The simulator's statistical tests through the chain kernels (one step and three)
# --------------------------------------------------------------------------------------------
@HARNESSES
def test_empirical_success_rates_match_the_chain_rates(h_cls):
    one_step.test_empirical_success_rates_match_sigmoid(h_cls)
    h = h_cls("dapo-math", seed=5)  # and the rates are Π_j σ(z_ij), by numpy
    h.model.theta[:] = np.random.default_rng(1).normal(0, 0.5, h.model.theta.size)
    ids = np.arange(0, h.scenario.num_prompts, 97)
    start, Xs, bs = h.model.steps
    want = _np_rates(start, Xs, bs, h.model.theta, h.model.u, ids)
    np.testing.assert_allclose(h.model.success_rates(ids), want, rtol=1e-12)


@HARNESSES
def test_wrong_answers_run_longer_on_the_chain(h_cls):
    one_step.test_wrong_answers_run_longer(h_cls)


@HARNESSES
def test_step_with_equal_rewards_changes_nothing_on_the_chain(h_cls):
    one_step.test_step_with_equal_rewards_changes_nothing(h_cls)


def test_policy_gradient_is_the_score_function_at_one_step():
    one_step.test_policy_gradient_is_the_score_function(ChainHarness)


def test_policy_gradient_is_the_chain_score_function():
    """SGD step = lr · Σ A·(r − p)·e / Σ(L/L_ref), e by numpy from the steps."""
    h = ChainHarness3("easy", seed=3)
    alloc = h.start(one_step.parse_spec("uniform").build())
    h.model.theta[:] = np.random.default_rng(2).normal(0, 0.3, h.model.theta.size)
    r = h.step(alloc, learn=False)
    start, Xs, bs = h.model.steps
    s = r.samples
    E = np.empty((r.prompt_ids.size, Xs.shape[1]))
    p = np.empty(r.prompt_ids.size)
    for g, i in enumerate(r.prompt_ids):
        rows = slice(start[i], start[i + 1])
        sig = _sig(Xs[rows] @ h.model.theta + h.model.u[i] - bs[rows])
        p[g] = np.prod(sig)
        E[g] = ((1 - sig) @ Xs[rows]) / (1 - p[g])
    score = (s.rewards - p[s.group])[:, None] * E[s.group]
    norm = s.lengths.sum() / h.scenario.median_tokens
    expected = h.model.theta + h.scenario.lr * (r.train.advantages[:, None] * score).sum(0) / norm
    h.model.learn(r)
    np.testing.assert_allclose(h.model.theta, expected, rtol=1e-9, atol=1e-12)


def test_learning_raises_test_accuracy_on_the_chain_kernels(chain_through_run):
    one_step.test_learning_raises_test_accuracy()


def test_frozen_mode_never_moves_on_the_chain_kernels(chain_through_run):
    one_step.test_frozen_mode_never_moves()


def test_frozen_mode_never_moves_at_three_steps(monkeypatch):
    name = _register(monkeypatch, "hard", 3)
    out = run_simulation(
        SimConfig(scenario=name, method="uniform", steps=20, eval_every=10, frozen=True)
    )
    assert out.evals.test_accuracy.nunique() == 1


def test_exact_test_accuracy_on_a_ragged_layout():
    start, Xs, bs, theta, _ = _ragged(0, n=40)
    want = _np_rates(start, Xs, bs, theta, np.zeros(40), range(40)).mean()
    assert K.chain_mean_success(start, Xs, theta, bs) == pytest.approx(want, rel=1e-13)


# --------------------------------------------------------------------------------------------
# The algebra against finite differences
# --------------------------------------------------------------------------------------------
def _log_prob(start, Xs, bs, theta, u, i, r) -> float:
    one = np.array([i], np.int64)
    rew = np.array([float(r)])
    return float(
        K.chain_sample_log_probs(one, np.ones(1, np.int64), rew, start, Xs, theta, u, bs)[0]
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_the_score_is_the_gradient_of_the_log_probability(seed):
    start, Xs, bs, theta, u = _ragged(seed)
    ids = np.arange(u.size, dtype=np.int64)
    p, E, eu = K.chain_directions(ids, start, Xs, theta, u, bs)
    np.testing.assert_allclose(p, _np_rates(start, Xs, bs, theta, u, ids), rtol=1e-13)
    for i in ids:
        for r in (0, 1):
            g = _fd(lambda th, i=i, r=r: _log_prob(start, Xs, bs, th, u, i, r), theta)
            np.testing.assert_allclose(g, (r - p[i]) * E[i], rtol=1e-6, atol=1e-8)

            def in_u(v, i=i, r=r):
                uu = u.copy()
                uu[i] = v[0]
                return _log_prob(start, Xs, bs, theta, uu, i, r)

            gu = _fd(in_u, u[i : i + 1].copy())
            assert gu[0] == pytest.approx((r - p[i]) * eu[i], rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("agg", [0, 1, 2])
def test_chain_learn_ascends_the_grpo_surrogate(agg):
    """The update is lr·∇ of J(θ, u) = Σ_q w_q A_q log π_θ(r_q) (· ref/L_q under seq-mean-token-mean)
    / Z, the surrogate whose gradient at the sampling policy is the policy gradient."""
    start, Xs, bs, theta, u = _ragged(3, n=9)
    rng = np.random.default_rng(4)
    ids = np.array([0, 2, 3, 5, 6, 8], np.int64)
    counts = rng.integers(1, 6, ids.size).astype(np.int64)
    group = np.repeat(np.arange(ids.size), counts)
    p = _np_rates(start, Xs, bs, theta, u, ids)
    rewards = (rng.random(group.size) < p[group]).astype(float)
    lengths = rng.integers(200, 3000, group.size).astype(np.int64)
    index = rng.permutation(group.size)[: group.size - 2].astype(np.int64)
    adv, weight = rng.normal(size=index.size), rng.uniform(0.5, 2.0, index.size)
    ref = 1200.0
    norm = lengths[index].sum() / ref if agg == 0 else float(index.size)
    scale = ref / lengths[index] if agg == 2 else np.ones(index.size)
    pids = ids[group[index]]

    def J(th, uu):
        lp = K.chain_sample_log_probs(
            pids, np.ones(index.size, np.int64), rewards[index], start, Xs, th, uu, bs
        )
        return float(np.sum(weight * adv * scale * lp) / norm)

    th, uu = theta.copy(), u.copy()
    m, v = np.zeros(theta.size), np.zeros(theta.size)
    hp, hr = np.zeros(10, np.int64), np.zeros(10, np.int64)
    gnorm = K.chain_learn(
        ids, group, rewards, lengths, index, adv, weight, counts, start, Xs, th, uu, bs, agg,
        ref, 1.0, 1.0, 0, m, v, 1, 0.9, 0.999, 1e-8, hp, hr,
    )  # fmt: skip
    want = _fd(lambda x: J(x, u), theta)
    np.testing.assert_allclose(th - theta, want, rtol=1e-6, atol=1e-9)
    assert gnorm == pytest.approx(np.linalg.norm(want), rel=1e-6)
    want_u = _fd(lambda x: J(theta, x), u.copy())
    np.testing.assert_allclose(uu - u, want_u, rtol=1e-6, atol=1e-9)
    assert np.all(want_u[[1, 4, 7]] == 0.0) and hp.sum() == ids.size and hr.sum() == counts.sum()


def test_cropi_gradient_is_the_gradient_of_the_off_policy_loss():
    start, Xs, bs, theta, u = _ragged(5, n=8)
    rng = np.random.default_rng(6)
    ids = np.arange(8, dtype=np.int64)
    counts = np.array([6, 8, 1, 5, 8, 7, 4, 8], np.int64)
    p = _np_rates(start, Xs, bs, theta, u, ids)
    rewards = (rng.random(counts.sum()) < np.repeat(p, counts)).astype(float)
    rewards[:6] = [1, 0, 1, 1, 0, 0]  # prompt 0 mixed, prompt 1 all-correct: a zero row
    rewards[6:14] = 1.0
    beh = K.chain_sample_log_probs(ids, counts, rewards, start, Xs, 0.8 * theta, u, bs)
    got = K.chain_offpolicy_grpo_gradients(ids, counts, rewards, beh, start, Xs, theta, u, bs, 1e-4)
    assert np.all(got[1] == 0.0) and np.all(got[2] == 0.0)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for a in range(8):
        r = rewards[offsets[a] : offsets[a + 1]]
        if r.size < 2:
            continue
        A = (r - r.mean()) / (r.std(ddof=1) + 1e-4)

        def loss(th, a=a, r=r, A=A):
            lp = K.chain_sample_log_probs(
                ids[a : a + 1], counts[a : a + 1], r, start, Xs, th, u, bs
            )
            return float(-np.mean(np.exp(lp - beh[offsets[a] : offsets[a + 1]]) * A))

        np.testing.assert_allclose(got[a], _fd(loss, theta), rtol=1e-6, atol=1e-9)


def test_grad_norms_are_the_norm_of_the_score_under_the_chain():
    s = dataclasses.replace(
        get_scenario("easy"), num_prompts=200, num_test=50, dim=6, steps_per_prompt=3
    )
    w = build_world(s, 0)
    model = LearningModel(s, w)
    rng = np.random.default_rng(7)
    model.theta[:] = rng.normal(0, 0.5, s.dim)
    model.u[:] = rng.normal(0, 0.5, s.num_prompts)
    src = SimulatedSource(model, np.random.default_rng(8))
    ids = np.array([3, 50, 51, 199], np.int64)
    samples = src.sample(ids, np.full(4, 3, np.int64))
    got = src.grad_norms(samples)
    start, Xs, bs = model.steps
    for q in range(len(samples)):
        i, r = samples.prompt_ids[q], samples.rewards[q]
        g = _fd(lambda th, i=i, r=r: _log_prob(start, Xs, bs, th, model.u, i, r), model.theta)
        assert got[q] == pytest.approx(np.linalg.norm(g), rel=1e-6)


def test_the_chain_is_stable_as_p_goes_to_one_and_zero():
    start, Xs, bs, theta, u = _ragged(9)
    ids = np.arange(u.size, dtype=np.int64)
    for shift in (30.0, -30.0):  # 1 − p ≈ e^-30: the score still matches finite differences
        uu = u + shift
        p, E, eu = K.chain_directions(ids, start, Xs, theta, uu, bs)
        for i in ids:
            g = _fd(lambda th, i=i: _log_prob(start, Xs, bs, th, uu, i, 0), theta, h=1e-5)
            np.testing.assert_allclose(g, -p[i] * E[i], rtol=1e-5, atol=1e-9)
            if shift < 0:  # every step fails: e = Σ_j x_ij
                rows = slice(start[i], start[i + 1])
                np.testing.assert_allclose(E[i], Xs[rows].sum(axis=0), rtol=1e-9)
    # 1 − p underflows (every logit above ~690): the weights' limit is the softmax of −z
    uu = u + 800.0
    p, E, eu = K.chain_directions(ids, start, Xs, theta, uu, bs)
    assert np.all(p == 1.0) and np.all(np.isfinite(E)) and np.allclose(eu, 1.0)
    for i in ids:
        rows = slice(start[i], start[i + 1])
        z = Xs[rows] @ theta + uu[i] - bs[rows]
        soft = np.exp(z.min() - z) / np.exp(z.min() - z).sum()
        np.testing.assert_allclose(E[i], soft @ Xs[rows], rtol=1e-12, atol=1e-12)
    # …and it agrees with the weights just before the underflow (continuity)
    _, E_before, _ = K.chain_directions(ids, start, Xs, theta, u + 650.0, bs)
    np.testing.assert_allclose(E, E_before, rtol=1e-9)
    lp = K.chain_sample_log_probs(ids, np.ones(ids.size, np.int64), np.zeros(ids.size), start, Xs,
                                  theta, uu, bs)  # fmt: skip
    assert np.all(np.isfinite(lp)) and np.all(lp < -600)
    info, var = K.chain_allocation_moments(
        ids, np.full(ids.size, 8), start, Xs, theta, uu, bs, 1e-6
    )
    assert info == 0.0 and var == 0.0


# --------------------------------------------------------------------------------------------
# The allocation moments under the chain, against Monte Carlo
# --------------------------------------------------------------------------------------------
def test_chain_moments_match_monte_carlo_of_the_grpo_gradient():
    h = ChainHarness3("dapo-math", seed=4)
    model = h.model
    model.theta[:] = np.random.default_rng(3).normal(0, 0.4, model.theta.size)
    ids = np.array([3, 17, 250, 901, 1500, 42], np.int64)
    counts = np.array([2, 5, 8, 1, 16, 3], np.int64)
    start, Xs, bs = model.steps
    model.u[ids] = 0.0
    for _ in range(60):  # move u until the rates are spread (a fixed point of p = want)
        want = np.array([0.1, 0.35, 0.5, 0.7, 0.92, 0.05])
        p = model.success_rates(ids)
        model.u[ids] += np.log(want / (1 - want)) - np.log(p / (1 - p))
    p, E = model.directions(ids)
    assert np.allclose(p, want, atol=1e-6)
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
    grads = coef.reshape(draws, ids.size) @ E / per  # the chain's score direction e_i
    mc_var = float(grads.var(axis=0, ddof=1).sum())
    succ = np.bincount(group, weights=rewards, minlength=draws * ids.size).reshape(draws, -1)
    mixed = ((succ > 0) & (succ < counts)).sum(axis=1).mean()
    assert variance == pytest.approx(mc_var, rel=0.03)
    assert informative == pytest.approx(mixed, abs=0.03)
    # e is not the first step's x (the steps' weights mix them): the variance is the chain's own
    assert not np.allclose(E, model.w.X[ids], rtol=0.05)


# --------------------------------------------------------------------------------------------
# Learning at three steps per prompt
# --------------------------------------------------------------------------------------------
def test_learning_at_three_steps_raises_accuracy_and_the_ratio_decays(monkeypatch):
    name = _register(monkeypatch, "dapo-math", 3)
    out = run_simulation(SimConfig(scenario=name, method="uniform", steps=800, eval_every=200))
    acc = out.evals.test_accuracy.to_numpy()
    assert np.all(np.diff(acc) > 0) and acc[-1] > acc[0] + 0.08
    ratio = out.steps.effective_grad_ratio.to_numpy()
    assert ratio[:20].mean() > 0.5 and ratio[-100:].mean() < 0.4  # uniform's decay
    assert out.steps.train_reward.to_numpy()[-100:].mean() > 0.65


def test_knapsack_keeps_its_gain_at_three_steps(monkeypatch):
    name = _register(monkeypatch, "dapo-math", 3)
    ratio = {}
    for method in ("uniform", "knapsack"):
        out = run_simulation(SimConfig(scenario=name, method=method, steps=150, eval_every=50))
        ratio[method] = out.steps.effective_grad_ratio.to_numpy()[50:].mean()
    assert ratio["knapsack"] > 1.2 * ratio["uniform"]


def test_samples_of_a_chain_world_are_valid():
    h = ChainHarness3("hard", seed=0)
    s = h.source.sample(np.arange(50), np.full(50, 4))
    assert isinstance(s, Samples) and len(s) == 200
    v = h.source.sample_validation(np.arange(10), np.full(10, 3))
    lp = h.source.log_probs(v, np.full(10, 3), "validation")
    assert lp.shape == (30,) and np.all(lp <= 0)
