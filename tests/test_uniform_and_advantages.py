"""Uniform GRPO (docs/methods.md#uniform) and the shared advantage rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from allocators.advantages import clip, group_normalized
from allocators.base import even_split
from allocators.registry import parse_spec


def reference_grpo(groups, rewards, eps=1e-6):
    """Straight from the definition: per group, (r - mean) / (unbiased std + eps); a singleton
    group has mean 0 and std 1 (verl)."""
    out = np.empty(len(rewards))
    for g in set(groups):
        idx = [j for j, x in enumerate(groups) if x == g]
        r = np.array([rewards[j] for j in idx], float)
        if len(r) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = r.mean(), r.std(ddof=1)
        for j in idx:
            out[j] = (rewards[j] - mean) / (std + eps)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0.0, 1.0])), min_size=1, max_size=60))
def test_group_normalized_matches_definition(pairs):
    groups = np.array([g for g, _ in pairs], np.int64)
    rewards = np.array([r for _, r in pairs])
    got = group_normalized(groups, rewards, 6)
    np.testing.assert_allclose(
        got, reference_grpo(groups.tolist(), rewards.tolist()), rtol=1e-9, atol=1e-9
    )


def test_zero_variance_group_has_zero_advantage():
    groups = np.array([0, 0, 0, 1, 1, 1])
    rewards = np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    adv = group_normalized(groups, rewards, 2)
    assert np.all(adv[:3] == 0.0)
    # one success in three: mean 1/3, unbiased std 0.57735
    np.testing.assert_allclose(
        adv[3:], np.array([-1 / 3, 2 / 3, -1 / 3]) / (0.5773502691896258 + 1e-6)
    )


def test_without_std_scaling_is_mean_centred():
    groups = np.array([0, 0, 0, 0])
    rewards = np.array([1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(
        group_normalized(groups, rewards, 1, scale_by_std=False), [0.75, -0.25, -0.25, -0.25]
    )


def test_clip():
    np.testing.assert_array_equal(clip(np.array([-9.6, 0.5, 7.0]), 5.0), [-5.0, 0.5, 5.0])


@given(st.integers(0, 10_000), st.integers(1, 500))
def test_even_split_is_exact_and_even(total, parts):
    out = even_split(total, parts)
    assert out.sum() == total and out.max() - out.min() <= 1 and (out >= 0).all()
    assert np.all(np.diff(out) <= 0)  # the remainder goes to the first prompts


def test_uniform_gives_n_each_and_trains_everything(harness):
    h = harness("dapo-math", seed=0, budget=8 * 64, prompts_per_step=64)
    alloc = h.start(parse_spec("uniform").build())
    r = h.step(alloc)
    assert np.all(r.counts.generated == 8)
    assert r.train.index.size == 8 * 64 and np.all(r.train.weights == 1.0)
    np.testing.assert_allclose(
        r.train.advantages, reference_grpo(r.samples.group.tolist(), r.samples.rewards.tolist())
    )


def test_uniform_spreads_a_remainder_to_the_first_prompts(harness):
    h = harness("dapo-math", seed=0, budget=8 * 64 + 5, prompts_per_step=64)
    r = h.step(h.start(parse_spec("uniform").build()))
    assert r.counts.generated.sum() == 8 * 64 + 5
    assert np.all(r.counts.generated[:5] == 9) and np.all(r.counts.generated[5:] == 8)
