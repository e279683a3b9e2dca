"""Scenarios: named presets of the simulated training set, policy and learner.

A scenario fixes the prompt pool (size, feature dimension, initial pass-rate distribution,
transfer strength), the learner (optimiser, learning rates, loss aggregation) and the length
model. ``build_world`` turns it and a seed into arrays.

Features. x_i = (ρ·|g_i| + √(1−ρ²)·h_i) / √d with g_i, h_i ~ N(0, I_d): ρ ("transfer") is the
share of skills every prompt draws on positively, so learning on one prompt raises the others;
the rest is prompt-specific and can interfere. θ starts at 0, so the initial success rate is
σ(−b_i) and b_i = −logit(p0_i) reproduces the initial pass-rate distribution exactly.
Held-out test prompts are drawn from the same distributions without a memorisation term.

Lengths. log L ~ N(log median_i, σ) with a per-prompt median (log-normal across prompts, longer
for initially harder prompts); wrong answers are ``wrong_length_factor`` times longer; capped at
``max_tokens``.

Answers (for answer-level methods such as C-GRPO). A correct sample answers 0; a wrong one picks
one of ``n_wrong_answers`` distractors with probability ∝ 1/k^``wrong_answer_conc``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    calibration: str
    num_prompts: int = 17_398
    num_test: int = 1_024
    dim: int = 64
    # initial pass rates: mixture of Beta(a, b) components, (weight, a, b)
    pass_rate_mixture: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 1.0),)
    transfer: float = 0.15
    # learner
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 1.0
    memorization_lr: float = 300.0
    loss_agg: Literal["token-mean", "seq-mean", "seq-mean-token-mean"] = "token-mean"
    # lengths
    median_tokens: float = 1_200.0
    prompt_length_sigma: float = 0.35
    difficulty_length_slope: float = 0.6
    wrong_length_factor: float = 1.6
    sample_length_sigma: float = 0.3
    max_tokens: int = 4_096
    # answers
    n_wrong_answers: int = 8
    wrong_answer_conc: float = 1.0
    # the accuracy whose crossing the rollouts_to_target metric reports
    target_accuracy: float = 0.6
    frozen: bool = False

    def resolved(self) -> dict:
        d = asdict(self)
        d["pass_rate_mixture"] = [list(c) for c in self.pass_rate_mixture]
        return d

    def with_frozen(self) -> "Scenario":
        return replace(self, frozen=True, lr=0.0, memorization_lr=0.0)


@dataclass
class World:
    """Arrays of one scenario instance (train pool and test set)."""

    X: np.ndarray
    b: np.ndarray
    log_len: np.ndarray
    X_test: np.ndarray
    b_test: np.ndarray
    p0: np.ndarray = field(repr=False)


def _initial_pass_rates(rng: np.random.Generator, n: int, mixture) -> np.ndarray:
    w = np.array([c[0] for c in mixture], float)
    comp = rng.choice(len(mixture), size=n, p=w / w.sum())
    out = np.empty(n)
    for k, (_, a, b) in enumerate(mixture):
        sel = comp == k
        out[sel] = rng.beta(a, b, size=int(sel.sum()))
    return np.clip(out, 1e-4, 1 - 1e-4)


def _features(rng: np.random.Generator, n: int, d: int, rho: float) -> np.ndarray:
    g = np.abs(rng.standard_normal((n, d)))
    h = rng.standard_normal((n, d))
    return (rho * g + math.sqrt(max(0.0, 1 - rho * rho)) * h) / math.sqrt(d)


def build_world(s: Scenario, seed: int) -> World:
    rng = np.random.default_rng([seed, 0x5EED])
    p0 = _initial_pass_rates(rng, s.num_prompts, s.pass_rate_mixture)
    X = _features(rng, s.num_prompts, s.dim, s.transfer)
    b = -np.log(p0 / (1 - p0))
    # per-prompt median length: log-normal spread, harder prompts longer
    log_len = (math.log(s.median_tokens) + s.prompt_length_sigma * rng.standard_normal(s.num_prompts)
               + s.difficulty_length_slope * (0.5 - p0))
    p0_test = _initial_pass_rates(rng, s.num_test, s.pass_rate_mixture)
    X_test = _features(rng, s.num_test, s.dim, s.transfer)
    b_test = -np.log(p0_test / (1 - p0_test))
    return World(np.ascontiguousarray(X), b, log_len, np.ascontiguousarray(X_test), b_test, p0)


SCENARIOS: dict[str, Scenario] = {}


def _register(s: Scenario) -> Scenario:
    SCENARIOS[s.name] = s
    return s


_register(Scenario(
    name="dapo-math",
    summary="DAPO-Math-17k-like pool: U-shaped initial pass rates, many all-wrong and "
            "all-right prompts at n = 8.",
    calibration="Knapsack RL's setting (algorithms.md §2.1, §2.8): Qwen2.5-Math-7B with GRPO, "
                "n = 8, on DAPO-Math-17k (17,398 prompts, 256 per step). Initial pass rates: "
                "30% near zero Beta(0.3, 8), 15% near one Beta(6, 0.4), 55% spread Beta(0.9, 1.3); "
                "mean pass rate 0.375, at n = 8 33% of prompts all-wrong and 13% all-right in "
                "expectation. Learning calibrated so that uniform GRPO (n = 8) shows the decay "
                "§2.1 reports: over 1,000 steps the effective-gradient ratio falls from 0.55 to "
                "about 0.26 and train reward rises 0.39 -> 0.75 while test accuracy rises "
                "0.37 -> 0.51 (seed 0).",
    pass_rate_mixture=((0.30, 0.3, 8.0), (0.15, 6.0, 0.4), (0.55, 0.9, 1.3)),
    target_accuracy=0.45,
))

_register(Scenario(
    name="hard",
    summary="Hard set: base pass rate around 1-2 of 16 for every prompt.",
    calibration="Reinforce-Ada's hard split (algorithms.md §4.4): prompts the base model solves "
                "1-2 times out of 16 (p ≈ 0.06-0.125). Initial pass rates Beta(2, 20): mean "
                "0.09, 90% of prompts between 0.017 and 0.21, half of them all-wrong at n = 8; "
                "5,000 prompts as in §4.4 Table 5.",
    num_prompts=5_000,
    pass_rate_mixture=((1.0, 2.0, 20.0),),
    target_accuracy=0.2,
))

_register(Scenario(
    name="easy",
    summary="Mixed/easy pool: most prompts solvable, a long easy tail.",
    calibration="CROPI's GSM8K + MATH + DeepScaleR pool for an instruct model (algorithms.md "
                "§5.3): mean initial pass rate about 0.6. Initial pass rates: 35% near one "
                "Beta(5, 0.6), 50% Beta(2, 1.5), 15% hard Beta(0.5, 4); mean 0.615, at n = 8 "
                "10% all-wrong and 24% all-right in expectation.",
    num_prompts=10_000,
    pass_rate_mixture=((0.35, 5.0, 0.6), (0.50, 2.0, 1.5), (0.15, 0.5, 4.0)),
    target_accuracy=0.69,
))


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise KeyError(name)
    return SCENARIOS[name]
