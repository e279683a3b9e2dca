"""C-GRPO, conformal early stopping of per-prompt sampling (docs/methods.md#cgrpo; Fayyazi, OpenReview
``TrdqzzvFCs``; reference implementation PyPI ``trl-cgrpo`` 0.2.0, ``cgrpo_trainer.py``,
``conformal.py``, ``cgrpo_config.py``; TRL issue #7402).

Each prompt is sampled along the budget grid [2, 4, 8, 16, 32]: up to the first budget, then the
increment to the next, and so on; it stops at the first budget k whose split-conformal APS
prediction set over the extracted answers of its first k responses is a singleton, i.e. whose
most frequent answer has empirical mass ≥ q̂_k (the set takes answers by decreasing frequency
until their mass reaches q̂_k; it is a complete singleton iff the top answer alone reaches it).
Prompts never resolved use all 32. Every response of the training prompts trains, with verl's
GRPO advantage over the real responses (the TRL trainer pads stopped groups with masked NaN-reward
rows; here groups simply have their own size). ``eps`` = 1e-4 is TRL's std epsilon.

Calibration (``CGRPOTrainer.calibrate``), at the first step and every ``recalibrate_every`` = 50
steps, with the current policy:

- every calibration prompt is sampled max(grid) = 32 times; its score at budget k is the
  randomised APS score of the correct answer under the empirical answer distribution of its first
  k responses: the mass of answers ranked ahead of it (ties in random order) + U·p(correct),
  U ~ Uniform(0, 1); 1.0 if the correct answer is not among them;
- δ = (1 − solve rate) + ``delta_margin`` (0.05), clipped to [0.05, 0.95], the solve rate being
  the share of calibration prompts whose score at 32 is < 1 (answered correctly at least once in
  32); a fixed ``delta`` > 0 overrides it; ``split_delta`` picks δ on the first half and the
  thresholds on the second half;
- q̂_k = the ⌈(n + 1)(1 − δ)⌉-th smallest score at budget k (clamped to [1, n]).

Calibration data (the harness's choice; TRL takes a user-supplied held-out dataset): at reset,
``num_calibration`` = 128 prompts of the training pool are drawn at random and held out for good:
they are never trained on (``take_distinct`` skips them when the epoch stream serves them).
Calibration samples them through the same ``Step.sample`` as training, so their 128 × 32
responses count in the cost (rollouts and tokens) of the step in which calibration runs; they
enter the step's batch as extra groups with no trained response.

Answers. ``Samples.answers``: 0 = the correct answer, 1..K the others (the simulator's
distractors, ``simulator/kernels.py::draw``; the trainer's distinct extracted answers per prompt,
``trainers/source.py``), ``NO_ANSWER`` (−1) a response whose answer could not be extracted: as in
``trl-cgrpo``'s ``conformal.py`` (empty strings), it counts in k but carries no probability mass,
so it never forms a singleton of its own. A source without answers (``answers is None``) falls back to the
reward as the answer (correct vs. "wrong"), which makes the set a singleton when the responses
agree on correctness.

Budget: the method decides its own spend (``spend="own"``; 2 to 32 per prompt plus the
calibration rounds); the step budget is ignored. The kernels count answers per group and test the
stopping rule per group; Python loops only over the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from allocators._prompts import take_distinct
from allocators.advantages import group_normalized
from allocators.base import Allocator, AllocatorConfig, Capabilities, Samples, Step, TrainBatch


@njit(cache=True)
def add_answers(counts, group, answers, offset):
    """counts[group − offset, answer] += 1 for each response with an extracted answer (a failed
    extraction, ``NO_ANSWER``, carries no mass)."""
    for j in range(group.shape[0]):
        if answers[j] >= 0:
            counts[group[j] - offset, answers[j]] += 1


@njit(cache=True)
def singleton(active, counts, offset, k, qhat):
    """Per active group: is the APS set of its first ``k`` answers a complete singleton, i.e. does
    its most frequent extracted answer have mass (count / k, failed extractions in k) ≥ q̂? No
    extracted answer: an empty set, never a singleton (``conformal.py::resolves_singleton``)."""
    out = np.zeros(active.shape[0], np.bool_)
    for a in range(active.shape[0]):
        row = counts[active[a] - offset]
        top = 0
        for v in range(row.shape[0]):
            if row[v] > top:
                top = row[v]
        out[a] = top > 0 and top / k >= qhat
    return out


@njit(cache=True)
def aps_scores(answers, grid, u_mass, u_tie, width):
    """Randomised APS score of the correct answer (0) for each calibration prompt (rows of
    ``answers``, in generation order) at each budget of ``grid``: mass of the answers ranked ahead
    (more frequent, or tied and drawn ahead) + U·p(correct); 1.0 if the correct answer is absent.
    Failed extractions (``NO_ANSWER``) count in k but carry no mass and rank nowhere."""
    m = answers.shape[0]
    out = np.ones((m, grid.shape[0]))
    counts = np.zeros(width, np.int64)
    for i in range(m):
        counts[:] = 0
        drawn = 0
        for b in range(grid.shape[0]):
            k = grid[b]
            while drawn < k:
                if answers[i, drawn] >= 0:
                    counts[answers[i, drawn]] += 1
                drawn += 1
            c0 = counts[0]
            if c0 == 0:
                out[i, b] = 1.0
                continue
            ahead = 0
            ties = 0
            for v in range(1, width):
                if counts[v] > c0:
                    ahead += counts[v]
                elif counts[v] == c0:
                    ties += 1
            # the correct answer's rank among the ``ties + 1`` tied answers is uniform
            tied_ahead = int(u_tie[i, b] * (ties + 1))
            if tied_ahead > ties:
                tied_ahead = ties
            mass = (ahead + tied_ahead * c0) / k
            out[i, b] = min(mass + u_mass[i, b] * c0 / k, 1.0)
    return out


@njit(cache=True)
def calibration_rows(group, answers, offset, m, width_k):
    """The calibration responses as an (m, k) matrix in generation order per prompt."""
    out = np.zeros((m, width_k), np.int64)
    fill = np.zeros(m, np.int64)
    for j in range(group.shape[0]):
        g = group[j] - offset
        out[g, fill[g]] = answers[j]
        fill[g] += 1
    return out


def conformal_quantile(scores: np.ndarray, delta: float) -> float:
    """The ⌈(n + 1)(1 − δ)⌉-th smallest score (clamped to [1, n]); 1.0 without scores."""
    s = np.sort(np.asarray(scores, float))
    n = s.size
    if n == 0:
        return 1.0
    idx = math.ceil((n + 1) * (1.0 - delta))
    return float(s[min(max(idx, 1), n) - 1])


def answers_of(samples: Samples) -> np.ndarray:
    if samples.answers is None:  # validate() refuses such a source before a run starts
        raise RuntimeError("cgrpo needs the extracted answers of the rollout source")
    return np.asarray(samples.answers, np.int64)


@dataclass
class CgrpoConfig(AllocatorConfig):
    bounds = {
        "delta": (0.0, 1.0),
        "delta_margin": (0.0, 1.0),
        "recalibrate_every": (0, 10_000_000),
        "num_calibration": (1, 10_000_000),
        "eps": (0.0, 1.0),
    }

    budget_grid: str = "2,4,8,16,32"  # ascending budgets (comma-separated)
    delta: float = 0.0  # 0: automatic from the solve rate
    delta_margin: float = 0.05
    split_delta: bool = False
    recalibrate_every: int = 50  # 0: calibrate once
    num_calibration: int = 128  # held-out training prompts
    eps: float = 1e-4  # TRL's std epsilon
    scale_by_std: bool = True

    def grid(self) -> np.ndarray:
        return np.array(
            sorted(int(x) for x in str(self.budget_grid).split(",") if x.strip()), np.int64
        )

    def __post_init__(self):
        super().__post_init__()
        try:
            g = self.grid()
        except ValueError:
            raise ValueError(
                f"budget_grid must be comma-separated integers, got {self.budget_grid!r}"
            ) from None
        if g.size == 0 or g[0] < 1 or np.unique(g).size != g.size:
            raise ValueError(
                f"budget_grid must be distinct positive integers, got {self.budget_grid!r}"
            )
        if not 0.0 <= self.delta < 1.0:
            raise ValueError("delta must be in [0, 1) (0: automatic)")
        if self.recalibrate_every < 0 or self.num_calibration < 1:
            raise ValueError("need recalibrate_every >= 0 and num_calibration >= 1")


class Cgrpo(Allocator):
    name = "cgrpo"
    Config = CgrpoConfig
    caps = Capabilities(spend="own", min_rollouts_per_prompt=1, needs=frozenset({"answers"}))

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        k = min(self.config.num_calibration, max(1, num_prompts // 10))
        self.calibration_ids = np.sort(rng.choice(num_prompts, size=k, replace=False))
        self.held_out = np.zeros(num_prompts, np.bool_)
        self.held_out[self.calibration_ids] = True
        self.qhats: np.ndarray | None = None
        self.delta = float("nan")
        self.solve_rate = float("nan")
        self._last_calibration = 0

    # -- calibration -------------------------------------------------------------------------
    def _due(self, step: Step) -> bool:
        if self.qhats is None:
            return True
        every = self.config.recalibrate_every
        return every > 0 and step.index - self._last_calibration >= every

    def calibrate(self, step: Step) -> None:
        c = self.config
        grid = c.grid()
        k_max = int(grid[-1])
        groups = step.add_prompts(self.calibration_ids)
        s = step.sample(groups, np.full(groups.size, k_max, np.int64))
        ans = answers_of(s)
        rows = calibration_rows(s.group, ans, int(groups[0]), groups.size, k_max)
        width = max(int(ans.max()) + 1, 1) if ans.size else 1
        u = self.rng.random((2, groups.size, grid.size))
        scores = aps_scores(rows, grid, u[0], u[1], width)
        n = groups.size
        d_rows = q_rows = np.arange(n)
        if c.delta == 0.0 and c.split_delta and n >= 2:
            d_rows, q_rows = np.arange(n // 2), np.arange(n // 2, n)
        if c.delta == 0.0:
            solve = float((scores[d_rows, -1] < 1.0 - 1e-9).mean())
            self.delta = float(np.clip(1.0 - solve + c.delta_margin, 0.05, 0.95))
            self.solve_rate = solve
        else:
            self.delta = c.delta
        self.qhats = np.array(
            [conformal_quantile(scores[q_rows, b], self.delta) for b in range(grid.size)]
        )
        self._last_calibration = step.index

    # -- the step ----------------------------------------------------------------------------
    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        c = self.config
        calibrated = self._due(step)
        if calibrated:
            self.calibrate(step)
        grid = c.grid()
        taken = self.held_out.copy()
        ids = take_distinct(step, step.prompts_per_step, taken)
        groups = step.add_prompts(ids)
        offset = int(groups[0]) if groups.size else 0
        counts = np.zeros((groups.size, 2), np.int64)
        active = groups
        drawn = 0
        used = np.full(groups.size, int(grid[-1]), np.int64)
        for b in range(grid.size):
            k = int(grid[b])
            need = k - drawn
            if need > 0 and active.size:
                s = step.sample(active, np.full(active.size, need, np.int64))
                ans = answers_of(s)
                top = int(ans.max()) + 1 if ans.size else 0
                if top > counts.shape[1]:
                    counts = np.pad(counts, ((0, 0), (0, top - counts.shape[1])))
                add_answers(counts, s.group, ans, offset)
            drawn = k
            if active.size == 0:
                break
            assert self.qhats is not None  # calibrated above
            done = singleton(active, counts, offset, k, self.qhats[b])
            used[active[done] - offset] = k
            active = active[~done]
        samples = step.samples
        train_group = np.zeros(step.num_groups, np.bool_)
        train_group[groups] = True
        index = np.flatnonzero(train_group[samples.group]).astype(np.int64)
        adv = group_normalized(
            samples.group[index], samples.rewards[index], step.num_groups, c.eps, c.scale_by_std
        )
        info = {
            "mean_k": float(used.mean()) if used.size else 0.0,
            "calibrated": int(calibrated),
            "delta": self.delta,
            "solve_rate": self.solve_rate,
            "unresolved": int(active.size),
        }
        return TrainBatch(index, adv, np.ones(index.size)), info

    def state_dict(self) -> dict:
        return {
            "calibration_ids": self.calibration_ids.copy(),
            "qhats": None if self.qhats is None else self.qhats.copy(),
            "delta": self.delta,
            "solve_rate": self.solve_rate,
            "last_calibration": self._last_calibration,
        }

    def load_state_dict(self, state: dict) -> None:
        self.calibration_ids = np.asarray(state["calibration_ids"], np.int64)
        self.held_out[:] = False
        self.held_out[self.calibration_ids] = True
        self.qhats = None if state["qhats"] is None else np.asarray(state["qhats"], float)
        self.delta = float(state["delta"])
        self.solve_rate = float(state["solve_rate"])
        self._last_calibration = int(state["last_calibration"])
