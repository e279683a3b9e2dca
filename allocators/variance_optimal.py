"""Variance-optimal allocation, GVM style (docs/methods.md#gvm): rollouts per prompt in
proportion to the gradient-variance-minimising share, n_i ∝ √((1 − p_i)/p_i).

Sources. GVM-RAFT (Yao et al. 2025, arXiv 2505.02391, ``RLHFlow/GVM``) sets n_i to minimise the
variance of the gradient estimate given per-prompt success rates estimated from earlier samples;
Reinforce-Ada v3 (arXiv 2510.04996) Appendix B derives the optimum for the log objective with a
Reinforce-with-baseline gradient, σ²(x) ∝ p(1 − p): n_i* ∝ √((1 − p_i)/p_i) (``objective="log"``,
default), and for RAFT, σ² ∝ p: n_i* ∝ 1/√p_i (``objective="raft"``, preset ``gvm@raft``).

Choices the sources leave open (docs/methods.md), documented here:

- **p̂**: posterior mean of ``PromptStats.ema`` counts (decay ``ema_decay`` = 0.9 per visit, as
  Reinforce-Ada-Est) under a Beta(``prior_alpha``, ``prior_beta``) = Beta(1, 1) prior, so an
  unseen prompt has p̂ = 0.5 and a prompt with 8 failures has p̂ = 0.1;
- **clamp**: p̂ is clipped to [``p_clip``, 1 − ``p_clip``] = [0.02, 0.98] before the weights, so
  no weight is infinite or zero (log objective: weights between 0.14 and 7);
- **bounds and rounding**: n_i ∈ [``min_n``, ``max_n``] = [2, 32] (2: the smallest group with a
  reward variance; 32: Reinforce-Ada-Est's cap). The continuous allocation is clip(λ·w_i, min,
  max) with λ chosen so that it sums to the budget (water-filling by bisection); the integers are
  its floors plus one rollout each to the largest fractional parts, so Σ n_i equals the budget
  exactly. A budget above ``max_n`` × prompts is spent only up to that; ``min_n`` is lowered to
  budget // prompts when the budget cannot give every prompt ``min_n``;
- **advantage**: verl's GRPO, A = (r − mean)/(std + 1e-6) per prompt (``scale_by_std=False``:
  A = r − mean); every sample trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit

from allocators.advantages import GRPO_EPS, group_normalized
from allocators.base import (
    AllocatorConfig,
    Capabilities,
    Samples,
    StaticAllocator,
    Step,
    TrainBatch,
)
from allocators.stats import PromptStats


@njit(cache=True)
def bounded_proportional(w, total, lo, hi):
    """Integers n_i in [lo, hi] summing to ``total`` (clamped to [m·lo, m·hi]) that round the
    continuous allocation clip(λ·w_i, lo, hi), Σ = total: floors, then +1 to the largest
    fractional parts (ties: larger weight first, then batch order)."""
    m = w.shape[0]
    out = np.full(m, lo, np.int64)
    if m == 0:
        return out
    total = min(max(total, m * lo), m * hi)
    if total == m * lo or hi == lo:
        return out
    # bisection on λ: f(λ) = Σ clip(λ w, lo, hi) is continuous and non-decreasing
    wmin = np.inf
    for i in range(m):
        if w[i] > 0 and w[i] < wmin:
            wmin = w[i]
    a = 0.0
    b = hi / wmin
    x = np.empty(m)
    for _ in range(200):
        mid = 0.5 * (a + b)
        s = 0.0
        for i in range(m):
            s += min(max(mid * w[i], lo), hi)
        if s < total:
            a = mid
        else:
            b = mid
    for i in range(m):
        x[i] = min(max(b * w[i], lo), hi)
    used = 0
    for i in range(m):
        out[i] = min(max(int(np.floor(x[i])), lo), hi)
        used += out[i]
    left = total - used
    # remove any excess (only from float round-off): smallest fractional parts first
    if left < 0:
        order = np.argsort(x - np.floor(x), kind="mergesort")
        t = 0
        while left < 0:
            i = order[t % m]
            if out[i] > lo:
                out[i] -= 1
                left += 1
            t += 1
    key = np.empty(m)
    for i in range(m):
        key[i] = -(x[i] - np.floor(x[i])) - 1e-12 * w[i]
    order = np.argsort(key, kind="mergesort")
    while left > 0:
        for t in range(m):
            if left == 0:
                break
            i = order[t]
            if out[i] < hi:
                out[i] += 1
                left -= 1
    return out


@dataclass
class VarianceOptimalConfig(AllocatorConfig):
    bounds = {
        "prior_alpha": (0.0, 1e6),
        "prior_beta": (0.0, 1e6),
        "ema_decay": (0.0, 1.0),
        "p_clip": (0.0, 0.5),
        "min_n": (1, 100_000),
        "max_n": (1, 100_000),
    }

    objective: Literal["log", "raft"] = "log"  # log: √((1−p)/p); raft: 1/√p
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    ema_decay: float = 0.9
    p_clip: float = 0.02
    min_n: int = 2
    max_n: int = 32
    scale_by_std: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.p_clip < 0.5:
            raise ValueError("p_clip must be in (0, 0.5)")
        if self.min_n < 1 or self.max_n < self.min_n:
            raise ValueError("need 1 <= min_n <= max_n")
        if not 0.0 <= self.ema_decay <= 1.0 or self.prior_alpha <= 0 or self.prior_beta <= 0:
            raise ValueError("need ema_decay in [0, 1] and a positive Beta prior")


class VarianceOptimal(StaticAllocator):
    name = "gvm"
    Config = VarianceOptimalConfig
    caps = Capabilities(
        spend="budget", min_rollouts_per_prompt=2, presets={"raft": {"objective": "raft"}}
    )

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        self.stats = PromptStats(
            num_prompts, reward_buffer=0, visit_window=0, ema_decay=self.config.ema_decay
        )

    def p_hat(self, prompt_ids: np.ndarray) -> np.ndarray:
        c = self.config
        p = self.stats.ema(prompt_ids, c.prior_alpha, c.prior_beta)
        return np.clip(p, c.p_clip, 1.0 - c.p_clip)

    def weights(self, prompt_ids: np.ndarray) -> np.ndarray:
        p = self.p_hat(prompt_ids)
        if self.config.objective == "log":
            return np.sqrt((1.0 - p) / p)
        return 1.0 / np.sqrt(p)

    def allocate(self, step: Step, groups: np.ndarray) -> tuple[np.ndarray, dict]:
        c = self.config
        m = groups.size
        lo = min(c.min_n, step.budget // m)
        hi = max(c.max_n, lo)
        w = self.weights(step.prompt_ids[groups])
        return bounded_proportional(w, int(step.budget), int(lo), int(hi)), {}

    def build(self, step: Step, samples: Samples) -> TrainBatch:
        adv = group_normalized(
            samples.group, samples.rewards, step.num_groups, GRPO_EPS, self.config.scale_by_std
        )
        return TrainBatch.all_of(samples, adv)
