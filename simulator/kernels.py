"""Numba kernels of the learning simulator: sampling, the policy-gradient step, evaluation.

The model (docs/simulator.md#the-learning-model): prompt i has features x_i, difficulty
b_i and, optionally, a memorisation term u_i; logit z_i = x_i·θ + u_i − b_i, success rate
p_i = σ(z_i). A sample's reward is Bernoulli(p_i); its length is log-normal around a per-prompt
median, longer for wrong answers. The score function of a sample is (r − p_i)·x_i for θ and
(r − p_i) for u_i.

The chain model (docs/simulator.md#the-chain-model, a scenario's ``steps_per_prompt`` > 1):
prompt i needs k_i steps, z_ij = x_ij·θ + u_i − b_ij, p_i = Π_j σ(z_ij), and the score is
(r − p_i)·e_i with e_i = Σ_j (1 − σ(z_ij))·x_ij / (1 − p_i). Its kernels (``chain_*``, at the end)
take the ragged step layout (``step_start``, ``Xs``, ``bs``) in place of (X, b); with one step per
prompt they give exactly the one-step kernels' results.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _sigmoid(z):
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(cache=True)
def logit_of(ids, X, theta, u, b):
    out = np.empty(ids.shape[0])
    d = X.shape[1]
    for a in range(ids.shape[0]):
        i = ids[a]
        z = u[i] - b[i]
        for k in range(d):
            z += X[i, k] * theta[k]
        out[a] = z
    return out


@njit(cache=True)
def success_rates(ids, X, theta, u, b):
    z = logit_of(ids, X, theta, u, b)
    for a in range(z.shape[0]):
        z[a] = _sigmoid(z[a])
    return z


@njit(cache=True)
def draw(
    rng,
    ids,
    counts,
    X,
    theta,
    u,
    b,
    log_len,
    wrong_log_shift,
    len_sigma,
    max_tokens,
    answer_correct,
    n_wrong_answers,
    wrong_answer_conc,
):
    """Rewards, lengths and extracted answers of ``counts[a]`` samples of each prompt ``ids[a]``.

    Answers: 0 is the correct answer; a wrong sample's answer is one of ``n_wrong_answers``
    distractors 1..K, drawn with probabilities ∝ 1/k^conc (a dominant wrong answer and a tail),
    the same ranking for every prompt. ``answer_correct`` False skips answers (returns zeros).
    """
    p = success_rates(ids, X, theta, u, b)
    return _draw_at(
        rng,
        ids,
        counts,
        p,
        log_len,
        wrong_log_shift,
        len_sigma,
        max_tokens,
        answer_correct,
        n_wrong_answers,
        wrong_answer_conc,
    )


@njit(cache=True)
def _draw_at(
    rng,
    ids,
    counts,
    p,
    log_len,
    wrong_log_shift,
    len_sigma,
    max_tokens,
    answer_correct,
    n_wrong_answers,
    wrong_answer_conc,
):
    """``draw`` at given success rates ``p[a]`` of prompts ``ids[a]`` (one model or the other)."""
    total = 0
    for a in range(counts.shape[0]):
        total += counts[a]
    pid = np.empty(total, np.int64)
    rew = np.empty(total)
    length = np.empty(total, np.int64)
    answers = np.zeros(total, np.int64)
    cdf = np.empty(max(n_wrong_answers, 1))
    acc = 0.0
    for k in range(n_wrong_answers):
        acc += 1.0 / (k + 1) ** wrong_answer_conc
        cdf[k] = acc
    j = 0
    for a in range(ids.shape[0]):
        i = ids[a]
        pa = p[a]
        mu_ok = log_len[i]
        mu_bad = mu_ok + wrong_log_shift
        for _ in range(counts[a]):
            ok = rng.random() < pa
            tok = int(math.exp((mu_ok if ok else mu_bad) + len_sigma * rng.standard_normal()) + 0.5)
            if tok < 1:
                tok = 1
            elif tok > max_tokens:
                tok = max_tokens
            pid[j] = i
            rew[j] = 1.0 if ok else 0.0
            length[j] = tok
            if answer_correct and not ok and n_wrong_answers > 0:
                x = rng.random() * acc
                k = 0
                while cdf[k] < x and k < n_wrong_answers - 1:
                    k += 1
                answers[j] = k + 1
            j += 1
    return pid, rew, length, answers


@njit(cache=True)
def learn(
    prompt_ids,
    group,
    rewards,
    lengths,
    train_index,
    adv,
    weight,
    generated,
    X,
    theta,
    u,
    b,
    agg,
    ref_len,
    lr,
    lr_u,
    opt,
    m,
    v,
    t,
    beta1,
    beta2,
    adam_eps,
    hist_prompts,
    hist_rollouts,
):
    """One policy-gradient ascent step; returns the gradient norm.

    Loss aggregation ``agg``: 0 token-mean (Σ w·A·s / (Σ L / ref_len)), 1 seq-mean
    (Σ w·A·s / T), 2 seq-mean-token-mean (Σ w·A·s·ref_len/L / T). ``opt`` 0 SGD, 1 Adam on θ;
    u always by SGD with ``lr_u``. Also accumulates the allocation histogram: prompts and rollouts
    per decile of the true success rate at allocation time.
    """
    num_groups = prompt_ids.shape[0]
    d = X.shape[1]
    p = success_rates(prompt_ids, X, theta, u, b)
    _record_histogram(p, generated, hist_prompts, hist_rollouts)
    coef, norm = _group_coefficients(
        num_groups, group, rewards, lengths, train_index, adv, weight, p, agg, ref_len
    )
    if norm <= 0.0:
        return 0.0
    grad = np.zeros(d)
    for g in range(num_groups):
        cg = coef[g] / norm
        if cg == 0.0:
            continue
        i = prompt_ids[g]
        for k in range(d):
            grad[k] += cg * X[i, k]
        if lr_u != 0.0:
            u[i] += lr_u * cg
    return _ascend(grad, theta, lr, opt, m, v, t, beta1, beta2, adam_eps)


@njit(cache=True)
def _record_histogram(p, generated, hist_prompts, hist_rollouts):
    """Prompt visits and rollouts generated per decile of the rate ``p[g]`` of group g."""
    nbins = hist_prompts.shape[0]
    for g in range(p.shape[0]):
        if generated[g] > 0:
            k = int(p[g] * nbins)
            if k >= nbins:
                k = nbins - 1
            hist_prompts[k] += 1
            hist_rollouts[k] += generated[g]


@njit(cache=True)
def _group_coefficients(
    num_groups, group, rewards, lengths, train_index, adv, weight, p, agg, ref_len
):
    """Per group g, Σ_trained w·A·(r − p_g) (times ref_len/L under agg 2), and the normaliser."""
    coef = np.zeros(num_groups)
    norm = 0.0
    n_train = train_index.shape[0]
    for q in range(n_train):
        j = train_index[q]
        g = group[j]
        c = weight[q] * adv[q] * (rewards[j] - p[g])
        if agg == 0:
            norm += lengths[j] / ref_len
        elif agg == 2:
            c *= ref_len / lengths[j]
        coef[g] += c
    if agg != 0:
        norm = float(n_train)
    return coef, norm


@njit(cache=True)
def _ascend(grad, theta, lr, opt, m, v, t, beta1, beta2, adam_eps):
    """Move θ along ``grad`` (SGD, or Adam with its moments m, v at step t); returns ‖grad‖."""
    d = grad.shape[0]
    gnorm = 0.0
    for k in range(d):
        gnorm += grad[k] * grad[k]
    if lr == 0.0:
        return math.sqrt(gnorm)
    if opt == 0:
        for k in range(d):
            theta[k] += lr * grad[k]
    else:
        c1 = 1.0 - beta1**t
        c2 = 1.0 - beta2**t
        for k in range(d):
            m[k] = beta1 * m[k] + (1.0 - beta1) * grad[k]
            v[k] = beta2 * v[k] + (1.0 - beta2) * grad[k] * grad[k]
            theta[k] += lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + adam_eps)
    return math.sqrt(gnorm)


@njit(cache=True)
def mean_success(X, theta, b):
    """Exact test accuracy: mean σ(x_t·θ − b_t) (test prompts have no memorisation term)."""
    n, d = X.shape
    s = 0.0
    for i in range(n):
        z = -b[i]
        for k in range(d):
            z += X[i, k] * theta[k]
        s += _sigmoid(z)
    return s / n


# --------------------------------------------------------------------------------------------
# Per-prompt off-policy gradients (CROPI, docs/methods.md#cropi)
# --------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _log_sigmoid(z):
    """log σ(z), stable for large |z|."""
    if z >= 0.0:
        return -math.log1p(math.exp(-z))
    return z - math.log1p(math.exp(z))


@njit(cache=True)
def sample_log_probs(ids, counts, rewards, X, theta, u, b):
    """log π(r) = r·log p + (1 − r)·log(1 − p) of each sample, p = σ(z) of its prompt.

    Samples come grouped: the first ``counts[0]`` belong to prompt ``ids[0]``, and so on."""
    z = logit_of(ids, X, theta, u, b)
    out = np.empty(rewards.shape[0])
    j = 0
    for a in range(ids.shape[0]):
        lp1 = _log_sigmoid(z[a])  # log p
        lp0 = _log_sigmoid(-z[a])  # log (1 − p)
        for _ in range(counts[a]):
            out[j] = lp1 if rewards[j] > 0.5 else lp0
            j += 1
    return out


@njit(cache=True)
def offpolicy_grpo_gradients(ids, counts, rewards, behaviour_logp, X, theta, u, b, adv_eps):
    """Per-prompt gradient w.r.t. θ of CROPI's off-policy GRPO loss (official ``grpo_loss`` with
    ``--cancel_ppo_clip``, KL term off, one micro-batch per prompt):

        L_k(θ) = −(1/n) Σ_j ρ_j(θ)·A_j,   ρ_j = π_θ(r_j) / π_β(r_j) (unclipped),
        A_j = (r_j − mean r) / (std r + adv_eps), unbiased std over the prompt's n samples,

    so ∇L_k = −(1/n) Σ_j A_j·ρ_j·(r_j − p_k)·x_k with p_k = σ(z_k) at the current θ (and u).
    Row k of the result is that gradient for prompt ``ids[k]``, whose samples are the next
    ``counts[k]`` entries of ``rewards`` / ``behaviour_logp`` (log π_β of each sample). A prompt
    with fewer than two samples or equal rewards has A ≡ 0 and a zero row. The memorisation term u
    shifts p but is not a coordinate of the gradient (θ only)."""
    m = ids.shape[0]
    d = X.shape[1]
    z = logit_of(ids, X, theta, u, b)
    out = np.zeros((m, d))
    j = 0
    for a in range(m):
        n = counts[a]
        s = 0.0
        ss = 0.0
        for q in range(j, j + n):
            s += rewards[q]
            ss += rewards[q] * rewards[q]
        if n > 1:
            mean = s / n
            var = (ss - n * mean * mean) / (n - 1)
            std = math.sqrt(var) if var > 0.0 else 0.0
            za = z[a]
            p = 1.0 / (1.0 + math.exp(-za)) if za >= 0.0 else math.exp(za) / (1.0 + math.exp(za))
            lp1 = _log_sigmoid(za)
            lp0 = _log_sigmoid(-za)
            c = 0.0
            for q in range(j, j + n):
                r = rewards[q]
                adv = (r - mean) / (std + adv_eps)
                if adv != 0.0:
                    lp = lp1 if r > 0.5 else lp0
                    c += adv * math.exp(lp - behaviour_logp[q]) * (r - p)
            c = -c / n
            if c != 0.0:
                i = ids[a]
                for k in range(d):
                    out[a, k] = c * X[i, k]
        j += n
    return out


# --------------------------------------------------------------------------------------------
# Frozen-mode scoring: what a step's allocation buys, exactly (docs/simulator.md#metrics)
# --------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _ipow(x, n):
    """x**n for an integer n ≥ 0 by squaring."""
    out = 1.0
    while n > 0:
        if n & 1:
            out *= x
        x *= x
        n >>= 1
    return out


@njit(cache=True)
def _moment_tables(generated):
    """Per distinct group size n ≥ 2 of the step, for j = 1..n−1: the pmf ratio (n − j + 1)/j of
    S = j to S = j − 1 and c(j) = j(n − j)/n / σ̂(j) (σ̂ the unbiased std of j successes in n;
    eps is added by the caller). ``start[n]`` is the offset of size n's entries."""
    n_max = 0
    for g in range(generated.shape[0]):
        n_max = max(n_max, generated[g])
    start = np.full(n_max + 1, -1, np.int64)
    size = 0
    for g in range(generated.shape[0]):
        n = generated[g]
        if n >= 2 and start[n] < 0:
            start[n] = size
            size += n - 1
    ratio = np.empty(size)
    k_over_std = np.empty(size)
    for n in range(2, n_max + 1):
        o = start[n]
        if o < 0:
            continue
        for j in range(1, n):
            ratio[o + j - 1] = (n - j + 1) / j
            k = j * (n - j) / n
            k_over_std[o + j - 1] = math.sqrt(k / (n - 1))
    return start, ratio, k_over_std


@njit(cache=True)
def _binomial_moments(n, z, pn, qn, e, eps, o, ratio, std):
    """(E c, E c²) of c(S) = S(n − S)/n / (σ̂ + eps), S ~ Bin(n, p), n ≥ 2; p = σ(z),
    pn = p^n, qn = (1 − p)^n, e = min(p, 1 − p)/max(p, 1 − p). The pmf by its
    ratio recursion from the more likely end (c is symmetric in S ↔ n − S, so the tables serve
    both directions), in log space where that end's probability would underflow."""
    start = max(pn, qn)
    if start > 1e-250:
        return _binomial_moments_recursion(n, start, e, eps, o, ratio, std)
    return _binomial_moments_log(n, _log_sigmoid(z), _log_sigmoid(-z), eps, o, std)


@njit(cache=True)
def _binomial_moments_recursion(n, start, e, eps, o, ratio, std):
    """``_binomial_moments`` from the likelier end's probability ``start`` = max(p^n, q^n)."""
    m1 = 0.0
    m2 = 0.0
    pmf = start
    for j in range(1, n):
        pmf *= e * ratio[o + j - 1]
        s = std[o + j - 1]
        c = s * s * (n - 1) / (s + eps)
        m1 += pmf * c
        m2 += pmf * c * c
    return m1, m2


@njit(cache=True)
def _binomial_moments_log(n, lp, lq, eps, o, std):
    """``_binomial_moments`` in log space, from lp = log p and lq = log(1 − p)."""
    m1 = 0.0
    m2 = 0.0
    lc = math.lgamma(n + 1.0)
    for j in range(1, n):
        pmf = math.exp(lc - math.lgamma(j + 1.0) - math.lgamma(n - j + 1.0) + j * lp + (n - j) * lq)
        s = std[o + j - 1]
        c = s * s * (n - 1) / (s + eps)
        m1 += pmf * c
        m2 += pmf * c * c
    return m1, m2


@njit(cache=True)
def allocation_moments(prompt_ids, generated, X, x_sq, theta, u, b, eps):
    """(expected informative groups, pg variance) of a step's allocation at the current rates.

    Group g of prompt i with n = ``generated[g]`` rollouts and S ~ Bin(n, p_i) successes, GRPO
    advantages A_j = (r_j − S/n)/(σ̂ + eps) (unbiased σ̂; a group of one: A = r, verl's rule):
    its term of the θ-gradient is c(S)·x_i with c(S) = Σ_j A_j (r_j − p_i) = S(n − S)/n/(σ̂ + eps)
    (n = 1: S(1 − p_i)/(1 + eps)). Expected informative groups Σ_g 1 − p^n − (1 − p)^n; pg
    variance tr Cov(Σ_g c_g x_g / N) = Σ_g ‖x_i‖² Var(c_g) / N², N = Σ_g n_g, groups independent
    (``x_sq[i]`` = ‖x_i‖²)."""
    z = logit_of(prompt_ids, X, theta, u, b)
    start, ratio, std = _moment_tables(generated)
    total = 0
    for g in range(prompt_ids.shape[0]):
        total += generated[g]
    informative = 0.0
    var = 0.0
    for g in range(prompt_ids.shape[0]):
        n = generated[g]
        if n == 0:
            continue
        e = math.exp(-abs(z[g]))  # min(p, q)/max(p, q)
        hi = 1.0 / (1.0 + e)  # max(p, q)
        p, q = (hi, e * hi) if z[g] >= 0.0 else (e * hi, hi)
        if n == 1:
            vc = p * q * q * q / ((1.0 + eps) * (1.0 + eps))
        else:
            pn = _ipow(p, n)
            qn = _ipow(q, n)
            informative += max(0.0, 1.0 - pn - qn)
            m1, m2 = _binomial_moments(n, z[g], pn, qn, e, eps, start[n], ratio, std)
            vc = max(m2 - m1 * m1, 0.0)
        var += x_sq[prompt_ids[g]] * vc
    if total == 0:
        return informative, 0.0
    return informative, var / (total * total)


# --------------------------------------------------------------------------------------------
# The chain model (docs/simulator.md#the-chain-model): prompt i needs the steps
# j = step_start[i] .. step_start[i + 1] − 1, each with its own features Xs[j] and difficulty
# bs[j]; z_ij = Xs[j]·θ + u_i − bs[j], p_i = Π_j σ(z_ij). With one step per prompt
# (step_start = 0, 1, .., n; Xs = X; bs = b) every kernel below returns exactly what its
# one-step counterpart above does.
# --------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _chain_logits(i, step_start, Xs, theta, ui, bs, zbuf):
    """z_ij of prompt i's steps into ``zbuf[0 .. k_i − 1]``; returns (p_i, 1 − p_i, k_i).

    1 − p = 1 − Π_j σ_j is summed as Σ_j (1 − σ_j)·Π_{l<j} σ_l, a sum of positive terms, so it
    keeps full relative precision as p → 1 (no cancellation); with one step it is σ(−z)."""
    d = Xs.shape[1]
    lo = step_start[i]
    k = step_start[i + 1] - lo
    p = 1.0
    q = 0.0
    for j in range(k):
        z = ui - bs[lo + j]
        for c in range(d):
            z += Xs[lo + j, c] * theta[c]
        zbuf[j] = z
        # σ(z) and 1 − σ(z) = σ(−z) from one exponential, each as ``_sigmoid`` computes it
        if z >= 0.0:
            e = math.exp(-z)
            s, r = 1.0 / (1.0 + e), e / (1.0 + e)
        else:
            e = math.exp(z)
            s, r = e / (1.0 + e), 1.0 / (1.0 + e)
        q += p * r
        p *= s
    return p, q, k


@njit(cache=True, inline="always")
def _chain_weights(zbuf, k, q, wbuf):
    """w_j = (1 − σ_j)/(1 − p) into ``wbuf``; returns Σ_j w_j (the direction's u-coordinate).

    Where 1 − p underflows (every step's logit above ~690) the limit of the weights, the softmax
    of −z_j, is taken instead: (1 − σ_j) → e^(−z_j) and 1 − p → Σ_j e^(−z_j)."""
    total = 0.0
    if q > 1e-300:
        for j in range(k):
            w = _sigmoid(-zbuf[j]) / q
            wbuf[j] = w
            total += w
        return total
    zmin = zbuf[0]
    for j in range(1, k):
        zmin = min(zmin, zbuf[j])
    s = 0.0
    for j in range(k):
        wbuf[j] = math.exp(zmin - zbuf[j])
        s += wbuf[j]
    for j in range(k):
        wbuf[j] /= s
        total += wbuf[j]
    return total


@njit(cache=True, inline="always")
def _chain_log_rates(zbuf, k):
    """(log p, log(1 − p)) from a prompt's step logits, stable at both ends: log p = Σ_j log σ_j,
    log(1 − p) = log Σ_j (1 − σ_j)·Π_{l<j} σ_l by a log-sum-exp."""
    prefix = 0.0
    top = -math.inf
    for j in range(k):
        top = max(top, _log_sigmoid(-zbuf[j]) + prefix)
        prefix += _log_sigmoid(zbuf[j])
    lp = prefix
    prefix = 0.0
    s = 0.0
    for j in range(k):
        s += math.exp(_log_sigmoid(-zbuf[j]) + prefix - top)
        prefix += _log_sigmoid(zbuf[j])
    return lp, top + math.log(s)


@njit(cache=True)
def _max_steps(ids, step_start):
    """The most steps among prompts ``ids`` (at least 1): the size of the per-prompt buffers."""
    k = 1
    for a in range(ids.shape[0]):
        k = max(k, step_start[ids[a] + 1] - step_start[ids[a]])
    return k


@njit(cache=True)
def chain_success_rates(ids, step_start, Xs, theta, u, bs):
    """p_i = Π_j σ(z_ij) of prompts ``ids``."""
    zbuf = np.empty(_max_steps(ids, step_start))
    out = np.empty(ids.shape[0])
    for a in range(ids.shape[0]):
        i = ids[a]
        out[a] = _chain_logits(i, step_start, Xs, theta, u[i], bs, zbuf)[0]
    return out


@njit(cache=True)
def chain_directions(ids, step_start, Xs, theta, u, bs):
    """(p, E, e_u) of prompts ``ids``: the rates, and the score directions

        e_i = Σ_j (1 − σ_ij)·x_ij / (1 − p_i)  (row a of E, for θ),
        e_u,i = Σ_j (1 − σ_ij) / (1 − p_i)     (for u_i),

    so that the score of a sample with reward r is (r − p_i)·e_i: ∂ log p/∂θ = Σ_j (1 − σ_j)·x_j
    and ∂ log(1 − p)/∂θ = −p/(1 − p)·Σ_j (1 − σ_j)·x_j. With one step e_i = x_i, e_u = 1."""
    m = ids.shape[0]
    d = Xs.shape[1]
    kmax = _max_steps(ids, step_start)
    zbuf = np.empty(kmax)
    wbuf = np.empty(kmax)
    p = np.empty(m)
    E = np.zeros((m, d))
    eu = np.empty(m)
    for a in range(m):
        i = ids[a]
        pa, q, k = _chain_logits(i, step_start, Xs, theta, u[i], bs, zbuf)
        p[a] = pa
        eu[a] = _chain_weights(zbuf, k, q, wbuf)
        lo = step_start[i]
        for j in range(k):
            w = wbuf[j]
            for c in range(d):
                E[a, c] += w * Xs[lo + j, c]
    return p, E, eu


@njit(cache=True)
def chain_draw(
    rng,
    ids,
    counts,
    step_start,
    Xs,
    theta,
    u,
    bs,
    log_len,
    wrong_log_shift,
    len_sigma,
    max_tokens,
    answer_correct,
    n_wrong_answers,
    wrong_answer_conc,
):
    """``draw`` under the chain model: a sample succeeds with p_i = Π_j σ(z_ij) (one Bernoulli per
    sample, so the random stream is the one-step model's)."""
    p = chain_success_rates(ids, step_start, Xs, theta, u, bs)
    return _draw_at(
        rng,
        ids,
        counts,
        p,
        log_len,
        wrong_log_shift,
        len_sigma,
        max_tokens,
        answer_correct,
        n_wrong_answers,
        wrong_answer_conc,
    )


@njit(cache=True)
def chain_learn(
    prompt_ids,
    group,
    rewards,
    lengths,
    train_index,
    adv,
    weight,
    generated,
    step_start,
    Xs,
    theta,
    u,
    bs,
    agg,
    ref_len,
    lr,
    lr_u,
    opt,
    m,
    v,
    t,
    beta1,
    beta2,
    adam_eps,
    hist_prompts,
    hist_rollouts,
):
    """``learn`` under the chain model: the step direction is Σ w·A·(r − p_i)·e_i / Z and u_i moves
    by the same sum with e_u,i (``chain_directions``), at the rates the samples were drawn at."""
    num_groups = prompt_ids.shape[0]
    d = Xs.shape[1]
    p, E, eu = chain_directions(prompt_ids, step_start, Xs, theta, u, bs)
    _record_histogram(p, generated, hist_prompts, hist_rollouts)
    coef, norm = _group_coefficients(
        num_groups, group, rewards, lengths, train_index, adv, weight, p, agg, ref_len
    )
    if norm <= 0.0:
        return 0.0
    grad = np.zeros(d)
    for g in range(num_groups):
        cg = coef[g] / norm
        if cg == 0.0:
            continue
        for k in range(d):
            grad[k] += cg * E[g, k]
        if lr_u != 0.0:
            u[prompt_ids[g]] += lr_u * cg * eu[g]
    return _ascend(grad, theta, lr, opt, m, v, t, beta1, beta2, adam_eps)


@njit(cache=True)
def chain_mean_success(step_start, Xs, theta, bs):
    """Exact test accuracy under the chain model: mean over test prompts of Π_j σ(x_tj·θ − b_tj)
    (no memorisation term)."""
    n = step_start.shape[0] - 1
    zbuf = np.empty(_max_steps(np.arange(n), step_start))
    s = 0.0
    for i in range(n):
        s += _chain_logits(i, step_start, Xs, theta, 0.0, bs, zbuf)[0]
    return s / n


@njit(cache=True)
def chain_sample_log_probs(ids, counts, rewards, step_start, Xs, theta, u, bs):
    """``sample_log_probs`` under the chain model: log p = Σ_j log σ(z_ij) for a success,
    log(1 − p) (``_chain_log_rates``) for a failure."""
    zbuf = np.empty(_max_steps(ids, step_start))
    out = np.empty(rewards.shape[0])
    j = 0
    for a in range(ids.shape[0]):
        i = ids[a]
        k = _chain_logits(i, step_start, Xs, theta, u[i], bs, zbuf)[2]
        lp1, lp0 = _chain_log_rates(zbuf, k)
        for _ in range(counts[a]):
            out[j] = lp1 if rewards[j] > 0.5 else lp0
            j += 1
    return out


@njit(cache=True)
def chain_offpolicy_grpo_gradients(
    ids, counts, rewards, behaviour_logp, step_start, Xs, theta, u, bs, adv_eps
):
    """``offpolicy_grpo_gradients`` under the chain model: ∇ρ_j = ρ_j·(r_j − p_k)·e_k, so the row of
    prompt k is −(1/n) Σ_j A_j·ρ_j·(r_j − p_k)·e_k (``chain_directions``), θ only."""
    m = ids.shape[0]
    d = Xs.shape[1]
    kmax = _max_steps(ids, step_start)
    zbuf = np.empty(kmax)
    wbuf = np.empty(kmax)
    out = np.zeros((m, d))
    j = 0
    for a in range(m):
        n = counts[a]
        s = 0.0
        ss = 0.0
        for q in range(j, j + n):
            s += rewards[q]
            ss += rewards[q] * rewards[q]
        if n > 1:
            mean = s / n
            var = (ss - n * mean * mean) / (n - 1)
            std = math.sqrt(var) if var > 0.0 else 0.0
            i = ids[a]
            p, qa, k = _chain_logits(i, step_start, Xs, theta, u[i], bs, zbuf)
            lp1, lp0 = _chain_log_rates(zbuf, k)
            c = 0.0
            for q in range(j, j + n):
                r = rewards[q]
                adv = (r - mean) / (std + adv_eps)
                if adv != 0.0:
                    lp = lp1 if r > 0.5 else lp0
                    c += adv * math.exp(lp - behaviour_logp[q]) * (r - p)
            c = -c / n
            if c != 0.0:
                _chain_weights(zbuf, k, qa, wbuf)
                lo = step_start[i]
                for jj in range(k):
                    cw = c * wbuf[jj]
                    for kk in range(d):
                        out[a, kk] += cw * Xs[lo + jj, kk]
        j += n
    return out


@njit(cache=True)
def chain_allocation_moments(prompt_ids, generated, step_start, Xs, theta, u, bs, eps):
    """``allocation_moments`` under the chain model: a group's θ-gradient term is c(S)·e_i with the
    same c(S) (the score is (r − p)·e_i), so pg variance = Σ_g ‖e_g‖² Var(c_g) / N², with e_g at the
    current θ; S ~ Bin(n, p_i), p_i = Π_j σ(z_ij)."""
    p, E, _ = chain_directions(prompt_ids, step_start, Xs, theta, u, bs)
    d = Xs.shape[1]
    zbuf = np.empty(_max_steps(prompt_ids, step_start))
    start, ratio, std = _moment_tables(generated)
    total = 0
    for g in range(prompt_ids.shape[0]):
        total += generated[g]
    informative = 0.0
    var = 0.0
    for g in range(prompt_ids.shape[0]):
        n = generated[g]
        if n == 0:
            continue
        i = prompt_ids[g]
        pg, q, k = _chain_logits(i, step_start, Xs, theta, u[i], bs, zbuf)
        if n == 1:
            vc = pg * q * q * q / ((1.0 + eps) * (1.0 + eps))
        else:
            pn = _ipow(pg, n)
            qn = _ipow(q, n)
            informative += max(0.0, 1.0 - pn - qn)
            top = max(pn, qn)
            if top > 1e-250:
                e = min(pg, q) / max(pg, q)
                m1, m2 = _binomial_moments_recursion(n, top, e, eps, start[n], ratio, std)
            else:
                lp, lq = _chain_log_rates(zbuf, k)
                m1, m2 = _binomial_moments_log(n, lp, lq, eps, start[n], std)
            vc = max(m2 - m1 * m1, 0.0)
        e_sq = 0.0
        for c in range(d):
            e_sq += E[g, c] * E[g, c]
        var += e_sq * vc
    if total == 0:
        return informative, 0.0
    return informative, var / (total * total)
