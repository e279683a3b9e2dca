"""The check suite every allocator passes, for the registry's methods and for yours.

In the spirit of scikit-learn's ``check_estimator``: each check takes a factory ``make`` (no
arguments, returns a fresh ``Allocator``) and a ``SourceFactory`` (seed -> a rollout source with
``state_dict``/``load_state_dict`` and its number of prompts), drives the method through the
contract's steps without learning, and fails with an ``AssertionError`` naming what broke:

- ``check_step_invariants``: batches of distinct prompts, samples that belong to them, counts that
  add up, a training batch that indexes real samples once each with finite advantages and
  non-negative weights, and no more rollouts than the budget for a method that spends it;
- ``check_budget_at_minimum``: the same at the smallest budget the method declares;
- ``check_deterministic``: the same seeds give the same steps;
- ``check_state_round_trip``: ``state_dict`` taken mid-run (pickled, as a checkpoint is) and loaded
  into a fresh allocator continues exactly as the uninterrupted run;
- ``check_config_unchanged``: running never changes the config;
- ``check_reset_twice``: ``reset`` starts the same run again;
- ``check_option_bounds``: every numeric option has a range in the config's ``bounds`` (an upper
  limit for every integer), and NaN, infinity and values outside the range are refused.

``check_allocator(make)`` runs them all; ``parametrize_with_checks`` makes one pytest case per
(method, check). ``BernoulliSource`` is a small source of fixed pass rates to run them on.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from allocators.base import (
    Allocator,
    PromptStream,
    RolloutSource,
    Samples,
    SettingsError,
    Step,
    StepResult,
)

Make = Callable[[], Allocator]


class CheckableSource(RolloutSource, Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# seed -> a source over a world that depends on the seed only, and its number of prompts
SourceFactory = Callable[[int], tuple[CheckableSource, int]]


class BernoulliSource:
    """Fixed pass rates (a U shape, as in RLVR data): prompt i succeeds with ``rates[i]``;
    response lengths 20-200 tokens, wrong answers one of three ids; the true rates for a
    reference that reads them (the oracle)."""

    provides = frozenset({"answers", "true_rates"})

    def __init__(self, num_prompts: int = 96, seed: int = 0):
        self.rates = np.random.default_rng([seed, 11]).beta(0.4, 0.4, num_prompts)
        self.rng = np.random.default_rng([seed, 12])

    def begin_step(self, index: int) -> None:
        pass

    def sample(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        ids = np.repeat(prompt_ids, counts)
        ok = self.rng.random(ids.size) < self.rates[ids]
        lengths = self.rng.integers(20, 200, ids.size)
        answers = np.where(ok, 0, self.rng.integers(1, 4, ids.size))
        return Samples.from_request(prompt_ids, counts, ok.astype(np.float64), lengths, answers)

    def true_success_rates(self, prompt_ids: np.ndarray) -> np.ndarray:
        return self.rates[np.asarray(prompt_ids, np.int64)]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def bernoulli_source(seed: int) -> tuple[BernoulliSource, int]:
    return BernoulliSource(96, seed), 96


class _Run:
    """One allocator on one source, stepped as the driver does (no learning)."""

    def __init__(
        self,
        make: Make,
        sources: SourceFactory,
        seed: int,
        budget: int,
        prompts_per_step: int,
        world: int | None = None,
    ):
        self.source, self.num_prompts = sources(seed if world is None else world)
        self.stream = PromptStream(self.num_prompts, np.random.default_rng([seed, 2]))
        self.rng = np.random.default_rng([seed, 3])
        self.alloc = make()
        self.alloc.reset(self.num_prompts, self.rng)
        self.budget, self.prompts_per_step, self.t = budget, prompts_per_step, 0

    def steps(self, k: int) -> list[StepResult]:
        out = []
        for _ in range(k):
            self.source.begin_step(self.t)
            result = self.alloc.step(
                Step(self.t, self.stream, self.source, self.budget, self.prompts_per_step)
            )
            self.alloc.observe(result)
            self.t += 1
            out.append(result)
        return out

    def snapshot(self) -> bytes:
        return pickle.dumps(
            {
                "alloc": self.alloc.state_dict(),
                "rng": self.rng.bit_generator.state,
                "stream": self.stream.state_dict(),
                "stream_rng": self.stream.rng.bit_generator.state,
                "source": self.source.state_dict(),
                "t": self.t,
            }
        )

    def restore(self, blob: bytes) -> None:
        state = pickle.loads(blob)
        self.alloc.load_state_dict(state["alloc"])
        self.rng.bit_generator.state = state["rng"]
        self.stream.load_state_dict(state["stream"])
        self.stream.rng.bit_generator.state = state["stream_rng"]
        self.source.load_state_dict(state["source"])
        self.t = state["t"]


def _settings(make: Make, sources: SourceFactory) -> tuple[int, int]:
    """A budget of 8 rollouts for each of a sixth of the pool (several epochs in a dozen steps)."""
    _, n = sources(0)
    pps = max(2, n // 6)
    return 8 * pps, pps


def _same(a: list[StepResult], b: list[StepResult], what: str) -> None:
    assert len(a) == len(b), f"{what}: {len(a)} steps against {len(b)}"
    for x, y in zip(a, b):
        where = f"{what}, step {x.step}"
        assert np.array_equal(x.prompt_ids, y.prompt_ids), f"{where}: the batches differ"
        assert np.array_equal(x.samples.group, y.samples.group), f"{where}: the requests differ"
        assert np.array_equal(x.samples.rewards, y.samples.rewards), f"{where}: the samples differ"
        assert np.array_equal(x.train.index, y.train.index), f"{where}: trained samples differ"
        assert np.array_equal(x.train.advantages, y.train.advantages), f"{where}: advantages differ"
        assert np.array_equal(x.train.weights, y.train.weights), f"{where}: weights differ"
        assert _plain(x.info) == _plain(y.info), f"{where}: info differs"


def _plain(info: Mapping[str, Any]) -> dict:
    return {
        k: (v.tolist() if isinstance(v, np.ndarray) else v)
        for k, v in info.items()
        if not (isinstance(v, float) and np.isnan(v))
    }


def _check_step(r: StepResult, alloc: Allocator, budget: int) -> None:
    s, c, tb = r.samples, r.counts, r.train
    n, m = len(s), r.prompt_ids.size
    name = alloc.name or type(alloc).__name__
    assert m > 0, f"{name}: an empty batch"
    assert np.unique(r.prompt_ids).size == m, f"{name}: a prompt twice in one batch"
    assert s.group.shape == (n,) and s.rewards.shape == (n,) and s.lengths.shape == (n,)
    assert n == 0 or (s.group.min() >= 0 and s.group.max() < m), (
        f"{name}: a sample outside the batch"
    )
    assert np.array_equal(s.prompt_ids, r.prompt_ids[s.group]), f"{name}: samples of another prompt"
    assert set(np.unique(s.rewards)) <= {0.0, 1.0}, f"{name}: non-binary rewards"
    for arr in (c.generated, c.successes, c.tokens, c.trained, c.trained_successes):
        assert arr.shape == (m,) and (arr >= 0).all()
    assert c.generated.sum() == n and (c.successes <= c.generated).all()
    if alloc.capabilities().spend == "budget":
        assert n <= budget, f"{name} spent {n} rollouts of a budget of {budget}"
    k = tb.index.size
    assert tb.advantages.shape == (k,) and tb.weights.shape == (k,)
    assert np.unique(tb.index).size == k, f"{name}: a sample trains twice"
    assert k == 0 or (tb.index.min() >= 0 and tb.index.max() < n), (
        f"{name}: trains a missing sample"
    )
    assert np.isfinite(tb.advantages).all() and np.isfinite(tb.weights).all(), (
        f"{name}: non-finite advantages or weights"
    )
    assert (tb.weights >= 0).all(), f"{name}: negative weights"
    assert r.solver_seconds >= 0


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------
def check_step_invariants(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    budget, pps = _settings(make, sources)
    run = _Run(make, sources, 1, budget, pps)
    for r in run.steps(12):
        _check_step(r, run.alloc, budget)


def check_budget_at_minimum(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    _, pps = _settings(make, sources)
    budget = pps * make().capabilities().min_rollouts_per_prompt
    run = _Run(make, sources, 2, budget, pps)
    for r in run.steps(8):
        _check_step(r, run.alloc, budget)


def check_deterministic(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    budget, pps = _settings(make, sources)
    _same(
        _Run(make, sources, 3, budget, pps).steps(10),
        _Run(make, sources, 3, budget, pps).steps(10),
        "the same seeds",
    )


def check_state_round_trip(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    budget, pps = _settings(make, sources)
    whole = _Run(make, sources, 4, budget, pps).steps(16)
    first = _Run(make, sources, 4, budget, pps)
    first.steps(8)
    blob = first.snapshot()
    # other generators, the same world: everything else must come from the snapshot
    resumed = _Run(make, sources, 99, budget, pps, world=4)
    resumed.restore(blob)
    _same(whole[8:], resumed.steps(8), "resumed from state_dict")


def check_config_unchanged(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    budget, pps = _settings(make, sources)
    run = _Run(make, sources, 5, budget, pps)
    before = copy.deepcopy(run.alloc.config)
    run.steps(10)
    assert run.alloc.config == before, f"running changed the config: {before} -> {run.alloc.config}"


def check_reset_twice(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    budget, pps = _settings(make, sources)
    run = _Run(make, sources, 6, budget, pps)
    alloc = run.alloc
    first = run.steps(10)
    again = _Run(lambda: alloc, sources, 6, budget, pps)  # the same object, reset once more
    _same(first, again.steps(10), "after a second reset")


def check_option_bounds(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    config = make().config
    cls = type(config)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        assert f.name in cls.bounds, f"{cls.__name__}.{f.name} has no entry in bounds"
        low, high = cls.bounds[f.name]
        assert not isinstance(value, int) or high is not None, (
            f"{cls.__name__}.{f.name} is an integer without an upper limit in bounds"
        )
        bad: list[float] = [math.nan, math.inf, -math.inf] if isinstance(value, float) else []
        if low is not None:
            bad.append(low - (1 if isinstance(value, int) else max(abs(low), 1.0) * 1e-6))
        if high is not None:
            bad.append(high + (1 if isinstance(value, int) else max(abs(high), 1.0) * 1e-6))
        for v in bad:
            try:
                dataclasses.replace(config, **{f.name: v})
            except SettingsError:
                continue
            raise AssertionError(f"{cls.__name__} accepted {f.name}={v}")


CHECKS = (
    check_step_invariants,
    check_budget_at_minimum,
    check_deterministic,
    check_state_round_trip,
    check_config_unchanged,
    check_reset_twice,
    check_option_bounds,
)


def check_allocator(make: Make, sources: SourceFactory = bernoulli_source) -> None:
    """Run every check on the method ``make`` builds."""
    for check in CHECKS:
        check(make, sources)


def parametrize_with_checks(
    makers: Mapping[str, Make],
    sources: SourceFactory = bernoulli_source,
    checks: Iterable[Callable] = CHECKS,
):
    """A pytest ``parametrize`` mark with one case per (method, check); the test function takes
    ``make``, ``check`` and ``sources`` arguments and calls ``check(make, sources)``."""
    import pytest

    cases = [
        pytest.param(make, check, sources, id=f"{name}-{check.__name__}")
        for name, make in makers.items()
        for check in checks
    ]
    return pytest.mark.parametrize(("make", "check", "sources"), cases)
