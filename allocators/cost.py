"""Generation time of a synchronous GRPO step, modelled from its rounds (docs/results.md#cost-model).

A method samples in one or more rounds (``Step.sample`` calls); an inference engine generates a
round's sequences in waves of at most ``capacity`` at a time, and a wave lasts as long as its
longest response. One round costs

    seconds = overhead + prefill · (sequences · prompt_tokens)
              + decode · longest · ceil(sequences / capacity) + per_token · tokens

- ``overhead``: fixed cost of a call (scheduling, sampling set-up, weight sync);
- ``prefill``: seconds per prompt token processed (compute-bound);
- ``decode``: seconds per decoding step of a wave (memory-bound: one step advances every sequence
  of the wave by one token), set by the round's **longest** response, so a round pays its tail;
- ``per_token``: seconds per generated token beyond that (the throughput term).

So a multi-round method pays overhead and the tail once per round, and a round that puts many
rollouts on few prompts still pays per sequence. The defaults describe a 7-8B model in vLLM on
one H100 (see docs/results.md#cost-model for the figures they come from); ``fit`` estimates the
parameters from the rounds a ``bench train`` run measured (its ``rounds.csv``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from allocators.base import Bounds, SettingsError, check_numbers

ROUND_COLUMNS = ("step", "round", "sequences", "prompts", "tokens", "longest", "seconds")


@dataclass(frozen=True)
class CostModel:
    overhead: float = 0.05  # s per round
    prefill: float = 2e-6  # s per prompt token
    decode: float = 0.012  # s per decoding step of a wave
    per_token: float = 8e-5  # s per generated token
    capacity: int = 256  # sequences decoded at once
    prompt_tokens: int = 256  # prompt length the simulator assumes (the trainer measures it)

    bounds: ClassVar[Bounds] = {
        "overhead": (0.0, 1e4),
        "prefill": (0.0, 1.0),
        "decode": (0.0, 1e3),
        "per_token": (0.0, 1.0),
        "capacity": (1, 10_000_000),
        "prompt_tokens": (0, 10_000_000),
    }

    def __post_init__(self) -> None:
        check_numbers(self, self.bounds, "cost model: ")

    def round_seconds(
        self, sequences: int, tokens: int, longest: int, prompt_tokens: float | None = None
    ) -> float:
        """Seconds of one generation round."""
        if sequences <= 0:
            return 0.0
        waves = math.ceil(sequences / self.capacity)
        pt = self.prompt_tokens if prompt_tokens is None else prompt_tokens
        return (
            self.overhead
            + self.prefill * sequences * pt
            + self.decode * longest * waves
            + self.per_token * tokens
        )

    def features(self, sequences, tokens, longest, prompt_tokens) -> np.ndarray:
        """The four terms' multipliers per round (the design matrix of ``fit``)."""
        s = np.asarray(sequences, float)
        waves = np.ceil(s / self.capacity)
        return np.column_stack(
            [
                np.ones_like(s),
                s * np.asarray(prompt_tokens, float),
                np.asarray(longest, float) * waves,
                np.asarray(tokens, float),
            ]
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def load(path: str | Path) -> CostModel:
        """A cost model from a JSON file of its fields (what ``bench fit-cost`` writes; missing
        fields keep their defaults). ``SettingsError`` names the problem."""
        p = Path(path)
        try:
            data: Any = json.loads(p.read_text())
        except FileNotFoundError:
            raise SettingsError(f"cost model file {p} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SettingsError(f"cost model file {p} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"cost model file {p} must hold a JSON object")
        params = data.get("parameters", data)
        names = {f.name for f in fields(CostModel)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise SettingsError(
                f"cost model file {p}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(names))})"
            )
        for k, v in params.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise SettingsError(f"cost model file {p}: {k} must be a number, not {v!r}")
        values: dict[str, Any] = {
            k: int(v) if k in ("capacity", "prompt_tokens") else float(v) for k, v in params.items()
        }
        try:
            return CostModel(**values)
        except SettingsError as exc:
            raise SettingsError(f"cost model file {p}: {exc}") from None


@dataclass(frozen=True)
class Fit:
    model: CostModel
    rounds: int
    rmse: float  # seconds per round
    mean_abs_relative_error: float  # |predicted - measured| / measured, mean over rounds
    r2: float


def fit(rounds, capacity: int = 256) -> Fit:
    """Least-squares fit (non-negative, ``scipy.optimize.nnls``) of the four time terms to
    measured rounds: a table with ``ROUND_COLUMNS`` and ``prompt_tokens`` (mean prompt tokens of
    the round's sequences). A term the data cannot separate (constant or collinear multipliers)
    is fitted as part of the others and may come out 0; ``Fit`` reports the error."""
    from scipy.optimize import nnls

    base = CostModel(capacity=capacity)
    X = base.features(
        rounds["sequences"], rounds["tokens"], rounds["longest"], rounds["prompt_tokens"]
    )
    y = np.asarray(rounds["seconds"], float)
    if len(y) < 4:
        raise SettingsError(f"need at least 4 measured rounds to fit the cost model, got {len(y)}")
    scale = X.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(X / scale, y)
    coef = coef / scale
    pred = X @ coef
    resid = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    model = CostModel(
        overhead=float(coef[0]),
        prefill=float(coef[1]),
        decode=float(coef[2]),
        per_token=float(coef[3]),
        capacity=capacity,
        prompt_tokens=int(round(float(np.mean(rounds["prompt_tokens"])))),
    )
    return Fit(
        model,
        len(y),
        float(np.sqrt(np.mean(resid**2))),
        float(np.mean(np.abs(resid) / np.maximum(y, 1e-12))),
        1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
    )
