"""One GRPO training run on a real model, driven through the allocator contract.

The loop is the simulator's (``simulator/run.py``) with a language model in place of the learning
model: for each step, ``allocator.step(Step(...))`` selects prompts, allocates and samples through
the ``ModelSource`` (generation + verifier) and builds the ``TrainBatch``; the trainer updates the
policy on exactly the samples, advantages and weights of ``result.train`` (``grpo.grpo_update``),
syncs the new weights into the generation backend, and calls ``allocator.observe(result)``. The
trainer never asks which method runs. Step metrics and run metrics come from
``allocators.metrics``, so rows mean the same as the simulator's.

Seeds: the task's prompts depend on (task, seed); the prompt order, the allocator's generator and
the generation seeds are derived from the seed separately, so methods are compared on the same
prompts in the same order.

Checkpoints (``runs/<run-id>/checkpoint/state.pt``) hold the model, the optimiser, the
allocator's ``state_dict``, the prompt stream, the allocator's generator and the tables so far;
they are written every ``checkpoint_every`` steps and when a stop is requested (Ctrl-C), each by
atomic rename. ``resume`` continues from the last one and reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from allocators.base import PromptStream, Step
from allocators.metrics import STEP_METRICS, run_metrics, step_metrics
from allocators.registry import MethodSpec, parse_spec
from trainers.backends import GenParams, check_backend
from trainers.grpo import GRPOConfig
from trainers.models import EMBEDDED
from trainers.tasks import CHAIN_SUM, TASKS, Task, TaskError, chain_sum, dataset_task

UPDATE_STATS = ("pg_loss", "kl", "clip_frac", "grad_norm")


@dataclass(frozen=True)
class TrainConfig:
    task: str = CHAIN_SUM            # embedded task name; ignored when dataset is set
    dataset: str | None = None       # JSONL/parquet with prompt + gold answer
    test_dataset: str | None = None
    prompt_field: str | None = None
    answer_field: str | None = None
    train_prompts: int = 64          # embedded task: training prompts (dataset: cap, 0 = all)
    test_prompts: int = 64
    model: str = EMBEDDED
    method: str = "uniform"
    seed: int = 0
    steps: int = 30
    budget: int = 64                 # rollouts per step
    prompts_per_step: int = 8
    eval_every: int = 10
    target_accuracy: float = 0.3
    backend: str = "transformers"
    gen_dtype: str = "auto"          # auto | bf16 | fp32 (transformers backend)
    train_dtype: str = "auto"        # auto | bf16 (autocast, fp32 weights) | fp32
    gen_batch_size: int = 128
    max_new_tokens: int = 32
    top_p: float = 1.0
    checkpoint_every: int = 10
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def spec(self) -> MethodSpec:
        return parse_spec(self.method)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        d = dict(d)
        grpo = GRPOConfig(**d.pop("grpo", {}))
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(grpo=grpo, **{k: v for k, v in d.items() if k in names})

    @property
    def task_name(self) -> str:
        return Path(self.dataset).stem if self.dataset else self.task


class Interrupted(Exception):
    """A stop was requested: the run checkpointed after ``step`` steps and can be resumed."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"stopped after step {step}")
        self.run_dir = run_dir
        self.step = step


@dataclass
class RunOutput:
    config: dict
    summary: dict
    steps: pd.DataFrame
    evals: pd.DataFrame
    allocation: pd.DataFrame


# --------------------------------------------------------------------------------------------
# Building the pieces
# --------------------------------------------------------------------------------------------
def build_task(cfg: TrainConfig) -> Task:
    if cfg.dataset:
        return dataset_task(cfg.dataset, cfg.test_dataset, cfg.seed, cfg.test_prompts,
                            cfg.prompt_field, cfg.answer_field, cfg.train_prompts or None)
    if cfg.task == CHAIN_SUM:
        return chain_sum(cfg.seed, cfg.train_prompts, cfg.test_prompts)
    raise TaskError(f"unknown task {cfg.task!r} (tasks: {', '.join(TASKS)}; or give --dataset)")


def check_config(cfg: TrainConfig) -> MethodSpec:
    """Validate everything that can be checked before a model is loaded."""
    spec = cfg.spec()
    check_backend(cfg.backend)
    alloc = spec.build()
    cls = type(alloc)
    if getattr(alloc, "needs_gradients", False):
        raise ValueError(f"{spec.label} needs per-prompt policy gradients (CROPI's influence "
                         f"score), which bench train does not compute; use "
                         f"{spec.name}:score=random or {spec.name}:score=difficulty_random")
    if cfg.prompts_per_step < 1 or cfg.steps < 1 or cfg.budget < 1:
        raise ValueError("steps, budget and prompts per step must be positive")
    if cls.uses_budget and cfg.budget < cfg.prompts_per_step * cls.min_rollouts_per_prompt:
        raise ValueError(f"budget {cfg.budget} is below {cls.min_rollouts_per_prompt} rollouts "
                         f"for each of {cfg.prompts_per_step} prompts ({spec.name})")
    for what, value in (("gen", cfg.gen_dtype), ("train", cfg.train_dtype)):
        if value not in ("auto", "bf16", "fp32"):
            raise ValueError(f"{what} dtype must be auto, bf16 or fp32, not {value!r}")
    return spec


def resolved_config(cfg: TrainConfig, task: Task, model_path: str, gen_dtype: str,
                    train_dtype: str) -> dict:
    spec = cfg.spec()
    return {"mode": "train", **cfg.to_dict(), "method": spec.label, "method_name": spec.name,
            "method_config": asdict(spec.build().config), "task_config": task.describe(),
            "task_name": cfg.task_name, "model_path": model_path,
            "gen_dtype_resolved": gen_dtype, "train_dtype_resolved": train_dtype}


class _Policy:
    """Model, tokenizer, optimiser, optional reference model and the generation backend."""

    def __init__(self, cfg: TrainConfig):
        import torch

        from trainers.backends import TransformersBackend, VLLMBackend
        from trainers.grpo import make_optimizer
        from trainers.models import bf16_supported, load_model, load_tokenizer, resolve_model

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.path = resolve_model(cfg.model)
        self.tokenizer = load_tokenizer(self.path)
        # the policy trains on the GPU when there is one (the vLLM path), else on the CPU
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(self.path, torch.float32).to(self.device)
        self.model.eval()
        train = cfg.train_dtype
        if train == "auto":
            train = "bf16" if bf16_supported(self.device) else "fp32"
        self.train_dtype = train
        self.grpo = replace(cfg.grpo, autocast_bf16=(train == "bf16"))
        self.optimizer = make_optimizer(self.model, self.grpo)
        self.ref = None
        if cfg.grpo.kl_coef > 0:
            self.ref = load_model(self.path, torch.float32).to(self.device).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        want = cfg.gen_dtype
        if want == "auto":
            want = "bf16" if bf16_supported(self.device) else "fp32"
        self.gen_dtype = want
        eos = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        if cfg.backend == "vllm":
            self.backend = VLLMBackend(self.path, cfg.seed,
                                       "bfloat16" if want == "bf16" else "float32")
        else:
            dtype = torch.bfloat16 if want == "bf16" else torch.float32
            self.backend = TransformersBackend(self.model, eos, self.pad_id, dtype,
                                               cfg.gen_batch_size)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def train_inputs(result, prompt_tokens: list[list[int]]):
    """The update's inputs from the allocator's ``TrainBatch``: for each trained sample (in
    ``result.train.index`` order) its prompt tokens, response tokens, advantage and weight."""
    train = result.train
    extra = result.samples.extra or []
    prompts = [prompt_tokens[extra[i][0]] for i in train.index]
    responses = [extra[i][1] for i in train.index]
    return prompts, responses, np.asarray(train.advantages), np.asarray(train.weights)


def run_training(cfg: TrainConfig, run_dir: str | Path,
                 progress: Callable[[int, dict], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 resume: bool = False) -> RunOutput:
    """Train ``cfg`` (or continue the checkpoint in ``run_dir`` when ``resume``).

    ``progress(steps_done, row)`` is called after every step with the step's row (metrics,
    cumulative cost, tokens per second, and ``test_accuracy`` on evaluation steps).
    ``should_stop()`` is polled after every step: when true, the run checkpoints and raises
    ``Interrupted``.
    """
    import torch

    from trainers.grpo import grpo_update
    from trainers.source import ModelSource

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoint"
    check_config(cfg)
    task = build_task(cfg)
    if cfg.prompts_per_step > len(task.train_prompts):
        raise ValueError(f"{cfg.prompts_per_step} prompts per step but the task has only "
                         f"{len(task.train_prompts)} training prompts")
    policy = _Policy(cfg)
    config = resolved_config(cfg, task, policy.path, policy.gen_dtype, policy.train_dtype)
    params = GenParams(cfg.max_new_tokens, cfg.grpo.temperature, cfg.top_p)
    source = ModelSource(policy.backend, policy.tokenizer, task, params, cfg.seed)
    n_prompts = len(task.train_prompts)
    stream = PromptStream(n_prompts, np.random.default_rng([cfg.seed, 2]))
    alloc_rng = np.random.default_rng([cfg.seed, 3])
    allocator = cfg.spec().build()
    allocator.reset(n_prompts, alloc_rng)
    if hasattr(allocator, "bind_source"):
        allocator.bind_source(source)

    rows: list[dict] = []
    evals: list[dict] = []
    alloc_rows: list[tuple] = []
    start, wall_before = 0, 0.0
    if resume:
        state = torch.load(ckpt_dir / "state.pt", weights_only=False, map_location="cpu")
        policy.model.load_state_dict(state["model"])
        policy.optimizer.load_state_dict(state["optimizer"])
        allocator.load_state_dict(state["allocator"])
        stream.load_state_dict(state["stream"])
        stream.rng.bit_generator.state = state["stream_rng"]
        alloc_rng.bit_generator.state = state["alloc_rng"]
        torch.set_rng_state(state["torch_rng"])
        rows, evals, alloc_rows = state["rows"], state["evals"], state["allocation"]
        start, wall_before = int(state["step"]), float(state["wall_seconds"])
        policy.backend.sync(policy.model)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True,
                                                        default=str))

    def checkpoint(done: int, wall: float) -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {"step": done, "wall_seconds": wall, "config": cfg.to_dict(),
                 "model": policy.model.state_dict(), "optimizer": policy.optimizer.state_dict(),
                 "allocator": allocator.state_dict(), "stream": stream.state_dict(),
                 "stream_rng": stream.rng.bit_generator.state,
                 "alloc_rng": alloc_rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                 "rows": rows, "evals": evals, "allocation": alloc_rows}
        tmp = ckpt_dir / f".state.pt.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, ckpt_dir / "state.pt")

    t_start = time.perf_counter()
    cum_rollouts = rows[-1]["cum_rollouts"] if rows else 0
    cum_tokens = rows[-1]["cum_tokens"] if rows else 0
    if not evals:
        acc, _ = source.test_accuracy()
        evals.append({"step": 0, "rollouts": 0, "tokens": 0, "test_accuracy": acc})
        if progress is not None:
            progress(0, {"test_accuracy": acc})
    for t in range(start, cfg.steps):
        t0 = time.perf_counter()
        source.begin_step(t)
        step = Step(t, stream, source, cfg.budget, cfg.prompts_per_step, alloc_rng)
        result = allocator.step(step)
        gen_seconds = step.source_seconds
        t1 = time.perf_counter()
        prompts, responses, adv, weights = train_inputs(result, source.prompt_tokens)
        upd = grpo_update(policy.model, policy.optimizer, prompts, responses, adv, weights,
                          policy.grpo, policy.pad_id, policy.ref)
        policy.backend.sync(policy.model)
        allocator.observe(result)
        train_seconds = time.perf_counter() - t1
        m = step_metrics(result.counts, result.solver_seconds)
        cum_rollouts += m["rollouts"]
        cum_tokens += m["tokens"]
        row = {"step": t + 1, **m, **{k: upd[k] for k in UPDATE_STATS},
               "cum_rollouts": cum_rollouts, "cum_tokens": cum_tokens,
               "gen_seconds": gen_seconds, "train_seconds": train_seconds,
               "step_seconds": time.perf_counter() - t0,
               "gen_tokens_per_second": m["tokens"] / gen_seconds if gen_seconds > 0 else 0.0}
        counts = result.counts.generated
        values, freq = np.unique(counts, return_counts=True)
        alloc_rows.extend((t + 1, int(v), int(f)) for v, f in zip(values, freq))
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.steps:
            acc, _ = source.test_accuracy()
            evals.append({"step": t + 1, "rollouts": cum_rollouts, "tokens": cum_tokens,
                          "test_accuracy": acc})
            row["test_accuracy"] = acc
        rows.append(row)
        if progress is not None:
            progress(t + 1, row)
        wall = wall_before + time.perf_counter() - t_start
        stop = should_stop()
        if t + 1 < cfg.steps and (stop or (t + 1) % cfg.checkpoint_every == 0):
            checkpoint(t + 1, wall)
        if stop and t + 1 < cfg.steps:
            raise Interrupted(run_dir, t + 1)
    wall = wall_before + time.perf_counter() - t_start

    steps = pd.DataFrame(rows)
    ev = pd.DataFrame(evals)
    allocation = pd.DataFrame(alloc_rows, columns=["step", "rollouts_per_prompt", "prompts"])
    summary = {
        "initial_test_accuracy": float(ev["test_accuracy"].iloc[0]),
        **run_metrics(ev["rollouts"].to_numpy(float), ev["test_accuracy"].to_numpy(float),
                      cfg.target_accuracy),
        "target_accuracy": cfg.target_accuracy,
        "rollouts": int(cum_rollouts),
        "tokens": int(cum_tokens),
        "train_samples": int(steps["train_samples"].sum()),
        "final_train_reward": float(np.nanmean(steps["train_reward"].to_numpy()[-max(1, cfg.eval_every):])),
        "mean_effective_grad_ratio": float(steps["effective_grad_ratio"].mean()),
        "mean_effective_prompt_ratio": float(steps["effective_prompt_ratio"].mean()),
        "solver_seconds_per_step": float(steps["solver_seconds"].mean()),
        "wall_seconds": wall,
    }
    return RunOutput(config, summary, steps, ev, allocation)


def load_checkpoint_config(run_dir: str | Path) -> tuple[TrainConfig, int]:
    """The config and completed steps of a resumable run (``FileNotFoundError`` if none)."""
    import torch

    path = Path(run_dir) / "checkpoint" / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(str(path))
    state = torch.load(path, weights_only=False, map_location="cpu", mmap=True)
    return TrainConfig.from_dict(state["config"]), int(state["step"])


__all__ = ["TrainConfig", "RunOutput", "Interrupted", "run_training", "build_task",
           "check_config", "load_checkpoint_config", "replace", "STEP_METRICS"]
