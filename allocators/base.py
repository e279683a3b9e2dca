"""The allocator contract: one step of sampling, the same in the simulator and the trainer.

A driver (``allocators/loop.py``) runs every method the same way, each step:

1. ``allocator.step(Step(...))`` calls the method's ``run_step``, the one method an allocator
   implements. It **selects** prompts (``Step.take_prompts``/``add_prompts``), **samples** them
   once or in rounds (``Step.sample(groups, counts)``, which forwards to the ``RolloutSource``
   and logs every sample), and returns the **training batch** (``TrainBatch``: which of the
   step's samples train, with advantages and weights) and a dict of per-step numbers;
2. the learner **learns** from the batch; 3. ``allocator.observe(result)`` updates the method's
   statistics with every reward of the step, trained or not.

``StaticAllocator`` is the helper for methods that sample once: they implement ``allocate``
(counts per prompt, and info) and ``build`` (the batch). What a method needs from the harness
(its spend rule, the least rollouts per prompt, what the source must provide, its presets) is
declared in one ``Capabilities`` record and checked by ``validate`` before a run starts.
Rewards are binary (1 = verified correct). See ``docs/design.md#the-contract``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from allocators._kernels import group_counts

# What a rollout source can provide beyond rewards and lengths; a method lists what it needs.
# ``grad_norms``: ``grad_norms(samples)``, the norm of each response's ∇ log π (GVM).
Need = Literal["answers", "gradients", "grad_norms", "true_rates"]

# ``Samples.answers`` of a response whose final answer could not be extracted
NO_ANSWER = -1


# --------------------------------------------------------------------------------------------
# Data that crosses the contract
# --------------------------------------------------------------------------------------------
@dataclass
class Samples:
    """Generated responses, one entry per response.

    ``prompt_ids``: dataset index of the prompt; ``group``: the prompt's position in the request
    (as a source returns them) or in the step's batch (after ``Step.sample``); ``rewards``: 0.0 or
    1.0; ``lengths``: response length in tokens; ``answers``: 0 for a correct response, else an id
    ≥ 1 per distinct wrong extracted answer of the prompt, ``NO_ANSWER`` (−1) where none could be
    extracted (sources that can tell them apart);
    ``tokens``: the response token ids (the trainer, for its update).
    """

    prompt_ids: np.ndarray
    group: np.ndarray
    rewards: np.ndarray
    lengths: np.ndarray
    answers: np.ndarray | None = None
    tokens: list[Sequence[int]] | None = None
    prompt_tokens: np.ndarray | None = None  # the prompt's length in tokens (the trainer)

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @staticmethod
    def from_request(
        prompt_ids: np.ndarray,
        counts: np.ndarray,
        rewards: np.ndarray,
        lengths: np.ndarray,
        answers: np.ndarray | None = None,
        tokens: list[Sequence[int]] | None = None,
        prompt_tokens: np.ndarray | None = None,
    ) -> Samples:
        """A source's answer to ``sample(prompt_ids, counts)``: ``counts[i]`` responses of
        ``prompt_ids[i]`` for every ``i``, in request order."""
        counts = np.asarray(counts, np.int64)
        ids = np.repeat(np.asarray(prompt_ids, np.int64), counts)
        group = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        return Samples(
            ids,
            group,
            np.asarray(rewards, np.float64),
            np.asarray(lengths, np.int64),
            answers,
            tokens,
            None
            if prompt_tokens is None
            else np.repeat(np.asarray(prompt_tokens, np.int64), counts),
        )

    def take(self, index: np.ndarray) -> Samples:
        """The samples at ``index``, in that order."""
        index = np.asarray(index, np.int64)
        return Samples(
            self.prompt_ids[index],
            self.group[index],
            self.rewards[index],
            self.lengths[index],
            None if self.answers is None else self.answers[index],
            None if self.tokens is None else [self.tokens[i] for i in index],
            None if self.prompt_tokens is None else self.prompt_tokens[index],
        )

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        if len(parts) == 1:
            return parts[0]
        if not parts:
            empty = np.zeros(0, np.int64)
            return Samples(empty, empty.copy(), np.zeros(0), empty.copy())

        def cat(values: list[np.ndarray | None]) -> np.ndarray | None:
            present = [v for v in values if v is not None]
            return np.concatenate(present) if len(present) == len(values) else None

        tokens = None
        if all(p.tokens is not None for p in parts):
            tokens = [t for p in parts for t in p.tokens]  # type: ignore[union-attr]
        return Samples(
            np.concatenate([p.prompt_ids for p in parts]),
            np.concatenate([p.group for p in parts]),
            np.concatenate([p.rewards for p in parts]),
            np.concatenate([p.lengths for p in parts]),
            cat([p.answers for p in parts]),
            tokens,
            cat([p.prompt_tokens for p in parts]),
        )


class RolloutSource(Protocol):
    """Generates rollouts: the simulator with Bernoulli draws, the trainer with a model and a
    verifier.

    ``sample(prompt_ids, counts)`` returns ``Samples.from_request(prompt_ids, counts, ...)``:
    ``counts[i]`` responses of ``prompt_ids[i]``, all of the first prompt, then the second, ...
    ``begin_step(index)`` is called by the driver before each step (the trainer derives its
    generation seeds from it). ``provides`` lists what the source gives beyond rewards and
    lengths (``Need``).
    """

    provides: frozenset[str]

    def begin_step(self, index: int) -> None: ...

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
    def all_of(samples: Samples, advantages: np.ndarray) -> TrainBatch:
        n = len(samples)
        return TrainBatch(
            np.arange(n, dtype=np.int64), np.asarray(advantages, np.float64), np.ones(n, np.float64)
        )


@dataclass
class GroupCounts:
    """Per-group tallies of a finished step (one entry per prompt in the batch)."""

    generated: np.ndarray  # rollouts generated
    successes: np.ndarray  # rewarded rollouts among them
    tokens: np.ndarray  # tokens generated
    trained: np.ndarray  # rollouts that train
    trained_successes: np.ndarray


@dataclass
class StepResult:
    """Everything a finished step produced: the input of learn, observe and the metrics."""

    step: int
    prompt_ids: np.ndarray  # the batch, one entry per group
    samples: Samples  # every sample generated this step, all rounds, in order
    train: TrainBatch
    counts: GroupCounts
    solver_seconds: float  # allocator wall time, generation excluded
    info: dict = field(default_factory=dict)  # method-specific per-step numbers (logged)
    rounds: list[Round] = field(default_factory=list)  # one per Step.sample call


@dataclass(frozen=True)
class Round:
    """One generation round of a step (a ``Step.sample`` call): what the cost model prices
    (``allocators/cost.py``) and what ``rounds.csv`` records."""

    sequences: int
    prompts: int
    tokens: int  # response tokens generated
    longest: int  # the round's longest response
    prompt_tokens: float  # mean prompt tokens per sequence (NaN where the source cannot tell)
    seconds: float  # measured time of the source call


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
            out = self._order[self._pos : end]
            self._pos = end
            return out
        head = self._order[self._pos :]
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

    def export(self) -> tuple[np.ndarray, int, int]:
        """(order, position, epoch): the state a compiled selection loop continues from; it
        draws the next epochs' permutations from ``self.rng`` as ``take`` does and hands the
        state back through ``resume``."""
        return self._order, self._pos, self.epoch

    def resume(self, order: np.ndarray, pos: int, epoch: int) -> None:
        """Continue from a state ``export`` gave and a compiled loop advanced."""
        if order.shape != (self.num_prompts,) or not 0 <= pos <= self.num_prompts:
            raise ValueError("not a state of this stream")
        self._order, self._pos, self.epoch = order, int(pos), int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": self._order.tolist(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._order = np.asarray(state["order"], np.int64)
        self._pos = int(state["pos"])


class LengthEstimates:
    """Per-prompt response lengths for token budgets: the mean length of the prompt's earlier
    responses, or ``prior`` (the initial policy's mean tokens per rollout) for an unseen one."""

    def __init__(self, num_prompts: int, prior: float):
        self.prior = float(prior)
        self.sums = np.zeros(num_prompts)
        self.counts = np.zeros(num_prompts, np.int64)

    def estimate(self, prompt_ids: np.ndarray) -> np.ndarray:
        n = self.counts[prompt_ids]
        return np.where(n > 0, self.sums[prompt_ids] / np.maximum(n, 1), self.prior)

    def observe(self, samples: Samples) -> None:
        np.add.at(self.sums, samples.prompt_ids, samples.lengths)
        np.add.at(self.counts, samples.prompt_ids, 1)

    def state_dict(self) -> dict:
        return {"prior": self.prior, "sums": self.sums.copy(), "counts": self.counts.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.prior = float(state["prior"])
        self.sums = np.asarray(state["sums"], float).copy()
        self.counts = np.asarray(state["counts"], np.int64).copy()


class Step:
    """One training step as the allocator sees it.

    Holds the batch (prompt ids, growing as the method takes or adds prompts), forwards sample
    requests to the source and logs every sample, and times the source so that the allocator's
    own time can be reported. ``source`` is there for methods that declared a ``Need`` the
    driver checked the source ``provides`` (CROPI's gradients).
    """

    def __init__(
        self,
        index: int,
        stream: PromptStream,
        source: RolloutSource,
        budget: int,
        prompts_per_step: int,
        token_budget: int | None = None,
        lengths: LengthEstimates | None = None,
    ):
        self.index = int(index)
        self.stream = stream
        self.source = source
        self.budget = int(budget)
        self.prompts_per_step = int(prompts_per_step)
        # A budget in tokens: ``budget`` is set from it once the batch is known (``to_rollouts``)
        self.token_budget = token_budget
        self.lengths = lengths
        self._prompts: list[np.ndarray] = []
        self._n_prompts = 0
        self._parts: list[Samples] = []
        self.rollouts = 0
        self.source_seconds = 0.0
        self.rounds: list[Round] = []
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
            self._prompt_cache = (
                self._prompts[0]
                if len(self._prompts) == 1
                else np.concatenate(self._prompts)
                if self._prompts
                else np.zeros(0, np.int64)
            )
        return self._prompt_cache

    @property
    def num_groups(self) -> int:
        return self._n_prompts

    def to_rollouts(self, groups: np.ndarray, least_per_prompt: int) -> int:
        """With a token budget, set ``budget`` to the rollouts it buys for ``groups``: the token
        budget over the mean of their length estimates, rounded, and at least
        ``least_per_prompt`` per prompt. Returns the rollout budget either way."""
        if self.token_budget is not None and self.lengths is not None:
            mean = float(self.lengths.estimate(self.prompt_ids[groups]).mean())
            rollouts = int(round(self.token_budget / max(mean, 1.0)))
            self.budget = max(rollouts, least_per_prompt * int(groups.size))
        return self.budget

    # -- sample ----------------------------------------------------------------------------
    def sample(self, groups: np.ndarray, counts: np.ndarray) -> Samples:
        """Request ``counts[i]`` rollouts for group ``groups[i]``; returns this request's samples,
        ``group`` being the batch position. Zero counts are allowed and skipped."""
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
        seconds = time.perf_counter() - t0
        self.source_seconds += seconds
        total = int(counts.sum())
        if len(out) != total or out.group.shape != (total,):
            raise RuntimeError(
                f"the rollout source returned {len(out)} samples for a request of {total}"
            )
        out.group = groups[out.group]
        self._parts.append(out)
        self.rollouts += total
        if total:
            self.rounds.append(
                Round(
                    total,
                    int(groups.size),
                    int(out.lengths.sum()),
                    int(out.lengths.max()),
                    float(out.prompt_tokens.mean())
                    if out.prompt_tokens is not None
                    else float("nan"),
                    seconds,
                )
            )
        return out

    @property
    def samples(self) -> Samples:
        """Every sample generated so far this step, in generation order."""
        if len(self._parts) > 1:
            self._parts = [Samples.concat(self._parts)]
        return Samples.concat(self._parts)

    # -- finish ----------------------------------------------------------------------------
    def finish(self, train: TrainBatch, solver_seconds: float, info: dict) -> StepResult:
        samples = self.samples
        counts = GroupCounts(
            *group_counts(
                self.num_groups, samples.group, samples.rewards, samples.lengths, train.index
            )
        )
        return StepResult(
            self.index, self.prompt_ids, samples, train, counts, solver_seconds, info, self.rounds
        )


def even_split(total: int, parts: int) -> np.ndarray:
    """``total`` over ``parts``: total // parts each, +1 to the first total % parts (the even
    split every official allocator uses, remainder to the first prompts in batch order)."""
    out = np.full(parts, total // parts, np.int64)
    out[: total % parts] += 1
    return out


# --------------------------------------------------------------------------------------------
# What a method declares, and the check of a run's settings against it
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """What a method needs from the harness, read by the driver and by ``validate``.

    ``spend``: ``"budget"`` if a step never generates more than the step budget, ``"own"`` if
    the method decides its spend (multi-round methods, CROPI's offline pass).
    ``min_rollouts_per_prompt``: a budget below ``prompts_per_step`` times this is refused
    (methods that spend the budget). ``needs``: what the rollout source must provide.
    ``presets``: named option sets, ``name@preset`` on the command line. ``instead``: what to
    run where a source lacks ``needs`` (the refusal line names it). ``reference``: a yardstick
    for the simulator, never a method to deploy (the oracle, which reads the true success
    rates): ``all`` on the command line leaves it out and a source without its needs refuses it
    as such.
    """

    spend: Literal["budget", "own"] = "budget"
    min_rollouts_per_prompt: int = 2
    needs: frozenset[str] = frozenset()
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    instead: str = ""
    reference: bool = False


class SettingsError(ValueError):
    """A run's settings that a method cannot run with; the message is one line for the user."""


def validate(
    allocator: Allocator,
    label: str,
    budget: int,
    prompts_per_step: int,
    provides: frozenset[str] | None = None,
    budget_unit: str = "rollouts",
) -> None:
    """Refuse, before a run starts, a budget below the method's minimum, a budget in tokens for
    a method that does not spend the step budget, or a source that lacks what the method needs
    (``provides=None``: the source is not known yet). A token budget is checked as if every
    response were one token long (the least it can buy)."""
    caps = allocator.capabilities()
    if budget_unit == "tokens" and not (
        caps.spend == "budget" and isinstance(allocator, StaticAllocator)
    ):
        raise SettingsError(
            f"{label} cannot take its budget in tokens: it decides its own spend "
            "(use --budget-unit rollouts)"
        )
    if budget < 1 or prompts_per_step < 1:
        raise SettingsError("budget and prompts per step must be positive")
    need = prompts_per_step * caps.min_rollouts_per_prompt
    if caps.spend == "budget" and budget < need:
        raise SettingsError(
            f"budget {budget} is below {label}'s minimum of "
            f"{caps.min_rollouts_per_prompt} rollouts x {prompts_per_step} "
            f"prompts = {need}"
        )
    if provides is not None:
        missing = sorted(caps.needs - provides)
        if missing and caps.reference:
            raise SettingsError(
                f"{label} is a reference for the simulator (it reads {', '.join(missing)}), "
                f"not a method to deploy: score it with bench simulate --frozen"
            )
        if missing:
            raise SettingsError(
                f"{label} needs {', '.join(missing)} from the rollout source, "
                f"which this mode does not provide"
                + (f"; use {caps.instead}" if caps.instead else "")
            )


# --------------------------------------------------------------------------------------------
# Allocators
# --------------------------------------------------------------------------------------------
# Inclusive (low, high) limits of numeric options; None leaves a side open.
Bounds = Mapping[str, tuple[float | None, float | None]]


def check_numbers(config: Any, bounds: Bounds, prefix: str = "") -> None:
    """Refuse a dataclass whose int or float fields are not finite or leave their ``bounds``.

    Every settings dataclass of the project (method configs, simulator and trainer configs)
    calls this from ``__post_init__``, so a value is checked once, where it is declared, before
    any run: ``SettingsError`` names the field, the value and the range.
    """
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            continue
        if not math.isfinite(value):
            raise SettingsError(f"{prefix}{f.name} must be a finite number, not {value}")
        low, high = bounds.get(f.name, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            span = (
                f"[{'-inf' if low is None else _num(low)}, {'inf' if high is None else _num(high)}]"
            )
            raise SettingsError(f"{prefix}{f.name} must be in {span}, not {_num(value)}")


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass
class AllocatorConfig:
    """Base of every method's config dataclass (one per method, TRL style).

    ``bounds`` gives every numeric option its inclusive range (``check_numbers``, run by
    ``__post_init__``; the check suite requires an entry for each numeric field, with an upper
    limit for each integer one). A method's own ``__post_init__`` calls ``super().__post_init__()``
    first, then checks relations between options.
    """

    bounds: ClassVar[Bounds] = {}

    def __post_init__(self) -> None:
        check_numbers(self, self.bounds)


class Allocator:
    """Base class: a method is a subclass with a ``name``, a ``Config`` dataclass, its
    ``caps`` and a ``run_step``.

    ``reset`` sizes per-prompt state at the start of a run. A method that keeps per-prompt
    statistics sets ``self.stats`` (an ``allocators.stats.PromptStats``) there; the default
    ``observe``, ``state_dict`` and ``load_state_dict`` then record and checkpoint it. Methods
    with more state extend them. ``state_dict`` must hold everything the next steps depend on,
    except the generator passed to ``reset``, which the driver saves.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[AllocatorConfig]] = AllocatorConfig
    caps: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: AllocatorConfig | None = None):
        self.config: Any = config if config is not None else self.Config()
        self.num_prompts = 0
        self.stats: Any = None
        self.rng = np.random.default_rng(0)

    def capabilities(self) -> Capabilities:
        """What this configured method declares: the class's ``caps``, unless an option changes
        them (a method overrides this then)."""
        return self.caps

    # -- lifecycle ---------------------------------------------------------------------------
    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        """Start of a run: size per-prompt state for ``num_prompts`` training prompts."""
        self.num_prompts = int(num_prompts)
        self.rng = rng

    def step(self, step: Step) -> StepResult:
        """Run the method's step; time the allocator, generation excluded."""
        t0 = time.perf_counter()
        train, info = self.run_step(step)
        solver = time.perf_counter() - t0 - step.source_seconds
        return step.finish(train, max(solver, 0.0), info)

    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        """Select, sample and build the training batch of one step; returns it and the step's
        method-specific numbers."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_step")

    def observe(self, result: StepResult) -> None:
        """Update per-prompt statistics with every reward of the step, trained or not."""
        if self.stats is not None:
            self.stats.observe(result)

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict()} if self.stats is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.stats is not None:
            self.stats.load_state_dict(state["stats"])


class StaticAllocator(Allocator):
    """A method that samples once per step: ``allocate`` gives the rollouts of each of the
    ``prompts_per_step`` prompts taken from the epoch stream (and per-step info), ``build``
    the training batch from their samples. With a budget in tokens, ``step.budget`` is the
    rollouts it buys for the batch (``Step.to_rollouts``) by the time ``allocate`` runs."""

    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        groups = step.take_prompts()
        step.to_rollouts(groups, self.capabilities().min_rollouts_per_prompt)
        counts, info = self.allocate(step, groups)
        samples = step.sample(groups, counts)
        return self.build(step, samples), info

    def allocate(self, step: Step, groups: np.ndarray) -> tuple[np.ndarray, dict]:
        raise NotImplementedError(f"{type(self).__name__} must implement allocate")

    def build(self, step: Step, samples: Samples) -> TrainBatch:
        raise NotImplementedError(f"{type(self).__name__} must implement build")
