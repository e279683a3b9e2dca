"""The verl recipe's pure adapters (``trainers/verl_recipe.py``), without verl: counts to
repeat indices, uid-grouped rewards to the allocator's advantages, the trained rows, padding to
the divisor. The ``RayPPOTrainer`` subclass itself needs verl and GPUs and is not run here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from allocators.base import GroupCounts, PromptStream, Samples, SettingsError, Step, StepResult
from allocators.base import TrainBatch as Batch
from allocators.registry import parse_spec
from trainers import verl_recipe
from trainers.verl_recipe import (
    divisor,
    pad_plan,
    repeat_index,
    samples_from_scores,
    train_rows,
    uid_groups,
)


def verl_grpo_advantages(scores: np.ndarray, uids: list[str], eps: float = 1e-6) -> np.ndarray:
    """verl's ``compute_grpo_outcome_advantage`` (verl/trainer/ppo/core_algos.py at b178a3cd5)
    per row: (score − mean) / (std + eps) within a uid, torch's unbiased std; a uid with one row
    has mean 0 and std 1."""
    out = np.empty(scores.size)
    for u in set(uids):
        rows = [i for i, v in enumerate(uids) if v == u]
        s = scores[rows]
        mean, std = (0.0, 1.0) if len(rows) == 1 else (s.mean(), s.std(ddof=1))
        out[rows] = (s - mean) / (std + eps)
    return out


def test_repeat_index_is_sample_level_repeat():
    assert repeat_index([2, 0, 3, 1]).tolist() == [0, 0, 2, 2, 2, 3]
    assert repeat_index([]).tolist() == []
    rows = np.array(["a", "b", "c", "d"])
    # DataProto.sample_level_repeat: np.repeat of every column by the counts
    assert rows[repeat_index([1, 2, 0, 2])].tolist() == ["a", "b", "b", "d", "d"]
    with pytest.raises(ValueError, match="non-negative"):
        repeat_index([1, -1])


def test_uid_groups_in_order_of_appearance():
    group, order = uid_groups(["b", "a", "b", "c", "a"])
    assert group.tolist() == [0, 1, 0, 2, 1] and order == ["b", "a", "c"]


def test_uid_grouped_rewards_give_the_allocators_advantages():
    """The same rows grouped by verl's uid and by the allocator's groups: uniform's advantages
    are verl's GRPO estimator over variable group sizes (1, 2, 5)."""
    rng = np.random.default_rng(0)
    counts = np.array([5, 1, 2, 3])
    prompt_ids = np.array([7, 3, 9, 4])
    scores = (rng.random(counts.sum()) < 0.5).astype(float)
    uids = [f"uid-{p}" for p in np.repeat(prompt_ids, counts)]
    s = samples_from_scores(prompt_ids, counts, scores, np.full(counts.sum(), 5))
    group, order = uid_groups(uids)
    assert np.array_equal(group, s.group) and order == [f"uid-{p}" for p in prompt_ids]
    uniform = parse_spec("uniform").build()
    uniform.reset(10, np.random.default_rng(0))

    class Fixed:
        provides = frozenset()

        def begin_step(self, index):
            pass

        def sample(self, ids, c):
            return samples_from_scores(ids, c, scores, np.full(int(c.sum()), 5))

    stream = PromptStream(10, np.random.default_rng(1))
    step = Step(0, stream, Fixed(), int(counts.sum()), 4)
    step.add_prompts(prompt_ids)
    got = uniform.build(step, step.sample(np.arange(4), counts))
    assert np.allclose(got.advantages, verl_grpo_advantages(scores, uids), atol=1e-5)


def test_scores_must_be_binary_and_complete():
    with pytest.raises(SettingsError, match="binary rewards .* got 0.5"):
        samples_from_scores(np.arange(2), np.array([1, 1]), np.array([1.0, 0.5]), np.ones(2))
    with pytest.raises(ValueError, match="expected 3 scores"):
        samples_from_scores(np.arange(2), np.array([1, 2]), np.ones(2), np.ones(2))


def _result(samples: Samples, train: Batch) -> StepResult:
    z = np.zeros(1, np.int64)
    return StepResult(0, np.arange(1), samples, train, GroupCounts(z, z, z, z, z), 0.0)


def test_train_rows_and_padding_keep_the_token_mean_loss():
    """Rows the method does not train are dropped; pad rows (copies, fully masked) change
    neither the loss nor its token-mean normaliser, whatever the divisor."""
    counts = np.array([3, 4])
    lengths = np.array([4, 2, 5, 3, 3, 6, 1])
    s = samples_from_scores(np.arange(2), counts, np.array([1, 0, 1, 1, 0, 0, 1.0]), lengths)
    train = Batch(np.array([6, 0, 2, 3, 1]), np.array([0.5, -1.0, 1.0, 2.0, 0.0]), np.ones(5) * 2)
    rows, coef = train_rows(_result(s, train))
    assert rows.tolist() == [6, 0, 2, 3, 1] and coef.tolist() == [1.0, -2.0, 2.0, 4.0, 0.0]

    def token_mean(idx, c, live):  # sum over rows of coef x tokens, over the unmasked tokens
        tok = lengths[rows[idx]] * live
        return float((c * tok).sum() / tok.sum()), float(tok.sum())

    want = token_mean(np.arange(rows.size), coef, np.ones(rows.size))
    for dp, mini in ((1, 1), (2, 1), (4, 2), (3, 1), (8, 1)):
        d = divisor(dp, mini)
        index, pad = pad_plan(rows.size, d)
        assert (
            index.size % d == 0 and 0 <= pad < d and index[: rows.size].tolist() == [0, 1, 2, 3, 4]
        )
        live = np.ones(index.size)
        live[index.size - pad :] = 0.0
        padded = np.concatenate([coef, np.zeros(pad)])
        assert token_mean(index, padded, live) == pytest.approx(want)
    with pytest.raises(ValueError, match="no row"):
        pad_plan(0, 4)
    with pytest.raises(ValueError, match="positive"):
        divisor(0)


def test_multi_round_method_through_the_adapters():
    """DAPO's repeated rounds over a stand-in for verl's generate + reward: every round is one
    repeat of the rows by count, and the trained rows pad to the divisor."""
    rates = np.tile([0.0, 1.0, 0.5, 0.0], 4)  # three prompts in four never mixed: DAPO refills
    rng = np.random.default_rng(4)
    requests = []

    class StandIn:
        provides = frozenset()

        def begin_step(self, index):
            pass

        def sample(self, ids, c):
            rows = ids[repeat_index(c)]  # what sample_level_repeat hands generate_sequences
            requests.append(c.copy())
            scores = (rng.random(rows.size) < rates[rows]).astype(float)
            return samples_from_scores(ids, c, scores, rng.integers(1, 9, rows.size))

    dapo = parse_spec("dapo").build()
    dapo.reset(16, np.random.default_rng(0))
    stream = PromptStream(16, np.random.default_rng(1))
    rounds = 0
    for t in range(3):
        result = dapo.step(Step(t, stream, StandIn(), 16, 4))
        rounds += len(result.rounds)
        rows, coef = train_rows(result)
        assert rows.size == 0 or np.all(rows < len(result.samples))
        if rows.size:
            index, _ = pad_plan(rows.size, divisor(4))
            assert index.size % 4 == 0
        dapo.observe(result)
    assert rounds > 3 and all((c > 0).all() for c in requests)


def test_the_recipe_imports_without_verl():
    assert callable(verl_recipe.repeat_index)
    if importlib.util.find_spec("verl") is None:
        with pytest.raises(ImportError, match="pip install verl"):
            verl_recipe.AllocatorRayPPOTrainer  # noqa: B018  (built on access)
