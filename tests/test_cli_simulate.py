"""`bench simulate` through click's runner, including bad input."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.results import LEADERBOARD_COLUMNS

TINY = [
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--budget",
    "256",
    "--prompts-per-step",
    "32",
    "--workers",
    "1",
]


def run(args, tmp_path):
    return CliRunner().invoke(
        main,
        [
            "simulate",
            *args,
            "--out",
            str(tmp_path / "results"),
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
    )


def test_help_explains_itself():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "simulate" in r.output
    r = CliRunner().invoke(main, ["simulate", "--help"])
    assert r.exit_code == 0 and "--budget" in r.output and "--scenario" in r.output


def test_list_scenarios():
    r = CliRunner().invoke(main, ["simulate", "--list-scenarios"])
    assert r.exit_code == 0
    for name in ("dapo-math", "hard", "easy"):
        assert name in r.output


def test_runs_rank_and_append(tmp_path):
    r = run([*TINY, "--seeds", "2", "--methods", "uniform,uniform:scale_by_std=false"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "ranked by test accuracy at equal tokens" in " ".join(r.output.split())
    df = pd.read_csv(tmp_path / "results" / "simulate_leaderboard.csv")
    assert list(df.columns) == LEADERBOARD_COLUMNS
    assert len(df) == 4 and set(df.method) == {"uniform", "uniform:scale_by_std=false"}
    for rid in df.run_id:
        folder = tmp_path / "runs" / rid
        assert {p.name for p in folder.iterdir()} == {
            "config.json",
            "steps.csv",
            "evals.csv",
            "allocation.csv",
            "rounds.csv",
            "rollouts.parquet",
        }
    # a second invocation appends, and the same seed gives the same numbers
    r = run([*TINY, "--seeds", "1", "--methods", "uniform"], tmp_path)
    assert r.exit_code == 0, r.output
    df2 = pd.read_csv(tmp_path / "results" / "simulate_leaderboard.csv")
    assert len(df2) == 5
    first = df2[(df2.method == "uniform") & (df2.seed == 0)]
    assert first.final_test_accuracy.nunique() == 1 and first.config_hash.nunique() == 1


def test_process_pool_gives_the_same_rows(tmp_path):
    args = [
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--budget",
        "256",
        "--prompts-per-step",
        "32",
        "--seeds",
        "2",
        "--methods",
        "uniform",
    ]
    a = run([*args, "--workers", "1"], tmp_path / "a")
    b = run([*args, "--workers", "2"], tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    cols = ["seed", "final_test_accuracy", "tokens", "config_hash"]
    da = pd.read_csv(tmp_path / "a" / "results" / "simulate_leaderboard.csv")[cols]
    db = pd.read_csv(tmp_path / "b" / "results" / "simulate_leaderboard.csv")[cols]
    pd.testing.assert_frame_equal(
        da.sort_values("seed").reset_index(drop=True), db.sort_values("seed").reset_index(drop=True)
    )


@pytest.mark.parametrize(
    "args, words",
    [
        (["--scenario", "nope"], "unknown scenario 'nope' (built-in: dapo-math"),
        (["--methods", "nope"], "unknown method 'nope' (methods:"),
        (["--methods", "uniform:nope=1"], "has no option 'nope'"),
        (["--methods", "uniform:eps=abc"], "expects float"),
        (["--budget", "10"], "below uniform's minimum"),
        (["--steps", "0"], "'--steps'"),
        (["--budget", "-5"], "'--budget'"),
        (["--prompts-per-step", "0"], "'--prompts-per-step'"),
        (["--prompts-per-step", "100000"], "exceeds the scenario's pool"),
        (["--seeds", "0"], "bad --seeds"),
        (["--seeds", "x"], "bad --seeds"),
        (["--workers", "0"], "'--workers'"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    r = run([*TINY, *args], tmp_path)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], r.output
    assert not (tmp_path / "results" / "simulate_leaderboard.csv").exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_malformed_leaderboard_is_refused_and_kept(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    bad = out / "simulate_leaderboard.csv"
    bad.write_text("not,a,leaderboard\n1,2,3\n")
    r = run([*TINY, "--seeds", "1", "--methods", "uniform"], tmp_path)
    assert (
        r.exit_code == 2
        and r.output.startswith("Error: ")
        and "simulate_leaderboard.csv" in r.output
    )
    assert bad.read_text() == "not,a,leaderboard\n1,2,3\n"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unwritable_results_folder(tmp_path):
    (tmp_path / "blocker").write_text("")
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            *TINY,
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "blocker" / "results"),
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert r.exit_code == 2 and "results folder" in r.output and "is not a folder" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
