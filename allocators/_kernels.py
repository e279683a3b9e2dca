"""Numba kernels shared by the contract, the advantage rules, the statistics and the metrics.

Everything here runs once per training step on arrays of a few thousand samples; the kernels keep
the per-step Python overhead of the simulator small (issue 2's speed target).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def group_counts(num_groups, group, rewards, lengths, train_index):
    generated = np.zeros(num_groups, np.int64)
    successes = np.zeros(num_groups, np.int64)
    tokens = np.zeros(num_groups, np.int64)
    trained = np.zeros(num_groups, np.int64)
    trained_successes = np.zeros(num_groups, np.int64)
    for j in range(group.shape[0]):
        g = group[j]
        generated[g] += 1
        tokens[g] += lengths[j]
        if rewards[j] > 0.5:
            successes[g] += 1
    for k in range(train_index.shape[0]):
        j = train_index[k]
        g = group[j]
        trained[g] += 1
        if rewards[j] > 0.5:
            trained_successes[g] += 1
    return generated, successes, tokens, trained, trained_successes


@njit(cache=True)
def grpo_advantages(num_groups, group, rewards, eps, scale_by_std):
    """(r - mean_g) / (std_g + eps) per sample, unbiased std; verl's rule for a group of one
    sample: mean 0, std 1 (so A = r)."""
    n = np.zeros(num_groups, np.int64)
    s = np.zeros(num_groups)
    ss = np.zeros(num_groups)
    for j in range(group.shape[0]):
        g = group[j]
        n[g] += 1
        s[g] += rewards[j]
        ss[g] += rewards[j] * rewards[j]
    mean = np.zeros(num_groups)
    std = np.ones(num_groups)
    for g in range(num_groups):
        if n[g] > 1:
            mean[g] = s[g] / n[g]
            var = (ss[g] - n[g] * mean[g] * mean[g]) / (n[g] - 1)
            std[g] = np.sqrt(var) if var > 0.0 else 0.0
    out = np.empty(group.shape[0])
    for j in range(group.shape[0]):
        g = group[j]
        if scale_by_std:
            out[j] = (rewards[j] - mean[g]) / (std[g] + eps)
        else:
            out[j] = rewards[j] - mean[g]
    return out


@njit(cache=True)
def stats_update(
    prompt_ids,
    group,
    rewards,
    step,
    count,
    success,
    visits,
    last_step,
    last_n,
    last_s,
    ring,
    ring_pos,
    ring_fill,
    win_n,
    win_s,
    win_pos,
    win_fill,
    ema_n,
    ema_s,
    ema_decay,
):
    """Record one step's rewards. ``prompt_ids`` are the batch's prompts (one per group);
    ``group``/``rewards`` every sample of the step in generation order."""
    num_groups = prompt_ids.shape[0]
    vn = np.zeros(num_groups, np.int64)
    vs = np.zeros(num_groups, np.int64)
    k_ring = ring.shape[1]
    for j in range(group.shape[0]):
        g = group[j]
        i = prompt_ids[g]
        hit = 1 if rewards[j] > 0.5 else 0
        vn[g] += 1
        vs[g] += hit
        if k_ring > 0:
            ring[i, ring_pos[i]] = hit
            ring_pos[i] = (ring_pos[i] + 1) % k_ring
            if ring_fill[i] < k_ring:
                ring_fill[i] += 1
    w = win_n.shape[1]
    for g in range(num_groups):
        if vn[g] == 0:
            continue
        i = prompt_ids[g]
        count[i] += vn[g]
        success[i] += vs[g]
        visits[i] += 1
        last_step[i] = step
        last_n[i] = vn[g]
        last_s[i] = vs[g]
        if w > 0:
            win_n[i, win_pos[i]] = vn[g]
            win_s[i, win_pos[i]] = vs[g]
            win_pos[i] = (win_pos[i] + 1) % w
            if win_fill[i] < w:
                win_fill[i] += 1
        ema_n[i] = ema_decay * ema_n[i] + vn[g]
        ema_s[i] = ema_decay * ema_s[i] + vs[g]


@njit(cache=True)
def last_k_mean(ids, k, ring, ring_pos, ring_fill):
    out = np.empty(ids.shape[0])
    cap = ring.shape[1]
    for a in range(ids.shape[0]):
        i = ids[a]
        m = min(k, ring_fill[i])
        if m == 0:
            out[a] = np.nan
            continue
        s = 0
        pos = ring_pos[i]
        for _t in range(m):
            pos = pos - 1 if pos > 0 else cap - 1
            s += ring[i, pos]
        out[a] = s / m
    return out


@njit(cache=True)
def window_sums(ids, w, win_n, win_s, win_pos, win_fill):
    """(successes, totals) summed over each prompt's latest ``w`` visits."""
    s_out = np.zeros(ids.shape[0], np.int64)
    n_out = np.zeros(ids.shape[0], np.int64)
    cap = win_n.shape[1]
    for a in range(ids.shape[0]):
        i = ids[a]
        m = min(w, win_fill[i])
        pos = win_pos[i]
        for _t in range(m):
            pos = pos - 1 if pos > 0 else cap - 1
            n_out[a] += win_n[i, pos]
            s_out[a] += win_s[i, pos]
    return s_out, n_out
