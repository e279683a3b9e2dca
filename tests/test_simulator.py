"""The learning simulator: sampling, learning, evaluation."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from allocators.base import PromptStream
from allocators.registry import parse_spec
from simulator import kernels
from simulator.run import SimConfig, run_simulation


def test_empirical_success_rates_match_sigmoid(harness):
    """With θ fixed, each prompt's success frequency over 4,000 draws matches σ(z).

    Tolerance: every prompt's frequency within 4.5 binomial standard errors (a false alarm over
    200 prompts has probability < 0.2%), and the chi-square goodness of fit over all prompts
    has p > 1e-4."""
    h = harness("dapo-math", seed=5)
    rng = np.random.default_rng(0)
    h.model.theta[:] = rng.normal(0, 0.5, h.model.theta.size)  # any fixed policy
    ids = rng.choice(h.scenario.num_prompts, 200, replace=False)
    n = 4000
    s = h.source.sample(ids, np.full(ids.size, n))
    p = h.model.success_rates(ids)
    freq = s.rewards.reshape(ids.size, n).mean(axis=1)
    se = np.sqrt(np.maximum(p * (1 - p), 1e-12) / n)
    assert np.all(np.abs(freq - p) <= 4.5 * se + 1e-9)
    mid = (p > 0.02) & (p < 0.98)
    chi2 = np.sum((freq[mid] - p[mid]) ** 2 / (p[mid] * (1 - p[mid]) / n))
    assert sps.chi2.sf(chi2, mid.sum()) > 1e-4


def test_wrong_answers_run_longer(harness):
    h = harness("dapo-math", seed=1)
    ids = np.arange(300)
    s = h.source.sample(ids, np.full(300, 64))
    right, wrong = s.lengths[s.rewards == 1], s.lengths[s.rewards == 0]
    assert wrong.mean() > 1.3 * right.mean()
    assert s.lengths.min() >= 1 and s.lengths.max() <= h.scenario.max_tokens
    # answers: 0 exactly for correct samples
    assert np.all((s.answers == 0) == (s.rewards == 1))


def test_step_with_equal_rewards_changes_nothing(harness):
    h = harness("dapo-math", seed=2)
    alloc = h.start(parse_spec("uniform").build())
    r = h.step(alloc, learn=False)
    # make every group all-correct: GRPO advantages are all zero
    r.samples.rewards[:] = 1.0
    r.train = alloc.build(_StepLike(r), r.samples)
    assert np.all(r.train.advantages == 0.0)
    theta, u = h.model.theta.copy(), h.model.u.copy()
    h.model.learn(r)
    assert np.array_equal(theta, h.model.theta) and np.array_equal(u, h.model.u)


class _StepLike:
    def __init__(self, r):
        self.num_groups = r.prompt_ids.size


def test_learning_raises_test_accuracy():
    out = run_simulation(
        SimConfig(scenario="dapo-math", method="uniform", seed=0, steps=150, eval_every=50)
    )
    acc = out.evals.test_accuracy.to_numpy()
    assert np.all(np.diff(acc) > 0)
    assert acc[-1] > acc[0] + 0.01


def test_frozen_mode_never_moves():
    out = run_simulation(
        SimConfig(scenario="hard", method="uniform", seed=0, steps=20, eval_every=10, frozen=True)
    )
    assert out.evals.test_accuracy.nunique() == 1


def test_exact_test_accuracy():
    rng = np.random.default_rng(0)
    X, theta, b = rng.normal(size=(50, 4)), rng.normal(size=4), rng.normal(size=50)
    assert np.isclose(
        kernels.mean_success(X, theta, b), np.mean(1 / (1 + np.exp(-(X @ theta - b))))
    )


def test_policy_gradient_is_the_score_function(harness):
    """SGD step = lr · Σ A·(r − p)·x / Σ(L/L_ref) (token-mean), by hand."""
    h = harness("easy", seed=3)
    alloc = h.start(parse_spec("uniform").build())
    r = h.step(alloc, learn=False)
    p = h.model.success_rates(r.prompt_ids)
    s = r.samples
    score = (s.rewards - p[s.group])[:, None] * h.world.X[s.prompt_ids]
    norm = s.lengths.sum() / h.scenario.median_tokens
    expected = h.model.theta + h.scenario.lr * (r.train.advantages[:, None] * score).sum(0) / norm
    h.model.learn(r)
    np.testing.assert_allclose(h.model.theta, expected, rtol=1e-9, atol=1e-12)


def test_stream_serves_every_prompt_once_per_epoch():
    stream = PromptStream(10, np.random.default_rng(0))
    seen = np.concatenate([stream.take(3) for _ in range(10)])  # 30 = three epochs
    assert sorted(seen[:10]) == list(range(10))  # the first epoch is a permutation
    counts = np.bincount(seen, minlength=10)
    assert np.all(counts == 3)
    for k in range(10):  # a slice never repeats a prompt
        part = seen[3 * k : 3 * k + 3]
        assert np.unique(part).size == 3
