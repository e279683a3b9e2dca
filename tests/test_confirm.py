"""`bench confirm`: the forecast and agreement functions, the plan's checks, and the whole loop
(forecast, run, report) end to end on the embedded model with a tiny plan."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench import confirm as C
from bench.cli import main


def _runs(values: dict[str, list[float]], keys: dict[str, list]) -> pd.DataFrame:
    """Runs with every metric equal to ``values[method][k]`` for the k-th key row."""
    rows = []
    for method, vals in values.items():
        for k, v in enumerate(vals):
            rows.append(
                {**{c: keys[c][k] for c in keys}, "method": method, **dict.fromkeys(C.METRICS, v)}
            )
    return pd.DataFrame(rows)


def test_paired_differences_match_by_key_and_drop_unmatched():
    runs = _runs({"uniform": [0.1, 0.2], "knapsack": [0.4, 0.1]}, {"seed": [0, 1]})
    runs = pd.concat([runs, _runs({"coba": [0.9]}, {"seed": [7]})])  # no uniform for seed 7
    d = C.paired(runs, ["seed"])
    assert sorted(d["method"]) == ["knapsack", "knapsack"]
    got = d.sort_values("seed")["mean_train_reward"].to_numpy()
    assert np.allclose(got, [0.3, -0.1])
    twice = pd.concat([runs, _runs({"uniform": [0.5]}, {"seed": [0]})])
    with pytest.raises(ValueError, match="more than one uniform"):
        C.paired(twice, ["seed"])


def _sim(rng, shift: float, sd: float, groups=3, worlds=400) -> pd.DataFrame:
    keys = {"group": [], "seed": []}
    base, other = [], []
    for g in range(groups):
        for s in range(worlds):
            keys["group"].append(g)
            keys["seed"].append(s)
            u = rng.uniform(0.2, 0.6)
            base.append(u)
            other.append(u + shift + sd * rng.standard_normal())
    return _runs({"uniform": base, "knapsack": other}, keys)


def test_forecast_interval_is_that_of_a_mean_over_the_real_seeds():
    rng = np.random.default_rng(0)
    exact = C.forecast(_sim(rng, 0.05, 0.0), real_seeds=3, num_test=0)
    assert np.allclose(exact[["mean", "lo", "hi"]].to_numpy(), 0.05)
    fc = C.forecast(_sim(rng, 0.05, 0.06), real_seeds=3, num_test=0, level=0.9)
    row = fc[fc["metric"] == "mean_train_reward"].iloc[0]
    half = 1.645 * 0.06 / np.sqrt(3)  # a mean of 3 normal differences
    assert row["mean"] == pytest.approx(0.05, abs=0.005)
    assert row["hi"] - row["lo"] == pytest.approx(2 * half, rel=0.1)
    # the test metric alone gets the real test set's binomial noise on top
    noisy = C.forecast(_sim(rng, 0.05, 0.06), real_seeds=3, num_test=64, level=0.9)
    width = noisy.set_index("metric").eval("hi - lo")
    assert width["acc_tokens_100"] > 1.5 * width["mean_train_reward"]


def test_agreement_scores_inside_sign_and_rank_order():
    fc = pd.DataFrame(
        [
            {
                "method": m,
                "metric": "mean_train_reward",
                "mean": v,
                "lo": v - 0.05,
                "hi": v + 0.05,
                "n": 9,
            }
            for m, v in [("a", 0.10), ("b", -0.10), ("c", 0.20)]
        ]
    )
    obs = pd.DataFrame(
        [
            {
                "method": m,
                "metric": "mean_train_reward",
                "observed": v,
                "se": 0.01,
                "seeds": 3,
                "per_seed": [v] * 3,
            }
            for m, v in [("a", 0.12), ("b", 0.03), ("c", 0.30)]
        ]
    )
    table, summary = C.agreement(fc, obs)
    t = table.set_index("method")
    assert list(t["inside"]) == [True, False, False]
    assert list(t["sign_agrees"]) == [True, False, True]
    s = summary["metrics"]["mean_train_reward"]
    assert s["coverage"] == pytest.approx(1 / 3) and s["sign_agreement"] == pytest.approx(2 / 3)
    # orders with uniform at 0: forecast b < 0 < a < c, observed 0 < b < a < c: one swap of 6
    assert s["kendall_tau"] == pytest.approx(4 / 6)
    text = C.format_report(table, summary, 0.9, "0" * 64)
    assert "| b |" in text and "Kendall's tau" in text


def _plan(tmp_path, **over) -> str:
    lines = {
        "name": '"tiny"',
        "methods": '["knapsack"]',
        "seeds": "[0, 1]",
        "sim_seeds": "4",
        **over,
    }
    text = "\n".join(f"{k} = {v}" for k, v in lines.items())
    text += (
        "\n[train]\nsteps = 2\nbudget = 8\nprompts_per_step = 2\ntrain_prompts = 4\n"
        "test_prompts = 4\neval_every = 1\nmax_new_tokens = 8\n"
        "[calibrate]\nreplicates = 1\nbootstrap = 0\nchain = false\n"
    )
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"methodz": '["coba"]'}, "unknown key 'methodz'"),
        ({"methods": '["uniform", "coba"]'}, "uniform is the baseline"),
        ({"methods": '["nosuch"]'}, "nosuch"),
        ({"seeds": "[0, 0]"}, "distinct"),
        ({"sim_seeds": "1"}, "sim_seeds"),
    ],
)
def test_bad_plans_fail_with_one_line(tmp_path, over, message):
    res = CliRunner().invoke(main, ["confirm", "forecast", _plan(tmp_path, **over)])
    assert res.exit_code == 2
    assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_run_refuses_a_missing_or_uncommitted_forecast(tmp_path):
    plan = _plan(tmp_path)
    res = CliRunner().invoke(main, ["confirm", "run", plan])
    assert res.exit_code == 2 and "no forecast" in res.output
    (tmp_path / "forecast.json").write_text(json.dumps({"plan_sha256": "x"}))
    res = CliRunner().invoke(main, ["confirm", "run", plan])
    assert res.exit_code == 2 and "changed after the forecast" in res.output


@pytest.mark.slow
def test_the_whole_loop_on_the_embedded_model(tmp_path):
    """forecast (2 uniform runs, 2 calibrations, 2 simulations), commit, run, report."""
    pytest.importorskip("torch")
    plan = _plan(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["confirm", "forecast", plan], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    fc = json.loads((tmp_path / "forecast.json").read_text())
    assert {r["metric"] for r in fc["forecast"]} == set(C.METRICS)
    assert len(list((tmp_path / "real").glob("*/rollouts.parquet"))) == 2
    # the forecast must be committed before the runs that check it
    res = runner.invoke(main, ["confirm", "run", plan])
    assert res.exit_code == 2 and "not committed" in res.output
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "forecast.json"], check=True)
    subprocess.run([*git, "commit", "-qm", "forecast"], check=True)
    res = runner.invoke(main, ["confirm", "run", plan], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    configs = [json.loads(p.read_text()) for p in (tmp_path / "real").glob("*/config.json")]
    sha = __import__("hashlib").sha256((tmp_path / "forecast.json").read_bytes()).hexdigest()
    assert sorted(c.get("forecast", "") for c in configs) == ["", "", sha, sha]
    # a second run finds everything finished
    res = runner.invoke(main, ["confirm", "run", plan], catch_exceptions=False)
    assert res.output.count("finished earlier") == 2
    res = runner.invoke(main, ["confirm", "report", plan], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert {r["metric"] for r in report["table"]} == set(C.METRICS)
    assert all(len(r["per_seed"]) == 2 for r in report["table"])
    assert (tmp_path / "report.png").stat().st_size > 0
    assert "Forecast against observation" in (tmp_path / "report.md").read_text()
