"""Step-level speed-up to reach the baseline's final test accuracy, from `bench simulate` runs.

    bench simulate --scenario cropi-math --methods uniform,cropi,cropi:score=random \\
        --seeds 3 --steps 200 --runs-dir runs/cropi
    python scripts/cropi_speedup.py --runs-dir runs/cropi [--baseline uniform]

CROPI's headline claim (docs/methods.md#cropi): 2.66× step-level acceleration versus full-dataset
training. For every seed, the baseline run's final test accuracy A* is the target; a method's
speed-up is (baseline steps) / (steps the method needs to reach A*), the crossing step linearly
interpolated between evaluation points; the rollout-level speed-up uses cumulative rollouts
instead (CROPI's offline rollouts included). A method that never reaches A* gets no speed-up
("-") and counts in the "reached" column. ``--at 50,100`` adds the same measure for shorter
horizons: the target is the baseline's accuracy at step 50 (100, ...), the speed-up 50 / (steps
the method needs to reach it). Runs are read from the run folders (config.json,
evals.csv); of several runs with the same scenario, method, seed, steps, budget and batch, the
latest folder is used.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.errors import run_one_line, usage_error


def crossing(x: np.ndarray, acc: np.ndarray, target: float) -> float:
    """First x at which ``acc`` reaches ``target`` (linear interpolation); NaN if never."""
    hit = np.flatnonzero(acc >= target)
    if hit.size == 0:
        return float("nan")
    j = int(hit[0])
    if j == 0:
        return float(x[0])
    x0, x1, a0, a1 = x[j - 1], x[j], acc[j - 1], acc[j]
    return float(x0 + (target - a0) / (a1 - a0) * (x1 - x0)) if a1 > a0 else float(x1)


def load_runs(runs_dir: Path) -> pd.DataFrame:
    rows = []
    for folder in sorted(
        p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        cfg_path, ev_path = folder / "config.json", folder / "evals.csv"
        if not (cfg_path.exists() and ev_path.exists()):
            continue
        c = json.loads(cfg_path.read_text())
        rows.append(
            {
                "run": folder.name,
                "scenario": c["scenario"],
                "method": c["method"],
                "seed": c["seed"],
                "steps": c["steps"],
                "budget": c["budget"],
                "prompts_per_step": c["prompts_per_step"],
                "evals": pd.read_csv(ev_path),
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    key = ["scenario", "method", "seed", "steps", "budget", "prompts_per_step"]
    return df.sort_values("run").drop_duplicates(key, keep="last")


@click.command()
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, exists=True),
    required=True,
    help="Run folders written by `bench simulate --runs-dir`.",
)
@click.option(
    "--baseline",
    default="uniform",
    show_default=True,
    help="Method label whose final accuracy is the target.",
)
@click.option("--scenario", default=None, help="Only this scenario (default: every one found).")
@click.option(
    "--at",
    "horizons",
    default="",
    help="Comma-separated shorter horizons (steps, evaluation points of the runs).",
)
def main(runs_dir, baseline, scenario, horizons):
    """Print per-method step- and rollout-level speed-ups over the baseline."""
    try:
        at = [int(x) for x in horizons.split(",") if x.strip()]
    except ValueError:
        raise usage_error(f"--at expects comma-separated step counts, got {horizons!r}") from None
    runs = load_runs(Path(runs_dir))
    if runs.empty:
        raise usage_error(f"no run folders in {runs_dir}")
    if scenario is not None:
        runs = runs[runs.scenario == scenario]
    console = Console(width=200)
    shown = 0
    for (scen, steps, budget, pps), part in runs.groupby(
        ["scenario", "steps", "budget", "prompts_per_step"]
    ):
        base = part[part.method == baseline].set_index("seed")
        if base.empty:
            continue
        table = Table(
            title=f"{scen}, {steps} steps, budget {budget}, {pps} prompts/step: "
            f"speed-up to reach {baseline}'s final test accuracy "
            f"(mean over {len(base)} seeds; per seed in brackets)"
        )
        for col in (
            "method",
            "final acc",
            "reached",
            "step speed-up",
            "rollout speed-up",
            *(f"step speed-up @{h}" for h in at),
        ):
            table.add_column(col, justify="left" if col == "method" else "right")
        for method, g in part.groupby("method", sort=False):
            finals, step_su, roll_su, reached = [], [], [], 0
            short = {h: [] for h in at}
            for _, r in g.iterrows():
                if r.seed not in base.index:
                    continue
                b = base.loc[r.seed, "evals"]
                target = float(b.test_accuracy.iloc[-1])
                ev = r.evals
                finals.append(float(ev.test_accuracy.iloc[-1]))
                s = crossing(ev.step.to_numpy(float), ev.test_accuracy.to_numpy(), target)
                x = crossing(ev.rollouts.to_numpy(float), ev.test_accuracy.to_numpy(), target)
                reached += int(np.isfinite(s))
                step_su.append(float(b.step.iloc[-1]) / s if np.isfinite(s) and s > 0 else np.nan)
                roll_su.append(
                    float(b.rollouts.iloc[-1]) / x if np.isfinite(x) and x > 0 else np.nan
                )
                for h in at:
                    hit = b.step.to_numpy() == h
                    if not hit.any():
                        raise usage_error(f"--at {h}: not an evaluation step of the runs")
                    sh = crossing(
                        ev.step.to_numpy(float),
                        ev.test_accuracy.to_numpy(),
                        float(b.test_accuracy.to_numpy()[hit][0]),
                    )
                    short[h].append(h / sh if np.isfinite(sh) and sh > 0 else np.nan)
            if not finals:
                continue

            def fmt(v):
                v = np.asarray(v)
                ok = v[np.isfinite(v)]
                each = ", ".join("-" if not np.isfinite(a) else f"{a:.2f}" for a in v)
                return f"{ok.mean():.2f}x [{each}]" if ok.size else f"- [{each}]"

            table.add_row(
                method,
                f"{np.mean(finals):.4f}",
                f"{reached}/{len(finals)}",
                fmt(step_su),
                fmt(roll_su),
                *(fmt(short[h]) for h in at),
            )
        console.print(table)
        shown += 1
    if not shown:
        raise usage_error(f"no runs of the baseline {baseline!r} found in {runs_dir}")


if __name__ == "__main__":
    run_one_line(main.main)
