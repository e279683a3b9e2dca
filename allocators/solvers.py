"""Solvers for the allocation problem Knapsack RL and CoBA-RL share (docs/methods.md#solvers).

Both methods solve, over the prompts i of one group ("effective" prompts for Knapsack RL, the
exploration set for CoBA-RL)::

    maximise  Σ_i v_i(k_i)   subject to  Σ_i k_i = W,  0 ≤ k_i ≤ K

where k_i is the number of rollouts prompt i gets on top of a common base N0 (Knapsack: min_n,
CoBA: n_low), K the per-prompt cap on those extra rollouts (max_n − min_n, n_up − n_low) and
v_i(k) = V(N0 + k, p_i) a per-prompt value:

| family               | V(N, p)                                                | source          |
|----------------------|--------------------------------------------------------|-----------------|
| ``KNAPSACK``         | (1 − p^N − (1 − p)^N) · p (1 − p)²                      | docs/methods.md#knapsack            |
| ``COBA``             | (1 − exp(−N · p̃(1 − p̃)/τ)) · BetaPDF(p̃; α, β), p̃ clipped | docs/methods.md#coba          |

With Knapsack's quirk Q1 (``zero_k0``), v_i(0) = 0 instead of V(N0, p_i). If W exceeds n·K, every
prompt gets K and W − n·K stays unplaced (the callers decide where it goes: Knapsack's Q2).

Solvers, all Numba-compiled, behind ``solve(problem, budget, method)``:

``dp``       the exact-capacity multiple-choice DP exactly as Knapsack RL's ``dp_core_numba``
             formulates it: dp[i][w] = max(dp[i−1][w] + v_i(0), max_{1≤k≤min(K,w)}
             dp[i−1][w−k] + v_i(k)), −∞ for unreachable cells, option k = 0 first, then k
             ascending, strict improvement; values computed afresh in every cell (as the official
             code does); backtrack from the largest reachable w ≤ W. O(n·W·K) time, O(n·W)
             memory. The reference.
``dp_table`` the same recursion, tie rules and backtrack with each prompt's K + 1 values
             tabulated once: identical allocation, a fairer (faster) DP to compare against.
``greedy``   CoBA-RL's heap greedy (``_allocate_beta_greedy_internal``): every prompt starts at
             k = 0; a max-heap holds each prompt's next marginal gain v(k+1) − v(k), computed as
             a difference of values as CoBA does; pop the largest (ties: smaller index first, the
             order of heapq's (−gain, index) tuples), give it one rollout, push its next gain
             while k < K; stop when W is spent or the heap is empty. O(W log n).
``fast``     our exact threshold solver for concave values (below). O(n) passes.

Why a greedy or a threshold is exact (derived, docs/methods.md#solvers): the increments of both families,
g(N → N+1) = p q² · (p^N q + q^N p) and BetaPDF · e^{−N a}(1 − e^{−a}) with a = p̃(1−p̃)/τ, fall
with N, and under Q1 the first increment v(1) − 0 = V(N0 + 1) still exceeds the second for
N0 ≥ 1, so every v_i is concave in k. For separable concave objectives under Σ k = W and box
bounds, taking the W largest increments overall is optimal (exchange argument), and the DP's
optimum has the same objective (allocations can differ where gains tie).

The fast solver. With each prompt's increments non-increasing in k, the optimum takes every
increment above a threshold (the W-th largest increment overall) and fills the ties at it. It
works in log space: lg_i(k) = ln g_i(k), n_i(L) = #{k : lg_i(k) ≥ L}, C(L) = Σ_i n_i(L).

1. Log-increments, computed without cancellation: Knapsack lg = icpt − s·k + ln(1 + ρ^{N−1})
   (the dominant of the two terms of p q²(p^N q + q^N p) is linear in k, s = −ln max(p, q);
   ρ = min(p, q)/max(p, q)); under Q1 lg(1) = ln V(N0 + 1). CoBA lg = icpt − s·k exactly
   (s = a). Both are non-increasing in k in floating point too.
2. Approximate threshold on the model count Σ clamp(floor((icpt − L)/s)) (a multiply, a clamp,
   a conversion per prompt): a Newton step, then secant steps, bisection as safeguard. From
   65,536 prompts on it starts from a systematic sample of 16,384 prompts, and for Knapsack
   (whose model count is low by a few percent) the sample's exact counts correct the target.
3. Exact counts at that L: the model's count moved while the true increments next to it say
   so (cheap bounds on ln(1 + ρ^{N−1}) decide most prompts without a transcendental), listing
   the prompts that have an increment within ±δ of L (δ: the model's uncertainty).
4. Exact bracket C(L_lo) ≥ W ≥ C(L_hi): counts at the window's far edge L ± δ over the listed
   prompts only (beyond it, rarely, over all prompts: secant steps on the exact count, or the
   next level of increments where the count is flat).
5. Tie-aware fill: every prompt gets n_i(L_hi); the r = W − C(L_hi) missing units are the r
   largest candidate increments between the two ends, found with one ``np.partition``, ties to
   the smaller prompt index (the heap greedy's order).

Its allocation is the W largest increments, so its objective equals the DP's and the greedy's up
to floating-point rounding of the values (the tests check it against a brute-force optimum, the
DP and the greedy; ``bench solvers`` reports the gap). For speed, logarithms of ≥ 4,096 prompts
come from numpy's vectorised ufuncs, and scratch arrays are kept between calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

KNAPSACK = 0
COBA = 1
SOLVERS = ("fast", "greedy", "dp", "dp_table")


# --------------------------------------------------------------------------------------------
# The problem
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One allocation problem: per-prompt value parameters, base N0 and cap K on extra rollouts.

    ``p``: the rate each value is evaluated at (Knapsack: p̂; CoBA: p̃, already clipped);
    ``w``: CoBA's Beta pdf weight per prompt (unused by Knapsack); ``tau``: CoBA's τ;
    ``zero_k0``: Knapsack's Q1 (v(0) = 0).
    """

    kind: int
    p: np.ndarray
    w: np.ndarray
    tau: float
    zero_k0: bool
    base: int
    cap: int

    @property
    def size(self) -> int:
        return int(self.p.shape[0])


def knapsack_problem(
    p: np.ndarray, min_n: int = 2, max_n: int = 128, k0_value: str = "zero"
) -> Problem:
    """Knapsack RL's problem over effective prompts (0 < p̂ < 1): N = min_n + k, k ≤ max_n − min_n;
    ``k0_value="zero"`` is the official DP's v(0) = 0 (Q1), ``"natural"`` uses V(min_n, p̂)."""
    if min_n < 1:
        raise ValueError("min_n must be >= 1 (the values are concave from N = 1 on)")
    if max_n < min_n:
        raise ValueError("max_n must be >= min_n")
    if k0_value not in ("zero", "natural"):
        raise ValueError(f"k0_value must be 'zero' or 'natural', not {k0_value!r}")
    p = np.ascontiguousarray(p, np.float64)
    return Problem(
        KNAPSACK, p, np.zeros_like(p), 1.0, k0_value == "zero", int(min_n), int(max_n - min_n)
    )


def coba_problem(
    p: np.ndarray,
    alpha: float,
    beta: float,
    tau: float,
    n_low: int = 2,
    n_up: int = 128,
    smoothing: float = 0.01,
) -> Problem:
    """CoBA-RL's problem over the exploration set: p̃ = clip(p, s, 1 − s), weight BetaPDF(p̃; α, β)
    (non-finite → 1e-10, as ``_beta_pdf``), N = n_low + k, k ≤ n_up − n_low."""
    if n_low < 0 or n_up < n_low:
        raise ValueError("need 0 <= n_low <= n_up")
    if not tau > 0:
        raise ValueError("tau must be > 0")
    ps = np.clip(np.asarray(p, np.float64), smoothing, 1.0 - smoothing)
    w = beta_pdf(ps, float(alpha), float(beta))
    return Problem(
        COBA, np.ascontiguousarray(ps), w, float(tau), False, int(n_low), int(n_up - n_low)
    )


# --------------------------------------------------------------------------------------------
# Values, as the official codes compute them
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _value(kind, p, w, tau, n):
    """V(n, p): Knapsack's ``(1 - p**n - (1-p)**n) * p * (1-p)**2`` or CoBA's
    ``(1 - exp(-n / tau * p * (1 - p))) * pdf``, in the official codes' order of operations."""
    if kind == KNAPSACK:
        q = 1.0 - p
        return (1.0 - p**n - q**n) * p * (q**2)
    return (1.0 - math.exp(-float(n) / tau * p * (1.0 - p))) * w


@njit(cache=True)
def _item_value(kind, zero_k0, p, w, tau, base, k):
    if zero_k0 and k == 0:
        return 0.0
    return _value(kind, p, w, tau, base + k)


@njit(cache=True)
def _beta_pdf(ps, alpha, beta):
    out = np.empty(ps.shape[0])
    log_b = math.log(math.exp(math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)))
    for i in range(ps.shape[0]):
        x = min(max(ps[i], 1e-10), 1.0 - 1e-10)
        v = math.exp((alpha - 1.0) * math.log(x) + (beta - 1.0) * math.log(1.0 - x) - log_b)
        out[i] = v if math.isfinite(v) else 1e-10
    return out


def beta_pdf(p: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Beta(α, β) density at ``p`` via lgamma, as CoBA's ``_beta_pdf`` (p clipped to
    [1e-10, 1 − 1e-10]; a non-finite result becomes 1e-10)."""
    return _beta_pdf(np.ascontiguousarray(p, np.float64), float(alpha), float(beta))


@njit(cache=True)
def _objective(kind, zero_k0, p, w, tau, base, extra):
    total = 0.0
    for i in range(p.shape[0]):
        total += _item_value(kind, zero_k0, p[i], w[i], tau, base, extra[i])
    return total


def objective(problem: Problem, extra: np.ndarray) -> float:
    """Σ_i v_i(k_i) with the official value formulas (the quantity every solver maximises)."""
    pr = problem
    return float(
        _objective(pr.kind, pr.zero_k0, pr.p, pr.w, pr.tau, pr.base, np.asarray(extra, np.int64))
    )


def values(problem: Problem, n: np.ndarray) -> np.ndarray:
    """V(N_i, p_i) per prompt (no Q1: the value of N rollouts)."""
    pr = problem
    return _values(pr.kind, pr.p, pr.w, pr.tau, np.asarray(n, np.int64))


@njit(cache=True)
def _values(kind, p, w, tau, n):
    out = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        out[i] = _value(kind, p[i], w[i], tau, n[i])
    return out


# --------------------------------------------------------------------------------------------
# The dynamic program (Knapsack RL's dp_core_numba formulation)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _dp(kind, zero_k0, p, w, tau, base, cap, budget, per_cell):
    m = p.shape[0]
    extra = np.zeros(m, np.int64)
    if m == 0 or budget <= 0:
        return extra
    width = budget + 1
    prev = np.full(width, -np.inf)
    prev[0] = 0.0
    cur = np.empty(width)
    choice = np.empty((m, width), np.int16)
    vals = np.empty(cap + 1)
    for i in range(m):
        pi, wi = p[i], w[i]
        for k in range(cap + 1):
            vals[k] = _item_value(kind, zero_k0, pi, wi, tau, base, k)
        v0 = vals[0]
        for c in range(width):
            best = -np.inf
            bk = -1
            if prev[c] != -np.inf:
                best = prev[c] + v0
                bk = 0
            kmax = cap if cap < c else c
            if per_cell:
                for k in range(1, kmax + 1):
                    if prev[c - k] == -np.inf:
                        continue
                    cand = prev[c - k] + _value(kind, pi, wi, tau, base + k)
                    if cand > best:
                        best = cand
                        bk = k
            else:
                for k in range(1, kmax + 1):
                    cand = prev[c - k] + vals[k]  # -inf stays -inf and never wins
                    if cand > best:
                        best = cand
                        bk = k
            cur[c] = best
            choice[i, c] = bk
        prev, cur = cur, prev
    c = budget
    while c > 0 and prev[c] == -np.inf:
        c -= 1
    for i in range(m - 1, -1, -1):
        k = choice[i, c]
        extra[i] = k
        c -= k
    return extra


# --------------------------------------------------------------------------------------------
# The heap greedy (CoBA-RL's _allocate_beta_greedy_internal)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _before(g1, i1, g2, i2):
    """Heap order of heapq's (−gain, index) tuples: larger gain first, then smaller index."""
    return g1 > g2 or (g1 == g2 and i1 < i2)


@njit(cache=True)
def _sift_down(hg, hi, size, pos):
    g, i = hg[pos], hi[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and _before(hg[right], hi[right], hg[child], hi[child]):
            child = right
        if _before(hg[child], hi[child], g, i):
            hg[pos], hi[pos] = hg[child], hi[child]
            pos = child
        else:
            break
    hg[pos], hi[pos] = g, i


@njit(cache=True)
def _greedy(kind, zero_k0, p, w, tau, base, cap, budget):
    m = p.shape[0]
    extra = np.zeros(m, np.int64)
    if m == 0 or budget <= 0 or cap <= 0:
        return extra
    hg = np.empty(m)
    hi = np.empty(m, np.int64)
    for i in range(m):
        hg[i] = _item_value(kind, zero_k0, p[i], w[i], tau, base, 1) - _item_value(
            kind, zero_k0, p[i], w[i], tau, base, 0
        )
        hi[i] = i
    size = m
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(hg, hi, size, pos)
    left = budget
    while left > 0 and size > 0:
        i = hi[0]
        extra[i] += 1
        left -= 1
        k = extra[i]
        if k < cap:
            hg[0] = _item_value(kind, zero_k0, p[i], w[i], tau, base, k + 1) - _item_value(
                kind, zero_k0, p[i], w[i], tau, base, k
            )
        else:
            size -= 1
            hg[0], hi[0] = hg[size], hi[size]
        _sift_down(hg, hi, size, 0)
    return extra


# --------------------------------------------------------------------------------------------
# The fast exact solver
# --------------------------------------------------------------------------------------------
# It works with log-increments. For prompt i and its k-th extra rollout (k ≥ 1, N = base + k − 1):
#     Knapsack   lg(k) = icpt − s·k + log1p(ρ^{N−1}),  the log of p q² (p^N q + q^N p): the
#                dominant term's log is linear in k (icpt, s = −ln max(p, q)), the other term's
#                ratio to it is ρ^{N−1}, ρ = min(p, q)/max(p, q) (lrho = ln ρ; 0 at p = 1/2);
#                under Q1 lg(1) = ln V(base + 1) (g1 holds V(base + 1))
#     CoBA       lg(k) = icpt − s·k,  the log of w (1 − e^{−a}) e^{−N a}, s = a = p̃(1 − p̃)/τ
# Both are non-increasing in k, also in floating point (sums of non-increasing rounded terms).
# The model count floor((icpt − L)/s) ignores the log1p term, so it is exact for CoBA up to
# rounding and a lower bound for Knapsack; the exact count corrects it by evaluating lg next to it.
_LOG2 = 0.6931471805599453


@njit(cache=True)
def _lg(two, zero_k0, base, icpt, s, lrho, g1, k):
    """Log-increment of the k-th extra rollout (k ≥ 1) of one prompt."""
    if zero_k0 and k == 1:
        return math.log(g1)
    v = icpt - k * s
    if two:
        v += math.log1p(math.exp((base + k - 2) * lrho))
    return v


@njit(cache=True)
def _eps_bound(u):
    """Upper bound of ln(1 + e^{−u}), u ≥ 0, without transcendentals: e^{−u} ≤ R = 1/(1 + u +
    u²/2 + u³/6 + u⁴/24), ln(1 + x) ≤ x − x²/2 + x³/3 on [0, 1], and ≤ ln 2."""
    r = 1.0 / (1.0 + u * (1.0 + u * (0.5 + u * (1.0 / 6.0 + u * (1.0 / 24.0)))))
    return min(_LOG2, r * (1.0 - r * (0.5 - r / 3.0)))


@njit(cache=True)
def _above(two, zero_k0, base, icpt, s, lrho, g1, k, L):
    """lg(k) ≥ L, deciding from cheap bounds where they suffice."""
    if zero_k0 and k == 1:
        return math.log(g1) >= L
    v = icpt - k * s
    if v >= L:
        return True  # the log1p term is ≥ 0
    if not two:
        return False
    gap = L - v
    if gap > _LOG2:
        return False  # the log1p term is ≤ ln 2
    u = -(base + k - 2) * lrho  # the log1p term is ln(1 + e^{−u})
    if _eps_bound(u) < gap:
        return False
    return v + math.log1p(math.exp(-u)) >= L


@njit(cache=True)
def _model_count(L, zero_k0, cap, gicpt, inv, g1, n_items):
    """The model's count at log-threshold L, Σ clamp(floor((gicpt − L)/s)), and its slope −dC/dL
    (branch-free: a divide, a clamp and a conversion per prompt)."""
    lam = math.exp(L)
    lowest = 1.0 if zero_k0 else 0.0
    fcap = float(cap)
    tot = 0
    slope = 0.0
    for i in range(n_items):
        x = (gicpt[i] - L) * inv[i]
        live = (not zero_k0) or g1[i] >= lam
        tot += int(min(max(x, lowest), fcap)) if live else 0
        slope += inv[i] if (live and lowest <= x < fcap) else 0.0
    return tot, slope


@njit(cache=True)
def _exact_count(two, zero_k0, base, ic, gic, si, iv, lr, gi, L, lam, lo_k, hi_k):
    """#{k : lg(k) ≥ L} for one prompt, known to lie in [lo_k, hi_k]: the model's guess, moved
    while the increments next to it say so."""
    if lo_k >= hi_k:
        return lo_k
    lowest = 0
    if zero_k0:  # k = 1 decides first; compare in linear space unless too close to call
        if gi < lam * (1.0 - 1e-12) or (gi <= lam * (1.0 + 1e-12) and not math.log(gi) >= L):
            return lo_k
        lowest = 1
    x = (gic - L) * iv
    if x >= hi_k:
        n = hi_k
    elif x >= lowest:
        n = int(x)
    else:
        n = lowest
    if n < lo_k:
        n = lo_k
    floor_n = max(lo_k, lowest)
    while n > floor_n and not _above(two, zero_k0, base, ic, si, lr, gi, n, L):
        n -= 1
    while n < hi_k and _above(two, zero_k0, base, ic, si, lr, gi, n + 1, L):
        n += 1
    return n


@njit(cache=True)
def _near_pass(L, delta, two, zero_k0, base, cap, icpt, gicpt, s, inv, lrho, g1, m, out, near):
    """Exact counts at L for every prompt; ``near`` lists (a superset of) the prompts with an
    increment within [L − delta, L + delta), the only ones whose count can change inside that
    window, found from cheap bounds (lg(k) ≥ icpt − k·s, and for Knapsack lg(k) ≤ icpt − k·s +
    min(ln 2, e^{−u}) with e^{−u} bounded by a rational function).
    Returns (total count, number listed, total count of the unlisted prompts)."""
    lam = math.exp(L)
    lam_up = math.exp(L + delta) * (1.0 + 1e-12)
    lam_dn = math.exp(L - delta) * (1.0 - 1e-12)
    tot = 0
    rest = 0
    nl = 0
    for i in range(m):
        ic, si, lr, gi = icpt[i], s[i], lrho[i], g1[i]
        n = _exact_count(two, zero_k0, base, ic, gicpt[i], si, inv[i], lr, gi, L, lam, 0, cap)
        out[i] = n
        tot += n
        close = False
        if ic > -np.inf:
            if n >= 1:  # the last increment taken: below L + delta?
                if zero_k0 and n == 1:
                    close = gi < lam_up
                else:
                    close = ic - n * si < L + delta
            if not close and n < cap:  # the first one left: at or above L − delta?
                if zero_k0 and n == 0:
                    close = gi >= lam_dn
                else:
                    v = ic - (n + 1) * si
                    if two:
                        u = -(base + n - 1) * lr
                        v += _eps_bound(u)
                    close = v >= L - delta
        if close:
            near[nl] = i
            nl += 1
        else:
            rest += n
    return tot, nl, rest


@njit(cache=True)
def _list_pass(
    L, two, zero_k0, base, cap, icpt, gicpt, s, inv, lrho, g1, idx, nidx, bound, mode, out
):
    """Exact counts at L for the prompts idx[:nidx]; ``mode`` 0: each in [0, cap], 1: in
    [0, bound[i]], 2: in [bound[i], cap]. Returns their sum."""
    lam = math.exp(L)
    tot = 0
    for j in range(nidx):
        i = idx[j]
        lo_k = bound[i] if mode == 2 else 0
        hi_k = bound[i] if mode == 1 else cap
        n = _exact_count(
            two, zero_k0, base, icpt[i], gicpt[i], s[i], inv[i], lrho[i], g1[i], L, lam, lo_k, hi_k
        )
        out[i] = n
        tot += n
    return tot


@njit(cache=True)
def _level(up, two, zero_k0, base, cap, icpt, s, lrho, g1, idx, nidx, n):
    """The next log-increment a threshold moving away from the current counts ``n`` meets:
    upwards the smallest increment taken, downwards the largest one left."""
    best = np.inf if up else -np.inf
    for j in range(nidx):
        i = idx[j]
        if icpt[i] == -np.inf:
            continue
        if up and n[i] >= 1:
            v = _lg(two, zero_k0, base, icpt[i], s[i], lrho[i], g1[i], n[i])
            if v < best:
                best = v
        elif not up and n[i] < cap:
            v = _lg(two, zero_k0, base, icpt[i], s[i], lrho[i], g1[i], n[i] + 1)
            if v > best:
                best = v
    return best


@njit(cache=True)
def _next_break(b_L, zero_k0, cap, gicpt, s, inv, g1, m):
    """The largest L < b_L at which the model count changes (the next jump going down); with
    many tied prompts the count jumps there by a whole block."""
    lam = math.exp(b_L)
    lowest = 1 if zero_k0 else 0
    best = -np.inf
    for i in range(m):
        if gicpt[i] == -np.inf:
            continue
        if zero_k0 and g1[i] < lam:
            if best == -np.inf or g1[i] > math.exp(best):
                best = math.log(g1[i])
            continue
        x = (gicpt[i] - b_L) * inv[i]
        n = cap if x >= cap else (int(x) if x >= lowest else lowest)
        if n < cap:
            cand = gicpt[i] - (n + 1) * s[i]
            if cand > best:
                best = cand
    return best


@njit(cache=True)
def _next_up(L, zero_k0, cap, gicpt, s, inv, g1, m):
    """The smallest L' > L at which the model count changes (the next jump going up)."""
    lam = math.exp(L)
    lowest = 1 if zero_k0 else 0
    best = np.inf
    best_g1 = np.inf
    for i in range(m):
        if gicpt[i] == -np.inf or (zero_k0 and g1[i] < lam):
            continue
        x = (gicpt[i] - L) * inv[i]
        n = cap if x >= cap else (int(x) if x >= lowest else lowest)
        if zero_k0 and n <= 1:
            if g1[i] < best_g1:
                best_g1 = g1[i]
        elif n >= 1:
            cand = gicpt[i] - n * s[i]
            if cand < best:
                best = cand
    if best_g1 < np.inf:
        best = min(best, math.log(best_g1))
    return best


@njit(cache=True)
def _threshold(zero_k0, cap, gicpt, s, inv, g1, m, target, L, a_L, b_L, tol, slope0):
    """Model threshold: a Newton step from L (slope ``slope0`` if > 0, else the local one), then
    secant steps through the last two points, bisection of the bracket [a_L, b_L] (count ≥ target
    at a_L, < target at b_L) whenever a step leaves it or stalls. On a plateau of the count (tied
    prompts move together) it steps to the count's next level; if that crosses the target, the
    search ends there. Returns L and the count's slope −dC/dL: the last
    secant's where known, and the local one (which ignores the jumps of ties and of Q1's first
    increments)."""
    prev_L = np.nan
    prev_f = np.nan
    slope = slope0
    local = 0.0
    shrink = b_L - a_L
    jumped = False
    for it in range(200):
        c, local = _model_count(L, zero_k0, cap, gicpt, inv, g1, m)
        f = float(c - target)
        if abs(f) <= tol:
            break
        if jumped and (f > 0) != (prev_f > 0):
            break  # the count jumps over the target at one level (ties)
        if f > 0:
            a_L = L
        else:
            b_L = L
        if b_L - a_L <= 1e-9 * (1.0 + abs(a_L)):
            break
        flat = prev_f == f
        if not np.isnan(prev_f) and not flat:
            slope = (prev_f - f) / (L - prev_L)
        elif slope <= 0.0:
            slope = local
        jumped = False
        if flat:  # on a plateau: go to the count's next level
            if f > 0:
                nxt = _next_up(L, zero_k0, cap, gicpt, s, inv, g1, m)
                nxt += 1e-12 * (1.0 + abs(nxt))
            else:
                nxt = _next_break(L, zero_k0, cap, gicpt, s, inv, g1, m)
                nxt -= 1e-12 * (1.0 + abs(nxt))
            jumped = True
        else:
            nxt = L + f / slope if slope > 0.0 else np.nan
            if it % 4 == 3 and b_L - a_L > 0.5 * shrink:
                nxt = np.nan  # the bracket has not halved in 4 steps: bisect
        if it % 4 == 3:
            shrink = b_L - a_L
        if not (a_L < nxt < b_L):
            nxt = 0.5 * (a_L + b_L)
            jumped = False
        prev_L, prev_f = L, f
        L = nxt
    return L, max(slope, 1e-12), max(local, 1e-12)


@njit(cache=True)
def _fast(kind, zero_k0, p, w, tau, base, cap, budget, fw, iw, pre):
    m = p.shape[0]
    if m == 0 or budget <= 0 or cap <= 0:
        return np.zeros(m, np.int64)
    two = kind == KNAPSACK
    icpt, gicpt, s, lrho, g1, inv = fw[0], fw[1], fw[2], fw[3], fw[4], fw[5]
    n_lo, n_hi, idx = iw[0], iw[1], iw[2]
    have_pre = pre.shape[1] == m  # logs computed by numpy's vectorised ufuncs (large m)
    # ---- 1. per-prompt log-increment parameters (flat prompts: all increments 0) ------------
    # gicpt: the intercept the guesses use; for Knapsack it adds a rough ε at the average
    # prompt's boundary (a rational bound of e^{−u}, then x(1 − x/2) for log1p).
    n_flat = 0
    big = -np.inf
    small = np.inf
    mean_b = budget / m
    sum_icpt = 0.0
    sum_s = 0.0
    for i in range(m):
        pi = p[i]
        ok = True
        if two:
            q = 1.0 - pi
            ok = pi > 0.0 and q > 0.0
            if ok:
                if have_pre:
                    lp = pre[0, i]
                    lq = pre[1, i]
                else:
                    lp = math.log(pi)
                    lq = math.log1p(-pi)
                if lp >= lq:
                    icpt[i] = lp + 3.0 * lq + (base - 1) * lp
                    s[i] = -lp
                    lrho[i] = lq - lp
                else:
                    icpt[i] = 2.0 * lp + 2.0 * lq + (base - 1) * lq
                    s[i] = -lq
                    lrho[i] = lp - lq
                u = -(base + mean_b - 1.0) * lrho[i]
                x = 1.0 / (1.0 + u * (1.0 + u * (0.5 + u / 6.0)))
                gicpt[i] = icpt[i] + x * (1.0 - 0.5 * x)
                top = lp + 2.0 * lq + 1.0  # ln(p q²) bounds every increment
                if zero_k0:
                    n1 = base + 1
                    g1[i] = pi * q * q * (1.0 - pi**n1 - q**n1)
                    ok = g1[i] > 0.0
        else:
            a = pi * (1.0 - pi) / tau
            c = w[i] * -math.expm1(-a)
            ok = c > 0.0 and a > 0.0
            if ok:
                icpt[i] = (pre[0, i] if have_pre else math.log(c)) - (base - 1) * a
                gicpt[i] = icpt[i]
                s[i] = a
                lrho[i] = -np.inf
                top = icpt[i] - a + 1.0
        if not ok:
            n_flat += 1
            icpt[i] = -np.inf
            gicpt[i] = -np.inf
            s[i] = 1.0
            inv[i] = 1.0
            lrho[i] = -np.inf
            g1[i] = 0.0
            continue
        inv[i] = 1.0 / s[i]
        bot = icpt[i] - cap * s[i]
        if top > big:
            big = top
        if bot < small:
            small = bot
        sum_icpt += gicpt[i]
        sum_s += s[i]
    live = m - n_flat
    extra = np.empty(m, np.int64)
    if budget >= live * cap:
        # every positive increment is taken; the rest tie at 0 and go in index order
        left = budget - live * cap
        for i in range(m):
            if icpt[i] > -np.inf:
                extra[i] = cap
            else:
                t = min(cap, left)
                extra[i] = t
                left -= t
        return extra
    # ---- 2. approximate threshold on the model count ------------------------------------------
    a_L = small - 1.0
    b_L = big + 1.0
    L0 = (sum_icpt - (budget / live + 0.5) * sum_s) / live  # the average prompt's threshold
    L0 = min(max(L0, a_L), b_L)
    tol = max(2.0, 1e-4 * budget)
    target = float(budget)
    spread = 0.0  # uncertainty of the model's bias, in counts
    if m >= 65536:  # a systematic sample of every stride-th prompt
        stride = m // 16384
        sub = m // stride
        scale = m / sub
        sw = np.empty((6, sub))
        for j in range(sub):
            i = j * stride
            sw[0, j] = icpt[i]
            sw[1, j] = gicpt[i]
            sw[2, j] = s[i]
            sw[3, j] = lrho[i]
            sw[4, j] = g1[i]
            sw[5, j] = inv[i]
        L0, slope, _ = _threshold(
            zero_k0,
            cap,
            sw[1],
            sw[2],
            sw[5],
            sw[4],
            sub,
            budget / scale,
            L0,
            a_L,
            b_L,
            max(1.0, 1e-3 * budget / scale),
            0.0,
        )
        slope *= scale
    else:
        slope = 0.0
    L, slope, local = _threshold(
        zero_k0, cap, gicpt, s, inv, g1, m, target, L0, a_L, b_L, tol, slope
    )
    if two and m >= 65536:
        # Knapsack's model count is off by a few percent; the sample's exact counts at L
        # estimate by how much (3 standard errors give the window below); aim again, twice
        lowest = 1.0 if zero_k0 else 0.0
        bias = 0.0
        for _ in range(2):
            lam = math.exp(L)
            diff = 0
            diff2 = 0
            for j in range(sub):
                e = _exact_count(
                    two,
                    zero_k0,
                    base,
                    sw[0, j],
                    sw[1, j],
                    sw[2, j],
                    sw[5, j],
                    sw[3, j],
                    sw[4, j],
                    L,
                    lam,
                    0,
                    cap,
                )
                if zero_k0 and sw[4, j] < lam:
                    mod = 0
                else:
                    mod = int(min(max((sw[1, j] - L) * sw[5, j], lowest), float(cap)))
                diff += e - mod
                diff2 += (e - mod) * (e - mod)
            spread = 3.0 * math.sqrt(diff2 + 1.0) * scale
            if abs(diff * scale - bias) <= tol:
                break
            bias = diff * scale
            L, slope, local = _threshold(
                zero_k0, cap, gicpt, s, inv, g1, m, target - bias, L, a_L, b_L, tol, slope
            )
    # ---- 3. exact counts at L; the prompts near L ---------------------------------------------
    if two and m < 65536:
        spread = 0.01 * budget  # Knapsack's model bias, unestimated below the sampling size
    delta = (spread + 4.0 * tol + 8.0) / local
    tot, nl, rest = _near_pass(
        L, delta, two, zero_k0, base, cap, icpt, gicpt, s, inv, lrho, g1, m, n_lo, idx
    )
    if tot == budget:
        for i in range(m):
            extra[i] = n_lo[i]
        return extra
    # ---- 4. exact bracket C(L_lo) ≥ budget ≥ C(L_hi): the window's far edge, over the near
    #         prompts; beyond it (rare), over all prompts with doubling steps -------------------
    window = True
    if tot > budget:  # L is a lower end
        c_lo = tot
        L2 = L + delta
        c_hi = rest + _list_pass(
            L2, two, zero_k0, base, cap, icpt, gicpt, s, inv, lrho, g1, idx, nl, n_lo, 1, n_hi
        )
        if c_hi > budget:
            window = False
            for j in range(nl):
                n_lo[idx[j]] = n_hi[idx[j]]
            for i in range(m):
                idx[i] = i
            nl = m
            prev_L, prev_c = L, tot
            L_lo, c_lo = L2, c_hi
            while True:  # secant steps on the exact count; past the next level if it is flat
                if prev_c > c_lo:
                    L2 = L_lo + 1.1 * (c_lo - budget) * (L_lo - prev_L) / (prev_c - c_lo)
                else:
                    lv = _level(True, two, zero_k0, base, cap, icpt, s, lrho, g1, idx, m, n_lo)
                    L2 = max(L_lo + delta, np.nextafter(lv, np.inf))
                c_hi = _list_pass(
                    L2,
                    two,
                    zero_k0,
                    base,
                    cap,
                    icpt,
                    gicpt,
                    s,
                    inv,
                    lrho,
                    g1,
                    idx,
                    m,
                    n_lo,
                    1,
                    n_hi,
                )
                if c_hi <= budget:
                    break
                prev_L, prev_c = L_lo, c_lo
                L_lo, c_lo = L2, c_hi
                n_lo[:] = n_hi
    else:  # L is an upper end
        c_hi = tot
        for i in range(m):
            n_hi[i] = n_lo[i]
        L2 = L - delta
        c_lo = rest + _list_pass(
            L2, two, zero_k0, base, cap, icpt, gicpt, s, inv, lrho, g1, idx, nl, n_hi, 2, n_lo
        )
        if c_lo < budget:
            window = False
            for j in range(nl):
                n_hi[idx[j]] = n_lo[idx[j]]
            for i in range(m):
                idx[i] = i
            nl = m
            prev_L, prev_c = L, tot
            L_hi, c_hi = L2, c_lo
            while True:  # secant steps on the exact count; down to the next level if flat
                if prev_c < c_hi:
                    L2 = L_hi - 1.1 * (budget - c_hi) * (prev_L - L_hi) / (c_hi - prev_c)
                else:
                    lv = _level(False, two, zero_k0, base, cap, icpt, s, lrho, g1, idx, m, n_hi)
                    L2 = min(L_hi - delta, lv)
                c_lo = _list_pass(
                    L2,
                    two,
                    zero_k0,
                    base,
                    cap,
                    icpt,
                    gicpt,
                    s,
                    inv,
                    lrho,
                    g1,
                    idx,
                    m,
                    n_hi,
                    2,
                    n_lo,
                )
                if c_lo >= budget:
                    break
                prev_L, prev_c = L_hi, c_hi
                L_hi, c_hi = L2, c_lo
                n_hi[:] = n_lo
    # ---- 5. tie-aware fill: the r largest candidate increments between the two ends ----------
    if window:  # the unlisted prompts have the same count at both ends
        for i in range(m):
            extra[i] = n_lo[i]
    for j in range(nl):
        i = idx[j]
        extra[i] = n_hi[i]
    r = budget - c_hi
    cands = c_lo - c_hi
    if r == 0:
        return extra
    cg = np.empty(cands)
    c = 0
    for j in range(nl):
        i = idx[j]
        for k in range(n_hi[i] + 1, n_lo[i] + 1):
            cg[c] = _lg(two, zero_k0, base, icpt[i], s[i], lrho[i], g1[i], k)
            c += 1
    t_val = np.partition(cg, cands - r)[cands - r]  # the r-th largest candidate
    above = 0
    for c in range(cands):
        if cg[c] > t_val:
            above += 1
    ties = r - above
    c = 0
    for j in range(nl):  # idx is in prompt order: ties go to the smaller index
        i = idx[j]
        for _k in range(n_hi[i] + 1, n_lo[i] + 1):
            g = cg[c]
            c += 1
            if g > t_val:
                extra[i] += 1
            elif g == t_val and ties > 0:
                extra[i] += 1
                ties -= 1
    return extra


_WORK: dict[str, np.ndarray] = {}


def _workspace(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Scratch arrays for ``_fast``, kept between calls: fresh memory costs page faults that
    would dominate at 10⁶ prompts."""
    f = _WORK.get("f")
    if f is None or f.shape[1] < m:
        _WORK["f"] = f = np.empty((6, max(m, 1024)))
        _WORK["i"] = np.empty((3, max(m, 1024)), np.int32)
    return f[:, :m], _WORK["i"][:, :m]


_NO_PRE = np.empty((2, 0))


def _prelogs(pr: Problem) -> np.ndarray:
    """The fast solver's logarithms, from numpy's vectorised ufuncs where that pays (many
    prompts): Knapsack ln p and ln(1 − p), CoBA ln(w (1 − e^{−a})). Rows of zeros-length below."""
    if pr.size < 4096:
        return _NO_PRE
    out = np.empty((2, pr.size))
    if pr.kind == KNAPSACK:
        with np.errstate(divide="ignore"):
            np.log(pr.p, out=out[0])
            np.log1p(-pr.p, out=out[1])
    else:
        a = pr.p * (1.0 - pr.p) / pr.tau
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log(pr.w * -np.expm1(-a), out=out[0])
    return out


# --------------------------------------------------------------------------------------------
# The one interface
# --------------------------------------------------------------------------------------------
def solve(problem: Problem, budget: int, method: str = "fast") -> np.ndarray:
    """Extra rollouts k_i per prompt (int64) maximising Σ v_i(k_i) with Σ k_i = min(budget, n·K)
    and 0 ≤ k_i ≤ K. ``method``: one of ``SOLVERS``."""
    pr = problem
    budget = int(budget)
    args = (pr.kind, pr.zero_k0, pr.p, pr.w, pr.tau, pr.base, pr.cap)
    if method == "fast":
        return _fast(*args, budget, *_workspace(pr.size), _prelogs(pr))
    if method == "greedy":
        return _greedy(*args, budget)
    if method in ("dp", "dp_table"):
        if pr.cap > np.iinfo(np.int16).max:
            raise ValueError("the DP stores choices as int16: cap must be < 32768")
        return _dp(*args, max(0, min(budget, pr.size * pr.cap)), method == "dp")
    raise ValueError(f"unknown solver {method!r} (solvers: {', '.join(SOLVERS)})")
