"""Knapsack RL (docs/methods.md#knapsack; Li et al., arXiv 2509.25849): rollouts per prompt from a
knapsack over the prompts' estimated success rates.

Faithful to ``liziniu/KnapsackRL`` (``verl/trainer/ppo/exploration_utils.py``,
``sampling_budget_by_knapsack`` and ``solve_by_dp``; the reward state of
``verl/utils/dataset/rl_dataset.py``; ``ray_trainer.py``), with the official run script's
defaults (``examples/knapsack_trainer/run_knapsack_grpo_7b.sh``): n = 8, min_n = 2, max_n = 128,
negative_n = positive_n = 2, and the signature defaults α = 0.9, cost estimation
"probability", fallback on; advantages clipped to ±5.

Per step, over the batch's prompts in batch order:

1. **State** (``update_sample_state``/``get_sample_state``): [valid, p̂, count]. p̂ is the
   mean of the latest visit's rewards if that visit had ≥ ``reward_buffer_length`` = 16 rewards,
   else the mean of the 16 most recent rewards across visits (``epoch_estimation`` and
   ``robust_epoch_estimation`` on, the script's setting; ``epoch_estimation=False``: always the
   last 16; robust off: always the latest visit). valid = count ≥ ``min_buffer_length`` = 8.
   Unseen prompts are [0, 0, 0]. The official arrays hold p̂ in float32; so do we (the DP's values
   and the cost floors see the float32 p̂).
2. **Base allocation**: valid with 0 < p̂ < 1 → ``min_n`` (the "effective" prompts E);
   valid p̂ = 0 → ``negative_n``; valid p̂ = 1 → ``positive_n``; invalid → ``n``. The residual is
   W = B − Σ base, B the step budget (``step.budget``).
3. **No effective prompt** and W > 0: W is split evenly over the p̂ = 0 prompts; if there are none,
   every prompt gets n (here: an even split of B, which is n each when B = M·n).
4. **Cost-cap fallback** (``allow_fallback``): c_i = ln(1 − α)/ln(max(p̂, 1 − p̂)) ("probability",
   ≈ the N with PNZ ≥ α; 229.1 at p̂ = 0.01) or 1/(p̂(1 − p̂)) − 1 ("expectation"), stored in
   float32; C = Σ_E ⌊min(max_n, c_i)⌋. If C < W, W − C is split evenly over the p̂ = 0 prompts
   (else over every non-effective prompt) and the knapsack gets capacity C.
5. **Knapsack** (docs/methods.md#solvers) over E: k_i extra rollouts in [0, max_n − min_n], Σ k_i = capacity, value
   v_i(k) = (1 − p̂^N − (1 − p̂)^N)·p̂(1 − p̂)², N = min_n + k, and v_i(0) = 0 (quirk Q1).
   Capacity it cannot place (more than |E|·(max_n − min_n)) is split evenly over E, **ignoring
   max_n** (quirk Q2). Σ N_i = B exactly.
6. **Advantages**: verl GRPO over the variable-size groups, A = (r − mean)/(std + 1e-6),
   unbiased std, clipped to ±``adv_clip`` = 5; every sample trains.

Even splits give the +1 remainders to the first prompts in batch order, as the official loops do.

Solver (``solver``). The official code runs the exact-capacity DP (``dp``; ``dp_table`` is the
same DP with tabulated values, identical allocations). The default ``fast`` is the exact threshold
solver of ``allocators/solvers.py``: v_i is concave in k, also under Q1 (the first increment
V(min_n + 1) exceeds every later one for min_n ≥ 1), so taking the largest increments reaches the
DP's optimum (proved there, checked against brute force and the DP in tests); only which of
several equally valued prompts (identical p̂, common since p̂ ∈ {j/16}) gets a rollout can
differ. ``greedy`` is the heap greedy.

Quirks, faithful by default, clean variants as options:

- Q1 ``k0_value="zero"`` (official) | ``"natural"``: v_i(0) = V(min_n, p̂_i), i.e. maximise
  Σ V(N_i, p̂_i).
- Q2 ``topup="uncapped"`` (official) | ``"capped"``: capacity the knapsack cannot place goes to the
  fallback destinations (p̂ = 0 prompts, else the other non-effective ones) instead of pushing
  effective prompts past max_n; only if every prompt is effective does it stay with them.
- Q3 (``imp_ratio_cap``, a no-op in the official loss) concerns the PPO importance ratio, which the
  simulator does not have (one on-policy gradient step per batch): not applicable here; it
  belongs to the trainer's loss.

Code behaviours the spec's table does not list, reproduced and documented:

- the official ``success_rates`` array is 0 for invalid prompts, so "the p̂ = 0 prompts" of steps 3
  and 4 include the invalid (unseen) ones;
- if every prompt is effective and the fallback triggers, the official code divides by zero (no
  destination); here the fallback is skipped and the knapsack gets all of W (then Q2);
- B < Σ base cannot happen officially (B = M·n); here B is the step's budget, so: the invalid
  prompts share what the valid prompts' base leaves (even split, between min_n and n each), and if
  that is less than min_n each, every prompt gets an even split of B (no knapsack).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from allocators.advantages import GRPO_EPS, clip, group_normalized
from allocators.base import (
    AllocatorConfig,
    Capabilities,
    Samples,
    StaticAllocator,
    Step,
    TrainBatch,
    even_split,
)
from allocators.solvers import knapsack_problem, solve
from allocators.stats import PromptStats


@dataclass
class KnapsackConfig(AllocatorConfig):
    bounds = {
        "n": (1, 100_000),
        "min_n": (1, 100_000),
        "max_n": (1, 100_000),
        "negative_n": (1, 100_000),
        "positive_n": (1, 100_000),
        "alpha": (0.0, 1.0),
        "reward_buffer_length": (1, 100_000),
        "min_buffer_length": (0, 100_000),
        "adv_clip": (0.0, 1e6),
    }

    n: int = 8  # rollouts of an invalid (unseen) prompt
    min_n: int = 2  # base of an effective prompt (0 < p̂ < 1)
    max_n: int = 128
    negative_n: int = 2  # valid, p̂ = 0
    positive_n: int = 2  # valid, p̂ = 1
    alpha: float = 0.9  # "probability" cost: N with PNZ ≥ alpha
    cost_estimation: Literal["probability", "expectation"] = "probability"
    allow_fallback: bool = True
    reward_buffer_length: int = 16
    min_buffer_length: int = 8
    epoch_estimation: bool = True
    robust_epoch_estimation: bool = True
    adv_clip: float = 5.0  # 0 disables
    k0_value: Literal["zero", "natural"] = "zero"  # Q1
    topup: Literal["uncapped", "capped"] = "uncapped"  # Q2
    solver: Literal["fast", "dp", "dp_table", "greedy"] = "fast"

    def __post_init__(self):
        super().__post_init__()
        if self.min_n < 1 or self.max_n < self.min_n:
            raise ValueError("need 1 <= min_n <= max_n")
        if self.n < 1 or self.negative_n < 1 or self.positive_n < 1:
            raise ValueError("n, negative_n and positive_n must be >= 1")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if self.reward_buffer_length < 1 or self.min_buffer_length < 0:
            raise ValueError("need reward_buffer_length >= 1 and min_buffer_length >= 0")
        if self.adv_clip < 0:
            raise ValueError("adv_clip must be >= 0 (0 disables the clip)")


class Knapsack(StaticAllocator):
    name = "knapsack"
    Config = KnapsackConfig
    caps = Capabilities(spend="budget", min_rollouts_per_prompt=2)

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        self.stats = PromptStats(
            num_prompts, reward_buffer=self.config.reward_buffer_length, visit_window=0
        )

    # -- 1. state -----------------------------------------------------------------------------
    def state(self, prompt_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(valid, p̂) per prompt, as ``get_sample_state`` returns them (p̂ = 0 if unseen)."""
        c, st = self.config, self.stats
        count = st.count[prompt_ids]
        valid = count >= c.min_buffer_length
        seen = count > 0
        if not c.epoch_estimation:
            p = st.last_k(prompt_ids, c.reward_buffer_length)
        elif c.robust_epoch_estimation:
            long_visit = st.last_n[prompt_ids] >= c.reward_buffer_length
            p = np.where(
                long_visit, st.last_visit(prompt_ids), st.last_k(prompt_ids, c.reward_buffer_length)
            )
        else:
            p = st.last_visit(prompt_ids)
        p = np.where(seen, p, 0.0)
        return valid, p

    # -- 2.–5. allocation ----------------------------------------------------------------------
    def budgets(self, valid: np.ndarray, p: np.ndarray, budget: int) -> tuple[np.ndarray, dict]:
        """Rollouts per prompt for states (valid, p̂) and a total ``budget``; ``sampling_budget_by_
        knapsack`` step by step. Returns the counts and the step's allocation numbers."""
        c = self.config
        m = p.size
        info = {"fallback": 0.0, "fallback_effective_ratio": 1.0, "effective_prompts": 0}
        eff = valid & (p > 0.0) & (p < 1.0)
        base = np.where(
            ~valid, c.n, np.where(eff, c.min_n, np.where(p == 0.0, c.negative_n, c.positive_n))
        )
        base = base.astype(np.int64)
        if base.sum() > budget:  # B below the base (not official)
            known = int(base[valid].sum())
            n_inv = int((~valid).sum())
            if n_inv and budget - known >= n_inv * min(c.min_n, c.n):
                base[~valid] = even_split(budget - known, n_inv)
                return base, info
            return even_split(budget, m), info
        left = budget - int(base.sum())
        out = base
        p32 = p.astype(np.float32)  # the official arrays are float32
        zero = (p32 == 0.0) | ~valid  # the official array is 0 if invalid
        n_eff = int(eff.sum())
        info["effective_prompts"] = n_eff
        if left > 0 and n_eff == 0:  # 3. no effective prompt
            if zero.any():
                out[zero] += even_split(left, int(zero.sum()))
                return out, info
            return even_split(budget, m), info
        if n_eff == 0:
            return out, info
        pe = p[eff]
        p32e = p32[eff].astype(np.float64)
        with np.errstate(over="ignore", divide="ignore"):
            if c.cost_estimation == "probability":  # (1 − p̂ rounding to 1: official crash)
                top = np.log(np.maximum(pe, 1.0 - pe))
                cost = np.where(top < 0.0, np.log(1.0 - c.alpha) / np.minimum(top, -1e-300), np.inf)
            else:
                cost = 1.0 / (pe * (1.0 - pe)) - 1.0
            cost = cost.astype(np.float32)
        est = int(np.minimum(np.float32(c.max_n), cost).astype(np.int64).sum())
        dest = zero if zero.any() else ~eff  # the fallback's destinations
        if c.allow_fallback and est < left and dest.any():  # 4. cost-cap fallback
            info["fallback"] = 1.0
            info["fallback_effective_ratio"] = est / left
            out[dest] += even_split(left - est, int(dest.sum()))
            left = est
        if left > 0:  # 5. knapsack over E
            problem = knapsack_problem(p32e, c.min_n, c.max_n, c.k0_value)
            extra = solve(problem, left, c.solver)
            out[eff] += extra
            rest = left - int(extra.sum())
            if rest > 0:  # Q2
                clean = dest & ~eff  # (float32 can round a tiny p̂ of E to 0)
                if c.topup == "capped" and clean.any():
                    out[clean] += even_split(rest, int(clean.sum()))
                else:
                    out[eff] += even_split(rest, n_eff)
        return out, info

    def allocate(self, step: Step, groups: np.ndarray) -> tuple[np.ndarray, dict]:
        valid, p = self.state(step.prompt_ids[groups])
        counts, info = self.budgets(valid, p, step.budget)
        info["max_budget"] = int(counts.max()) if counts.size else 0
        info["min_budget"] = int(counts.min()) if counts.size else 0
        return counts, info

    # -- 6. advantages -----------------------------------------------------------------------
    def build(self, step: Step, samples: Samples) -> TrainBatch:
        adv = group_normalized(samples.group, samples.rewards, step.num_groups, GRPO_EPS)
        if self.config.adv_clip > 0:
            adv = clip(adv, self.config.adv_clip)
        return TrainBatch.all_of(samples, adv)


def probability_cost(p: float, alpha: float = 0.9) -> float:
    """Knapsack's "probability" cost ln(1 − α)/ln(max(p, 1 − p)), in float64."""
    return math.log(1.0 - alpha) / math.log(max(p, 1.0 - p))
