"""Sweeps: a grid file expanded into simulator runs, executed on a process pool or a Ray cluster.

Grid file (TOML)::

    [sweep]                       # defaults for every experiment below
    scenarios = ["dapo-math"]
    seeds = 10                    # a count (0..9), a list [3, 7] or a range "10-19"
    steps = 300
    budgets = [2048]
    prompts_per_step = 256
    eval_every = 10

    [[experiment]]
    name = "equal budget"
    methods = ["uniform", "knapsack", "coba", {name = "knapsack", k0_value = "natural"}]

    [[experiment]]
    name = "half budget"
    methods = ["uniform"]
    budgets = [4096]

Each experiment is the product methods × scenarios × budgets × seeds × steps × prompts_per_step ×
eval_every × frozen × budget_unit × compute_unit × compute_budget × cost_model (the options of
``bench simulate`` of those names), every key a value or a list, an experiment's keys overriding
``[sweep]``'s.
A method is a spec string (``name[@preset][:key=value...]``, as on the command line) or a table
``{name = ..., preset = ..., <option> = <value>...}``. Without ``[[experiment]]`` blocks
``[sweep]`` is the one experiment. Runs are identified by the hash of their resolved config (the
leaderboard's ``config_hash``): a run already in the leaderboard is skipped (a sweep resumes where
it stopped), and a run listed by two experiments runs once.

Backends: ``process`` reuses ``bench.runner.execute`` (the pool of ``bench simulate``); ``ray``
sends each run to a Ray cluster (``ray`` is an optional dependency, imported only here). Either
way every finished run is recorded at once by ``bench.runner.Recorder`` on this machine, so both
backends write the same rows (timestamps, run ids and wall times aside).
"""

from __future__ import annotations

import fcntl
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from allocators.base import SettingsError
from allocators.loop import RunOutput
from allocators.registry import SpecError, parse_spec
from bench.results import config_hash, leaderboard_path, make_folder, read_leaderboard
from bench.runner import MAX_RUNS, Recorder, execute, parse_seeds
from simulator.run import SimConfig, check, resolve, run_simulation
from simulator.scenario_files import ScenarioError, is_scenario_file, lookup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# grid key -> SimConfig field; every key takes a value or a list
AXES = {
    "methods": "method",
    "scenarios": "scenario",
    "budgets": "budget",
    "seeds": "seed",
    "steps": "steps",
    "prompts_per_step": "prompts_per_step",
    "eval_every": "eval_every",
    "frozen": "frozen",
    "budget_unit": "budget_unit",
    "compute_unit": "compute_unit",
    "compute_budget": "compute_budget",
    "cost_model": "cost_model",
}
ALIASES = {"method": "methods", "scenario": "scenarios", "budget": "budgets", "seed": "seeds"}
META = {"name", "description"}
BACKENDS = ("process", "ray")


class GridError(ValueError):
    """A grid file that cannot be expanded; the message names the problem."""


@dataclass
class Run:
    experiment: str
    config: SimConfig
    config_hash: str


@dataclass
class Plan:
    runs: list[Run]  # unique runs, in grid order
    duplicates: int = 0  # listed by more than one experiment
    experiments: dict[str, int] = field(default_factory=dict)  # name -> runs listed


def _listify(key: str, value) -> list:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise GridError(f"{key} is an empty list")
    return items


def _method_spec(item, where: str) -> str:
    if isinstance(item, str):
        text = item
    elif isinstance(item, dict):
        if "name" not in item:
            raise GridError(f'{where}: a method table needs name = "..." (got {item})')
        opts = {k: v for k, v in item.items() if k not in ("name", "preset")}
        text = str(item["name"]) + (f"@{item['preset']}" if item.get("preset") else "")
        for k, v in opts.items():
            text += f":{k}={str(v).lower() if isinstance(v, bool) else v}"
    else:
        raise GridError(f"{where}: a method is a spec string or a table, not {item!r}")
    try:
        return parse_spec(text).label
    except SpecError as exc:
        raise GridError(f"{where}: {exc}") from None


def _int_axis(key: str, values: list, where: str, minimum: int = 1) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise GridError(f"{where}: {key} must be integers >= {minimum}, got {v!r}")
        out.append(v)
    return out


def _axis(key: str, raw, where: str, folder: Path | None = None) -> list:
    if key == "seeds":
        if isinstance(raw, (int, str)) and not isinstance(raw, bool):
            try:
                return parse_seeds(str(raw))
            except ValueError as exc:
                raise GridError(f"{where}: {exc}".replace("--seeds", "seeds")) from None
        return _int_axis(key, _listify(key, raw), where, minimum=0)
    values = _listify(key, raw)
    if key == "methods":
        return [_method_spec(v, where) for v in values]
    if key == "scenarios":
        out = []
        for v in values:
            if not isinstance(v, str):
                raise GridError(f"{where}: a scenario is a name or a .toml file, not {v!r}")
            if is_scenario_file(v) and folder is not None and not Path(v).is_absolute():
                v = str(folder / v)  # scenario files are relative to the grid file
            try:
                lookup(v)
            except ScenarioError as exc:
                raise GridError(f"{where}: {exc}") from None
            out.append(v)
        return out
    if key == "frozen":
        if not all(isinstance(v, bool) for v in values):
            raise GridError(f"{where}: frozen must be true or false")
        return values
    if key in ("budget_unit", "compute_unit", "cost_model"):
        if not all(isinstance(v, str) for v in values):
            raise GridError(f"{where}: {key} must be strings")
        return values
    if key == "compute_budget":
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise GridError(f"{where}: compute_budget must be numbers")
        return [float(v) for v in values]
    return _int_axis(key, values, where)


def _check(cfg: SimConfig, where: str) -> None:
    sc = lookup(cfg.scenario)
    if cfg.prompts_per_step > sc.num_prompts:
        raise GridError(
            f"{where}: prompts_per_step {cfg.prompts_per_step} exceeds scenario "
            f"{sc.name}'s pool of {sc.num_prompts} prompts"
        )
    try:
        check(cfg)
    except (SettingsError, SpecError) as exc:
        raise GridError(f"{where}: {exc}") from None


def _normalise(table: dict, where: str, folder: Path | None = None) -> dict:
    out = {}
    for k, v in table.items():
        key = ALIASES.get(k, k)
        if key in META:
            continue
        if key not in AXES:
            raise GridError(f"{where}: unknown key {k!r} (keys: {', '.join(AXES)}, name)")
        out[key] = _axis(key, v, where, folder)
    return out


def expand(grid: dict, source: str = "grid", folder: Path | None = None) -> Plan:
    """The unique runs of a parsed grid (``GridError`` on anything it cannot use); scenario
    files are relative to ``folder`` (the grid file's)."""
    unknown = set(grid) - {"sweep", "experiment"}
    if unknown:
        raise GridError(
            f"{source}: unknown table {sorted(unknown)[0]!r} (tables: [sweep], [[experiment]])"
        )
    base_raw = grid.get("sweep", {})
    if not isinstance(base_raw, dict):
        raise GridError(f"{source}: [sweep] must be a table")
    base = _normalise(base_raw, f"{source} [sweep]", folder)
    experiments = grid.get("experiment", [{}])
    if not isinstance(experiments, list) or not all(isinstance(e, dict) for e in experiments):
        raise GridError(f"{source}: experiments are [[experiment]] tables")
    if not experiments:
        experiments = [{}]
    defaults = SimConfig()
    plan = Plan([])
    seen: set[str] = set()
    for k, exp in enumerate(experiments, 1):
        name = str(exp.get("name", base_raw.get("name", f"experiment {k}")))
        where = f"{source} [[experiment]] {name!r}" if "experiment" in grid else f"{source}"
        axes = {**base, **_normalise(exp, where, folder)}
        if "methods" not in axes:
            raise GridError(f'{where}: no methods (methods = ["uniform", ...])')
        keys = list(AXES)
        values = [axes.get(key, [getattr(defaults, AXES[key])]) for key in keys]
        size = math.prod(len(v) for v in values)
        if size + sum(plan.experiments.values()) > MAX_RUNS:
            raise GridError(f"{where}: the grid lists more than {MAX_RUNS:,} runs")
        listed = 0
        for combo in itertools.product(*values):
            try:
                cfg = SimConfig(**{AXES[key]: v for key, v in zip(keys, combo)})
            except SettingsError as exc:
                raise GridError(f"{where}: {exc}") from None
            _check(cfg, where)
            chash = config_hash(resolve(cfg))
            listed += 1
            if chash in seen:
                plan.duplicates += 1
                continue
            seen.add(chash)
            plan.runs.append(Run(name, cfg, chash))
        plan.experiments[name] = plan.experiments.get(name, 0) + listed
    return plan


def load_grid(path: str | Path) -> Plan:
    p = Path(path)
    try:
        grid = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise GridError(f"grid file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(f"cannot read grid file {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"grid file {p} is not valid TOML: {exc}") from None
    return expand(grid, p.name, p.parent)


def done_hashes(results_dir: str | Path) -> set[str]:
    """Config hashes that already have a row in the simulate leaderboard (``ResultsError`` if
    the file is malformed)."""
    df = read_leaderboard(leaderboard_path(results_dir, "simulate"))
    return set(df["config_hash"].astype(str))


def pending(plan: Plan, results_dir: str | Path) -> tuple[list[Run], int]:
    """Runs of ``plan`` without a row yet, and how many were skipped."""
    done = done_hashes(results_dir)
    todo = [r for r in plan.runs if r.config_hash not in done]
    return todo, len(plan.runs) - len(todo)


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


class Claims:
    """Which process runs which config, so that concurrent sweeps of one grid split the work.

    A run is claimed by an exclusive ``flock`` on ``<results>/.claims/<config hash>.lock``, held
    from just before the run starts until its row is written; a ``<hash>.done`` marker is left
    then. A claim of a process that died is released by the kernel with it, so a killed sweep
    never blocks another; a run marked done (by a sweep that started after this one read the
    leaderboard) is not run again."""

    def __init__(self, results_dir: str | Path, since: float = 0.0):
        self.dir = Path(results_dir) / ".claims"
        self.since = since  # done markers older than this predate the sweep (--rerun)
        self.held: dict[str, IO] = {}

    def claim(self, chash: str) -> bool:
        make_folder(self.dir)
        f = open(self.dir / f"{chash}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        done = self.dir / f"{chash}.done"
        if done.exists() and done.stat().st_mtime >= self.since:
            f.close()
            return False
        self.held[chash] = f
        return True

    def finish(self, chash: str) -> None:
        (self.dir / f"{chash}.done").touch()
        self.release(chash)

    def release(self, chash: str) -> None:
        f = self.held.pop(chash, None)
        if f is not None:
            f.close()

    def release_all(self) -> None:
        for chash in list(self.held):
            self.release(chash)


def run_process(
    configs: list[SimConfig],
    workers: int,
    on_done: Callable[[RunOutput], None],
    on_progress: Callable[[int], None],
    claim: Callable[[int], bool] | None = None,
) -> None:
    execute(configs, workers, on_done, on_progress, claim)


class RayMissing(RuntimeError):
    pass


def require_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing(
            "--backend ray needs Ray: pip install 'rollout-bench[ray]' (or pip install ray)"
        ) from None
    return ray


def run_ray(
    configs: list[SimConfig],
    on_done: Callable[[RunOutput], None],
    on_progress: Callable[[int], None],
    address: str | None = None,
    num_cpus: int = 2,
    claim: Callable[[int], bool] | None = None,
) -> None:
    """Run every config as one Ray task (1 CPU each) and record them as they finish.

    Without ``address`` a local Ray instance is started with ``num_cpus`` CPUs and no dashboard,
    and shut down at the end; with one (``auto``, ``ray://host:10001`` or ``host:6379``) the
    sweep joins that cluster, whose nodes must have rollout-bench installed. Tasks are sent as
    they are claimed, a few more than the cluster's CPUs at a time. Ctrl-C cancels the tasks not
    yet finished; the finished ones are already recorded."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
        started = True
    window = 2 * max(int(ray.cluster_resources().get("CPU", num_cpus)), 1)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_simulation)
    order = iter(range(len(configs)))
    refs: dict = {}

    def send_next() -> None:
        for i in order:
            if claim is None or claim(i):
                refs[remote.remote(configs[i])] = configs[i]
                return
            on_progress(configs[i].steps)

    try:
        for _ in range(window):
            send_next()
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                out = ray.get(ref)
                on_progress(refs.pop(ref).steps)
                on_done(out)
                send_next()
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def run_sweep(
    runs: list[Run],
    recorder: Recorder,
    backend: str = "process",
    workers: int = 1,
    address: str | None = None,
    ray_cpus: int = 2,
    on_row: Callable[[dict], None] = lambda row: None,
    on_progress: Callable[[int], None] = lambda k: None,
    since: float = 0.0,
) -> list[dict]:
    """Execute ``runs`` and record each as it finishes; returns the rows written. Each run is
    claimed first (``Claims``): one that a concurrent sweep holds, or has done since ``since``
    (when the caller read the leaderboard), is skipped."""
    rows: list[dict] = []
    claims = Claims(recorder.results_dir, since)

    def done(out: RunOutput) -> None:
        row = recorder.record(out)
        claims.finish(row["config_hash"])
        rows.append(row)
        on_row(row)

    def claim(i: int) -> bool:
        return claims.claim(runs[i].config_hash)

    configs = [r.config for r in runs]
    if not configs:
        return rows
    try:
        if backend == "process":
            run_process(configs, workers, done, on_progress, claim)
        elif backend == "ray":
            run_ray(configs, done, on_progress, address, ray_cpus, claim)
        else:
            raise ValueError(f"unknown backend {backend!r} (backends: {', '.join(BACKENDS)})")
    finally:
        claims.release_all()
    return rows
