"""The metrics (docs/simulator.md#metrics): one definition, used by the simulator and the trainer.

Pure functions of a step's ``GroupCounts`` or of a run's evaluation curve; no plotting, no I/O.

Per step
- ``effective_grad_ratio``: trained responses whose group (the prompt's trained samples) has
  non-zero reward variance / trained responses (response-weighted, as Knapsack RL's
  ``compute_coverage_metric``).
- ``effective_prompt_ratio``: prompts with at least one success and one failure among the
  rollouts generated for them this step / prompts in the batch.
- ``rollouts``, ``tokens``: everything generated (discarded samples included);
  ``train_samples``: samples that train; ``train_reward``: mean reward over generated rollouts.

Per run
- ``final_test_accuracy``: test accuracy at the last evaluation point.
- ``auc_test_accuracy``: area under test accuracy against cumulative rollouts (trapezoid, from
  the first evaluation point at 0 rollouts), divided by the rollout span: the mean accuracy over
  the run's compute, in [0, 1].
- ``rollouts_to_target``: cumulative rollouts at the first evaluation point whose test accuracy
  reaches the target (linear interpolation between evaluation points); NaN if never reached.
"""

from __future__ import annotations

import numpy as np

STEP_METRICS = (
    "rollouts",
    "tokens",
    "train_samples",
    "train_reward",
    "effective_grad_ratio",
    "effective_prompt_ratio",
    "solver_seconds",
)


def step_metrics(counts, solver_seconds: float = 0.0) -> dict[str, float]:
    """Metrics of one step from its ``GroupCounts``."""
    gen = counts.generated
    rollouts = int(gen.sum())
    trained = counts.trained
    n_train = int(trained.sum())
    mixed_train = (counts.trained_successes > 0) & (counts.trained_successes < trained)
    mixed_gen = (counts.successes > 0) & (counts.successes < gen)
    groups = gen.shape[0]
    return {
        "rollouts": rollouts,
        "tokens": int(counts.tokens.sum()),
        "train_samples": n_train,
        "train_reward": float(counts.successes.sum() / rollouts) if rollouts else float("nan"),
        "effective_grad_ratio": float(trained[mixed_train].sum() / n_train) if n_train else 0.0,
        "effective_prompt_ratio": float(mixed_gen.sum() / groups) if groups else 0.0,
        "solver_seconds": float(solver_seconds),
    }


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Normalised area under y(x): trapezoid area / (x[-1] − x[0]); y[0] for a single point."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.size == 0:
        return float("nan")
    if x.size == 1 or x[-1] == x[0]:
        return float(y[-1])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Smallest x at which the piecewise-linear curve y(x) reaches ``target``; NaN if never."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    hit = np.flatnonzero(y >= target)
    if hit.size == 0:
        return float("nan")
    k = int(hit[0])
    if k == 0 or y[k] == target:
        return float(x[k])
    x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def run_metrics(eval_rollouts: np.ndarray, eval_accuracy: np.ndarray, target: float) -> dict:
    """Run-level learning metrics from the evaluation curve (accuracy against rollouts)."""
    return {
        "final_test_accuracy": float(eval_accuracy[-1]) if len(eval_accuracy) else float("nan"),
        "auc_test_accuracy": auc(eval_rollouts, eval_accuracy),
        "rollouts_to_target": first_crossing(eval_rollouts, eval_accuracy, target),
    }
