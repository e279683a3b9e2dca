"""Simulator throughput: simulated rollouts per second, end to end, per method.

    python scripts/speed.py [--methods uniform,...] [--steps 2000] [--prompts 256] [--n 8]

Each method runs once briefly to compile its kernels, then ``--repeats`` timed runs of
``--steps`` steps on one core (no pool); the table gives the best run's rollouts per second and
microseconds per step. Everything a step does is timed: selection, allocation, sampling, the
training batch, the learning step, statistics and metrics (evaluation every 50 steps).
"""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.table import Table

from allocators.registry import SpecError, parse_specs
from bench.errors import run_one_line, usage_error
from simulator.run import SimConfig, run_simulation


def measure(method: str, scenario: str, steps: int, prompts: int, n: int, repeats: int) -> dict:
    base = SimConfig(
        scenario=scenario,
        method=method,
        seed=0,
        steps=steps,
        budget=prompts * n,
        prompts_per_step=prompts,
        eval_every=50,
    )
    run_simulation(SimConfig(**{**base.__dict__, "steps": 5}))  # compile
    best = None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = run_simulation(SimConfig(**{**base.__dict__, "seed": r}))
        wall = time.perf_counter() - t0
        if best is None or wall < best[0]:
            best = (wall, out.summary["rollouts"])
    wall, rollouts = best
    return {
        "method": method,
        "rollouts_per_s": rollouts / wall,
        "us_per_step": 1e6 * wall / steps,
        "rollouts_per_step": rollouts / steps,
    }


@click.command()
@click.option("--methods", default="uniform", show_default=True)
@click.option("--scenario", default="dapo-math", show_default=True)
@click.option("--steps", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option("--prompts", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--n",
    type=click.IntRange(min=2),
    default=8,
    show_default=True,
    help="Rollouts per prompt (budget = prompts × n).",
)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
def main(methods, scenario, steps, prompts, n, repeats):
    """Print simulated rollouts per second per method."""
    try:
        specs = parse_specs(methods)
    except SpecError as exc:
        raise usage_error(str(exc)) from None
    table = Table(
        title=f"simulator throughput: {scenario}, {prompts} prompts x {n}, "
        f"{steps} steps, best of {repeats}"
    )
    for col in ("method", "rollouts/s", "µs/step", "rollouts/step"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for spec in specs:
        m = measure(spec.label, scenario, steps, prompts, n, repeats)
        table.add_row(
            m["method"],
            f"{m['rollouts_per_s'] / 1e6:.2f} M",
            f"{m['us_per_step']:.0f}",
            f"{m['rollouts_per_step']:.0f}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    run_one_line(main.main)
