"""Command-line options that several commands share, defined once (docs/results.md#equal-compute)."""

from __future__ import annotations

import click

from allocators.loop import BUDGET_UNITS, COMPUTE_UNITS
from bench.report import RANK_UNITS


def compute_options(f):
    """``--budget-unit``, ``--compute-budget``, ``--compute-unit`` and ``--cost-model``, for a
    command that runs simulator or training runs; ``compute_settings`` turns them into the
    config fields."""
    for option in reversed(
        (
            click.option(
                "--budget-unit",
                type=click.Choice(BUDGET_UNITS),
                default="rollouts",
                show_default=True,
                help="Unit of --budget: rollouts, or tokens (the methods that spend the step "
                "budget buy rollouts with their per-prompt length estimates).",
            ),
            click.option(
                "--compute-budget",
                type=click.FloatRange(0, 1e18, min_open=True),
                default=None,
                help="Stop each run once it has spent this much compute (in --compute-unit); "
                "--steps stays the step limit.",
            ),
            click.option(
                "--compute-unit",
                type=click.Choice(COMPUTE_UNITS),
                default="tokens",
                show_default=True,
                help="Unit of --compute-budget: rollouts, tokens or modelled generation seconds.",
            ),
            click.option(
                "--cost-model",
                type=click.Path(dir_okay=False),
                default=None,
                help="Generation-time model (JSON, from `bench fit-cost`) for the modelled "
                "seconds [default: a 7-8B model in vLLM on one H100].",
            ),
        )
    ):
        f = option(f)
    return f


def compute_settings(
    budget_unit: str, compute_budget: float | None, compute_unit: str, cost_model: str | None
) -> dict:
    """The run-config fields of ``compute_options``' values (no compute unit without a budget)."""
    return {
        "budget_unit": budget_unit,
        "compute_unit": compute_unit if compute_budget else "",
        "compute_budget": compute_budget or 0.0,
        "cost_model": cost_model or "",
    }


def rank_by_option(f):
    """``--rank-by``: the unit of equal compute a ranking uses, or ``steps``."""
    return click.option(
        "--rank-by",
        type=click.Choice(RANK_UNITS),
        default="tokens",
        show_default=True,
        help="Rank by test accuracy at equal compute in this unit (the compute uniform GRPO "
        "spends in the run's steps), or at equal steps.",
    )(f)
