"""The trainer's ``RolloutSource``: generation with the policy plus the task's verifier.

``sample(prompt_ids, counts)`` generates ``counts[i]`` responses for training prompt
``prompt_ids[i]`` in one backend call, scores them (binary reward), and returns ``Samples`` with
the response token ids (``tokens``) that the policy update trains on, and
``answers``: 0 for a correct response, else a small id per distinct extracted answer of that
prompt within the step (1, 2, ... in order of appearance), as the simulator's answers are, for
answer-level methods such as C-GRPO; a response whose answer cannot be extracted (``Task.extract``
gives '') is ``NO_ANSWER``, no answer of its own (``trl-cgrpo``'s failed extractions). Every
call of a step gets its own seed derived from (run seed, step, call number), so a step's samples
depend only on the weights, the allocation and the seed: a resumed run reproduces them.
"""

from __future__ import annotations

import numpy as np

from allocators.base import NO_ANSWER, Samples
from trainers.backends import GenParams
from trainers.tasks import Task


class CallSeeds:
    """Generation seeds, one per sampling call (a 64-bit integer): a function of the run seed,
    the step and the call's place in the step only, so a resumed run draws what the
    uninterrupted one drew. ``begin(step)`` at each step, ``next()`` for each call."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.step = 0
        self.call = 0

    def begin(self, step: int) -> None:
        self.step, self.call = int(step), 0

    def next(self) -> int:
        s = np.random.SeedSequence([self.seed, 7, self.step, self.call]).generate_state(2)
        self.call += 1
        return int(s[0]) << 32 | int(s[1])


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [tokenizer(p)["input_ids"] for p in prompts]


class ModelSource:
    provides = frozenset({"answers"})

    def __init__(self, backend, tokenizer, task: Task, params: GenParams, seed: int):
        self.backend = backend
        self.tokenizer = tokenizer
        self.task = task
        self.params = params
        self.seed = int(seed)
        self.prompt_tokens = encode_prompts(tokenizer, task.train_prompts)
        self.test_tokens = encode_prompts(tokenizer, task.test_prompts)
        self.seeds = CallSeeds(seed)
        self._answer_ids: dict[int, dict[str, int]] = {}

    def begin_step(self, step: int) -> None:
        self.seeds.begin(step)
        self._answer_ids = {}

    def _answer_id(self, prompt: int, correct: bool, text: str) -> int:
        if correct:
            return 0
        answer = self.task.extract(text)
        if answer == "":
            return NO_ANSWER
        ids = self._answer_ids.setdefault(prompt, {})
        return ids.setdefault(answer, len(ids) + 1)

    def sample(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        prompt_ids = np.asarray(prompt_ids, np.int64)
        counts = np.asarray(counts, np.int64)
        responses = self.backend.generate(
            [self.prompt_tokens[i] for i in prompt_ids], counts, self.params, self.seeds.next()
        )
        ids = np.repeat(prompt_ids, counts)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        rewards = self.task.verify(texts, [self.task.train_answers[i] for i in ids])
        lengths = np.array([len(r) for r in responses], np.int64)
        answers = np.array(
            [self._answer_id(int(i), rw > 0.5, t) for i, rw, t in zip(ids, rewards, texts)],
            np.int64,
        )
        return Samples.from_request(
            prompt_ids,
            counts,
            rewards,
            lengths,
            answers=answers,
            tokens=list(responses),
            prompt_tokens=np.array([len(self.prompt_tokens[i]) for i in prompt_ids], np.int64),
        )

    def test_accuracy(self) -> tuple[float, int]:
        """Greedy accuracy on the held-out test prompts, and the tokens it generated."""
        greedy = GenParams(self.params.max_new_tokens, self.params.temperature, 1.0, greedy=True)
        responses = self.backend.generate(self.test_tokens, [1] * len(self.test_tokens), greedy, 0)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        rewards = self.task.verify(texts, self.task.test_answers)
        return float(rewards.mean()) if rewards.size else float("nan"), sum(map(len, responses))
