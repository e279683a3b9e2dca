"""Re-run committed simulator leaderboard rows and check that every metric reproduces.

    python scripts/reproduce_rows.py results/simulate_leaderboard.csv \
        results/seeds_comparison/simulate_leaderboard.csv

Each row's run is rebuilt from its own columns (scenario, method spec, seed, budget, prompts per
step, steps, evaluation period, frozen), run again with the code as it
is, and its metric columns are compared with the committed ones as the leaderboard writes them
(rounded to 10 significant decimals). Timing columns, timestamps, run ids, config hashes and
code versions are not metrics and are not compared. Prints one line per differing row and a
summary; exits 1 if any row differs.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor

import click
import pandas as pd

from bench.results import LEADERBOARD_COLUMNS

# the run's metrics: the leaderboard columns from the initial accuracy to the effective ratios
METRICS = LEADERBOARD_COLUMNS[
    LEADERBOARD_COLUMNS.index("initial_test_accuracy") : LEADERBOARD_COLUMNS.index(
        "solver_seconds_per_step"
    )
]


def _rerun(row: dict) -> dict:
    from simulator.run import SimConfig, run_simulation

    cfg = SimConfig(
        scenario=row["scenario"],
        method=row["method"],
        seed=int(row["seed"]),
        steps=int(row["steps"]),
        budget=int(row["budget"]),
        prompts_per_step=int(row["prompts_per_step"]),
        eval_every=int(row["eval_every"]),
        frozen=str(row["frozen"]).lower() == "true",
    )
    return run_simulation(cfg).summary


def _written(v) -> str:
    """A value as the leaderboard stores it (10 decimals; empty for NaN), for either side."""
    return "" if pd.isna(v) else repr(round(float(v), 10))


@click.command()
@click.argument("leaderboards", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def main(leaderboards, workers):
    rows = pd.concat([pd.read_csv(p) for p in leaderboards], ignore_index=True)
    for col, legacy in (("eval_every", 10), ("frozen", False)):  # leaderboards before 0.2
        if col not in rows:
            rows[col] = legacy
    rows = rows[rows["mode"] == "simulate"].to_dict("records")
    bad = 0
    with ProcessPoolExecutor(workers) as pool:
        for row, summary in zip(rows, pool.map(_rerun, rows)):
            diffs = [
                f"{k}: {_written(row[k])} -> {_written(summary[k])}"
                for k in METRICS
                if _written(row[k]) != _written(summary[k])
            ]
            if diffs:
                bad += 1
                print(f"{row['run_id']}: " + "; ".join(diffs))
    print(f"{len(rows) - bad} of {len(rows)} rows reproduce every metric to the digit")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
