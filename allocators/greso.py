"""GRESO (docs/methods.md#greso; Zheng et al. 2025, "Act Only When It Pays", arXiv 2506.02177):
pre-rollout probabilistic skipping of prompts that were zero-variance at their latest visits, on
top of DAPO-style dynamic sampling.

Faithful to ``Infini-AI-Lab/GRESO`` (``verl/trainer/ttis/presampling_selector.py``
``DataProfiler.filter_examples_all_probabilistic``, ``verl/trainer/ppo/ray_trainer.py`` ``fit``,
``train-scripts/math_qwen_1_5b_dm_greso.sh``: strategy ``all_probabilistic``, p_easy = p_hard =
0.5, target_zero_variance = 0.25, sampling batch 384 and training batch 256 prompts, n = 8):

1. **Pre-rollout filter.** Each prompt's trace is the mean reward of each of its visits (every
   sampled group, trained or not; here the visit window of ``PromptStats``). Its *easy streak* is
   the number of latest consecutive visits with all responses correct; its *hard streak*, if the
   latest visit was all wrong, the number of latest consecutive all-wrong visits. (The code tests
   mean ≥ 0.98 and ≤ 0.11 on rewards 1 / 0.1 / 0; on our binary rewards these are "all correct"
   and "all wrong".) A prompt is skipped with probability 1 − max(p_easy^streak, 0.01) (easy
   checked first), else 1 − max(p_hard^streak, 0.01): the exploration floor keeps ≥ 1%.
   Prompts are drawn from the epoch stream in chunks (the dataloader batch, ``chunk_factor`` ×
   prompts_per_step = 32/256) and filtered until ``sampling_factor`` × prompts_per_step
   (384/256) candidates are gathered; skipped prompts are consumed for this epoch.
2. **Dynamic sampling** (``ttis.type=dynamic_sampling``): the candidates are sampled n times each;
   zero-variance groups are dropped; the rest accumulate. If fewer than prompts_per_step groups are
   kept, the next sampling batch is int(missing / (1 − zero-variance ratio of this round) × 1.25)
   prompts, at most the default and at least ``min_sampling_factor`` × prompts_per_step (64/256);
   when that estimate is within the default it is the *last* sampling round and the step trains
   on whatever it then has. The training batch is the first prompts_per_step kept groups.
3. **Adaptive exploration.** After each step, from the second epoch on (the code's ``epoch > 0``):
   with the share of sampled prompts that were all correct (easy) and all wrong (hard), p_easy
   moves by −0.01 if easy share ≥ target/3, else +0.01, and p_hard by −0.01 if hard share ≥
   2·target/3, else +0.01, both within [0.05, 0.95] (target_zero_variance = 0.25).

Harness choices: the candidates are sampled in full (the code trims to a multiple of the GPU
count); a step makes at most ``max_gen_rounds`` sampling rounds (the code has no limit; its
last-round rule ends the loop in practice); streaks count at most ``history`` visits (the
``PromptStats`` visit window; with p ≤ 0.95 the skip probability differs from the unbounded count
by less than 0.04 past 64 visits). Advantage: verl's GRPO, A = (r − mean)/(std + 1e-6). The group
size n is ``group_size``, or budget // prompts_per_step when 0 (at least 2); the step decides its
own spend (``spend="own"``) and every response generated counts in the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from allocators._prompts import take_distinct
from allocators.base import Allocator, AllocatorConfig, Capabilities, Step, TrainBatch
from allocators.dapo import mixed_groups, train_kept_groups
from allocators.stats import PromptStats


@njit(cache=True)
def streaks(ids, win_n, win_s, win_pos, win_fill):
    """Easy and hard streaks of each prompt from its visit window (latest visit first)."""
    m = ids.shape[0]
    easy = np.zeros(m, np.int64)
    hard = np.zeros(m, np.int64)
    cap = win_n.shape[1]
    for a in range(m):
        i = ids[a]
        pos = win_pos[i]
        k_easy = 0
        k_hard = 0
        easy_open = True
        hard_open = True
        for _t in range(win_fill[i]):
            pos = pos - 1 if pos > 0 else cap - 1
            n = win_n[i, pos]
            s = win_s[i, pos]
            if easy_open and n > 0 and s == n:
                k_easy += 1
            else:
                easy_open = False
            if hard_open and s == 0:
                k_hard += 1
            else:
                hard_open = False
            if not easy_open and not hard_open:
                break
        easy[a] = k_easy
        hard[a] = k_hard
    return easy, hard


@njit(cache=True)
def skip_mask(easy, hard, u_easy, u_hard, p_easy, p_hard, floor):
    """The code's two tests in order: easy skip with probability 1 − max(p_easy^streak, floor),
    then hard skip with 1 − max(p_hard^streak, floor); a zero streak never skips."""
    out = np.zeros(easy.shape[0], np.bool_)
    for a in range(easy.shape[0]):
        if easy[a] > 0 and u_easy[a] < 1.0 - max(p_easy ** easy[a], floor):
            out[a] = True
        elif hard[a] > 0 and u_hard[a] < 1.0 - max(p_hard ** hard[a], floor):
            out[a] = True
    return out


@njit(cache=True)
def extreme_groups(groups, group, rewards):
    """(all-correct, all-wrong) counts among ``groups`` of this round."""
    lo = groups.min()
    span = groups.max() - lo + 1
    n = np.zeros(span, np.int64)
    s = np.zeros(span)
    for j in range(group.shape[0]):
        n[group[j] - lo] += 1
        s[group[j] - lo] += rewards[j]
    easy = 0
    hard = 0
    for a in range(groups.shape[0]):
        g = groups[a] - lo
        if n[g] > 0:
            if s[g] == n[g]:
                easy += 1
            elif s[g] == 0.0:
                hard += 1
    return easy, hard


@dataclass
class GresoConfig(AllocatorConfig):
    bounds = {
        "p_easy": (0.0, 1.0),
        "p_hard": (0.0, 1.0),
        "target_zero_variance": (0.0, 1.0),
        "adjust_step": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "max_p": (0.0, 1.0),
        "floor": (0.0, 1.0),
        "sampling_factor": (None, 1e3),
        "min_sampling_factor": (None, 1e3),
        "chunk_factor": (None, 1e3),
        "estimate_inflation": (1.0, 1e3),
        "max_gen_rounds": (1, 10_000),
        "group_size": (0, 100_000),
        "history": (1, 100_000),
    }

    p_easy: float = 0.5  # initial keep base for all-correct streaks
    p_hard: float = 0.5  # initial keep base for all-wrong streaks
    target_zero_variance: float = 0.25
    adjust_step: float = 0.01
    min_p: float = 0.05
    max_p: float = 0.95
    floor: float = 0.01  # exploration floor on the keep probability
    sampling_factor: float = 1.5  # default sampling batch / training batch (384 / 256)
    min_sampling_factor: float = 0.25  # smallest adaptive sampling batch (64 / 256)
    chunk_factor: float = 0.125  # dataloader batch / training batch (32 / 256)
    estimate_inflation: float = 1.25
    max_gen_rounds: int = 10
    group_size: int = 0  # 0: budget // prompts_per_step (>= 2)
    history: int = 64  # visits kept per prompt for the streaks
    scale_by_std: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not (
            0 < self.min_p <= self.p_easy <= self.max_p <= 1
            and self.min_p <= self.p_hard <= self.max_p
        ):
            raise ValueError("need 0 < min_p <= p_easy, p_hard <= max_p <= 1")
        if self.sampling_factor <= 0 or self.chunk_factor <= 0 or self.min_sampling_factor <= 0:
            raise ValueError("sampling, chunk and min sampling factors must be > 0")
        if self.max_gen_rounds < 1 or self.history < 1 or self.group_size < 0:
            raise ValueError("need max_gen_rounds >= 1, history >= 1, group_size >= 0")


class Greso(Allocator):
    name = "greso"
    Config = GresoConfig
    caps = Capabilities(spend="own", min_rollouts_per_prompt=2)

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        self.stats = PromptStats(num_prompts, reward_buffer=0, visit_window=self.config.history)
        self.p_easy = self.config.p_easy
        self.p_hard = self.config.p_hard
        self._sampled = self._easy = self._hard = 0
        self._epoch = 0

    def group_size(self, step: Step) -> int:
        n = self.config.group_size
        return n if n > 0 else max(2, step.budget // step.prompts_per_step)

    def _candidates(
        self, step: Step, k: int, chunk: int, taken: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """Filtered prompts, drawn chunk by chunk until at least ``k`` pass; also the number
        skipped."""
        s = self.stats
        parts, have, skipped = [], 0, 0
        while have < k:
            ids = take_distinct(step, chunk, taken)
            if ids.size == 0:
                break
            easy, hard = streaks(ids, s.win_n, s.win_s, s.win_pos, s.win_fill)
            u = self.rng.random((2, ids.size))
            skip = skip_mask(easy, hard, u[0], u[1], self.p_easy, self.p_hard, self.config.floor)
            taken[ids[skip]] = False  # skipped prompts are not in the batch
            keep = ids[~skip]
            parts.append(keep)
            have += keep.size
            skipped += int(skip.sum())
        return (np.concatenate(parts) if parts else np.zeros(0, np.int64)), skipped

    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        c = self.config
        target = step.prompts_per_step
        n = self.group_size(step)
        default_bs = max(1, int(round(c.sampling_factor * target)))
        min_bs = max(1, int(round(c.min_sampling_factor * target)))
        chunk = max(1, int(round(c.chunk_factor * target)))
        taken = np.zeros(step.stream.num_prompts, np.bool_)
        sampling_bs = default_bs
        last = False
        kept_parts, n_kept, rounds, skipped = [], 0, 0, 0
        sampled = easy_total = hard_total = 0
        while True:
            ids, sk = self._candidates(step, sampling_bs, chunk, taken)
            skipped += sk
            if ids.size == 0:
                break
            groups = step.add_prompts(ids)
            s = step.sample(groups, np.full(groups.size, n, np.int64))
            rounds += 1
            mixed = mixed_groups(groups, s.group, s.rewards)
            e, h = extreme_groups(groups, s.group, s.rewards)
            sampled += groups.size
            easy_total += e
            hard_total += h
            kept_parts.append(groups[mixed])
            n_kept += int(mixed.sum())
            if n_kept >= target or last or rounds >= c.max_gen_rounds:
                break
            zero_var = 1.0 - mixed.sum() / groups.size
            if zero_var < 1.0:
                est = int((target - n_kept) / (1.0 - zero_var) * c.estimate_inflation)
            else:
                est = default_bs
            if est <= default_bs:
                last = True
            sampling_bs = max(min(est, default_bs), min_bs)
        batch, kept = train_kept_groups(step, kept_parts, target, c.scale_by_std)
        self._sampled, self._easy, self._hard = sampled, easy_total, hard_total
        self._epoch = step.stream.epoch
        info = {
            "gen_rounds": rounds,
            "skipped": skipped,
            "kept_groups": int(kept.size),
            "p_easy": self.p_easy,
            "p_hard": self.p_hard,
        }
        return batch, info

    def observe(self, result) -> None:
        super().observe(result)
        c = self.config
        if self._epoch > 0 and self._sampled > 0:
            easy_ratio = self._easy / self._sampled
            hard_ratio = self._hard / self._sampled
            if hard_ratio >= c.target_zero_variance * 2 / 3:
                self.p_hard = max(self.p_hard - c.adjust_step, c.min_p)
            else:
                self.p_hard = min(self.p_hard + c.adjust_step, c.max_p)
            if easy_ratio >= c.target_zero_variance / 3:
                self.p_easy = max(self.p_easy - c.adjust_step, c.min_p)
            else:
                self.p_easy = min(self.p_easy + c.adjust_step, c.max_p)
        self._sampled = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "p_easy": self.p_easy, "p_hard": self.p_hard}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.p_easy = float(state["p_easy"])
        self.p_hard = float(state["p_hard"])
