"""`bench sweep GRID.toml`: expand a grid into simulator runs and execute the ones not yet done."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
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

from bench.errors import usage_error
from bench.results import ResultsError, check_writable, leaderboard_path
from bench.runner import Recorder
from bench.sweep import BACKENDS, GridError, RayMissing, load_grid, pending, require_ray, run_sweep


@click.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="process",
    show_default=True,
    help="process: a local process pool; ray: a Ray cluster (pip install ray).",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join (auto, host:6379 or ray://host:10001) [default: start "
    "a local Ray instance].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Processes of the process backend [default: number of CPUs, at most the "
    "number of runs], or CPUs of a local Ray instance [default: 2].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Folder of the leaderboard CSV (simulate_leaderboard.csv).",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default="runs",
    show_default=True,
    help="Folder for per-run details.",
)
@click.option(
    "--max-runs",
    type=click.IntRange(min=1),
    default=None,
    help="Run at most this many of the pending runs now (resume later).",
)
@click.option(
    "--rerun",
    is_flag=True,
    help="Run every config of the grid again, also those with a row (new rows, told apart by "
    "code_version; bench report keeps the newest row of a config hash).",
)
@click.option("--dry-run", is_flag=True, help="List the runs to do and exit.")
def sweep(grid, backend, address, workers, out_dir, runs_dir, max_runs, rerun, dry_run):
    """Run every config of GRID (a TOML grid, see bench/grids/) that has no leaderboard row yet.

    A run is identified by the hash of its resolved config (seed included), so a sweep that was
    stopped resumes where it stopped, and runs listed twice run once. Rows go to
    OUT/simulate_leaderboard.csv and RUNS_DIR/<run-id>/ as with `bench simulate`; rank them with
    `bench report --results OUT`.
    """
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    if address and backend != "ray":
        raise usage_error("--address is for --backend ray")
    if backend == "ray" and not dry_run:
        try:
            require_ray()
        except RayMissing as exc:
            raise usage_error(str(exc)) from None
    try:
        plan = load_grid(grid)
    except GridError as exc:
        raise usage_error(str(exc)) from None
    try:
        out = check_writable(out_dir) if not dry_run else Path(out_dir)
        since = time.time()  # runs done from now on by a concurrent sweep are skipped
        todo, skipped = (list(plan.runs), 0) if rerun else pending(plan, out)
        if not dry_run:
            check_writable(runs_dir, "runs folder")
    except ResultsError as exc:
        raise usage_error(str(exc)) from None
    deferred = 0
    if max_runs is not None and len(todo) > max_runs:
        deferred = len(todo) - max_runs
        todo = todo[:max_runs]

    summary = (
        f"{len(plan.runs)} runs in the grid ({', '.join(f'{k}: {v}' for k, v in plan.experiments.items())}"
        f"{f'; {plan.duplicates} listed twice' if plan.duplicates else ''}); "
        f"{skipped} already in {leaderboard_path(out_dir, 'simulate')}; "
        f"{len(todo)} to run now" + (f", {deferred} left for later" if deferred else "")
    )
    console.print(summary)
    if dry_run:
        table = Table(title="runs to do")
        for col in (
            "experiment",
            "scenario",
            "method",
            "budget",
            "prompts",
            "steps",
            "seed",
            "config hash",
        ):
            table.add_column(col)
        for r in todo:
            c = r.config
            table.add_row(
                r.experiment,
                c.scenario,
                c.method,
                str(c.budget),
                str(c.prompts_per_step),
                str(c.steps),
                str(c.seed),
                r.config_hash,
            )
        console.print(table)
        return
    if not todo:
        console.print("nothing to do")
        return

    n_workers = min(workers or os.cpu_count() or 1, len(todo))
    ray_cpus = workers or 2  # a local Ray instance stays small unless asked for more
    recorder = Recorder(Path(out_dir), Path(runs_dir))
    t0 = time.perf_counter()
    where = (
        (f"Ray cluster {address}" if address else f"local Ray, {ray_cpus} CPUs")
        if backend == "ray"
        else f"{n_workers} worker(s)"
    )
    total_steps = sum(r.config.steps for r in todo)
    with Progress(
        TextColumn("[bold]sweep[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"0/{len(todo)} runs on {where}", total=total_steps)
        count = [0]

        def on_row(row):
            count[0] += 1
            bar.update(task, description=f"{count[0]}/{len(todo)} runs on {where}")

        rows = run_sweep(
            todo,
            recorder,
            backend,
            n_workers,
            address,
            ray_cpus,
            on_row,
            lambda k: bar.advance(task, k),
            since,
        )
    console.print(
        f"{len(rows)} runs in {time.perf_counter() - t0:.1f} s; rows appended to "
        f"{leaderboard_path(out_dir, 'simulate')}; rank them with "
        f"`bench report --results {out_dir}`"
    )
