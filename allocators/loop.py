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

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from allocators.base import (
    Allocator,
    Bounds,
    PromptStream,
    RolloutSource,
    Step,
    StepResult,
    check_numbers,
)
from allocators.metrics import STEP_METRICS, run_metrics, step_metrics

# What a learner reports about its update; NaN where a learner has no such number.
LEARN_STATS = ("grad_norm", "pg_loss", "kl", "clip_frac")
STEP_COLUMNS = (
    "step",
    *STEP_METRICS,
    *LEARN_STATS,
    "cum_rollouts",
    "cum_tokens",
    "gen_seconds",
    "update_seconds",
    "step_seconds",
    "gen_tokens_per_second",
)
EVAL_COLUMNS = ("step", "rollouts", "tokens", "test_accuracy")
ALLOCATION_COLUMNS = ("step", "p_low", "p_high", "prompts", "rollouts")
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


# The limits of a run's settings, the same in both modes and on the command line: far above any
# real run, low enough that a typo cannot ask for more memory than a machine has.
MAX_SEED = 2**32 - 1
RUN_BOUNDS: Bounds = {
    "seed": (0, MAX_SEED),
    "steps": (1, 100_000),
    "budget": (1, 1_000_000),  # rollouts per step
    "prompts_per_step": (1, 1_000_000),
    "eval_every": (1, 100_000),
    "target_accuracy": (0.0, 1.0),
}


@dataclass(frozen=True)
class Schedule:
    steps: int
    budget: int  # rollouts per step
    prompts_per_step: int
    eval_every: int
    target_accuracy: float

    def __post_init__(self) -> None:
        check_numbers(self, RUN_BOUNDS)


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
        "prompts_per_step": schedule.prompts_per_step,
        "steps": schedule.steps,
        "eval_every": schedule.eval_every,
        "frozen": frozen,
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
    wall_seconds: float = 0.0


@dataclass
class RunOutput:
    config: dict  # the resolved config (its hash identifies the run)
    identity: dict  # the run's leaderboard identity: mode, scenario, model, method, ...
    summary: dict  # run-level metrics (the leaderboard columns this run fills)
    steps: pd.DataFrame  # STEP_COLUMNS, one row per step
    evals: pd.DataFrame  # EVAL_COLUMNS, one row per evaluation (step 0 included)
    allocation: pd.DataFrame  # ALLOCATION_COLUMNS, per evaluation period and decile


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
) -> tuple[Progress, float]:
    """Run ``schedule`` from ``start`` (a fresh run if None) to the end.

    ``on_step(done, row)`` is called after every step with its row (``test_accuracy`` added on
    evaluation steps) and once before the first step of a fresh run (done = 0). After a step,
    ``checkpoint(progress)`` runs every ``checkpoint_every`` steps and when ``should_stop()``
    is true before the last step, which then raises ``Interrupted``. Returns the progress and
    the wall seconds of this call."""
    s = schedule
    prog = start if start is not None else Progress()
    t_start = time.perf_counter()
    if not prog.evals:
        acc = learner.evaluate()
        prog.evals.append({"step": 0, "rollouts": 0, "tokens": 0, "test_accuracy": acc})
        if on_step is not None:
            on_step(0, {"test_accuracy": acc})
    for t in range(prog.done, s.steps):
        t0 = time.perf_counter()
        source.begin_step(t)
        step = Step(t, stream, source, s.budget, s.prompts_per_step)
        result = allocator.step(step)
        t1 = time.perf_counter()
        learned = learner.learn(result)
        allocator.observe(result)
        m = step_metrics(result.counts, result.solver_seconds)
        prog.cum_rollouts += int(m["rollouts"])
        prog.cum_tokens += int(m["tokens"])
        gen = step.source_seconds
        row = {
            "step": t + 1,
            **m,
            **{k: learned.get(k, float("nan")) for k in LEARN_STATS},
            "cum_rollouts": prog.cum_rollouts,
            "cum_tokens": prog.cum_tokens,
            "gen_seconds": gen,
            "update_seconds": time.perf_counter() - t1,
            "step_seconds": time.perf_counter() - t0,
            "gen_tokens_per_second": m["tokens"] / gen if gen > 0 else 0.0,
        }
        if (t + 1) % s.eval_every == 0 or t + 1 == s.steps:
            acc = learner.evaluate()
            prog.evals.append(
                {
                    "step": t + 1,
                    "rollouts": prog.cum_rollouts,
                    "tokens": prog.cum_tokens,
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
        if on_step is not None:
            on_step(t + 1, row)
        stop = t + 1 < s.steps and should_stop()
        if (
            checkpoint is not None
            and t + 1 < s.steps
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


def summarize(prog: Progress, schedule: Schedule) -> dict:
    """The leaderboard's metrics of a finished run."""
    rows = prog.rows
    er = np.array([e["rollouts"] for e in prog.evals], float)
    ea = np.array([e["test_accuracy"] for e in prog.evals], float)

    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], float)

    return {
        "initial_test_accuracy": float(ea[0]),
        **run_metrics(er, ea, schedule.target_accuracy),
        "target_accuracy": schedule.target_accuracy,
        "rollouts": int(prog.cum_rollouts),
        "tokens": int(prog.cum_tokens),
        "train_samples": int(col("train_samples").sum()),
        "final_train_reward": float(
            np.nanmean(col("train_reward")[-max(1, schedule.eval_every) :])
        ),
        "mean_effective_grad_ratio": float(col("effective_grad_ratio").mean()),
        "mean_effective_prompt_ratio": float(col("effective_prompt_ratio").mean()),
        "solver_seconds_per_step": float(col("solver_seconds").mean()),
        "wall_seconds": prog.wall_seconds,
    }


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
