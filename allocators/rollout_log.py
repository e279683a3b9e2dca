"""The rollout log: one row per prompt visit, the format any trainer can write
(docs/results.md#rollout-log).

A visit is the rollouts one generation round of one training step drew for one prompt. Columns
(``ROLLOUT_LOG_COLUMNS``), all integers:

- ``step``: the training step, 1, 2, ... with no gaps;
- ``round``: the generation round within the step, 0 for methods that sample once;
- ``prompt_id``: the prompt's index in the training set (any non-negative id, stable over the run);
- ``rollouts``: responses drawn (at least 1); ``successes``: how many of them were rewarded 1
  (at most ``rollouts``); ``tokens``: their response tokens in all.

Both modes write it to every run folder as ``rollouts.parquet`` (``allocators/loop.py``,
``visit_rows``); ``bench calibrate`` reads it. ``from_samples`` builds it from per-sample
records, which is all a TRL or verl run needs to export (docs/results.md#rollout-log).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from allocators.loop import ROLLOUT_LOG_COLUMNS

LOG_FILE = "rollouts.parquet"


class LogError(ValueError):
    """A rollout log that cannot be used; the message is one line naming the row."""


def from_samples(
    step: np.ndarray,
    prompt_id: np.ndarray,
    reward: np.ndarray,
    tokens: np.ndarray,
    round: np.ndarray | None = None,
) -> pd.DataFrame:
    """The rollout log of per-sample records (one entry per response: its step, prompt, 0/1
    reward, response tokens and, for multi-round samplers, round)."""
    df = pd.DataFrame(
        {
            "step": np.asarray(step, np.int64),
            "round": np.zeros(len(step), np.int64) if round is None else np.asarray(round),
            "prompt_id": np.asarray(prompt_id, np.int64),
            "successes": np.asarray(reward, np.float64) > 0.5,
            "tokens": np.asarray(tokens, np.int64),
        }
    )
    keys = ["step", "round", "prompt_id"]
    out = df.groupby(keys, sort=True).agg(
        rollouts=("successes", "size"), successes=("successes", "sum"), tokens=("tokens", "sum")
    )
    return out.reset_index()[list(ROLLOUT_LOG_COLUMNS)].astype(np.int64)


def read_log(path: str | Path) -> pd.DataFrame:
    """A rollout log from a run folder (its ``rollouts.parquet``) or a ``.parquet``, ``.csv``
    or ``.csv.gz`` file, checked (``LogError``, one line naming the row and the problem)."""
    p = Path(path)
    if p.is_dir():
        p = p / LOG_FILE
    where = f"rollout log {p}"
    name = p.name.lower()
    try:
        if name.endswith(".parquet"):
            df = pd.read_parquet(p)
        elif name.endswith((".csv", ".csv.gz")):
            df = pd.read_csv(p)
        else:
            raise LogError(f"{where}: not a .parquet, .csv or .csv.gz file")
    except FileNotFoundError:
        raise LogError(f"{where} does not exist") from None
    except LogError:
        raise
    except Exception as exc:  # pyarrow, pandas and OS errors alike: one line
        raise LogError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
    return check_log(df, where)


def check_log(df: pd.DataFrame, where: str = "rollout log") -> pd.DataFrame:
    """``df`` as a valid rollout log (int64 columns, rows in step order), or ``LogError``."""
    missing = [c for c in ROLLOUT_LOG_COLUMNS if c not in df.columns]
    if missing:
        raise LogError(f"{where}: missing column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise LogError(f"{where}: no rows")
    out = {}
    for c in ROLLOUT_LOG_COLUMNS:
        col = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(col) | (col != np.round(col))
        if bad.any():
            raise LogError(
                f"{where}: row {_row(bad)}: {c} must be an integer, not {df[c].iloc[_first(bad)]!r}"
            )
        out[c] = col.astype(np.int64)
    steps, rounds, ids = out["step"], out["round"], out["prompt_id"]
    n, s = out["rollouts"], out["successes"]
    for c, low in (
        ("step", 1),
        ("round", 0),
        ("prompt_id", 0),
        ("rollouts", 1),
        ("successes", 0),
        ("tokens", 0),
    ):
        bad = out[c] < low
        if bad.any():
            raise LogError(
                f"{where}: row {_row(bad)}: {c} must be at least {low}, not {out[c][_first(bad)]}"
            )
    bad = s > n
    if bad.any():
        k = _first(bad)
        raise LogError(f"{where}: row {k + 1}: {s[k]} successes out of {n[k]} rollouts")
    back = np.diff(steps) < 0
    if back.any():
        raise LogError(
            f"{where}: row {_first(back) + 2}: step {steps[_first(back) + 1]} comes after step {steps[_first(back)]} (rows must be in step order)"
        )
    if steps[0] != 1:
        raise LogError(f"{where}: row 1: the first step is {steps[0]}, not 1")
    gap = np.diff(steps) > 1
    if gap.any():
        k = _first(gap) + 1
        raise LogError(
            f"{where}: row {k + 1}: a gap in the steps: step {steps[k]} follows step {steps[k - 1]}"
        )
    key = pd.MultiIndex.from_arrays([steps, rounds, ids])
    dup = key.duplicated()
    if dup.any():
        k = _first(dup)
        raise LogError(
            f"{where}: row {k + 1}: a second row for step {steps[k]}, round {rounds[k]}, prompt {ids[k]}"
        )
    return pd.DataFrame(out)[list(ROLLOUT_LOG_COLUMNS)]


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _row(mask: np.ndarray) -> int:
    """The 1-based data row of the first true entry."""
    return _first(mask) + 1
