"""DAPO dynamic sampling (docs/methods.md#dapo; Yu et al. 2025, arXiv 2503.14476): over-sample
prompts, drop the groups whose rewards are all equal, refill until the training batch is full.

Faithful to verl's ``recipe/dapo/dapo_ray_trainer.py`` (``algorithm.filter_groups``, the
``FilterGroupsConfig`` also present in the ``RLHFlow/Reinforce-Ada`` verl fork) and the recipe's
run script ``run_dapo_qwen2.5_32b.sh``:

1. a generation batch of ``gen_batch_factor`` × ``prompts_per_step`` new prompts (script:
   ``gen_prompt_bsz = train_prompt_bsz * 3``) is sampled ``n`` times each;
2. groups with zero reward std are dropped (a group of one response is kept, as verl does);
   the kept groups accumulate in generation order;
3. while fewer than ``prompts_per_step`` groups are kept, another generation batch is sampled, up
   to ``max_gen_batches`` batches per step (script: 10);
4. the training batch is the first ``prompts_per_step`` kept groups (verl ``batch[:traj_bsz]``),
   surplus kept groups are discarded; advantage: verl's GRPO, A = (r − mean)/(std + 1e-6).

Choices (docs/methods.md leaves over-sampling factor and refill limit open): the script's 3× and 10 batches
are the defaults. When the limit is reached with too few kept groups, verl raises an error
("Generated too many"); here the step trains on the groups it has (possibly none) and reports
``short`` in its info. Budget: the group size n is ``group_size``, or budget // prompts_per_step
when 0 (at least 2); the step decides its own spend (``spend="own"``): each generation
batch costs gen_batch_factor × budget, and every response generated counts in the cost.
Prompts are taken from the epoch stream (the refills consume it faster, as in verl); a batch
never holds the same prompt twice (``take_distinct``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from allocators._prompts import take_distinct
from allocators.advantages import GRPO_EPS, group_normalized
from allocators.base import Allocator, AllocatorConfig, Capabilities, Step, TrainBatch


@njit(cache=True)
def mixed_groups(groups, group, rewards):
    """For each of ``groups``: True if its responses (in ``group``/``rewards``) are not all
    equal, or if it has exactly one response (verl keeps std > 0 or len == 1)."""
    m = groups.shape[0]
    lo = groups.min() if m > 0 else 0
    span = (groups.max() - lo + 1) if m > 0 else 0
    n = np.zeros(span, np.int64)
    s = np.zeros(span)
    for j in range(group.shape[0]):
        g = group[j] - lo
        n[g] += 1
        s[g] += rewards[j]
    out = np.zeros(m, np.bool_)
    for a in range(m):
        g = groups[a] - lo
        out[a] = n[g] == 1 or (n[g] > 1 and 0.0 < s[g] < n[g])
    return out


def train_kept_groups(
    step: Step, kept_parts: list[np.ndarray], target: int, scale_by_std: bool
) -> tuple[TrainBatch, np.ndarray]:
    """The training batch of a filtering step: every response of the first ``target`` kept
    groups (in generation order), GRPO advantages within each group; returns it and the groups
    that train. Shared by DAPO and GRESO."""
    kept = np.concatenate(kept_parts)[:target] if kept_parts else np.zeros(0, np.int64)
    samples = step.samples
    train_group = np.zeros(step.num_groups, np.bool_)
    train_group[kept] = True
    index = np.flatnonzero(train_group[samples.group]).astype(np.int64)
    adv = group_normalized(
        samples.group[index], samples.rewards[index], step.num_groups, GRPO_EPS, scale_by_std
    )
    return TrainBatch(index, adv, np.ones(index.size)), kept


@dataclass
class DapoConfig(AllocatorConfig):
    bounds = {
        "gen_batch_factor": (None, 1e3),
        "max_gen_batches": (1, 10_000),
        "group_size": (0, 100_000),
    }

    gen_batch_factor: float = 3.0  # generation batch / training batch, in prompts (script: 3)
    max_gen_batches: int = 10  # refill limit per step (script: 10)
    group_size: int = 0  # responses per prompt; 0: budget // prompts_per_step (>= 2)
    scale_by_std: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.gen_batch_factor <= 0 or self.max_gen_batches < 1 or self.group_size < 0:
            raise ValueError("need gen_batch_factor > 0, max_gen_batches >= 1, group_size >= 0")


class Dapo(Allocator):
    name = "dapo"
    Config = DapoConfig
    # verl's default gen_batch_size is the training batch: the "lean" preset
    caps = Capabilities(
        spend="own", min_rollouts_per_prompt=2, presets={"lean": {"gen_batch_factor": 1.0}}
    )

    def group_size(self, step: Step) -> int:
        n = self.config.group_size
        return n if n > 0 else max(2, step.budget // step.prompts_per_step)

    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        c = self.config
        target = step.prompts_per_step
        n = self.group_size(step)
        gen_bs = max(1, int(round(c.gen_batch_factor * target)))
        taken = np.zeros(step.stream.num_prompts, np.bool_)
        kept_parts = []
        n_kept = 0
        batches = 0
        while batches < c.max_gen_batches and n_kept < target:
            ids = take_distinct(step, gen_bs, taken)
            if ids.size == 0:
                break
            groups = step.add_prompts(ids)
            s = step.sample(groups, np.full(groups.size, n, np.int64))
            batches += 1
            kept = groups[mixed_groups(groups, s.group, s.rewards)]
            kept_parts.append(kept)
            n_kept += kept.size
        batch, kept = train_kept_groups(step, kept_parts, target, c.scale_by_std)
        info = {
            "gen_batches": batches,
            "kept_groups": int(kept.size),
            "short": int(max(0, target - kept.size)),
        }
        return batch, info
