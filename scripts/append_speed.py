"""Time one leaderboard append against the leaderboard's size (docs/measurements.md).

    python scripts/append_speed.py                      # 10, 10^3, 10^5 and 10^6 rows
    python scripts/append_speed.py --sizes 10,1000 --repeats 50

For each size a leaderboard of that many rows is written to a temporary folder (as text, in one
go), then ``bench.results.append_rows`` appends one row ``--repeats`` times; the median and the
95th percentile of those appends are printed. An append takes the lock, reads the header and the
last line, writes the row and fsyncs it, so its time should not grow with the file.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.results import LEADERBOARD_COLUMNS, append_rows


def a_row(i: int) -> dict:
    r = {c: "" for c in LEADERBOARD_COLUMNS}
    r.update(
        timestamp="2026-12-01T00:00:00+00:00",
        mode="simulate",
        run_id=f"20261201T000000-simulate-dapo-math-knapsack-s{i}-0123abcd-a1b2c3",
        scenario="dapo-math",
        model="simulator",
        method="knapsack",
        method_name="knapsack",
        seed=i,
        budget=2048,
        prompts_per_step=256,
        steps=500,
        final_test_accuracy=0.41234567,
        config_hash="0123456789abcdef",
        code_version="0.1.0+abcdef1",
    )
    return r


def write_rows(path: Path, n: int) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LEADERBOARD_COLUMNS)
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow([a_row(0)[c] for c in LEADERBOARD_COLUMNS])
    with open(path, "w") as f:
        f.write(buf.getvalue() + line.getvalue() * n)
        f.flush()
        os.fsync(f.fileno())  # the setup's own writes are on disk before the timing starts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,100000,1000000")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    print(f"{'rows':>10} {'MB':>8} {'median ms':>10} {'p95 ms':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"simulate_leaderboard_{n}.csv"
            write_rows(path, n)
            times = []
            for k in range(args.repeats):
                t0 = time.perf_counter()
                append_rows(path, [a_row(k)])
                times.append(time.perf_counter() - t0)
            times.sort()
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            mb = path.stat().st_size / 1e6
            print(f"{n:>10,} {mb:>8.1f} {1e3 * statistics.median(times):>10.2f} {1e3 * p95:>8.2f}")
            path.unlink()


if __name__ == "__main__":
    main()
