"""PNG plots of `bench report` (matplotlib, Agg backend: no display needed).

Each function draws tables computed by ``bench/report.py`` and writes one file; none computes
statistics itself. One figure per group (mode, scenario, model), one line or bar series per arm.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 110


def slug(*parts: str) -> str:
    text = "-".join(str(p) for p in parts if str(p))
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def _colors(arms: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    return {a: cmap(k % cmap.N) for k, a in enumerate(arms)}


def learning_curves(
    bands: pd.DataFrame,
    x: str,
    title: str,
    path: Path,
    target: float | None = None,
    confidence: float = 0.95,
) -> Path:
    """Mean test accuracy against ``x`` per arm, with the bootstrap band; dashed target line."""
    fig, ax = plt.subplots(figsize=(8, 5))
    arms = list(dict.fromkeys(bands["arm"]))
    colors = _colors(arms)
    scale, unit = (1e6, "M") if x == "tokens" else (1e3, "k")
    for arm in arms:
        b = bands[bands["arm"] == arm]
        xs = b["x"].to_numpy(float) / scale
        seeds = int(b["seeds"].iloc[0])
        ax.plot(xs, b["mean"], color=colors[arm], lw=1.8, label=f"{arm} ({seeds} seeds)")
        if b["low"].notna().any():
            ax.fill_between(xs, b["low"], b["high"], color=colors[arm], alpha=0.18, lw=0)
    if target is not None and np.isfinite(target):
        ax.axhline(target, color="0.4", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel(f"cumulative {x} ({unit})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}\nmean over seeds, {confidence:.0%} bootstrap band", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def allocation_histogram(summary: pd.DataFrame, title: str, path: Path) -> Path:
    """Two panels per arm group: rollouts per prompt visit, and share of all rollouts, against
    the pass-rate bin of the prompts when they were sampled."""
    arms = list(dict.fromkeys(summary["arm"]))
    colors = _colors(arms)
    bins = summary[["p_low", "p_high"]].drop_duplicates().sort_values("p_low")
    labels = [f"{lo:.1f}-{hi:.1f}" for lo, hi in bins.itertuples(index=False)]
    pos = np.arange(len(bins))
    width = 0.8 / max(1, len(arms))
    fig, axes = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, layout="constrained")
    for k, arm in enumerate(arms):
        s = summary[summary["arm"] == arm].set_index("p_low").reindex(bins["p_low"])
        off = pos - 0.4 + width * (k + 0.5)
        axes[0].bar(off, s["rollouts_per_prompt"].fillna(0), width, color=colors[arm], label=arm)
        axes[1].bar(off, 100 * s["share"].fillna(0), width, color=colors[arm])
    axes[0].set_ylabel("rollouts per prompt visit")
    axes[1].set_ylabel("share of rollouts (%)")
    axes[1].set_xticks(pos, labels, rotation=0, fontsize=8)
    axes[1].set_xlabel("pass rate of the prompt when sampled (true rate in the simulator)")
    fig.suptitle(f"{title}\nallocation over all steps and seeds", fontsize=10)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, ncols=min(3, len(arms)))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def solver_scaling(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Median seconds per solve against prompts, log-log: one panel per value function, one
    line per solver (``bench solvers``' columns: value_function, solver, prompts,
    median_seconds)."""
    funcs = list(dict.fromkeys(table["value_function"]))
    solvers = list(dict.fromkeys(table["solver"]))
    colors = _colors(solvers)
    fig, axes = plt.subplots(
        1,
        len(funcs),
        figsize=(5.5 * len(funcs), 4.8),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, func in zip(axes[0], funcs):
        part = table[table["value_function"] == func]
        for solver in solvers:
            t = part[part["solver"] == solver].sort_values("prompts")
            if t.empty:
                continue
            ax.plot(
                t["prompts"].to_numpy(float),
                t["median_seconds"].to_numpy(float),
                "o-",
                color=colors[solver],
                label=solver,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("prompts")
        ax.set_title(f"{func} value", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("median seconds per solve")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def calibration_curves(curves: dict, title: str, path: Path) -> Path:
    """Observed against simulated curves of a calibration (``simulator/calibrate.py``): train
    reward and effective-prompt ratio per step (the simulated mean ± one replicate standard
    deviation) and, where the log has them, the change in test accuracy since step 0."""
    panels = [("reward", "train reward"), ("effective", "effective-prompt ratio")]
    has_test = "eval_step" in curves
    fig, axes = plt.subplots(1, 2 + has_test, figsize=(5.2 * (2 + has_test), 3.8))
    step = curves["step"]
    for ax, (key, label) in zip(axes, panels):
        ax.plot(step, curves[f"{key}_observed"], "o", ms=3.5, color="black", label="observed")
        mean, sd = curves[f"{key}_simulated"], curves[f"{key}_sim_sd"]
        ax.plot(step, mean, color="tab:blue", label="simulated (fitted)")
        ax.fill_between(step, mean - sd, mean + sd, color="tab:blue", alpha=0.2, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if has_test:
        ax = axes[2]
        ax.plot(curves["eval_step"], curves["test_observed"], "o-", color="black", label="observed")
        ax.plot(curves["eval_step"], curves["test_simulated"], color="tab:blue", label="simulated")
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy − step 0")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def confirmation_plot(table: pd.DataFrame, level: float, path: Path) -> Path:
    """Forecast against observation (``bench confirm report``): one panel per metric; per
    method the forecast's mean difference to uniform with its interval (bar), the observed mean
    (diamond) and each seed's difference (dots)."""
    from bench.confirm import METRICS

    metrics = list(dict.fromkeys(table["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        t = table[table["metric"] == metric].reset_index(drop=True)
        x = np.arange(len(t))
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.errorbar(
            x - 0.12,
            t["mean"],
            yerr=[t["mean"] - t["lo"], t["hi"] - t["mean"]],
            fmt="o",
            color="tab:blue",
            capsize=4,
            label=f"forecast ({level:.0%})",
        )
        ax.plot(x + 0.12, t["observed"], "D", color="tab:red", label="observed mean")
        for k, seeds in enumerate(t["per_seed"]):
            ax.plot(np.full(len(seeds), k + 0.22), seeds, ".", color="tab:red", alpha=0.45)
        ax.set_xticks(x, t["method"], rotation=20)
        ax.set_title(METRICS.get(metric, metric), fontsize=10)
        ax.set_ylabel("difference to uniform")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
