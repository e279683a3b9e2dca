"""The one run loop of both modes: a method, a rollout source and a learner, step by step.

``run`` drives ``allocator.step(Step(...))``, ``learner.learn(result)`` and
``allocator.observe(result)`` for every step, evaluates the learner every ``eval_every`` steps
and at the end, and returns a ``RunOutput`` whose tables have the same columns in the simulator
and in the trainer (``STEP_COLUMNS``, ``EVAL_COLUMNS``, ``ALLOCATION_COLUMNS``). The learner is
the simulator's learning model or the trainer's policy (``Learner``); the loop never asks which,
nor which method runs. ``Progress`` holds everything the loop has recorded, so a trainer can
checkpoint it and continue (``start``). Metric definitions: ``allocators/metrics.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from allocators.base import (
    Allocator,
    Bounds,
    LengthEstimates,
    PromptStream,
    RolloutSource,
    SettingsError,
    Step,
    StepResult,
    check_numbers,
)
from allocators.cost import CostModel
from allocators.metrics import STEP_METRICS, run_metrics, step_metrics

# What a learner reports about its update; NaN where a learner has no such number.
# ``expected_informative_groups`` and ``pg_variance`` need the true success rates (the
# simulator; docs/simulator.md#metrics): the expected number of the step's groups with mixed
# rewards, and the exact variance of its GRPO gradient estimate.
LEARN_STATS = (
    "grad_norm",
    "pg_loss",
    "kl",
    "clip_frac",
    "expected_informative_groups",
    "pg_variance",
)
STEP_COLUMNS = (
    "step",
    *STEP_METRICS,
    *LEARN_STATS,
    "cum_rollouts",
    "cum_tokens",
    "rounds",
    "model_gen_seconds",  # the cost model's generation seconds of the step's rounds
    "cum_model_gen_seconds",
    "token_budget",  # the step's budget in tokens (budget_unit tokens), else NaN
    "gen_seconds",  # measured: the source's wall time (the trainer's generation)
    "update_seconds",
    "step_seconds",
    "gen_tokens_per_second",
)
EVAL_COLUMNS = ("step", "rollouts", "tokens", "seconds", "test_accuracy")
ROUND_COLUMNS = (
    "step",
    "round",
    "sequences",
    "prompts",
    "tokens",
    "longest",
    "prompt_tokens",
    "seconds",  # measured (the source call)
    "model_seconds",  # the cost model's
)
ALLOCATION_COLUMNS = ("step", "p_low", "p_high", "prompts", "rollouts")
# The rollout log (docs/results.md#rollout-log): one row per prompt visit, a visit being the
# rollouts one generation round of a step drew for one prompt. Integers throughout.
ROLLOUT_LOG_COLUMNS = ("step", "round", "prompt_id", "rollouts", "successes", "tokens")
HIST_BINS = 10


class Learner(Protocol):
    """What the loop needs from the thing that learns."""

    def learn(self, result: StepResult) -> dict[str, float]:
        """Apply the step's update (``result.train``); returns some of ``LEARN_STATS``."""
        ...

    def evaluate(self) -> float:
        """Test accuracy of the current policy."""
        ...

    def take_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Prompts and rollouts per pass-rate decile (``HIST_BINS`` bins) since the last call:
        the true rate in the simulator, the step's observed rate in the trainer."""
        ...

    def reference_length(self) -> tuple[float, int]:
        """(mean response tokens per rollout of the initial policy, the longest a response can
        be): the same for every method under a seed, it turns a step budget into the tokens and
        seconds uniform GRPO spends (the equal-compute checkpoints, token budgets' prior)."""
        ...


# The limits of a run's settings, the same in both modes and on the command line: far above any
# real run, low enough that a typo cannot ask for more memory than a machine has.
MAX_SEED = 2**32 - 1
RUN_BOUNDS: Bounds = {
    "seed": (0, MAX_SEED),
    "steps": (1, 100_000),
    "budget": (1, 10**10),  # per step: at most 10^6 rollouts, or 10^10 tokens
    "prompts_per_step": (1, 1_000_000),
    "compute_budget": (0.0, 1e18),  # 0: no compute budget
    "eval_every": (1, 100_000),
    "target_accuracy": (0.0, 1.0),
}


MAX_ROLLOUT_BUDGET = 1_000_000
BUDGET_UNITS = ("rollouts", "tokens")
COMPUTE_UNITS = ("rollouts", "tokens", "seconds")
CHECKPOINTS = (20, 50, 100)  # % of uniform's compute in `steps` steps (docs/results.md)


def check_units(budget: int, budget_unit: str, compute_unit: str, compute_budget: float) -> None:
    """The budget and compute settings every mode shares; ``SettingsError`` otherwise."""
    if budget_unit not in BUDGET_UNITS:
        raise SettingsError(f"budget unit must be {' or '.join(BUDGET_UNITS)}, not {budget_unit!r}")
    if budget_unit == "rollouts" and budget > MAX_ROLLOUT_BUDGET:
        raise SettingsError(f"budget must be at most {MAX_ROLLOUT_BUDGET:,} rollouts per step")
    if compute_unit and compute_unit not in COMPUTE_UNITS:
        raise SettingsError(
            f"compute unit must be one of {', '.join(COMPUTE_UNITS)}, not {compute_unit!r}"
        )
    if compute_budget > 0 and not compute_unit:
        raise SettingsError("a compute budget needs its unit (rollouts, tokens or seconds)")
    if compute_unit and compute_budget <= 0:
        raise SettingsError(f"the compute budget in {compute_unit} must be positive")


@dataclass(frozen=True)
class Schedule:
    steps: int  # the step limit
    budget: int  # per step, in budget_unit
    prompts_per_step: int
    eval_every: int
    target_accuracy: float
    budget_unit: str = "rollouts"  # rollouts | tokens (the methods convert, allocators/base.py)
    compute_unit: str = ""  # "" (none), rollouts, tokens or seconds
    compute_budget: float = 0.0  # the run stops at the step that spends it

    def __post_init__(self) -> None:
        check_numbers(self, RUN_BOUNDS)
        check_units(self.budget, self.budget_unit, self.compute_unit, self.compute_budget)


def identity(
    mode: str,
    scenario: str,
    model: str,
    method: str,
    method_name: str,
    seed: int,
    schedule: Schedule,
    frozen: bool,
) -> dict:
    """A run's leaderboard identity columns, the same in both modes."""
    return {
        "mode": mode,
        "scenario": scenario,
        "model": model,
        "method": method,
        "method_name": method_name,
        "seed": seed,
        "budget": schedule.budget,
        "budget_unit": schedule.budget_unit,
        "prompts_per_step": schedule.prompts_per_step,
        "steps": schedule.steps,
        "eval_every": schedule.eval_every,
        "frozen": frozen,
        "compute_unit": schedule.compute_unit,
        "compute_budget": schedule.compute_budget if schedule.compute_unit else float("nan"),
    }


@dataclass
class Progress:
    """What the loop has recorded so far (a checkpoint holds it)."""

    done: int = 0
    rows: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    allocation: list[tuple] = field(default_factory=list)
    cum_rollouts: int = 0
    cum_tokens: int = 0
    cum_seconds: float = 0.0  # modelled generation seconds (the cost model)
    wall_seconds: float = 0.0
    reference: tuple = ()  # the learner's reference_length(), taken once at the start
    lengths_state: dict = field(default_factory=dict)  # LengthEstimates (token budgets)
    rounds: list[tuple] = field(default_factory=list)  # ROUND_COLUMNS
    stopped_by_compute: bool = False
    visits: list[np.ndarray] = field(default_factory=list)  # per step, ROLLOUT_LOG_COLUMNS rows


@dataclass
class RunOutput:
    config: dict  # the resolved config (its hash identifies the run)
    identity: dict  # the run's leaderboard identity: mode, scenario, model, method, ...
    summary: dict  # run-level metrics (the leaderboard columns this run fills)
    steps: pd.DataFrame  # STEP_COLUMNS, one row per step
    evals: pd.DataFrame  # EVAL_COLUMNS, one row per evaluation (step 0 included)
    allocation: pd.DataFrame  # ALLOCATION_COLUMNS, per evaluation period and decile
    rounds: pd.DataFrame | None = None  # ROUND_COLUMNS, one row per generation round
    visits: pd.DataFrame | None = None  # ROLLOUT_LOG_COLUMNS, one row per prompt visit


class Interrupted(Exception):
    """``should_stop`` asked the loop to stop after ``progress.done`` steps."""

    def __init__(self, progress: Progress):
        super().__init__(f"stopped after step {progress.done}")
        self.progress = progress


def run(
    allocator: Allocator,
    source: RolloutSource,
    learner: Learner,
    stream: PromptStream,
    schedule: Schedule,
    start: Progress | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint: Callable[[Progress], None] | None = None,
    checkpoint_every: int = 0,
    cost: CostModel | None = None,
) -> tuple[Progress, float]:
    """Run ``schedule`` from ``start`` (a fresh run if None) to the end: its last step, or the
    step whose compute crosses ``schedule.compute_budget`` (then evaluated, and the last).

    ``on_step(done, row)`` is called after every step with its row (``test_accuracy`` added on
    evaluation steps) and once before the first step of a fresh run (done = 0). After a step,
    ``checkpoint(progress)`` runs every ``checkpoint_every`` steps and when ``should_stop()``
    is true before the last step, which then raises ``Interrupted``. ``cost`` prices each
    step's generation rounds (default ``CostModel()``). Returns the progress and the wall
    seconds of this call."""
    s = schedule
    cost = cost or CostModel()
    prog = start if start is not None else Progress()
    t_start = time.perf_counter()
    if not prog.evals:
        acc = learner.evaluate()
        prog.evals.append(
            {"step": 0, "rollouts": 0, "tokens": 0, "seconds": 0.0, "test_accuracy": acc}
        )
        if on_step is not None:
            on_step(0, {"test_accuracy": acc})
    if not prog.reference:
        prog.reference = tuple(learner.reference_length())
    lengths = None
    if s.budget_unit == "tokens":
        lengths = LengthEstimates(stream.num_prompts, prog.reference[0])
        if prog.lengths_state:
            lengths.load_state_dict(prog.lengths_state)
    for t in range(prog.done, s.steps):
        t0 = time.perf_counter()
        source.begin_step(t)
        token_budget = s.budget if s.budget_unit == "tokens" else None
        step = Step(t, stream, source, s.budget, s.prompts_per_step, token_budget, lengths)
        result = allocator.step(step)
        t1 = time.perf_counter()
        learned = learner.learn(result)
        allocator.observe(result)
        if lengths is not None:
            lengths.observe(result.samples)
        m = step_metrics(result.counts, result.solver_seconds)
        prog.cum_rollouts += int(m["rollouts"])
        prog.cum_tokens += int(m["tokens"])
        model_seconds = 0.0
        for k, r in enumerate(result.rounds):
            sec = cost.round_seconds(
                r.sequences,
                r.tokens,
                r.longest,
                r.prompt_tokens if math.isfinite(r.prompt_tokens) else None,
            )
            model_seconds += sec
            prog.rounds.append(
                (t + 1, k, r.sequences, r.prompts, r.tokens, r.longest, r.prompt_tokens)
                + (r.seconds, sec)
            )
        prog.cum_seconds += model_seconds
        prog.visits.append(visit_rows(result, t + 1))
        gen = step.source_seconds
        row = {
            "step": t + 1,
            **m,
            **{k: learned.get(k, float("nan")) for k in LEARN_STATS},
            "cum_rollouts": prog.cum_rollouts,
            "cum_tokens": prog.cum_tokens,
            "rounds": len(result.rounds),
            "model_gen_seconds": model_seconds,
            "cum_model_gen_seconds": prog.cum_seconds,
            "token_budget": float("nan") if token_budget is None else float(token_budget),
            "gen_seconds": gen,
            "update_seconds": time.perf_counter() - t1,
            "step_seconds": time.perf_counter() - t0,
            "gen_tokens_per_second": m["tokens"] / gen if gen > 0 else 0.0,
        }
        spent = {
            "rollouts": float(prog.cum_rollouts),
            "tokens": float(prog.cum_tokens),
            "seconds": prog.cum_seconds,
        }
        out_of_compute = bool(s.compute_unit) and spent[s.compute_unit] >= s.compute_budget
        last = t + 1 == s.steps or out_of_compute
        if (t + 1) % s.eval_every == 0 or last:
            acc = learner.evaluate()
            prog.evals.append(
                {
                    "step": t + 1,
                    "rollouts": prog.cum_rollouts,
                    "tokens": prog.cum_tokens,
                    "seconds": prog.cum_seconds,
                    "test_accuracy": acc,
                }
            )
            hp, hr = learner.take_histogram()
            prog.allocation.extend(
                (t + 1, k / HIST_BINS, (k + 1) / HIST_BINS, int(hp[k]), int(hr[k]))
                for k in range(HIST_BINS)
            )
            row["test_accuracy"] = acc
        prog.rows.append(row)
        prog.done = t + 1
        if lengths is not None:
            prog.lengths_state = lengths.state_dict()
        if on_step is not None:
            on_step(t + 1, row)
        if out_of_compute:
            prog.stopped_by_compute = True
            break
        stop = not last and should_stop()
        if (
            checkpoint is not None
            and not last
            and (stop or (checkpoint_every and (t + 1) % checkpoint_every == 0))
        ):
            prog.wall_seconds += time.perf_counter() - t_start
            t_start = time.perf_counter()
            checkpoint(prog)
        if stop:
            raise Interrupted(prog)
    wall = time.perf_counter() - t_start
    prog.wall_seconds += wall
    return prog, wall


def tables(prog: Progress) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The run folder's tables (steps, evals, allocation) of a finished run."""
    steps = pd.DataFrame(prog.rows, columns=list(STEP_COLUMNS))
    evals = pd.DataFrame(prog.evals, columns=list(EVAL_COLUMNS))
    alloc = pd.DataFrame(prog.allocation, columns=list(ALLOCATION_COLUMNS))
    return steps, evals, alloc


def output(
    config: dict, identity: dict, prog: Progress, schedule: Schedule, cost: CostModel
) -> RunOutput:
    """The ``RunOutput`` of a finished run of either mode: its config and identity, the
    run-level summary and every run-folder table."""
    steps, evals, allocation = tables(prog)
    return RunOutput(
        config,
        identity,
        summarize(prog, schedule, cost),
        steps,
        evals,
        allocation,
        round_table(prog),
        rollout_log(prog),
    )


def visit_rows(result: StepResult, step: int) -> np.ndarray:
    """The rollout-log rows of one step (``ROLLOUT_LOG_COLUMNS``, int64): per generation round
    (``result.rounds``, in the order the samples were drawn) and per prompt of the batch, the
    rollouts drawn, how many were correct and their response tokens. Prompts a round did not
    sample have no row."""
    s = result.samples
    n = len(s)
    if n == 0:
        return np.zeros((0, len(ROLLOUT_LOG_COLUMNS)), np.int64)
    sizes = np.fromiter((r.sequences for r in result.rounds), np.int64, len(result.rounds))
    rnd = (
        np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        if sizes.sum() == n
        else np.zeros(n, np.int64)
    )
    width = max(int(result.prompt_ids.size), 1)
    keys, inverse = np.unique(rnd * width + s.group, return_inverse=True)
    out = np.empty((keys.size, len(ROLLOUT_LOG_COLUMNS)), np.int64)
    out[:, 0] = step
    out[:, 1] = keys // width
    out[:, 2] = result.prompt_ids[keys % width]
    out[:, 3] = np.bincount(inverse, minlength=keys.size)
    out[:, 4] = np.rint(np.bincount(inverse, s.rewards, keys.size))
    out[:, 5] = np.rint(np.bincount(inverse, s.lengths, keys.size))
    return out


def rollout_log(prog: Progress) -> pd.DataFrame:
    """The run folder's ``rollouts.parquet``: every prompt visit of the run."""
    rows = (
        np.concatenate(prog.visits)
        if prog.visits
        else np.zeros((0, len(ROLLOUT_LOG_COLUMNS)), np.int64)
    )
    return pd.DataFrame(rows, columns=list(ROLLOUT_LOG_COLUMNS))


def round_table(prog: Progress) -> pd.DataFrame:
    """The run folder's ``rounds.csv``: every generation round, measured and modelled."""
    return pd.DataFrame(prog.rounds, columns=list(ROUND_COLUMNS))


def per_step_reference(schedule: Schedule, reference: tuple, cost: CostModel) -> dict[str, float]:
    """The compute uniform GRPO spends in one step, per unit, at the initial policy's mean
    length: ``budget`` rollouts (or the rollouts a token budget buys), that many times the mean
    length in tokens, and one round of them in modelled seconds (the longest response at the
    cap). The same for every method under a seed: the equal-compute axis."""
    mean_len, longest = float(reference[0]), int(reference[1])
    rollouts = (
        schedule.budget / max(mean_len, 1.0)
        if schedule.budget_unit == "tokens"
        else float(schedule.budget)
    )
    tokens = rollouts * mean_len
    seconds = cost.round_seconds(int(round(rollouts)), int(round(tokens)), longest)
    return {"rollouts": rollouts, "tokens": tokens, "seconds": seconds}


def accuracy_at(x: np.ndarray, acc: np.ndarray, at: float) -> float:
    """Test accuracy at compute ``at`` on the evaluation curve (x ascending from 0): linear
    between evaluations; a run that ended before ``at`` keeps its final accuracy (it spent
    less, so this never flatters it)."""
    if x.size == 0:
        return float("nan")
    if at >= x[-1]:
        return float(acc[-1])
    return float(np.interp(at, x, acc))


def summarize(prog: Progress, schedule: Schedule, cost: CostModel | None = None) -> dict:
    """The leaderboard's metrics of a finished run."""
    cost = cost or CostModel()
    rows = prog.rows
    er = np.array([e["rollouts"] for e in prog.evals], float)
    ea = np.array([e["test_accuracy"] for e in prog.evals], float)

    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], float)

    ref = per_step_reference(schedule, prog.reference, cost)
    matched = {}
    for unit in COMPUTE_UNITS:
        x = np.array([e.get(unit, np.nan) for e in prog.evals], float)
        for pct in CHECKPOINTS:
            at = pct / 100 * schedule.steps * ref[unit]
            matched[f"acc_{unit}_{pct}"] = accuracy_at(x, ea, at)
    tb = col("token_budget")
    token_error = (
        float(np.mean(np.abs(col("tokens") - tb) / tb)) if np.isfinite(tb).any() else float("nan")
    )
    return {
        "steps_done": prog.done,
        "initial_test_accuracy": float(ea[0]),
        **run_metrics(er, ea, schedule.target_accuracy),
        **matched,
        "target_accuracy": schedule.target_accuracy,
        "rollouts": int(prog.cum_rollouts),
        "tokens": int(prog.cum_tokens),
        "gen_seconds": float(prog.cum_seconds),
        "token_budget_error": token_error,
        "train_samples": int(col("train_samples").sum()),
        "final_train_reward": float(
            np.nanmean(col("train_reward")[-max(1, schedule.eval_every) :])
        ),
        "mean_effective_grad_ratio": float(col("effective_grad_ratio").mean()),
        "mean_effective_prompt_ratio": float(col("effective_prompt_ratio").mean()),
        "mean_expected_informative_groups": _nanmean(col("expected_informative_groups")),
        "mean_pg_variance": _nanmean(col("pg_variance")),
        "solver_seconds_per_step": float(col("solver_seconds").mean()),
        "wall_seconds": prog.wall_seconds,
    }


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


class Histogram:
    """Prompts and rollouts per pass-rate decile, accumulated until ``take`` (a learner's
    ``take_histogram``). The simulator's kernel adds to the arrays by the true rate;
    ``add_observed`` adds a step's groups by their observed pass rate (the trainer's view)."""

    def __init__(self) -> None:
        self.prompts = np.zeros(HIST_BINS, np.int64)
        self.rollouts = np.zeros(HIST_BINS, np.int64)

    def add_observed(self, result: StepResult) -> None:
        gen = result.counts.generated
        seen = gen > 0
        rate = result.counts.successes[seen] / gen[seen]
        k = np.minimum((rate * HIST_BINS).astype(np.int64), HIST_BINS - 1)
        np.add.at(self.prompts, k, 1)
        np.add.at(self.rollouts, k, gen[seen])

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """The counts since the last call, then zero."""
        out = self.prompts.copy(), self.rollouts.copy()
        self.prompts[:] = 0
        self.rollouts[:] = 0
        return out
