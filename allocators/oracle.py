"""The oracle (docs/methods.md#oracle): a reference that sees the true success rates.

Not a method to deploy: no trainer knows a prompt's true pass rate. It exists to score the
other methods in the bandit view of frozen-policy runs (``bench simulate --frozen``,
docs/simulator.md#frozen-mode): given the true rates p_i of the step's prompts it spends the
step budget B to maximise the expected number of informative groups (groups with at least one
success and one failure, the groups GRPO learns from)::

    maximise  Σ_i f_i(n_i),   f_i(n) = 1 − p_i^n − (1 − p_i)^n,   Σ_i n_i = B,  n_i ≥ 2.

The gain of one more rollout, f_i(n + 1) − f_i(n) = p_i^n (1 − p_i) + (1 − p_i)^n p_i, falls with
n, so each f_i is concave and the greedy that gives rollouts one at a time to the largest gain is
exact (exchange argument; ties to the prompt first in batch order). Advantages are uniform's:
GRPO's group normalisation, every sample trains. ``bench train`` refuses it (its source has no
true rates: ``Capabilities.reference``), and ``all`` on the command line leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
    even_split,
)

MIN_N = 2  # rollouts every prompt gets (a group of one has no reward variance)


class TrueRateSource(Protocol):
    """A source that knows the ground truth (the simulator's ``SimulatedSource``)."""

    def true_success_rates(self, prompt_ids: np.ndarray) -> np.ndarray:
        """The current true success rate of each training prompt."""
        ...


@dataclass
class OracleConfig(AllocatorConfig):
    bounds = {"eps": (0.0, 1.0)}

    eps: float = GRPO_EPS  # added to the group std, as uniform
    scale_by_std: bool = True  # False: A = r − mean (Dr. GRPO)


def expected_informative(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """1 − p^n − (1 − p)^n per prompt: the chance that n rollouts of a prompt of rate p mix
    successes and failures."""
    p = np.asarray(p, np.float64)
    n = np.asarray(n, np.float64)
    return 1.0 - p**n - (1.0 - p) ** n


@njit(cache=True)
def _greedy(p, budget, base):
    """Counts maximising Σ 1 − p^n − (1 − p)^n with n ≥ base and Σ n = budget: the largest
    marginal gains one at a time from a binary max-heap (ties: smaller index first)."""
    m = p.shape[0]
    counts = np.full(m, base, np.int64)
    left = budget - base * m
    if m == 0 or left <= 0:
        return counts
    lp = np.empty(m)
    lq = np.empty(m)
    for i in range(m):
        lp[i] = np.log(p[i]) if p[i] > 0.0 else -np.inf
        lq[i] = np.log1p(-p[i]) if p[i] < 1.0 else -np.inf
    heap_g = np.empty(m)
    heap_i = np.empty(m, np.int64)
    for i in range(m):
        heap_g[i] = np.exp(base * lp[i] + lq[i]) + np.exp(base * lq[i] + lp[i])
        heap_i[i] = i
    for start in range(m // 2 - 1, -1, -1):
        _sift(heap_g, heap_i, m, start)
    for _ in range(left):
        i = heap_i[0]
        counts[i] += 1
        n = counts[i]
        heap_g[0] = np.exp(n * lp[i] + lq[i]) + np.exp(n * lq[i] + lp[i])
        _sift(heap_g, heap_i, m, 0)
    return counts


@njit(cache=True, inline="always")
def _above(g1, i1, g2, i2):
    return g1 > g2 or (g1 == g2 and i1 < i2)


@njit(cache=True)
def _sift(hg, hi, size, pos):
    while True:
        top = pos
        left = 2 * pos + 1
        right = left + 1
        if left < size and _above(hg[left], hi[left], hg[top], hi[top]):
            top = left
        if right < size and _above(hg[right], hi[right], hg[top], hi[top]):
            top = right
        if top == pos:
            return
        hg[pos], hg[top] = hg[top], hg[pos]
        hi[pos], hi[top] = hi[top], hi[pos]
        pos = top


def oracle_counts(p: np.ndarray, budget: int, base: int = MIN_N) -> np.ndarray:
    """The oracle's allocation of ``budget`` rollouts over prompts of true rates ``p``: the
    maximiser of Σ_i 1 − p_i^n_i − (1 − p_i)^n_i with n_i ≥ ``base`` (an even split where the
    budget is below ``base`` each)."""
    p = np.asarray(p, np.float64)
    if budget < base * p.size:
        return even_split(int(budget), p.size)
    return _greedy(p, int(budget), int(base))


class Oracle(StaticAllocator):
    name = "oracle"
    Config = OracleConfig
    caps = Capabilities(
        spend="budget",
        min_rollouts_per_prompt=MIN_N,
        needs=frozenset({"true_rates"}),
        reference=True,
    )

    def allocate(self, step: Step, groups: np.ndarray) -> tuple[np.ndarray, dict]:
        source: TrueRateSource = step.source  # type: ignore[assignment]
        p = np.asarray(source.true_success_rates(step.prompt_ids[groups]), np.float64)
        counts = oracle_counts(p, step.budget)
        return counts, {
            "expected_informative": float(expected_informative(p, counts).sum()),
            "max_rollouts": int(counts.max()) if counts.size else 0,
        }

    def build(self, step: Step, samples: Samples) -> TrainBatch:
        adv = group_normalized(
            samples.group,
            samples.rewards,
            step.num_groups,
            self.config.eps,
            self.config.scale_by_std,
        )
        return TrainBatch.all_of(samples, adv)
