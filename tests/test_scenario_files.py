"""Scenario files: loading, bases, errors, the TOML round trip, and their use by the commands."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
from click.testing import CliRunner

from allocators.base import check_numbers
from bench.cli import main
from simulator.run import SimConfig, resolve
from simulator.scenario_files import (
    SCENARIO_BOUNDS,
    ScenarioError,
    dump_scenario,
    load_scenario_file,
    lookup,
)
from simulator.scenarios import SCENARIOS


def _file(tmp_path, text, name="mine.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_file_overrides_its_base(tmp_path):
    s = load_scenario_file(
        _file(tmp_path, 'base = "hard"\nname = "h2"\nlr = 0.5\nnum_prompts = 900\n')
    )
    assert s == replace(
        SCENARIOS["hard"],
        name="h2",
        lr=0.5,
        num_prompts=900,
        summary=s.summary,
        calibration=s.calibration,
    )
    assert "based on hard" in s.calibration
    # without a base: the dataclass defaults, the name from the file's stem
    s = load_scenario_file(_file(tmp_path, "dim = 8\n", "tiny-pool.toml"))
    assert s.name == "tiny-pool" and s.dim == 8 and s.num_prompts == 17_398


@pytest.mark.parametrize(
    "text, message",
    [
        ("lrr = 1.0", "unknown key 'lrr' (did you mean 'lr'?)"),
        ('lr = "fast"', "key 'lr' must be a number, not 'fast'"),
        ("num_prompts = 2.5", "key 'num_prompts' must be an integer"),
        ("num_prompts = 0", "num_prompts must be in [1, 10000000], not 0"),
        ("transfer = 1.5", "transfer must be in [0, 0.999]"),
        ('optimizer = "lion"', "key 'optimizer' must be one of adam, sgd"),
        ('base = "nope"', "base 'nope' is not a built-in scenario"),
        ('name = "hard"', "name 'hard' is a built-in scenario's"),
        ("pass_rate_mixture = [[1.0, 0.5]]", "must be a list of [weight, a, b] Beta components"),
        ("pass_rate_mixture = [[1.0, -0.5, 2.0]]", "each positive"),
        ("frozen = 1", "key 'frozen' must be true or false"),
        ("lr = nan", "key 'lr' must be a finite number"),
        (
            "transfer = 0.8\ndomain_strength = 0.8\n[[domains]]\nname='a'\ntrain_share=1.0\ntest_share=1.0\nmixture=[[1.0,1.0,1.0]]",
            "transfer² + domain_strength²",
        ),
        (
            "[[domains]]\nname='a'\ntrain_share=1.0\nmixture=[[1.0,1.0,1.0]]",
            "domains[0]: missing key 'test_share'",
        ),
        ('validation_sets = ["x"]', "validation set 'x' is not a domain"),
        ("dim = 65536\nnum_prompts = 100000", "too large for memory"),
        ("lr = [", "not valid TOML"),
    ],
)
def test_bad_files_are_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ScenarioError) as err:
        load_scenario_file(_file(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_built_ins_are_within_bounds():
    for s in SCENARIOS.values():
        check_numbers(s, SCENARIO_BOUNDS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("with_base", [False, True])
def test_dump_then_load_gives_the_scenario_back(tmp_path, name, with_base):
    s = replace(SCENARIOS[name], name=f"copy-{name}", lr=0.25, memorization_lr=12.5)
    p = _file(tmp_path, dump_scenario(s, name if with_base else None))
    assert load_scenario_file(p) == s


def test_a_file_is_known_by_its_name_and_content_not_its_path(tmp_path):
    text = 'base = "hard"\nname = "h3"\nlr = 0.5\n'
    a = _file(tmp_path, text)
    (tmp_path / "elsewhere").mkdir()
    b = _file(tmp_path / "elsewhere", text)
    ra, rb = resolve(SimConfig(scenario=str(a))), resolve(SimConfig(scenario=str(b)))
    assert ra == rb and ra["scenario"] == "h3"
    assert resolve(SimConfig(scenario=str(a)))["scenario_config"]["lr"] == 0.5
    # a built-in keeps its config (and hash) as before pool fields existed
    assert "pool" not in resolve(SimConfig())["scenario_config"]


def test_lookup_names_the_built_ins():
    with pytest.raises(ScenarioError, match="unknown scenario 'nope' .built-in: dapo-math"):
        lookup("nope")


def test_simulate_sweep_and_report_use_a_file(tmp_path):
    scen = _file(tmp_path, 'base = "hard"\nname = "my-hard"\nnum_prompts = 300\n')
    out, runs = tmp_path / "results", tmp_path / "runs"
    tiny = ["--steps", "4", "--budget", "64", "--prompts-per-step", "8", "--eval-every", "2"]
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "--scenario",
            str(scen),
            "--methods",
            "uniform",
            "--seeds",
            "1",
            *tiny,
            "--out",
            str(out),
            "--runs-dir",
            str(runs),
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["simulate", "--scenario", str(scen), "--list-scenarios"])
    assert r.exit_code == 0 and "my-hard" in r.output and "built-in" in r.output
    grid = _file(
        tmp_path,
        '[sweep]\nmethods = ["uniform"]\nscenarios = ["mine.toml"]\nseeds = 1\nsteps = 4\n'
        "budgets = [64]\nprompts_per_step = 8\neval_every = 2\n",
        "grid.toml",
    )
    _file(tmp_path, 'base = "hard"\nname = "mine"\nnum_prompts = 300\n')
    r = CliRunner().invoke(
        main, ["sweep", str(grid), "--out", str(out), "--runs-dir", str(runs), "--workers", "1"]
    )
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "simulate_leaderboard.csv")
    assert set(df["scenario"]) == {"my-hard", "mine"}
    r = CliRunner().invoke(
        main,
        ["report", "--results", str(out), "--runs-dir", str(runs), "--out", str(tmp_path / "rep")],
    )
    assert r.exit_code == 0, r.output
    assert "my-hard" in (tmp_path / "rep" / "report.md").read_text()
    bad = _file(tmp_path, "lrr = 1\n", "bad.toml")
    r = CliRunner().invoke(main, ["simulate", "--scenario", str(bad)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "unknown key 'lrr'" in r.output


def _pool(tmp_path, n=400):
    import numpy as np

    rng = np.random.default_rng(0)
    p = np.where(rng.random(n) < 0.4, rng.beta(0.3, 6.0, n), rng.beta(4.0, 1.0, n))
    trials = np.full(n, 16)
    df = pd.DataFrame(
        {"prompt_id": [f"q{i}" for i in range(n)], "successes": rng.binomial(trials, p)}
        | {"trials": trials, "mean_tokens": np.exp(6.0 + 0.3 * rng.standard_normal(n))}
    )
    df.to_csv(tmp_path / "pool.csv", index=False)
    return df


@pytest.mark.parametrize("mode", ["mixture", "prompts"])
def test_a_pool_file_sets_the_initial_rates(tmp_path, mode):
    import numpy as np

    from simulator.scenarios import build_world

    df = _pool(tmp_path)
    s = load_scenario_file(
        _file(tmp_path, f'base = "hard"\nname = "p"\npool = "pool.csv"\npool_mode = "{mode}"\n')
    )
    assert s.num_prompts == len(df) and s.pool.endswith("pool.csv") and len(s.pool_digest) == 16
    assert len(s.pass_rate_mixture) >= 2  # a clearly bimodal pool
    assert 300 < s.median_tokens < 700  # fitted from the mean tokens, not hard's 1,200
    w = build_world(s, 0)
    observed = df.successes.to_numpy() / df.trials.to_numpy()
    corr = np.corrcoef(w.p0, observed)[0, 1]
    # "prompts" keeps each prompt (its draw follows its own counts); "mixture" draws new ones
    assert corr > 0.8 if mode == "prompts" else abs(corr) < 0.2
    assert abs(w.p0.mean() - observed.mean()) < 0.05
    r = resolve(SimConfig(scenario=str(tmp_path / "mine.toml")))
    assert r["scenario_config"]["pool_digest"] == s.pool_digest
    assert r["scenario_config"].get("pool_mode", "mixture") == mode


def test_a_bad_pool_is_one_line(tmp_path):
    df = _pool(tmp_path, 50)
    df.loc[7, "successes"] = 99
    df.to_csv(tmp_path / "pool.csv", index=False)
    with pytest.raises(ScenarioError, match="pool: .*row 8"):
        load_scenario_file(_file(tmp_path, 'pool = "pool.csv"\n'))
