"""CoBA-RL (docs/methods.md#coba; Yao et al., arXiv 2602.03048): rollouts per prompt from a heap
greedy on a Beta-shaped, budget-saturating value, with an exploit-to-explore schedule.

Faithful to ``Within-yao/CoBA-RL`` (``recipe/coba_rl/budget_allocators.py``, ``BetaAllocator``;
``coba_rl_ray_trainer.py``), with the official script's settings
(``examples/coba_rl/run_qwen2.5_7b_coba_rl.sh``): n_low = 2, n_up = 128, S = 11 (Beta parameter
sum), sliding window 1; B = the step budget (officially train_batch_size × n = 256 × 16). The
class defaults (n_up = 32, S = 7, window 3) are the preset ``coba@class``.

Estimates (``BaseBudgetAllocator``):

- p̂ of a prompt: Σ successes / Σ rollouts over its last ``sliding_window_size`` visits
  (``update_stats``/``commit_step_stats``); an unseen prompt counts as 0.5. If every prompt of the
  batch is unseen: B // M each, +1 to the first B mod M.
- Batch failure rate f (``_update_beta_params_sample_based_sliding_window``): 1 − the unweighted
  mean over the finished step's prompts of each prompt's in-step success rate, averaged over the
  last ``sliding_window_size`` steps. The Beta parameters used at step t come from steps < t.
  Transform f' = 1/(1 + e^{−10(f − 0.5)}) if f ≤ 0.5, else f; α = clip(1 + (S − 2)·f', 1,
  S − 1), β = S − α; before any step α = S − 2, β = 2.

Allocation (``BetaAllocator.allocate``), prompts in batch order:

1. B < M·n_low: B // M each, +1 to the first B mod M.
2. Base n_low each; remainder R = B − M·n_low (R = 0: done).
3. Categories: very hard p̂ < 0.05, very easy p̂ > 0.99, exploration E otherwise.
4. Exploration budget EB = ⌊R · ratio⌋, ratio = 0.8 if |E| > M/2, else 0.6 + 0.2·(2|E|/M)
   (0.6 if E is empty).
5. Heap greedy over E (``_allocate_beta_greedy_internal``) from n_low with total |E|·n_low + EB,
   each prompt ≤ n_up: value V(N, p) = (1 − exp(−N/τ · p̃(1 − p̃))) · BetaPDF(p̃; α, β),
   p̃ = clip(p̂, 0.01, 0.99), τ = 3 + 9·clip(Var(p̃_E)/0.1667, 0, 1) (population variance over E);
   ties to the smaller index (heapq tuples). ``allocators/solvers.py`` holds the greedy.
6. Leftover R − (rollouts the greedy placed) goes to the very hard, then the exploration, then the
   very easy prompts (``_allocate_remaining_budget``, method "weighted"): over the group's prompts
   still below n_up, weights w = (1 − clip(p̂, 1e-6, 1 − 1e-6))^1; each in turn gets
   min(⌊remaining · w/Σw⌋, n_up − N) where ``remaining`` has already been decreased by the earlier
   prompts' shares (**quirk Q4**: earlier prompts in batch order get more); then one uniform
   top-up pass over the group's prompts still below n_up, capped. What a group cannot take passes
   to the next. B is spent exactly unless the caps stop it (then less; as officially).

Advantages: standard GRPO over the variable-size groups, A = (r − mean)/(std + 1e-6),
unbiased std; every sample trains. Statistics take every reward of the step.

Options: ``q4="faithful"`` (official) | ``"fixed"``: each group's weighted shares come from the
group's starting remainder (floors of R₀·w/Σw, capped), then one rollout each to the largest
fractional parts (ties: batch order) while below n_up, then the same uniform top-up.
``solver="greedy"`` (official) | ``"fast"`` (the exact threshold solver: same objective, may
differ between tied prompts). ``remaining_budget_method="uniform"`` is the official alternative
leftover rule (even split, capped).
"""

from __future__ import annotations

import math
from collections import deque
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
    StepResult,
    TrainBatch,
    even_split,
)
from allocators.solvers import coba_problem, solve
from allocators.stats import PromptStats

VERY_HARD = 0.05
VERY_EASY = 0.99


@njit(cache=True)
def uniform_topup(out, group, left, n_up):
    """``_allocate_remaining_uniform``: one pass of an even split of ``left`` over the prompts of
    ``group`` still below n_up (+1 to the first ones), each capped at n_up; returns the rest."""
    avail = np.empty(group.size, np.int64)
    na = 0
    for i in group:
        if out[i] < n_up:
            avail[na] = i
            na += 1
    if na == 0 or left <= 0:
        return left
    per = left // na
    rem = left % na
    for j in range(na):
        i = avail[j]
        give = min(per + (1 if j < rem else 0), n_up - out[i])
        out[i] += give
        left -= give
    return left


@njit(cache=True)
def weighted_leftover(out, group, p, left, n_up, weight_alpha, fixed):
    """``_allocate_remaining_weighted`` for one group, in batch order; returns the rest.

    Faithful (``fixed`` False, quirk Q4): prompt j gets min(int(left·w_j/Σw), room) with ``left``
    already decreased by the earlier prompts' shares. Fixed: floors of R₀·w_j/Σw (capped), then
    +1 to the largest fractional parts (ties: batch order) while below n_up. Both end with one
    uniform top-up pass over the weighted prompts."""
    avail = np.empty(group.size, np.int64)
    w = np.empty(group.size)
    na = 0
    total_w = 0.0
    for i in group:
        if out[i] < n_up:
            avail[na] = i
            w[na] = (1.0 - min(max(p[i], 1e-6), 1.0 - 1e-6)) ** weight_alpha
            total_w += w[na]
            na += 1
    if na == 0:
        return left
    if total_w == 0.0:
        return uniform_topup(out, group, left, n_up)
    if not fixed:
        for j in range(na):
            i = avail[j]
            give = min(int(left * w[j] / total_w), n_up - out[i])
            out[i] += give
            left -= give
    else:
        frac = np.empty(na)
        spare = left
        for j in range(na):
            i = avail[j]
            share = left * w[j] / total_w
            base = math.floor(share)
            frac[j] = share - base
            give = min(int(base), n_up - out[i])
            out[i] += give
            spare -= give
        order = np.argsort(-frac, kind="mergesort")
        for t in range(na):
            if spare <= 0:
                break
            i = avail[order[t]]
            if out[i] < n_up:
                out[i] += 1
                spare -= 1
        left = spare
    if left > 0:
        left = uniform_topup(out, avail[:na], left, n_up)
    return left


@dataclass
class CobaConfig(AllocatorConfig):
    bounds = {
        "n_low": (0, 100_000),
        "n_up": (0, 100_000),
        "beta_params_sum": (None, 1e6),
        "sliding_window_size": (1, 100_000),
        "smoothing_factor": (0.0, 0.5),
        "tau_min": (None, 1e6),
        "tau_max": (None, 1e6),
        "var_max": (None, 0.25),
        "exploration_budget_ratio": (0.0, 1.0),
        "weight_alpha": (0.0, 1e3),
    }

    n_low: int = 2
    n_up: int = 128  # script (class default 32)
    beta_params_sum: float = 11.0  # S; script (class default 7)
    sliding_window_size: int = 1  # script (class default 3)
    smoothing_factor: float = 0.01
    tau_min: float = 3.0
    tau_max: float = 12.0
    var_max: float = 0.1667
    exploration_budget_ratio: float = 0.8
    remaining_budget_method: Literal["weighted", "uniform"] = "weighted"
    weight_alpha: float = 1.0
    q4: Literal["faithful", "fixed"] = "faithful"
    solver: Literal["greedy", "fast"] = "greedy"

    def __post_init__(self):
        super().__post_init__()
        if self.n_low < 0 or self.n_up < self.n_low:
            raise ValueError("need 0 <= n_low <= n_up")
        if self.beta_params_sum <= 2.0:
            raise ValueError("beta_params_sum must be > 2")
        if self.sliding_window_size < 1:
            raise ValueError("sliding_window_size must be >= 1")
        if not 0.0 <= self.smoothing_factor < 0.5:
            raise ValueError("smoothing_factor must be in [0, 0.5)")
        if not 0.0 < self.tau_min <= self.tau_max or self.var_max <= 0:
            raise ValueError("need 0 < tau_min <= tau_max and var_max > 0")
        if not 0.0 <= self.exploration_budget_ratio <= 1.0:
            raise ValueError("exploration_budget_ratio must be in [0, 1]")


def transform_failure_rate(f: float) -> float:
    """``_apply_adaptive_nonlinear_transform``: a sigmoid once f ≤ 0.5 (late training)."""
    if f <= 0.5:
        return 1.0 / (1.0 + math.exp(-10.0 * (f - 0.5)))
    return f


class Coba(StaticAllocator):
    name = "coba"
    Config = CobaConfig
    caps = Capabilities(
        spend="budget",
        min_rollouts_per_prompt=2,
        presets={"class": {"n_up": 32, "beta_params_sum": 7.0, "sliding_window_size": 3}},
    )

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        c = self.config
        self.stats = PromptStats(num_prompts, reward_buffer=0, visit_window=c.sliding_window_size)
        self.failure_window: deque[float] = deque(maxlen=c.sliding_window_size)
        self.beta_alpha = c.beta_params_sum - 2.0
        self.beta_beta = 2.0

    # -- estimates ----------------------------------------------------------------------------
    def success_rates(self, prompt_ids: np.ndarray) -> np.ndarray:
        """p̂ over the window of visits; NaN for an unseen prompt."""
        return self.stats.window(prompt_ids, self.config.sliding_window_size)

    def update_beta(self) -> None:
        c = self.config
        f = float(np.mean(self.failure_window))
        f_t = transform_failure_rate(f)
        alpha = min(max(1.0 + (c.beta_params_sum - 2.0) * f_t, 1.0), c.beta_params_sum - 1.0)
        self.beta_alpha = alpha
        self.beta_beta = c.beta_params_sum - alpha

    def tau(self, rates: np.ndarray) -> float:
        c = self.config
        p = np.clip(rates, c.smoothing_factor, 1.0 - c.smoothing_factor)
        v = float(np.mean((p - p.mean()) ** 2)) / c.var_max
        return c.tau_min + (c.tau_max - c.tau_min) * min(max(v, 0.0), 1.0)

    # -- allocation ------------------------------------------------------------------------------
    def budgets(self, rates: np.ndarray, budget: int) -> tuple[np.ndarray, dict]:
        """Rollouts per prompt for window success rates ``rates`` (NaN: unseen) and a total
        ``budget``: ``BetaAllocator.allocate`` step by step."""
        c = self.config
        m = rates.size
        info = {"beta_alpha": self.beta_alpha, "beta_beta": self.beta_beta}
        if m == 0:
            return np.zeros(0, np.int64), info
        if np.isnan(rates).all() or budget < m * c.n_low:  # 1.
            return even_split(budget, m), info
        p = np.where(np.isnan(rates), 0.5, rates)
        out = np.full(m, c.n_low, np.int64)  # 2.
        left = budget - m * c.n_low
        if left == 0:
            return out, info
        hard = np.flatnonzero(p < VERY_HARD)  # 3.
        easy = np.flatnonzero(p > VERY_EASY)
        explore = np.flatnonzero((p >= VERY_HARD) & (p <= VERY_EASY))
        n_e = explore.size
        if n_e > 0:  # 4.
            ratio = (
                c.exploration_budget_ratio
                if n_e > m / 2
                else 0.6 + (c.exploration_budget_ratio - 0.6) * (n_e / m * 2)
            )
        else:
            ratio = 0.6
        eb = int(left * ratio)
        if n_e > 0 and eb > 0:  # 5.
            tau = self.tau(p[explore])
            problem = coba_problem(
                p[explore],
                self.beta_alpha,
                self.beta_beta,
                tau,
                c.n_low,
                c.n_up,
                c.smoothing_factor,
            )
            extra = solve(problem, eb, c.solver)
            out[explore] += extra
            left -= int(extra.sum())
            info["tau"] = tau
        for group in (hard, explore, easy):  # 6.
            if left <= 0:
                break
            if group.size:
                left = self.leftover(out, group, p, left)
        info["unspent"] = left
        return out, info

    def leftover(self, out: np.ndarray, group: np.ndarray, p: np.ndarray, left: int) -> int:
        """``_allocate_remaining_budget`` for one group; returns what it could not place."""
        c = self.config
        if c.remaining_budget_method == "uniform":
            return int(uniform_topup(out, group, left, c.n_up))
        return int(
            weighted_leftover(out, group, p, left, c.n_up, float(c.weight_alpha), c.q4 == "fixed")
        )

    def allocate(self, step: Step, groups: np.ndarray) -> tuple[np.ndarray, dict]:
        return self.budgets(self.success_rates(step.prompt_ids[groups]), step.budget)

    def build(self, step: Step, samples: Samples) -> TrainBatch:
        adv = group_normalized(samples.group, samples.rewards, step.num_groups, GRPO_EPS)
        return TrainBatch.all_of(samples, adv)

    # -- statistics -----------------------------------------------------------------------------
    def observe(self, result: StepResult) -> None:
        g = result.counts.generated
        seen = g > 0
        if seen.any():
            rate = result.counts.successes[seen] / g[seen]
            self.failure_window.append(1.0 - float(rate.mean()))
            self.update_beta()
        super().observe(result)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "failure_window": list(self.failure_window),
            "beta_alpha": self.beta_alpha,
            "beta_beta": self.beta_beta,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.failure_window.clear()
        self.failure_window.extend(float(x) for x in state["failure_window"])
        self.beta_alpha = float(state["beta_alpha"])
        self.beta_beta = float(state["beta_beta"])
