"""The learning model (the simulator's ``Learner``) and the simulated ``RolloutSource``
(docs/simulator.md).

Both run the one-step (logistic) kernels, or the chain model's (``kernels.chain_*``,
docs/simulator.md#the-chain-model) when the world has chain steps (``steps_per_prompt`` > 1) or
``LearningModel(..., chain=True)`` asks for them on a one-step world (its trivial layout, one
step per prompt: the same numbers by another path, which the tests use to prove the two agree).
"""

from __future__ import annotations

import math

import numpy as np

from allocators.advantages import GRPO_EPS
from allocators.base import Samples, StepResult
from allocators.loop import Histogram
from simulator import kernels
from simulator.scenarios import Scenario, World

_AGG = {"token-mean": 0, "seq-mean": 1, "seq-mean-token-mean": 2}
# Learning runs compute the allocation moments on every this-many-th step only (their exact
# sums over the binomial cost about 5% of a uniform step; frozen runs, which the oracle ratios
# score, compute them every step).
MOMENTS_STRIDE = 10

Layout = tuple[np.ndarray, np.ndarray, np.ndarray]  # (step_start, Xs, bs) of the chain kernels


def chain_layouts(world: World) -> tuple[Layout, Layout]:
    """The (train, test) step layouts of the chain kernels: the world's chain steps, or for a
    one-step world its trivial layout (step_start = 0, 1, .., n; Xs = X; bs = b)."""
    if world.step_start is not None:
        assert world.Xs is not None and world.bs is not None
        assert world.step_start_test is not None and world.Xs_test is not None
        assert world.bs_test is not None
        return (world.step_start, world.Xs, world.bs), (
            world.step_start_test,
            world.Xs_test,
            world.bs_test,
        )

    def trivial(X: np.ndarray, b: np.ndarray) -> Layout:
        return np.arange(X.shape[0] + 1, dtype=np.int64), X, b

    return trivial(world.X, world.b), trivial(world.X_test, world.b_test)


class LearningModel:
    """Policy parameters θ (shared skills) and u (per-prompt memorisation) with their optimiser."""

    def __init__(self, scenario: Scenario, world: World, chain: bool | None = None):
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
        self.hist = Histogram()
        self.x_sq = np.einsum("ij,ij->i", world.X, world.X)  # ‖x_i‖², for allocation_moments
        # the chain model's kernels: when the world has chain steps, or when asked to
        self.chain = world.step_start is not None if chain is None else bool(chain)
        self.steps: Layout | None = None
        self.steps_test: Layout | None = None
        if self.chain:
            self.steps, self.steps_test = chain_layouts(world)

    def success_rates(self, ids: np.ndarray) -> np.ndarray:
        """True current success rates of training prompts ``ids``."""
        ids = np.asarray(ids, np.int64)
        if self.steps is not None:
            start, Xs, bs = self.steps
            return kernels.chain_success_rates(ids, start, Xs, self.theta, self.u, bs)
        return kernels.success_rates(ids, self.w.X, self.theta, self.u, self.w.b)

    def directions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p, E): the rates of training prompts ``ids`` and their score directions for θ, one row
        per prompt: a sample's ∇_θ log π(r) is (r − p_i)·E_i. E_i = x_i in the one-step model,
        Σ_j (1 − σ_ij)·x_ij/(1 − p_i) in the chain model (``kernels.chain_directions``)."""
        ids = np.asarray(ids, np.int64)
        if self.steps is not None:
            start, Xs, bs = self.steps
            p, E, _ = kernels.chain_directions(ids, start, Xs, self.theta, self.u, bs)
            return p, E
        return self.success_rates(ids), self.w.X[ids]

    def test_accuracy(self) -> float:
        if self.steps_test is not None:
            start, Xs, bs = self.steps_test
            return kernels.chain_mean_success(start, Xs, self.theta, bs)
        return kernels.mean_success(self.w.X_test, self.theta, self.w.b_test)

    def evaluate(self) -> float:
        """Test accuracy, exact (no sampling)."""
        return self.test_accuracy()

    def reference_length(self) -> tuple[float, int]:
        """Expected response tokens of one rollout under the initial policy, over the training
        pool, exactly (log-normal lengths capped at ``max_tokens``, wrong answers
        ``wrong_length_factor`` longer), and the cap."""
        from scipy.stats import norm

        s, w = self.s, self.w
        sig, cap = s.sample_length_sigma, float(s.max_tokens)
        p0 = 1.0 / (1.0 + np.exp(w.b))

        def capped_mean(mu: np.ndarray) -> np.ndarray:
            if sig == 0:
                return np.minimum(np.exp(mu), cap)
            lc = math.log(cap)
            return np.exp(mu + sig**2 / 2) * norm.cdf((lc - mu - sig**2) / sig) + cap * (
                1 - norm.cdf((lc - mu) / sig)
            )

        ok = capped_mean(w.log_len)
        wrong = capped_mean(w.log_len + math.log(s.wrong_length_factor))
        return float(np.mean(p0 * ok + (1 - p0) * wrong)), int(s.max_tokens)

    def learn(self, r: StepResult) -> dict[str, float]:
        """Apply the step's policy-gradient update; returns its gradient norm, and the expected
        informative groups and exact GRPO gradient variance of the step's allocation at the
        rates it was sampled at (``allocation_moments``, docs/simulator.md#metrics): every step
        of a frozen run, every ``MOMENTS_STRIDE``-th of a learning run (NaN in between)."""
        informative = variance = float("nan")
        if self.s.frozen or r.step % MOMENTS_STRIDE == 0:
            informative, variance = self.allocation_moments(r.prompt_ids, r.counts.generated)
        return {
            "grad_norm": self.update(r),
            "expected_informative_groups": informative,
            "pg_variance": variance,
        }

    def allocation_moments(
        self, prompt_ids: np.ndarray, generated: np.ndarray
    ) -> tuple[float, float]:
        """(Σ_g 1 − p^n − (1 − p)^n, tr Cov of the GRPO θ-gradient) for ``generated[g]`` rollouts
        of ``prompt_ids[g]`` at the current true rates (``kernels.allocation_moments``, or
        ``chain_allocation_moments``: the variance then weighs each group by ‖e_i‖²)."""
        if self.steps is not None:
            start, Xs, bs = self.steps
            return kernels.chain_allocation_moments(
                np.asarray(prompt_ids, np.int64),
                np.asarray(generated, np.int64),
                start,
                Xs,
                self.theta,
                self.u,
                bs,
                GRPO_EPS,
            )
        return kernels.allocation_moments(
            np.asarray(prompt_ids, np.int64),
            np.asarray(generated, np.int64),
            self.w.X,
            self.x_sq,
            self.theta,
            self.u,
            self.w.b,
            GRPO_EPS,
        )

    def update(self, r: StepResult) -> float:
        """Apply the step's policy-gradient update; returns the gradient norm."""
        self.t += 1
        s = r.samples
        tb = r.train
        if self.steps is not None:
            start, Xs, bs = self.steps
            return kernels.chain_learn(
                r.prompt_ids,
                s.group,
                s.rewards,
                s.lengths,
                tb.index,
                tb.advantages,
                tb.weights,
                r.counts.generated,
                start,
                Xs,
                self.theta,
                self.u,
                bs,
                self.agg,
                self.ref_len,
                self.lr,
                self.lr_u,
                self.opt,
                self.m,
                self.v,
                self.t,
                0.9,
                0.999,
                1e-8,
                self.hist.prompts,
                self.hist.rollouts,
            )
        return kernels.learn(
            r.prompt_ids,
            s.group,
            s.rewards,
            s.lengths,
            tb.index,
            tb.advantages,
            tb.weights,
            r.counts.generated,
            self.w.X,
            self.theta,
            self.u,
            self.w.b,
            self.agg,
            self.ref_len,
            self.lr,
            self.lr_u,
            self.opt,
            self.m,
            self.v,
            self.t,
            0.9,
            0.999,
            1e-8,
            self.hist.prompts,
            self.hist.rollouts,
        )

    def take_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Allocation histogram since the last call: (prompts, rollouts) per true-rate decile."""
        return self.hist.take()


class SimulatedSource:
    """``RolloutSource`` backed by Bernoulli draws from the learning model's current rates; it
    also has the extracted answers, per-prompt gradients (CROPI's ``GradientSource``), each
    response's gradient norm (GVM's ``grad_norms``) and the true rates."""

    provides = frozenset({"answers", "gradients", "grad_norms", "true_rates"})

    def __init__(self, model: LearningModel, rng: np.random.Generator):
        self.model = model
        self.rng = rng
        s = model.s
        self._wrong_shift = math.log(s.wrong_length_factor)
        self._zero_u_test: np.ndarray | None = None
        self._x_norms: np.ndarray | None = None

    def begin_step(self, index: int) -> None:
        """Nothing to do: the draws come from one generator for the whole run."""

    def sample(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        m, s = self.model, self.model.s
        prompt_ids = np.asarray(prompt_ids, np.int64)
        counts = np.asarray(counts, np.int64)
        if m.steps is not None:
            start, Xs, bs = m.steps
            _, rew, length, ans = kernels.chain_draw(
                self.rng,
                prompt_ids,
                counts,
                start,
                Xs,
                m.theta,
                m.u,
                bs,
                m.w.log_len,
                self._wrong_shift,
                s.sample_length_sigma,
                s.max_tokens,
                True,
                s.n_wrong_answers,
                s.wrong_answer_conc,
            )
            return Samples.from_request(prompt_ids, counts, rew, length, answers=ans)
        _, rew, length, ans = kernels.draw(
            self.rng,
            prompt_ids,
            counts,
            m.w.X,
            m.theta,
            m.u,
            m.w.b,
            m.w.log_len,
            self._wrong_shift,
            s.sample_length_sigma,
            s.max_tokens,
            True,
            s.n_wrong_answers,
            s.wrong_answer_conc,
        )
        return Samples.from_request(prompt_ids, counts, rew, length, answers=ans)

    def grad_norms(self, samples: Samples) -> np.ndarray:
        """‖∇_θ log π_θ(y|x)‖ of each response at the current policy, exactly: under the logistic
        model a response is its reward, log π(r) = r log p + (1 − r) log(1 − p), whose gradient
        w.r.t. θ is (r − p)·x, so the norm is |r − p|·‖x‖ (the shared parameters θ only, as
        ``prompt_gradients``; GVM's ``em/stage_2_calc_acceptRates_grads.py`` takes the norm of
        the gradient of −log π(y|x) w.r.t. one parameter tensor, ``embed_tokens``).
        Under the chain model ∇_θ log π(r) = (r − p_i)·e_i, so the norm is |r − p_i|·‖e_i‖ at the
        current θ and u (``LearningModel.directions``)."""
        ids = np.asarray(samples.prompt_ids, np.int64)
        rewards = np.asarray(samples.rewards, np.float64)
        if self.model.chain:
            uniq, inv = np.unique(ids, return_inverse=True)
            p, E = self.model.directions(uniq)
            return np.abs(rewards - p[inv]) * np.linalg.norm(E, axis=1)[inv]
        if self._x_norms is None:
            self._x_norms = np.linalg.norm(self.model.w.X, axis=1)
        p = self.model.success_rates(ids)
        return np.abs(rewards - p) * self._x_norms[ids]

    def true_success_rates(self, prompt_ids: np.ndarray) -> np.ndarray:
        """The simulator's ground truth (for oracle allocators and frozen-mode scoring)."""
        return self.model.success_rates(prompt_ids)

    # -- per-prompt gradients: CROPI's ``GradientSource`` (allocators/cropi.py, docs/methods.md#cropi) ----------
    # A prompt's samples are summarised by their rewards: under the logistic model the score of a
    # sample is (r − p)·x for θ, and π(r) = p^r (1 − p)^(1 − r) is its probability. Gradients
    # are taken w.r.t. the shared parameters θ only (d coordinates): the memorisation term u_i
    # belongs to one training prompt and validation (test) prompts have none, so its coordinates
    # would be orthogonal to every target and only rescale a prompt's gradient norm.
    @property
    def grad_dim(self) -> int:
        return int(self.model.w.X.shape[1])

    def validation_sets(self) -> dict[str, np.ndarray]:
        """Named validation sets: indices into the test set (``World.validation``)."""
        return {k: v.copy() for k, v in self.model.w.validation.items()}

    def _split(self, split: str):
        """(X, u, b) of a split, or under the chain model (step_start, Xs, u, bs)."""
        w, m = self.model.w, self.model
        if split == "train":
            if m.steps is not None:
                return m.steps[0], m.steps[1], m.u, m.steps[2]
            return w.X, m.u, w.b
        if split == "validation":
            if self._zero_u_test is None or self._zero_u_test.size != w.X_test.shape[0]:
                self._zero_u_test = np.zeros(w.X_test.shape[0])
            if m.steps_test is not None:
                start, Xs, bs = m.steps_test
                return start, Xs, self._zero_u_test, bs
            return w.X_test, self._zero_u_test, w.b_test
        raise ValueError(f"split must be 'train' or 'validation', not {split!r}")

    def sample_validation(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        """Rollouts of validation (test) prompts by the current policy. Lengths use the
        scenario's median (test prompts have no length model); answers are not drawn."""
        m, s = self.model, self.model.s
        prompt_ids = np.asarray(prompt_ids, np.int64)
        counts = np.asarray(counts, np.int64)
        log_len = np.full(m.w.X_test.shape[0], math.log(s.median_tokens))
        if m.chain:
            start, Xs, u, bs = self._split("validation")
            _, rew, length, _ = kernels.chain_draw(
                self.rng,
                prompt_ids,
                counts,
                start,
                Xs,
                m.theta,
                u,
                bs,
                log_len,
                self._wrong_shift,
                s.sample_length_sigma,
                s.max_tokens,
                False,
                0,
                1.0,
            )
            return Samples.from_request(prompt_ids, counts, rew, length)
        X, u, b = self._split("validation")
        _, rew, length, _ = kernels.draw(
            self.rng,
            prompt_ids,
            counts,
            X,
            m.theta,
            u,
            b,
            log_len,
            self._wrong_shift,
            s.sample_length_sigma,
            s.max_tokens,
            False,
            0,
            1.0,
        )
        return Samples.from_request(prompt_ids, counts, rew, length)

    def log_probs(self, samples: Samples, counts: np.ndarray, split: str = "train") -> np.ndarray:
        """log π_θ(r) of each sample under the current policy (the behaviour log-probability
        when called right after sampling). Samples are grouped: ``counts[k]`` per prompt."""
        counts = np.asarray(counts, np.int64)
        rewards = np.asarray(samples.rewards, np.float64)
        ids = self._group_ids(samples, counts)
        theta = self.model.theta
        if self.model.chain:
            start, Xs, u, bs = self._split(split)
            return kernels.chain_sample_log_probs(ids, counts, rewards, start, Xs, theta, u, bs)
        X, u, b = self._split(split)
        return kernels.sample_log_probs(ids, counts, rewards, X, theta, u, b)

    def prompt_gradients(
        self,
        samples: Samples,
        counts: np.ndarray,
        behaviour: np.ndarray,
        split: str = "train",
        adv_eps: float = 1e-4,
    ) -> np.ndarray:
        """Per-prompt gradient of the off-policy GRPO loss at the current θ, one row per prompt
        (``kernels.offpolicy_grpo_gradients``): importance ratio π_θ(r)/π_β(r), unclipped."""
        counts = np.asarray(counts, np.int64)
        ids = self._group_ids(samples, counts)
        if self.model.chain:
            start, Xs, u, bs = self._split(split)
            return kernels.chain_offpolicy_grpo_gradients(
                ids,
                counts,
                np.asarray(samples.rewards, np.float64),
                np.asarray(behaviour, np.float64),
                start,
                Xs,
                self.model.theta,
                u,
                bs,
                float(adv_eps),
            )
        X, u, b = self._split(split)
        return kernels.offpolicy_grpo_gradients(
            ids,
            counts,
            np.asarray(samples.rewards, np.float64),
            np.asarray(behaviour, np.float64),
            X,
            self.model.theta,
            u,
            b,
            float(adv_eps),
        )

    @staticmethod
    def _group_ids(samples: Samples, counts: np.ndarray) -> np.ndarray:
        if counts.sum() != len(samples) or (counts.size and counts.min() < 1):
            raise ValueError("counts must be positive and add up to the number of samples")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return np.asarray(samples.prompt_ids, np.int64)[starts]
