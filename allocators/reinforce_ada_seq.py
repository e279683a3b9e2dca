"""Reinforce-Ada-Seq (docs/methods.md#ada-seq-balance; Xiong et al., arXiv 2510.04996): multi-round sampling with
an exit rule per prompt, down-sampling to a fixed group of n, and the pool-mean advantage.

Faithful to ``RLHFlow/Reinforce-Ada`` (``verl/trainer/ppo/ray_trainer.py``
``_generate_multi_round_adaptive_downsampling``, ``core_algos.py``
``compute_grpo_outcome_advantage``; defaults of ``algorithm.py`` and ``scripts/run_reinforce_ada.sh``).
Two registered names, one per exit rule of the paper:

- ``ada-seq-balance`` (``choice="balanced"``, the script's choice): a prompt exits once its pool
  holds ≥ ⌊n/2⌋ positives **and** ≥ n − ⌊n/2⌋ negatives;
- ``ada-seq-pos`` (``choice="positive_focused"``): a prompt exits at its first positive.

Per step (docs/methods.md#ada-seq-balance steps 1–6):

1. the step's ``prompts_per_step`` prompts all start active; each round samples ``round_repeat``
   (8) new responses for every active prompt, at most ``max_rounds`` (4) rounds (32 per prompt);
2. a response is positive iff reward > ``positive_threshold`` (0.7); the pool keeps whole rounds;
3. the exit rule is checked after each round;
4. at exit the group is down-sampled to ``n`` (4): target_pos = min(⌊n/2⌋, #pos), target_neg =
   min(n − target_pos, #neg), topped up from the set with spares. **Quirk Q5**: the code keeps the
   *first* cached responses of each set (generation order); ``downsample="first"`` reproduces it,
   ``downsample="random"`` (clean variant) keeps a uniform random subset of each set;
5. prompts still active after the last round fall back to a group built from the pool: balanced
   n/2 + n/2 filled from the other set; positive_focused (no positive by construction)
   target_pos = max(min(⌈ratio·n⌉, n − 1), 1) which leaves n negatives; an all-negative or
   all-positive group gets zero advantage under the pool mean;
6. advantage (``global_stat_est=True``): r̄ = #pos / (#pos + #neg) over the **whole pool** of the
   prompt (every round), A = r − r̄, no std (``norm_adv_by_std=False``, the script); with
   ``norm_adv_by_std=True`` A = (r − r̄)/(max(σ_pool, 1e-6) + 1e-6), σ unbiased; a pool of ≤ 1
   response has mean 0 and std 1. ``global_stat_est=False`` uses the kept group's own mean (and
   std), verl's local GRPO rule. **Quirk Q6**: ``paper_weighted=True`` scales each group by the
   paper v3 weight 1/p̂ (p̂ = the pool mean, through ``TrainBatch.weights``); the released code
   has no such weight (faithful default False).

Budget. The method decides its own spend (``spend="own"``): the step budget is ignored.
A step generates between ``prompts_per_step × round_repeat`` and ``prompts_per_step ×
round_repeat × max_rounds`` responses (2,048 to 8,192 at 256 prompts) and trains on
``prompts_per_step × n`` (1,024). Every generated response is counted in the cost (``Step.sample``
logs all of them); only the kept ones train.

All per-response bookkeeping (pool counts, exit checks, down-sampling, advantages) runs in Numba
kernels; Python only loops over rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit

from allocators.advantages import group_normalized
from allocators.base import Allocator, AllocatorConfig, Capabilities, Step, TrainBatch

STD_EPS = 1e-6  # verl's epsilon: std clamp and denominator


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def round_update(active, group, rewards, threshold, balanced, n_keep, pos, neg):
    """Add one round's responses to the pool counts (in place) and apply the exit rule to the
    ``active`` groups; returns a flag per active group: finished after this round."""
    for j in range(group.shape[0]):
        if rewards[j] > threshold:
            pos[group[j]] += 1
        else:
            neg[group[j]] += 1
    half = n_keep // 2
    done = np.zeros(active.shape[0], np.bool_)
    for a in range(active.shape[0]):
        g = active[a]
        if balanced:
            done[a] = pos[g] >= half and neg[g] >= n_keep - half
        else:
            done[a] = pos[g] >= 1
    return done


@njit(cache=True, inline="always")
def _fill_short(p, q, a, b, short):
    """Top up a kept group that is ``short`` of its size from whichever set has extra (positives
    first), as ``downsample_cache`` does."""
    if short > 0:
        if p > a:
            a += min(p - a, short)
        elif q > b:
            b += min(q - b, short)
    return a, b


@njit(cache=True)
def keep_targets(pos, neg, finished, balanced, n_keep):
    """How many positives and negatives each group keeps: ``downsample_cache`` for groups that met
    the exit rule, the fallback for unresolved ones (docs/methods.md#ada-seq-balance steps 4–5)."""
    m = pos.shape[0]
    tp = np.zeros(m, np.int64)
    tn = np.zeros(m, np.int64)
    half = n_keep // 2
    for g in range(m):
        p = pos[g]
        q = neg[g]
        if finished[g]:
            a = min(half, p)
            b = min(n_keep - a, q)
            a, b = _fill_short(p, q, a, b, n_keep - a - b)
        else:
            rows = p + q
            take = min(n_keep, rows)
            if balanced:
                want_p = half
                want_n = n_keep - half
            else:
                ratio = p / rows if rows > 0 else 0.0
                want_p = int(math.ceil(ratio * n_keep))
                want_p = max(min(want_p, take - 1), 1)
                want_n = take - want_p
            a = min(p, want_p)
            b = min(q, want_n)
            a, b = _fill_short(p, q, a, b, take - a - b)
        tp[g] = a
        tn[g] = b
    return tp, tn


@njit(cache=True)
def select_kept(order, group, rewards, threshold, tp, tn):
    """Mark the kept responses: walking the responses in ``order`` (generation order: the first
    cached, Q5; a random permutation: a uniform random subset), each group keeps its first
    ``tp[g]`` positives and ``tn[g]`` negatives."""
    m = tp.shape[0]
    got_p = np.zeros(m, np.int64)
    got_n = np.zeros(m, np.int64)
    keep = np.zeros(group.shape[0], np.bool_)
    for t in range(order.shape[0]):
        j = order[t]
        g = group[j]
        if rewards[j] > threshold:
            if got_p[g] < tp[g]:
                got_p[g] += 1
                keep[j] = True
        elif got_n[g] < tn[g]:
            got_n[g] += 1
            keep[j] = True
    return keep


@njit(cache=True)
def pool_advantages(group, rewards, pos, neg, scale_by_std, eps):
    """``global_stat_est``: A = r − r̄_pool (÷ (max(σ_pool, eps) + eps) if ``scale_by_std``), the
    pool being every response of the prompt this step as pos = 1 / neg = 0; a pool of ≤ 1 has
    mean 0 and std 1."""
    out = np.empty(group.shape[0])
    for j in range(group.shape[0]):
        g = group[j]
        total = pos[g] + neg[g]
        mean = 0.0
        std = 1.0
        if total > 1:
            mean = pos[g] / total
            var = (pos[g] * (1.0 - mean) ** 2 + neg[g] * mean * mean) / (total - 1)
            std = max(math.sqrt(var), eps)
        if scale_by_std:
            out[j] = (rewards[j] - mean) / (std + eps)
        else:
            out[j] = rewards[j] - mean
    return out


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
@dataclass
class ReinforceAdaSeqConfig(AllocatorConfig):
    bounds = {
        "positive_threshold": (0.0, 1.0),
        "max_rounds": (1, 10_000),
        "round_repeat": (1, 100_000),
        "n": (1, 100_000),
    }

    choice: Literal["balanced", "positive_focused"] = "balanced"  # reinforce_ada_choice
    positive_threshold: float = 0.7  # positive iff reward > threshold
    max_rounds: int = 4
    round_repeat: int = 8  # responses per active prompt per round
    n: int = 4  # kept per prompt (actor_rollout_ref.rollout.n, script)
    downsample: Literal["first", "random"] = "first"  # Q5: "first" faithful, "random" clean
    global_stat_est: bool = True  # script: advantage baseline from the whole pool
    norm_adv_by_std: bool = False  # script: no std division
    paper_weighted: bool = False  # Q6: paper v3's 1/p̂ group weight (absent from the code)

    def __post_init__(self):
        super().__post_init__()
        if self.max_rounds < 1 or self.round_repeat < 1 or self.n < 1:
            raise ValueError("max_rounds, round_repeat and n must be >= 1")


@dataclass
class ReinforceAdaSeqPosConfig(ReinforceAdaSeqConfig):
    choice: Literal["balanced", "positive_focused"] = "positive_focused"


class ReinforceAdaSeq(Allocator):
    name = "ada-seq-balance"
    Config = ReinforceAdaSeqConfig
    caps = Capabilities(spend="own", min_rollouts_per_prompt=1)

    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        c = self.config
        balanced = c.choice == "balanced"
        groups = step.take_prompts()
        m = step.num_groups
        pos = np.zeros(m, np.int64)
        neg = np.zeros(m, np.int64)
        finished = np.zeros(m, np.bool_)
        active = groups
        rounds = 0
        for _ in range(c.max_rounds):
            if active.size == 0:
                break
            s = step.sample(active, np.full(active.size, c.round_repeat, np.int64))
            done = round_update(
                active, s.group, s.rewards, c.positive_threshold, balanced, c.n, pos, neg
            )
            finished[active[done]] = True
            active = active[~done]
            rounds += 1

        samples = step.samples
        tp, tn = keep_targets(pos, neg, finished, balanced, c.n)
        n_all = len(samples)
        if c.downsample == "first":
            order = np.arange(n_all, dtype=np.int64)
        else:
            order = self.rng.permutation(n_all).astype(np.int64)
        keep = select_kept(order, samples.group, samples.rewards, c.positive_threshold, tp, tn)
        index = np.flatnonzero(keep).astype(np.int64)
        g = samples.group[index]
        r = samples.rewards[index]
        if c.global_stat_est:
            adv = pool_advantages(g, r, pos, neg, c.norm_adv_by_std, STD_EPS)
        else:
            adv = group_normalized(g, r, m, STD_EPS, c.norm_adv_by_std)
        weights = np.ones(index.size)
        if c.paper_weighted:
            total = pos + neg
            p_hat = np.where(pos > 0, pos / np.maximum(total, 1), 1.0)
            weights = 1.0 / p_hat[g]
        info = {"rounds": rounds, "unresolved": int(m - finished.sum())}
        return TrainBatch(index, adv, weights), info


class ReinforceAdaSeqPos(ReinforceAdaSeq):
    name = "ada-seq-pos"
    Config = ReinforceAdaSeqPosConfig
