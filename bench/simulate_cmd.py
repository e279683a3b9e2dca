"""`bench simulate`: score allocators on the learning simulator."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from allocators.base import SettingsError
from allocators.loop import RUN_BOUNDS
from allocators.registry import METHODS, SpecError, is_reference, parse_specs
from bench import report as R
from bench.errors import usage_error
from bench.options import compute_options, compute_settings, rank_by_option
from bench.report import CONFIDENCE, mean_ci
from bench.report_cmd import fmt_ci
from bench.results import ResultsError, check_outputs, leaderboard_path
from bench.runner import MAX_RUNS, Recorder, execute, parse_seeds
from simulator.run import SimConfig, check
from simulator.scenario_files import ScenarioError, is_scenario_file, lookup, origin
from simulator.scenarios import SCENARIOS

DEFAULTS = SimConfig()


def print_scenarios(console: Console, files: list[str]) -> None:
    """The built-in scenarios and any scenario files named, with where each came from."""
    table = Table(title="Scenarios", show_lines=True)
    for col in ("name", "from", "prompts", "d", "what it is", "calibrated to"):
        table.add_column(col, overflow="fold")
    for ref in [*SCENARIOS, *files]:
        s = lookup(ref)
        table.add_row(
            s.name, origin(s, ref), f"{s.num_prompts:,}", str(s.dim), s.summary, s.calibration
        )
    console.print(table)


def summary_table(rows: pd.DataFrame, rank_by: str = "tokens") -> list[Table]:
    """Ranked tables, one per scenario: the mean over seeds with the percentile bootstrap
    interval of ``bench report`` (``bench.report.mean_ci``), ranked by test accuracy at equal
    compute in ``rank_by`` (or at equal steps), the equal-step figure beside it."""
    tables = []
    key = R.rank_metric(rank_by)

    def ms(x: pd.Series) -> str:
        ci = mean_ci(x.to_numpy(float))
        return "-" if np.isnan(ci.point) else fmt_ci(ci.point, ci.low, ci.high)

    how = "at equal steps" if rank_by == "steps" else f"at equal {rank_by}"
    for scenario, part in rows.groupby("scenario", sort=False):
        seeds = part.groupby("method")["seed"].nunique().max()
        table = Table(
            title=f"{scenario}: ranked by test accuracy {how} (mean "
            f"[{CONFIDENCE:.0%} bootstrap interval] over {seeds} seeds)",
            caption="acc @ equal X: test accuracy once the run has spent what uniform GRPO spends "
            "in the run's steps, in X; final acc: after the same number of steps",
        )
        cols = ["#", "method"]
        if rank_by != "steps":
            cols.append(f"acc @ equal {rank_by}")
        cols += [
            "final acc (equal steps)",
            "AUC acc",
            "rollouts to target",
            "eff. grad",
            "Mtokens",
            "gen s",
            "solver ms",
        ]
        for col in cols:
            table.add_column(col, justify="left" if col == "method" else "right", overflow="fold")
        ranked = part.groupby("method", sort=False)[key].mean().sort_values(ascending=False).index
        for rank, method in enumerate(ranked, 1):
            g = part[part.method == method]
            reached = int(g["rollouts_to_target"].notna().sum())
            to_target = (
                f"{g['rollouts_to_target'].mean() / 1e3:,.0f}k ({reached}/{len(g)})"
                if reached
                else f"never (0/{len(g)})"
            )
            cells = [
                str(rank),
                method + (" (reference)" if is_reference(g.method_name.iloc[0]) else ""),
            ]
            if rank_by != "steps":
                cells.append(ms(g[key]))
            cells += [
                ms(g.final_test_accuracy),
                ms(g.auc_test_accuracy),
                to_target,
                f"{g.mean_effective_grad_ratio.mean():.3f}",
                f"{g.tokens.mean() / 1e6:,.1f}",
                f"{g.gen_seconds.mean():,.0f}",
                f"{1e3 * g.solver_seconds_per_step.mean():.2f}",
            ]
            table.add_row(*cells)
        tables.append(table)
    return tables


@click.command()
@click.option(
    "--scenario",
    default=DEFAULTS.scenario,
    show_default=True,
    help="Built-in scenario name or a scenario .toml file (see --list-scenarios; "
    "docs/simulator.md#scenario-files).",
)
@click.option(
    "--methods",
    default="all",
    show_default=True,
    help="Comma-separated method specs, name[@preset][:option=value...]; 'all' = every "
    f"registered method but the oracle (a reference, for --frozen). Registered: "
    f"{', '.join(METHODS)}.",
)
@click.option(
    "--seeds",
    default="5",
    show_default=True,
    help="A count (5 → seeds 0..4), a list (3,7,11) or a range (10-19).",
)
@click.option(
    "--steps",
    type=click.IntRange(*RUN_BOUNDS["steps"]),
    default=DEFAULTS.steps,
    show_default=True,
    help="Training steps per run.",
)
@click.option(
    "--budget",
    type=click.IntRange(*RUN_BOUNDS["budget"]),
    default=DEFAULTS.budget,
    show_default=True,
    help="Rollouts per step.",
)
@click.option(
    "--prompts-per-step",
    type=click.IntRange(*RUN_BOUNDS["prompts_per_step"]),
    default=DEFAULTS.prompts_per_step,
    show_default=True,
    help="Prompts in each step's batch.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(*RUN_BOUNDS["eval_every"]),
    default=DEFAULTS.eval_every,
    show_default=True,
    help="Steps between test-accuracy evaluations.",
)
@compute_options
@rank_by_option
@click.option(
    "--frozen", is_flag=True, help="Learning rate 0: a pure bandit, the policy never moves."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Processes to run on [default: number of CPUs, at most the number of runs].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Folder of the leaderboard CSV.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default="runs",
    show_default=True,
    help="Folder for per-run details (config, per-step metrics, allocations).",
)
@click.option("--list-scenarios", is_flag=True, help="Print the scenarios and exit.")
def simulate(
    scenario,
    methods,
    seeds,
    steps,
    budget,
    prompts_per_step,
    eval_every,
    budget_unit,
    compute_budget,
    compute_unit,
    cost_model,
    rank_by,
    frozen,
    workers,
    out_dir,
    runs_dir,
    list_scenarios,
):
    """Run allocators on the learning simulator and rank them.

    Every method runs with every seed on the same scenario (the same seed gives every method the
    same prompts), with the same rollout budget per step. Each finished run appends one row to
    OUT/simulate_leaderboard.csv and writes RUNS_DIR/<run-id>/; the ranked table follows.
    """
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # logs and pipes: room for the table instead of 80 columns
    try:
        sc = lookup(scenario)
    except ScenarioError as exc:
        raise usage_error(str(exc)) from None
    if list_scenarios:
        print_scenarios(console, [scenario] if is_scenario_file(scenario) else [])
        return
    try:
        specs = parse_specs(methods)
        seed_list = parse_seeds(seeds)
    except (SpecError, ValueError) as exc:
        raise usage_error(str(exc)) from None
    if len(specs) * len(seed_list) > MAX_RUNS:
        raise usage_error(
            f"{len(specs)} methods x {len(seed_list)} seeds is more than {MAX_RUNS:,} runs"
        )
    if prompts_per_step > sc.num_prompts:
        raise usage_error(
            f"--prompts-per-step {prompts_per_step} exceeds the scenario's pool of "
            f"{sc.num_prompts} prompts"
        )
    try:
        configs = [
            SimConfig(
                scenario=scenario,
                method=spec.label,
                seed=seed,
                steps=steps,
                budget=budget,
                prompts_per_step=prompts_per_step,
                eval_every=eval_every,
                frozen=frozen,
                **compute_settings(budget_unit, compute_budget, compute_unit, cost_model),
            )
            # seed-major: the runs that start together are different methods, so on a cold
            # Numba cache each method's kernels are compiled by one worker, not by all at once
            # (docs/measurements.md#the-default-bench-simulate-wall-time)
            for seed in seed_list
            for spec in specs
        ]
        for cfg in configs[: len(specs)]:
            check(cfg)
        check_outputs(out_dir, runs_dir, "simulate")
    except (SettingsError, ResultsError) as exc:
        raise usage_error(str(exc)) from None
    n_workers = min(workers or os.cpu_count() or 1, len(configs))
    recorder = Recorder(Path(out_dir), Path(runs_dir))
    rows = []
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]simulate[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(
            f"{len(configs)} runs on {n_workers} worker(s)", total=len(configs) * steps
        )
        runs_done = [0]

        def on_done(o):
            rows.append(recorder.record(o))
            runs_done[0] += 1
            bar.update(task, description=f"{runs_done[0]}/{len(configs)} runs done")

        execute(configs, n_workers, on_done, lambda k: bar.advance(task, k))
    for table in summary_table(pd.DataFrame(rows), rank_by):
        console.print(table)
    console.print(
        f"{len(rows)} runs in {time.perf_counter() - t0:.1f} s; rows appended to "
        f"{leaderboard_path(out_dir, 'simulate')}, details in {runs_dir}/"
    )
