"""Uniform GRPO (docs/methods.md#uniform): the same n for every prompt, group-normalised advantages.

n = budget // prompts_per_step rollouts per prompt. When the budget is not a multiple of the
batch, the remainder goes one extra rollout each to the first prompts in batch order (the rule the
other methods' even splits use, docs/methods.md#knapsack), so the budget is always spent exactly.
Advantage A = (r − mean) / (std + 1e-6) per prompt, torch's unbiased std (verl's GRPO); every
sample trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass
class UniformConfig(AllocatorConfig):
    bounds = {"eps": (0.0, 1.0)}

    eps: float = GRPO_EPS  # added to the group std
    scale_by_std: bool = True  # False: A = r − mean (Dr. GRPO)


class Uniform(StaticAllocator):
    name = "uniform"
    Config = UniformConfig
    caps = Capabilities(spend="budget", min_rollouts_per_prompt=2)

    def allocate(self, step: Step, groups: np.ndarray) -> tuple[np.ndarray, dict]:
        return even_split(step.budget, groups.size), {}

    def build(self, step: Step, samples: Samples) -> TrainBatch:
        adv = group_normalized(
            samples.group,
            samples.rewards,
            step.num_groups,
            self.config.eps,
            self.config.scale_by_std,
        )
        return TrainBatch.all_of(samples, adv)
