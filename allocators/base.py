"""The one contract every allocator satisfies (design.md, "The one contract: a step of sampling").

A training step is driven the same way for every method, in the simulator and in the trainer:

1. **select**     the method picks which prompts enter the batch (``Step.take_prompts`` draws the
                  next shuffled slice of the epoch; CROPI, GRESO, DAPO change what they take);
2. **allocate and sample**  it asks the step for rollouts, once (static allocators) or in rounds
                  (multi-round allocators), through ``Step.sample(groups, counts)``, which forwards
                  to the ``RolloutSource`` and logs every sample;
3. **build**      it returns a ``TrainBatch``: which of the step's samples train, with per-sample
                  advantages and weights;
4. **learn**      the caller's learner applies the policy-gradient update;
5. **observe**    ``Allocator.observe(result)`` updates the method's per-prompt statistics with
                  every reward seen (trained or not).

Callers only ever call ``Allocator.step(step)`` and ``Allocator.observe(result)``: a static and a
multi-round method look the same from outside.

Rewards are binary (1 = verified correct, 0 = not). Sources with other reward scales map them to
{0, 1} before returning them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from allocators._kernels import group_counts


# --------------------------------------------------------------------------------------------
# Data that crosses the contract
# --------------------------------------------------------------------------------------------
@dataclass
class Samples:
    """Samples returned by a ``RolloutSource``; one entry per generated response.

    ``prompt_ids``: dataset index of the prompt; ``rewards``: 0.0 or 1.0; ``lengths``: response
    length in tokens. ``group`` is filled by ``Step.sample``: the position of the prompt in the
    step's batch. ``extra`` is source-specific per-sample payload (the trainer keeps token ids and
    log-probabilities there); the contract only concatenates it.
    """

    prompt_ids: np.ndarray
    rewards: np.ndarray
    lengths: np.ndarray
    group: np.ndarray | None = None
    answers: np.ndarray | None = None
    extra: list | None = None

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @staticmethod
    def concat(parts: list["Samples"]) -> "Samples":
        if len(parts) == 1:
            return parts[0]
        if not parts:
            empty_i = np.zeros(0, np.int64)
            return Samples(empty_i, np.zeros(0), empty_i.copy(), empty_i.copy())

        def cat(name):
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                return None
            return np.concatenate(values)

        extra = None
        if all(p.extra is not None for p in parts):
            extra = [e for p in parts for e in p.extra]
        return Samples(cat("prompt_ids"), cat("rewards"), cat("lengths"), cat("group"),
                       cat("answers"), extra)


@runtime_checkable
class RolloutSource(Protocol):
    """Generates rollouts: the simulator with Bernoulli draws, the trainer with a model + verifier.

    ``sample(prompt_ids, counts)`` returns ``counts[i]`` samples of ``prompt_ids[i]`` for every
    ``i``, grouped in request order (all samples of the first prompt, then the second, ...).
    """

    def sample(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples: ...


@dataclass
class TrainBatch:
    """Which samples of the step train, and how.

    ``index``: positions into the step's concatenated samples; ``advantages`` and ``weights`` per
    trained sample. The learner's loss is ``sum(weight * advantage * grad log pi) / normaliser``,
    the normaliser being set by the loss aggregation (token-mean by default), over every trained
    sample, zero-advantage ones included.
    """

    index: np.ndarray
    advantages: np.ndarray
    weights: np.ndarray

    @staticmethod
    def all_of(samples: Samples, advantages: np.ndarray) -> "TrainBatch":
        n = len(samples)
        return TrainBatch(np.arange(n, dtype=np.int64), np.asarray(advantages, np.float64),
                          np.ones(n, np.float64))


@dataclass
class GroupCounts:
    """Per-group tallies of a finished step (one entry per prompt in the batch)."""

    generated: np.ndarray   # rollouts generated
    successes: np.ndarray   # rewarded rollouts among them
    tokens: np.ndarray      # tokens generated
    trained: np.ndarray     # rollouts that train
    trained_successes: np.ndarray


@dataclass
class StepResult:
    """Everything a finished step produced: the input of learn, observe and the metrics."""

    step: int
    prompt_ids: np.ndarray      # the batch, one entry per group
    samples: Samples            # every sample generated this step, all rounds, in order
    train: TrainBatch
    counts: GroupCounts
    solver_seconds: float       # allocator wall time, generation excluded
    info: dict = field(default_factory=dict)  # method-specific per-step numbers (logged)


# --------------------------------------------------------------------------------------------
# The step: what an allocator talks to
# --------------------------------------------------------------------------------------------
class PromptStream:
    """Epoch-wise shuffled order over the training prompts (the default selection).

    ``take(k)`` returns the next ``k`` prompt ids, reshuffling at every epoch boundary; a slice
    never holds the same prompt twice (when it straddles an epoch end, prompts already in the
    slice are skipped in the new epoch and served later).
    """

    def __init__(self, num_prompts: int, rng: np.random.Generator):
        self.num_prompts = int(num_prompts)
        self.rng = rng
        self.epoch = 0
        self._order = rng.permutation(self.num_prompts)
        self._pos = 0

    def take(self, k: int) -> np.ndarray:
        k = int(k)
        if k > self.num_prompts:
            raise ValueError(f"cannot take {k} distinct prompts from a pool of {self.num_prompts}")
        end = self._pos + k
        if end <= self.num_prompts:
            out = self._order[self._pos:end]
            self._pos = end
            return out
        head = self._order[self._pos:]
        self.epoch += 1
        order = self.rng.permutation(self.num_prompts)
        if head.size:
            taken = np.zeros(self.num_prompts, bool)
            taken[head] = True
            order = np.concatenate([order[~taken[order]], head])  # postponed to the epoch's end
        self._order = order
        need = k - head.size
        self._pos = need
        return np.concatenate([head, order[:need]])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": self._order.tolist(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._order = np.asarray(state["order"], np.int64)
        self._pos = int(state["pos"])


class Step:
    """One training step as the allocator sees it.

    Holds the batch (prompt ids, growing as the method takes or adds prompts), forwards sample
    requests to the source and logs every sample, and times the source so that the allocator's
    own time can be reported.
    """

    def __init__(self, index: int, stream: PromptStream, source: RolloutSource, budget: int,
                 prompts_per_step: int, rng: np.random.Generator):
        self.index = int(index)
        self.stream = stream
        self.source = source
        self.budget = int(budget)
        self.prompts_per_step = int(prompts_per_step)
        self.rng = rng
        self._prompts: list[np.ndarray] = []
        self._n_prompts = 0
        self._parts: list[Samples] = []
        self.rollouts = 0
        self.source_seconds = 0.0
        self._prompt_cache: np.ndarray | None = None

    # -- select --------------------------------------------------------------------------
    def take_prompts(self, k: int | None = None) -> np.ndarray:
        """Add the next ``k`` (default ``prompts_per_step``) prompts of the epoch to the batch;
        returns their group indices."""
        return self.add_prompts(self.stream.take(self.prompts_per_step if k is None else k))

    def add_prompts(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Add given prompts to the batch; returns their group indices."""
        prompt_ids = np.asarray(prompt_ids, np.int64)
        start = self._n_prompts
        self._prompts.append(prompt_ids)
        self._n_prompts += prompt_ids.size
        self._prompt_cache = None
        return np.arange(start, self._n_prompts, dtype=np.int64)

    @property
    def prompt_ids(self) -> np.ndarray:
        if self._prompt_cache is None:
            self._prompt_cache = (self._prompts[0] if len(self._prompts) == 1 else
                                  np.concatenate(self._prompts) if self._prompts else
                                  np.zeros(0, np.int64))
        return self._prompt_cache

    @property
    def num_groups(self) -> int:
        return self._n_prompts

    # -- sample ----------------------------------------------------------------------------
    def sample(self, groups: np.ndarray, counts: np.ndarray) -> Samples:
        """Request ``counts[i]`` rollouts for group ``groups[i]``; returns this request's samples
        (with ``group`` set). Zero counts are allowed and skipped."""
        groups = np.asarray(groups, np.int64)
        counts = np.asarray(counts, np.int64)
        if groups.shape != counts.shape:
            raise ValueError("groups and counts must have the same shape")
        if counts.size and counts.min() < 0:
            raise ValueError("negative rollout count requested")
        keep = counts > 0
        if not keep.all():
            groups, counts = groups[keep], counts[keep]
        t0 = time.perf_counter()
        out = self.source.sample(self.prompt_ids[groups], counts)
        self.source_seconds += time.perf_counter() - t0
        out.group = np.repeat(groups, counts)
        self._parts.append(out)
        self.rollouts += int(counts.sum())
        return out

    @property
    def samples(self) -> Samples:
        """Every sample generated so far this step, in generation order."""
        if len(self._parts) > 1:
            self._parts = [Samples.concat(self._parts)]
        return Samples.concat(self._parts)

    # -- finish ----------------------------------------------------------------------------
    def finish(self, train: TrainBatch, solver_seconds: float, info: dict | None = None) -> StepResult:
        samples = self.samples
        if samples.group is None:
            samples.group = np.zeros(0, np.int64)
        counts = GroupCounts(*group_counts(self.num_groups, samples.group, samples.rewards,
                                           samples.lengths, train.index))
        return StepResult(self.index, self.prompt_ids, samples, train, counts, solver_seconds,
                          info or {})


def even_split(total: int, parts: int) -> np.ndarray:
    """``total`` over ``parts``: total // parts each, +1 to the first total % parts (the even
    split every official allocator uses, remainder to the first prompts in batch order)."""
    out = np.full(parts, total // parts, np.int64)
    out[: total % parts] += 1
    return out


# --------------------------------------------------------------------------------------------
# Allocator base class
# --------------------------------------------------------------------------------------------
@dataclass
class AllocatorConfig:
    """Base of every method's config dataclass (one per method, TRL style)."""

    def options(self) -> dict[str, Any]:
        """Options that differ from the defaults, for run labels and result rows."""
        default = type(self)()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


class Allocator:
    """Base class: a method is a subclass with a ``Config`` dataclass and a ``name``.

    Static methods implement ``allocate`` (counts per group) and ``build`` (the training batch);
    the default ``run_step`` selects ``prompts_per_step`` prompts, samples them once and builds.
    Multi-round methods override ``run_step``. ``observe`` updates per-prompt statistics.

    ``min_rollouts_per_prompt`` is the smallest per-prompt share the method can work with: the
    harness rejects a budget below ``prompts_per_step * min_rollouts_per_prompt``.

    A method that keeps per-prompt statistics sets ``self.stats`` (an
    ``allocators.stats.PromptStats``) in ``reset``; the default ``observe``, ``state_dict`` and
    ``load_state_dict`` then record and checkpoint it. Methods with more state extend them.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[AllocatorConfig]] = AllocatorConfig
    min_rollouts_per_prompt: ClassVar[int] = 2
    uses_budget: ClassVar[bool] = True  # False for methods that decide their own spend

    def __init__(self, config: AllocatorConfig | None = None):
        self.config = config if config is not None else self.Config()
        self.num_prompts = 0
        self.stats = None

    # -- lifecycle ---------------------------------------------------------------------------
    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        """Start of a run: size per-prompt state for ``num_prompts`` training prompts."""
        self.num_prompts = int(num_prompts)
        self.rng = rng

    def step(self, step: Step) -> StepResult:
        """Run select, allocate-and-sample and build; time the allocator, generation excluded."""
        t0 = time.perf_counter()
        train, info = self.run_step(step)
        solver = time.perf_counter() - t0 - step.source_seconds
        return step.finish(train, max(solver, 0.0), info)

    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        groups = step.take_prompts()
        counts = self.allocate(step, groups)
        samples = step.sample(groups, counts)
        return self.build(step, samples), {}

    def allocate(self, step: Step, groups: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement allocate or run_step")

    def build(self, step: Step, samples: Samples) -> TrainBatch:
        raise NotImplementedError(f"{type(self).__name__} must implement build or run_step")

    def observe(self, result: StepResult) -> None:
        """Update per-prompt statistics with every reward of the step, trained or not."""
        if self.stats is not None:
            self.stats.observe(result)

    # -- checkpointing (trainer resume) -----------------------------------------------------
    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()} if self.stats is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.stats is not None:
            self.stats.load_state_dict(state["stats"])

    # -- labels -------------------------------------------------------------------------------
    def label(self) -> str:
        opts = self.config.options()
        if not opts:
            return self.name
        return self.name + ":" + ":".join(f"{k}={v}" for k, v in sorted(opts.items()))
