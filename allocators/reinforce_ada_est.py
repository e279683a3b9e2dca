"""Reinforce-Ada-Est (docs/methods.md#ada-est; Reinforce-Ada paper v3, arXiv 2510.04996): one round of
sampling with per-prompt budgets ∝ 1/√p̂ from EMA success counts under a Beta prior.

Faithful to the co-author's code, ``BaohaoLiao/Reinforce-Ada`` ``verl/trainer/ppo/ray_trainer_ema.py``
(``_generate_multi_round_adaptive_downsampling``, single-round version) and ``core_algos.py``
(``compute_grpo_outcome_advantage(weights=...)``), with ``scripts/run_reinforce_ada_est.sh``:

- p̂ = (N_pos + α)/(N_tot + α + β) from the EMA counts *before* this step, Beta(α = 1, β = 16)
  prior, decay λ = 0.9 per visit (``PromptStats.ema``; the counts are updated after the step with
  every response, N ← λN + n_call);
- weights w = 1/√max(p̂, 1e-6);
- total = ``round_repeat`` × prompts. **Quirk Q7**: the docstring says 2×, the code uses 1×.
  ``round_repeat = 0`` (default) takes it from the step budget, budget // prompts_per_step, so the
  faithful total is exactly the step budget (8 per prompt at 2,048 / 256); ``total_factor = 2`` is
  the docstring's 2× (the run then spends twice the budget and is no longer budget-bound);
- base ``min_budget`` = 1 each (the code's hard-coded ``base_each``; the script's
  ``min_budget_per_prompt=4`` is not read by the code), the rest in proportion to w: floors plus
  largest remainder (ties in batch order), then the cap ``max_budget`` = 32 with the overflow
  redistributed by weight among prompts under the cap (floors with room, then largest fractional
  part, repeated); overflow that fits nowhere is dropped (the code's warning);
- every response trains (no down-sampling).

Advantage (docs/methods.md#ada-est). The release script ``scripts/run_reinforce_ada_est.sh``
(stored version ``0ccbb734``) runs ``norm_adv_by_std_in_grpo=True``, ``global_stat_est=False``
under the run name ``..._noglobal_adv_sqrt_p``; the ``core_algos.py`` that names (``a24d553c``)
divides on that branch by √mean instead of the std, the std left commented out on the same line:
A = (r − mean)/(√mean + 1e-6) (``advantage="sqrt_p"``, default; a group of one has mean 0, so
A = r/1e-6). ``advantage="grpo"`` is the other stored ``core_algos.py`` (``19978331``), verl's
(r − mean)/(std + 1e-6); ``advantage="weighted"`` is the code's ``norm_adv_by_std_in_grpo=False``
branch, A = w·(r − mean) with the allocation weight w = 1/√p̂ (the paper's "hybrid" 1/√p in the
gradient); the returned weights enter only there.
Since all responses train, the pool mean and the group mean coincide.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numba import njit

from allocators.advantages import GRPO_EPS, group_normalized, sqrt_mean_normalized
from allocators.base import (
    AllocatorConfig,
    Capabilities,
    Samples,
    StaticAllocator,
    Step,
    TrainBatch,
)
from allocators.stats import PromptStats

P_FLOOR = 1e-6  # the code's max(p̂, 1e-6)


@njit(cache=True)
def est_allocate(w, total, base, cap):
    """Budgets per prompt: ``base`` each, the rest ∝ ``w`` (floors + largest remainder), a trim
    from the lowest weights if the bases alone exceed the total, then the cap with the overflow
    redistributed by weight (``cap_and_redistribute``)."""
    m = w.shape[0]
    out = np.full(m, base, np.int64)
    remaining = max(0, total - base * m)
    wsum = w.sum()
    if remaining > 0 and wsum > 0:
        share = remaining * w / wsum
        floors = np.floor(share).astype(np.int64)
        out += floors
        left = remaining - floors.sum()
        if left > 0:
            order = np.argsort(-(share - floors), kind="mergesort")
            for i in range(left):
                out[order[i % m]] += 1
    # defensive trim (only when base * m exceeds the total): lowest weights first, down to 1
    excess = out.sum() - total
    if excess > 0:
        order = np.argsort(w, kind="mergesort")
        t = 0
        while excess > 0 and t < m:
            i = order[t]
            if out[i] > 1:
                out[i] -= 1
                excess -= 1
            else:
                t += 1
    # cap and redistribute the overflow by weight among prompts still under the cap
    overflow = 0
    for i in range(m):
        if out[i] > cap:
            overflow += out[i] - cap
            out[i] = cap
    while overflow > 0:
        cand = np.flatnonzero(out < cap)
        if cand.size == 0:
            break
        cw = w[cand].copy()
        csum = cw.sum()
        if csum <= 0:
            cw[:] = 1.0
            csum = float(cand.size)
        extra = overflow * cw / csum
        ext_floor = np.floor(extra).astype(np.int64)
        allocated = 0
        for a in range(cand.size):
            i = cand[a]
            add = min(ext_floor[a], cap - out[i])
            out[i] += add
            allocated += add
        overflow -= allocated
        if overflow > 0:
            order = np.argsort(-(extra - ext_floor), kind="mergesort")
            for t in range(order.size):
                if overflow <= 0:
                    break
                i = cand[order[t]]
                if out[i] < cap:
                    out[i] += 1
                    overflow -= 1
        if allocated == 0 and (np.flatnonzero(out < cap).size == 0 or csum == 0):
            break
    return out


@dataclass
class ReinforceAdaEstConfig(AllocatorConfig):
    bounds = {
        "prior_alpha": (0.0, 1e6),
        "prior_beta": (0.0, 1e6),
        "ema_decay": (0.0, 1.0),
        "round_repeat": (0, 100_000),
        "total_factor": (1, 2),
        "min_budget": (1, 100_000),
        "max_budget": (1, 100_000),
    }

    prior_alpha: float = 1.0  # bayes_alpha
    prior_beta: float = 16.0  # bayes_beta
    ema_decay: float = 0.9  # bayes_ema_decay
    round_repeat: int = 0  # mean per prompt; 0: budget // prompts_per_step
    total_factor: int = 1  # Q7: 1 (code), 2 (docstring)
    min_budget: int = 1  # base_each
    max_budget: int = 32  # max_budget_per_prompt
    # sqrt_p: (r − mean)/(√mean + 1e-6), the release (docs/methods.md#ada-est); grpo: / (std + 1e-6)
    advantage: Literal["sqrt_p", "grpo", "weighted"] = "sqrt_p"

    def __post_init__(self):
        super().__post_init__()
        if self.total_factor not in (1, 2):
            raise ValueError("total_factor must be 1 (code) or 2 (docstring)")
        if self.min_budget < 1 or self.max_budget < self.min_budget:
            raise ValueError("need 1 <= min_budget <= max_budget")
        if not 0.0 <= self.ema_decay <= 1.0 or self.prior_alpha <= 0 or self.prior_beta <= 0:
            raise ValueError("need ema_decay in [0, 1] and a positive Beta prior")


class ReinforceAdaEst(StaticAllocator):
    name = "ada-est"
    Config = ReinforceAdaEstConfig
    caps = Capabilities(spend="budget", min_rollouts_per_prompt=1)

    def capabilities(self) -> Capabilities:
        if self.config.total_factor != 1:  # the docstring's 2x spends twice the step budget
            return replace(self.caps, spend="own")
        return self.caps

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        self.stats = PromptStats(
            num_prompts, reward_buffer=0, visit_window=0, ema_decay=self.config.ema_decay
        )

    def weights(self, prompt_ids: np.ndarray) -> np.ndarray:
        c = self.config
        p_hat = self.stats.ema(prompt_ids, c.prior_alpha, c.prior_beta)
        return 1.0 / np.sqrt(np.maximum(p_hat, P_FLOOR))

    def allocate(self, step: Step, groups: np.ndarray) -> tuple[np.ndarray, dict]:
        c = self.config
        m = groups.size
        per_prompt = c.round_repeat if c.round_repeat > 0 else step.budget // m
        total = c.total_factor * per_prompt * m
        if c.round_repeat == 0 and c.total_factor == 1:
            total = step.budget  # the budget exactly, also when it is not a multiple of m
        w = self.weights(step.prompt_ids[groups])
        return est_allocate(w, int(total), c.min_budget, c.max_budget), {}

    def build(self, step: Step, samples: Samples) -> TrainBatch:
        if self.config.advantage == "sqrt_p":
            adv = sqrt_mean_normalized(samples.group, samples.rewards, step.num_groups, GRPO_EPS)
        elif self.config.advantage == "grpo":
            adv = group_normalized(samples.group, samples.rewards, step.num_groups, GRPO_EPS, True)
        else:
            adv = group_normalized(samples.group, samples.rewards, step.num_groups, GRPO_EPS, False)
            # the allocation's weights: the statistics do not change before observe
            adv = adv * self.weights(step.prompt_ids)[samples.group]
        return TrainBatch.all_of(samples, adv)
