"""Append-only, atomic leaderboards and run folders."""

from __future__ import annotations

import os
import subprocess
import sys

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
    """Ctrl-C (or ENOSPC) in the middle of the write: the half-written row is cut again."""
    path = tmp_path / "simulate_leaderboard.csv"
    append_rows(path, [row(0)])
    before = path.read_bytes()
    real_write = os.write

    def half_then_boom(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "write", half_then_boom)
    with pytest.raises(KeyboardInterrupt):
        append_rows(path, [row(1)])
    assert path.read_bytes() == before


def test_a_torn_last_line_is_ignored_and_repaired(tmp_path):
    """A SIGKILL mid-write leaves a last line without its newline: readers leave it out, the
    next append cuts it before writing."""
    path = tmp_path / "simulate_leaderboard.csv"
    append_rows(path, [row(0), row(1)])
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b"2026-12-01T00:00:00+00:00,simulate,r9,dap")
    assert read_leaderboard(path).run_id.tolist() == ["r0", "r1"]
    append_rows(path, [row(2)])
    assert path.read_bytes().startswith(whole)
    assert read_leaderboard(path).run_id.tolist() == ["r0", "r1", "r2"]


def test_a_leaderboard_of_another_schema_is_refused_and_untouched(tmp_path):
    path = tmp_path / "simulate_leaderboard.csv"
    content = "a,b,c\n1,2,3\n"
    path.write_text(content)
    with pytest.raises(ResultsError):
        append_rows(path, [row(0)])
    assert path.read_text() == content


def test_a_bad_row_does_not_block_appends_or_reads(tmp_path):
    path = tmp_path / "simulate_leaderboard.csv"
    path.write_text(",".join(LEADERBOARD_COLUMNS) + "\n1,2\n")
    append_rows(path, [row(0)])
    skipped: list[str] = []
    assert read_leaderboard(path, skipped=skipped).run_id.tolist() == ["r0"]
    assert skipped == [f"{path} line 2: 2 fields, expected {len(LEADERBOARD_COLUMNS)}"]


def test_leftovers_of_dead_processes_are_removed(tmp_path):
    """A killed append or run-folder write leaves a hidden temporary named after its process;
    the next write in that folder removes those of processes that are gone."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    path = tmp_path / "simulate_leaderboard.csv"
    stale_tmp = tmp_path / f".simulate_leaderboard.csv.{dead}.abc.tmp"
    live_tmp = tmp_path / f".simulate_leaderboard.csv.{os.getpid()}.abc.tmp"
    stale_tmp.write_text("x" * 1000)
    live_tmp.write_text("x")
    append_rows(path, [row(0)])
    assert not stale_tmp.exists() and live_tmp.exists()
    stale_run = tmp_path / "runs" / f".run.{dead}.some-run.xyz"
    stale_run.mkdir(parents=True)
    (stale_run / "steps.csv").write_text("a\n")
    write_run_folder(tmp_path / "runs", "run-1", {"seed": 0}, {})
    assert sorted(os.listdir(tmp_path / "runs")) == ["run-1"]


def test_run_folders_keep_ordinary_permissions_and_never_replace_another_run(tmp_path):
    out = write_run_folder(tmp_path, "run-1", {"seed": 0}, {})
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    with pytest.raises(ResultsError, match="exists already"):
        write_run_folder(tmp_path, "run-1", {"seed": 1}, {})
    assert (out / "config.json").read_text().count('"seed": 0') == 1
    write_run_folder(tmp_path, "run-1", {"seed": 2}, {}, own=True)  # a training run's own
    assert '"seed": 2' in (out / "config.json").read_text()


def test_nothing_is_written_by_the_pre_run_check(tmp_path):
    results.check_outputs(tmp_path / "a" / "results", tmp_path / "a" / "runs", "simulate")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_refused_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "MIN_FREE_BYTES", 1 << 62)
    with pytest.raises(ResultsError, match="MiB free"):
        results.check_outputs(tmp_path / "results", tmp_path / "runs", "simulate")


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
