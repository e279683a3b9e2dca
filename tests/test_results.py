"""Append-only, atomic leaderboards and run folders."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from bench import results
from bench.results import (
    LEADERBOARD_COLUMNS,
    ResultsError,
    append_rows,
    read_leaderboard,
    write_run_folder,
)


def row(i: int) -> dict:
    r = {c: "" for c in LEADERBOARD_COLUMNS}
    r.update(
        mode="simulate", run_id=f"r{i}", method="uniform", seed=i, final_test_accuracy=0.5 + i / 100
    )
    return r


def test_appends_keep_earlier_rows(tmp_path):
    path = tmp_path / "simulate_leaderboard.csv"
    append_rows(path, [row(0)])
    append_rows(path, [row(1), row(2)])
    df = read_leaderboard(path)
    assert list(df.columns) == LEADERBOARD_COLUMNS
    assert df.run_id.tolist() == ["r0", "r1", "r2"]
    assert df.final_test_accuracy.tolist() == [0.5, 0.51, 0.52]


def test_a_crash_while_writing_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "simulate_leaderboard.csv"
    append_rows(path, [row(0)])
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        append_rows(path, [row(1)])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("content", ["a,b,c\n1,2,3\n", ",".join(LEADERBOARD_COLUMNS) + "\n1,2\n"])
def test_a_malformed_leaderboard_is_refused_and_untouched(tmp_path, content):
    path = tmp_path / "simulate_leaderboard.csv"
    path.write_text(content)
    with pytest.raises(ResultsError):
        append_rows(path, [row(0)])
    assert path.read_text() == content


def test_rows_must_match_the_schema(tmp_path):
    with pytest.raises(ValueError):
        append_rows(tmp_path / "x.csv", [{"mode": "simulate"}])
    assert not (tmp_path / "x.csv").exists()


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ResultsError):
        results.check_writable(blocker / "sub")


def test_run_folder_is_complete_or_absent(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    out = write_run_folder(tmp_path, "run-1", {"seed": 0}, {"steps": df})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "steps.csv"]

    class Boom(pd.DataFrame):
        def to_csv(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_run_folder(tmp_path, "run-2", {"seed": 1}, {"steps": Boom({"a": [1]})})
    assert sorted(os.listdir(tmp_path)) == ["run-1"]


def test_config_hash_is_stable_and_sensitive():
    a = results.config_hash({"seed": 0, "method": "uniform"})
    assert a == results.config_hash({"method": "uniform", "seed": 0})
    assert a != results.config_hash({"seed": 1, "method": "uniform"})


def test_leaderboard_keeps_ordinary_permissions(tmp_path):
    path = tmp_path / "simulate_leaderboard.csv"
    append_rows(path, [row(0)])
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    path.chmod(0o640)
    append_rows(path, [row(1)])
    assert path.stat().st_mode & 0o777 == 0o640
