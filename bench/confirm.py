"""Predict, then confirm: the simulator's forecast of a real comparison, and how it fared.

Pure functions over tables (the stages that run training and simulation are in
``bench/confirm_cmd.py``). The quantities, per method and metric (docs/confirmation.md):

- a **paired difference** to uniform GRPO: the method's value minus uniform's on the same seed
  (real runs) or on the same simulated world (simulator runs);
- the **forecast** of the mean paired difference over the real seeds: its point value is the mean
  over every simulated world; its interval comes from Monte Carlo draws that give each real seed
  one simulated world of the scenario calibrated on that seed's uniform run, average the
  differences over the seeds, and, for test accuracy, add the binomial noise of two greedy
  evaluations on the real test set (variance 2a(1 - a)/T per seed; the simulator's own test
  accuracy is an expectation over its test prompts);
- the **agreement**: whether the observed mean difference lies in its forecast interval, whether
  its sign is the forecast's, and Kendall's tau between the forecast and observed orderings of
  the methods (uniform included, at 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

BASELINE = "uniform"
METRICS = {  # column -> title
    "mean_effective_grad_ratio": "effective-gradient ratio",
    "mean_train_reward": "train reward (mean over steps)",
    "acc_tokens_100": "test accuracy at equal tokens",
}
TEST_METRICS = frozenset({"acc_tokens_100"})


def paired(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each method's metrics minus uniform's on the same ``keys`` (for example the seed, or the
    scenario and seed): one row per (keys, method other than uniform). ``runs`` has the
    columns ``keys``, ``method`` and ``METRICS``; a key without a uniform run is dropped."""
    metrics = list(METRICS)
    base = runs[runs["method"] == BASELINE][keys + metrics]
    if base.duplicated(keys).any():
        raise ValueError(f"more than one uniform run for some {', '.join(keys)}")
    rest = runs[runs["method"] != BASELINE]
    joined = rest.merge(base, on=keys, suffixes=("", "__uniform"), how="inner")
    out = joined[keys + ["method"]].copy()
    for m in metrics:
        out[m] = joined[m] - joined[f"{m}__uniform"]
        out[f"{m}__uniform"] = joined[f"{m}__uniform"]
    return out.reset_index(drop=True)


def forecast(
    sim: pd.DataFrame,
    real_seeds: int,
    num_test: int,
    level: float = 0.9,
    draws: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """The forecast table: one row per (method, metric) with ``mean``, ``lo``, ``hi`` (the
    ``level`` interval of the mean paired difference over ``real_seeds`` real seeds) and ``n``
    (simulated worlds). ``sim`` has the columns ``group`` (the calibration a world belongs to:
    one per real seed), ``seed``, ``method`` and ``METRICS``."""
    rng = np.random.default_rng(seed)
    diffs = paired(sim, ["group", "seed"])
    groups = sorted(diffs["group"].unique())
    rows = []
    for method, d in diffs.groupby("method", sort=False):
        for metric in METRICS:
            means = np.zeros(draws)
            for k in range(real_seeds):
                g = d[d["group"] == groups[k % len(groups)]]
                pick = rng.integers(0, len(g), draws)
                x = g[metric].to_numpy(float)[pick]
                if metric in TEST_METRICS and num_test > 0:
                    a = np.clip(g[f"{metric}__uniform"].to_numpy(float)[pick], 0.0, 1.0)
                    x = x + rng.normal(0.0, np.sqrt(2 * a * (1 - a) / num_test))
                means += x / real_seeds
            lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
            rows.append(
                {
                    "method": method,
                    "metric": metric,
                    "mean": float(d[metric].mean()),
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": int(len(d)),
                }
            )
    return pd.DataFrame(rows)


def observed(real: pd.DataFrame) -> pd.DataFrame:
    """The observed table: one row per (method, metric) with the mean paired difference over
    the real seeds, its standard error and the per-seed differences (``real`` has ``seed``,
    ``method`` and ``METRICS``)."""
    diffs = paired(real, ["seed"])
    rows = []
    for method, d in diffs.groupby("method", sort=False):
        for metric in METRICS:
            x = d[metric].to_numpy(float)
            rows.append(
                {
                    "method": method,
                    "metric": metric,
                    "observed": float(x.mean()),
                    "se": float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan"),
                    "seeds": int(x.size),
                    "per_seed": [float(v) for v in x],
                }
            )
    return pd.DataFrame(rows)


def agreement(fc: pd.DataFrame, obs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Forecast against observation: the joined table with ``inside`` (the observed mean lies
    in the forecast interval) and ``sign_agrees``, and per metric Kendall's tau between the
    forecast and observed values over the methods, uniform included at 0 (``nan`` when fewer
    than 3 methods, or when either side has no spread)."""
    table = fc.merge(obs, on=["method", "metric"], how="inner")
    table["inside"] = (table["observed"] >= table["lo"]) & (table["observed"] <= table["hi"])
    table["sign_agrees"] = np.sign(table["mean"]) == np.sign(table["observed"])
    summary: dict = {"metrics": {}}
    for metric, t in table.groupby("metric", sort=False):
        f = np.r_[0.0, t["mean"].to_numpy(float)]
        o = np.r_[0.0, t["observed"].to_numpy(float)]
        tau = float("nan")
        if f.size >= 3 and np.ptp(f) > 0 and np.ptp(o) > 0:
            tau = float(stats.kendalltau(f, o).statistic)
        summary["metrics"][metric] = {
            "coverage": float(t["inside"].mean()),
            "sign_agreement": float(t["sign_agrees"].mean()),
            "kendall_tau": tau,
            "methods": int(len(t)),
        }
    summary["coverage"] = float(table["inside"].mean()) if len(table) else float("nan")
    summary["sign_agreement"] = float(table["sign_agrees"].mean()) if len(table) else float("nan")
    return table, summary


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:+.3f}"


def format_table(fc: pd.DataFrame, level: float) -> str:
    """The forecast as plain text: per metric, each method's mean difference and interval."""
    lines = []
    for metric, t in fc.groupby("metric", sort=False):
        lines.append(f"{METRICS[metric]}: difference to uniform, {level:.0%} interval")
        for r in t.itertuples():
            lines.append(f"  {r.method:<24} {_fmt(r.mean)}  [{_fmt(r.lo)}, {_fmt(r.hi)}]")
    return "\n".join(lines)


def format_report(table: pd.DataFrame, summary: dict, level: float, sha: str) -> str:
    """The report as Markdown: one table per metric, then the agreement figures."""
    out = [
        "# Forecast against observation",
        "",
        f"Forecast sha256 `{sha}`; intervals at {level:.0%}. Each value is a method's mean "
        "paired difference to uniform GRPO over the real seeds (docs/confirmation.md).",
        "",
    ]
    for metric, t in table.groupby("metric", sort=False):
        s = summary["metrics"][metric]
        out += [
            f"## {METRICS[metric]}",
            "",
            "| method | forecast | interval | observed | s.e. | per seed | inside | sign |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in t.itertuples():
            seeds = ", ".join(_fmt(v) for v in r.per_seed)
            out.append(
                f"| {r.method} | {_fmt(r.mean)} | [{_fmt(r.lo)}, {_fmt(r.hi)}] | "
                f"{_fmt(r.observed)} | {r.se:.3f} | {seeds} | {'yes' if r.inside else 'no'} | "
                f"{'agrees' if r.sign_agrees else 'differs'} |"
            )
        tau = "n/a" if not np.isfinite(s["kendall_tau"]) else f"{s['kendall_tau']:.2f}"
        out += [
            "",
            f"Inside the interval: {s['coverage']:.0%} of {s['methods']} methods; sign agrees: "
            f"{s['sign_agreement']:.0%}; Kendall's tau (forecast vs observed order, uniform "
            f"at 0): {tau}.",
            "",
        ]
    out.append(
        f"Overall: {summary['coverage']:.0%} of the observed differences inside their "
        f"{level:.0%} intervals, signs agree for {summary['sign_agreement']:.0%}."
    )
    return "\n".join(out) + "\n"
