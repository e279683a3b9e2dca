"""`bench report`: statistics on a synthetic leaderboard with known answers, plots, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from bench import report as R
from bench.cli import main
from bench.results import LEADERBOARD_COLUMNS, MATCHED_COLUMNS, append_rows, config_hash

SEEDS = range(6)
# final test accuracy per seed: "better" = uniform + 0.05 on every seed (paired), "worse" below
UNIFORM = [0.40, 0.42, 0.44, 0.46, 0.48, 0.50]
TARGET = 0.45


def _row(
    method: str,
    seed: int,
    final: float,
    budget: int = 2048,
    to_target=np.nan,
    scenario: str = "dapo-math",
    frozen: bool = False,
) -> dict:
    cfg = {"method": method, "seed": seed, "budget": budget, "scenario": scenario, "frozen": frozen}
    return {
        "timestamp": "2026-01-01T00:00:00+00:00",
        "mode": "simulate",
        "run_id": f"{scenario}-{method}-{budget}-s{seed}",
        "scenario": scenario,
        "model": "simulator",
        "method": method,
        "method_name": method.split(":")[0],
        "seed": seed,
        "budget": budget,
        "prompts_per_step": 256,
        "steps": 100,
        "eval_every": 10,
        "frozen": frozen,
        "initial_test_accuracy": 0.37,
        "final_test_accuracy": final,
        "auc_test_accuracy": (0.37 + final) / 2,
        "target_accuracy": TARGET,
        "rollouts_to_target": to_target,
        "rollouts": budget * 100,
        "tokens": budget * 100 * 1000,
        "train_samples": budget * 100,
        "final_train_reward": 0.5,
        "mean_effective_grad_ratio": 0.5 if method == "uniform" else 0.7,
        "mean_effective_prompt_ratio": 0.5,
        "solver_seconds_per_step": 0.001,
        "wall_seconds": 1.0,
        "config_hash": config_hash(cfg),
        "code_version": "test",
        "budget_unit": "rollouts",
        "compute_unit": "",
        "compute_budget": np.nan,
        "steps_done": 100,
        **{c: final for c in MATCHED_COLUMNS},  # every arm spends its budget: equal compute
        "gen_seconds": 100.0 * budget / 2048,
        "token_budget_error": np.nan,
        "mean_expected_informative_groups": np.nan,
        "mean_pg_variance": np.nan,
    }


def synthetic_rows() -> list[dict]:
    rows = []
    for s in SEEDS:
        rows.append(_row("uniform", s, UNIFORM[s], to_target=200_000.0))
        rows.append(_row("better", s, UNIFORM[s] + 0.05, to_target=100_000.0))
        rows.append(_row("worse", s, UNIFORM[s] - 0.10))
    return rows


@pytest.fixture
def leaderboard(tmp_path):
    path = tmp_path / "results" / "simulate_leaderboard.csv"
    append_rows(path, synthetic_rows())
    return path


def write_run_folders(rows: list[dict], runs) -> None:
    """evals.csv (a linear curve ending at the final accuracy) and allocation.csv per run."""
    for r in rows:
        d = runs / r["run_id"]
        d.mkdir(parents=True)
        steps = np.arange(0, 101, 10)
        acc = 0.37 + (r["final_test_accuracy"] - 0.37) * steps / 100
        pd.DataFrame(
            {
                "step": steps,
                "rollouts": steps * r["budget"],
                "tokens": steps * r["budget"] * 1000,
                "test_accuracy": acc,
            }
        ).to_csv(d / "evals.csv", index=False)
        lo = np.arange(10) / 10
        per = 8 if r["method"] == "uniform" else 4 + np.arange(10)
        prompts = np.full(10, 100)
        pd.DataFrame(
            {
                "step": 100,
                "p_low": lo,
                "p_high": lo + 0.1,
                "prompts": prompts,
                "rollouts": prompts * per,
            }
        ).to_csv(d / "allocation.csv", index=False)


# ------------------------------------------------------------------ statistics with known answers


def test_mean_interval_matches_normal_theory_for_many_seeds():
    x = np.random.default_rng(0).normal(0.5, 0.1, 400)
    ci = R.mean_ci(x, resamples=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert ci.point == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_degenerate_and_tiny_samples():
    assert R.mean_ci([0.3, 0.3, 0.3]) == R.Interval(0.3, 0.3, 0.3)
    one = R.mean_ci([0.3])
    assert one.point == 0.3 and np.isnan(one.low) and np.isnan(one.high)
    assert np.isnan(R.iqm_ci([1.0, 2.0, 3.0]).point)  # fewer than MIN_SEEDS_IQM


def test_interquartile_mean_ignores_outliers():
    assert R.iqm(np.arange(8.0)) == pytest.approx(3.5)  # mean of 2, 3, 4, 5
    assert R.iqm([0, 1, 2, 3, 4, 5, 6, 1000.0]) == pytest.approx(3.5)
    x = [0, 1, 2, 3, 4, 5, 6, 1000.0]
    ci, mean = R.iqm_ci(x), R.mean_ci(x)
    assert ci.low <= 3.5 <= ci.high and ci.high < mean.high and mean.point == 127.625


def test_probability_of_improvement():
    a, b = np.array([0.5, 0.6, 0.7]), np.array([0.1, 0.2, 0.3])
    assert R.probability_of_improvement(a, b).point == 1.0
    assert R.probability_of_improvement(b, a).point == 0.0
    assert R.probability_of_improvement(a, a).point == 0.5  # ties count one half
    # of 4 pairs none won, one tied (2 vs 2): 0.5 / 4; and [1, 3] vs [2]: one of 2 won
    assert R.probability_of_improvement([1.0, 2.0], [2.0, 3.0]).point == pytest.approx(0.125)
    assert R.probability_of_improvement([1.0, 3.0], [2.0]).point == pytest.approx(0.5)
    ci = R.probability_of_improvement([0.1, 0.5, 0.9, 0.3], [0.2, 0.4, 0.6, 0.8])
    assert 0.0 <= ci.low <= ci.point <= ci.high <= 1.0


def test_paired_difference_and_ratio():
    x = np.array(UNIFORM)
    d = R.paired_difference(x + 0.05, x)
    assert d.point == pytest.approx(0.05) and d.low == pytest.approx(0.05)
    assert d.high == pytest.approx(0.05)
    r = R.ratio_of_means([200.0, 200.0], [100.0, 100.0])
    assert (r.point, r.low, r.high) == (2.0, 2.0, 2.0)


def test_stratified_interval_resamples_within_scenarios():
    rng = np.random.default_rng(1)
    easy, hard = rng.normal(0.8, 0.02, 10), rng.normal(0.2, 0.02, 10)
    ci = R.stratified_ci([easy, hard])
    assert ci.point == pytest.approx((easy.mean() + hard.mean()) / 2)
    # strata keep their size in every resample: the interval stays narrow (pooled resampling of
    # the 20 values, which ignores the strata, would give an interval about 15x wider)
    assert ci.high - ci.low < 0.05


def test_ranking_costs_and_comparisons(leaderboard):
    rows = R.label_arms(R.load_rows([leaderboard]))
    rk = R.rank(rows, "final_test_accuracy")
    assert list(rk["arm"]) == ["better", "uniform", "worse"]
    assert list(rk["rank"]) == [1, 2, 3]
    top = rk.iloc[0]
    assert top["mean"] == pytest.approx(np.mean(UNIFORM) + 0.05)
    assert top["ci_low"] < top["mean"] < top["ci_high"]
    assert top["ci_low"] >= min(UNIFORM) + 0.05 and top["ci_high"] <= max(UNIFORM) + 0.05
    assert top["iqm"] == pytest.approx(np.mean(UNIFORM[1:5]) + 0.05)
    assert (rk["seeds"] == 6).all()

    vs = R.versus_baseline(rows, "final_test_accuracy", "uniform").set_index("arm")
    assert vs.loc["better", "baseline"] == "uniform"
    assert vs.loc["better", "diff"] == pytest.approx(0.05)
    assert vs.loc["better", "diff_low"] == pytest.approx(0.05)
    assert vs.loc["better", "paired_seeds"] == 6
    assert vs.loc["worse", "diff"] == pytest.approx(-0.10)
    assert vs.loc["uniform", "paired_seeds"] == 0

    poi = R.improvement_matrix(rows, "final_test_accuracy")
    p = poi.set_index(["x", "y"])["p"]
    assert p[("better", "worse")] == 1.0 and p[("worse", "better")] == 0.0
    # of the 6 x 6 pairs, better (u_i + 0.05) loses to uniform's u_j only when j >= i + 3: 6 pairs
    assert p[("better", "uniform")] == pytest.approx(30 / 36)
    assert p[("better", "uniform")] + p[("uniform", "better")] == pytest.approx(1.0)

    cost = R.cost(rows, "uniform").set_index("arm")
    assert cost.loc["better", "compute_ratio"] == pytest.approx(2.0)
    assert cost.loc["better", "reached"] == 6 and cost.loc["worse", "reached"] == 0
    assert cost.loc["better", "effective_grad_ratio"] == pytest.approx(0.7)


def test_duplicates_count_once_and_arms_name_varying_settings(tmp_path):
    rows = synthetic_rows()
    rows.append(dict(rows[0]))  # the same run recorded twice
    rows += [_row("uniform", s, UNIFORM[s] + 0.01, budget=4096) for s in SEEDS]
    path = tmp_path / "simulate_leaderboard.csv"
    append_rows(path, rows)
    loaded, dropped = R.dedupe(R.load_rows([path]))
    assert dropped == 1
    arms = set(R.label_arms(loaded)["arm"])
    assert arms == {
        "uniform (budget=2048)",
        "uniform (budget=4096)",
        "better (budget=2048)",
        "worse (budget=2048)",
    }
    # every arm against the baseline at every budget: better (2048) vs uniform (4096) is paired
    cross = R.versus_baseline(
        R.label_arms(loaded), "final_test_accuracy", "uniform", every_budget=True
    ).set_index(["arm", "baseline"])
    row = cross.loc[("better (budget=2048)", "uniform (budget=4096)")]
    assert row["diff"] == pytest.approx(0.04) and row["paired_seeds"] == 6
    assert ("uniform (budget=2048)", "uniform (budget=2048)") not in cross.index
    assert len(cross) == 2 * 2 + 2  # better, worse x 2 baselines; each uniform vs the other
    # a frozen-policy run (the frozen column) is its own arm, never pooled
    frozen = _row("uniform", 9, 0.37, frozen=True)
    append_rows(path, [frozen])
    labelled = R.label_arms(R.load_rows([path]))
    uni = labelled[(labelled["method"] == "uniform") & (labelled["budget"] == 2048)]
    assert set(uni[uni["seed"] == 9]["arm"]) == {"uniform (budget=2048, frozen)"}
    assert set(uni[uni["seed"] < 9]["arm"]) == {"uniform (budget=2048)"}
    assert set(labelled[labelled["method"] == "better"]["arm"]) == {"better (budget=2048)"}


# ------------------------------------------------------------------ the command


def _report(tmp_path, *args):
    return CliRunner().invoke(
        main,
        [
            "report",
            "--results",
            str(tmp_path / "results"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "report"),
            "--solvers",
            str(tmp_path / "nope.csv"),
            "--resamples",
            "500",
            *args,
        ],
    )


def _png_ok(path) -> bool:
    img = imread(path)
    return path.stat().st_size > 5_000 and img.shape[0] > 200 and float(np.ptp(img)) > 0


def test_report_with_run_folders_writes_plots(tmp_path, leaderboard):
    write_run_folders(synthetic_rows(), tmp_path / "runs")
    r = _report(tmp_path)
    assert r.exit_code == 0, r.output
    assert "ranked by test accuracy at equal tokens" in " ".join(r.output.split())
    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    assert md.index("| 1 | `better`") < md.index("| 2 | `uniform`") < md.index("| 3 | `worse`")
    assert "solver scaling chart skipped" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "allocation-simulate-dapo-math-simulator.png",
        "curves-rollouts-simulate-dapo-math-simulator.png",
        "curves-tokens-simulate-dapo-math-simulator.png",
    ]
    for name in pngs:
        assert _png_ok(out / name), name
        assert f"]({name})" in md
    cost = pd.read_csv(out / "cost.csv").set_index("arm")
    # tokens to target from the curves: better crosses 0.45 where 0.37 + (f - 0.37) t/100 = 0.45
    f = np.array(UNIFORM) + 0.05
    expected = np.mean(8 / (f - 0.37) * 2048 * 1000)
    assert cost.loc["better", "tokens_to_target"] == pytest.approx(expected)
    assert cost.loc["better", "tokens_reached"] == 6


def test_folders_are_searched_with_their_subfolders(tmp_path, leaderboard):
    sub = tmp_path / "results" / "sweep-a" / "simulate_leaderboard.csv"
    append_rows(sub, [_row("uniform", 7, 0.5)])
    (tmp_path / "results" / "solvers_leaderboard.csv").write_text("prompts,median_ms\n64,1\n")
    files = R.find_leaderboards([tmp_path / "results"])
    assert files == [leaderboard, sub]
    assert len(R.load_rows(files)) == 3 * len(SEEDS) + 1


def test_report_without_run_folders_still_ranks(tmp_path, leaderboard):
    r = _report(tmp_path, "--methods", "uniform,better")
    assert r.exit_code == 0, r.output
    md = (tmp_path / "report" / "report.md").read_text()
    assert "`worse`" not in md and "| 1 | `better`" in md
    assert "learning-curve plots and tokens-to-target skipped" in md
    assert "allocation histograms skipped" in md
    assert not list((tmp_path / "report").glob("*.png"))


def test_solver_chart_from_solvers_csv(tmp_path, leaderboard):
    from bench.solvers_cmd import SOLVER_COLUMNS

    solvers = tmp_path / "solvers_leaderboard.csv"
    rows = []
    for func in ("knapsack", "coba"):
        for solver, scale in (("fast", 1e-6), ("greedy", 4e-6), ("dp", 1e-3)):
            for m in (64, 256, 1024):
                for per in (4, 8):
                    skipped = solver == "dp" and m == 1024
                    rows.append(
                        {c: "" for c in SOLVER_COLUMNS}
                        | {
                            "value_function": func,
                            "rates": "uniform",
                            "prompts": m,
                            "budget": m * per,
                            "per_prompt": per,
                            "cap": 128,
                            "solver": solver,
                            "median_seconds": "" if skipped else scale * m,
                            "skipped": str(skipped).lower(),
                            "seed": 0,
                        }
                    )
    append_rows(solvers, rows, SOLVER_COLUMNS)

    def run(path):
        return CliRunner().invoke(
            main,
            [
                "report",
                "--results",
                str(leaderboard),
                "--out",
                str(tmp_path / "report"),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--solvers",
                str(path),
                "--resamples",
                "200",
            ],
        )

    r = run(solvers)
    assert r.exit_code == 0, r.output
    assert _png_ok(tmp_path / "report" / "solver_scaling.png")
    md = (tmp_path / "report" / "report.md").read_text()
    # 2 value functions x (3 + 3 + 2 timed dp) sizes at 8 rollouts per prompt
    assert "](solver_scaling.png)" in md and "16 timings at 8 rollouts per prompt" in md
    # a solver CSV of another schema does not stop the report: the chart is skipped with a note
    bad = tmp_path / "bad.csv"
    bad.write_text("prompts,seconds\n64,1\n")
    (tmp_path / "report" / "solver_scaling.png").unlink()
    r = run(bad)
    assert r.exit_code == 0, r.output
    assert "solver scaling chart skipped" in (tmp_path / "report" / "report.md").read_text()
    assert not (tmp_path / "report" / "solver_scaling.png").exists()


def _one_error_line(r, words):
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], r.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["--mode", "nope"], "unknown --mode 'nope' (modes: simulate, train)"),
        (["--scenario", "nope"], "--scenario 'nope' matches no run"),
        (["--methods", "nope"], "--methods 'nope' matches no run"),
        (["--resamples", "5"], "'--resamples'"),
    ],
)
def test_bad_filters_exit_2(tmp_path, leaderboard, args, words):
    _one_error_line(_report(tmp_path, *args), words)
    assert not (tmp_path / "report").exists()


def test_missing_and_malformed_leaderboards_exit_2(tmp_path):
    _one_error_line(_report(tmp_path), "does not exist")
    (tmp_path / "results").mkdir()
    _one_error_line(_report(tmp_path), "no leaderboard in")
    bad = tmp_path / "results" / "simulate_leaderboard.csv"
    bad.write_text("not,a,leaderboard\n1,2,3\n")
    _one_error_line(_report(tmp_path), "is not a leaderboard of this schema")
    assert not (tmp_path / "report").exists()


def test_a_bad_row_is_left_out_with_a_note_not_a_lockout(tmp_path):
    """One bad row (a non-number, a missing required value, a row of the wrong width, a NaN
    row from an older version) never locks the report out: it is left out with a note."""
    bad = tmp_path / "results" / "simulate_leaderboard.csv"
    bad.parent.mkdir()
    append_rows(tmp_path / "ok.csv", synthetic_rows()[:3])
    lines = (tmp_path / "ok.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[LEADERBOARD_COLUMNS.index("final_test_accuracy")] = "zero point four"
    short = lines[3].rsplit(",", 3)[0]
    bad.write_text("\n".join([lines[0], lines[1], ",".join(cells), short]) + "\n")
    r = _report(tmp_path)
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "line 3: final_test_accuracy 'zero point four' is not a number" in flat
    n = len(LEADERBOARD_COLUMNS)
    assert f"line 4: {n - 3} fields, expected {n}" in flat
    md = (tmp_path / "report" / "report.md").read_text()
    assert "row left out" in md and "(1 runs)" in flat
    # every row bad: one error line, and no report folder changes
    bad.write_text("\n".join([lines[0], ",".join(cells)]) + "\n")
    before = sorted(p.name for p in (tmp_path / "report").iterdir())
    _one_error_line(_report(tmp_path), "no runs in")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == before
