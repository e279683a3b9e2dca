"""Record finished runs of either mode, and execute simulator runs on a process pool.

``Recorder`` writes a finished run, simulated or trained, the same way: ``runs/<run-id>/`` (the
run folder schema of docs/results.md), then its leaderboard row. Each run is recorded as soon as
it finishes, so an interrupted batch keeps every run that finished and leaves no partial row.
Runs are independent and deterministic under their seed, so the pool's scheduling order changes
nothing in the results.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import re
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from allocators.loop import RunOutput
from bench.results import (
    LEADERBOARD_COLUMNS,
    append_rows,
    code_version,
    config_hash,
    leaderboard_path,
    now_utc,
    write_run_folder,
)
from simulator.run import SimConfig, run_simulation


def run_id_for(identity: dict, chash: str) -> str:
    """``<UTC time>-<mode>-<scenario or task>-<method>-s<seed>-<config hash>``."""
    method = re.sub(r"[^A-Za-z0-9_.@=-]+", "_", identity["method"])
    scenario = re.sub(r"[^A-Za-z0-9_.-]+", "_", identity["scenario"])
    stamp = now_utc().replace("-", "").replace(":", "").replace("+0000", "")[:15]
    return f"{stamp}-{identity['mode']}-{scenario}-{method}-s{identity['seed']}-{chash[:8]}"


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
        write_run_folder(
            self.runs_dir,
            rid,
            {**out.config, "config_hash": chash, "summary": out.summary},
            {"steps": out.steps, "evals": out.evals, "allocation": out.allocation},
        )
        row = leaderboard_row(out, rid, chash, self.version)
        append_rows(leaderboard_path(self.results_dir, out.identity["mode"]), [row])
        return row


def _worker(cfg: SimConfig, index: int, q) -> tuple[int, RunOutput]:
    last = [0]

    def progress(done: int) -> None:
        q.put((index, done - last[0]))
        last[0] = done

    return index, run_simulation(cfg, progress)


def execute(
    configs: list[SimConfig],
    workers: int,
    on_done: Callable[[RunOutput], None],
    on_progress: Callable[[int], None] = lambda k: None,
) -> list[RunOutput]:
    """Run every config (in-process when ``workers`` is 1) and call ``on_done`` as each run
    finishes, in completion order; returns the outputs in ``configs`` order."""
    outputs: list[RunOutput | None] = [None] * len(configs)
    if workers <= 1 or len(configs) <= 1:
        for i, cfg in enumerate(configs):
            last = [0]

            def progress(done: int) -> None:
                on_progress(done - last[0])
                last[0] = done

            out = run_simulation(cfg, progress)
            outputs[i] = out
            on_done(out)
        return outputs  # type: ignore[return-value]

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            pending = {pool.submit(_worker, cfg, i, q) for i, cfg in enumerate(configs)}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(q, on_progress)
                    for fut in done:
                        i, out = fut.result()
                        outputs[i] = out
                        on_done(out)
                _drain(q, on_progress)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return outputs  # type: ignore[return-value]


def _drain(q, on_progress) -> None:
    while True:
        try:
            _, k = q.get_nowait()
        except queue_mod.Empty:
            return
        on_progress(k)


def parse_seeds(text: str) -> list[int]:
    """``5`` → seeds 0..4; ``3,7,11`` → those; ``10-19`` → that range (inclusive)."""
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        elif "-" in text[1:]:
            a, b = text.split("-", 1)
            seeds = list(range(int(a), int(b) + 1))
        else:
            n = int(text)
            if n <= 0:
                raise ValueError
            seeds = list(range(n))
    except ValueError:
        raise ValueError(
            f"bad --seeds {text!r}: give a count (5), a list (3,7,11) or a range (10-19)"
        ) from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"bad --seeds {text!r}: seeds must be non-negative and at least one")
    return list(dict.fromkeys(seeds))
