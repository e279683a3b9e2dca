"""Recovery of the pass-rate pool fits (simulator/pools.py, docs/simulator.md#pools-from-pass-rates).

    python scripts/pool_recovery.py                 # 5,000 prompts, seeds 0-4
    python scripts/pool_recovery.py --prompts 20000 --seeds 3

Mixture fit: for each truth (the built-in scenarios' mixtures and a bimodal pool) and n = 8, 16,
draw the prompts' rates, binomial counts, fit, and print over the seeds the chosen K and the
largest errors of the fitted count distribution P(s | n) (worst cell, share all-wrong, share
all-right) and of the mean rate. Length fit: per-prompt mean tokens sampled as the simulator
does (dapo-math's rates, M = 1,200, τ = 0.35, β = 0.6, f = 1.6, σ = 0.3), without a cap and with
the scenarios' 4,096-token cap, and the fitted M, τ, β (mean ± sd over the seeds). Last, the
time of one fit of 20,000 prompts at n = 8.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from simulator.pools import count_pmf, fit_beta_mixture, fit_lengths, mixture_mean
from simulator.scenarios import _initial_pass_rates, get_scenario

TRUTHS = {
    "dapo-math": get_scenario("dapo-math").pass_rate_mixture,
    "easy": get_scenario("easy").pass_rate_mixture,
    "hard": get_scenario("hard").pass_rate_mixture,
    "bimodal": ((0.5, 20.0, 60.0), (0.5, 60.0, 20.0)),
}


def mean_tokens(rng, mixture, num, n, cap, M=1200.0, tau=0.35, beta=0.6, f=1.6, sig=0.3):
    p0 = _initial_pass_rates(rng, num, mixture)
    mu = math.log(M) + tau * rng.standard_normal(num) + beta * (0.5 - p0)
    ok = rng.random((num, n)) < p0[:, None]
    lengths = np.exp(
        mu[:, None] + np.where(ok, 0.0, math.log(f)) + sig * rng.standard_normal((num, n))
    )
    lengths = np.clip(np.floor(lengths + 0.5), 1, cap)
    return ok.sum(axis=1), np.full(num, n), lengths.mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=5_000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    N = args.prompts
    print(f"mixture fit, {N:,} prompts, seeds 0-{args.seeds - 1} (max abs error over the seeds)")
    print("truth      n   K chosen     P(s|n) cell  all-wrong  all-right  mean")
    for name, truth in TRUTHS.items():
        for n in (8, 16):
            ks, cell, zero, full, mean = [], 0.0, 0.0, 0.0, 0.0
            for seed in range(args.seeds):
                rng = np.random.default_rng([seed, n])
                s = rng.binomial(n, _initial_pass_rates(rng, N, truth))
                fit = fit_beta_mixture(s, np.full(N, n), rng=seed)
                err = fit.count_pmf(n) - count_pmf(truth, n)
                ks.append(fit.k)
                cell = max(cell, float(np.abs(err).max()))
                zero, full = max(zero, abs(err[0])), max(full, abs(err[n]))
                mean = max(mean, abs(fit.mean() - mixture_mean(truth)))
            kk = ",".join(map(str, ks))
            print(
                f"{name:<10} {n:<3} {kk:<12} {cell:<12.4f} {zero:<10.4f} {full:<10.4f} {mean:.4f}"
            )
    print(f"\nlength fit, {N:,} prompts (truth M 1200, tau 0.35, beta 0.6), mean ± sd over seeds")
    for cap in (10**9, 4_096):
        for n in (8, 16):
            rows = []
            for seed in range(args.seeds):
                rng = np.random.default_rng([seed, n, 1])
                s, t, m = mean_tokens(rng, TRUTHS["dapo-math"], N, n, cap)
                L = fit_lengths(m, s, t, fit_beta_mixture(s, t, rng=seed).components)
                rows.append((L.median_tokens, L.prompt_length_sigma, L.difficulty_length_slope))
            a = np.array(rows)
            mu, sd = a.mean(axis=0), a.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(3)
            label = "no cap" if cap > 10**8 else f"cap {cap}"
            print(
                f"{label:<9} n={n:<3} M {mu[0]:7.1f} ± {sd[0]:4.1f}   tau {mu[1]:.3f} ± {sd[1]:.3f}"
                f"   beta {mu[2]:.3f} ± {sd[2]:.3f}"
            )
    rng = np.random.default_rng(99)
    s = rng.binomial(8, _initial_pass_rates(rng, 20_000, TRUTHS["dapo-math"]))
    fit_beta_mixture(s[:100], np.full(100, 8), max_components=2)  # compile
    t0 = time.perf_counter()
    fit_beta_mixture(s, np.full(20_000, 8))
    print(f"\none fit of 20,000 prompts at n = 8, K = 1..4: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
