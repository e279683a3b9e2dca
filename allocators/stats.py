"""Per-prompt reward statistics: the one place every method reads its estimates from.

``PromptStats`` records every reward a prompt has received (trained or not) and serves the
estimators the methods use (docs/methods.md#per-prompt-statistics):

| estimator                | used by                          | method                    |
|--------------------------|----------------------------------|---------------------------|
| last visit               | Knapsack RL (docs/methods.md#knapsack, robust mode)  | ``last_visit``            |
| last k rewards           | Knapsack RL (docs/methods.md#knapsack, window 16)    | ``last_k``                |
| sliding window of visits | CoBA-RL (docs/methods.md#coba, window W visits)  | ``window``                |
| EMA counts + Beta prior  | Reinforce-Ada-Est (docs/methods.md#ada-est)         | ``ema``                   |
| visits / counts          | validity rules, GRESO histories  | ``count``, ``visits``     |

A reward counts as a success when it is > 0.5 (rewards are binary by contract). Estimates of a
prompt with no data are NaN; each method decides what an unseen prompt means (Knapsack: invalid,
CoBA: 0.5, ...). Storage is bounded: the last ``reward_buffer`` rewards and the last
``visit_window`` visits of each prompt, plus running totals and the EMA counts.
"""

from __future__ import annotations

import numpy as np

from allocators._kernels import last_k_mean, stats_update, window_sums


class PromptStats:
    def __init__(
        self,
        num_prompts: int,
        reward_buffer: int = 16,
        visit_window: int = 3,
        ema_decay: float = 0.9,
    ):
        if reward_buffer < 0 or visit_window < 0:
            raise ValueError("reward_buffer and visit_window must be >= 0")
        p = int(num_prompts)
        self.num_prompts = p
        self.reward_buffer = int(reward_buffer)
        self.visit_window = int(visit_window)
        self.ema_decay = float(ema_decay)
        self.count = np.zeros(p, np.int64)  # rewards seen in total
        self.success = np.zeros(p, np.int64)  # successes seen in total
        self.visits = np.zeros(p, np.int64)  # steps in which the prompt was sampled
        self.last_step = np.full(p, -1, np.int64)  # step of the latest visit (-1: never)
        self.last_n = np.zeros(p, np.int64)  # rewards in the latest visit
        self.last_s = np.zeros(p, np.int64)  # successes in the latest visit
        self.ring = np.zeros((p, self.reward_buffer), np.int8)
        self.ring_pos = np.zeros(p, np.int64)
        self.ring_fill = np.zeros(p, np.int64)
        self.win_n = np.zeros((p, self.visit_window), np.int64)
        self.win_s = np.zeros((p, self.visit_window), np.int64)
        self.win_pos = np.zeros(p, np.int64)
        self.win_fill = np.zeros(p, np.int64)
        self.ema_n = np.zeros(p)
        self.ema_s = np.zeros(p)

    # -- update ------------------------------------------------------------------------------
    def update(
        self, prompt_ids: np.ndarray, group: np.ndarray, rewards: np.ndarray, step: int
    ) -> None:
        """Record one step: ``prompt_ids`` per group, ``group`` and ``rewards`` per sample (in
        generation order, which is the order the last-k buffer keeps)."""
        stats_update(
            np.asarray(prompt_ids, np.int64),
            group,
            rewards,
            int(step),
            self.count,
            self.success,
            self.visits,
            self.last_step,
            self.last_n,
            self.last_s,
            self.ring,
            self.ring_pos,
            self.ring_fill,
            self.win_n,
            self.win_s,
            self.win_pos,
            self.win_fill,
            self.ema_n,
            self.ema_s,
            self.ema_decay,
        )

    def observe(self, result) -> None:
        """Record a finished ``StepResult`` (every sample generated, trained or not)."""
        s = result.samples
        self.update(result.prompt_ids, s.group, s.rewards, result.step)

    # -- estimators --------------------------------------------------------------------------
    def seen(self, ids: np.ndarray) -> np.ndarray:
        return self.count[ids] > 0

    def last_visit(self, ids: np.ndarray) -> np.ndarray:
        """Success rate of the latest visit (NaN if never visited)."""
        n = self.last_n[ids]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.last_s[ids] / np.maximum(n, 1), np.nan)

    def last_k(self, ids: np.ndarray, k: int | None = None) -> np.ndarray:
        """Mean of the most recent ``k`` rewards (default: the whole buffer), newest first across
        visits; fewer if fewer were seen; NaN if none."""
        k = self.reward_buffer if k is None else int(k)
        if k > self.reward_buffer:
            raise ValueError(f"last_k({k}) exceeds the reward buffer ({self.reward_buffer})")
        return last_k_mean(np.asarray(ids, np.int64), k, self.ring, self.ring_pos, self.ring_fill)

    def window_counts(
        self, ids: np.ndarray, visits: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(successes, totals) summed over the latest ``visits`` visits (default: the whole
        window)."""
        w = self.visit_window if visits is None else int(visits)
        if w > self.visit_window:
            raise ValueError(f"window({w}) exceeds the visit window ({self.visit_window})")
        return window_sums(
            np.asarray(ids, np.int64), w, self.win_n, self.win_s, self.win_pos, self.win_fill
        )

    def window(self, ids: np.ndarray, visits: int | None = None) -> np.ndarray:
        """Σ successes / Σ rewards over the latest ``visits`` visits; NaN if never visited."""
        s, n = self.window_counts(ids, visits)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.maximum(n, 1), np.nan)

    def ema(self, ids: np.ndarray, alpha: float = 1.0, beta: float = 16.0) -> np.ndarray:
        """Posterior mean (N_pos + α) / (N_tot + α + β) of the EMA counts (decay per visit);
        the prior mean α/(α+β) for an unseen prompt."""
        return (self.ema_s[ids] + alpha) / (self.ema_n[ids] + alpha + beta)

    # -- checkpointing -----------------------------------------------------------------------
    _ARRAYS = (
        "count",
        "success",
        "visits",
        "last_step",
        "last_n",
        "last_s",
        "ring",
        "ring_pos",
        "ring_fill",
        "win_n",
        "win_s",
        "win_pos",
        "win_fill",
        "ema_n",
        "ema_s",
    )

    def state_dict(self) -> dict:
        return {name: getattr(self, name).copy() for name in self._ARRAYS}

    def load_state_dict(self, state: dict) -> None:
        for name in self._ARRAYS:
            arr = getattr(self, name)
            arr[...] = np.asarray(state[name], arr.dtype)
