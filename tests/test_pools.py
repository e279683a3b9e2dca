"""Pools from pass rates (simulator/pools.py): reading and validation, the Beta-mixture fit,
posterior draws and the length fit."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps

from simulator.pools import (
    PoolError,
    build_pool,
    count_pmf,
    fit_beta_mixture,
    fit_lengths,
    mixture_loglik,
    mixture_mean,
    moment_start,
    posterior_moments,
    posterior_rates,
    read_pass_rates,
)
from simulator.scenario_files import SCENARIO_BOUNDS
from simulator.scenarios import _initial_pass_rates, build_world, get_scenario

DAPO = get_scenario("dapo-math").pass_rate_mixture  # U-shaped, three components


def _counts(rng, mixture, num, n):
    p = _initial_pass_rates(rng, num, mixture)
    return rng.binomial(n, p), np.full(num, n)


def _synthetic_lengths(rng, s_mixture, num, n, M=1200.0, tau=0.35, beta=0.6, f=1.6, sig=0.3):
    """Per-prompt mean tokens under the scenario's length model, sampled as the simulator's
    kernel does (rounded, at least 1 token; no cap)."""
    p0 = _initial_pass_rates(rng, num, s_mixture)
    mu = math.log(M) + tau * rng.standard_normal(num) + beta * (0.5 - p0)
    ok = rng.random((num, n)) < p0[:, None]
    lengths = np.exp(
        mu[:, None] + np.where(ok, 0.0, math.log(f)) + sig * rng.standard_normal((num, n))
    )
    lengths = np.maximum(np.floor(lengths + 0.5), 1.0)
    return ok.sum(axis=1), np.full(num, n), lengths.mean(axis=1)


# --------------------------------------------------------------------------- the fit


@pytest.mark.parametrize("n", [8, 16])
def test_fit_recovers_the_count_distribution(n):
    """5,000 prompts from the dapo-math mixture. What the counts identify is the count
    distribution (its first n moments), so that is what is compared with the truth.

    Tolerances: a cell's empirical frequency has standard error ≤ √(0.25/5000) = 0.0071, so the
    fitted P(s | n) is within 0.025 (3.5 SE) of the true one in every cell, the shares of
    all-wrong and all-right prompts likewise; the mean rate within 0.02 (the observed mean's SE
    is about 0.42/√5000 = 0.006). The n = 16 fit also predicts the n = 8 shares (they depend
    only on the first 8 moments, which 16 trials identify)."""
    rng = np.random.default_rng([7, n])
    s, t = _counts(rng, DAPO, 5_000, n)
    fit = fit_beta_mixture(s, t)
    true_pmf = count_pmf(DAPO, n)
    assert np.max(np.abs(fit.count_pmf(n) - true_pmf)) < 0.025
    assert abs(fit.count_pmf(n)[0] - true_pmf[0]) < 0.025
    assert abs(fit.count_pmf(n)[n] - true_pmf[n]) < 0.025
    assert abs(fit.mean() - mixture_mean(DAPO)) < 0.02
    pmf8, true8 = fit.count_pmf(8), count_pmf(DAPO, 8)
    assert abs(pmf8[0] - true8[0]) < 0.025 and abs(pmf8[8] - true8[8]) < 0.025
    # the K = 3 optimum is a maximum: no worse than the (three-component) truth's likelihood on
    # the same counts (BIC may then prefer fewer components: the counts hardly tell them apart)
    assert fit.loglik_by_k[3] >= mixture_loglik(s, t, DAPO) - 1e-6
    assert sum(w for w, _, _ in fit.components) == pytest.approx(1.0)
    assert all(0.02 <= a <= 1000 and 0.02 <= b <= 1000 for _, a, b in fit.components)


def test_bic_picks_two_components_for_a_bimodal_pool():
    """Half the prompts near 0.25, half near 0.75: at n = 8 a single Beta cannot make the two
    count modes, so BIC picks K >= 2 (by about 250 in BIC here) and the two largest components
    sit near the truth's means."""
    rng = np.random.default_rng(11)
    truth = ((0.5, 20.0, 60.0), (0.5, 60.0, 20.0))
    s, t = _counts(rng, truth, 5_000, 8)
    fit = fit_beta_mixture(s, t)
    assert fit.k >= 2
    assert fit.bic[1] - fit.bic[fit.k] > 50
    big = sorted(fit.components, key=lambda c: -c[0])[:2]
    means = sorted(a / (a + b) for _, a, b in big)
    assert means[0] == pytest.approx(0.25, abs=0.04) and means[1] == pytest.approx(0.75, abs=0.04)


def test_bic_picks_one_component_for_a_single_beta():
    """Beta(2, 5): a second component gains about a χ²₃/2 ≈ 1.5 in logL by chance against a BIC
    penalty of 3·ln(5000)/2 ≈ 12.8, so K = 1, with the mean within 0.02 of 2/7."""
    rng = np.random.default_rng(12)
    s, t = _counts(rng, ((1.0, 2.0, 5.0),), 5_000, 8)
    fit = fit_beta_mixture(s, t)
    assert fit.k == 1
    assert fit.mean() == pytest.approx(2 / 7, abs=0.02)
    assert set(fit.bic) == {1, 2, 3, 4}
    assert fit.bic[1] == pytest.approx(-2 * fit.loglik_by_k[1] + 2 * math.log(5_000))


def test_fit_survives_all_wrong_and_all_right_pools():
    """A pool of only 0/8 and 8/8 counts pushes a and b to their bounds; the fit still returns
    a valid mixture with the right shares."""
    s = np.r_[np.zeros(700, np.int64), np.full(300, 8)]
    fit = fit_beta_mixture(s, np.full(1_000, 8))
    pmf = fit.count_pmf(8)
    assert pmf[0] == pytest.approx(0.7, abs=0.01) and pmf[8] == pytest.approx(0.3, abs=0.01)
    assert all(0.02 <= a <= 1000 and 0.02 <= b <= 1000 for _, a, b in fit.components)


def test_fit_takes_seconds_on_a_large_pool():
    """20,000 prompts at n = 8 (the likelihood runs over the 9 distinct counts)."""
    import time

    rng = np.random.default_rng(13)
    s, t = _counts(rng, DAPO, 20_000, 8)
    fit_beta_mixture(s[:100], t[:100], max_components=2)  # compile outside the timing
    t0 = time.perf_counter()
    fit_beta_mixture(s, t)
    assert time.perf_counter() - t0 < 10.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    num=st.integers(5, 300),
    n_max=st.integers(1, 16),
    a=st.floats(0.05, 20),
    b=st.floats(0.05, 20),
)
def test_fit_is_no_worse_than_the_moment_start(seed, num, n_max, a, b):
    """Whatever the pool (mixed trials, tiny pools, n = 1), the fitted log-likelihood is at
    least that of the method-of-moments Beta the K = 1 fit starts from, and the chosen K's
    likelihood at least the K = 1 one (BIC only picks a larger K for a larger likelihood)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(1, n_max + 1, num)
    s = rng.binomial(t, rng.beta(a, b, num))
    fit = fit_beta_mixture(s, t, max_components=2, rng=seed, n_random_starts=1)
    start = mixture_loglik(s, t, moment_start(s, t))
    assert fit.loglik_by_k[1] >= start - 1e-9 * abs(start)
    assert fit.loglik >= fit.loglik_by_k[1] - 1e-9 * abs(start)


# --------------------------------------------------------------------------- posteriors


def test_posterior_draws_have_the_analytic_mean():
    """For each (s, n) cell, 40,000 draws' mean is within 4.5 standard errors of the analytic
    posterior mean Σ_k π_k (a_k + s)/(a_k + b_k + n); that mean and variance agree with
    numerical integration of p·prior(p)·p^s(1 − p)^(n−s)."""
    rng = np.random.default_rng(21)
    cells = [(0, 8), (3, 8), (8, 8), (5, 16), (1, 1)]
    for s0, n0 in cells:
        reps = 40_000
        s, t = np.full(reps, s0), np.full(reps, n0)
        draws = posterior_rates(s, t, DAPO, rng)
        mean, var = posterior_moments(s[:1], t[:1], DAPO)
        se = math.sqrt(var[0] / reps)
        assert abs(draws.mean() - mean[0]) < 4.5 * se + 1e-4, (s0, n0)
        assert draws.min() >= 1e-4 and draws.max() <= 1 - 1e-4

        def dens(p, s0=s0, n0=n0):
            prior = sum(w * sps.beta.pdf(p, a, b) for w, a, b in DAPO)
            return prior * p**s0 * (1 - p) ** (n0 - s0)

        z = integrate.quad(dens, 0, 1, limit=200, points=[1e-3, 0.999])[0]
        m1 = integrate.quad(lambda p: p * dens(p), 0, 1, limit=200, points=[1e-3, 0.999])[0] / z
        m2 = integrate.quad(lambda p: p * p * dens(p), 0, 1, limit=200, points=[1e-3, 0.999])[0]
        assert mean[0] == pytest.approx(m1, abs=1e-6)
        assert var[0] == pytest.approx(m2 / z - m1 * m1, abs=1e-6)


# --------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("n", [8, 16])
def test_length_fit_recovers_known_parameters(n):
    """5,000 prompts, M = 1,200, τ = 0.35, β = 0.6 (f = 1.6, σ = 0.3 given). The slope's
    standard error here is about 0.015, so β within 0.06 (4 SE); the intercept's about 0.006
    on the log scale, so M within 3%; τ within 0.03. The fit is made under the fitted prior,
    as build_pool does."""
    rng = np.random.default_rng([31, n])
    s, t, m = _synthetic_lengths(rng, DAPO, 5_000, n)
    prior = fit_beta_mixture(s, t).components
    fit = fit_lengths(m, s, t, prior)
    assert fit.median_tokens == pytest.approx(1_200, rel=0.03)
    assert fit.prompt_length_sigma == pytest.approx(0.35, abs=0.03)
    assert fit.difficulty_length_slope == pytest.approx(0.6, abs=0.06)
    assert fit.slope_se < 0.03
    assert {"wrong_length_factor", "sample_length_sigma"} <= set(fit.not_identified)
    assert fit.assumed == {"wrong_length_factor": 1.6, "sample_length_sigma": 0.3}


def test_length_fit_sees_a_flat_difficulty_slope():
    rng = np.random.default_rng(32)
    s, t, m = _synthetic_lengths(rng, DAPO, 5_000, 8, M=600.0, tau=0.2, beta=0.0)
    fit = fit_lengths(m, s, t, DAPO)
    assert abs(fit.difficulty_length_slope) < 0.06
    assert fit.median_tokens == pytest.approx(600, rel=0.03)
    assert fit.prompt_length_sigma == pytest.approx(0.2, abs=0.03)


def test_length_fit_of_a_few_alike_prompts_stays_inside_a_scenarios_bounds():
    """Four prompts whose posterior means barely differ (0 of 4 or 5 correct) leave the slope
    unconstrained (unclamped: -178, and a median of 9e33 tokens): the fit keeps it, and so the
    median, inside what a scenario file accepts."""
    s, t = np.array([0, 0, 0, 0]), np.array([4, 5, 4, 5])
    m = np.array([8.0, 1.0, 8.0, 1.0])
    fit = fit_lengths(m, s, t, DAPO)
    lo, hi = SCENARIO_BOUNDS["difficulty_length_slope"]
    assert lo <= fit.difficulty_length_slope <= hi
    mlo, mhi = SCENARIO_BOUNDS["median_tokens"]
    assert mlo <= fit.median_tokens <= mhi


# --------------------------------------------------------------------------- reading


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


BAD_CSV = [
    ("prompt_id,successes\na,1\n", "missing column trials"),
    ("id,successes,count\na,1,8\n", "missing columns prompt_id, trials"),
    ("prompt_id,successes,trials\na,1,8\nb,1.5,8\n", "row 2: successes '1.5' is not an integer"),
    ("prompt_id,successes,trials\na,one,8\n", "row 1: successes 'one' is not a number"),
    ("prompt_id,successes,trials\na,1,8\nb,,8\n", "row 2: successes is empty"),
    ("prompt_id,successes,trials\na,1,8\nb,2,8\nc,-1,8\n", "row 3: successes '-1' is negative"),
    ("prompt_id,successes,trials\na,0,0\n", "row 1: trials is 0"),
    ("prompt_id,successes,trials\na,1,8\nb,9,8\n", "row 2: successes 9 > trials 8"),
    (
        "prompt_id,successes,trials\na,1,8\nb,2,8\na,3,8\n",
        "rows 1 and 3 have the same prompt_id 'a'",
    ),
    ("prompt_id,successes,trials\na,1,8\n,2,8\n", "row 2: prompt_id is empty"),
    (
        "prompt_id,successes,trials,mean_tokens\na,1,8,900\nb,1,8,0\n",
        "row 2: mean_tokens '0' is not positive and finite",
    ),
    (
        "prompt_id,successes,trials,mean_tokens\na,1,8,inf\n",
        "row 1: mean_tokens 'inf' is not positive and finite",
    ),
    ("prompt_id,successes,trials,domain\na,1,8,math\nb,1,8,\n", "row 2: domain is empty"),
    ("prompt_id,successes,trials\n", "empty file"),
    ("", "empty file"),
]


@pytest.mark.parametrize("text,message", BAD_CSV)
def test_bad_csv_names_the_row_and_the_problem(tmp_path, text, message):
    p = _write(tmp_path, "rates.csv", text)
    with pytest.raises(PoolError) as e:
        read_pass_rates(p)
    assert str(e.value).startswith(f"{p}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_jsonl_names_the_line(tmp_path):
    """JSONL errors name the file line (blank lines count)."""
    good = json.dumps({"prompt_id": "a", "successes": 1, "trials": 8})
    cases = [
        (
            good + "\n\n" + '{"prompt_id": "b", "successes": 9, "trials": 8}\n',
            "line 3: successes 9 > trials 8",
        ),
        (good + "\n{not json\n", "line 2: not JSON"),
        (good + "\n[1, 2]\n", "line 2: not a JSON object"),
        (good + '\n{"prompt_id": "b", "trials": 8}\n', "line 2: missing successes"),
        (good + "\n" + good + "\n", "lines 1 and 2 have the same prompt_id 'a'"),
        (
            good + '\n{"prompt_id": "b", "successes": -2, "trials": 8}\n',
            "line 2: successes -2 is negative",
        ),
        (
            good + '\n{"prompt_id": "b", "successes": true, "trials": 8}\n',
            "line 2: successes True is not a number",
        ),
    ]
    for text, message in cases:
        p = _write(tmp_path, "rates.jsonl", text)
        with pytest.raises(PoolError, match=message):
            read_pass_rates(p)


def test_bad_parquet_names_the_row(tmp_path):
    p = tmp_path / "rates.parquet"
    pd.DataFrame({"prompt_id": [1, 2, 3], "successes": [1, 9, 2], "trials": [8, 8, 8]}).to_parquet(
        p
    )
    with pytest.raises(PoolError, match="row 2: successes 9 > trials 8"):
        read_pass_rates(p)
    pd.DataFrame({"prompt_id": [1, 2], "successes": [1.0, 2.5], "trials": [8, 8]}).to_parquet(p)
    with pytest.raises(PoolError, match="row 2: successes 2.5 is not an integer"):
        read_pass_rates(p)
    pd.DataFrame({"prompt_id": [7, 7], "successes": [1, 2], "trials": [8, 8]}).to_parquet(p)
    with pytest.raises(PoolError, match="rows 1 and 2 have the same prompt_id '7'"):
        read_pass_rates(p)
    nullable = pd.array([1, None], dtype="Int64")
    pd.DataFrame({"prompt_id": [1, 2], "successes": nullable, "trials": [8, 8]}).to_parquet(p)
    with pytest.raises(PoolError, match="row 2: successes is empty"):
        read_pass_rates(p)
    pd.DataFrame({"prompt_id": [1], "trials": [8]}).to_parquet(p)
    with pytest.raises(PoolError, match="missing column successes"):
        read_pass_rates(p)
    p.write_text("not a parquet file")
    with pytest.raises(PoolError, match="cannot read parquet file"):
        read_pass_rates(p)


def test_unknown_type_and_unreadable_file(tmp_path):
    with pytest.raises(PoolError, match="unknown file type '.txt'"):
        read_pass_rates(_write(tmp_path, "rates.txt", "prompt_id,successes,trials\n"))
    with pytest.raises(PoolError, match="cannot read: no such file"):
        read_pass_rates(tmp_path / "absent.csv")


def test_the_three_formats_read_the_same(tmp_path):
    df = pd.DataFrame(
        {
            "prompt_id": ["p1", "p2", "p3"],
            "successes": [0, 3, 8],
            "trials": [8, 8, 8],
            "mean_tokens": [2100.0, 1300.5, 700.0],
            "domain": ["math", "gsm8k", "math"],
            "extra": [1, 2, 3],
        }
    )
    df.to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    df.to_parquet(tmp_path / "r.parquet")
    for name in ("r.csv", "r.jsonl", "r.parquet"):
        pr = read_pass_rates(tmp_path / name)
        assert pr.prompt_id.tolist() == ["p1", "p2", "p3"]
        assert pr.successes.tolist() == [0, 3, 8] and pr.trials.tolist() == [8, 8, 8]
        assert pr.mean_tokens is not None and pr.mean_tokens.tolist() == [2100.0, 1300.5, 700.0]
        assert pr.domain_names == ("math", "gsm8k")


# --------------------------------------------------------------------------- pools


def _pool_file(tmp_path, rng):
    """2,000 prompts in two domains with mean tokens, as parquet."""
    frames = []
    for name, mixture, num in (
        ("hard", ((1.0, 0.5, 4.0),), 1_200),
        ("easy", ((1.0, 4.0, 1.0),), 800),
    ):
        s, t, m = _synthetic_lengths(rng, mixture, num, 8)
        frames.append(
            pd.DataFrame(
                {
                    "prompt_id": [f"{name}-{i}" for i in range(num)],
                    "successes": s,
                    "trials": t,
                    "mean_tokens": m,
                    "domain": name,
                }
            )
        )
    df = pd.concat(frames).sample(frac=1.0, random_state=0)  # domains interleaved
    p = tmp_path / "pool.parquet"
    df.to_parquet(p)
    return p, df


def test_build_pool_plugs_into_a_scenario(tmp_path):
    rng = np.random.default_rng(41)
    path, df = _pool_file(tmp_path, rng)
    pool = build_pool(path, mode="mixture", seed=0)
    assert pool.num_prompts == 2_000 and pool.successes is None
    assert [d[0] for d in pool.domains] == list(dict.fromkeys(df["domain"]))
    shares = {d[0]: d[1] for d in pool.domains}
    assert shares == {"hard": 0.6, "easy": 0.4}
    hard = pool.domain_fits["hard"]
    assert hard.count_pmf(8)[0] == pytest.approx(count_pmf(((1.0, 0.5, 4.0),), 8)[0], abs=0.05)
    assert pool.length is not None
    assert pool.length.difficulty_length_slope == pytest.approx(0.6, abs=0.15)
    fields = pool.scenario_fields()
    scenario = replace(get_scenario("dapo-math"), num_test=256, dim=16, **fields)
    world = build_world(scenario, seed=0)
    assert world.p0.size == 2_000 and world.domain_names == ("hard", "easy")
    assert abs(world.p0[world.domain == 0].mean() - hard.mean()) < 0.03
    text = pool.describe()
    assert "K = " in text and "BIC" in text and "difficulty_length_slope" in text


def test_build_pool_prompts_mode_draws_each_prompt_from_its_posterior(tmp_path):
    rng = np.random.default_rng(42)
    path, df = _pool_file(tmp_path, rng)
    pool = build_pool(path, mode="prompts", seed=0)
    assert pool.successes is not None and pool.trials is not None and pool.prompt_id is not None
    assert pool.domain_index is not None
    assert np.all(np.diff(pool.domain_index) >= 0)  # ordered by domain, as the world lays out
    by_id = df.set_index("prompt_id")
    assert np.array_equal(by_id.loc[pool.prompt_id, "successes"].to_numpy(), pool.successes)
    draws = np.mean([pool.initial_pass_rates(np.random.default_rng(k)) for k in range(200)], axis=0)
    # a prompt's mean draw follows its own counts: all-right prompts high, all-wrong low
    assert draws[pool.successes == 8].mean() > draws[pool.successes == 0].mean() + 0.5
    for d, fit in enumerate(pool.domain_fits.values()):
        sel = pool.domain_index == d
        mean, _ = posterior_moments(pool.successes[sel], pool.trials[sel], fit.components)
        assert np.max(np.abs(draws[sel] - mean)) < 0.1  # 200 draws: SE ≤ 0.5/√200 = 0.035
    with pytest.raises(ValueError, match="mode"):
        build_pool(path, mode="bogus")  # type: ignore[arg-type]


def test_build_pool_without_optional_columns(tmp_path):
    p = _write(
        tmp_path,
        "r.csv",
        "prompt_id,successes,trials\n" + "".join(f"q{i},{i % 9},8\n" for i in range(90)),
    )
    pool = build_pool(p)
    assert pool.length is None and pool.domains == ()
    assert set(pool.scenario_fields()) == {"num_prompts", "pass_rate_mixture"}
    assert "keeps the scenario's fields" in pool.describe()
    tiny = _write(
        tmp_path, "t.csv", "prompt_id,successes,trials,mean_tokens\na,1,8,900\nb,2,8,800\n"
    )
    with pytest.raises(PoolError, match="the length fit needs at least 3 prompts"):
        build_pool(tiny)
