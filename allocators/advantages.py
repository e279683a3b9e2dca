"""Advantage rules shared by the methods (docs/methods.md#knapsack).

Each function takes per-sample arrays of the samples that train (``group``: the sample's group
in the step, ``rewards``) and returns one advantage per sample.
"""

from __future__ import annotations

import numpy as np

from allocators._kernels import grpo_advantages

GRPO_EPS = 1e-6


def group_normalized(
    group: np.ndarray,
    rewards: np.ndarray,
    num_groups: int,
    eps: float = GRPO_EPS,
    scale_by_std: bool = True,
) -> np.ndarray:
    """verl GRPO over variable-size groups: A = (r − mean_g) / (std_g + eps), torch's unbiased
    std; a group of one sample has mean 0 and std 1 (verl), so its advantage is r.
    ``scale_by_std=False`` gives A = r − mean_g (Dr. GRPO / ``norm_adv_by_std_in_grpo=False``)."""
    return grpo_advantages(
        int(num_groups),
        np.asarray(group, np.int64),
        np.asarray(rewards, np.float64),
        float(eps),
        bool(scale_by_std),
    )


def sqrt_mean_normalized(
    group: np.ndarray, rewards: np.ndarray, num_groups: int, eps: float = GRPO_EPS
) -> np.ndarray:
    """A = (r − mean_g) / (√mean_g + eps): the ``norm_adv_by_std_in_grpo`` branch of
    ``BaohaoLiao/Reinforce-Ada`` ``core_algos.py`` at a24d553c (Reinforce-Ada-Est's release,
    docs/methods.md#ada-est). A group of one has mean 0 (verl's rule), so its advantage is r / eps;
    a group of binary rewards has √mean = √p̂ in place of the std √(p̂(1 − p̂)·n/(n − 1))."""
    group = np.asarray(group, np.int64)
    rewards = np.asarray(rewards, np.float64)
    n = np.bincount(group, minlength=int(num_groups))
    total = np.bincount(group, weights=rewards, minlength=int(num_groups))
    mean = np.where(n > 1, total / np.maximum(n, 1), 0.0)
    return (rewards - mean[group]) / (np.sqrt(mean[group]) + eps)


def clip(advantages: np.ndarray, limit: float) -> np.ndarray:
    """Clip to ±limit (Knapsack RL's ``adv_clip_value`` = 5, docs/methods.md#knapsack)."""
    return np.clip(advantages, -limit, limit)
