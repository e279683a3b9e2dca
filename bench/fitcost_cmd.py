"""`bench fit-cost RUN_DIR...`: fit the generation-time model to the rounds a run measured."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pandas as pd
from rich.console import Console
from rich.table import Table

from allocators.base import SettingsError
from allocators.cost import fit
from allocators.loop import ROUND_COLUMNS
from bench.errors import usage_error
from bench.results import ResultsError, check_writable, make_folder


def load_rounds(run_dirs: list[str]) -> pd.DataFrame:
    """Every measured round of the given run folders (``rounds.csv``), with a ``run`` column."""
    frames = []
    for d in run_dirs:
        path = Path(d) / "rounds.csv"
        if not path.is_file():
            raise SettingsError(f"{d} has no rounds.csv (a run folder of this version)")
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from None
        missing = [c for c in ROUND_COLUMNS if c not in df.columns]
        if missing:
            raise SettingsError(f"{path} lacks the columns {', '.join(missing)}")
        frames.append(df.assign(run=Path(d).name))
    return pd.concat(frames, ignore_index=True)


@click.command("fit-cost")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--capacity",
    type=click.IntRange(1, 10_000_000),
    default=None,
    help="Sequences the engine decodes at once [default: the largest round measured].",
)
@click.option(
    "--skip-steps",
    type=click.IntRange(0, 100_000),
    default=1,
    show_default=True,
    help="Leave out the rounds of the first steps (warm-up: compilation, caches).",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    default="cost_model.json",
    show_default=True,
    help="Where the fitted model goes (read by --cost-model).",
)
def fit_cost(run_dirs, capacity, skip_steps, out_file):
    """Fit the generation-time model (allocators/cost.py) to the rounds bench train measured.

    Reads RUN_DIR/rounds.csv of each run (one row per generation round: sequences, prompts,
    tokens, longest response, mean prompt tokens, measured seconds), fits the four time terms by
    non-negative least squares and writes them, with the fit's error, to OUT; `bench simulate
    --cost-model OUT` then prices rounds on this hardware.
    """
    console = Console()
    try:
        rounds = load_rounds(list(run_dirs))
        rounds = rounds[(rounds["step"] > skip_steps) & rounds["prompt_tokens"].notna()]
        cap = capacity or (int(rounds["sequences"].max()) if len(rounds) else 1)
        result = fit(rounds, capacity=cap)
        check_writable(Path(out_file).parent, "output folder")
    except (SettingsError, ResultsError) as exc:
        raise usage_error(str(exc)) from None
    m = result.model
    table = Table(title=f"cost model fitted to {result.rounds} rounds of {len(run_dirs)} run(s)")
    for col in ("term", "value"):
        table.add_column(col, justify="left" if col == "term" else "right")
    table.add_row("overhead (s per round)", f"{m.overhead:.4g}")
    table.add_row("prefill (s per prompt token)", f"{m.prefill:.4g}")
    table.add_row("decode (s per step of a wave)", f"{m.decode:.4g}")
    table.add_row("per_token (s per generated token)", f"{m.per_token:.4g}")
    table.add_row("capacity (sequences at once)", str(m.capacity))
    table.add_row("rmse (s per round)", f"{result.rmse:.4g}")
    table.add_row("mean |relative error|", f"{result.mean_abs_relative_error:.1%}")
    table.add_row("R²", f"{result.r2:.3f}")
    console.print(table)
    make_folder(Path(out_file).parent)
    Path(out_file).write_text(
        json.dumps(
            {
                "parameters": m.to_dict(),
                "fit": {
                    "rounds": result.rounds,
                    "rmse_seconds": result.rmse,
                    "mean_abs_relative_error": result.mean_abs_relative_error,
                    "r2": result.r2,
                    "runs": [str(d) for d in run_dirs],
                    "skip_steps": skip_steps,
                },
            },
            indent=2,
        )
    )
    console.print(f"written to {out_file}; use it with --cost-model {out_file}")
