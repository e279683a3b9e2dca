"""Numba kernels of the learning simulator: sampling, the policy-gradient step, evaluation.

The model (design.md, "The simulator's learning model"): prompt i has features x_i, difficulty
b_i and, optionally, a memorisation term u_i; logit z_i = x_i·θ + u_i − b_i, success rate
p_i = σ(z_i). A sample's reward is Bernoulli(p_i); its length is log-normal around a per-prompt
median, longer for wrong answers. The score function of a sample is (r − p_i)·x_i for θ and
(r − p_i) for u_i.
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
def draw(rng, ids, counts, X, theta, u, b, log_len, wrong_log_shift, len_sigma, max_tokens,
         answer_correct, n_wrong_answers, wrong_answer_conc):
    """Rewards, lengths and extracted answers of ``counts[a]`` samples of each prompt ``ids[a]``.

    Answers: 0 is the correct answer; a wrong sample's answer is one of ``n_wrong_answers``
    distractors 1..K, drawn with probabilities ∝ 1/k^conc (a dominant wrong answer and a tail),
    the same ranking for every prompt. ``answer_correct`` False skips answers (returns zeros).
    """
    total = 0
    for a in range(counts.shape[0]):
        total += counts[a]
    pid = np.empty(total, np.int64)
    rew = np.empty(total)
    length = np.empty(total, np.int64)
    answers = np.zeros(total, np.int64)
    p = success_rates(ids, X, theta, u, b)
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
def learn(prompt_ids, group, rewards, lengths, train_index, adv, weight, generated,
          X, theta, u, b, agg, ref_len, lr, lr_u, opt, m, v, t, beta1, beta2, adam_eps,
          hist_prompts, hist_rollouts):
    """One policy-gradient ascent step; returns the gradient norm.

    Loss aggregation ``agg``: 0 token-mean (Σ w·A·s / (Σ L / ref_len)), 1 seq-mean
    (Σ w·A·s / T), 2 seq-mean-token-mean (Σ w·A·s·ref_len/L / T). ``opt`` 0 SGD, 1 Adam on θ;
    u always by SGD with ``lr_u``. Also accumulates the allocation histogram: prompts and rollouts
    per decile of the true success rate at allocation time.
    """
    num_groups = prompt_ids.shape[0]
    d = X.shape[1]
    p = success_rates(prompt_ids, X, theta, u, b)
    nbins = hist_prompts.shape[0]
    for g in range(num_groups):
        if generated[g] > 0:
            k = int(p[g] * nbins)
            if k >= nbins:
                k = nbins - 1
            hist_prompts[k] += 1
            hist_rollouts[k] += generated[g]
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
    gnorm = 0.0
    for k in range(d):
        gnorm += grad[k] * grad[k]
    if lr == 0.0:
        return math.sqrt(gnorm)
    if opt == 0:
        for k in range(d):
            theta[k] += lr * grad[k]
    else:
        c1 = 1.0 - beta1 ** t
        c2 = 1.0 - beta2 ** t
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
