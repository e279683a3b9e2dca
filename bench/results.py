"""Result writing: append-only CSV leaderboards and per-run folders.

Leaderboards (``results/<mode>_leaderboard.csv``) are only ever appended to, and each append is
atomic: under an exclusive lock on ``<file>.lock`` the existing file is read and checked, the new
rows are written with it into a temporary file in the same folder, flushed to disk and renamed over
the original. A crash or Ctrl-C at any point leaves either the old file or the new one: never a
partial row, never a lost row. An existing file whose header is not the schema's is refused
(``ResultsError``) and left untouched.

Run folders (``runs/<run-id>/``, git-ignored) hold ``config.json`` (the resolved config),
``steps.csv`` (per-step metrics), ``evals.csv`` (test accuracy against cost) and
``allocation.csv`` (allocation histogram); they are written into a temporary folder and renamed
into place, so a folder that exists is complete.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

# The leaderboard schema shared by `bench simulate` and `bench train` (results/README.md).
LEADERBOARD_COLUMNS = [
    "timestamp",  # UTC, ISO 8601, when the run finished
    "mode",  # simulate | train
    "run_id",  # folder name under runs/
    "scenario",  # simulator scenario, or the trainer's task
    "model",  # "simulator", or the trained model's id/path
    "method",  # canonical method spec: name[@preset][:option=value...]
    "method_name",  # registry name
    "seed",
    "budget",  # rollouts per step (the methods' shared budget)
    "prompts_per_step",
    "steps",
    "eval_every",  # steps between test-accuracy evaluations
    "frozen",  # True: the policy never moved (simulate --frozen; train lr 0)
    "initial_test_accuracy",
    "final_test_accuracy",
    "auc_test_accuracy",  # mean test accuracy over cumulative rollouts (normalised area)
    "target_accuracy",
    "rollouts_to_target",  # cumulative rollouts to reach target_accuracy; empty if never
    "rollouts",  # all generated, discarded included
    "tokens",  # all generated tokens
    "train_samples",
    "final_train_reward",
    "mean_effective_grad_ratio",
    "mean_effective_prompt_ratio",
    "solver_seconds_per_step",
    "wall_seconds",
    "config_hash",  # sha256[:16] of the resolved config (seed included)
    "code_version",  # package version + git commit
]
# Leaderboards written before a column was added: read with the new columns empty, and
# rewritten in the current schema by their next append.
LEGACY_SCHEMAS = {
    "0.1": [c for c in LEADERBOARD_COLUMNS if c not in ("eval_every", "frozen")],
}


class ResultsError(Exception):
    """A results file or folder that cannot be used; the message names it and why."""


def leaderboard_path(results_dir: str | Path, mode: str) -> Path:
    return Path(results_dir) / f"{mode}_leaderboard.csv"


def config_hash(config: dict) -> str:
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("rollout-bench")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+{sha}" if sha else v


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it writable; ``ResultsError`` otherwise."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ResultsError(f"results folder {p} is not writable: {exc.strerror or exc}") from None
    return p


def check_outputs(results_dir: str | Path, runs_dir: str | Path, mode: str) -> Path:
    """Before a run starts: the results folder and the runs folder are writable and the mode's
    leaderboard, if it exists, has this schema. Returns the results folder; ``ResultsError``
    otherwise (nothing is written but the folders themselves)."""
    out = check_writable(results_dir)
    read_checked(leaderboard_path(out, mode), LEADERBOARD_COLUMNS)
    check_writable(runs_dir)
    return out


@contextmanager
def _locked(path: Path):
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_checked(path: str | Path, columns: list[str]) -> str:
    """Text of an existing leaderboard after checking its header and row widths ('' if absent)."""
    path = Path(path)
    if not path.exists():
        return ""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None
    if not text.strip():
        return ""
    rows = list(csv.reader(io.StringIO(text)))
    if columns == LEADERBOARD_COLUMNS and rows[0] in LEGACY_SCHEMAS.values():
        rows = _upgrade(rows, columns)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        text = buf.getvalue()
    if rows[0] != columns:
        raise ResultsError(
            f"{path} is not a leaderboard of this schema (header differs; expected "
            f"columns: {','.join(columns)}); move it aside or fix it"
        )
    for k, row in enumerate(rows[1:], start=2):
        if len(row) != len(columns):
            raise ResultsError(
                f"{path} is malformed: line {k} has {len(row)} fields, expected "
                f"{len(columns)}; move it aside or fix it"
            )
    if not text.endswith("\n"):
        text += "\n"
    return text


def _upgrade(rows: list[list[str]], columns: list[str]) -> list[list[str]]:
    """Rows of an older schema in ``columns``: the columns it lacks are empty."""
    pos = {name: k for k, name in enumerate(rows[0])}
    return [columns] + [[row[pos[c]] if c in pos else "" for c in columns] for row in rows[1:]]


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(round(v, 10))
    return str(v)


def _file_mode(path: Path) -> int:
    """The existing file's permissions, or 0o666 less the umask for a new one (mkstemp's 0o600
    would make a shared leaderboard private)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def append_rows(
    path: str | Path, rows: list[dict], columns: list[str] = LEADERBOARD_COLUMNS
) -> None:
    """Append ``rows`` (dicts with exactly ``columns``) atomically; see the module docstring."""
    path = Path(path)
    for r in rows:
        missing = set(columns) - set(r)
        extra = set(r) - set(columns)
        if missing or extra:
            raise ValueError(
                f"row does not match the schema: missing {sorted(missing)}, extra {sorted(extra)}"
            )
    check_writable(path.parent)
    with _locked(path):
        old = read_checked(path, columns)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if not old:
            w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r[c]) for c in columns])
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _file_mode(path))
            with os.fdopen(fd, "w") as f:
                f.write(old)
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def read_leaderboard(path: str | Path, columns: list[str] = LEADERBOARD_COLUMNS) -> pd.DataFrame:
    """Checked leaderboard as a DataFrame (empty with the schema's columns if absent)."""
    text = read_checked(path, columns)
    if not text:
        return pd.DataFrame(columns=columns)
    return pd.read_csv(io.StringIO(text))


def write_run_folder(
    runs_dir: str | Path, run_id: str, config: dict, tables: dict[str, pd.DataFrame]
) -> Path:
    """Write ``runs/<run_id>/`` (config.json and one CSV per table) atomically."""
    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    final = runs / run_id
    tmp = Path(tempfile.mkdtemp(dir=runs, prefix=f".{run_id}."))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        for name, df in tables.items():
            df.to_csv(tmp / f"{name}.csv", index=False)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
