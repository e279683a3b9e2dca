"""GRESO's adaptive sampling batch against a plain restatement of the official loop, and the
compiled pre-rollout filter (docs/methods.md#greso).

The restatement follows ``Infini-AI-Lab/GRESO`` ``verl/trainer/ppo/ray_trainer.py`` ``fit``
(commit b2778431): dataloader batches accumulate until the adaptive sampling batch is reached,
zero-variance groups are dropped, and while the kept groups fall short the next sampling batch
is int(reminder / (1 − zero-variance ratio) / n × 1.25), at most the default and at least 64
(scaled here), the round being the last when that estimate is within the default.
"""

from __future__ import annotations

import numpy as np
import pytest

from allocators.base import PromptStream, Samples, Step
from allocators.greso import filter_prompts
from allocators.registry import parse_spec


class ScriptedSource:
    """Rewards from a script: prompt p's group of n is mixed (one success) when ``mixed[p]``,
    else all correct or all wrong (``easy[p]``); the same at every visit."""

    def __init__(self, mixed: np.ndarray, easy: np.ndarray):
        self.mixed = mixed
        self.easy = easy

    def begin_step(self, index: int) -> None:
        pass

    def sample(self, prompt_ids, counts):
        rewards = []
        for p, n in zip(prompt_ids, counts):
            if self.mixed[p]:
                rewards += [1.0] + [0.0] * (int(n) - 1)
            else:
                rewards += [1.0 if self.easy[p] else 0.0] * int(n)
        total = int(np.sum(counts))
        return Samples.from_request(prompt_ids, counts, np.array(rewards), np.ones(total, np.int64))


def official_steps(order, chunk, target, default_bs, min_bs, n, mixed, steps, inflation=1.25):
    """The official ``fit`` loop (dynamic_sampling, no prompt skipped: every streak is zero in the
    first epoch), over the dataloader's batches of ``chunk`` prompts in ``order``. Per step: the
    sizes of its sampling batches and the prompts it trains on."""
    out = []
    sizes: list[int] = []
    acc: list[int] = []
    dyn: list[int] = []  # dynamic_sampling_batch (kept groups)
    adaptive, last = default_bs, False
    for start in range(0, len(order), chunk):
        acc.extend(int(p) for p in order[start : start + chunk])
        if len(acc) < adaptive:
            continue
        batch, acc = acc, []
        sizes.append(len(batch))
        kept = [p for p in batch if mixed[p]]
        dyn.extend(kept)
        zero_variance_ratio = 1 - len(kept) / len(batch)
        if len(dyn) * n < target * n and not last:
            reminder = target * n - len(dyn) * n
            estimated = int(reminder / (1 - zero_variance_ratio) / n * inflation)
            if estimated <= default_bs:
                last = True
            adaptive = min(estimated, default_bs)
            adaptive = max(adaptive, min_bs)
            continue
        out.append((sizes, dyn[:target]))
        sizes, dyn = [], []
        adaptive, last = default_bs, False
        if len(out) == steps:
            break
    return out


def harness_steps(mixed, easy, target, n, steps, seed):
    pool = mixed.size
    alloc = parse_spec("greso").build()
    stream = PromptStream(pool, np.random.default_rng(seed))
    order = stream.export()[0].copy()
    alloc.reset(pool, np.random.default_rng(seed + 1))
    source = ScriptedSource(mixed, easy)
    out = []
    for t in range(steps):
        r = alloc.step(Step(t, stream, source, target * n, target))
        alloc.observe(r)
        assert stream.epoch == 0  # the comparison stays in the first epoch
        sizes = np.bincount(r.samples.group, minlength=r.prompt_ids.size) > 0
        # the sampling batch of each round: groups are numbered in round order
        bounds = np.flatnonzero(np.diff(np.r_[0, r.samples.group]) < 0)
        assert bounds.size == 0 and sizes.all()
        trained = np.unique(r.samples.group[r.train.index])
        out.append((r.info["gen_rounds"], r.prompt_ids, r.prompt_ids[trained]))
    return order, out


@pytest.mark.parametrize(
    "share, seed", [(0.15, 0), (0.25, 1), (0.35, 2), (0.5, 3), (0.7, 4), (0.25, 5)]
)
def test_greso_sampling_batches_follow_the_official_loop(share, seed):
    """Lockstep with the restatement over a scripted reward stream: the same sampling batches
    round by round (sizes and prompts), the same number of rounds, the same trained prompts,
    including steps that end short after the last round."""
    rng = np.random.default_rng(seed)
    pool, target, n, steps = 6000, 64, 8, 8
    mixed = rng.random(pool) < share
    easy = rng.random(pool) < 0.5
    order, got = harness_steps(mixed, easy, target, n, steps, seed)
    # the harness's scaled settings: default 1.5 x 64 = 96, min 0.25 x 64 = 16, chunk 8
    want = official_steps(order, 8, target, 96, 16, n, mixed, steps)
    assert len(want) == steps
    for (rounds, prompts, trained), (sizes, kept) in zip(got, want):
        assert rounds == len(sizes)
        assert prompts.size == sum(sizes)
        assert trained.tolist() == kept


def test_greso_round_sizes_match_the_restatement_exactly():
    """The prompts of every round, in order, are the official sampling batches."""
    rng = np.random.default_rng(11)
    pool, target, n = 6000, 64, 8
    mixed = rng.random(pool) < 0.2
    easy = rng.random(pool) < 0.5
    order, got = harness_steps(mixed, easy, target, n, 6, 11)
    want = official_steps(order, 8, target, 96, 16, n, mixed, 6)
    pos = 0
    for (_rounds, prompts, _trained), (sizes, _kept) in zip(got, want):
        assert prompts.tolist() == order[pos : pos + sum(sizes)].tolist()
        pos += sum(sizes)
    # with 20% mixed groups: rounds of 96 until the estimate falls within the default, then a
    # last, smaller round; step 2 ends one group short after it (the last-round rule)
    assert [s for s, _ in want[:3]] == [[96, 96, 96, 56], [96, 96, 96, 64], [96, 96, 96, 72]]
    assert [len(k) for _, k in want[:3]] == [64, 63, 64]


def _filter(pool_order, streak_easy, streak_hard, k, chunk, p_easy, p_hard, seed, taken=None):
    taken = np.zeros(pool_order.size, np.bool_) if taken is None else taken
    return filter_prompts(
        pool_order.copy(),
        0,
        0,
        np.random.default_rng(seed),
        k,
        chunk,
        taken,
        streak_easy,
        streak_hard,
        np.random.default_rng(seed + 1),
        p_easy,
        p_hard,
        0.01,
    )


def test_greso_filter_skips_with_the_streak_probabilities():
    pool = 20_000
    order = np.random.default_rng(0).permutation(pool)
    easy = np.zeros(pool, np.int64)
    hard = np.zeros(pool, np.int64)
    easy[:5000] = 1  # keep 0.5
    easy[5000:10000] = 3  # keep 0.125
    hard[10000:15000] = 20  # keep max(0.5^20, 0.01) = 0.01
    kept, skipped, _order, pos, epoch = _filter(order, easy, hard, 6000, 10, 0.5, 0.5, 3)
    assert epoch == 0 and kept.size + skipped == pos and np.unique(kept).size == kept.size
    assert 6000 <= kept.size < 6010  # whole chunks until k are kept
    served = np.bincount(order[:pos] // 5000, minlength=4)
    rate = np.bincount(kept // 5000, minlength=4) / served
    assert rate == pytest.approx([0.5, 0.125, 0.01, 1.0], abs=0.03)


def test_greso_filter_crosses_epochs_like_the_stream():
    """Chunks go on past the epoch's end: a new random order, the prompts left of the old
    epoch postponed to its end; one call never returns a prompt twice; skipped prompts are
    served again in the next epoch."""
    pool = 50
    order = np.arange(pool)
    easy = np.zeros(pool, np.int64)
    easy[:40] = 30  # kept with probability 0.01
    kept, skipped, new_order, pos, epoch = _filter(order, easy, easy * 0, 12, 7, 0.5, 0.5, 5)
    assert epoch >= 1 and np.unique(kept).size == kept.size and kept.size >= 12
    assert np.sort(new_order).tolist() == list(range(pool))
    assert set(kept.tolist()) >= set(range(40, 50))  # the easy-free prompts are always kept
    # a chunk straddling the end: the old epoch's rest goes last in the new order
    order = np.arange(pool)
    _kept, _sk, new_order, pos, epoch = filter_prompts(
        order.copy(),
        45,
        0,
        np.random.default_rng(1),
        7,
        7,
        np.zeros(pool, np.bool_),
        np.zeros(pool, np.int64),
        np.zeros(pool, np.int64),
        np.random.default_rng(2),
        0.5,
        0.5,
        0.01,
    )
    assert epoch == 1 and pos == 2 and new_order[-5:].tolist() == [45, 46, 47, 48, 49]
    assert _kept.tolist() == [45, 46, 47, 48, 49, *new_order[:2].tolist()]
