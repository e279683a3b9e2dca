"""The README's promises under adversarial use: bad input is one line and exit 2 with nothing
written, a long spec keeps its run, concurrent commands do not collide, a killed command leaves
no process behind, a report never half-replaces the previous one (docs/results.md#guarantees).

The signal, concurrency and orphan cases run real `bench` processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench import report as R
from bench.cli import main
from bench.results import leaderboard_path

TINY = ["--steps", "4", "--budget", "64", "--prompts-per-step", "8", "--eval-every", "2"]


def bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def spawn(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def invoke(tmp_path: Path, *args: str):
    old = os.getcwd()
    os.chdir(tmp_path)  # relative default folders (results/, runs/) land in tmp_path
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        os.chdir(old)


def one_error_line(r, *words: str) -> None:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for w in words:
        assert w in lines[0], lines[0]


# --------------------------------------------------------------------------------------------
# 1. a report with no baseline to compare with
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_methods(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two")
    r = invoke(root, "simulate", "--methods", "knapsack,coba", "--seeds", "2", *TINY)
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.parametrize(
    "args",
    [
        [],  # no uniform in the leaderboard
        ["--baseline", "dapo"],  # a baseline with no run
        ["--methods", "knapsack"],  # narrowed to one method
        ["--baseline", "knapsack", "--methods", "knapsack"],  # the one method is the baseline
    ],
)
def test_report_without_a_baseline_to_compare_with(two_methods, tmp_path, args):
    out = tmp_path / "rep"
    r = invoke(two_methods, "report", "--out", str(out), "--resamples", "200", *args)
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    assert "knapsack" in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_failed_report_leaves_the_previous_one_whole(two_methods, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    assert invoke(two_methods, "report", "--out", str(out), "--no-plots").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("half-way")

    monkeypatch.setattr(R, "across_scenarios", boom)
    r = invoke(two_methods, "report", "--out", str(out), "--no-plots", "--resamples", "300")
    assert r.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --------------------------------------------------------------------------------------------
# 2. a long method spec keeps its run
# --------------------------------------------------------------------------------------------
def test_a_long_method_spec_is_recorded_under_a_bounded_run_id(tmp_path):
    options = {
        "n": 8,
        "min_n": 2,
        "max_n": 128,
        "negative_n": 2,
        "positive_n": 2,
        "alpha": 0.9,
        "cost_estimation": "probability",
        "allow_fallback": "true",
        "reward_buffer_length": 16,
        "min_buffer_length": 8,
        "epoch_estimation": "true",
        "robust_epoch_estimation": "true",
        "adv_clip": 5.0,
        "k0_value": "zero",
        "topup": "uncapped",
        "solver": "fast",
    }
    spec = "knapsack:" + ":".join(f"{k}={v}" for k, v in options.items())
    assert len(spec) > 255
    r = invoke(tmp_path, "simulate", "--methods", spec, "--seeds", "1", *TINY)
    assert r.exit_code == 0, r.output
    row = pd.read_csv(leaderboard_path(tmp_path / "results", "simulate")).iloc[0]
    assert len(row["run_id"]) < 100 and (tmp_path / "runs" / row["run_id"]).is_dir()
    assert row["method"].startswith("knapsack:adv_clip=5.0:allow_fallback=true")


# --------------------------------------------------------------------------------------------
# 3. and 4. numbers: NaN, infinity, out of range and huge values, before anything is written
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["simulate", "--methods", "uniform:eps=nan"], "eps must be a finite number"),
        (["simulate", "--methods", "uniform:eps=inf"], "eps must be a finite number"),
        (["simulate", "--methods", "uniform:eps=-1"], "eps must be in [0, 1]"),
        (["simulate", "--methods", "knapsack:adv_clip=nan"], "adv_clip must be a finite"),
        (["simulate", "--methods", "greso:target_zero_variance=nan"], "target_zero_variance"),
        (["simulate", "--methods", "coba:n_up=1e400"], "n_up expects int"),
        (["simulate", "--methods", "knapsack:max_n=99999999999999999999"], "max_n must be in"),
        (["simulate", "--methods", "cropi:proj_dim=1e9"], "proj_dim expects int"),
        (["simulate", "--steps", "99999999999999999999"], "--steps"),
        (["simulate", "--budget", "99999999999999"], "--budget"),
        (["simulate", "--prompts-per-step", "99999999999999"], "--prompts-per-step"),
        (["simulate", "--eval-every", "0"], "--eval-every"),
        (["simulate", "--seeds", "0-99999999999999"], "at most 100,000 seeds"),
        (["simulate", "--seeds", "99999999999999999999"], "at most 100,000 seeds"),
        (["simulate", "--seeds", "5,99999999999999999999"], "seeds must be at most"),
        (["simulate", "--seeds", "-3"], "--seeds"),
        (["simulate", "--workers", "99999999999"], "--workers"),
        (["solvers", "--prompts", "1000000000000"], "--prompts must be in"),
        (["solvers", "--seed", "99999999999999999999"], "--seed"),
        (["report", "--resamples", "99999999999"], "--resamples"),
    ],
)
def test_bad_numbers_are_one_line_and_write_nothing(tmp_path, args, words):
    one_error_line(invoke(tmp_path, *args), words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "grid, words",
    [
        ("seeds = [0, 99999999999999999999]\nsteps = 5", "seed must be in"),
        ("seeds = 3\nsteps = 99999999999999999999", "steps must be in"),
        ('seeds = "0-99999999999999"', "at most 100,000 seeds"),
        ("seeds = 100000\nbudgets = [64, 128]", "more than 100,000 runs"),
        ("seeds = 2\nbudgets = [99999999999999]", "budget must be in"),
        ('seeds = 2\nmethods = ["uniform:eps=nan"]', "eps must be a finite number"),
    ],
)
def test_bad_numbers_in_a_sweep_grid(tmp_path, grid, words):
    text = grid if "methods" in grid else 'methods = ["uniform"]\n' + grid
    (tmp_path / "g.toml").write_text("[sweep]\n" + text + "\n")
    one_error_line(invoke(tmp_path, "sweep", "g.toml"), words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml"]


def test_an_unusable_runs_folder_is_named_and_nothing_is_written(tmp_path):
    (tmp_path / "file").write_text("")
    r = invoke(tmp_path, "simulate", "--runs-dir", "file/runs", "--seeds", "1", *TINY)
    one_error_line(r, "runs folder file/runs cannot be made")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_disk_that_fills_during_the_run_is_one_line_and_keeps_earlier_rows(tmp_path, monkeypatch):
    from bench import results

    assert (
        invoke(tmp_path, "simulate", "--methods", "uniform", "--seeds", "1", *TINY).exit_code == 0
    )
    board = leaderboard_path(tmp_path / "results", "simulate")
    before = board.read_bytes()

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results, "_write_all", full)
    r = invoke(
        tmp_path, "simulate", "--methods", "uniform", "--seeds", "1-2", *TINY, "--workers", "1"
    )
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error")]
    assert r.exit_code == 1 and len(lines) == 1 and "No space left on device" in lines[0], r.output
    assert "Traceback" not in r.output
    assert board.read_bytes() == before


# --------------------------------------------------------------------------------------------
# 5. concurrent identical commands
# --------------------------------------------------------------------------------------------
def test_concurrent_identical_simulates_keep_their_own_run_folders(tmp_path):
    args = ["simulate", "--methods", "uniform,knapsack", "--seeds", "4", *TINY, "--workers", "1"]
    procs = [spawn(*args, cwd=tmp_path) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    df = pd.read_csv(leaderboard_path(tmp_path / "results", "simulate"))
    assert len(df) == 3 * 8 and df["run_id"].is_unique
    folders = {p.name for p in (tmp_path / "runs").iterdir()}
    assert folders == set(df["run_id"])  # every row has its own complete folder, no leftovers
    for _, row in df.iterrows():
        config = json.loads((tmp_path / "runs" / row["run_id"] / "config.json").read_text())
        assert config["config_hash"] == row["config_hash"]
        assert config["summary"]["final_test_accuracy"] == pytest.approx(
            row["final_test_accuracy"], abs=1e-9
        )


def test_concurrent_sweeps_of_one_grid_split_the_work(tmp_path):
    (tmp_path / "g.toml").write_text(
        '[sweep]\nmethods = ["uniform", "knapsack", "coba"]\nseeds = 6\nsteps = 30\n'
        "budgets = [64]\nprompts_per_step = 8\neval_every = 10\n"
    )
    procs = [spawn("sweep", "g.toml", "--workers", "1", cwd=tmp_path) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    df = pd.read_csv(leaderboard_path(tmp_path / "results", "simulate"))
    assert len(df) == 18 and df["config_hash"].is_unique  # every run once, none twice
    again = bench("sweep", "g.toml", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout


# --------------------------------------------------------------------------------------------
# 7. a SIGKILL of the main process leaves no worker behind
# --------------------------------------------------------------------------------------------
def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_killing_the_main_process_stops_its_workers(tmp_path):
    p = spawn(
        "simulate",
        "--methods",
        "uniform",
        "--seeds",
        "4",
        "--steps",
        "100000",
        "--workers",
        "2",
        cwd=tmp_path,
    )
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and len(workers) < 2:  # the two pool workers are running
        time.sleep(0.5)
        workers = {w for w in _descendants(p.pid) if "spawn_main" in _cmdline(w)}
    assert len(workers) >= 2, "the pool never started"
    time.sleep(2)
    workers = _descendants(p.pid)  # everything it started: workers, trackers, managers
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"{len(left)} processes outlived their parent"
