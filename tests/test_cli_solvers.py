"""`bench solvers` through click's CliRunner: a tiny grid, the leaderboard rows, bad input."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.solvers_cmd import LEADERBOARD, SOLVER_COLUMNS

TINY = ["solvers", "--prompts", "16,24", "--per-prompt", "4", "--repeats", "1"]


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_grid_appends_rows(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, TINY + ["--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    path = tmp_path / LEADERBOARD
    with open(path) as f:
        assert next(csv.reader(f)) == SOLVER_COLUMNS
    rows = read(path)
    assert len(rows) == 2 * 2 * 4  # sizes × value functions × solvers
    assert {r["solver"] for r in rows} == {"fast", "greedy", "dp_table", "dp"}
    for r in rows:
        assert r["skipped"] == "false" and float(r["median_seconds"]) > 0
        assert abs(float(r["gap_vs_dp"])) < 1e-12  # every solver reaches the DP's optimum
        assert float(r["speedup_vs_dp"]) > 0
        assert int(r["budget"]) == int(r["prompts"]) * 4
    res = runner.invoke(main, TINY + ["--out", str(tmp_path), "--values", "coba"])
    assert res.exit_code == 0, res.output
    assert len(read(path)) == 16 + 8  # appended, nothing lost
    assert "rows appended" in res.output


def test_skips_a_solver_that_would_take_too_long(tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "solvers",
            "--prompts",
            "2000",
            "--per-prompt",
            "64",
            "--values",
            "knapsack",
            "--solvers",
            "fast,dp",
            "--repeats",
            "1",
            "--max-seconds",
            "0.5",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    rows = {r["solver"]: r for r in read(tmp_path / LEADERBOARD)}
    assert rows["dp"]["skipped"] == "true" and "estimated" in rows["dp"]["note"]
    assert rows["fast"]["skipped"] == "false" and rows["fast"]["gap_vs_dp"] == ""


def test_official_size_is_compared_with_cobas_figure(tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "solvers",
            "--prompts",
            "256",
            "--per-prompt",
            "8",
            "--values",
            "knapsack",
            "--repeats",
            "1",
            "--no-save",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "928" in res.output and "official size" in res.output
    assert "fast solver vs heap greedy" in res.output
    assert not (tmp_path / LEADERBOARD).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per-prompt", "1"], "--per-prompt"),
        (["--per-prompt", "200"], "--per-prompt"),
        (["--cap", "2"], "--cap"),
        (["--prompts", "0"], "--prompts"),
        (["--prompts", "ten"], "integers"),
        (["--values", "simplex"], "knapsack, coba"),
        (["--solvers", "lp"], "fast, greedy, dp_table, dp"),
        (["--rates", "beta"], "uniform"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    res = CliRunner().invoke(
        main, ["solvers", "--prompts", "16", "--per-prompt", "4", "--out", str(tmp_path)] + args
    )
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / LEADERBOARD).exists()


def test_a_foreign_leaderboard_is_refused_untouched(tmp_path):
    path = tmp_path / LEADERBOARD
    path.write_text("a,b\n1,2\n")
    res = CliRunner().invoke(main, TINY + ["--out", str(tmp_path)])
    assert res.exit_code == 2 and "schema" in res.output
    assert path.read_text() == "a,b\n1,2\n"
