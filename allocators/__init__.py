"""Rollout-budget allocators: one module per method, sharing the contract in ``base``, the
per-prompt statistics in ``stats``, the advantage rules in ``advantages`` and the metrics in
``metrics``. Imports neither the simulator nor torch."""

from allocators.base import (
    Allocator,
    AllocatorConfig,
    GroupCounts,
    PromptStream,
    RolloutSource,
    Samples,
    Step,
    StepResult,
    TrainBatch,
)

__all__ = [
    "Allocator",
    "AllocatorConfig",
    "GroupCounts",
    "PromptStream",
    "RolloutSource",
    "Samples",
    "Step",
    "StepResult",
    "TrainBatch",
]
