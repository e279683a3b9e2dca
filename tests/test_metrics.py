"""The metric definitions (docs/simulator.md#metrics)."""

from __future__ import annotations

import math

import numpy as np

from allocators.base import GroupCounts
from allocators.metrics import auc, first_crossing, run_metrics, step_metrics


def test_step_metrics_by_hand():
    # group 0: 8 generated, 3 right, all trained -> mixed; group 1: 4 generated, 0 right;
    # group 2: 4 generated, 4 right but only 2 trained; group 3: 4 generated 2 right, none trained
    c = GroupCounts(
        generated=np.array([8, 4, 4, 4]),
        successes=np.array([3, 0, 4, 2]),
        tokens=np.array([800, 500, 300, 400]),
        trained=np.array([8, 4, 2, 0]),
        trained_successes=np.array([3, 0, 2, 0]),
    )
    m = step_metrics(c, 0.25)
    assert m["rollouts"] == 20 and m["tokens"] == 2000 and m["train_samples"] == 14
    assert m["effective_grad_ratio"] == 8 / 14  # response-weighted, trained samples
    assert m["effective_prompt_ratio"] == 2 / 4  # groups 0 and 3 are mixed
    assert m["train_reward"] == 9 / 20
    assert m["solver_seconds"] == 0.25


def test_auc_is_the_mean_accuracy_over_rollouts():
    assert math.isclose(auc([0, 10], [0.2, 0.4]), 0.3)
    assert math.isclose(auc([0, 1, 3], [0.0, 1.0, 1.0]), (0.5 + 2.0) / 3)
    assert auc([5], [0.7]) == 0.7


def test_first_crossing_interpolates():
    assert math.isclose(first_crossing([0, 100, 200], [0.1, 0.3, 0.5], 0.4), 150.0)
    assert first_crossing([0, 100], [0.5, 0.6], 0.4) == 0.0
    assert math.isnan(first_crossing([0, 100], [0.1, 0.2], 0.4))


def test_run_metrics():
    m = run_metrics(np.array([0, 100, 200]), np.array([0.1, 0.3, 0.5]), 0.3)
    assert m["final_test_accuracy"] == 0.5 and m["rollouts_to_target"] == 100.0
