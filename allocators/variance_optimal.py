"""GVM (docs/methods.md#gvm): rollouts per prompt that minimise the variance of the gradient
estimate, from a fresh estimate of each prompt's success rate and gradient norm.

**Default (``rule="gvm"``): the official code**, ``RLHFlow/GVM`` at ``d640a754``
(``em/run_em.sh`` and ``runs/scripts/run_em.sh``, ``em/stage_1_collect_data.py``,
``em/stage_2_calc_acceptRates_grads.py``, ``em/stage_2_calc_sample_size.py``). Every EM iteration
(here: every step, on the step's prompts):

1. **E-step pass**: ``em_samples`` = 8 fresh samples of each prompt by the current policy
   (``stage_1_samples_per_prompt=8``). They are generated through ``Step.sample`` (so the run's
   rollouts and tokens count them) and never trained (``spend="own"``: a step generates
   8 × prompts on top of the budget).
2. p_i = correct / 8; G_i = mean over prompt i's correct samples of ‖∇ log π(y|x)‖ (the
   source's ``grad_norms``; 0 without a correct sample).
3. n_i ∝ G_i / √(p_i + α / p_i^(β−1)), α = 0.001, β = 2 (``run_em.sh``: ``alpha=0.001``,
   ``beta=2.0``), so n_i ∝ G_i/√(p_i + α/p_i); a prompt with p_i = 0 or G_i = 0 gets **zero**.
   No bounds.
4. Integers: ``np.round`` of share × budget, then the residual fix of
   ``float_to_int_preserve_sum`` (the |error| largest residuals get ±1), so Σ n_i = budget.
   If every weight is zero the step trains on nothing (verl's ``if sum(sample_size) == 0:
   continue``, "skip empty batch").
5. The n_i samples are generated fresh (verl's rollout with ``sample_sizes``) and all train with
   verl's GRPO advantage, A = (r − mean)/(std + 1e-6) (``algorithm=grpo``; a group of one has
   mean 0 and std 1).

The source must provide ``grad_norms`` (``Capabilities.needs``): the simulator computes the
norm exactly; the trainer does not, and ``validate`` refuses ``gvm`` there with one line naming
``gvm@reinforce-ada``.

**``rule="reinforce-ada"``** (preset ``gvm@reinforce-ada``; ``gvm@raft``): the closed forms of
Reinforce-Ada v3 (arXiv 2510.04996) Appendix B from the prompts' history, no extra pass: the log
objective with a Reinforce-with-baseline gradient, σ²(x) ∝ p(1 − p), gives
n_i* ∝ √((1 − p_i)/p_i) (``objective="log"``), RAFT, σ² ∝ p, gives n_i* ∝ 1/√p_i
(``objective="raft"``). Choices the appendix leaves open:

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

from dataclasses import dataclass, replace
from typing import Literal, Protocol, cast

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


class GradNormSource(Protocol):
    """What the official rule needs from the source (``Need`` ``grad_norms``)."""

    def grad_norms(self, samples: Samples) -> np.ndarray:
        """‖∇_θ log π_θ(y|x)‖ of each response at the current policy."""
        ...


def gvm_weights(p: np.ndarray, g: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``calc_sample_ratio``'s unnormalised sizes: G / √(p + α / p^(β−1)), zero where p = 0 or
    G = 0."""
    p = np.asarray(p, np.float64)
    g = np.asarray(g, np.float64)
    out = np.zeros(p.shape)
    ok = (p > 0) & (g > 0)
    out[ok] = g[ok] / np.sqrt(p[ok] + alpha / np.power(p[ok], beta - 1.0))
    return out


def round_preserving_sum(shares: np.ndarray, total: int) -> np.ndarray:
    """``float_to_int_preserve_sum``: ``np.round(shares × total)``, then the rounding error
    fixed by ±1 on the |error| entries with the largest residual in its direction (``np.argsort``
    of −residual when short, of residual when over)."""
    scaled = np.asarray(shares, np.float64) * int(total)
    out = np.round(scaled).astype(np.int64)
    error = int(total) - int(out.sum())
    if error != 0:
        residuals = scaled - out
        idx = np.argsort(-residuals if error > 0 else residuals)[: abs(error)]
        out[idx] += np.sign(error)
    return out


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
        "alpha": (0.0, 1e3),
        "beta": (0.0, 10.0),
        "em_samples": (1, 100_000),
    }

    rule: Literal["gvm", "reinforce-ada"] = "gvm"  # the official code; Reinforce-Ada v3 App. B
    # rule="gvm" (RLHFlow/GVM em/run_em.sh): n ∝ G/√(p + α/p^(β−1)) from a fresh pass
    alpha: float = 1e-3
    beta: float = 2.0
    em_samples: int = 8  # stage_1_samples_per_prompt
    # rule="reinforce-ada": closed forms from the prompts' history
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
        spend="budget",
        min_rollouts_per_prompt=2,
        presets={
            "reinforce-ada": {"rule": "reinforce-ada"},
            "raft": {"rule": "reinforce-ada", "objective": "raft"},
        },
    )

    def capabilities(self) -> Capabilities:
        if self.config.rule == "gvm":  # the E-step pass comes on top of the budget
            return replace(
                self.caps,
                spend="own",
                min_rollouts_per_prompt=1,
                needs=frozenset({"grad_norms"}),
                instead="gvm@reinforce-ada",
            )
        return self.caps

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        if self.config.rule == "reinforce-ada":  # the official rule keeps no history
            self.stats = PromptStats(
                num_prompts, reward_buffer=0, visit_window=0, ema_decay=self.config.ema_decay
            )

    # -- rule="gvm": the official EM step -------------------------------------------------
    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        if self.config.rule != "gvm":
            return super().run_step(step)
        c = self.config
        groups = step.take_prompts()
        m = groups.size
        em = step.sample(groups, np.full(m, c.em_samples, np.int64))
        p, g = self.em_estimates(step, em, groups)
        w = gvm_weights(p, g, c.alpha, c.beta)
        total = w.sum()
        counts = (
            round_preserving_sum(w / total, step.budget) if total > 0 else np.zeros(m, np.int64)
        )
        start = step.rollouts
        part = step.sample(groups, counts)
        adv = group_normalized(part.group, part.rewards, step.num_groups, GRPO_EPS, c.scale_by_std)
        index = np.arange(start, start + len(part), dtype=np.int64)
        info = {"em_rollouts": int(m * c.em_samples), "zero_prompts": int((counts == 0).sum())}
        return TrainBatch(index, adv, np.ones(index.size)), info

    def em_estimates(
        self, step: Step, em: Samples, groups: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(p_i, G_i) of the E-step pass: the share of correct samples and the mean gradient
        norm of the correct ones (0 without one), per group of ``groups`` (contiguous)."""
        m = groups.size
        local = em.group - groups[0]
        correct = em.rewards > 0.5
        hits = np.bincount(local[correct], minlength=m)
        norms = cast(GradNormSource, step.source).grad_norms(em)
        g_sum = np.bincount(local[correct], weights=norms[correct], minlength=m)
        n = np.bincount(local, minlength=m)
        p = hits / np.maximum(n, 1)
        g = np.where(hits > 0, g_sum / np.maximum(hits, 1), 0.0)
        return p, g

    # -- rule="reinforce-ada" ----------------------------------------------------------------

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
