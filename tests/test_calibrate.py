"""bench calibrate: the round trip (simulate with known parameters, calibrate from the rollout log
alone, recover them within the reported uncertainty), the outputs and the bad-input lines."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from allocators.rollout_log import LogError, read_log
from bench.cli import main
from simulator import calibrate as C
from simulator.scenario_files import load_scenario_file

TRUTH = {"lr": 4.0, "memorization_lr": 200.0, "transfer": 0.4}
SCENARIO = (
    'base = "dapo-math"\nname = "roundtrip"\nnum_prompts = 60\nnum_test = 128\ndim = 16\n'
    + "".join(f"{k} = {v}\n" for k, v in TRUTH.items())
)


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cal")
    (tmp / "truth.toml").write_text(SCENARIO)
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "--scenario",
            str(tmp / "truth.toml"),
            "--methods",
            "uniform",
            "--seeds",
            "1",
            "--steps",
            "40",
            "--budget",
            "96",
            "--prompts-per-step",
            "12",
            "--eval-every",
            "5",
            "--workers",
            "1",
            "--out",
            str(tmp / "res"),
            "--runs-dir",
            str(tmp / "runs"),
        ],
    )
    assert r.exit_code == 0, r.output
    (run,) = (tmp / "runs").iterdir()
    return tmp, run


def test_round_trip_recovers_the_parameters(uniform_run):
    tmp, run = uniform_run
    obs = C.observe(read_log(run), pd.read_csv(run / "evals.csv"), 10**9, 60)
    assert obs.steps == 40 and obs.num_visits == 480 and obs.has_test
    fit = C.calibrate(
        obs, "dapo-math", replicates=3, bootstrap=6, design=16, evals=40, step_choices=(1,)
    )
    summary = fit.summary()
    truth = {"shared_lr": TRUTH["lr"] * TRUTH["transfer"] ** 2, **TRUTH}
    assert summary["shared_lr"]["identified"] == "yes", summary
    for name in ("shared_lr", "memorization_lr"):
        row = summary[name]
        lo, hi = row["ci95"]
        # within the bootstrap interval, widened by the grid step of the optimiser's tolerance
        assert lo / 1.25 <= truth[name] <= hi * 1.25, (name, row, truth[name])
    assert fit.loss < 3 * (2 * obs.steps + obs.eval_steps.size - 1)
    assert fit.simulations > 0 and math.isfinite(fit.seconds)


def test_the_command_writes_a_usable_scenario(uniform_run, tmp_path):
    _, run = uniform_run
    out = tmp_path / "cal"
    r = CliRunner().invoke(
        main,
        [
            "calibrate",
            str(run),
            "--no-chain",
            "--replicates",
            "2",
            "--bootstrap",
            "2",
            "--out",
            str(out),
            "--name",
            "mine",
        ],
    )
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == {"mine.toml", "mine.json", "mine.png"}
    s = load_scenario_file(out / "mine.toml")
    fit = json.loads((out / "mine.json").read_text())
    assert s.name == "mine" and s.num_prompts == 60
    assert s.lr == pytest.approx(fit["parameters"]["lr"]["value"])
    assert fit["simulations"] > 0 and set(fit["parameters"]) == {*C.PARAMS, "lr"}
    # the calibrated scenario runs
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "--scenario",
            str(out / "mine.toml"),
            "--methods",
            "uniform",
            "--seeds",
            "1",
            "--steps",
            "2",
            "--budget",
            "32",
            "--prompts-per-step",
            "4",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "res"),
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert r.exit_code == 0, r.output


def test_bad_logs_are_one_line_and_write_nothing(uniform_run, tmp_path):
    _, run = uniform_run
    log = read_log(run)
    log.loc[log.index[5], "successes"] = 99
    log.to_csv(tmp_path / "bad.csv", index=False)
    out = tmp_path / "cal"
    r = CliRunner().invoke(main, ["calibrate", str(tmp_path / "bad.csv"), "--out", str(out)])
    assert r.exit_code == 2 and "row 6: 99 successes out of" in r.output
    assert r.output.count("\n") == 1 and not out.exists()
    gap = read_log(run)
    gap = gap[gap.step != 3]
    gap.to_csv(tmp_path / "gap.csv", index=False)
    r = CliRunner().invoke(main, ["calibrate", str(tmp_path / "gap.csv"), "--out", str(out)])
    assert r.exit_code == 2 and "gap in the steps: step 4 follows step 2" in r.output
    r = CliRunner().invoke(main, ["calibrate", str(run), "--base", "nope", "--out", str(out)])
    assert r.exit_code == 2 and "unknown scenario 'nope'" in r.output and not out.exists()


def test_a_multi_round_log_is_refused():
    log = pd.DataFrame(
        {"step": [1, 1], "round": [0, 1], "prompt_id": [0, 0], "rollouts": [4, 4]}
        | {"successes": [0, 1], "tokens": [10, 10]}
    )
    with pytest.raises(LogError, match="one generation round per step"):
        C.observe(log)
