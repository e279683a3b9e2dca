"""GVM's official rule (docs/methods.md#gvm): ``RLHFlow/GVM`` at d640a754,
``em/stage_2_calc_sample_size.py`` (``calc_sample_ratio``, ``float_to_int_preserve_sum``) and
``em/stage_1_collect_data.py`` / ``em/stage_2_calc_acceptRates_grads.py`` (p and G from a fresh
pass of 8 samples per prompt), restated plainly here and compared with the allocator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from allocators.base import PromptStream, Samples, SettingsError, Step, validate
from allocators.registry import parse_spec
from simulator.model import LearningModel, SimulatedSource
from simulator.scenarios import SCENARIOS, build_world


def official_sizes(grads, accept_rates, total, alpha=1e-3, beta=2.0):
    """``calc_sample_ratio`` then ``float_to_int_preserve_sum``, as the official script."""
    sizes = []
    for g, p in zip(grads, accept_rates):
        if g == 0 or p == 0:
            sizes.append(0)
        else:
            sizes.append(g / (np.sqrt(p + alpha / np.power(p, beta - 1.0))))
    s = sum(sizes)
    ratios = [x / s for x in sizes]
    scaled = np.array(ratios) * total
    out = np.round(scaled).astype(int)
    error = total - np.sum(out)
    if error != 0:
        residuals = scaled - out
        indices = np.argsort(-residuals if error > 0 else residuals)[: abs(error)]
        out[indices] += np.sign(error)
    return out.tolist()


class NormSource:
    """Bernoulli rewards at fixed rates; a correct response of prompt i has gradient norm
    ``norm[i]``, a wrong one 0.5 (never used by the rule)."""

    provides = frozenset({"answers", "grad_norms"})

    def __init__(self, rates, norm, seed=0):
        self.rates = np.asarray(rates, float)
        self.norm = np.asarray(norm, float)
        self.rng = np.random.default_rng(seed)
        self.calls: list[np.ndarray] = []

    def begin_step(self, index):
        pass

    def sample(self, prompt_ids, counts):
        self.calls.append(np.asarray(counts).copy())
        pid = np.repeat(prompt_ids, counts)
        ok = self.rng.random(pid.size) < self.rates[pid]
        return Samples.from_request(prompt_ids, counts, ok.astype(float), np.ones(pid.size, int))

    def grad_norms(self, samples):
        return np.where(samples.rewards > 0.5, self.norm[samples.prompt_ids], 0.5)


@pytest.mark.parametrize("seed", range(6))
def test_gvm_allocates_as_the_official_script_from_a_fresh_pass(seed):
    rng = np.random.default_rng(seed)
    pool, m, budget = 200, 32, 256
    rates = rng.choice([0.0, 0.05, 0.3, 0.7, 1.0], pool)
    norms = rng.uniform(0.5, 3.0, pool)
    src = NormSource(rates, norms, seed)
    alloc = parse_spec("gvm").build()
    alloc.reset(pool, np.random.default_rng(seed + 1))
    stream = PromptStream(pool, np.random.default_rng(seed + 2))
    for t in range(4):
        src.calls.clear()
        r = alloc.step(Step(t, stream, src, budget, m))
        alloc.observe(r)
        em_counts, counts = src.calls[0], src.calls[1] if len(src.calls) > 1 else None
        assert (em_counts == 8).all()  # the fresh pass: 8 per prompt, every step
        s = r.samples
        em = np.arange(8 * m)
        hits = (s.rewards[em].reshape(m, 8) > 0.5).sum(axis=1)
        p = hits / 8
        g = np.where(hits > 0, norms[r.prompt_ids], 0.0)
        want = official_sizes(g, p, budget) if (p > 0).any() else [0] * m
        got = r.counts.generated - 8
        assert got.tolist() == want
        assert (got[p == 0] == 0).all()  # no correct sample, no rollout
        # the pass is generated, counted and never trained
        assert r.counts.generated.sum() == 8 * m + sum(want)
        assert r.counts.trained.tolist() == want
        assert (r.train.index >= 8 * m).all()
        if counts is not None:
            assert counts.sum() == budget


def test_gvm_gives_prompts_without_a_correct_sample_nothing():
    """The old rule clipped p̂ to 0.02 and gave such prompts the largest share; the official one
    gives them zero."""
    rates = np.array([0.0] * 8 + [0.5] * 8)
    src = NormSource(rates, np.ones(16))
    alloc = parse_spec("gvm").build()
    alloc.reset(16, np.random.default_rng(0))
    stream = PromptStream(16, np.random.default_rng(1))
    r = alloc.step(Step(0, stream, src, 64, 16))
    trained = r.counts.trained
    assert trained[r.prompt_ids < 8].sum() == 0 and trained.sum() == 64
    assert r.info["zero_prompts"] >= 8 and r.info["em_rollouts"] == 128


def test_gvm_step_without_any_correct_sample_trains_nothing():
    src = NormSource(np.zeros(10), np.ones(10))
    alloc = parse_spec("gvm").build()
    alloc.reset(10, np.random.default_rng(0))
    r = alloc.step(Step(0, PromptStream(10, np.random.default_rng(1)), src, 40, 10))
    assert r.train.index.size == 0 and r.counts.generated.sum() == 80


def test_gvm_needs_gradient_norms_and_the_trainer_refuses_it():
    gvm = parse_spec("gvm").build()
    caps = gvm.capabilities()
    assert caps.needs == frozenset({"grad_norms"}) and caps.spend == "own"
    with pytest.raises(SettingsError, match=r"gvm needs grad_norms.*gvm@reinforce-ada"):
        validate(gvm, "gvm", 64, 8, frozenset({"answers"}))
    validate(parse_spec("gvm@reinforce-ada").build(), "gvm", 64, 8, frozenset({"answers"}))
    assert "grad_norms" in SimulatedSource.provides


def test_simulated_gradient_norms_are_exact():
    """|r − p|·‖x‖ is the norm of ∇_θ log π(r) (central differences on θ)."""
    scenario = SCENARIOS["dapo-math"]
    world = build_world(scenario, 0)
    model = LearningModel(scenario, world)
    model.theta = np.random.default_rng(0).standard_normal(model.theta.size) * 0.1
    src = SimulatedSource(model, np.random.default_rng(1))
    ids = np.array([3, 10, 77])
    s = src.sample(ids, np.array([2, 2, 2]))
    norms = src.grad_norms(s)
    for j in range(len(s)):
        i, r = int(s.prompt_ids[j]), s.rewards[j]

        def logp(theta, i=i, r=r):
            z = world.X[i] @ theta + model.u[i] - world.b[i]
            p = 1 / (1 + math.exp(-z))
            return math.log(p if r > 0.5 else 1 - p)

        h = 1e-6
        grad = np.array(
            [
                (logp(model.theta + h * e) - logp(model.theta - h * e)) / (2 * h)
                for e in np.eye(model.theta.size)
            ]
        )
        assert norms[j] == pytest.approx(np.linalg.norm(grad), rel=1e-5)
