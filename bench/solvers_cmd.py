"""`bench solvers`: the allocation solvers of Knapsack RL and CoBA-RL side by side.

Over a grid of problem sizes (prompts × rollouts per prompt, cap on a prompt's rollouts) and
both value functions, every solver of ``allocators/solvers.py`` solves the same problem:

- ``fast``      our exact threshold solver (O(n) passes);
- ``greedy``    CoBA-RL's heap greedy on marginal gains (O(W log n));
- ``dp_table``  the official exact-capacity DP with each prompt's values tabulated (O(n·W·K));
- ``dp``        the same DP computing every value in its innermost loop, as Knapsack RL's
                ``dp_core_numba`` does (the reference; identical allocation).

A problem with M prompts and B = M × per-prompt rollouts gives each prompt the base of 2 and
solves for the W = B − 2M extra rollouts, each prompt capped at ``--cap``: Knapsack's value with
quirk Q1 (the official DP's objective), CoBA's with S = 11 and a batch failure rate of 0.413
(α = 3.66, β = 7.34) and τ from the rates' variance as CoBA computes it. Rates are drawn once per
size from ``--rates``: ``uniform`` on [0.02, 0.98], or ``sixteenths`` (j/16, the Knapsack
estimator's resolution: many exact ties).

Each solver's time is the median of ``--repeats`` timings (calls under 2 ms timed in batches of
≥ 5 ms; a single call if one takes over a second);
a solver whose estimated time exceeds ``--max-seconds`` (estimated from a calibration run) or
whose table would not fit in memory is skipped with a note. The objective gap is relative to
the DP's optimum where a DP ran (and to the greedy's). One row per (size, value function, solver)
is appended atomically to ``results/solvers_leaderboard.csv``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from allocators import solvers as S
from allocators.coba import Coba
from bench.errors import usage_error
from bench.results import (
    ResultsError,
    append_rows,
    check_writable,
    code_version,
    now_utc,
    read_checked,
)

# The leaderboard's columns, defined once.
SOLVER_COLUMNS = [
    "timestamp",  # UTC, when the command finished
    "value_function",  # knapsack | coba
    "rates",  # uniform | sixteenths
    "prompts",  # M
    "budget",  # B = M × per_prompt rollouts
    "per_prompt",
    "cap",  # max rollouts of one prompt
    "solver",  # fast | greedy | dp_table | dp
    "median_seconds",  # empty if skipped
    "repeats",
    "speedup_vs_dp",  # dp's median / this one's (dp: values per cell, as the official code)
    "speedup_vs_dp_table",  # dp_table's median / this one's
    "objective",  # Σ v_i(k_i) of the allocation
    "gap_vs_dp",  # (DP optimum − objective) / DP optimum; empty without a DP
    "gap_vs_greedy",  # (greedy objective − objective) / greedy objective
    "skipped",  # true if not run
    "note",
    "seed",
    "code_version",
]
LEADERBOARD = "solvers_leaderboard.csv"
SOLVER_ORDER = ("fast", "greedy", "dp_table", "dp")
VALUES = ("knapsack", "coba")
RATES = ("uniform", "sixteenths")
BASE = 2  # every prompt's base (Knapsack min_n, CoBA n_low)
OFFICIAL = (256, 8, 128)  # Knapsack RL's run: 256 prompts, budget 2,048, cap 128
COBA_CLAIM = 928.0  # CoBA-RL: heap greedy "≈ 928× faster" than dynamic programming
COBA_F = 0.413  # batch failure rate for CoBA's Beta parameters (docs/methods.md#coba)
MAX_PROMPTS = 1_000_000  # the largest batch timed (the arrays of 10^6 prompts take ~0.1 GB)
DP_MEMORY = 2 << 30  # bytes of the DP's choice table beyond which it is skipped


def int_list(ctx, param, value: str) -> list[int]:
    try:
        out = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out:
        raise click.BadParameter("expected at least one value")
    return out


def name_list(choices):
    def parse(ctx, param, value: str) -> list[str]:
        out = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in out if v not in choices]
        if bad or not out:
            raise click.BadParameter(f"{', '.join(bad) or value!r} not in: {', '.join(choices)}")
        return [c for c in choices if c in out]

    return parse


def make_problem(kind: str, prompts: int, cap: int, rates: str, seed: int) -> S.Problem:
    rng = np.random.default_rng([seed, prompts, cap])
    if rates == "uniform":
        p = rng.uniform(0.02, 0.98, prompts)
    else:
        p = rng.integers(1, 16, prompts) / 16.0
    if kind == "knapsack":
        return S.knapsack_problem(p, min_n=BASE, max_n=cap, k0_value="zero")
    c = Coba.Config()
    f = 1.0 / (1.0 + math.exp(-10.0 * (COBA_F - 0.5)))
    alpha = min(max(1.0 + (c.beta_params_sum - 2.0) * f, 1.0), c.beta_params_sum - 1.0)
    beta = c.beta_params_sum - alpha
    tau = Coba(c).tau(p)
    return S.coba_problem(p, alpha, beta, tau, n_low=BASE, n_up=cap, smoothing=c.smoothing_factor)


def timed(
    problem: S.Problem, budget: int, solver: str, repeats: int
) -> tuple[float, int, np.ndarray]:
    """Median seconds per call over ``repeats`` timings (one if a call takes over a second).
    Calls under 2 ms are timed in batches of ≥ 5 ms (after one untimed call), so that the clock
    and the call overhead of a single call do not dominate."""
    t0 = time.perf_counter()
    out = S.solve(problem, budget, solver)
    first = time.perf_counter() - t0
    if first > 1.0:
        return first, 1, out
    inner = 1 if first >= 2e-3 else int(math.ceil(5e-3 / max(first, 1e-7)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            out = S.solve(problem, budget, solver)
        times.append((time.perf_counter() - t0) / inner)
    return float(np.median(times)), repeats, out


class Estimator:
    """Seconds a solver would take, from calibration runs (DP: per cell-update; greedy: per
    rollout placed, × log n)."""

    def __init__(self, cap: int, seed: int):
        self.k = cap - BASE
        for kind in VALUES:  # compile every solver once
            pr = make_problem(kind, 8, cap, "uniform", seed)
            for s in SOLVER_ORDER:
                S.solve(pr, 8, s)
        pr = make_problem("knapsack", 64, cap, "uniform", seed)
        w = 64 * 6
        self.per_cell = {}
        for s in ("dp_table", "dp"):
            t, _, _ = timed(pr, w, s, 3)
            self.per_cell[s] = t / (64 * w * self.k)
        pr = make_problem("knapsack", 256, cap, "uniform", seed)
        t, _, _ = timed(pr, 256 * 14, "greedy", 5)
        self.per_pop = t / (256 * 14 * math.log2(256))

    def seconds(self, solver: str, prompts: int, budget: int) -> float:
        if solver in self.per_cell:
            return self.per_cell[solver] * prompts * budget * self.k
        if solver == "greedy":
            return self.per_pop * budget * math.log2(max(prompts, 2))
        return 0.0

    def dp_bytes(self, prompts: int, budget: int) -> int:
        return 2 * prompts * (budget + 1)


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:,.1f} µs"
    if s < 1.0:
        return f"{s * 1e3:,.2f} ms"
    return f"{s:,.2f} s"


def fmt_ratio(x) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:,.0f}×" if x >= 10 else f"{x:.2f}×"


def fmt_gap(x) -> str:
    if x is None or not np.isfinite(x):
        return ""
    return "0" if x == 0 else f"{x:.1e}"


@click.command()
@click.option(
    "--prompts",
    default="64,256,1024,4096,65536,1000000",
    show_default=True,
    callback=int_list,
    help="Comma-separated prompt counts M.",
)
@click.option(
    "--per-prompt",
    default="4,8,16,64",
    show_default=True,
    callback=int_list,
    help="Comma-separated rollouts per prompt (budget B = M × this).",
)
@click.option(
    "--cap",
    type=int,
    default=128,
    show_default=True,
    help="Most rollouts one prompt may get (Knapsack max_n, CoBA n_up).",
)
@click.option(
    "--values",
    "values",
    default="knapsack,coba",
    show_default=True,
    callback=name_list(VALUES),
    help="Value functions: knapsack, coba.",
)
@click.option(
    "--solvers",
    "solvers",
    default=",".join(SOLVER_ORDER),
    show_default=True,
    callback=name_list(SOLVER_ORDER),
    help="Solvers to time.",
)
@click.option(
    "--rates",
    type=click.Choice(RATES),
    default="uniform",
    show_default=True,
    help="Success rates: uniform on [0.02, 0.98], or multiples of 1/16 (ties).",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 1_000),
    default=7,
    show_default=True,
    help="Timings per solver (median); one if a call exceeds a second.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(0, 1e5, min_open=True),
    default=20.0,
    show_default=True,
    help="Skip a solver whose estimated time per call exceeds this.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option(
    "--quick", is_flag=True, help="A small grid: 64 and 256 prompts, 8 per prompt, 3 repeats."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Folder of the leaderboard CSV.",
)
@click.option("--no-save", is_flag=True, help="Print the table only; write nothing.")
def solvers(
    prompts,
    per_prompt,
    cap,
    values,
    solvers,
    rates,
    repeats,
    max_seconds,
    seed,
    quick,
    out_dir,
    no_save,
):
    """Time the allocation solvers (exact DP, heap greedy, fast threshold) on a grid of sizes.

    Prints median time, speed-up against the DP and objective gap to the DP per size, value
    function and solver, compares the speed-ups at Knapsack RL's official size (256 prompts,
    budget 2,048, cap 128) with CoBA-RL's reported ≈928×, and appends the rows to
    OUT/solvers_leaderboard.csv.
    """
    if quick:
        prompts, per_prompt, repeats = [64, 256], [8], min(repeats, 3)
    if cap < BASE + 1 or cap > 32767:
        raise usage_error(f"--cap must be in [{BASE + 1}, 32767], got {cap}")
    if min(prompts) < 1 or max(prompts) > MAX_PROMPTS:
        raise usage_error(f"--prompts must be in [1, {MAX_PROMPTS:,}], got {max(prompts)}")
    bad = [b for b in per_prompt if not BASE <= b <= cap]
    if bad:
        raise usage_error(f"--per-prompt must be in [{BASE}, --cap={cap}], got {bad[0]}")
    path = Path(out_dir) / LEADERBOARD
    if not no_save:
        try:
            check_writable(out_dir)
            read_checked(path, SOLVER_COLUMNS)
        except ResultsError as exc:
            raise usage_error(str(exc)) from None

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    sizes = [(m, b) for m in prompts for b in per_prompt]
    cells = [(kind, m, b) for kind in values for m, b in sizes]
    rows: list[dict] = []
    with Progress(
        TextColumn("[bold]solvers[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("compiling and calibrating", total=len(cells) * len(solvers))
        est = Estimator(cap, seed)
        for kind, m, b in cells:
            budget = m * b
            extra = m * (b - BASE)
            problem = make_problem(kind, m, cap, rates, seed)
            results = {}
            for s in solvers:
                bar.update(task, description=f"{kind} M={m:,} B={budget:,}: {s}")
                guess = est.seconds(s, m, extra)
                note = ""
                if s in ("dp", "dp_table") and est.dp_bytes(m, extra) > DP_MEMORY:
                    note = f"skipped: its table needs {est.dp_bytes(m, extra) / 2**30:,.0f} GiB"
                elif guess > max_seconds:
                    note = (
                        f"skipped: ~{fmt_time(guess)} per call estimated "
                        f"(> --max-seconds {max_seconds:g})"
                    )
                if note:
                    results[s] = {"skipped": True, "note": note}
                else:
                    t, n, alloc = timed(problem, extra, s, repeats)
                    results[s] = {
                        "skipped": False,
                        "seconds": t,
                        "repeats": n,
                        "objective": S.objective(problem, alloc),
                        "note": "",
                    }
                bar.advance(task)
            rows.extend(cell_rows(kind, rates, m, budget, b, cap, seed, results))
    ts = now_utc()
    version = code_version()
    for r in rows:
        r["timestamp"] = ts
        r["code_version"] = version
    console.print(results_table(rows, rates, cap))
    console.print(official_summary(rows, rates))
    if no_save:
        console.print("--no-save: nothing written")
        return
    try:
        append_rows(path, rows, SOLVER_COLUMNS)
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"{len(rows)} rows appended to {path}")


def cell_rows(kind, rates, m, budget, b, cap, seed, results: dict) -> list[dict]:
    ran = {s: r for s, r in results.items() if not r["skipped"]}
    dp_obj = next((ran[s]["objective"] for s in ("dp", "dp_table") if s in ran), None)
    greedy_obj = ran["greedy"]["objective"] if "greedy" in ran else None
    out = []
    for s, r in results.items():
        row = {c: "" for c in SOLVER_COLUMNS}
        row.update(
            value_function=kind,
            rates=rates,
            prompts=m,
            budget=budget,
            per_prompt=b,
            cap=cap,
            solver=s,
            skipped=str(r["skipped"]).lower(),
            note=r["note"],
            seed=seed,
        )
        if not r["skipped"]:
            t = r["seconds"]
            row.update(median_seconds=t, repeats=r["repeats"], objective=r["objective"])
            for ref, col in (("dp", "speedup_vs_dp"), ("dp_table", "speedup_vs_dp_table")):
                if ref in ran and t > 0:
                    row[col] = ran[ref]["seconds"] / t
            if dp_obj:
                row["gap_vs_dp"] = (dp_obj - r["objective"]) / abs(dp_obj)
            if greedy_obj:
                row["gap_vs_greedy"] = (greedy_obj - r["objective"]) / abs(greedy_obj)
        out.append(row)
    return out


def results_table(rows: list[dict], rates: str, cap: int) -> Table:
    table = Table(
        title=f"allocation solvers: rates {rates}, cap {cap}, base {BASE} per prompt "
        f"(median time per call)"
    )
    for col in (
        "value",
        "prompts",
        "budget",
        "solver",
        "median",
        "× vs DP",
        "× vs DP table",
        "gap to DP",
        "note",
    ):
        table.add_column(
            col, justify="left" if col in ("value", "solver", "note") else "right", overflow="fold"
        )
    last = None
    for r in rows:
        key = (r["value_function"], r["prompts"], r["budget"])
        if last is not None and key != last:
            table.add_section()
        last = key
        ran = r["skipped"] == "false"
        table.add_row(
            r["value_function"],
            f"{r['prompts']:,}",
            f"{r['budget']:,}",
            r["solver"],
            fmt_time(r["median_seconds"]) if ran else "—",
            fmt_ratio(r["speedup_vs_dp"] or None),
            fmt_ratio(r["speedup_vs_dp_table"] or None),
            fmt_gap(r["gap_vs_dp"] if r["gap_vs_dp"] != "" else None),
            r["note"],
        )
    return table


def official_summary(rows: list[dict], rates: str) -> str:
    """How the speed-ups at Knapsack RL's official size compare with CoBA's ≈928×."""
    m, b, cap = OFFICIAL
    cell = {
        r["solver"]: r
        for r in rows
        if (r["value_function"], r["prompts"], r["per_prompt"], r["cap"]) == ("knapsack", m, b, cap)
        and r["skipped"] == "false"
    }
    if not {"greedy", "fast"} <= set(cell) or not {"dp", "dp_table"} & set(cell):
        return (
            f"CoBA-RL reports its heap greedy ≈{COBA_CLAIM:.0f}× faster than a DP (sizes not "
            f"given). Include the official size (--prompts {m} --per-prompt {b} --cap {cap}, "
            f"knapsack values, solvers greedy, fast and a DP) to compare."
        )
    lines = [
        f"At Knapsack RL's official size ({m} prompts, budget {m * b:,}, cap {cap}; "
        f"knapsack values, {rates} rates), against CoBA-RL's reported ≈{COBA_CLAIM:.0f}× "
        f"(heap greedy vs a DP, sizes not given):"
    ]
    for ref, what in (
        ("dp", "the DP as the official code computes it (values per cell)"),
        ("dp_table", "the DP with tabulated values"),
    ):
        if ref not in cell:
            continue
        g = cell["greedy"]["speedup_vs_" + ref]
        f = cell["fast"]["speedup_vs_" + ref]
        lines.append(
            f"  vs {what} ({fmt_time(cell[ref]['median_seconds'])}): heap greedy "
            f"{g:,.0f}× ({g / COBA_CLAIM:.1f}× CoBA's figure), fast solver {f:,.0f}×"
        )
    fg = cell["greedy"]["median_seconds"] / cell["fast"]["median_seconds"]
    lines.append(
        f"  fast solver vs heap greedy: {fg:.1f}× "
        f"({fmt_time(cell['fast']['median_seconds'])} vs "
        f"{fmt_time(cell['greedy']['median_seconds'])})"
    )
    return "\n".join(lines)
