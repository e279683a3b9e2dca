"""Pools from pass rates: a scenario's prompt pool fitted to measured per-prompt pass rates.

Input: a table of (``prompt_id``, ``successes``, ``trials``[, ``mean_tokens``][, ``domain``]), one
row per prompt, as CSV, JSONL or parquet (by suffix; docs/simulator.md#pools-from-pass-rates). The
column names are exact (no aliases); other columns are ignored.

The pass-rate model. A prompt's initial success rate p is drawn from a mixture of K Beta
components, (w_k, a_k, b_k), the scenario's ``pass_rate_mixture``; its s successes out of n
trials are Binomial(n, p). The counts' marginal likelihood is then a mixture of beta-binomials,

    P(s | n) = Σ_k w_k · C(n, s) · B(a_k + s, b_k + n − s) / B(a_k, b_k),

which depends on the data only through the histogram of (s, n) pairs. ``fit_beta_mixture``
maximises it for K = 1..max_components (bounded truncated Newton, scipy's TNC, with the
analytic gradient, on log a, log b in [log 0.02, log 1000] and softmax logits of the weights,
from several starts) and keeps the K of least BIC = −2 logL + (3K − 1) log N. At a single n the counts identify only the first n moments
of the pass-rate distribution, so the components are one of many mixtures with the same count
distribution; what the fit reproduces (and the tests check) is that distribution.

Posterior draws. ``posterior_rates`` draws each prompt's own rate from its posterior under the
fitted prior, a mixture of Beta(a_k + s, b_k + n − s) with weights ∝ w_k · P_k(s | n).

Lengths. Under the scenario's length model (simulator/scenarios.py) a sample of prompt i has
log length ~ N(μ_i (+ ln f if wrong), σ), μ_i = ln M + τ z_i + β (0.5 − p0_i), so with s_i of
n_i samples correct the expected per-prompt mean length is

    E[m_i | s_i, μ_i] = exp(μ_i + σ²/2) · (s_i + (n_i − s_i) f) / n_i.

``fit_lengths`` regresses y_i = ln m_i − ln((s_i + (n_i − s_i) f)/n_i) on x_i = 0.5 − E[p0_i | s_i]
(see its docstring) with f and σ taken as given: they are not identifiable from means alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from numba import njit
from scipy import optimize
from scipy.special import betaln, gammaln, logsumexp

Mixture = tuple[tuple[float, float, float], ...]

REQUIRED = ("prompt_id", "successes", "trials")
OPTIONAL = ("mean_tokens", "domain")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# Beta parameters of the fit are kept in this range (a sane prior: below 0.02 a component is a
# point mass at 0 or 1 for any count, above 1,000 a point mass at its mean)
AB_MIN, AB_MAX = 0.02, 1000.0
RATE_CLIP = 1e-4  # as _initial_pass_rates in simulator/scenarios.py
_LOGIT_BOUND = 20.0


class PoolError(ValueError):
    """Bad pass-rate input: one line naming the file, the row (or line) and the problem."""


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PassRates:
    """One row per prompt: its id, successes out of trials, and optionally its mean response
    tokens and its domain label."""

    path: str
    prompt_id: np.ndarray  # str, object dtype
    successes: np.ndarray  # int64
    trials: np.ndarray  # int64
    mean_tokens: np.ndarray | None = None  # float64, > 0
    domain: np.ndarray | None = None  # str, object dtype

    def __len__(self) -> int:
        return int(self.successes.size)

    @property
    def domain_names(self) -> tuple[str, ...]:
        """Domain labels in order of first appearance (() without a domain column)."""
        if self.domain is None:
            return ()
        return tuple(dict.fromkeys(self.domain.tolist()))


def _read_table(path: Path, kind: str) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The table as object columns, the 1-based row (CSV, parquet) or line (JSONL) number of each
    record, and the word for it."""
    if kind == "csv":
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except pd.errors.EmptyDataError:
            raise PoolError(f"{path}: empty file") from None
        df.columns = [str(c).strip() for c in df.columns]
        return df, np.arange(1, len(df) + 1), "row"
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.to_pandas().astype(object), np.arange(1, table.num_rows + 1), "row"
    records, lines = [], []
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PoolError(f"{path}: line {no}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise PoolError(f"{path}: line {no}: not a JSON object")
            for col in REQUIRED:
                if col not in rec:
                    raise PoolError(f"{path}: line {no}: missing {col}")
            records.append(rec)
            lines.append(no)
    return pd.DataFrame.from_records(records).astype(object), np.asarray(lines, int), "line"


def _is_empty(v) -> bool:
    """None, NaN, pd.NA or blank text."""
    if isinstance(v, str):
        return v.strip() == ""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # a list or other container: not empty, not a number
        return False


def _numbers(df: pd.DataFrame, col: str, where) -> np.ndarray:
    raw = df[col]
    vals = raw.map(lambda v: v.strip() if isinstance(v, str) else v)
    vals = vals.map(lambda v: None if isinstance(v, bool) else v)
    num = pd.to_numeric(vals, errors="coerce").to_numpy(float)
    bad = np.flatnonzero(np.isnan(num))  # empty or not a number
    if bad.size:
        i = int(bad[0])
        what = "is empty" if _is_empty(raw.iloc[i]) else f"{raw.iloc[i]!r} is not a number"
        raise PoolError(f"{where(i)}: {col} {what}")
    return num


def _counts(df: pd.DataFrame, col: str, where) -> np.ndarray:
    num = _numbers(df, col, where)
    for mask, what in (
        (~np.isfinite(num) | (num != np.floor(num)), "is not an integer"),
        (num < 0, "is negative"),
    ):
        bad = np.flatnonzero(mask)
        if bad.size:
            i = int(bad[0])
            raise PoolError(f"{where(i)}: {col} {df[col].iloc[i]!r} {what}")
    return num.astype(np.int64)


def read_pass_rates(path: str | Path) -> PassRates:
    """Read and validate a pass-rate file (CSV, JSONL or parquet, by suffix).

    Columns: ``prompt_id`` (any non-empty value, compared as text), ``successes`` and ``trials``
    (non-negative integers, 0 < trials, successes <= trials), optionally ``mean_tokens`` (finite,
    > 0, on every row) and ``domain`` (a non-empty label on every row). Raises ``PoolError`` with
    one line naming the file, the 1-based data row (CSV, parquet) or file line (JSONL) and the
    problem; the first problem found is reported."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise PoolError(
            f"{path}: unknown file type {path.suffix or '(no suffix)'!r}; "
            f"expected one of {', '.join(SUFFIXES)}"
        )
    try:
        df, rows, word = _read_table(path, kind)
    except PoolError:
        raise
    except FileNotFoundError:
        raise PoolError(f"{path}: cannot read: no such file") from None
    except OSError as e:  # a directory, no permission
        raise PoolError(f"{path}: cannot read: {e.strerror or type(e).__name__}") from None
    except Exception as e:  # missing, unreadable or malformed file
        msg = " ".join(str(e).split()) or type(e).__name__
        raise PoolError(f"{path}: cannot read {kind} file: {msg}") from None
    if len(df) == 0:
        raise PoolError(f"{path}: empty file (no data rows)")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise PoolError(
            f"{path}: missing column{'s' * (len(missing) > 1)} {', '.join(missing)} "
            f"(has {', '.join(map(str, df.columns)) or 'none'})"
        )

    def where(i: int) -> str:
        return f"{path}: {word} {rows[i]}"

    ids = df["prompt_id"]
    empty = np.flatnonzero(ids.map(_is_empty).to_numpy(bool))
    if empty.size:
        raise PoolError(f"{where(int(empty[0]))}: prompt_id is empty")
    ids = ids.map(lambda v: str(v).strip())
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        second = int(np.flatnonzero(dup & (ids == ids.iloc[first]).to_numpy())[1])
        raise PoolError(
            f"{path}: {word}s {rows[first]} and {rows[second]} have the same prompt_id "
            f"{ids.iloc[first]!r}"
        )
    s = _counts(df, "successes", where)
    n = _counts(df, "trials", where)
    bad = np.flatnonzero(n == 0)
    if bad.size:
        raise PoolError(f"{where(int(bad[0]))}: trials is 0")
    bad = np.flatnonzero(s > n)
    if bad.size:
        i = int(bad[0])
        raise PoolError(f"{where(i)}: successes {s[i]} > trials {n[i]}")
    mean_tokens = None
    if "mean_tokens" in df.columns:
        mean_tokens = _numbers(df, "mean_tokens", where)
        bad = np.flatnonzero(~np.isfinite(mean_tokens) | (mean_tokens <= 0))
        if bad.size:
            i = int(bad[0])
            raise PoolError(
                f"{where(i)}: mean_tokens {df['mean_tokens'].iloc[i]!r} is not positive and finite"
            )
    domain = None
    if "domain" in df.columns:
        empty = np.flatnonzero(df["domain"].map(_is_empty).to_numpy(bool))
        if empty.size:
            raise PoolError(f"{where(int(empty[0]))}: domain is empty")
        domain = df["domain"].map(lambda v: str(v).strip()).to_numpy(object)
    return PassRates(str(path), ids.to_numpy(object), s, n, mean_tokens, domain)


# --------------------------------------------------------------------------- the mixture


def _cells(successes, trials) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (s, n) pairs and how many prompts have each (the likelihood's sufficient
    statistic)."""
    sn = np.stack([np.asarray(successes, np.int64), np.asarray(trials, np.int64)], axis=1)
    cells, counts = np.unique(sn, axis=0, return_counts=True)
    return cells[:, 0].astype(float), cells[:, 1].astype(float), counts.astype(float)


def _log_bb(s, n, a, b) -> np.ndarray:
    """log beta-binomial pmf, broadcast over (cells, components)."""
    return (
        gammaln(n + 1)
        - gammaln(s + 1)
        - gammaln(n - s + 1)
        + betaln(a + s, b + n - s)
        - betaln(a, b)
    )


def _component_loglik(successes, trials, mixture: Mixture) -> np.ndarray:
    """log w_k + log P_k(s_i | n_i), shape (prompts or cells, K)."""
    w = np.array([c[0] for c in mixture], float)
    a = np.array([c[1] for c in mixture], float)
    b = np.array([c[2] for c in mixture], float)
    s = np.asarray(successes, float)[:, None]
    n = np.asarray(trials, float)[:, None]
    with np.errstate(divide="ignore"):
        return np.log(w / w.sum()) + _log_bb(s, n, a, b)


def mixture_loglik(successes, trials, mixture: Mixture) -> float:
    """Log-likelihood of the counts under the Beta mixture (the beta-binomial marginal)."""
    s, n, c = _cells(successes, trials)
    return float(np.sum(c * logsumexp(_component_loglik(s, n, mixture), axis=1)))


def count_pmf(mixture: Mixture, n: int) -> np.ndarray:
    """P(s | n), s = 0..n, of a prompt drawn from the mixture (the implied count distribution)."""
    s = np.arange(n + 1)
    return np.exp(logsumexp(_component_loglik(s, np.full(n + 1, n), mixture), axis=1))


def mixture_mean(mixture: Mixture) -> float:
    w = sum(c[0] for c in mixture)
    return float(sum(wk * a / (a + b) for wk, a, b in mixture) / w)


def _clip_ab(x: float) -> float:
    return float(min(max(x, AB_MIN), AB_MAX))


def moment_start(successes, trials) -> Mixture:
    """One Beta by the method of moments of the observed rates p̂ = s/n: E p̂ = μ and
    Var p̂ = μ(1 − μ)(ρ + (1 − ρ) E[1/n]), ρ = 1/(a + b + 1); the fit's first start."""
    s = np.asarray(successes, float)
    n = np.asarray(trials, float)
    p = s / n
    mu = float(np.clip(p.mean(), 1e-3, 1 - 1e-3))
    inv_n = float(np.mean(1.0 / n))
    var = float(p.var())
    if inv_n >= 1.0:  # every n = 1: the variance says nothing about ρ
        rho = 0.5
    else:
        rho = (var / (mu * (1 - mu)) - inv_n) / (1 - inv_n)
    rho = float(np.clip(rho, 1.0 / (AB_MAX + 1), 1.0 / (2 * AB_MIN + 1)))
    total = 1.0 / rho - 1.0
    return ((1.0, _clip_ab(mu * total), _clip_ab((1 - mu) * total)),)


@dataclass(frozen=True)
class MixtureFit:
    """The fitted Beta mixture and the model selection behind it."""

    components: Mixture  # ((w, a, b), ...), sorted by component mean
    loglik: float
    k: int  # chosen number of components
    n_prompts: int
    bic: dict[int, float] = field(default_factory=dict)  # per K tried
    loglik_by_k: dict[int, float] = field(default_factory=dict)
    components_by_k: dict[int, Mixture] = field(default_factory=dict)

    def mean(self) -> float:
        return mixture_mean(self.components)

    def count_pmf(self, n: int) -> np.ndarray:
        return count_pmf(self.components, n)

    def describe(self) -> str:
        comps = ", ".join(f"{w:.2f}·Beta({a:.3g}, {b:.3g})" for w, a, b in self.components)
        bics = ", ".join(f"K={k}: {v:,.1f}" for k, v in sorted(self.bic.items()))
        return (
            f"K = {self.k} ({comps}; mean {self.mean():.3f}), logL {self.loglik:,.1f}; BIC {bics}"
        )


def _unpack(x: np.ndarray, k: int):
    eta = np.append(x[: k - 1], 0.0)
    la, lb = x[k - 1 : 2 * k - 1], x[2 * k - 1 :]
    return eta, la, lb


def _pack(mixture: Mixture) -> np.ndarray:
    w = np.array([c[0] for c in mixture], float)
    w = np.maximum(w / w.sum(), 1e-8)
    eta = np.clip(np.log(w) - np.log(w[-1]), -_LOGIT_BOUND, _LOGIT_BOUND)[:-1]
    a = np.log([_clip_ab(c[1]) for c in mixture])
    b = np.log([_clip_ab(c[2]) for c in mixture])
    return np.concatenate([eta, a, b])


@njit(cache=True)
def _digamma(x: float) -> float:
    """ψ(x), x > 0: the recurrence ψ(x) = ψ(x + 1) − 1/x up to x ≥ 6, then the asymptotic
    series (error below 1e-12 there)."""
    out = 0.0
    while x < 6.0:
        out -= 1.0 / x
        x += 1.0
    inv2 = 1.0 / (x * x)
    return (
        out
        + math.log(x)
        - 0.5 / x
        - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 * (1 / 240 - inv2 / 132))))
    )


@njit(cache=True)
def _nll_kernel(x, k, s, n, c):
    """−Σ_j c_j log Σ_k w_k P_k(s_j | n_j) and its gradient in (weight logits η_1..η_{K−1},
    log a, log b), η_K = 0, over the distinct (s, n) cells j."""
    eta = np.zeros(k)
    eta[: k - 1] = x[: k - 1]
    a = np.exp(x[k - 1 : 2 * k - 1])
    b = np.exp(x[2 * k - 1 :])
    top = eta.max()
    norm = top + math.log(np.sum(np.exp(eta - top)))
    logw = eta - norm
    lbeta0 = np.empty(k)
    psi_a, psi_b, psi_ab = np.empty(k), np.empty(k), np.empty(k)
    for m in range(k):
        lbeta0[m] = math.lgamma(a[m]) + math.lgamma(b[m]) - math.lgamma(a[m] + b[m])
        psi_a[m], psi_b[m] = _digamma(a[m]), _digamma(b[m])
        psi_ab[m] = _digamma(a[m] + b[m])
    g = np.zeros(3 * k - 1)
    lk = np.empty(k)
    total = 0.0
    nll = 0.0
    for j in range(s.size):
        sj, nj = s[j], n[j]
        comb = math.lgamma(nj + 1) - math.lgamma(sj + 1) - math.lgamma(nj - sj + 1)
        for m in range(k):
            lk[m] = (
                logw[m]
                + comb
                + math.lgamma(a[m] + sj)
                + math.lgamma(b[m] + nj - sj)
                - math.lgamma(a[m] + b[m] + nj)
                - lbeta0[m]
            )
        top = lk.max()
        ll = top + math.log(np.sum(np.exp(lk - top)))
        nll -= c[j] * ll
        total += c[j]
        for m in range(k):
            cr = c[j] * math.exp(lk[m] - ll)  # count × responsibility of component m
            d_ab = _digamma(a[m] + b[m] + nj)
            if m < k - 1:
                g[m] -= cr
            g[k - 1 + m] -= cr * a[m] * (_digamma(a[m] + sj) - d_ab - psi_a[m] + psi_ab[m])
            g[2 * k - 1 + m] -= cr * b[m] * (_digamma(b[m] + nj - sj) - d_ab - psi_b[m] + psi_ab[m])
    for m in range(k - 1):
        g[m] += total * math.exp(logw[m])
    return nll, g


def _neg_loglik_and_grad(x, k, s, n, c, total):
    """−logL/N and its gradient (``_nll_kernel`` scaled by the number of prompts)."""
    nll, g = _nll_kernel(np.asarray(x, np.float64), k, s, n, c)
    return nll / total, g / total


def _sorted(mixture: Mixture) -> Mixture:
    return tuple(sorted(mixture, key=lambda c: (c[1] / (c[1] + c[2]), c[1] + c[2])))


def _quantile_start(successes, trials, k: int, rng: np.random.Generator) -> Mixture:
    """K groups of equal size by observed rate (ties broken at random), one Beta each by the
    method of moments."""
    p = np.asarray(successes, float) / np.asarray(trials, float)
    order = np.lexsort((rng.random(p.size), p))
    out = []
    for grp in np.array_split(order, k):
        if grp.size == 0:  # fewer prompts than components
            out.append((1e-3, 1.0, 1.0))
            continue
        (_, a, b), *_ = moment_start(np.asarray(successes)[grp], np.asarray(trials)[grp])
        out.append((grp.size / p.size, min(a, 200.0), min(b, 200.0)))
    return tuple(out)


def _random_start(k: int, rng: np.random.Generator) -> Mixture:
    w = rng.dirichlet(np.full(k, 2.0))
    ab = np.exp(rng.uniform(math.log(0.2), math.log(10.0), size=(k, 2)))
    return tuple((float(w[j]), float(ab[j, 0]), float(ab[j, 1])) for j in range(k))


def _grown_starts(prev: Mixture) -> list[Mixture]:
    """The (K−1)-component optimum plus one small new component: near 0, near 1, or flat."""
    out = []
    for new in ((0.3, 8.0), (8.0, 0.3), (1.0, 1.0)):
        out.append(tuple((w * 0.95, a, b) for w, a, b in prev) + ((0.05, *new),))
    return out


def _fit_k(s, n, c, k, starts: list[Mixture]) -> tuple[Mixture, float]:
    total = float(c.sum())
    lo = np.concatenate([np.full(k - 1, -_LOGIT_BOUND), np.full(2 * k, math.log(AB_MIN))])
    hi = np.concatenate([np.full(k - 1, _LOGIT_BOUND), np.full(2 * k, math.log(AB_MAX))])
    bounds = list(zip(lo, hi))
    best_x, best_f = None, math.inf
    for start in starts:
        x0 = np.clip(_pack(start), lo, hi)
        f0, _ = _neg_loglik_and_grad(x0, k, s, n, c, total)
        res = optimize.minimize(
            _neg_loglik_and_grad,
            x0,
            args=(k, s, n, c, total),
            jac=True,
            method="TNC",
            bounds=bounds,
            options={"maxfun": 2000, "ftol": 1e-9},
        )
        x, f = (res.x, float(res.fun)) if res.fun <= f0 else (x0, f0)
        if f < best_f:
            best_x, best_f = x, f
    assert best_x is not None
    eta, la, lb = _unpack(best_x, k)
    w = np.exp(eta - logsumexp(eta))
    mix = tuple((float(w[j]), float(np.exp(la[j])), float(np.exp(lb[j]))) for j in range(k))
    return _sorted(mix), -best_f * total


def fit_beta_mixture(
    successes,
    trials,
    max_components: int = 4,
    rng: np.random.Generator | int | None = 0,
    n_random_starts: int = 3,
) -> MixtureFit:
    """Maximum-likelihood Beta mixture of the counts (beta-binomial marginal), K by BIC.

    For each K = 1..max_components: scipy's bounded truncated Newton (TNC; L-BFGS-B's BLAS
    calls cost milliseconds each on a loaded multi-threaded OpenBLAS, this problem has at most
    11 parameters) on (weight logits, log a, log b), a and b bounded to [0.02, 1000], the
    gradient analytic (``_nll_kernel``), from the method-of-moments start (K = 1), the rate-quantile split, the
    (K−1) optimum plus a small component near 0, near 1 or flat, and ``n_random_starts``
    random mixtures; the best optimum is kept (never worse than its start). The likelihood is
    evaluated on the histogram of distinct (s, n) pairs, so its cost does not grow with the
    number of prompts. K is the one of least BIC = −2 logL + (3K − 1) ln N."""
    s_all = np.asarray(successes, np.int64)
    n_all = np.asarray(trials, np.int64)
    if s_all.size == 0:
        raise ValueError("no prompts to fit")
    if max_components < 1:
        raise ValueError(f"max_components must be at least 1, not {max_components}")
    if np.any(n_all <= 0) or np.any(s_all < 0) or np.any(s_all > n_all):
        raise ValueError("counts must satisfy 0 <= successes <= trials, trials > 0")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    s, n, c = _cells(s_all, n_all)
    N = s_all.size
    bic, lls, comps = {}, {}, {}
    prev: Mixture | None = None
    for k in range(1, min(max_components, N) + 1):
        starts: list[Mixture] = []
        if k == 1:
            starts.append(moment_start(s_all, n_all))
        else:
            starts.append(_quantile_start(s_all, n_all, k, gen))
            assert prev is not None
            starts += _grown_starts(prev)
        starts += [_random_start(k, gen) for _ in range(n_random_starts)]
        mix, ll = _fit_k(s, n, c, k, starts)
        comps[k], lls[k] = mix, ll
        bic[k] = -2.0 * ll + (3 * k - 1) * math.log(N)
        prev = mix
    best = min(bic, key=lambda kk: (bic[kk], kk))
    return MixtureFit(comps[best], lls[best], best, N, bic, lls, comps)


# --------------------------------------------------------------------------- posteriors


def _posterior_weights(successes, trials, mixture: Mixture) -> np.ndarray:
    lk = _component_loglik(successes, trials, mixture)
    return np.exp(lk - logsumexp(lk, axis=1, keepdims=True))


def posterior_moments(successes, trials, mixture: Mixture) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's posterior mean and variance of its rate under the mixture prior."""
    s = np.asarray(successes, float)[:, None]
    n = np.asarray(trials, float)[:, None]
    a = np.array([c[1] for c in mixture], float) + s
    b = np.array([c[2] for c in mixture], float) + n - s
    pi = _posterior_weights(successes, trials, mixture)
    m_k = a / (a + b)
    v_k = a * b / ((a + b) ** 2 * (a + b + 1))
    mean = np.sum(pi * m_k, axis=1)
    var = np.sum(pi * (v_k + m_k**2), axis=1) - mean**2
    return mean, np.maximum(var, 0.0)


def posterior_rates(successes, trials, mixture: Mixture, rng: np.random.Generator) -> np.ndarray:
    """Each prompt's rate drawn from its posterior under the mixture prior: a component k with
    probability ∝ w_k · P_k(s | n), then Beta(a_k + s, b_k + n − s); clipped to
    [1e-4, 1 − 1e-4] as ``_initial_pass_rates``."""
    s = np.asarray(successes, float)
    n = np.asarray(trials, float)
    pi = _posterior_weights(s, n, mixture)
    u = rng.random(s.size)
    comp = np.minimum((np.cumsum(pi, axis=1) < u[:, None]).sum(axis=1), len(mixture) - 1)
    a = np.array([c[1] for c in mixture], float)[comp] + s
    b = np.array([c[2] for c in mixture], float)[comp] + n - s
    return np.clip(rng.beta(a, b), RATE_CLIP, 1 - RATE_CLIP)


# --------------------------------------------------------------------------- lengths


@dataclass(frozen=True)
class LengthFit:
    """Length-model fields fitted from per-prompt mean tokens, and what means cannot give."""

    median_tokens: float
    prompt_length_sigma: float
    difficulty_length_slope: float
    slope_se: float  # standard error of the slope (OLS)
    n_prompts: int
    assumed: dict[str, float]  # fields taken as given (not identifiable from means)
    not_identified: tuple[str, ...]

    def scenario_fields(self) -> dict[str, float]:
        return {
            "median_tokens": self.median_tokens,
            "prompt_length_sigma": self.prompt_length_sigma,
            "difficulty_length_slope": self.difficulty_length_slope,
        }


SLOPE_LIMIT = 20.0  # |difficulty_length_slope| a scenario file accepts


def fit_lengths(
    mean_tokens,
    successes,
    trials,
    prior: Mixture | list[Mixture],
    wrong_length_factor: float = 1.6,
    sample_length_sigma: float = 0.3,
    domain_index: np.ndarray | None = None,
) -> LengthFit:
    """Fit ``median_tokens`` M, ``prompt_length_sigma`` τ and ``difficulty_length_slope`` β of
    the scenario's length model from per-prompt mean tokens m_i over n_i samples, s_i correct.

    Model: given μ_i, a sample is exp(μ_i + σ Z) tokens if correct, f times that if wrong, so
    E[m_i | s_i, μ_i] = exp(μ_i + σ²/2)·(s_i + (n_i − s_i) f)/n_i with relative variance
    v_i = (e^{σ²} − 1)(s_i + (n_i − s_i) f²)/(s_i + (n_i − s_i) f)², and (delta method)
    E[ln m_i] ≈ ln E[m_i] − v_i/2. With μ_i = ln M + τ z_i + β(0.5 − p0_i),

        y_i = ln m_i − ln((s_i + (n_i − s_i) f)/n_i) + v_i/2
            = ln M + σ²/2 + β(0.5 − p0_i) + τ z_i + ε_i.

    p0_i is unknown; write p0_i = E[p0_i | s_i] + e_i (posterior mean under ``prior``, the fitted
    mixture; with ``domain_index``, ``prior`` is a list of mixtures and prompt i's prior is
    ``prior[domain_index[i]]``). The error e_i is uncorrelated with any function of s_i (a Berkson error), so the
    ordinary least squares of y on x_i = 0.5 − E[p0_i | s_i] is unbiased for β and its intercept
    for ln M + σ²/2. The residual variance is τ² + β² E Var(p0 | s) + E v_i; τ² is what is left
    after the other two (floored at 0).

    Not identifiable from means alone: ``wrong_length_factor`` f (its term and the slope's are
    both functions of s, told apart only by the curvature in s) and ``sample_length_sigma`` σ
    (it shifts the intercept like ln M and adds noise like τ), so both are taken as given;
    ``max_tokens`` is not fitted (the model ignores the cap: means near it bias M and τ down)."""
    m = np.asarray(mean_tokens, float)
    s = np.asarray(successes, float)
    n = np.asarray(trials, float)
    if m.size < 3:
        raise ValueError("the length fit needs at least 3 prompts")
    f, sig = float(wrong_length_factor), float(sample_length_sigma)
    mix = (s + (n - s) * f) / n
    v = math.expm1(sig * sig) * (s + (n - s) * f * f) / (n * mix) ** 2
    y = np.log(m) - np.log(mix) + v / 2
    if domain_index is None:
        post_mean, post_var = posterior_moments(s, n, prior)  # type: ignore[arg-type]
    else:
        post_mean, post_var = np.empty(s.size), np.empty(s.size)
        for d, mixture in enumerate(prior):
            sel = np.asarray(domain_index) == d
            post_mean[sel], post_var[sel] = posterior_moments(s[sel], n[sel], mixture)  # type: ignore[arg-type]
    x = 0.5 - post_mean
    xc = x - x.mean()
    sxx = float(np.sum(xc * xc))
    beta = float(np.sum(xc * (y - y.mean())) / sxx) if sxx > 0 else 0.0
    # a handful of prompts with nearly equal posterior means leaves the slope unconstrained
    # (sxx near 0): keep it, and so the intercept, inside what a scenario accepts
    beta = min(max(beta, -SLOPE_LIMIT), SLOPE_LIMIT)
    intercept = float(y.mean() - beta * x.mean())
    resid = y - intercept - beta * x
    dof = max(m.size - 2, 1)
    res_var = float(np.sum(resid**2) / dof)
    tau2 = res_var - beta * beta * float(post_var.mean()) - float(v.mean())
    se = math.sqrt(res_var / sxx) if sxx > 0 else math.inf
    return LengthFit(
        median_tokens=math.exp(intercept - sig * sig / 2),
        prompt_length_sigma=math.sqrt(max(tau2, 0.0)),
        difficulty_length_slope=beta,
        slope_se=se,
        n_prompts=int(m.size),
        assumed={"wrong_length_factor": f, "sample_length_sigma": sig},
        not_identified=("wrong_length_factor", "sample_length_sigma", "max_tokens"),
    )


# --------------------------------------------------------------------------- the pool


@dataclass(frozen=True)
class Pool:
    """A prompt pool fitted to a pass-rate file, ready to plug into a ``Scenario``.

    ``mode`` "mixture": the world draws new prompts from the fitted distribution
    (``pass_rate_mixture``, or ``domains`` with one fitted mixture each). ``mode`` "prompts":
    the pool is the file's prompts, ``successes`` / ``trials`` per prompt (ordered by domain
    when there are domains, as the world lays them out), each one's initial rate drawn from its
    own posterior (``initial_pass_rates``)."""

    path: str
    mode: Literal["mixture", "prompts"]
    num_prompts: int
    fit: MixtureFit  # all prompts together
    domain_fits: dict[str, MixtureFit] = field(default_factory=dict)
    domain_shares: dict[str, float] = field(default_factory=dict)
    length: LengthFit | None = None
    prompt_id: np.ndarray | None = field(default=None, repr=False)
    successes: np.ndarray | None = field(default=None, repr=False)
    trials: np.ndarray | None = field(default=None, repr=False)
    domain_index: np.ndarray | None = field(default=None, repr=False)  # into domain_fits' order

    @property
    def pass_rate_mixture(self) -> Mixture:
        return self.fit.components

    @property
    def domains(self) -> tuple[tuple[str, float, float, Mixture], ...]:
        """``Scenario.domains``: (name, train share, test share, mixture); the test shares are
        the train shares (the file has one set of prompts)."""
        return tuple(
            (name, self.domain_shares[name], self.domain_shares[name], f.components)
            for name, f in self.domain_fits.items()
        )

    def scenario_fields(self) -> dict:
        """Fields to ``dataclasses.replace`` into a ``Scenario``."""
        out: dict = {"num_prompts": self.num_prompts, "pass_rate_mixture": self.pass_rate_mixture}
        if self.domain_fits:
            out["domains"] = self.domains
        if self.length is not None:
            out.update(self.length.scenario_fields())
        return out

    def initial_pass_rates(self, rng: np.random.Generator) -> np.ndarray:
        """Mode "prompts": each prompt's initial rate from its posterior (under its domain's
        mixture when there are domains)."""
        if self.successes is None or self.trials is None:
            raise ValueError("initial_pass_rates needs a pool built in mode 'prompts'")
        if not self.domain_fits:
            return posterior_rates(self.successes, self.trials, self.fit.components, rng)
        assert self.domain_index is not None
        out = np.empty(self.successes.size)
        for d, f in enumerate(self.domain_fits.values()):
            sel = self.domain_index == d
            out[sel] = posterior_rates(self.successes[sel], self.trials[sel], f.components, rng)
        return out

    def describe(self) -> str:
        src = (
            "the prompts themselves, each initial rate drawn from its posterior"
            if self.mode == "prompts"
            else "new prompts drawn from the fitted pass-rate distribution"
        )
        text = (
            f"Pool from {self.path}: {self.num_prompts:,} prompts ({src}). Beta mixture "
            f"fitted by maximum likelihood of the beta-binomial counts, K by BIC: "
            f"{self.fit.describe()}."
        )
        for name, f in self.domain_fits.items():
            text += f" Domain {name} ({self.domain_shares[name]:.1%}): {f.describe()}."
        if self.length is None:
            text += " No mean_tokens: the length model keeps the scenario's fields."
        else:
            L = self.length
            text += (
                f" Lengths from mean tokens: median_tokens {L.median_tokens:,.0f}, "
                f"prompt_length_sigma {L.prompt_length_sigma:.3f}, difficulty_length_slope "
                f"{L.difficulty_length_slope:.3f} ± {L.slope_se:.3f}, assuming "
                + ", ".join(f"{k} {v:g}" for k, v in L.assumed.items())
                + f" (not identifiable from means: {', '.join(L.not_identified)})."
            )
        return text


def build_pool(
    path: str | Path,
    mode: Literal["mixture", "prompts"] = "mixture",
    seed: int = 0,
    max_components: int = 4,
    wrong_length_factor: float = 1.6,
    sample_length_sigma: float = 0.3,
) -> Pool:
    """Read ``path`` (``read_pass_rates``), fit the Beta mixture of all prompts and, with a
    domain column, of each domain; fit the length model where ``mean_tokens`` is given (with
    the two fields it cannot identify taken from the arguments, the scenario defaults)."""
    if mode not in ("mixture", "prompts"):
        raise ValueError(f"mode must be 'mixture' or 'prompts', not {mode!r}")
    pr = read_pass_rates(path)
    rng = np.random.default_rng([seed, 0x9001])
    fit = fit_beta_mixture(pr.successes, pr.trials, max_components, rng)
    order = np.arange(len(pr))
    domain_fits: dict[str, MixtureFit] = {}
    shares: dict[str, float] = {}
    domain_index = None
    code = np.zeros(len(pr), np.int64)
    if pr.domain is not None:
        names = pr.domain_names
        code = np.array([names.index(d) for d in pr.domain], np.int64)
        order = np.argsort(code, kind="stable")
        domain_index = code[order]
        for d, name in enumerate(names):
            sel = code == d
            domain_fits[name] = fit_beta_mixture(
                pr.successes[sel], pr.trials[sel], max_components, rng
            )
            shares[name] = float(sel.mean())
    length = None
    if pr.mean_tokens is not None:
        if len(pr) < 3:
            raise PoolError(f"{path}: the length fit needs at least 3 prompts with mean_tokens")
        priors = [f.components for f in domain_fits.values()] or [fit.components]
        length = fit_lengths(
            pr.mean_tokens,
            pr.successes,
            pr.trials,
            priors if domain_fits else fit.components,
            wrong_length_factor,
            sample_length_sigma,
            domain_index=code if domain_fits else None,
        )
    keep = mode == "prompts"
    return Pool(
        path=str(path),
        mode=mode,
        num_prompts=len(pr),
        fit=fit,
        domain_fits=domain_fits,
        domain_shares=shares,
        length=length,
        prompt_id=pr.prompt_id[order] if keep else None,
        successes=pr.successes[order] if keep else None,
        trials=pr.trials[order] if keep else None,
        domain_index=domain_index if keep else None,
    )
