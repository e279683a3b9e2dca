"""`bench report`: rank methods from the leaderboards, with confidence intervals and plots.

Reads run leaderboards (``results/*_leaderboard.csv`` by default), and where the run folders are
present (``runs/<run-id>/``, not committed) their evaluation curves and allocation histograms.
Prints one ranked table per (mode, scenario, model), writes ``report.md``, PNG plots and the
tables as CSV into the output folder. Statistics: ``bench/report.py``; plots: ``bench/plots.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench import report as R
from bench.errors import usage_error
from bench.options import rank_by_option
from bench.results import (
    ResultsError,
    check_writable,
    clean_stale,
    make_folder,
    read_leaderboard,
    temp_prefix,
)

MODES = ("simulate", "train")
EVAL_COLUMNS = ["step", "rollouts", "tokens", "test_accuracy"]
ALLOC_COLUMNS = ["step", "p_low", "p_high", "prompts", "rollouts"]


def _split(text: str | None) -> list[str] | None:
    if not text:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def fmt_ci(
    point: float, low: float, high: float, digits: int = 3, signed: bool = False, sep: str = " "
) -> str:
    if point is None or not np.isfinite(point):
        return "-"
    f = f"+.{digits}f" if signed else f".{digits}f"
    if not np.isfinite(low):
        return f"{point:{f}}"
    return f"{point:{f}}{sep}[{low:{f}}, {high:{f}}]"


def fmt_count(x: float, unit: str = "k") -> str:
    if x is None or not np.isfinite(x):
        return "-"
    div = {"k": 1e3, "M": 1e6}[unit]
    if abs(x) < div:
        return f"{x:,.0f}"
    return f"{x / div:,.0f}{unit}" if x / div >= 100 else f"{x / div:,.1f}{unit}"


def fmt_count_ci(point, low, high, unit: str = "k") -> str:
    if point is None or not np.isfinite(point):
        return "-"
    if not np.isfinite(low):
        return fmt_count(point, unit)
    return f"{fmt_count(point, unit)} [{fmt_count(low, unit)}, {fmt_count(high, unit)}]"


def group_title(key) -> str:
    mode, scenario, model = key
    return f"{mode} · {scenario}" + (f" · {model}" if model and model != "simulator" else "")


# ---------------------------------------------------------------------------------------------
# Solver scaling (results/solvers_leaderboard.csv, written by `bench solvers`)
# ---------------------------------------------------------------------------------------------


def solver_chart(path: Path, out_dir: Path) -> tuple[Path | None, str]:
    """Draw the solver scaling chart from `bench solvers`' CSV (its columns: ``SOLVER_COLUMNS``
    of ``bench/solvers_cmd.py``); returns (png or None, a note for the report). The CSV is an
    extra: when it is absent or unusable the chart is skipped with a note, the report goes on."""
    from bench import plots
    from bench.solvers_cmd import SOLVER_COLUMNS

    if not path.exists():
        return None, f"solver scaling chart skipped: {path} does not exist (run `bench solvers`)"
    try:
        df = read_leaderboard(path, SOLVER_COLUMNS)
    except ResultsError as exc:
        return None, f"solver scaling chart skipped: {exc}"
    df = df.assign(
        median_seconds=pd.to_numeric(df["median_seconds"], errors="coerce"),
        prompts=pd.to_numeric(df["prompts"], errors="coerce"),
        per_prompt=pd.to_numeric(df["per_prompt"], errors="coerce"),
    )
    df = df[df["median_seconds"].notna() & (df["median_seconds"] > 0) & (df["prompts"] > 0)]
    if df.empty:
        return None, f"solver scaling chart skipped: {path} has no timed rows"
    # one slice: the official 8 rollouts per prompt (B = 2,048 at 256 prompts) if measured, and
    # uniformly drawn rates if measured; the latest measurement of each point
    per = 8 if (df["per_prompt"] == 8).any() else int(df["per_prompt"].mode().iloc[0])
    df = df[df["per_prompt"] == per]
    rates = "uniform" if (df["rates"] == "uniform").any() else str(df["rates"].iloc[0])
    df = df[df["rates"] == rates]
    df = df.drop_duplicates(["value_function", "solver", "prompts", "cap"], keep="last")
    png = plots.solver_scaling(
        df,
        f"Allocation solvers: median time per solve, {per} rollouts per prompt, {rates} rates",
        out_dir / "solver_scaling.png",
    )
    return png, (
        f"solver scaling from {path}: {len(df)} timings at {per} rollouts per prompt, "
        f"{rates} rates (all sizes and the speed-ups are in the CSV)"
    )


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--results",
    "results_paths",
    multiple=True,
    type=click.Path(),
    default=["results"],
    show_default=True,
    help="A leaderboard CSV, or a folder: its <mode>_leaderboard.csv files, subfolders "
    "included (repeatable).",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default="runs",
    show_default=True,
    help="Folder of the run folders (curves and allocation histograms for the plots).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="results/report",
    show_default=True,
    help="Folder for report.md, the PNG plots and CSV tables.",
)
@click.option(
    "--mode",
    "modes",
    default=None,
    help=f"Comma-separated modes to keep ({', '.join(MODES)}) [default: all].",
)
@click.option(
    "--scenario",
    "scenarios",
    default=None,
    help="Comma-separated scenarios (or trained models) to keep [default: all].",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated method specs or registry names to keep [default: all].",
)
@click.option(
    "--baseline",
    default="uniform",
    show_default=True,
    help="Method spec the others are compared with (probability of improvement, compute ratio).",
)
@click.option(
    "--solvers",
    "solvers_path",
    type=click.Path(dir_okay=False),
    default="results/solvers_leaderboard.csv",
    show_default=True,
    help="Solver benchmark CSV for the scaling chart (skipped with a note if absent).",
)
@click.option(
    "--resamples",
    type=click.IntRange(100, 1_000_000),
    default=R.RESAMPLES,
    show_default=True,
    help="Bootstrap resamples per interval.",
)
@click.option(
    "--confidence",
    type=click.FloatRange(0.5, 0.999),
    default=R.CONFIDENCE,
    show_default=True,
    help="Confidence level of the intervals.",
)
@rank_by_option
@click.option("--no-plots", is_flag=True, help="Write the Markdown report and tables only.")
def report(
    results_paths,
    runs_dir,
    out_dir,
    modes,
    scenarios,
    methods,
    baseline,
    solvers_path,
    resamples,
    confidence,
    rank_by,
    no_plots,
):
    """Rank methods per mode and scenario: mean and bootstrap CI over seeds, IQM, probability of
    improvement, cost to reach the target accuracy; Markdown report and PNG plots in OUT.
    """
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    mode_list = _split(modes)
    if mode_list:
        bad = [m for m in mode_list if m not in MODES]
        if bad:
            raise usage_error(f"unknown --mode {bad[0]!r} (modes: {', '.join(MODES)})")
    try:
        files = R.find_leaderboards(list(results_paths))
        skipped: list[str] = []
        rows = R.load_rows(files, skipped)
    except ResultsError as exc:
        raise usage_error(str(exc)) from None
    if rows.empty:
        raise usage_error(f"no runs in {', '.join(map(str, files))}")
    rows, dropped = R.dedupe(rows)
    scen_list, meth_list = _split(scenarios), _split(methods)
    for values, cols, opt in (
        (scen_list, ["scenario", "model"], "--scenario"),
        (meth_list, ["method", "method_name"], "--methods"),
    ):
        if not values:
            continue
        known = set().union(*(set(rows[c].dropna().astype(str)) for c in cols))
        unknown = [v for v in values if v not in known]
        if unknown:
            shown = sorted(set(rows[cols[0]].astype(str)))
            raise usage_error(
                f"{opt} {unknown[0]!r} matches no run (in the leaderboards: {', '.join(shown)})"
            )
    rows = R.filter_rows(rows, mode_list, scen_list, meth_list)
    if rows.empty:
        raise usage_error("no run matches the filters (--mode/--scenario/--methods)")
    try:
        out = check_writable(out_dir, "report folder")
        make_folder(out)
    except ResultsError as exc:
        raise usage_error(str(exc)) from None
    # Everything is written into a hidden folder and moved into OUT once complete, report.md
    # last: a report that fails half-way leaves the previous one whole.
    clean_stale(out, "report")
    stage = Path(tempfile.mkdtemp(dir=out, prefix=temp_prefix("report")))
    try:
        _write_report(
            console,
            rows,
            files,
            skipped,
            dropped,
            stage,
            runs_dir,
            baseline,
            solvers_path,
            resamples,
            confidence,
            no_plots,
            rank_by,
        )
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    console.print(f"report: {out / 'report.md'} ({len(rows)} runs)")


def _publish(stage: Path, out: Path) -> None:
    """Move every file of ``stage`` to the same place under ``out``, ``report.md`` last."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "report.md")
    for f in files:
        target = out / f.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)


def _write_report(
    console,
    rows,
    files,
    skipped,
    dropped,
    out,
    runs_dir,
    baseline,
    solvers_path,
    resamples,
    confidence,
    no_plots,
    rank_by="tokens",
) -> None:
    t0 = time.perf_counter()
    rows = R.label_arms(rows)
    kw = dict(resamples=resamples, confidence=confidence)
    ranks = {m: R.rank(rows, m, **kw) for m in R.METRICS}
    poi = R.improvement_matrix(rows, "final_test_accuracy", **kw)
    vs = {m: R.versus_baseline(rows, m, baseline, **kw) for m in R.METRICS}
    cross = R.versus_baseline(rows, "final_test_accuracy", baseline, every_budget=True, **kw)
    curves, missing_curves = R.load_run_tables(rows, runs_dir, "evals", EVAL_COLUMNS)
    alloc, missing_alloc = R.load_run_tables(rows, runs_dir, "allocation", ALLOC_COLUMNS)
    costs = R.cost(rows, baseline, curves, **kw)
    across = R.across_scenarios(rows, "final_test_accuracy", **kw)
    oracle = R.oracle_ratios(rows, **kw)

    notes: list[str] = [f"row left out: {s}" for s in skipped]
    if not (rows["method"] == baseline).any():
        notes.append(
            f"no run of the baseline {baseline!r}: no comparisons with a baseline "
            f"(choose one with --baseline)"
        )
    if dropped:
        notes.append(f"{dropped} duplicate row(s) (same config hash) counted once")
    plots_written: dict[tuple, dict[str, Path]] = {}
    if no_plots:
        notes.append("plots not drawn (--no-plots)")
    else:
        plots_written, plot_notes = _draw(
            rows, curves, alloc, missing_curves, missing_alloc, out, runs_dir, **kw
        )
        notes.extend(plot_notes)
        png, note = solver_chart(Path(solvers_path), out)
        notes.append(note)
        if png is not None:
            plots_written[("solvers",)] = {"solver scaling": png}

    for key in ranks["final_test_accuracy"].groupby(R.GROUP, sort=False).groups:
        console.print(_terminal_table(key, ranks, vs, costs, baseline, confidence, rows, rank_by))
    for table in _oracle_tables(oracle, confidence):
        console.print(table)
    for n in notes:
        console.print(f"[dim]note:[/] {n}")

    for metric, table in ranks.items():
        table.to_csv(out / f"ranking_{metric}.csv", index=False)
    poi.to_csv(out / "probability_of_improvement.csv", index=False)
    costs.to_csv(out / "cost.csv", index=False)
    pd.concat([v.assign(metric=m) for m, v in vs.items()]).to_csv(
        out / "versus_baseline.csv", index=False
    )
    cross.to_csv(out / "versus_baseline_every_budget.csv", index=False)
    if len(oracle):
        oracle.to_csv(out / "oracle_ratios.csv", index=False)
    md = _markdown(
        rows,
        files,
        ranks,
        poi,
        vs,
        cross,
        costs,
        across,
        plots_written,
        notes,
        baseline,
        confidence,
        resamples,
        out,
        rank_by,
    )
    (out / "report.md").write_text(_with_oracle_section(md, oracle, confidence))
    console.print(f"report computed in {time.perf_counter() - t0:.1f} s")


def _draw(rows, curves, alloc, missing_curves, missing_alloc, out, runs_dir, resamples, confidence):
    from bench import plots

    notes = []
    written: dict[tuple, dict[str, Path]] = {}
    if missing_curves:
        notes.append(
            f"{len(missing_curves)} of {len(rows)} run folders have no evals.csv under "
            f"{runs_dir}/ (run folders are not committed): learning curves use the "
            f"others"
            if len(curves)
            else f"no run folder under {runs_dir}/ has evals.csv (run folders are not "
            f"committed): learning-curve plots and tokens-to-target skipped"
        )
    if missing_alloc and len(alloc):
        notes.append(
            f"{len(missing_alloc)} of {len(rows)} run folders have no allocation.csv: "
            f"allocation histograms use the others"
        )
    elif missing_alloc:
        notes.append(
            f"no run folder under {runs_dir}/ has allocation.csv: allocation histograms skipped"
        )
    for x in ("rollouts", "tokens"):
        if curves.empty:
            break
        bands = R.curve_bands(curves, rows, x, resamples=resamples, confidence=confidence)
        for key, b in bands.groupby(R.GROUP, sort=False):
            g = rows[(rows[R.GROUP] == pd.Series(key, index=R.GROUP)).all(axis=1)]
            target = float(g["target_accuracy"].iloc[0])
            png = plots.learning_curves(
                b,
                x,
                f"{group_title(key)}: test accuracy vs {x}",
                out / f"curves-{x}-{plots.slug(*key)}.png",
                target,
                confidence,
            )
            written.setdefault(key, {})[f"learning curves vs {x}"] = png
    if len(alloc):
        summary = R.allocation_summary(alloc, rows)
        for key, s in summary.groupby(R.GROUP, sort=False):
            png = plots.allocation_histogram(
                s,
                f"{group_title(key)}: rollouts by pass rate",
                out / f"allocation-{plots.slug(*key)}.png",
            )
            written.setdefault(key, {})["allocation histogram"] = png
    return written, notes


def _in_group(df: pd.DataFrame, key) -> pd.DataFrame:
    """The rows of ``df`` in the (mode, scenario, model) group ``key``."""
    return df[(df["mode"] == key[0]) & (df["scenario"] == key[1]) & (df["model"] == key[2])]


def _lookup(df: pd.DataFrame, key, arm) -> pd.Series | None:
    if df.empty:
        return None
    g = _in_group(df, key)
    m = g[g["arm"] == arm]
    return None if m.empty else m.iloc[0]


def _poi_vs(poi, key, arm, other):
    if poi.empty or not other or arm == other:
        return None
    g = _in_group(poi, key)
    m = g[(g["x"] == arm) & (g["y"] == other)]
    return None if m.empty else m.iloc[0]


def _terminal_table(key, ranks, vs, costs, baseline, confidence, rows, rank_by="tokens") -> Table:
    metric = R.group_rank_metric(_in_group(rows, key), rank_by)
    fin = ranks["final_test_accuracy"]
    g = _in_group(ranks[metric], key)
    bases = sorted({b for b in _in_group(vs["final_test_accuracy"], key)["baseline"] if b})
    target = None
    table = Table(
        show_lines=True,
        title=f"{group_title(key)}: ranked by {R.METRICS[metric][0]} "
        f"(mean [{confidence:.0%} bootstrap CI] over seeds)",
    )
    equal_steps = metric == "final_test_accuracy"
    for col in (
        "#",
        "arm",
        "seeds",
        *([] if equal_steps else [f"acc @ equal {rank_by}"]),
        "final acc (equal steps)",
        "Δ vs base (paired)",
        "P(> base)",
        "rollouts to target",
        "× less compute",
        "eff. grad",
    ):
        table.add_column(
            col,
            justify="left" if col == "arm" else "right",
            overflow="fold",
            no_wrap=col != "arm",
            min_width=min(20, max(map(len, g["arm"]))) if col == "arm" else None,
        )
    for r in g.itertuples(index=False):
        c = _lookup(costs, key, r.arm)
        f = _lookup(fin, key, r.arm)
        v = _lookup(vs[metric], key, r.arm)
        target = c["target_accuracy"] if c is not None else target
        to_target = "-"
        if c is not None:
            to_target = (
                f"{fmt_count(c['rollouts_to_target'])} ({c['reached']}/{r.seeds})"
                if c["reached"]
                else f"never (0/{r.seeds})"
            )
        has_base = v is not None and v["paired_seeds"] > 0
        table.add_row(
            str(r.rank),
            r.arm,
            str(r.seeds),
            *([] if equal_steps else [fmt_ci(r.mean, r.ci_low, r.ci_high, sep="\n")]),
            fmt_ci(f["mean"], f["ci_low"], f["ci_high"], sep="\n") if f is not None else "-",
            fmt_ci(v["diff"], v["diff_low"], v["diff_high"], 3, signed=True, sep="\n")
            if has_base
            else "-",
            fmt_ci(v["poi"], v["poi_low"], v["poi_high"], 2, sep="\n") if has_base else "-",
            to_target,
            fmt_ci(c["compute_ratio"], c["compute_ratio_low"], c["compute_ratio_high"], 2, sep="\n")
            if c is not None
            else "-",
            fmt(c["effective_grad_ratio"]) if c is not None else "-",
        )
    cap = f"base = {' / '.join(bases) if bases else '(no ' + baseline + ' arm)'}"
    if len(bases) > 1:
        cap += " (same budget, else the largest)"
    if target is not None:
        cap = f"target accuracy {target:g}; " + cap
    table.caption = cap
    return table


def _md_table(header: list[str], body: list[list[str]], left: int = 1) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if k < left else "---:" for k in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def _markdown(
    rows,
    files,
    ranks,
    poi,
    vs,
    cross,
    costs,
    across,
    plots_written,
    notes,
    baseline,
    confidence,
    resamples,
    out: Path,
    rank_by: str = "tokens",
) -> str:
    cl = f"{confidence:.0%}"
    md = ["# rollout-bench report", ""]
    md.append(
        f"{len(rows)} runs from {', '.join(f'`{f}`' for f in files)}; "
        f"{rows['arm'].nunique()} arms in {rows.groupby(R.GROUP).ngroups} group(s). "
        f"Intervals: {cl} percentile bootstrap over seeds ({resamples} resamples, "
        f"`scipy.stats.bootstrap`); IQM = interquartile mean (shown from "
        f"{R.MIN_SEEDS_IQM} seeds); P(X > Y) = probability that a run of X beats a run "
        f"of Y (Mann-Whitney U / mn). An arm is a method spec plus the run settings that "
        f"differ inside its group."
    )
    md.append("")
    fin = ranks["final_test_accuracy"]
    for key, g in fin.groupby(R.GROUP, sort=False):
        md += [f"## {group_title(key)}", ""]
        sub = _in_group(rows, key)
        settings = ", ".join(
            f"{s} {', '.join(sorted(map(R.fmt_setting, sub[s].unique())))}" for s in R.ARM_SETTINGS
        )
        md += [
            f"{len(sub)} runs; {settings}; target accuracy {sub['target_accuracy'].iloc[0]:g}.",
            "",
        ]
        eq = R.group_rank_metric(sub, rank_by)
        sections = []
        if eq != "final_test_accuracy":
            sections.append(
                (
                    eq,
                    f"Ranking by test accuracy at equal {rank_by} (ranks this group)",
                    [
                        f"Test accuracy once a run has spent what uniform GRPO spends in the "
                        f"run's steps, in {rank_by} (interpolated on its evaluation curve; a "
                        "run that spent less keeps its final accuracy). Columns `acc_<unit>_20`"
                        "/`_50`/`_100` of the leaderboard hold 20, 50 and 100% of it.",
                        "",
                    ],
                )
            )
        elif rank_by != "steps":
            md += [
                "These rows predate the equal-compute columns: ranked at equal steps.",
                "",
            ]
        for metric, title, extra in (
            *sections,
            (
                "final_test_accuracy",
                "Ranking by final test accuracy (equal steps)"
                + (" (ranks this group)" if eq == "final_test_accuracy" else ""),
                [],
            ),
            (
                "auc_test_accuracy",
                "Ranking by AUC of test accuracy against rollouts",
                [
                    "AUC = area under test accuracy against cumulative rollouts / rollout span "
                    "(mean accuracy over the run's compute).",
                    "",
                ],
            ),
        ):
            rk = ranks[metric]
            gk = _in_group(rk, key)
            body = []
            for r in gk.itertuples(index=False):
                v = _lookup(vs[metric], key, r.arm)
                has = v is not None and v["paired_seeds"] > 0
                body.append(
                    [
                        r.rank,
                        f"`{r.arm}`",
                        r.seeds,
                        fmt_ci(r.mean, r.ci_low, r.ci_high),
                        fmt_ci(r.iqm, r.iqm_low, r.iqm_high),
                        f"`{v['baseline']}`" if has else "-",
                        (
                            fmt_ci(v["diff"], v["diff_low"], v["diff_high"], 3, signed=True)
                            + f" ({v['paired_seeds']})"
                        )
                        if has
                        else "-",
                        fmt_ci(v["poi"], v["poi_low"], v["poi_high"], 2) if has else "-",
                    ]
                )
            md += [
                f"### {title}",
                "",
                *extra,
                _md_table(
                    [
                        "#",
                        "arm",
                        "seeds",
                        f"mean [{cl} CI]",
                        f"IQM [{cl} CI]",
                        "baseline",
                        f"Δ vs baseline, paired by seed [{cl} CI] (seeds)",
                        f"P(> baseline) [{cl} CI]",
                    ],
                    body,
                    left=2,
                ),
                "",
            ]
        md += [
            "### Cost",
            "",
            "Rollouts and tokens to reach the target accuracy: mean over the seeds that "
            "reached it (reached/seeds). × less compute = baseline's mean rollouts to "
            "target / the arm's (> 1: the arm needs less; the baseline is the `"
            + baseline
            + "` arm at the same budget, else at the largest). Effective-gradient ratio: trained responses "
            "in groups with reward variance / trained responses, mean over steps.",
            "",
        ]
        body = []
        for r in g.itertuples(index=False):
            c = _lookup(costs, key, r.arm)
            tok = (
                "-"
                if c["tokens_runs"] == 0
                else f"{fmt_count_ci(c['tokens_to_target'], c['tokens_to_target_low'], c['tokens_to_target_high'], 'M')}"
                f" ({c['tokens_reached']}/{c['tokens_runs']})"
            )
            body.append(
                [
                    f"`{r.arm}`",
                    f"{fmt_count_ci(c['rollouts_to_target'], c['rollouts_to_target_low'], c['rollouts_to_target_high'])}"
                    f" ({c['reached']}/{r.seeds})",
                    tok,
                    fmt_ci(c["compute_ratio"], c["compute_ratio_low"], c["compute_ratio_high"], 2),
                    fmt_count(c["rollouts"]),
                    fmt_count(c["tokens"], "M"),
                    fmt_ci(
                        c["effective_grad_ratio"],
                        c["effective_grad_ratio_low"],
                        c["effective_grad_ratio_high"],
                    ),
                    fmt(1e3 * c["solver_seconds_per_step"], 2),
                ]
            )
        md += [
            _md_table(
                [
                    "arm",
                    f"rollouts to target [{cl} CI]",
                    f"tokens to target [{cl} CI]",
                    "× less compute vs baseline",
                    "rollouts",
                    "tokens",
                    "effective-gradient ratio",
                    "solver ms/step",
                ],
                body,
            ),
            "",
        ]
        cg = _in_group(cross, key)
        if cg["baseline"].nunique() > 1:
            md += [
                f"### Against `{baseline}` at every budget (final test accuracy)",
                "",
                "Each arm against each baseline arm, whatever its budget (e.g. a method at "
                "half the baseline's budget): difference paired by seed, probability of "
                "improvement, and the baseline's rollouts to target over the arm's.",
                "",
            ]
            body = []
            for r in cg.itertuples(index=False):
                body.append(
                    [
                        f"`{r.arm}`",
                        f"`{r.baseline}`",
                        fmt_ci(r.diff, r.diff_low, r.diff_high, 3, signed=True)
                        + f" ({r.paired_seeds})",
                        fmt_ci(r.poi, r.poi_low, r.poi_high, 2),
                        fmt_ci(r.compute_ratio, r.compute_ratio_low, r.compute_ratio_high, 2),
                    ]
                )
            md += [
                _md_table(
                    [
                        "arm",
                        "baseline",
                        f"Δ paired by seed [{cl} CI] (seeds)",
                        f"P(> baseline) [{cl} CI]",
                        f"× less compute [{cl} CI]",
                    ],
                    body,
                    left=2,
                ),
                "",
            ]
        arms = list(g["arm"])
        if len(arms) > 1:
            md += [
                "### Probability of improvement (final test accuracy)",
                "",
                "P(row beats column): the chance that a run of the row's arm ends with a "
                "higher final test accuracy than a run of the column's arm.",
                "",
            ]
            body = []
            for a in arms:
                line = [f"`{a}`"]
                for b in arms:
                    p = _poi_vs(poi, key, a, b)
                    line.append("·" if p is None else fmt(p["p"], 2))
                body.append(line)
            md += [_md_table(["P(row > column)", *[f"`{b}`" for b in arms]], body), ""]
        for title, png in plots_written.get(key, {}).items():
            md += [f"![{title}]({png.relative_to(out).as_posix()})", ""]
    if len(across):
        md += [
            "## Across scenarios (final test accuracy)",
            "",
            "Mean over scenarios of each scenario's mean; the interval is a stratified "
            "bootstrap (seeds resampled within each scenario).",
            "",
        ]
        body = [
            [r.mode, f"`{r.arm}`", r.scenarios, r.runs, fmt_ci(r.mean, r.ci_low, r.ci_high)]
            for r in across.sort_values(["mode", "mean"], ascending=[True, False]).itertuples(
                index=False
            )
        ]
        md += [_md_table(["mode", "arm", "scenarios", "runs", f"mean [{cl} CI]"], body), ""]
    if ("solvers",) in plots_written:
        md += ["## Solver scaling", ""]
        for title, png in plots_written[("solvers",)].items():
            md += [f"![{title}]({png.relative_to(out).as_posix()})", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md += [
        "Tables as CSV: `ranking_final_test_accuracy.csv`, `ranking_auc_test_accuracy.csv`, "
        "`probability_of_improvement.csv`, `versus_baseline.csv`, `versus_baseline_every_budget.csv`, "
        "`cost.csv`.",
        "",
    ]
    return "\n".join(md)


# --------------------------------------------------------------------------------------------
# Frozen policy: the arms against the oracle (bench.report.oracle_ratios)
# --------------------------------------------------------------------------------------------
ORACLE_COLUMNS = (
    ("effective_grad_ratio", "effective-gradient ratio"),
    ("expected_informative_groups", "expected informative groups"),
    ("pg_variance", "gradient variance"),
)
ORACLE_NOTE = (
    "Frozen-policy runs (a pure bandit: the true success rates never move), each arm's per-step "
    "mean over the oracle's (which spends the same budget knowing the true rates, to maximise "
    "the expected number of groups with mixed rewards; a reference, never a method to deploy), "
    "paired by seed: effective-gradient ratio, expected informative groups (Σ 1 − p^n − "
    "(1 − p)^n over the step's groups) and the exact variance of the GRPO gradient estimate "
    "(docs/simulator.md#metrics). Expected informative groups cannot exceed 1 at the same "
    "budget; a lower variance ratio is not better by itself: an informative group adds signal "
    "and noise."
)


def _oracle_rows(oracle: pd.DataFrame):
    for key, g in oracle.groupby(R.GROUP, sort=False):
        yield (
            key,
            g,
            [
                [
                    r["arm"],
                    r["oracle"],
                    str(int(r["paired_seeds"])),
                    *(fmt_ci(r[m], r[f"{m}_low"], r[f"{m}_high"]) for m, _ in ORACLE_COLUMNS),
                ]
                for _, r in g.iterrows()
            ],
        )


def _oracle_tables(oracle: pd.DataFrame, confidence: float) -> list[Table]:
    """Terminal tables of ``oracle_ratios``, one per group; none without frozen oracle runs."""
    tables = []
    for key, _, body in _oracle_rows(oracle):
        table = Table(
            show_lines=True,
            title=f"{group_title(key)}: against the oracle (frozen policy; ratio to the "
            f"oracle's, paired by seed [{confidence:.0%} bootstrap CI])",
        )
        for col in ("arm", "oracle", "seeds", *(title for _, title in ORACLE_COLUMNS)):
            table.add_column(col, justify="left" if col in ("arm", "oracle") else "right")
        for line in body:
            table.add_row(*line)
        tables.append(table)
    return tables


def _with_oracle_section(md: str, oracle: pd.DataFrame, confidence: float) -> str:
    """``md`` with the oracle-ratio section before its notes (or its closing line); ``md``
    unchanged without frozen oracle runs."""
    if oracle.empty:
        return md
    cl = f"{confidence:.0%}"
    section = ["## Against the oracle (frozen policy)", "", ORACLE_NOTE, ""]
    for key, _, body in _oracle_rows(oracle):
        section += [
            f"### {group_title(key)}",
            "",
            _md_table(
                [
                    "arm",
                    "oracle",
                    "paired seeds",
                    *(f"{title} / oracle's [{cl} CI]" for _, title in ORACLE_COLUMNS),
                ],
                [[f"`{a}`", f"`{o}`", s, *rest] for a, o, s, *rest in body],
                left=2,
            ),
            "",
        ]
    section += ["Table as CSV: `oracle_ratios.csv`.", ""]
    for anchor in ("\n## Notes\n", "\nTables as CSV:"):
        at = md.find(anchor)
        if at >= 0:
            return md[: at + 1] + "\n".join(section) + md[at + 1 :]
    return md + "\n" + "\n".join(section)
