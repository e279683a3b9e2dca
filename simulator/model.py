"""The learning model and the simulated ``RolloutSource`` (design.md, simulator section)."""

from __future__ import annotations

import math

import numpy as np

from allocators.base import Samples, StepResult
from simulator import kernels
from simulator.scenarios import Scenario, World

_AGG = {"token-mean": 0, "seq-mean": 1, "seq-mean-token-mean": 2}
HIST_BINS = 10


class LearningModel:
    """Policy parameters θ (shared skills) and u (per-prompt memorisation) with their optimiser."""

    def __init__(self, scenario: Scenario, world: World):
        self.s = scenario
        self.w = world
        d = world.X.shape[1]
        self.theta = np.zeros(d)
        self.u = np.zeros(world.X.shape[0])
        self.m = np.zeros(d)
        self.v = np.zeros(d)
        self.t = 0
        self.agg = _AGG[scenario.loss_agg]
        self.ref_len = float(scenario.median_tokens)
        self.opt = 1 if scenario.optimizer == "adam" else 0
        self.lr = 0.0 if scenario.frozen else float(scenario.lr)
        self.lr_u = 0.0 if scenario.frozen else float(scenario.memorization_lr)
        self.hist_prompts = np.zeros(HIST_BINS, np.int64)
        self.hist_rollouts = np.zeros(HIST_BINS, np.int64)

    def success_rates(self, ids: np.ndarray) -> np.ndarray:
        """True current success rates of training prompts ``ids``."""
        return kernels.success_rates(np.asarray(ids, np.int64), self.w.X, self.theta, self.u,
                                     self.w.b)

    def test_accuracy(self) -> float:
        return kernels.mean_success(self.w.X_test, self.theta, self.w.b_test)

    def learn(self, r: StepResult) -> float:
        """Apply the step's policy-gradient update; returns the gradient norm."""
        self.t += 1
        s = r.samples
        tb = r.train
        return kernels.learn(r.prompt_ids, s.group, s.rewards, s.lengths, tb.index,
                             tb.advantages, tb.weights, r.counts.generated,
                             self.w.X, self.theta, self.u, self.w.b, self.agg, self.ref_len,
                             self.lr, self.lr_u, self.opt, self.m, self.v, self.t, 0.9, 0.999,
                             1e-8, self.hist_prompts, self.hist_rollouts)

    def take_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Allocation histogram since the last call: (prompts, rollouts) per true-rate decile."""
        out = self.hist_prompts.copy(), self.hist_rollouts.copy()
        self.hist_prompts[:] = 0
        self.hist_rollouts[:] = 0
        return out


class SimulatedSource:
    """``RolloutSource`` backed by Bernoulli draws from the learning model's current rates."""

    def __init__(self, model: LearningModel, rng: np.random.Generator, answers: bool = True):
        self.model = model
        self.rng = rng
        self.answers = answers
        s = model.s
        self._wrong_shift = math.log(s.wrong_length_factor)

    def sample(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        m, s = self.model, self.model.s
        pid, rew, length, ans = kernels.draw(
            self.rng, np.asarray(prompt_ids, np.int64), np.asarray(counts, np.int64),
            m.w.X, m.theta, m.u, m.w.b, m.w.log_len, self._wrong_shift,
            s.sample_length_sigma, s.max_tokens, self.answers, s.n_wrong_answers,
            s.wrong_answer_conc)
        return Samples(pid, rew, length, answers=ans)

    def true_success_rates(self, prompt_ids: np.ndarray) -> np.ndarray:
        """The simulator's ground truth (for oracle allocators and frozen-mode scoring)."""
        return self.model.success_rates(prompt_ids)
