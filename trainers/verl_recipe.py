"""A verl recipe: every registered allocator driving verl's ``RayPPOTrainer``.

verl has no extension point for a per-prompt rollout count, so, as verl's own DAPO recipe does
(``recipe/dapo/dapo_ray_trainer.py``: a ``RayPPOTrainer`` subclass whose ``fit`` loops
generation until it has enough informative groups), ``AllocatorRayPPOTrainer`` overrides
``fit()``. Each step the allocator's ``Step`` selects dataset rows from the project's
``PromptStream``; every ``Step.sample(groups, counts)`` becomes one ``VerlSource.sample``: the
rows as a ``DataProto`` (``collate_fn``), ``sample_level_repeat(counts)`` (zero counts never
reach the source), ``generate_sequences``, and the reward function, each row's score being its
summed token-level reward (binary). Multi-round methods (DAPO, GRESO, Reinforce-Ada-Seq,
C-GRPO) call it several times, exactly as they do in ``bench train``. The step's generated rows
are concatenated, cut to the allocator's ``TrainBatch`` (rows it does not train are dropped),
given ``advantages = advantage × weight × response_mask`` (verl's ``compute_advantage`` is not
called: the method's advantages are used; each prompt's rows share one ``uid``, so verl's own
GRPO estimator would group them the same way), padded with fully masked rows to the divisor the
data-parallel split and the mini-batches need, and trained with verl's ``_compute_old_log_prob``,
``_compute_ref_log_prob`` and ``_update_actor``. ``allocator.observe`` runs after the update;
the allocator's, stream's and generators' state is saved beside each verl checkpoint
(``global_step_<n>/allocator_state.pt``) and restored with it.

What was run: the pure functions below (``repeat_index``, ``uid_groups``,
``samples_from_scores``, ``train_rows``, ``pad_plan``, ``divisor``), by
``tests/test_verl_adapters.py``, without verl. What was **not** run: ``VerlSource`` and
``AllocatorRayPPOTrainer`` (verl is not installed here and needs GPUs); they are written against
verl at commit b178a3cd5 (``verl/trainer/ppo/ray_trainer.py``, ``verl/protocol.py``) and import
verl lazily, so this module imports without it. The supported configuration is the GRPO one:
``algorithm.adv_estimator=grpo`` (unused, the method's advantages replace it), no critic,
``actor.loss_agg_mode=token-mean``, ``algorithm.use_kl_in_reward=False``, synchronous rollout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from allocators.base import (
    Allocator,
    PromptStream,
    Samples,
    SettingsError,
    Step,
    StepResult,
    validate,
)


# --------------------------------------------------------------------------------------------
# Pure adapters (tested without verl)
# --------------------------------------------------------------------------------------------
def repeat_index(counts: Sequence[int]) -> np.ndarray:
    """Row positions of a ``sample_level_repeat(counts)``: row ``i`` of the prompt batch
    ``counts[i]`` times, in order (``np.repeat``); counts of 0 drop the row."""
    counts = np.asarray(counts, np.int64)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise ValueError("counts must be a 1-D array of non-negative integers")
    return np.repeat(np.arange(counts.size, dtype=np.int64), counts)


def uid_groups(uids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """verl's ``uid`` column to group indices (0, 1, ... in order of first appearance), and
    the uids in that order. Any group size works: verl's GRPO estimator groups by uid too."""
    order: dict[str, int] = {}
    group = np.array([order.setdefault(str(u), len(order)) for u in uids], np.int64)
    return group, list(order)


def samples_from_scores(
    prompt_ids: np.ndarray,
    counts: np.ndarray,
    scores: np.ndarray,
    response_lengths: np.ndarray,
    prompt_lengths: np.ndarray | None = None,
) -> Samples:
    """The allocator's ``Samples`` of one repeated request: ``scores`` (each row's summed
    token-level reward, in the request's row order) must be binary."""
    counts = np.asarray(counts, np.int64)
    scores = np.asarray(scores, np.float64)
    total = int(counts.sum())
    if scores.shape != (total,) or np.shape(response_lengths) != (total,):
        raise ValueError(f"expected {total} scores and lengths for counts summing to {total}")
    if scores.size and not np.isin(scores, (0.0, 1.0)).all():
        bad = scores[~np.isin(scores, (0.0, 1.0))][0]
        raise SettingsError(f"the allocators need binary rewards (0 or 1), got {bad:g}")
    return Samples.from_request(
        prompt_ids,
        counts,
        scores,
        np.asarray(response_lengths, np.int64),
        prompt_tokens=None if prompt_lengths is None else np.asarray(prompt_lengths, np.int64),
    )


def train_rows(result: StepResult) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the step's generated rows that train, in ``TrainBatch`` order; each one's
    advantage × weight). Rows the method does not train are left out of the update."""
    t = result.train
    coef = np.asarray(t.advantages, np.float64) * np.asarray(t.weights, np.float64)
    return np.asarray(t.index, np.int64), coef


def divisor(dp_size: int, mini_batches: int = 1) -> int:
    """What a variable row total must be a multiple of: ``DataProto.chunk`` splits it evenly
    over the data-parallel ranks, and each of the ``mini_batches`` optimiser steps over them
    (``ppo_mini_batch_size`` is set to total / mini_batches rows per step)."""
    if dp_size < 1 or mini_batches < 1:
        raise ValueError("dp_size and mini_batches must be positive")
    return int(dp_size) * int(mini_batches)


def pad_plan(rows: int, size_divisor: int) -> tuple[np.ndarray, int]:
    """Indices into the ``rows`` trained rows making the total a multiple of ``size_divisor``
    (the trained rows, then copies of the first ones, as ``pad_dataproto_to_divisor`` takes
    them), and how many were added. The copies must train nothing: the recipe zeroes their
    response mask and advantage, so the token-mean normaliser does not count them either."""
    if rows < 1:
        raise ValueError("nothing to pad: the step has no row to train")
    pad = (-rows) % size_divisor
    extra = np.arange(pad, dtype=np.int64) % rows
    return np.concatenate([np.arange(rows, dtype=np.int64), extra]), int(pad)


# --------------------------------------------------------------------------------------------
# The verl side (not run here: needs verl and GPUs)
# --------------------------------------------------------------------------------------------
class VerlSource:
    """``RolloutSource`` over a running ``RayPPOTrainer``: dataset rows by index, repeated by
    count, generated by the actor-rollout workers and scored by the reward function. Keeps the
    step's generated ``DataProto`` parts (``parts``) for the update."""

    provides: frozenset[str] = frozenset()

    def __init__(self, trainer):
        self.trainer = trainer
        self.parts: list = []

    def begin_step(self, index: int) -> None:
        self.parts = []

    def sample(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        import uuid

        from verl import DataProto
        from verl.trainer.ppo.ray_trainer import compute_response_mask
        from verl.utils.dataset.rl_dataset import collate_fn

        tr = self.trainer
        rows = collate_fn([tr.train_dataset[int(i)] for i in prompt_ids])
        batch = DataProto.from_single_dict(rows)
        batch.meta_info["temperature"] = tr.config.actor_rollout_ref.rollout.temperature
        batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in prompt_ids], object)
        batch = batch.sample_level_repeat(np.asarray(counts, np.int64))
        gen = tr._get_gen_batch(batch)
        gen.meta_info["global_steps"] = tr.global_steps
        out = tr.actor_rollout_wg.generate_sequences(gen)
        out.meta_info.pop("timing", None)
        batch = batch.union(out)
        if "response_mask" not in batch.batch.keys():
            batch.batch["response_mask"] = compute_response_mask(batch)
        reward, _ = tr._compute_or_extract_reward(batch, reward_fn=tr.reward_fn)
        batch.batch["token_level_scores"] = reward
        batch.batch["token_level_rewards"] = reward
        self.parts.append(batch)
        mask = batch.batch["response_mask"]
        width = batch.batch["prompts"].shape[1]
        prompt_lengths = batch.batch["attention_mask"][:, :width].sum(-1).cpu().numpy()
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return samples_from_scores(
            prompt_ids,
            counts,
            reward.sum(dim=-1).float().cpu().numpy(),
            mask.sum(dim=-1).cpu().numpy(),
            prompt_lengths[first],
        )


def _trainer_class():
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    class AllocatorRayPPOTrainer(RayPPOTrainer):
        """``RayPPOTrainer`` whose prompts, counts and advantages come from ``allocator``
        (a built ``Allocator``): ``budget`` rollouts per step (methods with their own spend may
        spend more), ``prompts_per_step`` prompts, ``mini_batches`` optimiser steps."""

        def __init__(
            self,
            *args,
            allocator: Allocator,
            budget: int,
            prompts_per_step: int,
            seed: int = 0,
            mini_batches: int = 1,
            **kwargs,
        ):
            super().__init__(*args, **kwargs)
            if self.use_critic or self.config.algorithm.use_kl_in_reward:
                raise SettingsError("the allocator recipe runs GRPO: no critic, no KL in reward")
            if self.config.actor_rollout_ref.actor.loss_agg_mode != "token-mean":
                raise SettingsError("the allocator recipe needs actor.loss_agg_mode=token-mean")
            self.allocator = allocator
            self.budget, self.prompts_per_step = int(budget), int(prompts_per_step)
            validate(allocator, allocator.name, self.budget, self.prompts_per_step, frozenset())
            self.mini_batches = int(mini_batches)
            n = len(self.train_dataset)
            self.stream = PromptStream(n, np.random.default_rng([seed, 2]))
            self.alloc_rng = np.random.default_rng([seed, 3])
            self.allocator.reset(n, self.alloc_rng)
            self.source = VerlSource(self)

        # -- checkpoints beside verl's -------------------------------------------------------
        def _allocator_path(self) -> str:
            folder = os.path.join(
                self.config.trainer.default_local_dir, f"global_step_{self.global_steps}"
            )
            return os.path.join(folder, "allocator_state.pt")

        def _save_checkpoint(self):
            import torch

            super()._save_checkpoint()
            state = {
                "allocator": self.allocator.state_dict(),
                "stream": self.stream.state_dict(),
                "stream_rng": self.stream.rng.bit_generator.state,
                "alloc_rng": self.alloc_rng.bit_generator.state,
            }
            torch.save(state, self._allocator_path())

        def _load_checkpoint(self):
            import torch

            out = super()._load_checkpoint()
            path = self._allocator_path()
            if self.global_steps > 0 and os.path.isfile(path):
                state = torch.load(path, weights_only=False)
                self.allocator.load_state_dict(state["allocator"])
                self.stream.load_state_dict(state["stream"])
                self.stream.rng.bit_generator.state = state["stream_rng"]
                self.alloc_rng.bit_generator.state = state["alloc_rng"]
            return out

        # -- the loop --------------------------------------------------------------------
        def train_batch(self, result: StepResult):
            """The step's trained rows as one padded ``DataProto`` with the method's
            advantages (pad rows fully masked)."""
            import torch
            from verl import DataProto

            batch = DataProto.concat(self.source.parts)
            rows, coef = train_rows(result)
            empty = rows.size == 0
            if empty:  # nothing trains: one fully masked row keeps the step's shape
                rows, coef = np.zeros(1, np.int64), np.zeros(1)
            dp = self._get_dp_size(self.actor_rollout_wg, "actor")
            index, pad = pad_plan(rows.size, divisor(dp, self.mini_batches))
            batch = batch.select_idxs(rows[index])
            live = torch.zeros(index.size) if empty else torch.ones(index.size)
            if pad:
                live[-pad:] = 0.0
            mask = batch.batch["response_mask"].float() * live[:, None]
            batch.batch["response_mask"] = mask.to(batch.batch["response_mask"].dtype)
            adv = torch.as_tensor(np.concatenate([coef, np.zeros(pad)]), dtype=torch.float32)
            batch.batch["advantages"] = adv[:, None] * mask
            batch.batch["returns"] = batch.batch["advantages"]
            batch.meta_info["global_token_num"] = batch.batch["attention_mask"].sum(-1).tolist()
            return batch

        def fit(self):
            from verl.utils.tracking import Tracking

            logger = Tracking(
                project_name=self.config.trainer.project_name,
                experiment_name=self.config.trainer.experiment_name,
                default_backend=self.config.trainer.logger,
            )
            self.global_steps = 0
            self._load_checkpoint()
            self.checkpoint_manager.update_weights()
            self.global_steps += 1
            while self.global_steps <= self.total_training_steps:
                t = self.global_steps - 1
                self.source.begin_step(t)
                result = self.allocator.step(
                    Step(t, self.stream, self.source, self.budget, self.prompts_per_step)
                )
                batch = self.train_batch(result)
                old, _ = self._compute_old_log_prob(batch)
                old.batch.pop("entropys", None)
                batch = batch.union(old)
                if self.use_reference_policy:
                    batch = batch.union(self._compute_ref_log_prob(batch))
                self.config.actor_rollout_ref.actor.ppo_mini_batch_size = max(
                    1, len(batch) // self.mini_batches // self.config.actor_rollout_ref.rollout.n
                )
                actor_output = self._update_actor(batch)
                self.checkpoint_manager.update_weights()
                self.allocator.observe(result)
                metrics = {
                    "allocator/rollouts": float(len(result.samples)),
                    "allocator/trained": float(result.train.index.size),
                    "allocator/rounds": float(len(result.rounds)),
                    "allocator/reward": float(result.samples.rewards.mean()),
                    **{k: float(np.mean(v)) for k, v in actor_output.meta_info["metrics"].items()},
                }
                logger.log(data=metrics, step=self.global_steps)
                last = self.global_steps >= self.total_training_steps
                if self.config.trainer.save_freq > 0 and (
                    last or self.global_steps % self.config.trainer.save_freq == 0
                ):
                    self._save_checkpoint()
                self.global_steps += 1

    return AllocatorRayPPOTrainer


def __getattr__(name: str):
    """``AllocatorRayPPOTrainer`` is built on first access (verl imported then)."""
    if name == "AllocatorRayPPOTrainer":
        try:
            return _trainer_class()
        except ImportError as exc:
            raise ImportError(
                f"the verl recipe needs verl ({exc.name} is missing): pip install verl"
            ) from None
    raise AttributeError(name)
