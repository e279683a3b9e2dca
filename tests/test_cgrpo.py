"""C-GRPO's failed extractions (docs/methods.md#cgrpo): in ``trl-cgrpo`` 0.2.0 ``conformal.py`` a
response whose answer cannot be extracted (an empty string) counts in k but carries no
probability mass, so it never forms a singleton; the trainer's source marks it ``NO_ANSWER``."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from allocators.base import NO_ANSWER
from allocators.cgrpo import add_answers, aps_scores, singleton
from trainers.backends import GenParams
from trainers.source import ModelSource
from trainers.tasks import chain_sum


# -- a plain restatement of conformal.py ------------------------------------------------------
def _distribution(answers, k, rng):
    counts = Counter(a for a in answers[:k] if a != "")
    probs = [(a, c / k) for a, c in counts.items()]
    probs.sort(key=lambda item: (-item[1], rng.random()))
    return probs


def resolves_singleton(answers, k, qhat, rng):
    pset, cumulative = [], 0.0
    for a, p in _distribution(answers, k, rng):
        pset.append(a)
        cumulative += p
        if cumulative >= qhat:
            break
    if len(pset) != 1:
        return False
    return sum(1 for a in answers[:k] if a == pset[0]) / k >= qhat


def test_stopping_decisions_match_the_official_rule_with_failed_extractions():
    """20,000 random prompts with 20-90% failed extractions: every decision agrees."""
    rng = np.random.default_rng(0)
    py = random.Random(0)
    names = ["", "a", "b", "c"]
    disagree = 0
    for _ in range(20_000):
        k = int(rng.choice([2, 4, 8, 16, 32]))
        fail = rng.uniform(0.2, 0.9)
        picks = np.where(rng.random(k) < fail, 0, rng.integers(1, 4, k))
        picks[rng.random(k) < 0.5 * (1 - fail)] = 1  # a dominant answer, often
        qhat = float(rng.choice([rng.uniform(0.05, 1.0), 1.0, 0.5]))
        want = resolves_singleton([names[i] for i in picks], k, qhat, py)
        ids = np.where(picks == 0, NO_ANSWER, picks).astype(np.int64)
        counts = np.zeros((1, 4), np.int64)
        add_answers(counts, np.zeros(k, np.int64), ids, 0)
        got = bool(singleton(np.array([0]), counts, 0, k, qhat)[0])
        disagree += got != want
    assert disagree == 0


def test_a_prompt_of_failed_extractions_never_stops_on_them():
    counts = np.zeros((1, 2), np.int64)
    add_answers(counts, np.zeros(2, np.int64), np.array([NO_ANSWER, NO_ANSWER]), 0)
    assert not singleton(np.array([0]), counts, 0, 2, 0.5)[0]
    counts = np.zeros((1, 2), np.int64)
    add_answers(counts, np.zeros(4, np.int64), np.array([NO_ANSWER, 1, NO_ANSWER, NO_ANSWER]), 0)
    assert not singleton(np.array([0]), counts, 0, 4, 0.5)[0]  # one answer, mass 1/4


def test_aps_score_gives_failed_extractions_no_mass():
    # first 8: correct once, answer 2 three times, four failures: 2 ranks ahead with mass 3/8
    row = np.array([[0, NO_ANSWER, NO_ANSWER, 2, 2, 2, NO_ANSWER, NO_ANSWER]], np.int64)
    grid = np.array([8])
    zero = np.zeros((1, 1))
    assert aps_scores(row, grid, zero, zero, 3)[0, 0] == pytest.approx(3 / 8)
    assert aps_scores(row, grid, np.ones((1, 1)), zero, 3)[0, 0] == pytest.approx(4 / 8)


class _Tokenizer:
    chat_template = None

    def __init__(self, texts):
        self.texts = texts

    def __call__(self, text, **_):
        return {"input_ids": [1, 2, 3]}

    def batch_decode(self, responses, skip_special_tokens=True):
        return [self.texts[r[0]] for r in responses]


class _Backend:
    def __init__(self, picks):
        self.picks = picks

    def generate(self, prompts, counts, params, seed):
        return [[i] for i in self.picks[: int(np.sum(counts))]]


def test_the_trainer_source_marks_failed_extractions():
    task = chain_sum(seed=0, num_train=2, num_test=1)
    right = f"The answer is {task.train_answers[0]}."
    wrong = f"The answer is {int(task.train_answers[0]) + 1}."
    texts = [right, wrong, "I cannot tell.", "", wrong]
    src = ModelSource(_Backend([0, 1, 2, 3, 4]), _Tokenizer(texts), task, GenParams(8), seed=0)
    s = src.sample(np.array([0]), np.array([5]))
    assert s.answers.tolist() == [0, 1, NO_ANSWER, NO_ANSWER, 1]
