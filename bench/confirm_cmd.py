"""`bench confirm`: forecast a real comparison with the simulator, then run it and score the
forecast (docs/confirmation.md).

A plan file (TOML) names the methods, the seeds and the `bench train` settings; every output
goes next to it:

    bench confirm forecast PLAN   real uniform runs (real/), `bench calibrate` on each
                                  (calibration/), `bench simulate` on each calibrated scenario
                                  (forecast/), and forecast.json
    git add ... && git commit     the forecast is committed before anything checks it
    bench confirm run PLAN        the real runs of every method and seed (real/), each with the
                                  forecast's sha256 in its config; refuses an uncommitted or
                                  changed forecast
    bench confirm report PLAN     report.md, report.json, report.png

Every stage can be stopped and started again: finished runs are kept, an interrupted run resumes
from its checkpoint, a calibration or simulation already written is not redone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import click
import pandas as pd
from rich.console import Console

from bench import confirm as C
from bench.errors import usage_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLAN_KEYS = {"name", "methods", "seeds", "sim_seeds", "level", "train", "calibrate"}
CALIBRATE_KEYS = {"replicates": 4, "bootstrap": 0, "chain": True}


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    sim_seeds: int = 64
    level: float = 0.9
    train: dict = field(default_factory=dict)  # TrainConfig fields (grpo: a sub-table)
    calibrate: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def config(self, method: str, seed: int, forecast: str = ""):
        from trainers.grpo import GRPOConfig
        from trainers.run import TrainConfig

        kw = dict(self.train)
        grpo = GRPOConfig(**kw.pop("grpo", {}))
        return TrainConfig(method=method, seed=seed, forecast=forecast, grpo=grpo, **kw)

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def load_plan(path: str | Path) -> Plan:
    """The plan in ``path``; a ``click.UsageError`` (one line) for anything wrong in it."""
    from allocators.registry import SpecError, parse_specs
    from trainers.run import TrainConfig

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise usage_error(f"cannot read the plan {path}: {exc}") from None
    unknown = set(raw) - PLAN_KEYS
    if unknown:
        raise usage_error(f"{path}: unknown key {sorted(unknown)[0]!r} (keys: {sorted(PLAN_KEYS)})")
    methods = tuple(raw.get("methods", ()))
    seeds = tuple(raw.get("seeds", ()))
    if not methods or not seeds:
        raise usage_error(f"{path}: methods and seeds must both be non-empty lists")
    if C.BASELINE in methods:
        raise usage_error(f"{path}: uniform is the baseline, always run; list the other methods")
    try:
        parse_specs(",".join(methods))
    except SpecError as exc:
        raise usage_error(f"{path}: {exc}") from None
    if not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise usage_error(f"{path}: seeds must be distinct non-negative integers")
    train = dict(raw.get("train", {}))
    names = {f.name for f in fields(TrainConfig)} - {"method", "seed", "forecast"}
    bad = set(train) - names
    if bad:
        raise usage_error(f"{path}: [train] has no setting {sorted(bad)[0]!r}")
    cal = {**CALIBRATE_KEYS, **raw.get("calibrate", {})}
    if set(cal) - set(CALIBRATE_KEYS):
        raise usage_error(f"{path}: [calibrate] takes only {sorted(CALIBRATE_KEYS)}")
    plan = Plan(
        path=path.resolve(),
        name=str(raw.get("name", path.stem)),
        methods=methods,
        seeds=seeds,
        sim_seeds=int(raw.get("sim_seeds", 64)),
        level=float(raw.get("level", 0.9)),
        train=train,
        calibrate=cal,
    )
    if plan.sim_seeds < 2 or not 0 < plan.level < 1:
        raise usage_error(f"{path}: sim_seeds must be at least 2 and level in (0, 1)")
    try:
        for m in (C.BASELINE, *methods):
            plan.config(m, seeds[0])
    except (TypeError, ValueError) as exc:
        raise usage_error(f"{path}: [train]: {exc}") from None
    return plan


# ------------------------------------------------------------------------------------------
# the stages' pieces
# ------------------------------------------------------------------------------------------
def _bench(name: str, *args: str) -> None:
    """Run the `bench` command ``name`` in this process (its errors are this command's)."""
    from bench.cli import main

    command = main.commands[name]
    command.main(list(args), prog_name=f"bench {name}", standalone_mode=False)


def _real_dir(plan: Plan) -> Path:
    return plan.folder / "real"


def find_run(plan: Plan, cfg) -> tuple[Path | None, bool]:
    """The run folder of ``cfg`` under real/ and whether it is finished."""
    from trainers.run import TrainConfig

    for config in sorted(_real_dir(plan).glob("*/config.json")):
        try:
            got = json.loads(config.read_text())
            same = TrainConfig.from_dict({k: v for k, v in got.items() if k != "summary"}) == cfg
        except (OSError, ValueError, TypeError):
            continue
        if same:
            return config.parent, "summary" in got
    return None, False


def ensure_run(plan: Plan, cfg, console: Console) -> Path:
    """Run ``cfg`` unless it has finished: resume an interrupted run, else start it."""
    from bench.results import config_hash
    from bench.runner import Recorder, run_id_for
    from bench.train_cmd import StopFlag, _train_modules, train_one

    folder, done = find_run(plan, cfg)
    if done:
        console.print(f"{cfg.method} seed {cfg.seed}: finished earlier ({folder.name})")
        return folder
    trun = _train_modules()
    recorder = Recorder(plan.folder, _real_dir(plan))
    resume = folder is not None and (folder / "checkpoint" / "state.pt").is_file()
    if folder is not None and not resume:
        shutil.rmtree(folder)  # started but never checkpointed: start again
    if not resume:
        folder = _real_dir(plan) / run_id_for(trun.identity(cfg), config_hash(cfg.to_dict()))
    assert folder is not None
    console.print(f"[bold]{cfg.method}[/] seed {cfg.seed}: {'resuming ' if resume else ''}{folder}")
    with StopFlag(console) as stop:
        train_one(trun, cfg, folder, recorder, console, resume, stop)
    if stop():
        raise click.exceptions.Exit(130)
    return folder


def run_metrics(folder: Path) -> dict:
    """A finished run folder's confirmation metrics (``METRICS``)."""
    config = json.loads((folder / "config.json").read_text())
    summary = config["summary"]
    steps = pd.read_csv(folder / "steps.csv")
    return {
        "mean_effective_grad_ratio": float(summary["mean_effective_grad_ratio"]),
        "mean_train_reward": float(steps["train_reward"].mean()),
        "acc_tokens_100": float(summary["acc_tokens_100"]),
    }


def _scenario_name(plan: Plan, seed: int) -> str:
    return f"{plan.name}-seed{seed}"


def calibrate(plan: Plan, seed: int, run: Path) -> Path:
    out = plan.folder / "calibration"
    name = _scenario_name(plan, seed)
    toml, meta = out / f"{name}.toml", out / f"{name}.json"
    if toml.is_file() and meta.is_file() and json.loads(meta.read_text()).get("log") == str(run):
        return toml
    c = plan.calibrate
    _bench(
        "calibrate",
        str(run),
        "--out",
        str(out),
        "--name",
        name,
        "--replicates",
        str(c["replicates"]),
        "--bootstrap",
        str(c["bootstrap"]),
        "--chain" if c["chain"] else "--no-chain",
        "--seed",
        str(seed),
    )
    return toml


def simulate(plan: Plan, seed: int, scenario: Path) -> pd.DataFrame:
    """Every method (uniform included) on the scenario calibrated on ``seed``'s uniform run,
    with the real runs' schedule: one row per simulated run with its metrics."""
    out = plan.folder / "forecast"
    name = _scenario_name(plan, seed)
    cached = out / f"{name}.csv"
    if cached.is_file():
        return pd.read_csv(cached)
    cfg = plan.config(C.BASELINE, seed)
    runs = out / "runs"
    _bench(
        "simulate",
        "--scenario",
        str(scenario),
        "--methods",
        ",".join((C.BASELINE, *plan.methods)),
        "--seeds",
        str(plan.sim_seeds),
        "--steps",
        str(cfg.steps),
        "--budget",
        str(cfg.budget),
        "--prompts-per-step",
        str(cfg.prompts_per_step),
        "--eval-every",
        str(cfg.eval_every),
        "--budget-unit",
        cfg.budget_unit,
        "--out",
        str(out),
        "--runs-dir",
        str(runs),
    )
    board = pd.read_csv(out / "simulate_leaderboard.csv")
    board = board[board["scenario"] == name].drop_duplicates(["method", "seed"], keep="last")
    rows = [
        {"group": seed, "seed": int(r.seed), "method": r.method, **run_metrics(runs / r.run_id)}
        for r in board.itertuples()
    ]
    table = pd.DataFrame(rows)
    table.to_csv(cached, index=False)
    return table


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)


def committed(path: Path) -> bool:
    """``path`` is tracked by git and unchanged since the last commit."""
    tracked = _git(path.parent, "ls-files", "--error-unmatch", path.name).returncode == 0
    return tracked and _git(path.parent, "diff", "--quiet", "HEAD", "--", path.name).returncode == 0


def _read_forecast(plan: Plan) -> tuple[dict, str]:
    path = plan.folder / "forecast.json"
    if not path.is_file():
        raise usage_error(f"no forecast at {path}: run `bench confirm forecast {plan.path}` first")
    data = path.read_bytes()
    return json.loads(data), hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------
@click.group("confirm")
def confirm() -> None:
    """Predict a real comparison with the simulator, then run it and score the prediction.

    Stages: `forecast PLAN`, then commit forecast.json, then `run PLAN`, then `report PLAN`
    (docs/confirmation.md). Outputs go next to PLAN."""


@confirm.command("forecast")
@click.argument("plan_file", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
def forecast_cmd(plan_file):
    """Real uniform runs, their calibrations, the simulations and forecast.json."""
    plan = load_plan(plan_file)
    console = Console()
    uniform = {s: ensure_run(plan, plan.config(C.BASELINE, s), console) for s in plan.seeds}
    scenarios = {s: calibrate(plan, s, run) for s, run in uniform.items()}
    sim = pd.concat([simulate(plan, s, scenarios[s]) for s in plan.seeds], ignore_index=True)
    cfg = plan.config(C.BASELINE, plan.seeds[0])
    fc = C.forecast(sim, len(plan.seeds), cfg.test_prompts, plan.level)
    cal = {}
    for s, toml in scenarios.items():
        meta = json.loads(toml.with_suffix(".json").read_text())
        cal[str(s)] = {
            "scenario": str(toml.relative_to(plan.folder)),
            "parameters": meta["parameters"],
            "fit_quality": meta["fit_quality"],
        }
    out = {
        "plan": str(plan.path.name),
        "plan_sha256": plan.sha256(),
        "level": plan.level,
        "real_seeds": list(plan.seeds),
        "test_prompts": cfg.test_prompts,
        "uniform_runs": {str(s): r.name for s, r in uniform.items()},
        "calibrations": cal,
        "simulated_worlds_per_calibration": plan.sim_seeds,
        "forecast": fc.to_dict("records"),
    }
    path = plan.folder / "forecast.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    console.print(C.format_table(fc, plan.level), soft_wrap=True)
    console.print(
        f"forecast written: {path} (sha256 {sha[:16]}); commit it, then run: "
        f"bench confirm run {plan_file}",
        soft_wrap=True,
    )


@confirm.command("run")
@click.argument("plan_file", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--allow-uncommitted",
    is_flag=True,
    help="Run even if forecast.json is not committed in git (tests, trials).",
)
def run_cmd(plan_file, allow_uncommitted):
    """The real runs of every method and seed, checking the committed forecast."""
    plan = load_plan(plan_file)
    data, sha = _read_forecast(plan)
    if data["plan_sha256"] != plan.sha256():
        raise usage_error(f"{plan.path.name} changed after the forecast: forecast again")
    if not allow_uncommitted and not committed(plan.folder / "forecast.json"):
        raise usage_error(
            f"{plan.folder / 'forecast.json'} is not committed (or changed since): commit the "
            "forecast before the runs that check it"
        )
    console = Console()
    for method in plan.methods:
        for seed in plan.seeds:
            ensure_run(plan, plan.config(method, seed, sha), console)
    console.print(f"done; the report: bench confirm report {plan_file}", soft_wrap=True)


@confirm.command("report")
@click.argument("plan_file", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
def report_cmd(plan_file):
    """Forecast against observation: report.md, report.json and report.png."""
    from bench.plots import confirmation_plot

    plan = load_plan(plan_file)
    data, sha = _read_forecast(plan)
    rows = []
    for method in (C.BASELINE, *plan.methods):
        for seed in plan.seeds:
            cfg = plan.config(method, seed, "" if method == C.BASELINE else sha)
            folder, done = find_run(plan, cfg)
            if not done:
                raise usage_error(
                    f"{method} seed {seed} has no finished run checking this forecast: "
                    f"bench confirm run {plan_file}"
                )
            rows.append({"seed": seed, "method": method, "run": folder.name, **run_metrics(folder)})
    real = pd.DataFrame(rows)
    fc = pd.DataFrame(data["forecast"])
    obs = C.observed(real)
    table, summary = C.agreement(fc, obs)
    out = plan.folder
    report = {
        "forecast_sha256": sha,
        "level": data["level"],
        "summary": summary,
        "table": json.loads(table.to_json(orient="records")),
        "runs": rows,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(C.format_report(table, summary, data["level"], sha))
    confirmation_plot(table, data["level"], out / "report.png")
    console = Console()
    console.print((out / "report.md").read_text(), soft_wrap=True, markup=False)
    console.print(f"wrote {out / 'report.md'}, report.json, report.png")


__all__ = ["confirm", "load_plan", "Plan"]
