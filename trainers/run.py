"""One GRPO training run on a real model: the shared loop (``allocators/loop.py``) with the policy
as its learner.

For each step, ``allocator.step(Step(...))`` selects prompts, allocates and samples through the
``ModelSource`` (generation + verifier) and builds the ``TrainBatch``; the ``PolicyLearner``
updates the policy on exactly the samples, advantages and weights of ``result.train``
(``grpo.grpo_update``) and syncs the new weights into the generation backend; then
``allocator.observe(result)``. The trainer never asks which method runs; rows mean the same as
the simulator's.

Seeds: the task's prompts depend on (task, seed); the prompt order, the allocator's generator and
the generation seeds are derived from the seed separately, so methods are compared on the same
prompts in the same order.

Checkpoints (``runs/<run-id>/checkpoint/state.pt``) hold the model, the optimiser, the
allocator's ``state_dict``, the prompt stream, the generators and the loop's ``Progress``; they
are written every ``checkpoint_every`` steps and when a stop is requested (Ctrl-C), each by atomic
rename. ``resume`` continues from the last one and reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from allocators import loop
from allocators.base import PromptStream, SettingsError, StepResult, check_numbers, validate
from allocators.cost import CostModel
from allocators.loop import (
    LEARN_STATS,
    RUN_BOUNDS,
    Histogram,
    Interrupted,
    Progress,
    RunOutput,
    Schedule,
    check_units,
    run,
)
from allocators.registry import MethodSpec, parse_spec
from trainers.backends import GenParams, check_backend
from trainers.grpo import GRPOConfig
from trainers.models import EMBEDDED
from trainers.tasks import CHAIN_SUM, TASKS, Task, TaskError, chain_sum, dataset_task


@dataclass(frozen=True)
class TrainConfig:
    task: str = CHAIN_SUM  # embedded task name; ignored when dataset is set
    dataset: str | None = None  # JSONL/parquet with prompt + gold answer
    test_dataset: str | None = None
    prompt_field: str | None = None
    answer_field: str | None = None
    train_prompts: int = 64  # embedded task: training prompts (dataset: cap, 0 = all)
    test_prompts: int = 64
    model: str = EMBEDDED
    method: str = "uniform"
    seed: int = 0
    steps: int = 30
    budget: int = 64  # rollouts per step
    prompts_per_step: int = 8
    eval_every: int = 10
    target_accuracy: float = 0.3
    backend: str = "transformers"
    engine: str = "native"  # native | trl (TRL's trainer runs the updates: trainers/trl_engine.py)
    gen_dtype: str = "auto"  # auto | bf16 | fp32 (transformers backend)
    train_dtype: str = "auto"  # auto | bf16 (autocast, fp32 weights) | fp32
    gen_batch_size: int = 128
    max_new_tokens: int = 32
    top_p: float = 1.0
    checkpoint_every: int = 10
    budget_unit: str = "rollouts"  # rollouts | tokens
    compute_unit: str = ""  # "" (none) | rollouts | tokens | seconds
    compute_budget: float = 0.0  # total compute of the run, in compute_unit
    forecast: str = ""  # bench confirm: the sha256 of the forecast this run was made to check
    cost_model: str = ""  # a cost model JSON file (allocators/cost.py); "": the defaults
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    bounds = {
        **RUN_BOUNDS,
        "train_prompts": (0, 10_000_000),
        "test_prompts": (1, 10_000_000),
        "gen_batch_size": (1, 1_000_000),
        "max_new_tokens": (1, 1_000_000),
        "top_p": (0.0, 1.0),
        "checkpoint_every": (1, 100_000),
    }

    def __post_init__(self) -> None:
        check_numbers(self, self.bounds)
        check_units(self.budget, self.budget_unit, self.compute_unit, self.compute_budget)

    def cost(self) -> CostModel:
        return CostModel.load(self.cost_model) if self.cost_model else CostModel()

    def spec(self) -> MethodSpec:
        return parse_spec(self.method)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["engine"] == "native":  # native runs keep the config hashes they had before engines
            del d["engine"]
        if not d["forecast"]:  # likewise runs that check no forecast
            del d["forecast"]
        return d

    @staticmethod
    def from_dict(d: dict) -> TrainConfig:
        d = dict(d)
        grpo = GRPOConfig(**d.pop("grpo", {}))
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(grpo=grpo, **{k: v for k, v in d.items() if k in names})

    @property
    def task_name(self) -> str:
        return Path(self.dataset).stem if self.dataset else self.task


# --------------------------------------------------------------------------------------------
# Building the pieces
# --------------------------------------------------------------------------------------------
def build_task(cfg: TrainConfig) -> Task:
    if cfg.dataset:
        return dataset_task(
            cfg.dataset,
            cfg.test_dataset,
            cfg.seed,
            cfg.test_prompts,
            cfg.prompt_field,
            cfg.answer_field,
            cfg.train_prompts or None,
        )
    if cfg.task == CHAIN_SUM:
        return chain_sum(cfg.seed, cfg.train_prompts, cfg.test_prompts)
    raise TaskError(f"unknown task {cfg.task!r} (tasks: {', '.join(TASKS)}; or give --dataset)")


def check_config(cfg: TrainConfig) -> MethodSpec:
    """Validate everything that can be checked before a model is loaded."""
    from trainers.source import ModelSource

    spec = cfg.spec()
    check_backend(cfg.backend)
    from trainers.trl_engine import check_engine

    check_engine(cfg)
    validate(
        spec.build(),
        spec.label,
        cfg.budget,
        cfg.prompts_per_step,
        ModelSource.provides,
        cfg.budget_unit,
    )
    cost = cfg.cost()
    if cfg.compute_unit:
        # the least one step can cost: every rollout one token long
        rollouts = cfg.budget if cfg.budget_unit == "rollouts" else cfg.prompts_per_step
        one = {
            "rollouts": rollouts,
            "tokens": rollouts,
            "seconds": cost.round_seconds(rollouts, rollouts, 1),
        }
        if cfg.compute_budget < one[cfg.compute_unit]:
            raise SettingsError(
                f"a compute budget of {cfg.compute_budget:g} {cfg.compute_unit} is less than one "
                f"step ({one[cfg.compute_unit]:,.6g} {cfg.compute_unit} at the least)"
            )
    if cfg.steps < 1:
        raise SettingsError("steps must be positive")
    for what, value in (("gen", cfg.gen_dtype), ("train", cfg.train_dtype)):
        if value not in ("auto", "bf16", "fp32"):
            raise SettingsError(f"{what} dtype must be auto, bf16 or fp32, not {value!r}")
    return spec


def schedule(cfg: TrainConfig) -> Schedule:
    return Schedule(
        cfg.steps,
        cfg.budget,
        cfg.prompts_per_step,
        cfg.eval_every,
        cfg.target_accuracy,
        cfg.budget_unit,
        cfg.compute_unit,
        cfg.compute_budget,
    )


def identity(cfg: TrainConfig) -> dict:
    """The run's leaderboard identity columns (``frozen``: learning rate 0). A run of the TRL
    engine is labelled ``<model>+trl``, so that ``bench report`` ranks the engines apart."""
    spec = cfg.spec()
    return loop.identity(
        "train",
        cfg.task_name,
        cfg.model + ("+trl" if cfg.engine == "trl" else ""),
        spec.label,
        spec.name,
        cfg.seed,
        schedule(cfg),
        cfg.grpo.lr == 0,
    )


def resolved_config(
    cfg: TrainConfig, task: Task, model_path: str, gen_dtype: str, train_dtype: str
) -> dict:
    spec = cfg.spec()
    return {
        "mode": "train",
        **cfg.to_dict(),
        "method": spec.label,
        "method_name": spec.name,
        "method_config": asdict(spec.build().config),
        "task_config": task.describe(),
        "task_name": cfg.task_name,
        "model_path": model_path,
        "gen_dtype_resolved": gen_dtype,
        "train_dtype_resolved": train_dtype,
    }


class _Policy:
    """Model, tokenizer, optimiser, optional reference model and the generation backend."""

    def __init__(self, cfg: TrainConfig):
        import torch
        from transformers.utils import logging as hf_logging

        from trainers.backends import TransformersBackend
        from trainers.gen_worker import WorkerBackend
        from trainers.grpo import make_optimizer
        from trainers.models import bf16_supported, load_model, load_tokenizer, resolve_model

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
        if cfg.backend == "vllm":  # in a worker process: vLLM must not see Numba
            self.backend = WorkerBackend("vllm", self.path, cfg.seed, want)
        else:
            dtype = torch.bfloat16 if want == "bf16" else torch.float32
            self.backend = TransformersBackend(
                self.model, eos, self.pad_id, dtype, cfg.gen_batch_size
            )


class PolicyLearner:
    """The trainer's ``Learner``: the GRPO update on the step's training batch, the weights
    synced into the generation backend, greedy test accuracy, and the allocation histogram by
    each group's observed pass rate in its step."""

    def __init__(self, policy: _Policy, source):
        self.policy = policy
        self.source = source
        self.hist = Histogram()
        self.first_eval_tokens: int | None = None

    def learn(self, result: StepResult) -> dict[str, float]:
        from trainers.grpo import grpo_update

        p = self.policy
        prompts, responses, adv, weights = train_inputs(result, self.source.prompt_tokens)
        upd = grpo_update(
            p.model, p.optimizer, prompts, responses, adv, weights, p.grpo, p.pad_id, p.ref
        )
        p.backend.sync(p.model)
        self.hist.add_observed(result)
        return {k: upd[k] for k in LEARN_STATS if k in upd}

    def evaluate(self) -> float:
        acc, tokens = self.source.test_accuracy()
        if self.first_eval_tokens is None:
            self.first_eval_tokens = tokens
        return acc

    def reference_length(self) -> tuple[float, int]:
        """Mean tokens of the initial policy's greedy test responses (the first evaluation),
        and the cap ``max_new_tokens``; the cap stands for the mean when the first evaluation
        ran in an earlier session of a resumed run."""
        cap = self.source.params.max_new_tokens
        n = len(self.source.test_tokens)
        if self.first_eval_tokens is None or n == 0:
            return float(cap), int(cap)
        return self.first_eval_tokens / n, int(cap)

    def take_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        return self.hist.take()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def train_inputs(result: StepResult, prompt_tokens: list[list[int]]):
    """The update's inputs from the allocator's ``TrainBatch``: for each trained sample (in
    ``result.train.index`` order) its prompt tokens, response tokens, advantage and weight."""
    train = result.train
    s = result.samples
    tokens = s.tokens or []
    prompts = [prompt_tokens[s.prompt_ids[i]] for i in train.index]
    responses = [tokens[i] for i in train.index]
    return prompts, responses, np.asarray(train.advantages), np.asarray(train.weights)


def start_folder(run_dir: Path, config: dict) -> None:
    """A fresh run's folder with its resolved config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))


@dataclass
class RunParts:
    """What a training run's checkpoint holds besides the loop's progress: the policy, its
    optimiser, the allocator, the prompt stream, the generators and the allocation histogram
    (both engines: this module and ``trainers/trl_engine.py``)."""

    model: Any
    optimizer: Any
    allocator: Any
    stream: PromptStream
    alloc_rng: np.random.Generator
    hist: Any

    def save(self, ckpt_dir: Path, cfg: TrainConfig, prog: Progress) -> None:
        """Write ``ckpt_dir/state.pt`` atomically (a temporary file renamed into place)."""
        import torch

        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "config": cfg.to_dict(),
            "step": prog.done,
            "progress": asdict(prog),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "allocator": self.allocator.state_dict(),
            "stream": self.stream.state_dict(),
            "stream_rng": self.stream.rng.bit_generator.state,
            "alloc_rng": self.alloc_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "hist": (self.hist.prompts.copy(), self.hist.rollouts.copy()),
        }
        tmp = ckpt_dir / f".state.pt.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, ckpt_dir / "state.pt")

    def restore(self, state: dict) -> Progress:
        """Load a checkpoint's ``state`` into the parts; returns the loop's progress."""
        import torch

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.allocator.load_state_dict(state["allocator"])
        self.stream.load_state_dict(state["stream"])
        self.stream.rng.bit_generator.state = state["stream_rng"]
        self.alloc_rng.bit_generator.state = state["alloc_rng"]
        torch.set_rng_state(state["torch_rng"])
        self.hist.prompts[:], self.hist.rollouts[:] = state["hist"]
        return Progress(**state["progress"])


def run_training(
    cfg: TrainConfig,
    run_dir: str | Path,
    progress: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
) -> RunOutput:
    """Train ``cfg`` (or continue the checkpoint in ``run_dir`` when ``resume``).

    ``progress(steps_done, row)`` is called after every step with the step's row (metrics,
    cumulative cost, tokens per second, and ``test_accuracy`` on evaluation steps).
    ``should_stop()`` is polled after every step: when true, the run checkpoints and raises
    ``Interrupted``.
    """

    from trainers.source import ModelSource

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoint"
    check_config(cfg)
    if cfg.engine == "trl":
        from trainers.trl_engine import run_trl

        return run_trl(cfg, run_dir, progress, should_stop, resume)
    task = build_task(cfg)
    if cfg.prompts_per_step > len(task.train_prompts):
        raise SettingsError(
            f"{cfg.prompts_per_step} prompts per step but the task has only "
            f"{len(task.train_prompts)} training prompts"
        )
    policy = _Policy(cfg)
    config = resolved_config(cfg, task, policy.path, policy.gen_dtype, policy.train_dtype)
    params = GenParams(cfg.max_new_tokens, cfg.grpo.temperature, cfg.top_p)
    source = ModelSource(policy.backend, policy.tokenizer, task, params, cfg.seed)
    learner = PolicyLearner(policy, source)
    n_prompts = len(task.train_prompts)
    stream = PromptStream(n_prompts, np.random.default_rng([cfg.seed, 2]))
    alloc_rng = np.random.default_rng([cfg.seed, 3])
    allocator = cfg.spec().build()
    allocator.reset(n_prompts, alloc_rng)

    parts = RunParts(policy.model, policy.optimizer, allocator, stream, alloc_rng, learner.hist)
    start = None
    if resume:
        start = parts.restore(_load_state(ckpt_dir / "state.pt"))
        policy.backend.sync(policy.model)
    else:
        start_folder(run_dir, config)

    try:
        return drive(parts, source, learner, cfg, config, start, progress, should_stop, ckpt_dir)
    finally:
        if hasattr(policy.backend, "close"):  # a generation worker process
            policy.backend.close()


def drive(
    parts: RunParts,
    source,
    learner,
    cfg: TrainConfig,
    config: dict,
    start: Progress | None,
    progress,
    should_stop,
    ckpt_dir: Path,
) -> RunOutput:
    """The loop over a run's parts (both engines): ``allocators.loop.run`` on the run's
    schedule and cost model, a checkpoint into ``ckpt_dir`` every ``cfg.checkpoint_every``
    steps (and on a stop), then the run's output."""
    sched, cost = schedule(cfg), cfg.cost()
    prog, _ = run(
        parts.allocator,
        source,
        learner,
        parts.stream,
        sched,
        start,
        progress,
        should_stop,
        lambda p: parts.save(ckpt_dir, cfg, p),
        cfg.checkpoint_every,
        cost,
    )
    return loop.output(config, identity(cfg), prog, sched, cost)


def load_checkpoint_config(run_dir: str | Path) -> tuple[TrainConfig, int]:
    """The config and completed steps of a resumable run (``FileNotFoundError`` if none)."""

    path = Path(run_dir) / "checkpoint" / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(str(path))
    state = _load_state(path, mmap=True)
    try:
        return TrainConfig.from_dict(state["config"]), int(state["step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SettingsError(f"checkpoint {path} is damaged ({exc}); start the run again") from None


def _load_state(path: Path, mmap: bool = False) -> dict:
    """A checkpoint's state dict; ``SettingsError`` (one line) for an empty or corrupt file."""
    import pickle
    import zipfile

    import torch

    if path.stat().st_size == 0:
        raise SettingsError(f"checkpoint {path} is empty; start the run again")
    try:
        state = torch.load(path, weights_only=False, map_location="cpu", mmap=mmap)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as exc:
        raise SettingsError(
            f"checkpoint {path} is damaged (torch.load: {type(exc).__name__}); start the run again"
        ) from None
    if not isinstance(state, dict):
        raise SettingsError(f"checkpoint {path} is not a checkpoint of bench train")
    return state


__all__ = [
    "TrainConfig",
    "RunOutput",
    "Interrupted",
    "run_training",
    "build_task",
    "check_config",
    "load_checkpoint_config",
    "identity",
    "replace",
]
