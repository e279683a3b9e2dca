"""Equal compute (issue "Compare at equal compute"): the cost model, compute budgets, accuracy at
matched compute, rankings that say which axis ranks, and token budgets."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from allocators.base import SettingsError
from allocators.cost import CostModel, fit
from allocators.loop import accuracy_at
from bench import report as R
from bench.cli import main
from bench.results import LEADERBOARD_COLUMNS, append_rows
from bench.simulate_cmd import summary_table
from simulator.run import SimConfig, run_simulation

SMALL = dict(steps=12, budget=64, prompts_per_step=8, eval_every=3)


# --------------------------------------------------------------------------------------------
# the cost model
# --------------------------------------------------------------------------------------------
def test_a_second_round_costs_more_than_one_round_of_the_same_tokens():
    m = CostModel()
    one = m.round_seconds(256, 256 * 1000, 4000)
    two = m.round_seconds(128, 128 * 1000, 4000) + m.round_seconds(128, 128 * 1000, 4000)
    assert two > one
    # the difference is one more overhead and one more tail (decode of the longest)
    assert two - one == pytest.approx(m.overhead + m.decode * 4000)


def test_the_longest_sequence_sets_the_decode_term():
    m = CostModel(overhead=0, prefill=0, per_token=0, decode=0.01, capacity=100)
    assert m.round_seconds(50, 5000, 300) == pytest.approx(3.0)
    assert m.round_seconds(50, 5000, 600) == pytest.approx(6.0)  # same tokens, longer tail
    assert m.round_seconds(150, 5000, 300) == pytest.approx(6.0)  # two waves


def test_fit_recovers_the_parameters_of_synthetic_rounds():
    rng = np.random.default_rng(0)
    truth = CostModel(overhead=0.3, prefill=1e-4, decode=0.02, per_token=3e-4, capacity=64)
    n = 200
    seqs = rng.integers(1, 200, n)
    longest = rng.integers(5, 60, n)
    tokens = (seqs * rng.uniform(0.3, 1.0, n) * longest).astype(int)
    prompt = rng.uniform(20, 80, n)
    secs = [truth.round_seconds(s, t, m, p) for s, t, m, p in zip(seqs, tokens, longest, prompt)]
    rounds = pd.DataFrame(
        dict(
            sequences=seqs,
            tokens=tokens,
            longest=longest,
            prompt_tokens=prompt,
            seconds=np.array(secs) * rng.normal(1, 0.01, n),
        )
    )
    f = fit(rounds, capacity=64)
    for k in ("overhead", "prefill", "decode", "per_token"):
        assert getattr(f.model, k) == pytest.approx(getattr(truth, k), rel=0.1), k
    assert f.mean_abs_relative_error < 0.02 and f.r2 > 0.99


def test_a_cost_model_file_is_checked(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"parameters": {"decode": 0.5, "capacity": 8}}))
    assert CostModel.load(p) == CostModel(decode=0.5, capacity=8)
    for text, words in (
        ("nope", "not valid JSON"),
        ('{"decode": -1}', "decode must be in"),
        ('{"speed": 1}', "unknown key 'speed'"),
        ('{"decode": "fast"}', "must be a number"),
    ):
        p.write_text(text)
        with pytest.raises(SettingsError, match=words):
            CostModel.load(p)


# --------------------------------------------------------------------------------------------
# compute budgets and accuracy at matched compute
# --------------------------------------------------------------------------------------------
def test_accuracy_at_interpolates_and_holds_after_the_end():
    x = np.array([0.0, 10.0, 20.0])
    acc = np.array([0.2, 0.4, 0.5])
    assert accuracy_at(x, acc, 5) == pytest.approx(0.3)
    assert accuracy_at(x, acc, 20) == pytest.approx(0.5)
    assert accuracy_at(x, acc, 99) == pytest.approx(0.5)


def test_a_compute_budget_stops_at_the_step_that_crosses_it():
    full = run_simulation(SimConfig(method="uniform", **SMALL))
    per_step = float(full.steps["tokens"].iloc[:3].sum())  # three steps' tokens
    cut = run_simulation(
        SimConfig(method="uniform", compute_unit="tokens", compute_budget=per_step - 1, **SMALL)
    )
    assert cut.summary["steps_done"] == 3
    assert cut.evals["step"].tolist() == [0, 3]  # the last step is evaluated
    same = ["rollouts", "tokens", "train_reward", "effective_grad_ratio", "cum_tokens"]
    pd.testing.assert_frame_equal(cut.steps[same], full.steps[same].iloc[:3])  # same steps
    cut = run_simulation(
        SimConfig(method="uniform", compute_unit="rollouts", compute_budget=64 * 5, **SMALL)
    )
    assert cut.summary["steps_done"] == 5 and cut.summary["rollouts"] == 64 * 5
    assert cut.evals["step"].tolist() == [0, 3, 5]


def test_uniform_is_at_its_own_compute_at_the_last_step():
    out = run_simulation(SimConfig(method="uniform", **SMALL))
    s = out.summary
    assert s["acc_rollouts_100"] == pytest.approx(s["final_test_accuracy"])
    assert s["gen_seconds"] > 0 and np.isfinite(s["acc_tokens_50"])
    assert len(out.rounds) == SMALL["steps"]  # one round a step
    assert out.steps["model_gen_seconds"].sum() == pytest.approx(s["gen_seconds"])


def test_a_multi_round_method_pays_its_rounds():
    out = run_simulation(SimConfig(method="ada-seq-balance", **SMALL))
    per_step = out.rounds.groupby("step").size()
    assert per_step.max() > 1
    uni = run_simulation(SimConfig(method="uniform", **SMALL))
    # more model seconds per generated token than uniform: overhead and tail once per round
    assert out.summary["gen_seconds"] / out.summary["tokens"] > (
        uni.summary["gen_seconds"] / uni.summary["tokens"]
    )


def test_a_token_budget_lands_near_its_tokens():
    budget = 64 * 1900
    out = run_simulation(
        SimConfig(
            method="uniform",
            budget=budget,
            budget_unit="tokens",
            steps=12,
            eval_every=3,
            prompts_per_step=8,
        )
    )
    assert out.summary["token_budget_error"] < 0.35
    assert (out.steps["token_budget"] == budget).all()
    realised = out.steps["tokens"].to_numpy()
    assert abs(realised.mean() - budget) / budget < 0.2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--compute-budget", "0"], "--compute-budget"),
        (["--compute-budget", "-5"], "--compute-budget"),
        (["--compute-budget", "100", "--compute-unit", "tokens"], "less than one step"),
        (["--compute-budget", "10", "--compute-unit", "rollouts"], "less than one step"),
        (["--compute-unit", "joules"], "--compute-unit"),
        (["--methods", "dapo", "--budget-unit", "tokens"], "cannot take its budget in tokens"),
        (["--methods", "greso", "--budget-unit", "tokens"], "cannot take its budget in tokens"),
        (["--budget", "2000000"], "at most 1,000,000 rollouts"),
    ],
)
def test_bad_compute_settings_are_one_line(tmp_path, args, words):
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "r"),
            "--runs-dir",
            str(tmp_path / "runs"),
            *args,
        ],
    )
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and words in lines[0], r.output
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------
# rankings: equal compute ranks, equal steps beside it
# --------------------------------------------------------------------------------------------
def _rows() -> list[dict]:
    """Two methods where the rankings disagree: 'spender' is ahead after the same steps and
    behind at equal tokens."""
    rows = []
    for seed in range(4):
        for method, final, at_tokens in (("uniform", 0.50, 0.50), ("spender", 0.60, 0.45)):
            r = {c: "" for c in LEADERBOARD_COLUMNS}
            noise = 0.002 * seed
            r.update(
                mode="simulate",
                run_id=f"{method}-{seed}",
                scenario="dapo-math",
                model="simulator",
                method=method,
                method_name="uniform",
                seed=seed,
                budget=64,
                budget_unit="rollouts",
                prompts_per_step=8,
                steps=10,
                eval_every=5,
                frozen=False,
                steps_done=10,
                initial_test_accuracy=0.3,
                final_test_accuracy=final + noise,
                auc_test_accuracy=final - 0.1,
                target_accuracy=0.9,
                rollouts=640,
                tokens=640_000,
                gen_seconds=100.0,
                mean_effective_grad_ratio=0.5,
                solver_seconds_per_step=0.001,
                config_hash=f"{method}{seed}",
                **{c: at_tokens + noise for c in ("acc_tokens_100", "acc_rollouts_100")},
                acc_seconds_100=at_tokens + noise,
            )
            rows.append(r)
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    """As a leaderboard reads: numbers as numbers, empty cells as NaN."""
    return pd.read_csv(io.StringIO(pd.DataFrame(rows).to_csv(index=False)))


def _order(table) -> list[str]:
    return list(table.columns[1]._cells)


def test_the_simulate_table_ranks_by_equal_compute_and_says_so():
    rows = _frame(_rows())
    (by_tokens,) = summary_table(rows, "tokens")
    assert "at equal tokens" in by_tokens.title and _order(by_tokens) == ["uniform", "spender"]
    (by_steps,) = summary_table(rows, "steps")
    assert "at equal steps" in by_steps.title and _order(by_steps) == ["spender", "uniform"]


def test_bench_report_ranks_by_equal_compute_with_the_equal_step_figure_beside(tmp_path):
    path = tmp_path / "results" / "simulate_leaderboard.csv"
    path.parent.mkdir()
    append_rows(path, _rows())

    def report(*args):
        r = CliRunner().invoke(
            main,
            [
                "report",
                "--results",
                str(tmp_path / "results"),
                "--out",
                str(tmp_path / "rep"),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--no-plots",
                "--resamples",
                "200",
                *args,
            ],
        )
        assert r.exit_code == 0, r.output
        return r.output, (tmp_path / "rep" / "report.md").read_text()

    out, md = report()
    assert "ranked by test accuracy at equal tokens" in " ".join(out.split())
    first = md.index("### Ranking by test accuracy at equal tokens (ranks this group)")
    steps = md.index("### Ranking by final test accuracy (equal steps)")
    assert first < steps
    eq_table = md[first:steps]
    assert eq_table.index("`uniform`") < eq_table.index("`spender`")
    assert md[steps:].index("`spender`") < md[steps:].index("`uniform`")
    ranked = pd.read_csv(tmp_path / "rep" / "ranking_acc_tokens_100.csv")
    assert ranked["arm"].tolist() == ["uniform", "spender"]
    out, md = report("--rank-by", "steps")
    assert "ranked by final test accuracy (equal steps)" in " ".join(out.split())
    assert "### Ranking by final test accuracy (equal steps) (ranks this group)" in md


def test_rows_before_the_compute_columns_rank_at_equal_steps():
    rows = _frame(_rows())
    rows["acc_tokens_100"] = np.nan
    assert R.group_rank_metric(rows, "tokens") == "final_test_accuracy"


def test_a_rerun_study_compares_within_its_code_version_and_old_arms_rank_last():
    old = _frame(_rows())
    old[["acc_tokens_100", "acc_rollouts_100", "acc_seconds_100"]] = np.nan  # before the columns
    old["code_version"] = "old"
    new = _frame(_rows())
    new["code_version"] = "new"
    new["config_hash"] = new["config_hash"] + "-new"
    rows = R.label_arms(pd.concat([old, new], ignore_index=True))
    ranked = R.rank(rows, "acc_tokens_100", resamples=200)
    assert ranked["arm"].tolist()[:2] == [
        "uniform (code_version=new)",
        "spender (code_version=new)",
    ]
    assert ranked["mean"].iloc[2:].isna().all()  # the old arms, without the column, last
    vs = R.versus_baseline(rows, "acc_tokens_100", resamples=200)
    spender_new = vs[vs["arm"] == "spender (code_version=new)"].iloc[0]
    assert spender_new["baseline"] == "uniform (code_version=new)"
    assert spender_new["diff"] == pytest.approx(-0.05)
