"""GRESO (docs/methods.md#greso; Zheng et al. 2025, "Act Only When It Pays", arXiv 2506.02177):
pre-rollout probabilistic skipping of prompts that were zero-variance at their latest visits, on
top of DAPO-style dynamic sampling.

Faithful to ``Infini-AI-Lab/GRESO`` (``verl/trainer/ttis/presampling_selector.py``
``DataProfiler.filter_examples_all_probabilistic``, ``verl/trainer/ppo/ray_trainer.py`` ``fit``,
``train-scripts/math_qwen_1_5b_dm_greso.sh``: strategy ``all_probabilistic``, p_easy = p_hard =
0.5, target_zero_variance = 0.25, sampling batch 384 and training batch 256 prompts, n = 8):

1. **Pre-rollout filter.** Each prompt's trace is the mean reward of each of its visits (every
   sampled group, trained or not; here the visit window of ``PromptStats``). Its *easy streak* is
   the number of latest consecutive visits with all responses correct; its *hard streak*, if the
   latest visit was all wrong, the number of latest consecutive all-wrong visits. (The code tests
   mean ≥ 0.98 and ≤ 0.11 on rewards 1 / 0.1 / 0; on our binary rewards these are "all correct"
   and "all wrong".) A prompt is skipped with probability 1 − max(p_easy^streak, 0.01) (easy
   checked first), else 1 − max(p_hard^streak, 0.01): the exploration floor keeps ≥ 1%.
   Prompts are drawn from the epoch stream in chunks (the dataloader batch, ``chunk_factor`` ×
   prompts_per_step = 32/256) and filtered until ``sampling_factor`` × prompts_per_step
   (384/256) candidates are gathered; skipped prompts are consumed for this epoch.
2. **Dynamic sampling** (``ttis.type=dynamic_sampling``): the candidates are sampled n times each;
   zero-variance groups are dropped; the rest accumulate. If fewer than prompts_per_step groups are
   kept, the next sampling batch is int(missing / (1 − zero-variance ratio of this round) × 1.25)
   prompts, at most the default and at least ``min_sampling_factor`` × prompts_per_step (64/256);
   when that estimate is within the default it is the *last* sampling round and the step trains
   on whatever it then has. The training batch is the first prompts_per_step kept groups.
3. **Adaptive exploration.** After each step, from the second epoch on (the code's ``epoch > 0``):
   with the share of sampled prompts that were all correct (easy) and all wrong (hard), p_easy
   moves by −0.01 if easy share ≥ target/3, else +0.01, and p_hard by −0.01 if hard share ≥
   2·target/3, else +0.01, both within [0.05, 0.95] (target_zero_variance = 0.25).

Harness choices: the candidates are sampled in full (the code trims to a multiple of the GPU
count); a step makes at most ``max_gen_rounds`` sampling rounds (the code has no limit; its
last-round rule ends the loop in practice); streaks count at most ``history`` visits (the
``PromptStats`` visit window; with p ≤ 0.95 the skip probability differs from the unbounded count
by less than 0.04 past 64 visits). Advantage: verl's GRPO, A = (r − mean)/(std + 1e-6). The group
size n is ``group_size``, or budget // prompts_per_step when 0 (at least 2); the step decides its
own spend (``spend="own"``) and every response generated counts in the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from allocators.base import Allocator, AllocatorConfig, Capabilities, Step, TrainBatch
from allocators.dapo import mixed_groups, train_kept_groups
from allocators.stats import PromptStats


@njit(cache=True, inline="always")
def _streak(i, win_n, win_s, win_pos, win_fill):
    """(easy, hard) streak of prompt ``i`` from its visit window (latest visit first)."""
    cap = win_n.shape[1]
    pos = win_pos[i]
    k_easy = 0
    k_hard = 0
    easy_open = True
    hard_open = True
    for _t in range(win_fill[i]):
        pos = pos - 1 if pos > 0 else cap - 1
        n = win_n[i, pos]
        s = win_s[i, pos]
        if easy_open and n > 0 and s == n:
            k_easy += 1
        else:
            easy_open = False
        if hard_open and s == 0:
            k_hard += 1
        else:
            hard_open = False
        if not easy_open and not hard_open:
            break
    return k_easy, k_hard


@njit(cache=True)
def streaks(ids, win_n, win_s, win_pos, win_fill):
    """Easy and hard streaks of each prompt from its visit window (latest visit first)."""
    m = ids.shape[0]
    easy = np.zeros(m, np.int64)
    hard = np.zeros(m, np.int64)
    for a in range(m):
        easy[a], hard[a] = _streak(ids[a], win_n, win_s, win_pos, win_fill)
    return easy, hard


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def _splitmix(state):
    """SplitMix64: the next (state, 64 random bits)."""
    state = state + _GOLDEN
    z = state
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return state, z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _uniform(state):
    """(state, a double uniform on [0, 1)) from the top 53 bits."""
    state, z = _splitmix(state)
    return state, float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def _below(state, bound):
    """(state, an integer uniform on [0, bound)), bound < 2**32: Lemire's multiply-shift with
    rejection (unbiased)."""
    b = np.uint64(bound)
    threshold = (np.uint64(1 << 32) - b) % b
    while True:
        state, z = _splitmix(state)
        x = (z >> np.uint64(32)) * b
        if (x & np.uint64(0xFFFFFFFF)) >= threshold:
            return state, np.int64(x >> np.uint64(32))


@njit(cache=True, inline="always")
def _serve(x, taken, ids, m):
    """``take_distinct``'s filter on one served prompt: keep it unless already flagged."""
    if taken[x]:
        return m
    taken[x] = True
    ids[m] = x
    return m + 1


@njit(cache=True)
def _next_epoch(order, pos, stream_rng):
    """The next epoch's order, as ``PromptStream.take`` builds it: a uniformly random order of
    the pool, the prompts left in the old epoch (``order[pos:]``) postponed to its end. The
    shuffle (Fisher-Yates) draws from a SplitMix64 seeded by one draw of ``stream_rng``."""
    n_pool = order.shape[0]
    head = order[pos:]
    mark = np.zeros(n_pool, np.bool_)
    for t in range(head.shape[0]):
        mark[head[t]] = True
    nxt = np.empty(n_pool, np.int64)
    j = 0
    for x in range(n_pool):
        if not mark[x]:
            nxt[j] = x
            j += 1
    for t in range(head.shape[0]):
        nxt[j + t] = head[t]
    state = np.uint64(stream_rng.integers(0, 1 << 62))
    for t in range(j - 1, 0, -1):
        state, r = _below(state, t + 1)
        tmp = nxt[t]
        nxt[t] = nxt[r]
        nxt[r] = tmp
    return nxt


@njit(cache=True)
def filter_prompts(
    order, pos, epoch, stream_rng, k, chunk, taken, easy_of, hard_of, rng, p_easy, p_hard, floor
):
    """GRESO's pre-rollout filter for one sampling batch, in one compiled loop.

    Chunk by chunk until at least ``k`` prompts are kept: a chunk is the next ``chunk`` prompts
    of the epoch stream not flagged in ``taken`` (``take_distinct`` over ``PromptStream.take``,
    restated here on the stream's state ``order``, ``pos``, ``epoch``: at the epoch's end a new
    random order, ``_next_epoch``); they are flagged, their streaks read (``easy_of``,
    ``hard_of``: every prompt's, which change only between steps) and tested as ``skip_mask``
    does, and the skipped ones unflagged. A chunk comes back short only when the pool has no
    unflagged prompt left; an empty one ends the loop. The tests' uniforms come from a
    SplitMix64 seeded by one draw of ``rng``, one uniform per test made (an easy test when the
    easy streak is positive, then a hard test when the prompt was not skipped and its hard streak
    is positive).

    Returns (kept prompts in order, skipped count, the stream's new order, pos and epoch).
    """
    n_pool = order.shape[0]
    out = np.empty(k + chunk, np.int64)  # a chunk starts below k and adds at most chunk
    ids = np.empty(chunk, np.int64)
    state = np.uint64(rng.integers(0, 1 << 62))
    # skip thresholds by streak length: 1 − max(p^streak, floor)
    longest = max(easy_of.max(), hard_of.max()) if n_pool else 0
    thr_easy = np.empty(longest + 1)
    thr_hard = np.empty(longest + 1)
    for t in range(longest + 1):
        thr_easy[t] = 1.0 - max(p_easy**t, floor)
        thr_hard[t] = 1.0 - max(p_hard**t, floor)
    have = 0
    skipped = 0
    while have < k:
        m = 0
        need = chunk
        served = 0
        while need > 0 and served < 2 * n_pool:
            kk = min(need, n_pool)
            if pos + kk <= n_pool:
                for t in range(pos, pos + kk):
                    m = _serve(order[t], taken, ids, m)
                pos += kk
            else:
                head = order[pos:].copy()
                epoch += 1
                order = _next_epoch(order, pos, stream_rng)
                for t in range(head.shape[0]):
                    m = _serve(head[t], taken, ids, m)
                pos = kk - head.shape[0]
                for t in range(pos):
                    m = _serve(order[t], taken, ids, m)
            served += kk
            need = chunk - m
        if m == 0:
            break
        for a in range(m):
            i = ids[a]
            easy = easy_of[i]
            hard = hard_of[i]
            skip = False
            if easy > 0:
                state, u = _uniform(state)
                skip = u < thr_easy[easy]
            if not skip and hard > 0:
                state, u = _uniform(state)
                skip = u < thr_hard[hard]
            if skip:
                taken[i] = False
                skipped += 1
            else:
                out[have] = i
                have += 1
    return out[:have].copy(), skipped, order, pos, epoch


@njit(cache=True)
def update_streaks(ids, generated, successes, win_fill, easy_of, hard_of):
    """Advance the cached streaks by one step's visits (after ``PromptStats`` recorded them):
    an all-correct visit extends the easy streak and ends the hard one, an all-wrong visit the
    reverse, a mixed one ends both; a streak never exceeds the visits in the window."""
    for a in range(ids.shape[0]):
        n = generated[a]
        if n == 0:
            continue  # no visit recorded
        i = ids[a]
        s = successes[a]
        easy_of[i] = min(easy_of[i] + 1, win_fill[i]) if s == n else 0
        hard_of[i] = min(hard_of[i] + 1, win_fill[i]) if s == 0 else 0


@njit(cache=True)
def skip_mask(easy, hard, u_easy, u_hard, p_easy, p_hard, floor):
    """The code's two tests in order: easy skip with probability 1 − max(p_easy^streak, floor),
    then hard skip with 1 − max(p_hard^streak, floor); a zero streak never skips."""
    out = np.zeros(easy.shape[0], np.bool_)
    for a in range(easy.shape[0]):
        if easy[a] > 0 and u_easy[a] < 1.0 - max(p_easy ** easy[a], floor):
            out[a] = True
        elif hard[a] > 0 and u_hard[a] < 1.0 - max(p_hard ** hard[a], floor):
            out[a] = True
    return out


@njit(cache=True)
def extreme_groups(groups, group, rewards):
    """(all-correct, all-wrong) counts among ``groups`` of this round."""
    lo = groups.min()
    span = groups.max() - lo + 1
    n = np.zeros(span, np.int64)
    s = np.zeros(span)
    for j in range(group.shape[0]):
        n[group[j] - lo] += 1
        s[group[j] - lo] += rewards[j]
    easy = 0
    hard = 0
    for a in range(groups.shape[0]):
        g = groups[a] - lo
        if n[g] > 0:
            if s[g] == n[g]:
                easy += 1
            elif s[g] == 0.0:
                hard += 1
    return easy, hard


@dataclass
class GresoConfig(AllocatorConfig):
    bounds = {
        "p_easy": (0.0, 1.0),
        "p_hard": (0.0, 1.0),
        "target_zero_variance": (0.0, 1.0),
        "adjust_step": (0.0, 1.0),
        "min_p": (0.0, 1.0),
        "max_p": (0.0, 1.0),
        "floor": (0.0, 1.0),
        "sampling_factor": (None, 1e3),
        "min_sampling_factor": (None, 1e3),
        "chunk_factor": (None, 1e3),
        "estimate_inflation": (1.0, 1e3),
        "max_gen_rounds": (1, 10_000),
        "group_size": (0, 100_000),
        "history": (1, 100_000),
    }

    p_easy: float = 0.5  # initial keep base for all-correct streaks
    p_hard: float = 0.5  # initial keep base for all-wrong streaks
    target_zero_variance: float = 0.25
    adjust_step: float = 0.01
    min_p: float = 0.05
    max_p: float = 0.95
    floor: float = 0.01  # exploration floor on the keep probability
    sampling_factor: float = 1.5  # default sampling batch / training batch (384 / 256)
    min_sampling_factor: float = 0.25  # smallest adaptive sampling batch (64 / 256)
    chunk_factor: float = 0.125  # dataloader batch / training batch (32 / 256)
    estimate_inflation: float = 1.25
    max_gen_rounds: int = 10
    group_size: int = 0  # 0: budget // prompts_per_step (>= 2)
    history: int = 64  # visits kept per prompt for the streaks
    scale_by_std: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not (
            0 < self.min_p <= self.p_easy <= self.max_p <= 1
            and self.min_p <= self.p_hard <= self.max_p
        ):
            raise ValueError("need 0 < min_p <= p_easy, p_hard <= max_p <= 1")
        if self.sampling_factor <= 0 or self.chunk_factor <= 0 or self.min_sampling_factor <= 0:
            raise ValueError("sampling, chunk and min sampling factors must be > 0")
        if self.max_gen_rounds < 1 or self.history < 1 or self.group_size < 0:
            raise ValueError("need max_gen_rounds >= 1, history >= 1, group_size >= 0")


class Greso(Allocator):
    name = "greso"
    Config = GresoConfig
    caps = Capabilities(spend="own", min_rollouts_per_prompt=2)

    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        self.stats = PromptStats(num_prompts, reward_buffer=0, visit_window=self.config.history)
        self.p_easy = self.config.p_easy
        self.p_hard = self.config.p_hard
        self._sampled = self._easy = self._hard = 0
        self._epoch = 0
        self._refresh_streaks()

    def _refresh_streaks(self) -> None:
        """Cache every prompt's streaks from the visit windows (the filter reads them from here;
        ``observe`` advances them with ``update_streaks``)."""
        s = self.stats
        ids = np.arange(self.num_prompts, dtype=np.int64)
        self.easy_streak, self.hard_streak = streaks(ids, s.win_n, s.win_s, s.win_pos, s.win_fill)

    def group_size(self, step: Step) -> int:
        n = self.config.group_size
        return n if n > 0 else max(2, step.budget // step.prompts_per_step)

    def _candidates(
        self, step: Step, k: int, chunk: int, taken: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """Filtered prompts, drawn chunk by chunk until at least ``k`` pass; also the number
        skipped."""
        stream = step.stream
        order, pos, epoch = stream.export()
        kept, skipped, order, pos, epoch = filter_prompts(
            order,
            pos,
            epoch,
            stream.rng,
            k,
            chunk,
            taken,
            self.easy_streak,
            self.hard_streak,
            self.rng,
            self.p_easy,
            self.p_hard,
            self.config.floor,
        )
        stream.resume(order, pos, epoch)
        return kept, skipped

    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        c = self.config
        target = step.prompts_per_step
        n = self.group_size(step)
        default_bs = max(1, int(round(c.sampling_factor * target)))
        min_bs = max(1, int(round(c.min_sampling_factor * target)))
        chunk = max(1, int(round(c.chunk_factor * target)))
        taken = np.zeros(step.stream.num_prompts, np.bool_)
        sampling_bs = default_bs
        last = False
        kept_parts, n_kept, rounds, skipped = [], 0, 0, 0
        sampled = easy_total = hard_total = 0
        while True:
            ids, sk = self._candidates(step, sampling_bs, chunk, taken)
            skipped += sk
            if ids.size == 0:
                break
            groups = step.add_prompts(ids)
            s = step.sample(groups, np.full(groups.size, n, np.int64))
            rounds += 1
            mixed = mixed_groups(groups, s.group, s.rewards)
            e, h = extreme_groups(groups, s.group, s.rewards)
            sampled += groups.size
            easy_total += e
            hard_total += h
            kept_parts.append(groups[mixed])
            n_kept += int(mixed.sum())
            if n_kept >= target or last or rounds >= c.max_gen_rounds:
                break
            zero_var = 1.0 - mixed.sum() / groups.size
            if zero_var < 1.0:
                # the code's arithmetic, in responses: int(reminder / (1 − zvr) / n × 1.25)
                reminder = (target - n_kept) * n
                est = int(reminder / (1.0 - zero_var) / n * c.estimate_inflation)
            else:
                est = default_bs
            if est <= default_bs:
                last = True
            sampling_bs = max(min(est, default_bs), min_bs)
        batch, kept = train_kept_groups(step, kept_parts, target, c.scale_by_std)
        self._sampled, self._easy, self._hard = sampled, easy_total, hard_total
        self._epoch = step.stream.epoch
        info = {
            "gen_rounds": rounds,
            "skipped": skipped,
            "kept_groups": int(kept.size),
            "p_easy": self.p_easy,
            "p_hard": self.p_hard,
        }
        return batch, info

    def observe(self, result) -> None:
        super().observe(result)
        update_streaks(
            np.asarray(result.prompt_ids, np.int64),
            result.counts.generated,
            result.counts.successes,
            self.stats.win_fill,
            self.easy_streak,
            self.hard_streak,
        )
        c = self.config
        if self._epoch > 0 and self._sampled > 0:
            easy_ratio = self._easy / self._sampled
            hard_ratio = self._hard / self._sampled
            if hard_ratio >= c.target_zero_variance * 2 / 3:
                self.p_hard = max(self.p_hard - c.adjust_step, c.min_p)
            else:
                self.p_hard = min(self.p_hard + c.adjust_step, c.max_p)
            if easy_ratio >= c.target_zero_variance / 3:
                self.p_easy = max(self.p_easy - c.adjust_step, c.min_p)
            else:
                self.p_easy = min(self.p_easy + c.adjust_step, c.max_p)
        self._sampled = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "p_easy": self.p_easy, "p_hard": self.p_hard}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._refresh_streaks()
        self.p_easy = float(state["p_easy"])
        self.p_hard = float(state["p_hard"])
