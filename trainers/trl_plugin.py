"""Every registered allocator inside TRL's ``GRPOTrainer``: a subclass and a callback.

A TRL user keeps their model, dataset, reward functions and ``GRPOConfig`` and swaps the trainer::

    from trainers.trl_plugin import AllocatorGRPOTrainer

    trainer = AllocatorGRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=[correct],
        args=GRPOConfig(output_dir="out", max_steps=100, loss_type="dapo"),
        train_dataset=dataset,                      # a "prompt" column, plus what the rewards read
        allocator="knapsack", budget=64, prompts_per_step=8,
    )
    trainer.train()

How it hooks in (TRL 1.16, ``trl/trainer/grpo_trainer.py``):

- **Prompts.** TRL's ``RepeatSampler`` (every prompt ``num_generations`` times) is bypassed: the
  train dataloader only counts micro-steps, and the method's ``Step`` draws dataset rows from the
  project's epoch-wise ``PromptStream`` (DAPO, GRESO and CROPI choose their own prompts).
- **Sampling.** ``TRLSource`` is the method's ``RolloutSource``: it tokenises the rows with TRL's
  ``_tokenize_prompts``, generates with ``_generate_single_turn`` (one row per completion; with
  vLLM one call per distinct count, so server mode's ``prompts[::num_generations]`` de-duplication
  sees whole groups) and scores with ``_calculate_rewards``, so the user's reward functions (and
  ``reward_weights``) keep working. Rewards must be binary (0 or 1), as every method assumes.
- **The batch.** ``_prepare_inputs`` (train mode) runs one allocator step per optimiser step and
  hands TRL exactly the trained samples with advantage × weight as their advantage. TRL's
  ``rewards.view(-1, num_generations)`` advantages are never computed: the method's are used.
  ``num_items_in_batch`` counts the response tokens of every trained sample, so TRL's
  token-normalised losses (``dapo``, ``cispo``, ``vespo``) give the project's token-mean
  (``trainers/grpo.py``); samples whose advantage × weight is 0 train nothing without a KL term,
  so they are left out of the forward pass and only count in that normaliser (the speed-up over
  stock TRL, which trains zero-variance groups too).
- **Gradient accumulation.** The batch is cut into ``steps_per_generation`` (=
  ``gradient_accumulation_steps``) chunks of whole rows (TRL's ``split_tensor_dict`` would drop
  the remainder rows of a variable-size batch); a chunk left empty gets one fully masked row,
  which adds exactly nothing.
- **Observe.** ``ObserveCallback.on_step_end`` calls ``allocator.observe`` once per optimiser
  step, after the update, with every reward of the step.
- **Checkpoints.** The allocator's ``state_dict``, the stream and both generators are written
  to ``allocator_state.pt`` in every TRL checkpoint folder and restored on
  ``train(resume_from_checkpoint=...)`` (TRL restores the model, optimiser and torch generators).

Refused with one line (``SettingsError``) before training: per-sequence losses (``grpo``,
``bnpo``, ``dr_grpo``, ``sapo``, ``luspo``), ``num_iterations > 1``, ``steps_per_generation`` other
than ``gradient_accumulation_steps``, several processes (groups would be split across
processes), tools, environments, ``rollout_func``, ``mask_truncated_completions``, vLLM's
importance-sampling correction, a KL term on a PEFT model, and every method whose needs the
source lacks (``validate``: CROPI's gradients, GVM's gradient norms, the oracle's true rates;
C-GRPO's answers need ``answer_fn``). The vLLM path is written but was never run (no GPU here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from allocators.base import (
    NO_ANSWER,
    Allocator,
    PromptStream,
    Samples,
    SettingsError,
    Step,
    StepResult,
    validate,
)
from allocators.registry import parse_spec

TRL_VERSIONS = (">=1.16", "<1.17")  # the tested range (pyproject's trl extra)
TOKEN_MEAN_LOSSES = ("dapo", "cispo", "vespo")
STATE_FILE = "allocator_state.pt"


def check_trl_version(version: str) -> None:
    """Refuse a TRL outside the tested range (the private hooks used here change between minor
    releases)."""
    from packaging.version import Version

    v = Version(version)
    if not (Version("1.16") <= v < Version("1.17")):
        raise SettingsError(
            f"the allocator plug-in is tested with trl>=1.16,<1.17, not {version}: "
            "pip install 'rollout-bench[trl]'"
        )


def check_args(args, num_processes: int = 1) -> None:
    """The ``GRPOConfig`` settings the plug-in cannot honour, one line each."""
    if args.loss_type not in TOKEN_MEAN_LOSSES:
        raise SettingsError(
            f"loss_type {args.loss_type!r} averages per sequence; per-sample weights and "
            f"variable groups need a token-normalised loss: use loss_type='dapo' "
            f"(or {', '.join(TOKEN_MEAN_LOSSES[1:])})"
        )
    if args.num_iterations != 1:
        raise SettingsError(
            f"num_iterations={args.num_iterations} is not supported: the allocator's batch "
            "trains once (num_iterations=1)"
        )
    if args.steps_per_generation != args.gradient_accumulation_steps:
        raise SettingsError(
            f"steps_per_generation ({args.steps_per_generation}) must equal "
            f"gradient_accumulation_steps ({args.gradient_accumulation_steps}): one allocator "
            "step per optimiser step"
        )
    if num_processes != 1:
        raise SettingsError(
            f"{num_processes} processes: the plug-in runs on one process (a step's groups "
            "would be split across processes); for several GPUs use the verl recipe "
            "(trainers/verl_recipe.py)"
        )
    if args.mask_truncated_completions:
        raise SettingsError(
            "mask_truncated_completions is not supported: the allocator sees every sample "
            "(filter in the reward function instead)"
        )
    if args.use_vllm and args.vllm_importance_sampling_correction:
        raise SettingsError(
            "vLLM's importance-sampling correction is not supported: set "
            "vllm_importance_sampling_correction=False"
        )


def resolve_allocator(allocator: str | Allocator) -> tuple[Allocator, str]:
    """A method spec (``knapsack``, ``coba@class``, ``dapo:gen_batch_factor=2``) or a built
    allocator; returns it and its label."""
    if isinstance(allocator, Allocator):
        return allocator, allocator.name
    spec = parse_spec(allocator)  # SpecError (a ValueError) names what is wrong
    return spec.build(), spec.label


# --------------------------------------------------------------------------------------------
# The rollout source over TRL's own generation and reward functions
# --------------------------------------------------------------------------------------------
class TRLSource:
    """``RolloutSource`` over a ``GRPOTrainer``: rows of ``trainer.train_dataset``, TRL's
    tokenisation, generation and reward functions.

    ``answer_fn(completion_text) -> str`` (optional) extracts a completion's final answer ('' if
    none); with it the source provides ``answers`` (C-GRPO): 0 for a rewarded completion, else
    one id per distinct extracted answer of the prompt within the step, ``NO_ANSWER`` for ''.
    """

    def __init__(self, trainer: GRPOTrainer, answer_fn: Callable[[str], str] | None = None):
        self.trainer = trainer
        self.answer_fn = answer_fn
        self.provides = frozenset({"answers"}) if answer_fn is not None else frozenset()
        self._answer_ids: dict[int, dict[str, int]] = {}

    def begin_step(self, index: int) -> None:
        self._answer_ids = {}

    def generate(self, prompt_ids: list[list[int]], counts: np.ndarray) -> list[list[int]]:
        """``counts[i]`` completions of every tokenised prompt, in request order."""
        tr = self.trainer
        if not tr.use_vllm:
            rows = [p for p, c in zip(prompt_ids, counts) for _ in range(int(c))]
            completions, _ = tr._generate_single_turn(rows, None, {}, 1)
            return [list(c) for c in completions]
        # vLLM: one call per distinct count, each prompt repeated count times, so server mode's
        # prompts[::num_generations] keeps one copy per prompt and asks for n = count
        out: list[list[int] | None] = [None] * int(np.sum(counts))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        for c in np.unique(counts[counts > 0]):
            which = np.flatnonzero(counts == c)
            rows = [prompt_ids[i] for i in which for _ in range(int(c))]
            completions, _ = tr._generate_single_turn(rows, None, {}, int(c))
            for k, i in enumerate(which):
                for j in range(int(c)):
                    out[starts[i] + j] = list(completions[k * int(c) + j])
        return out  # type: ignore[return-value]

    def sample(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        tr = self.trainer
        prompt_ids = np.asarray(prompt_ids, np.int64)
        counts = np.asarray(counts, np.int64)
        records = [tr.train_dataset[int(i)] for i in prompt_ids]
        tokens, _, _ = tr._tokenize_prompts([r["prompt"] for r in records])
        tokens = [list(t) for t in tokens]
        completion_ids = self.generate(tokens, counts)
        rows = [dict(r) for r, c in zip(records, counts) for _ in range(int(c))]
        prompts = [r["prompt"] for r in rows]
        texts = tr.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if isinstance(prompts[0], list):  # conversational: completions are messages too
            completions: list[Any] = [[{"role": "assistant", "content": t}] for t in texts]
        else:
            completions = list(texts)
        per_func = tr._calculate_rewards(rows, prompts, completions, completion_ids)
        rewards = (per_func * tr.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards = rewards.detach().cpu().double().numpy()
        if rewards.size and not np.isin(rewards, (0.0, 1.0)).all():
            bad = rewards[~np.isin(rewards, (0.0, 1.0))][0]
            raise SettingsError(
                f"the allocators need binary rewards (0 or 1, the reward functions' weighted "
                f"sum), got {bad:g}"
            )
        ids = np.repeat(prompt_ids, counts)
        answers = None
        if self.answer_fn is not None:
            answers = np.array(
                [self._answer_id(int(i), r > 0.5, t) for i, r, t in zip(ids, rewards, texts)],
                np.int64,
            )
        return Samples.from_request(
            prompt_ids,
            counts,
            rewards,
            np.array([len(c) for c in completion_ids], np.int64),
            answers=answers,
            tokens=completion_ids,
            prompt_tokens=np.array([len(t) for t in tokens], np.int64),
        )

    def _answer_id(self, prompt: int, correct: bool, text: str) -> int:
        if correct:
            return 0
        answer = self.answer_fn(text)  # type: ignore[misc]
        if answer == "":
            return NO_ANSWER
        ids = self._answer_ids.setdefault(prompt, {})
        return ids.setdefault(answer, len(ids) + 1)


# --------------------------------------------------------------------------------------------
# From the allocator's training batch to TRL's inputs
# --------------------------------------------------------------------------------------------
def training_rows(result: StepResult, with_zero: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(positions into ``result.samples`` to run through the model, their coefficients
    advantage × weight, the token-mean normaliser: response tokens of every trained sample).
    Without ``with_zero`` (no KL term) rows whose coefficient is 0 are left out: they add
    nothing to the gradient, only to the normaliser."""
    train = result.train
    coef = np.asarray(train.advantages, np.float64) * np.asarray(train.weights, np.float64)
    tokens = int(result.samples.lengths[train.index].sum())
    keep = np.ones(coef.size, bool) if with_zero else coef != 0
    return np.asarray(train.index, np.int64)[keep], coef[keep], tokens


def split_rows(n: int, parts: int) -> list[np.ndarray]:
    """Row positions ``0..n-1`` cut into ``parts`` chunks of whole rows, sizes differing by at
    most one; chunks beyond ``n`` are empty (never dropped rows, unlike ``split_tensor_dict``)."""
    return list(np.array_split(np.arange(n, dtype=np.int64), parts))


def pad_rows(seqs: list[list[int]], pad_id: int, side: str, multiple: int | None) -> torch.Tensor:
    from trl.trainer.utils import pad

    return pad(
        [torch.tensor(s, dtype=torch.long) for s in seqs],
        padding_value=pad_id,
        padding_side=side,
        pad_to_multiple_of=multiple,
    )


# --------------------------------------------------------------------------------------------
# The trainer and its callback
# --------------------------------------------------------------------------------------------
class ObserveCallback(TrainerCallback):
    """``allocator.observe`` once per optimiser step, after the update."""

    def __init__(self, trainer: AllocatorGRPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.observe_pending()
        return control


class AllocatorGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose prompts, rollouts per prompt and advantages come from a registered
    allocator (see the module docstring).

    ``allocator``: a method spec or an ``Allocator``; ``budget``: rollouts per step (methods
    whose spend is their own may spend more, as in ``bench train``); ``prompts_per_step``: the
    batch's prompts; ``seed``: the stream's and the allocator's generators (default
    ``args.seed``); ``answer_fn``: a completion's final answer, for answer-level methods
    (C-GRPO). ``step_results`` keeps every finished step's ``StepResult`` when ``keep_results``.
    """

    def __init__(
        self,
        *args,
        allocator: str | Allocator = "uniform",
        budget: int = 64,
        prompts_per_step: int = 8,
        seed: int | None = None,
        answer_fn: Callable[[str], str] | None = None,
        keep_results: bool = False,
        **kwargs,
    ):
        import trl

        check_trl_version(trl.__version__)
        super().__init__(*args, **kwargs)
        check_args(self.args, self.accelerator.num_processes)
        if self.rollout_func is not None or self.tools or self.environment_factories:
            raise SettingsError(
                "tools, environments and rollout_func are not supported by the allocator "
                "plug-in (one completion per sampled row)"
            )
        if self.beta != 0.0 and self.ref_model is None:
            raise SettingsError("a KL term (beta > 0) on a PEFT model is not supported")
        self.allocator, self.allocator_label = resolve_allocator(allocator)
        self.source = TRLSource(self, answer_fn)
        self.budget, self.prompts_per_step = int(budget), int(prompts_per_step)
        validate(
            self.allocator,
            self.allocator_label,
            self.budget,
            self.prompts_per_step,
            self.source.provides,
        )
        n = len(self.train_dataset)
        if self.prompts_per_step > n:
            raise SettingsError(
                f"{self.prompts_per_step} prompts per step but the dataset has only {n} rows"
            )
        seed = self.args.seed if seed is None else int(seed)
        self.stream = PromptStream(n, np.random.default_rng([seed, 2]))
        self.alloc_rng = np.random.default_rng([seed, 3])
        self.allocator.reset(n, self.alloc_rng)
        self.allocator_steps = 0
        self.observed = 0
        self.keep_results = keep_results
        self.step_results: list[StepResult] = []
        self._pending: StepResult | None = None
        self.add_callback(ObserveCallback(self))

    # -- prompts: the dataloader only counts micro-steps -------------------------------------
    def get_train_dataloader(self):
        """One item per micro-step of an epoch (an epoch: the steps that take every prompt
        once at ``prompts_per_step``); the allocator's stream chooses the prompts."""
        from torch.utils.data import DataLoader

        steps = -(-len(self.train_dataset) // self.prompts_per_step)
        micro = steps * self.args.gradient_accumulation_steps
        return DataLoader(range(micro), batch_size=1, collate_fn=list)

    # -- one allocator step per optimiser step -----------------------------------------------
    def next_result(self) -> StepResult:
        """Run the allocator's step (select, sample, build the batch)."""
        t = self.allocator_steps
        self.source.begin_step(t)
        result = self.allocator.step(
            Step(t, self.stream, self.source, self.budget, self.prompts_per_step)
        )
        self.allocator_steps += 1
        return result

    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        parts = self.args.steps_per_generation
        if self._step % parts == 0 or self._buffered_inputs is None:
            if self._pending is not None:
                raise RuntimeError("the previous allocator step was never observed")
            t0 = time.perf_counter()
            result = self.next_result()
            self._pending = result
            self._buffered_inputs = self.inputs_for(result, parts)
            self._log_step(result, time.perf_counter() - t0)
        return self._buffered_inputs[self._step % parts]

    def observe_pending(self) -> None:
        """The callback's half: observe the step whose update just ran (once)."""
        result, self._pending = self._pending, None
        if result is None:
            return
        self.allocator.observe(result)
        self.observed += 1
        if self.keep_results:
            self.step_results.append(result)

    def inputs_for(self, result: StepResult, parts: int) -> list[dict]:
        """TRL's inputs for the step's trained samples: ``parts`` chunks of whole rows, each with
        the step's token-mean normaliser (the sum over chunks is the project's loss)."""
        device = self.accelerator.device
        rows, coef, tokens = training_rows(result, with_zero=self.beta != 0.0)
        s = result.samples
        prompt_tokens = self._prompt_tokens(s.prompt_ids[rows] if rows.size else s.prompt_ids[:1])
        masked = rows.size == 0
        if masked:  # nothing to train: one row, fully masked (exactly no gradient)
            if len(s) == 0:
                raise RuntimeError("the allocator's step generated no samples")
            rows, coef = np.zeros(1, np.int64), np.zeros(1)
        completions = [list(s.tokens[i]) for i in rows]  # type: ignore[index]
        pad_id = self._tokenizer.pad_token_id
        multiple = self.pad_to_multiple_of
        num_items = torch.tensor(float(max(tokens, 1)), device=device)
        chunks = []
        for part in split_rows(rows.size, parts):
            fill = part.size == 0 or masked
            if part.size == 0:
                part = np.zeros(1, np.int64)
            p = [prompt_tokens[i] for i in part]
            c = [completions[i] for i in part]
            completion_mask = pad_rows([[1] * len(x) for x in c], 0, "right", multiple)
            if fill:
                completion_mask.zero_()
            batch = {
                "prompt_ids": pad_rows(p, pad_id, "left", multiple).to(device),
                "prompt_mask": pad_rows([[1] * len(x) for x in p], 0, "left", multiple).to(device),
                "completion_ids": pad_rows(c, pad_id, "right", multiple).to(device),
                "completion_mask": completion_mask.to(device),
                "advantages": torch.tensor(
                    np.zeros(part.size) if fill else coef[part], dtype=torch.float32, device=device
                ),
                "num_items_in_batch": num_items,
            }
            if self.beta != 0.0:
                batch["ref_per_token_logps"] = self._ref_logps(batch)
            chunks.append(batch)
        return chunks

    def _prompt_tokens(self, prompt_ids: np.ndarray) -> list[list[int]]:
        unique, inverse = np.unique(prompt_ids, return_inverse=True)
        records = [self.train_dataset[int(i)]["prompt"] for i in unique]
        tokens, _, _ = self._tokenize_prompts(records)
        return [list(tokens[k]) for k in inverse]

    @torch.no_grad()
    def _ref_logps(self, batch: dict) -> torch.Tensor:
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.ref_model, ids, mask, batch["completion_ids"].size(1)
        )
        return logps

    def _log_step(self, result: StepResult, seconds: float) -> None:
        m = self._metrics["train"]
        s = result.samples
        m["allocator/rollouts"].append(float(len(s)))
        m["allocator/prompts"].append(float(result.prompt_ids.size))
        m["allocator/trained_samples"].append(float(result.train.index.size))
        m["allocator/rounds"].append(float(len(result.rounds)))
        m["allocator/step_seconds"].append(seconds)
        m["reward"].append(float(s.rewards.mean()) if len(s) else float("nan"))
        if len(s):
            m["completions/mean_length"].append(float(s.lengths.mean()))

    # -- checkpoints -------------------------------------------------------------------------
    def allocation_state(self) -> dict:
        return {
            "allocator": self.allocator.state_dict(),
            "stream": self.stream.state_dict(),
            "stream_rng": self.stream.rng.bit_generator.state,
            "alloc_rng": self.alloc_rng.bit_generator.state,
            "allocator_steps": self.allocator_steps,
            "observed": self.observed,
            "label": self.allocator_label,
        }

    def load_allocation_state(self, state: dict) -> None:
        if state.get("label") != self.allocator_label:
            raise SettingsError(
                f"the checkpoint was written by allocator {state.get('label')!r}, "
                f"not {self.allocator_label!r}"
            )
        self.allocator.load_state_dict(state["allocator"])
        self.stream.load_state_dict(state["stream"])
        self.stream.rng.bit_generator.state = state["stream_rng"]
        self.alloc_rng.bit_generator.state = state["alloc_rng"]
        self.allocator_steps = int(state["allocator_steps"])
        self.observed = int(state["observed"])

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = Path(self._get_output_dir(trial=trial))
            folder = folder / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            torch.save(self.allocation_state(), folder / STATE_FILE)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            raise SettingsError(f"checkpoint {checkpoint} has no {STATE_FILE} (not written here)")
        self.load_allocation_state(torch.load(path, weights_only=False))
