"""The statistics of `bench report`: pure functions of leaderboard rows and run-folder tables.

No plotting and no terminal output here (``bench/plots.py`` draws, ``bench/report_cmd.py``
prints and writes). Every interval is a percentile bootstrap from ``scipy.stats.bootstrap`` with a
fixed generator seed, so a report is reproducible; nothing is hand-rolled.

The approach is rliable's (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice"): point estimates over seeds with stratified bootstrap confidence intervals, the
interquartile mean (IQM, the mean of the middle 50% of runs, ``scipy.stats.trim_mean(x, 0.25)``)
next to the mean, and the probability of improvement P(X > Y) (Mann-Whitney U / (m·n), ties count
one half) with its own bootstrap interval. rliable itself is not a dependency: its pinned ``arch<8``
does not import under pandas 3, so the same computations go through scipy.

Units of comparison
- A *group* is one (mode, scenario, model): runs in a group face the same prompts.
- An *arm* is a method spec plus the run settings that vary inside its group (budget, prompts per
  step, steps), e.g. ``coba (budget=2048)`` against ``uniform (budget=4096)``. Seeds of an arm are
  its samples. Inside a group with one setting everywhere the arm is the method spec alone.
- Rows with the same ``config_hash`` are the same deterministic run recorded twice: the later row
  counts, the others are dropped (``dedupe``), so a duplicate never inflates the number of seeds.
- When an arm is reported in several scenarios, ``stratified_ci`` gives the across-scenario mean
  with seeds resampled within each scenario (the strata), as rliable aggregates across tasks.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from allocators.metrics import first_crossing
from allocators.registry import is_reference
from bench.results import (
    COMPUTE_UNITS,
    LEADERBOARD_COLUMNS,
    MATCHED_COLUMNS,
    ResultsError,
    read_leaderboard,
)

GROUP = ["mode", "scenario", "model"]
ARM_SETTINGS = (
    "budget",
    "budget_unit",
    "prompts_per_step",
    "steps",
    "compute_budget",
    "code_version",  # rows of different code are different arms, labelled with their version
)
MIN_SEEDS_IQM = 4  # below this the 25% trim removes nothing: the IQM is left empty
CONFIDENCE = 0.95
RESAMPLES = 2000
NUMERIC = [
    "seed",
    "budget",
    "prompts_per_step",
    "steps",
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
    "compute_budget",
    "steps_done",
    "gen_seconds",
    "token_budget_error",
    "mean_expected_informative_groups",
    "mean_pg_variance",
    *MATCHED_COLUMNS,
]
REQUIRED = [
    "mode",
    "scenario",
    "method",
    "seed",
    "budget",
    "final_test_accuracy",
    "auc_test_accuracy",
    "config_hash",
]
METRICS = {  # metric column -> (title, higher is better)
    "final_test_accuracy": ("final test accuracy (equal steps)", True),
    "auc_test_accuracy": ("AUC of test accuracy vs rollouts", True),
    **{f"acc_{u}_100": (f"test accuracy at equal {u}", True) for u in COMPUTE_UNITS},
}
RANK_UNITS = ("tokens", "rollouts", "seconds", "steps")


def rank_metric(unit: str) -> str:
    """The column a ranking unit sorts by: test accuracy once a run has spent what uniform GRPO
    spends in the run's steps, in that unit (``acc_<unit>_100``); ``steps``: after the steps."""
    return "final_test_accuracy" if unit == "steps" else f"acc_{unit}_100"


def group_rank_metric(g: pd.DataFrame, unit: str) -> str:
    """``rank_metric(unit)``, or the equal-step metric for a group whose rows predate the
    equal-compute columns (all empty)."""
    m = rank_metric(unit)
    return m if g[m].notna().any() else "final_test_accuracy"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def find_leaderboards(paths: list[str | Path]) -> list[Path]:
    """Run leaderboards named by ``paths``: a CSV file as given, a folder's ``*_leaderboard.csv``
    files, its subfolders' included (``solvers_leaderboard.csv`` excluded: its schema is the
    solver benchmark's)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*_leaderboard.csv") if f.name != "solvers_leaderboard.csv"
            )
            if not files:
                raise ResultsError(
                    f"no leaderboard in {p} (expected files named "
                    f"<mode>_leaderboard.csv, e.g. simulate_leaderboard.csv)"
                )
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise ResultsError(f"{p} does not exist (give a leaderboard CSV or a folder of them)")
    return list(dict.fromkeys(found))


def load_rows(files: list[Path], skipped: list[str] | None = None) -> pd.DataFrame:
    """Checked rows of every file, with a ``source``. A row with a non-number in a numeric
    column or no value in a required one is left out, with a line in ``skipped`` naming it;
    without ``skipped`` it is refused (``ResultsError``) instead."""
    frames = []
    notes: list[str] = []
    for f in files:
        df = read_leaderboard(f, skipped=notes)
        bad_rows = np.zeros(len(df), bool)
        for col in NUMERIC:
            raw = df[col]
            num = pd.to_numeric(raw, errors="coerce")
            bad = (num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")).to_numpy()
            for k in np.flatnonzero(bad & ~bad_rows):
                notes.append(f"{f} line {k + 2}: {col} {raw.iloc[k]!r} is not a number")
            bad_rows |= bad
            df[col] = num.astype(float)
        for col in dict.fromkeys([*REQUIRED, "prompts_per_step", "steps"]):
            empty = df[col].isna().to_numpy()
            for k in np.flatnonzero(empty & ~bad_rows):
                notes.append(f"{f} line {k + 2}: no {col}")
            bad_rows |= empty
        if skipped is None and notes:
            raise ResultsError(f"{notes[0]} (move the row aside or fix it)")
        df = df[~bad_rows]
        df["source"] = str(f)
        frames.append(df)
    if skipped is not None:
        skipped.extend(notes)
    if not frames:
        return pd.DataFrame(columns=[*LEADERBOARD_COLUMNS, "source"])
    out = pd.concat(frames, ignore_index=True)
    for col in ("seed", "budget", "prompts_per_step", "steps"):
        out[col] = out[col].astype("int64")
    out["model"] = out["model"].fillna("")
    return out


def dedupe(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep the last row of each ``config_hash``; returns (rows, number dropped)."""
    kept = rows.drop_duplicates("config_hash", keep="last")
    return kept.reset_index(drop=True), len(rows) - len(kept)


def filter_rows(
    rows: pd.DataFrame,
    modes: list[str] | None = None,
    scenarios: list[str] | None = None,
    methods: list[str] | None = None,
) -> pd.DataFrame:
    """Rows of the given modes, scenarios (or models) and methods (a spec label or a registry
    name, which keeps all of that method's variants); ``None`` keeps everything."""
    keep = np.ones(len(rows), bool)
    if modes:
        keep &= rows["mode"].isin(modes).to_numpy()
    if scenarios:
        keep &= (rows["scenario"].isin(scenarios) | rows["model"].isin(scenarios)).to_numpy()
    if methods:
        keep &= (rows["method"].isin(methods) | rows["method_name"].isin(methods)).to_numpy()
    return rows[keep].reset_index(drop=True)


def fmt_setting(v) -> str:
    if isinstance(v, float) and np.isnan(v):
        return "none"
    return f"{v:g}" if isinstance(v, float) else str(v)


def label_arms(rows: pd.DataFrame) -> pd.DataFrame:
    """Add the ``arm`` column: method spec, plus the settings that vary inside the group.

    Frozen-policy runs (the leaderboard's ``frozen`` column: ``bench simulate --frozen``, or
    learning rate 0) are never pooled with learning runs: where both kinds share a group, the
    frozen arms are labelled ``frozen``. Rows of a leaderboard from before the column count as
    learning runs. A reference arm (the oracle) ends in ``(reference)``."""
    rows = rows.copy()
    rows["frozen"] = rows["frozen"].astype(str).str.lower().eq("true")
    rows["arm"] = rows["method"].astype(str)
    for _, idx in rows.groupby(GROUP, sort=False).groups.items():
        part = rows.loc[idx]
        varying = [s for s in ARM_SETTINGS if part[s].nunique(dropna=False) > 1]
        mixed = part["frozen"].nunique() > 1
        if varying or mixed:
            rows.loc[idx, "arm"] = part.apply(
                lambda r: (
                    f"{r['method']} ("
                    + ", ".join(
                        [f"{s}={fmt_setting(r[s])}" for s in varying]
                        + (["frozen"] if mixed and r["frozen"] else [])
                    )
                    + ")"
                ),
                axis=1,
            ).str.replace(" ()", "", regex=False)
    ref = rows["method_name"].astype(str).map(is_reference).astype(bool)
    rows.loc[ref, "arm"] += " (reference)"  # the oracle: a yardstick, never a method to deploy
    return rows


# ---------------------------------------------------------------------------------------------
# Estimates
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% (``trim_mean`` cutting 25% each side)."""
    return float(stats.trim_mean(np.asarray(values, float), 0.25))


def _iqm_axis(x, axis=-1):
    return stats.trim_mean(x, 0.25, axis=axis)


def _mean_axis(x, axis=-1):
    return np.mean(x, axis=axis)


def _bootstrap(
    data: tuple, statistic, point: float, resamples: int, confidence: float, seed: int
) -> Interval:
    if min(len(d) for d in data) < 2:
        return Interval(point, float("nan"), float("nan"))
    if all(np.ptp(d) == 0 for d in data):  # no spread: every resample gives the point
        return Interval(point, point, point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            data,
            statistic,
            n_resamples=resamples,
            vectorized=True,
            paired=False,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    ci = res.confidence_interval
    return Interval(point, float(ci.low), float(ci.high))


def mean_ci(
    values, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """Mean over seeds with its percentile bootstrap interval (NaN bounds below 2 seeds)."""
    x = np.asarray(values, float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    return _bootstrap((x,), _mean_axis, float(x.mean()), resamples, confidence, seed)


def iqm_ci(
    values, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """IQM with its bootstrap interval; all NaN below ``MIN_SEEDS_IQM`` seeds."""
    x = np.asarray(values, float)
    x = x[~np.isnan(x)]
    if x.size < MIN_SEEDS_IQM:
        return Interval(float("nan"), float("nan"), float("nan"))
    return _bootstrap((x,), _iqm_axis, iqm(x), resamples, confidence, seed)


def stratified_ci(
    strata: list, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """Mean over strata (scenarios) of the per-stratum mean; seeds resampled within strata."""
    data = tuple(np.asarray(s, float)[~np.isnan(np.asarray(s, float))] for s in strata)
    data = tuple(d for d in data if d.size)
    if not data:
        return Interval(float("nan"), float("nan"), float("nan"))

    def stat(*xs, axis=-1):
        return np.mean([np.mean(x, axis=axis) for x in xs], axis=0)

    point = float(np.mean([d.mean() for d in data]))
    return _bootstrap(data, stat, point, resamples, confidence, seed)


def _poi_axis(x, y, axis=-1):
    return stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic / (
        x.shape[axis] * y.shape[axis]
    )


def probability_of_improvement(
    x, y, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """P(a run of X beats a run of Y) = U/(m·n), ties counting 1/2, with a bootstrap interval
    resampling X's and Y's seeds independently (rliable's ``probability_of_improvement``)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if x.size == 0 or y.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    point = float(_poi_axis(x, y))
    return _bootstrap((x, y), _poi_axis, point, resamples, confidence, seed)


def ratio_of_means(
    num, den, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """mean(num) / mean(den) with a bootstrap interval (the two samples resampled independently)."""
    a = np.asarray(num, float)
    b = np.asarray(den, float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size == 0 or b.size == 0 or b.mean() == 0:
        return Interval(float("nan"), float("nan"), float("nan"))

    def stat(p, q, axis=-1):
        return np.mean(p, axis=axis) / np.mean(q, axis=axis)

    return _bootstrap((a, b), stat, float(a.mean() / b.mean()), resamples, confidence, seed)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _arm_info(part: pd.DataFrame) -> dict:
    first = part.iloc[0]
    return {
        "method": first["method"],
        "method_name": first.get("method_name", ""),
        "budget": int(first["budget"]),
        "prompts_per_step": int(first["prompts_per_step"]),
        "steps": int(first["steps"]),
        "seeds": int(part["seed"].nunique()),
    }


def rank(
    rows: pd.DataFrame,
    metric: str,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (group, arm), ranked inside each group by the mean of ``metric`` (best first):
    mean with its bootstrap interval, IQM with its interval (enough seeds only)."""
    higher = METRICS.get(metric, (metric, True))[1]
    out = []
    for key, g in rows.groupby(GROUP, sort=False):
        recs = []
        for arm, part in g.groupby("arm", sort=False):
            v = part[metric].to_numpy(float)
            m = mean_ci(v, resamples, confidence, seed)
            q = iqm_ci(v, resamples, confidence, seed)
            recs.append(
                {
                    **dict(zip(GROUP, key)),
                    "arm": arm,
                    **_arm_info(part),
                    "mean": m.point,
                    "ci_low": m.low,
                    "ci_high": m.high,
                    "iqm": q.point,
                    "iqm_low": q.low,
                    "iqm_high": q.high,
                }
            )
        recs.sort(  # arms without a value (rows from before the column) last
            key=lambda r: (
                bool(np.isnan(r["mean"])),
                -r["mean"] if higher else r["mean"],
                r["arm"],
            )
        )
        for k, r in enumerate(recs, 1):
            r["rank"] = k
        out.extend(recs)
    cols = [
        *GROUP,
        "rank",
        "arm",
        "method",
        "method_name",
        "budget",
        "prompts_per_step",
        "steps",
        "seeds",
        "mean",
        "ci_low",
        "ci_high",
        "iqm",
        "iqm_low",
        "iqm_high",
    ]
    return pd.DataFrame(out, columns=cols)


def improvement_matrix(
    rows: pd.DataFrame,
    metric: str,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> pd.DataFrame:
    """P(arm X beats arm Y) on ``metric`` for every ordered pair of arms inside each group."""
    higher = METRICS.get(metric, (metric, True))[1]
    out = []
    for key, g in rows.groupby(GROUP, sort=False):
        arms = {
            a: p[metric].to_numpy(float) * (1 if higher else -1)
            for a, p in g.groupby("arm", sort=False)
        }
        for a, xa in arms.items():
            for b, xb in arms.items():
                if a == b:
                    continue
                p = probability_of_improvement(xa, xb, resamples, confidence, seed)
                out.append(
                    {
                        **dict(zip(GROUP, key)),
                        "x": a,
                        "y": b,
                        "p": p.point,
                        "low": p.low,
                        "high": p.high,
                    }
                )
    return pd.DataFrame(out, columns=[*GROUP, "x", "y", "p", "low", "high"])


def tokens_to_target(curves: pd.DataFrame, targets: dict[str, float]) -> dict[str, float]:
    """Per run id: cumulative tokens when test accuracy first reached the run's target
    (linear interpolation between evaluations, as ``rollouts_to_target``); NaN if never."""
    out = {}
    for rid, c in curves.groupby("run_id", sort=False):
        c = c.sort_values("step")
        out[rid] = first_crossing(
            c["tokens"].to_numpy(float), c["test_accuracy"].to_numpy(float), targets[rid]
        )
    return out


def paired_difference(
    x, y, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """Mean of x − y over paired samples (the same seed: the same prompts) with a paired bootstrap
    interval (seeds resampled together)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))

    def stat(a, b, axis=-1):
        return np.mean(a - b, axis=axis)

    point = float(np.mean(x - y))
    if x.size < 2:
        return Interval(point, float("nan"), float("nan"))
    if np.ptp(x - y) == 0:
        return Interval(point, point, point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            (x, y),
            stat,
            n_resamples=resamples,
            vectorized=True,
            paired=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return Interval(point, float(res.confidence_interval.low), float(res.confidence_interval.high))


def baseline_arm(group: pd.DataFrame, budget: int, baseline: str, version: str = "") -> str:
    """The group's arm running the ``baseline`` spec at ``budget``, else at its largest budget,
    from the same code version when the group has one (a re-run study compares within its
    version); '' if the group has no such arm."""
    base = group[group["method"] == baseline]
    if base.empty:
        return ""
    if version and (base["code_version"] == version).any():
        base = base[base["code_version"] == version]
    same = base[base["budget"] == budget]
    pick = same if len(same) else base[base["budget"] == base["budget"].max()]
    return str(pick["arm"].iloc[-1])


def versus_baseline(
    rows: pd.DataFrame,
    metric: str,
    baseline: str = "uniform",
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    every_budget: bool = False,
) -> pd.DataFrame:
    """Per (group, arm): the arm's ``metric`` minus its baseline arm's, paired by seed over the
    seeds both ran (the same seed gives both the same prompts), with a paired bootstrap interval;
    the unpaired probability of improvement over the baseline; and the baseline's mean rollouts
    to target over the arm's (``compute_ratio``). The baseline arm is ``baseline_arm``'s; with
    ``every_budget`` one row per baseline arm of every budget instead (the half-budget question:
    method at B against the baseline at 2B)."""
    out = []
    for key, g in rows.groupby(GROUP, sort=False):
        base_arms = list(dict.fromkeys(g.loc[g["method"] == baseline, "arm"]))
        for arm, part in g.groupby("arm", sort=False):
            bases = (
                base_arms
                if every_budget
                else [
                    baseline_arm(
                        g, int(part["budget"].iloc[0]), baseline, str(part["code_version"].iloc[0])
                    )
                ]
            )
            for base in bases:
                if every_budget and base == arm:
                    continue
                rec = {
                    **dict(zip(GROUP, key)),
                    "arm": arm,
                    "baseline": base,
                    "paired_seeds": 0,
                    "diff": np.nan,
                    "diff_low": np.nan,
                    "diff_high": np.nan,
                    "poi": np.nan,
                    "poi_low": np.nan,
                    "poi_high": np.nan,
                    "compute_ratio": np.nan,
                    "compute_ratio_low": np.nan,
                    "compute_ratio_high": np.nan,
                }
                if base and base != arm:
                    b = g[g["arm"] == base]
                    m = part.merge(b, on="seed", suffixes=("", "_base"))
                    d = paired_difference(
                        m[metric], m[f"{metric}_base"], resamples, confidence, seed
                    )
                    p = probability_of_improvement(
                        part[metric], b[metric], resamples, confidence, seed
                    )
                    r = ratio_of_means(
                        b["rollouts_to_target"],
                        part["rollouts_to_target"],
                        resamples,
                        confidence,
                        seed,
                    )
                    rec.update(
                        paired_seeds=len(m),
                        diff=d.point,
                        diff_low=d.low,
                        diff_high=d.high,
                        poi=p.point,
                        poi_low=p.low,
                        poi_high=p.high,
                        compute_ratio=r.point,
                        compute_ratio_low=r.low,
                        compute_ratio_high=r.high,
                    )
                out.append(rec)
    return pd.DataFrame(out, columns=VERSUS_COLUMNS)


VERSUS_COLUMNS = [
    *GROUP,
    "arm",
    "baseline",
    "paired_seeds",
    *(f"{m}{s}" for m in ("diff", "poi", "compute_ratio") for s in ("", "_low", "_high")),
]


def cost(
    rows: pd.DataFrame,
    baseline: str = "uniform",
    curves: pd.DataFrame | None = None,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (group, arm): rollouts (and tokens, from the run folders' curves) to reach the target
    over the seeds that reached it, how many did, the baseline's rollouts to target divided by
    the arm's ("× less compute", > 1 means the arm needs less), generated rollouts and tokens,
    and the effective-gradient ratio, each with its bootstrap interval.

    The baseline arm is the group's arm running the ``baseline`` method spec at the same budget,
    or else at the largest budget; a group without it has no compute ratio."""
    tok = {}
    if curves is not None and len(curves):
        targets = dict(zip(rows["run_id"], rows["target_accuracy"]))
        have = curves[curves["run_id"].isin(targets)]
        tok = tokens_to_target(have, targets)
    out = []
    for key, g in rows.groupby(GROUP, sort=False):
        for arm, part in g.groupby("arm", sort=False):
            info = _arm_info(part)
            rt = part["rollouts_to_target"].to_numpy(float)
            r2t = mean_ci(rt, resamples, confidence, seed)
            tt = np.array([tok.get(r, np.nan) for r in part["run_id"]], float)
            n_tok = int(sum(r in tok for r in part["run_id"]))
            t2t = mean_ci(tt, resamples, confidence, seed)
            ratio = Interval(float("nan"), float("nan"), float("nan"))
            base_label = baseline_arm(
                g, info["budget"], baseline, str(part["code_version"].iloc[0])
            )
            if base_label:
                pick = g[g["arm"] == base_label]
                ratio = ratio_of_means(pick["rollouts_to_target"], rt, resamples, confidence, seed)
            eg = mean_ci(part["mean_effective_grad_ratio"], resamples, confidence, seed)
            out.append(
                {
                    **dict(zip(GROUP, key)),
                    "arm": arm,
                    **info,
                    "target_accuracy": float(part["target_accuracy"].iloc[0]),
                    "reached": int(np.isfinite(rt).sum()),
                    "rollouts_to_target": r2t.point,
                    "rollouts_to_target_low": r2t.low,
                    "rollouts_to_target_high": r2t.high,
                    "tokens_runs": n_tok,
                    "tokens_reached": int(np.isfinite(tt).sum()),
                    "tokens_to_target": t2t.point,
                    "tokens_to_target_low": t2t.low,
                    "tokens_to_target_high": t2t.high,
                    "baseline": base_label,
                    "compute_ratio": ratio.point,
                    "compute_ratio_low": ratio.low,
                    "compute_ratio_high": ratio.high,
                    "rollouts": float(part["rollouts"].mean()),
                    "tokens": float(part["tokens"].mean()),
                    "effective_grad_ratio": eg.point,
                    "effective_grad_ratio_low": eg.low,
                    "effective_grad_ratio_high": eg.high,
                    "solver_seconds_per_step": float(part["solver_seconds_per_step"].mean()),
                }
            )
    return pd.DataFrame(out)


def across_scenarios(
    rows: pd.DataFrame,
    metric: str,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> pd.DataFrame:
    """Per mode and arm reported in two or more scenarios: the mean over scenarios of the
    per-scenario mean, with a stratified bootstrap interval (seeds resampled within scenario).
    Arms are matched by label across scenarios; an arm only counts where it appears."""
    out = []
    for mode, g in rows.groupby("mode", sort=False):
        for arm, part in g.groupby("arm", sort=False):
            strata = [p[metric].to_numpy(float) for _, p in part.groupby(["scenario", "model"])]
            if len(strata) < 2:
                continue
            ci = stratified_ci(strata, resamples, confidence, seed)
            out.append(
                {
                    "mode": mode,
                    "arm": arm,
                    "scenarios": len(strata),
                    "runs": int(sum(len(s) for s in strata)),
                    "mean": ci.point,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                }
            )
    return pd.DataFrame(
        out, columns=["mode", "arm", "scenarios", "runs", "mean", "ci_low", "ci_high"]
    )


# ---------------------------------------------------------------------------------------------
# Run folders: curves and allocation histograms
# ---------------------------------------------------------------------------------------------


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(io.StringIO(path.read_text()))
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if not set(columns) <= set(df.columns):
        return None
    return df[columns]


def load_run_tables(
    rows: pd.DataFrame, runs_dir: str | Path, name: str, columns: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """``runs_dir/<run_id>/<name>.csv`` of every row, concatenated with ``run_id``; and the run
    ids whose file is missing or unreadable."""
    runs = Path(runs_dir)
    frames, missing = [], []
    for rid in rows["run_id"]:
        df = _read_table(runs / str(rid) / f"{name}.csv", columns)
        if df is None:
            missing.append(str(rid))
            continue
        frames.append(df.assign(run_id=str(rid)))
    if not frames:
        return pd.DataFrame(columns=[*columns, "run_id"]), missing
    return pd.concat(frames, ignore_index=True), missing


def curve_bands(
    curves: pd.DataFrame,
    rows: pd.DataFrame,
    x: str,
    points: int = 60,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean test accuracy against ``x`` (``rollouts`` or ``tokens``) per (group, arm) with a
    pointwise bootstrap band over seeds. Each seed's curve is interpolated linearly onto a common
    grid from 0 to the smallest final ``x`` among the arm's seeds."""
    meta = rows.set_index("run_id")[[*GROUP, "arm"]]
    c = curves.join(meta, on="run_id", how="inner")
    out = []
    for (*key, arm), g in c.groupby([*GROUP, "arm"], sort=False):
        runs = [r.sort_values("step") for _, r in g.groupby("run_id", sort=False)]
        end = min(float(r[x].iloc[-1]) for r in runs)
        if end <= 0:
            continue
        grid = np.linspace(0.0, end, points)
        m = np.vstack(
            [
                np.interp(grid, r[x].to_numpy(float), r["test_accuracy"].to_numpy(float))
                for r in runs
            ]
        )
        mean = m.mean(axis=0)
        low = high = np.full(points, np.nan)
        if m.shape[0] >= 2:
            spread = np.ptp(m, axis=0) > 0
            low, high = mean.copy(), mean.copy()
            if spread.any():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = stats.bootstrap(
                        (m[:, spread],),
                        _mean_axis,
                        axis=0,
                        n_resamples=resamples,
                        vectorized=True,
                        confidence_level=confidence,
                        method="percentile",
                        rng=np.random.default_rng(seed),
                    )
                low[spread] = res.confidence_interval.low
                high[spread] = res.confidence_interval.high
        out.append(
            pd.DataFrame(
                {
                    **dict(zip(GROUP, key)),
                    "arm": arm,
                    "x": grid,
                    "mean": mean,
                    "low": low,
                    "high": high,
                    "seeds": m.shape[0],
                }
            )
        )
    if not out:
        return pd.DataFrame(columns=[*GROUP, "arm", "x", "mean", "low", "high", "seeds"])
    return pd.concat(out, ignore_index=True)


def allocation_summary(alloc: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Per (group, arm, pass-rate bin): prompt visits and rollouts summed over steps and seeds,
    rollouts per prompt visit, and the bin's share of the arm's rollouts. In the simulator the
    bins are deciles of the prompts' true pass rate when they were sampled."""
    meta = rows.set_index("run_id")[[*GROUP, "arm"]]
    a = alloc.join(meta, on="run_id", how="inner")
    if a.empty:
        return pd.DataFrame(
            columns=[
                *GROUP,
                "arm",
                "p_low",
                "p_high",
                "prompts",
                "rollouts",
                "rollouts_per_prompt",
                "share",
                "seeds",
            ]
        )
    s = (
        a.groupby([*GROUP, "arm", "p_low", "p_high"], sort=False)
        .agg(prompts=("prompts", "sum"), rollouts=("rollouts", "sum"), seeds=("run_id", "nunique"))
        .reset_index()
    )
    s["rollouts_per_prompt"] = np.where(
        s["prompts"] > 0, s["rollouts"] / s["prompts"].where(s["prompts"] > 0, 1), np.nan
    )
    total = s.groupby([*GROUP, "arm"], sort=False)["rollouts"].transform("sum")
    s["share"] = s["rollouts"] / total.where(total > 0, 1)
    return s


# ---------------------------------------------------------------------------------------------
# Frozen policy: every arm against the oracle (docs/results.md#oracle-ratios)
# ---------------------------------------------------------------------------------------------
ORACLE = "oracle"
# leaderboard column -> the ratio's name in ``oracle_ratios``
ORACLE_METRICS = {
    "mean_effective_grad_ratio": "effective_grad_ratio",
    "mean_expected_informative_groups": "expected_informative_groups",
    "mean_pg_variance": "pg_variance",
}


def paired_ratio_of_means(
    x, y, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """mean(x) / mean(y) over paired samples (the same seed), with a paired bootstrap interval
    (seeds resampled together); pairs with a NaN are left out."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size == 0 or y.mean() == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    point = float(x.mean() / y.mean())
    if x.size < 2:
        return Interval(point, float("nan"), float("nan"))
    if np.ptp(x / np.where(y == 0, np.nan, y)) == 0:  # the same ratio on every seed
        return Interval(point, point, point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            (x, y),
            lambda a, b, axis=-1: np.mean(a, axis=axis) / np.mean(b, axis=axis),
            n_resamples=resamples,
            vectorized=True,
            paired=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    ci = res.confidence_interval
    return Interval(point, float(ci.low), float(ci.high))


def oracle_ratios(
    rows: pd.DataFrame,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> pd.DataFrame:
    """Frozen-policy runs scored against the oracle: in every (mode, scenario, model) group with
    frozen rows of an ``oracle`` arm, each other frozen arm's mean effective-gradient ratio,
    expected informative groups and exact gradient variance over the oracle's, paired by seed
    (an arm meets the oracle arm of its budget, prompts per step and steps). ``rows`` has
    ``arm`` (``label_arms``). Empty without such groups."""
    metrics = [f"{m}{s}" for m in ORACLE_METRICS.values() for s in ("", "_low", "_high")]
    columns = [*GROUP, "arm", "oracle", "paired_seeds", *metrics]
    if rows.empty or "frozen" not in rows:
        return pd.DataFrame(columns=columns)
    frozen = rows[rows["frozen"].astype(str).str.lower().eq("true")].copy()
    for col in ORACLE_METRICS:  # a leaderboard from before a column: NaN ratios
        frozen[col] = pd.to_numeric(frozen[col], errors="coerce") if col in frozen else np.nan
    name = frozen["method_name"].where(frozen["method_name"].notna(), frozen["method"])
    frozen["_oracle"] = name.astype(str).eq(ORACLE)
    out = []
    for key, g in frozen.groupby(GROUP, sort=False):
        refs = g[g["_oracle"]]
        if refs.empty:
            continue
        for arm, part in g[~g["_oracle"]].groupby("arm", sort=False):
            first = part.iloc[0]
            settings = [s for s in ARM_SETTINGS if s in g]
            same = refs[
                np.logical_and.reduce(
                    [np.ones(len(refs), bool)]
                    + [
                        (refs[s].isna() if pd.isna(first[s]) else refs[s] == first[s]).to_numpy()
                        for s in settings
                    ]
                )
            ]
            if same.empty:
                continue
            # the default oracle spec if there are several
            ref_arm = sorted(same["arm"].unique(), key=lambda a: (a.split(" (")[0] != ORACLE, a))[0]
            ref = same[same["arm"] == ref_arm].drop_duplicates("seed", keep="last")
            paired = part.drop_duplicates("seed", keep="last").merge(
                ref, on="seed", suffixes=("", "_ref")
            )
            line: dict = {
                **dict(zip(GROUP, key)),
                "arm": arm,
                "oracle": ref_arm,
                "paired_seeds": len(paired),
            }
            for col, short in ORACLE_METRICS.items():
                ci = paired_ratio_of_means(
                    paired[col], paired[f"{col}_ref"], resamples, confidence, seed
                )
                line.update({short: ci.point, f"{short}_low": ci.low, f"{short}_high": ci.high})
            out.append(line)
    return pd.DataFrame(out, columns=columns)
