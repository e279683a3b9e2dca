"""`bench sweep`: grid expansion, resuming an interrupted sweep, the Ray backend, bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.results import config_hash, leaderboard_path, read_leaderboard
from bench.runner import Recorder
from bench.sweep import GridError, expand, load_grid, pending, run_sweep
from simulator.run import SimConfig, resolve

GRID = """
[sweep]
scenarios = "dapo-math"
seeds = 2
steps = 6
eval_every = 3
prompts_per_step = 32
budgets = 256

[[experiment]]
name = "equal budget"
methods = ["uniform", {name = "uniform", scale_by_std = false}]

[[experiment]]
name = "double budget"
methods = "uniform"
budgets = [256, 512]
"""
# timing columns and per-invocation ids differ between two executions of the same run
VOLATILE = ["timestamp", "run_id", "wall_seconds", "solver_seconds_per_step"]


@pytest.fixture
def grid(tmp_path) -> Path:
    p = tmp_path / "grid.toml"
    p.write_text(GRID)
    return p


def test_expand_products_dedupes_and_hashes(grid):
    plan = load_grid(grid)
    # equal budget: 2 methods x 2 seeds; double budget: 2 budgets x 2 seeds, of which the
    # budget-256 uniform runs repeat the first experiment's
    assert plan.experiments == {"equal budget": 4, "double budget": 4}
    assert plan.duplicates == 2 and len(plan.runs) == 6
    labels = {(r.config.method, r.config.budget, r.config.seed) for r in plan.runs}
    assert labels == {
        (m, b, s)
        for s in (0, 1)
        for m, b in (("uniform", 256), ("uniform:scale_by_std=false", 256), ("uniform", 512))
    }
    for r in plan.runs:
        assert r.config.steps == 6 and r.config.prompts_per_step == 32
        assert r.config_hash == config_hash(resolve(r.config))


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[1] / "bench" / "grids").glob("*.toml")),
    ids=lambda p: p.name,
)
def test_shipped_grids_expand(path):
    plan = load_grid(path)
    assert plan.runs and all(r.config.steps >= 1 for r in plan.runs)


def test_grid_lists_and_defaults():
    plan = expand({"sweep": {"methods": "uniform", "seeds": [3, 7], "steps": [5, 10]}})
    assert sorted((r.config.seed, r.config.steps) for r in plan.runs) == [
        (3, 5),
        (3, 10),
        (7, 5),
        (7, 10),
    ]
    assert all(r.config.budget == SimConfig().budget for r in plan.runs)
    plan = expand({"sweep": {"method": "uniform", "seeds": "10-12"}})
    assert [r.config.seed for r in plan.runs] == [10, 11, 12]


@pytest.mark.parametrize(
    "grid, words",
    [
        ({"sweep": {"methods": "uniform", "bogus": 1}}, "unknown key 'bogus'"),
        ({"sweep": {"methods": "nope"}}, "unknown method 'nope'"),
        ({"sweep": {"methods": [{"preset": "x"}]}}, "needs name"),
        ({"sweep": {"methods": "uniform:eps=abc"}}, "expects float"),
        ({"sweep": {"methods": "uniform", "scenarios": "nope"}}, "unknown scenario 'nope'"),
        (
            {"sweep": {"methods": "uniform", "budgets": 10, "prompts_per_step": 32}},
            "below uniform's minimum",
        ),
        ({"sweep": {"methods": "uniform", "steps": 0}}, "steps must be integers >= 1"),
        ({"sweep": {"methods": "uniform", "seeds": "x"}}, "bad seeds"),
        ({"sweep": {"methods": "uniform", "budgets": []}}, "budgets is an empty list"),
        ({"sweep": {"seeds": 2}}, "no methods"),
        ({"sweeps": {}}, "unknown table 'sweeps'"),
    ],
)
def test_bad_grids(grid, words):
    with pytest.raises(GridError, match=words):
        expand(grid)


def _rows(out: Path) -> pd.DataFrame:
    return read_leaderboard(leaderboard_path(out, "simulate"))


def test_interrupted_sweep_resumes_without_duplicates(tmp_path, grid):
    plan = load_grid(grid)
    out, runs = tmp_path / "results", tmp_path / "runs"
    recorder = Recorder(out, runs)
    todo, skipped = pending(plan, out)
    assert skipped == 0 and len(todo) == 6

    def stop_after_two(row):
        if len(_rows(out)) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(todo, recorder, "process", workers=1, on_row=stop_after_two)
    first = _rows(out)
    assert len(first) == 2 and len(list(runs.iterdir())) == 2

    todo, skipped = pending(plan, out)
    assert skipped == 2 and len(todo) == 4
    assert not {r.config_hash for r in todo} & set(first["config_hash"])
    rows = run_sweep(todo, recorder, "process", workers=1)
    assert len(rows) == 4
    done = _rows(out)
    assert len(done) == 6 and done["config_hash"].is_unique
    assert set(done["config_hash"]) == {r.config_hash for r in plan.runs}
    assert pending(plan, out) == ([], 6)


def _sweep(tmp_path, *args, out="results", runs="runs"):
    return CliRunner().invoke(
        main, ["sweep", *args, "--out", str(tmp_path / out), "--runs-dir", str(tmp_path / runs)]
    )


def test_cli_max_runs_then_resume(tmp_path, grid):
    r = _sweep(tmp_path, str(grid), "--dry-run")
    assert r.exit_code == 0 and "6 to run now" in r.output
    assert not (tmp_path / "results").exists()
    r = _sweep(tmp_path, str(grid), "--max-runs", "3", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "3 to run now, 3 left for later" in r.output and len(_rows(tmp_path / "results")) == 3
    r = _sweep(tmp_path, str(grid), "--workers", "1")
    assert r.exit_code == 0 and "3 already in" in r.output
    r = _sweep(tmp_path, str(grid), "--workers", "1")
    assert r.exit_code == 0 and "nothing to do" in r.output
    df = _rows(tmp_path / "results")
    assert len(df) == 6 and df["config_hash"].is_unique
    # --rerun runs the whole grid again, the earlier sweeps' done markers notwithstanding
    r = _sweep(tmp_path, str(grid), "--workers", "1", "--rerun")
    assert r.exit_code == 0 and "6 to run now" in r.output, r.output
    again = _rows(tmp_path / "results")
    assert len(again) == 12 and again["config_hash"].value_counts().eq(2).all()
    same = ["final_test_accuracy", "rollouts", "tokens", "acc_tokens_100"]
    first = again.iloc[:6].sort_values("config_hash")[same].reset_index(drop=True)
    second = again.iloc[6:].sort_values("config_hash")[same].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, second)  # the same seed, the same numbers


@pytest.mark.slow
def test_ray_backend_writes_the_same_rows_as_the_process_pool(tmp_path, grid):
    pytest.importorskip("ray")
    a = _sweep(tmp_path, str(grid), "--workers", "2", out="pool", runs="pool-runs")
    b = _sweep(
        tmp_path, str(grid), "--backend", "ray", "--workers", "2", out="ray", runs="ray-runs"
    )
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    assert "local Ray, 2 CPUs" in b.output
    da = _rows(tmp_path / "pool").drop(columns=VOLATILE)
    db = _rows(tmp_path / "ray").drop(columns=VOLATILE)
    assert len(da) == 6
    pd.testing.assert_frame_equal(
        da.sort_values("config_hash").reset_index(drop=True),
        db.sort_values("config_hash").reset_index(drop=True),
    )
    assert len(list((tmp_path / "ray-runs").iterdir())) == 6


def _one_error_line(r, words):
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], r.output


def test_cli_bad_input_exit_2(tmp_path, grid, monkeypatch):
    _one_error_line(_sweep(tmp_path, str(tmp_path / "none.toml")), "does not exist")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\nmethods=1")
    _one_error_line(_sweep(tmp_path, str(bad)), "is not valid TOML")
    bad.write_text('[sweep]\nmethods = "nope"\n')
    _one_error_line(_sweep(tmp_path, str(bad)), "unknown method 'nope'")
    _one_error_line(_sweep(tmp_path, str(grid), "--backend", "spark"), "'--backend'")
    _one_error_line(_sweep(tmp_path, str(grid), "--address", "auto"), "--address is for")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "simulate_leaderboard.csv").write_text("a,b\n1,2\n")
    _one_error_line(_sweep(tmp_path, str(grid)), "simulate_leaderboard.csv")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "results" / "simulate_leaderboard.csv").unlink()
    # Ray not installed: one line naming the install command, nothing run
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    _one_error_line(_sweep(tmp_path, str(grid), "--backend", "ray"), "pip install")
    assert not leaderboard_path(tmp_path / "results", "simulate").exists()
