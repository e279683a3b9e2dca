"""PromptStats estimators against a plain reference that keeps the whole history."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from allocators.stats import PromptStats

# a history: a list of steps; each step a list of (prompt, reward) in generation order
histories = st.lists(
    st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 1.0])), min_size=1, max_size=40),
    min_size=1,
    max_size=12,
)


def replay(history, k=16, w=3, decay=0.9):
    stats = PromptStats(5, reward_buffer=k, visit_window=w, ema_decay=decay)
    for t, step in enumerate(history):
        prompts = sorted({p for p, _ in step})
        gid = {p: g for g, p in enumerate(prompts)}
        stats.update(
            np.array(prompts),
            np.array([gid[p] for p, _ in step], np.int64),
            np.array([r for _, r in step]),
            t,
        )
    return stats


def visits_of(history, prompt):
    return [
        [r for p, r in step if p == prompt] for step in history if any(p == prompt for p, _ in step)
    ]


@settings(max_examples=80, deadline=None)
@given(histories)
def test_estimators_match_the_history(history):
    stats = replay(history)
    ids = np.arange(5)
    last_visit, last8, last16 = stats.last_visit(ids), stats.last_k(ids, 8), stats.last_k(ids)
    win2, win3 = stats.window(ids, 2), stats.window(ids)
    ema = stats.ema(ids, 1.0, 16.0)
    for i in range(5):
        v = visits_of(history, i)
        flat = [r for visit in v for r in visit]
        assert stats.count[i] == len(flat) and stats.visits[i] == len(v)
        if not v:
            assert np.isnan(last_visit[i]) and np.isnan(last16[i]) and np.isnan(win3[i])
            assert ema[i] == 1.0 / 17.0
            continue
        assert last_visit[i] == np.mean(v[-1])
        assert np.isclose(last8[i], np.mean(flat[-8:]))
        assert np.isclose(last16[i], np.mean(flat[-16:]))
        assert np.isclose(win2[i], np.mean([r for visit in v[-2:] for r in visit]))
        assert np.isclose(win3[i], np.mean([r for visit in v[-3:] for r in visit]))
        n_tot = n_pos = 0.0
        for visit in v:
            n_tot = 0.9 * n_tot + len(visit)
            n_pos = 0.9 * n_pos + sum(visit)
        assert np.isclose(ema[i], (n_pos + 1.0) / (n_tot + 17.0))


def test_state_dict_round_trip():
    stats = replay([[(0, 1.0), (1, 0.0), (0, 0.0)], [(1, 1.0)]])
    other = PromptStats(5)
    other.load_state_dict(stats.state_dict())
    ids = np.arange(5)
    np.testing.assert_array_equal(other.last_k(ids), stats.last_k(ids))
    np.testing.assert_array_equal(other.window(ids), stats.window(ids))
