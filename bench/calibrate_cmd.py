"""`bench calibrate LOG`: a scenario fitted to a run's rollout log (simulator/calibrate.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import click
import pandas as pd
from rich.console import Console
from rich.table import Table

from allocators.rollout_log import LogError, read_log
from bench.errors import usage_error
from bench.results import ResultsError, check_writable, make_folder
from simulator import calibrate as C
from simulator.scenario_files import ScenarioError, dump_scenario, lookup
from simulator.scenarios import SCENARIOS

EXACT_TEST = 10**9  # the test-set size that stands for exact accuracy (variance at its floor)


def read_evals(path: Path) -> pd.DataFrame:
    """A CSV of evaluations with (at least) the columns step and test_accuracy."""
    try:
        evals = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise LogError(f"cannot read {path}: {exc}") from None
    if not {"step", "test_accuracy"} <= set(evals.columns):
        raise LogError(f"{path} lacks the columns step, test_accuracy")
    return evals


def read_run(path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """The log, the evaluations (a run folder's evals.csv) and config of ``path``."""
    log = read_log(path)
    evals, config = None, {}
    if path.is_dir():
        if (path / "evals.csv").is_file():
            evals = read_evals(path / "evals.csv")
        if (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except (OSError, ValueError) as exc:
                raise LogError(f"cannot read {path / 'config.json'}: {exc}") from None
    return log, evals, config


@click.command("calibrate")
@click.argument("log", type=click.Path(exists=True))
@click.option(
    "--evals",
    "evals_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CSV of step,test_accuracy (step 0 first) [default: LOG's evals.csv when LOG is a "
    "run folder].",
)
@click.option(
    "--test-prompts",
    type=click.IntRange(0, 10_000_000),
    default=None,
    help="Size of the run's test set [default: from the run's config.json; 0 = do not fit "
    "test accuracy].",
)
@click.option(
    "--base",
    default="dapo-math",
    show_default=True,
    help="Built-in scenario whose other fields (features, answers) the calibrated one keeps.",
)
@click.option("--name", default=None, help="Scenario name [default: calibrated-<run>].")
@click.option(
    "--replicates",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Simulations averaged per loss evaluation.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(0, 1000),
    default=10,
    show_default=True,
    help="Refits on prompt resamples (the uncertainty).",
)
@click.option(
    "--chain/--no-chain",
    default=True,
    show_default=True,
    help="Also fit the chain model (steps_per_prompt 3) and keep the better fit.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="calibration",
    show_default=True,
    help="Folder for <name>.toml, <name>.json and <name>.png.",
)
def calibrate_cmd(
    log, evals_file, test_prompts, base, name, replicates, bootstrap, chain, seed, out_dir
):
    """Fit a scenario to a run's rollout log.

    LOG is a run folder (its rollouts.parquet, evals.csv and config.json) or a rollout log file
    (.parquet, .csv, .csv.gz; docs/results.md#rollout-log) of a run that samples once per step
    (uniform GRPO). The pool comes from each prompt's first visit (a Beta mixture, BIC); the
    learning rate, memorisation rate and transfer from replaying the log's schedule in the
    simulator and matching its train reward, effective-prompt ratio and test-accuracy curves
    (docs/simulator.md#calibration). Writes OUT/<name>.toml (for `bench simulate --scenario`),
    OUT/<name>.json (parameters, bootstrap intervals, identifiability, fit quality) and
    OUT/<name>.png (observed against simulated curves).
    """
    console = Console()
    path = Path(log)
    try:
        if base not in SCENARIOS:
            lookup(base)  # the one-line error for an unknown name
            raise ScenarioError(f"--base must be a built-in scenario ({', '.join(SCENARIOS)})")
        frame, evals, config = read_run(path)
        if evals_file:
            evals = read_evals(Path(evals_file))
        sim = config.get("scenario_config", {})  # a simulated run's scenario
        # a simulated run's test accuracy is exact (no sampling noise): the variance floor
        exact = EXACT_TEST if config.get("mode") == "simulate" else 0
        n_test = (
            test_prompts
            if test_prompts is not None
            else int(config.get("test_prompts", exact) or 0)
        )
        pool = int(config.get("train_prompts", sim.get("num_prompts", 0)) or 0)
        obs = C.observe(frame, evals, n_test, pool)
        stem = path.name if path.is_dir() else path.name.split(".")[0]
        if stem == "rollouts" and not path.is_dir():
            stem = path.resolve().parent.name  # a run folder's log: the run's id
        label = name or f"calibrated-{stem}"[:64]
        check_writable(Path(out_dir), "output folder")
    except (LogError, ScenarioError, ResultsError, ValueError) as exc:
        raise usage_error(str(exc)) from None
    if evals is not None and len(evals) and not obs.has_test:
        console.print(
            "[yellow]test accuracy is not fitted: give --test-prompts (the test set's size) "
            "and evaluations that start at step 0[/]"
        )
    method = config.get("method_name", "")
    if method and method != "uniform":
        console.print(
            f"[yellow]the log is of {method}; the replay trains every group with GRPO "
            "advantages, as uniform does[/]"
        )
    console.print(
        f"{obs.num_visits:,} visits of {obs.prompt_ids.size:,} prompts over {obs.steps} steps"
        + (f"; test accuracy at {obs.eval_steps.size} evaluations" if obs.has_test else "")
    )
    with console.status("calibrating") as status:
        result = C.calibrate(
            obs,
            base,
            replicates=replicates,
            bootstrap=bootstrap,
            step_choices=(1, 3) if chain else (1,),
            seed=seed,
            progress=lambda text: status.update(f"calibrating: {text}"),
            max_tokens=config.get("max_new_tokens")
            or config.get("scenario_config", {}).get("max_tokens"),
        )
    scenario = result.scenario
    summary = result.summary()
    fitted = ", ".join(f"{p} = {C.fmt(v['value'])}" for p, v in summary.items())

    scenario = replace(
        scenario,
        name=label,
        summary=f"calibrated to the rollout log {path.name}",
        calibration=f"bench calibrate {path.name} --base {base}: {fitted}, steps_per_prompt "
        f"{result.params['steps_per_prompt']}; pool {result.mixture_fit.describe()}",
        target_accuracy=min(0.95, result.mixture_fit.mean() + 0.1),
    )
    out = make_folder(out_dir)
    toml_path = out / f"{label}.toml"
    toml_path.write_text(dump_scenario(scenario, base))
    fit = {
        "log": str(path),
        "base": base,
        "scenario": str(toml_path),
        "parameters": summary,
        "steps_per_prompt": result.params["steps_per_prompt"],
        "loss": result.loss,
        "loss_by_steps_per_prompt": {str(k): v for k, v in result.losses.items()},
        "loss_terms": obs.steps * 2 + (obs.eval_steps.size - 1 if obs.has_test else 0),
        "pool": result.mixture_fit.describe(),
        "lengths": result.setting.lengths,
        "profile": {
            p: [list(map(float, g)), list(map(float, v))] for p, (g, v) in result.profile.items()
        },
        "simulations": result.simulations,
        "seconds": result.seconds,
        "replicates": replicates,
        "bootstrap": bootstrap,
        "visits": obs.num_visits,
        "steps": obs.steps,
        "prompts": int(obs.prompt_ids.size),
        "fit_quality": _quality(result.curves),
    }
    json_path = out / f"{label}.json"
    json_path.write_text(json.dumps(fit, indent=2, default=float))
    from bench.plots import calibration_curves

    png = calibration_curves(result.curves, f"{label}: observed vs simulated", out / f"{label}.png")
    table = Table(
        title=f"calibration of {path.name} ({result.simulations:,} simulations, "
        f"{result.seconds:.0f} s)"
    )
    for col in ("parameter", "fitted", "bootstrap 95%", "identified"):
        table.add_column(col)
    for p, v in summary.items():
        lo, hi = v["ci95"]
        table.add_row(p, C.fmt(v["value"]), f"[{C.fmt(lo)}, {C.fmt(hi)}]", v["identified"])
    table.add_row(
        "steps_per_prompt",
        str(result.params["steps_per_prompt"]),
        "",
        "by loss: " + ", ".join(f"{k}: {v:.1f}" for k, v in result.losses.items()),
    )
    console.print(table)
    for p, v in summary.items():
        how = v["identified"]
        if how == "no":
            console.print(
                f"[yellow]{p}: the log does not identify it (the loss is flat over its whole "
                "range): the fitted value is one of many that fit as well[/]"
            )
        elif how.endswith("bound only"):
            console.print(f"[yellow]{p}: the log bounds it on one side only ({how})[/]")
        elif how.startswith("weakly"):
            console.print(
                f"[yellow]{p}: identified only weakly: the refits disagree with the fit[/]"
            )
    q = fit["fit_quality"]
    console.print(
        f"fit: loss {result.loss:.1f} over {fit['loss_terms']} terms; RMSE train reward "
        f"{q['reward_rmse']:.3f}, effective ratio {q['effective_rmse']:.3f}"
        + (f", test accuracy change {q['test_rmse']:.3f}" if "test_rmse" in q else "")
    )
    console.print(f"wrote {toml_path}, {json_path}, {png}")


def _quality(curves: dict) -> dict:
    """Root-mean-square differences between the observed and the simulated curves."""
    out = {}
    for key, name in (
        ("reward", "reward_rmse"),
        ("effective", "effective_rmse"),
        ("test", "test_rmse"),
    ):
        if f"{key}_observed" in curves:
            d = curves[f"{key}_observed"] - curves[f"{key}_simulated"]
            d = d[~pd.isna(d)]
            out[name] = float(math.sqrt((d**2).mean())) if len(d) else float("nan")
    return out
