"""`bench`: the command-line entry point. Each subcommand lives in its own module and is added
here with one line."""

from __future__ import annotations

import click

from bench.calibrate_cmd import calibrate_cmd
from bench.confirm_cmd import confirm
from bench.errors import BenchGroup
from bench.fitcost_cmd import fit_cost
from bench.report_cmd import report
from bench.simulate_cmd import simulate
from bench.solvers_cmd import solvers
from bench.sweep_cmd import sweep
from bench.train_cmd import train


@click.group(
    cls=BenchGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="rollout-bench")
def main() -> None:
    """rollout-bench: compare rollout-budget allocators for GRPO-style RL with verifiable rewards.

    \b
    simulate  score allocators on the Numba learning simulator (seconds per run)
    train     GRPO on a real language model with the same allocators (CPU or GPU)
    solvers   time the allocation solvers of Knapsack RL and CoBA-RL (DP, heap greedy, fast)
    sweep     run a grid of simulations (process pool or Ray), resumable
    report    rank methods with bootstrap intervals; Markdown report and plots
    fit-cost  fit the generation-time model to the rounds a bench train run measured
    Results go to CSV leaderboards in results/; per-run details to runs/<run-id>/.
    """


main.add_command(simulate)
main.add_command(report)
main.add_command(sweep)
main.add_command(train)
main.add_command(solvers)
main.add_command(fit_cost)
main.add_command(calibrate_cmd)
main.add_command(confirm)


if __name__ == "__main__":  # python -m bench.cli, as the `bench` script
    main()
