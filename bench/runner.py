"""Record finished runs of either mode, and execute simulator runs on a process pool.

``Recorder`` writes a finished run, simulated or trained, the same way: ``runs/<run-id>/`` (the
run folder schema of docs/results.md), then its leaderboard row. Each run is recorded as soon as
it finishes, so an interrupted batch keeps every run that finished and leaves no partial row.
Runs are independent and deterministic under their seed, so the pool's scheduling order changes
nothing in the results.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from allocators.loop import MAX_SEED, RunOutput
from bench.results import (
    LEADERBOARD_COLUMNS,
    ResultsError,
    append_rows,
    code_version,
    config_hash,
    leaderboard_path,
    now_utc,
    write_run_folder,
)
from simulator.run import SimConfig, run_simulation


def run_id_for(identity: dict, chash: str) -> str:
    """``<UTC time>-<mode>-<scenario or task>-<method name>-s<seed>-<config hash>-<random>``.

    Bounded (under 100 characters whatever the spec: the config hash stands for the options)
    and unique across processes (six random hex digits; the folder is claimed by an atomic
    rename that refuses to replace another run's)."""
    method = re.sub(r"[^A-Za-z0-9_.-]+", "_", identity["method_name"])[:24]
    scenario = re.sub(r"[^A-Za-z0-9_.-]+", "_", identity["scenario"])[:32]
    stamp = now_utc().replace("-", "").replace(":", "").replace("+0000", "")[:15]
    return (
        f"{stamp}-{identity['mode']}-{scenario}-{method}-s{identity['seed']}-{chash[:8]}-"
        f"{secrets.token_hex(3)}"
    )


def leaderboard_row(out: RunOutput, run_id: str, chash: str, version: str) -> dict:
    row = {
        "timestamp": now_utc(),
        "run_id": run_id,
        **out.identity,
        "config_hash": chash,
        "code_version": version,
    }
    row.update({k: out.summary[k] for k in LEADERBOARD_COLUMNS if k in out.summary})
    return row


@dataclass
class Recorder:
    """Writes a finished run of either mode: ``runs/<run-id>/`` and one leaderboard row."""

    results_dir: Path
    runs_dir: Path

    def __post_init__(self):
        self.version = code_version()

    def record(self, out: RunOutput, run_id: str | None = None) -> dict:
        """Record ``out`` under ``run_id`` (the trainer names its folder before it starts), or
        under a new id."""
        chash = config_hash(out.config)
        rid = run_id or run_id_for(out.identity, chash)
        try:
            write_run_folder(
                self.runs_dir,
                rid,
                {**out.config, "config_hash": chash, "summary": out.summary},
                {
                    "steps": out.steps,
                    "evals": out.evals,
                    "allocation": out.allocation,
                    **({"rounds": out.rounds} if out.rounds is not None else {}),
                    **({"rollouts": out.visits} if out.visits is not None else {}),
                },
                own=run_id is not None,
            )
            row = leaderboard_row(out, rid, chash, self.version)
            append_rows(leaderboard_path(self.results_dir, out.identity["mode"]), [row])
        except OSError as exc:  # ENOSPC, EDQUOT, EIO...: one line, the rows before it stay
            where = exc.filename or self.results_dir
            raise ResultsError(
                f"cannot record run {rid} ({where}): {exc.strerror or exc}"
            ) from None
        return row


# -- the process pool --------------------------------------------------------------------------
_progress_queue = None


def _init_worker(q, parent: int) -> None:
    """Pool worker start: keep the progress queue, and exit as soon as the parent is gone (a
    SIGKILL of ``bench`` must not leave workers running, nor anything they hold)."""
    global _progress_queue
    _progress_queue = q

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _worker(cfg: SimConfig, index: int) -> tuple[int, RunOutput]:
    last = [0]

    def progress(done: int) -> None:
        if _progress_queue is not None:
            _progress_queue.put((index, done - last[0]))
        last[0] = done

    return index, run_simulation(cfg, progress)


def execute(
    configs: list[SimConfig],
    workers: int,
    on_done: Callable[[RunOutput], None],
    on_progress: Callable[[int], None] = lambda k: None,
    claim: Callable[[int], bool] | None = None,
) -> list[RunOutput | None]:
    """Run every config (in-process when ``workers`` is 1) and call ``on_done`` as each run
    finishes, in completion order; returns the outputs in ``configs`` order.

    With ``claim``, config ``i`` runs only if ``claim(i)`` is true when it is about to start
    (another process may hold it or have done it: its output is None, its steps count as done
    for ``on_progress``). Runs start as workers free up, at most ``workers`` at a time."""
    outputs: list[RunOutput | None] = [None] * len(configs)
    order = iter(range(len(configs)))

    def next_claimed() -> int | None:
        for i in order:
            if claim is None or claim(i):
                return i
            on_progress(configs[i].steps)
        return None

    if workers <= 1 or len(configs) <= 1:
        while (i := next_claimed()) is not None:
            last = [0]

            def progress(done: int) -> None:
                on_progress(done - last[0])
                last[0] = done

            out = run_simulation(configs[i], progress)
            outputs[i] = out
            on_done(out)
        return outputs

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(q, os.getpid())
    )
    pending: set = set()
    try:
        while len(pending) < workers and (i := next_claimed()) is not None:
            pending.add(pool.submit(_worker, configs[i], i))
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(q, on_progress)
            for fut in done:
                i, out = fut.result()
                outputs[i] = out
                on_done(out)
                if (j := next_claimed()) is not None:
                    pending.add(pool.submit(_worker, configs[j], j))
        _drain(q, on_progress)
    except BaseException:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        q.close()
        raise
    pool.shutdown(wait=True)
    q.close()
    return outputs


def _drain(q, on_progress) -> None:
    while True:
        try:
            _, k = q.get_nowait()
        except queue_mod.Empty:
            return
        on_progress(k)


# The most runs one command may ask for (methods x seeds, or a sweep grid's product).
MAX_RUNS = 100_000


def parse_seeds(text: str) -> list[int]:
    """``5`` → seeds 0..4; ``3,7,11`` → those; ``10-19`` → that range (inclusive). Seeds lie in
    [0, MAX_SEED], at most ``MAX_RUNS`` of them; the size is checked before any list is made."""
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
            low, high, count = min(seeds, default=0), max(seeds, default=0), len(seeds)
        elif "-" in text[1:]:
            a, b = text.split("-", 1)
            low, high = int(a), int(b)
            count = high - low + 1
        else:
            count = int(text)
            if count <= 0:
                raise ValueError
            low, high = 0, count - 1
    except ValueError:
        raise ValueError(
            f"bad --seeds {text!r}: give a count (5), a list (3,7,11) or a range (10-19)"
        ) from None
    if count < 1 or low < 0:
        raise ValueError(f"bad --seeds {text!r}: seeds must be non-negative and at least one")
    if count > MAX_RUNS:
        raise ValueError(f"bad --seeds {text!r}: at most {MAX_RUNS:,} seeds, not {count:,}")
    if high > MAX_SEED:
        raise ValueError(f"bad --seeds {text!r}: seeds must be at most {MAX_SEED:,}")
    if "," not in text:
        seeds = list(range(low, high + 1))
    return list(dict.fromkeys(seeds))
