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
# The 0.2 schema, before the compute columns (kept to upgrade files written with it).
_COLUMNS_0_2 = [
    "timestamp",
    "mode",
    "run_id",
    "scenario",
    "model",
    "method",
    "method_name",
    "seed",
    "budget",
    "prompts_per_step",
    "steps",
    "eval_every",
    "frozen",
    "initial_test_accuracy",
    "final_test_accuracy",
    "auc_test_accuracy",
    "target_accuracy",
    "rollouts_to_target",
    "rollouts",
    "tokens",
    "train_samples",
    "final_train_reward",
    "mean_effective_grad_ratio",
    "mean_effective_prompt_ratio",
    "solver_seconds_per_step",
    "wall_seconds",
    "config_hash",
    "code_version",
]
# Test accuracy at equal compute: for each unit, at 20, 50 and 100% of the compute uniform GRPO
# spends in the run's `steps` steps (docs/results.md#equal-compute).
COMPUTE_UNITS = ("rollouts", "tokens", "seconds")
CHECKPOINTS = (20, 50, 100)
MATCHED_COLUMNS = [f"acc_{u}_{c}" for u in COMPUTE_UNITS for c in CHECKPOINTS]

# The leaderboard schema shared by `bench simulate` and `bench train` (docs/results.md).
LEADERBOARD_COLUMNS = [
    "timestamp",  # UTC, ISO 8601, when the run finished
    "mode",  # simulate | train
    "run_id",  # folder name under runs/
    "scenario",  # simulator scenario, or the trainer's task
    "model",  # "simulator", or the trained model's id/path
    "method",  # canonical method spec: name[@preset][:option=value...]
    "method_name",  # registry name
    "seed",
    "budget",  # per-step budget of the methods that spend one, in budget_unit
    "budget_unit",  # rollouts | tokens
    "prompts_per_step",
    "steps",  # the step limit
    "eval_every",  # steps between test-accuracy evaluations
    "frozen",  # True: the policy never moved (simulate --frozen; train lr 0)
    "compute_unit",  # unit of compute_budget: rollouts | tokens | seconds; empty: none
    "compute_budget",  # total compute a run may spend (stops at the step that crosses it)
    "steps_done",
    "initial_test_accuracy",
    "final_test_accuracy",
    "auc_test_accuracy",  # mean test accuracy over cumulative rollouts (normalised area)
    *MATCHED_COLUMNS,
    "target_accuracy",
    "rollouts_to_target",  # cumulative rollouts to reach target_accuracy; empty if never
    "rollouts",  # all generated, discarded included
    "tokens",  # all generated tokens
    "gen_seconds",  # modelled generation seconds (allocators/cost.py)
    "token_budget_error",  # budget_unit tokens: mean |realised - budget| / budget per step
    "train_samples",
    "final_train_reward",
    "mean_effective_grad_ratio",
    "mean_effective_prompt_ratio",
    "mean_expected_informative_groups",  # simulator: E[groups with mixed rewards] per step
    "mean_pg_variance",  # simulator: exact variance of the step's GRPO gradient estimate
    "solver_seconds_per_step",
    "wall_seconds",
    "config_hash",  # sha256[:16] of the resolved config (seed included)
    "code_version",  # package version + git commit
]
# Leaderboards written before a column was added: read with the new columns empty, and
# rewritten in the current schema by their next append.
LEGACY_SCHEMAS = {
    "0.1": [c for c in _COLUMNS_0_2 if c not in ("eval_every", "frozen")],
    "0.2": _COLUMNS_0_2,
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


# Below this much free space a folder is refused before a run starts (a run folder and a row
# take far less; a disk this full fails at the first write).
MIN_FREE_BYTES = 16 << 20


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(folder: str | Path, what: str = "results folder") -> Path:
    """Prove, without writing anything, that ``folder`` (or the existing folder it would be made
    in) is a writable folder with room left; ``ResultsError`` names ``what`` otherwise. The
    folder itself is made by the first write into it."""
    p = Path(folder)
    base = _existing_ancestor(p)
    if not base.is_dir():
        raise ResultsError(f"{what} {p} cannot be made: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ResultsError(f"{what} {p} is not writable: permission denied on {base}")
    try:
        free = shutil.disk_usage(base).free
    except OSError as exc:
        raise ResultsError(f"{what} {p} is not usable: {exc.strerror or exc}") from None
    if free < MIN_FREE_BYTES:
        raise ResultsError(
            f"{what} {p}: only {free / 2**20:.1f} MiB free on its disk "
            f"(at least {MIN_FREE_BYTES >> 20} MiB needed)"
        )
    return p


def check_outputs(results_dir: str | Path, runs_dir: str | Path, mode: str) -> Path:
    """Before a run starts: the results folder and the runs folder can be written and the mode's
    leaderboard, if it exists, has this schema. Nothing is written; ``ResultsError`` otherwise."""
    out = check_writable(results_dir, "results folder")
    check_header(leaderboard_path(out, mode), LEADERBOARD_COLUMNS)
    check_writable(runs_dir, "runs folder")
    return out


def make_folder(folder: str | Path) -> Path:
    """``folder`` and its parents, with the permissions of ``mkdir`` under the umask."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"cannot make {p}: {exc.strerror or exc}") from None
    return p


@contextmanager
def _locked(path: Path):
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- temporary files: named after the process that writes them, removed once it is gone --------
def temp_prefix(name: str) -> str:
    """Prefix of a temporary file or folder for ``name``: hidden, with this process's id."""
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: Path, name: str) -> int:
    """Remove the temporary files and folders of ``name`` (``temp_prefix``) in ``folder`` left by
    processes that no longer run (a SIGKILL mid-write); returns how many."""
    removed = 0
    try:
        entries = list(folder.glob(f".{name}.*"))
    except OSError:
        return 0
    for entry in entries:
        pid = entry.name[len(name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            pass
    return removed


# -- leaderboards ------------------------------------------------------------------------------
def _header(path: Path) -> list[str] | None:
    """The first row of an existing, non-empty file; None if absent or empty."""
    try:
        with open(path, newline="") as f:
            line = f.readline(1 << 20)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None
    if not line.strip():
        return None
    return next(csv.reader([line]))


def check_header(path: str | Path, columns: list[str]) -> None:
    """An existing leaderboard's header is ``columns`` (or an older schema it upgrades from)."""
    path = Path(path)
    head = _header(path)
    if head is None or head == columns:
        return
    if columns == LEADERBOARD_COLUMNS and head in LEGACY_SCHEMAS.values():
        return
    raise ResultsError(
        f"{path} is not a leaderboard of this schema (header differs; expected "
        f"columns: {','.join(columns)}); move it aside or fix it"
    )


def read_checked(path: str | Path, columns: list[str]) -> str:
    """Text of an existing leaderboard in the ``columns`` schema ('' if absent or empty): an
    older schema is upgraded, a torn last line (an append killed mid-write, repaired by the
    next append) is left out. ``ResultsError`` for a file of another schema. Rows of the wrong
    width are kept; ``read_leaderboard`` skips them with a note."""
    path = Path(path)
    check_header(path, columns)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None
    if not text.strip():
        return ""
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    if rows and rows[0] != columns:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(_upgrade(rows, columns))
        text = buf.getvalue()
    return text


# What an older row meant for a column it lacks (the rest are empty: not measured then).
LEGACY_VALUES = {"budget_unit": lambda row: "rollouts", "steps_done": lambda row: row["steps"]}


def _upgrade(rows: list[list[str]], columns: list[str]) -> list[list[str]]:
    """Rows of an older schema in ``columns``: the columns it lacks get ``LEGACY_VALUES`` or are
    empty."""
    head = rows[0]
    pos = {name: k for k, name in enumerate(head)}
    out = [columns]
    for row in rows[1:]:
        old = dict(zip(head, row))
        out.append(
            [
                row[pos[c]]
                if c in pos
                else (LEGACY_VALUES[c](old) if c in LEGACY_VALUES and len(row) == len(head) else "")
                for c in columns
            ]
        )
    return out


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(round(v, 10))
    return str(v)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` sets it
    for every thread for an instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """The existing file's permissions, or 0o666 less the umask for a new one (mkstemp's 0o600
    would make a shared leaderboard private)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _replace_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, sync it and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no newline at the end: an append killed mid-write)."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos = size
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            chunk = f.read(step)
            k = chunk.rfind(b"\n")
            if k >= 0:
                f.truncate(pos - step + k + 1)
                break
            pos -= step
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_rows(
    path: str | Path, rows: list[dict], columns: list[str] = LEADERBOARD_COLUMNS
) -> None:
    """Append ``rows`` (dicts with exactly ``columns``); see the module docstring. The time is
    flat in the file's size: only the header and the last line are read."""
    path = Path(path)
    for r in rows:
        missing = set(columns) - set(r)
        extra = set(r) - set(columns)
        if missing or extra:
            raise ValueError(
                f"row does not match the schema: missing {sorted(missing)}, extra {sorted(extra)}"
            )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([_cell(r[c]) for c in columns])
    data = buf.getvalue().encode()
    make_folder(path.parent)
    with _locked(path):
        clean_stale(path.parent, path.name)
        head = _header(path)
        if head is None:
            _replace_atomically(path, ",".join(columns) + "\n")
        elif head != columns:  # an older schema is upgraded once; read_checked refuses another
            _replace_atomically(path, read_checked(path, columns))
        else:
            _repair_tail(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def read_leaderboard(
    path: str | Path,
    columns: list[str] = LEADERBOARD_COLUMNS,
    skipped: list[str] | None = None,
) -> pd.DataFrame:
    """Checked leaderboard as a DataFrame of strings and numbers (empty with the schema's columns
    if absent). A row of the wrong width (a hand edit) is left out, and a line saying which is
    added to ``skipped``; one bad row never locks the others out."""
    text = read_checked(path, columns)
    if not text:
        return pd.DataFrame(columns=columns)
    rows = list(csv.reader(io.StringIO(text)))
    good = [rows[0]]
    for k, row in enumerate(rows[1:], start=2):
        if len(row) == len(columns):
            good.append(row)
        elif skipped is not None:
            skipped.append(f"{path} line {k}: {len(row)} fields, expected {len(columns)}")
    if len(good) < len(rows):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(good)
        text = buf.getvalue()
    return pd.read_csv(io.StringIO(text))


# Tables a run folder keeps as parquet (columnar, compressed): the rollout log, which has a row
# per prompt visit (docs/results.md#rollout-log); the others are small CSVs.
PARQUET_TABLES = frozenset({"rollouts"})


def write_run_folder(
    runs_dir: str | Path,
    run_id: str,
    config: dict,
    tables: dict[str, pd.DataFrame],
    own: bool = False,
) -> Path:
    """Write ``runs/<run_id>/`` (config.json, one CSV per table, ``PARQUET_TABLES`` as
    parquet) atomically: into a hidden
    folder, renamed into place. An existing folder of that name is replaced only when it is the
    run's ``own`` (a training run's checkpoint folder); otherwise ``ResultsError``."""
    runs = make_folder(runs_dir)
    clean_stale(runs, "run")
    final = runs / run_id
    tmp = Path(tempfile.mkdtemp(dir=runs, prefix=temp_prefix("run") + run_id + "."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        for name, df in tables.items():
            if name in PARQUET_TABLES:
                df.to_parquet(tmp / f"{name}.parquet", index=False, compression="zstd")
            else:
                df.to_csv(tmp / f"{name}.csv", index=False)
        if own and final.exists():
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if final.exists():
                raise ResultsError(f"run folder {final} exists already") from None
            raise ResultsError(f"cannot write run folder {final}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
