"""Prompt selection helpers for methods that take prompts from the epoch stream more than once per
step (DAPO's refills docs/methods.md#dapo, GRESO's pre-rollout filter docs/methods.md#greso, C-GRPO's held-out calibration slice
docs/methods.md#cgrpo).

``PromptStream.take`` never returns the same prompt twice within one call, but two calls in the
same step can straddle an epoch boundary and serve a prompt of the first call again. The contract
requires a step's batch to hold distinct prompts, so these methods take through ``take_distinct``.
"""

from __future__ import annotations

import numpy as np

from allocators.base import Step


def take_distinct(step: Step, k: int, taken: np.ndarray) -> np.ndarray:
    """Next ``k`` prompts of the epoch stream that are not flagged in ``taken`` (a boolean mask over
    the training pool, updated in place). A prompt served again is dropped (it is already in this
    step's batch, or excluded) and the stream is asked for more; fewer than ``k`` come back only
    when the pool has no untaken prompt left."""
    out = []
    need = int(k)
    pool = step.stream.num_prompts
    served = 0  # two passes over the pool serve every untaken prompt at least once
    while need > 0 and served < 2 * pool:
        ids = step.stream.take(min(need, pool))
        served += ids.size
        ids = ids[~taken[ids]]
        taken[ids] = True
        need -= ids.size
        out.append(ids)
    if not out:
        return np.zeros(0, np.int64)
    return np.concatenate(out) if len(out) > 1 else out[0]
