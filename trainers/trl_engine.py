"""``bench train --engine trl``: the same run as ``bench train`` with TRL's ``Trainer.train()``
running the optimisation loop.

The TRL side is the plug-in's ``AllocatorGRPOTrainer`` (``trainers/trl_plugin.py``): TRL's
dataloader, ``training_step``, loss (``loss_type="dapo"``, the token-mean), optimiser, gradient
clipping and callbacks, and TRL's generation and reward-function call for the rollouts. The
project's loop (``allocators/loop.run``) runs beside it in a worker thread, step for step, so that
the run records exactly the rows, evaluations, checkpoints and leaderboard row of the native
engine:

    loop thread                                   TRL (the calling thread)
    allocator.step(Step)  -- TRL generation --
    learner.learn(result) ---- result ------->    _prepare_inputs: the step's trained samples
                                                  forward, backward, optimiser step
                          <--- update stats ---   callback on_log (grad_norm, loss, kl, clip)
    observe, evaluate, row, checkpoint
    ...                                           (waits in the callback for the next step)

The two threads never run at once: each waits for the other's message, so the model is never
generated from while it trains. The settings mean what they mean natively
(``docs/training.md#the-update``): AdamW at a constant learning rate, clip ratios, gradient-norm
clip, sampling temperature, no warm-up, one optimiser step per training step (``--mini-batches``
> 1 is refused: TRL's several optimiser steps per generation cut the batch differently). The
generation seeds are TRL's (the global torch generator, seeded from ``--seed``), so the two
engines draw different samples under the same seed. Test accuracy is the native engine's greedy
evaluation on the same model.
"""

from __future__ import annotations

import math
import queue
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from allocators import loop
from allocators.base import SettingsError, StepResult
from allocators.loop import Progress, RunOutput, run

ENGINES = ("native", "trl")
TRL_HINT = "pip install 'rollout-bench[trl]'"


def trl_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def check_engine(cfg) -> None:
    """What the TRL engine cannot run, before anything is loaded (one line each)."""
    if cfg.engine not in ENGINES:
        raise SettingsError(f"engine must be {' or '.join(ENGINES)}, not {cfg.engine!r}")
    if cfg.engine != "trl":
        return
    if not trl_installed():
        raise SettingsError(f"--engine trl needs TRL, which is not installed: {TRL_HINT}")
    if cfg.grpo.mini_batches != 1:
        raise SettingsError(
            "--engine trl runs one optimiser step per training step (--mini-batches 1)"
        )
    if cfg.backend != "transformers":
        raise SettingsError(
            "--engine trl generates with TRL's transformers path here (--backend transformers)"
        )


class _Abort(Exception):
    """The TRL side stopped; the loop thread unwinds."""


class _Channel:
    """The two threads' messages: ``to_trl`` carries ("step", result), ("done", progress) or
    ("error", exception); ``to_loop`` carries ("stats", dict) or ("abort", None)."""

    def __init__(self) -> None:
        self.to_trl: queue.Queue = queue.Queue()
        self.to_loop: queue.Queue = queue.Queue()


def _learner_class():
    from trainers.run import PolicyLearner

    class TRLLearner(PolicyLearner):
        """The loop's learner: hands the step to TRL and waits for its update's numbers;
        evaluation, histogram and reference length as the native learner's."""

        def __init__(self, channel: _Channel, eval_source, backend, model):
            super().__init__(None, eval_source)
            self.channel = channel
            self.backend = backend
            self.model = model

        def learn(self, result: StepResult) -> dict[str, float]:
            self.channel.to_trl.put(("step", result))
            kind, value = self.channel.to_loop.get()
            if kind != "stats":
                raise _Abort()
            self.hist.add_observed(result)
            return value

        def evaluate(self) -> float:
            self.backend.sync(self.model)
            return super().evaluate()

    return TRLLearner


def _trainer_class():
    from transformers import TrainerCallback

    from trainers.trl_plugin import AllocatorGRPOTrainer

    class EngineTrainer(AllocatorGRPOTrainer):
        """The plug-in's trainer fed by the loop thread: its steps come over the channel and
        the loop observes them."""

        channel: _Channel
        outcome: tuple | None = None

        def next_result(self) -> StepResult:
            result, self._incoming = self._incoming, None
            if result is None:
                raise RuntimeError("TRL asked for a step the loop had not sent")
            return result

        def observe_pending(self) -> None:
            self._pending = None  # the loop observes

    class Relay(TrainerCallback):
        """After each optimiser step's log: the update's numbers to the loop, then wait for
        its next step (or its end)."""

        def __init__(self, trainer: EngineTrainer):
            self.trainer = trainer

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "grad_norm" not in logs:
                return control
            stats = {
                "grad_norm": float(logs["grad_norm"]),
                "pg_loss": float(logs.get("loss", math.nan)),
                "kl": float(logs.get("kl", 0.0)),
                "clip_frac": float(logs.get("clip_ratio/region_mean", math.nan)),
            }
            tr = self.trainer
            tr.channel.to_loop.put(("stats", stats))
            kind, value = tr.channel.to_trl.get()
            if kind == "step":
                tr._incoming = value
            else:
                tr.outcome = (kind, value)
                control.should_training_stop = True
            return control

    class KeepGenerator(TrainerCallback):
        """``Trainer.train()`` reseeds torch's generator and its dataloader iterator draws from
        it; put back, before the first update, the state the run had when ``train()`` was
        called, so that a resumed run draws what the uninterrupted one drew."""

        def __init__(self) -> None:
            self.state = None

        def on_step_begin(self, args, state, control, **kwargs):
            import torch

            if self.state is not None:
                torch.set_rng_state(self.state)
                self.state = None
            return control

    return EngineTrainer, Relay, KeepGenerator


def task_dataset(task):
    """A task's training prompts as TRL's conversational dataset (one user message each, the
    gold answer in the ``answer`` column) and the task's verifier as a TRL reward function."""
    from datasets import Dataset

    def verifier(completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(r) for r in task.verify(texts, list(answer))]

    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in task.train_prompts],
            "answer": list(task.train_answers),
        }
    )
    return dataset, verifier


def trl_args(cfg, output_dir: Path, steps: int, bf16: bool, cpu: bool):
    """TRL's ``GRPOConfig`` for a ``TrainConfig``: the native update's settings."""
    from trl import GRPOConfig

    g = cfg.grpo
    return GRPOConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=2,  # unused: the allocator sizes the batch
        num_generations=2,  # unused: the allocator sets each prompt's count
        gradient_accumulation_steps=1,
        max_completion_length=cfg.max_new_tokens,
        temperature=g.temperature,
        top_p=cfg.top_p,
        top_k=0,
        learning_rate=g.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=g.weight_decay,
        max_grad_norm=g.max_grad_norm,
        epsilon=g.clip_low,
        epsilon_high=g.clip_high,
        beta=g.kl_coef,
        loss_type="dapo",
        bf16=bf16,
        use_cpu=cpu,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=cfg.seed,
        disable_tqdm=True,
        log_completions=False,
    )


def run_trl(
    cfg,
    run_dir: str | Path,
    progress: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
) -> RunOutput:
    """``trainers.run.run_training`` with TRL's trainer running the updates (same arguments,
    same ``RunOutput``)."""
    import torch
    from transformers.utils import logging as hf_logging

    from trainers import run as trun
    from trainers.backends import GenParams, TransformersBackend
    from trainers.models import bf16_supported, load_model, load_tokenizer, resolve_model
    from trainers.source import ModelSource

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoint"
    task = trun.build_task(cfg)
    if cfg.prompts_per_step > len(task.train_prompts):
        raise SettingsError(
            f"{cfg.prompts_per_step} prompts per step but the task has only "
            f"{len(task.train_prompts)} training prompts"
        )
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    path = resolve_model(cfg.model)
    tokenizer = load_tokenizer(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(path, torch.float32).to(device)
    train_dtype = cfg.train_dtype
    if train_dtype == "auto":
        train_dtype = "bf16" if bf16_supported(device) else "fp32"
    gen_dtype = cfg.gen_dtype
    if gen_dtype == "auto":
        gen_dtype = "bf16" if bf16_supported(device) else "fp32"
    state = trun._load_state(ckpt_dir / "state.pt") if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
    config = {
        **trun.resolved_config(cfg, task, path, gen_dtype, train_dtype),
        "trl_version": __import__("trl").__version__,
    }

    dataset, verifier = task_dataset(task)
    done = int(state["progress"]["done"]) if state is not None else 0
    EngineTrainer, Relay, KeepGenerator = _trainer_class()
    # TRL's output folder: nothing is saved there (bench train checkpoints), kept out of the run
    scratch = tempfile.TemporaryDirectory(prefix="rollout-bench-trl-")
    # transformers 5 deprecates the gradient_checkpointing names TRL 1.16 still uses
    warnings.filterwarnings("ignore", ".*deprecated and will be removed in v6", FutureWarning)
    trainer = EngineTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[verifier],
        args=trl_args(
            cfg,
            Path(scratch.name),
            max(cfg.steps - done, 1),
            train_dtype == "bf16",
            device == "cpu",
        ),
        train_dataset=dataset,
        allocator=cfg.method,
        budget=cfg.budget,
        prompts_per_step=cfg.prompts_per_step,
        seed=cfg.seed,
        answer_fn=task.extract,
    )
    channel = _Channel()
    trainer.channel = channel
    trainer._incoming = None
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the rows are printed by bench train
    trainer.add_callback(Relay(trainer))
    keep = KeepGenerator()
    trainer.add_callback(keep)
    trainer.create_optimizer()  # before train(), so a checkpoint's state can be loaded into it

    # greedy test accuracy as the native engine measures it, on the training weights
    params = GenParams(cfg.max_new_tokens, cfg.grpo.temperature, cfg.top_p)
    dtype = torch.bfloat16 if gen_dtype == "bf16" else torch.float32
    backend = TransformersBackend(
        model, tokenizer.eos_token_id, tokenizer.pad_token_id, dtype, cfg.gen_batch_size
    )
    eval_source = ModelSource(backend, tokenizer, task, params, cfg.seed)
    learner = _learner_class()(channel, eval_source, backend, model)
    allocator, stream, alloc_rng = trainer.allocator, trainer.stream, trainer.alloc_rng

    parts = trun.RunParts(model, trainer.optimizer, allocator, stream, alloc_rng, learner.hist)
    start = None
    if state is not None:
        start = parts.restore(state)
        trainer.allocator_steps = done
    else:
        trun.start_folder(run_dir, config)

    def checkpoint(prog: Progress) -> None:
        parts.save(ckpt_dir, cfg, prog)

    cost = cfg.cost()
    sched = trun.schedule(cfg)

    def loop_main() -> None:
        try:
            prog, _ = run(
                allocator,
                trainer.source,
                learner,
                stream,
                sched,
                start,
                progress,
                should_stop,
                checkpoint,
                cfg.checkpoint_every,
                cost,
            )
            channel.to_trl.put(("done", prog))
        except BaseException as exc:  # noqa: BLE001  (handed to the calling thread)
            channel.to_trl.put(("error", exc))

    model.train()  # TRL's mode during training (no dropout in these models)
    worker = threading.Thread(target=loop_main, name="rollout-bench-loop", daemon=True)
    worker.start()
    try:
        kind, value = channel.to_trl.get()
        if kind == "step":
            trainer._incoming = value
            keep.state = torch.get_rng_state()
            trainer.train()
            if trainer.outcome is None:  # TRL ended first (its step limit): the loop's end
                channel.to_loop.put(("abort", None))
                raise RuntimeError("TRL stopped before the run's last step")
            kind, value = trainer.outcome
    finally:
        channel.to_loop.put(("abort", None))  # unblocks a loop still waiting on TRL
        scratch.cleanup()
    worker.join(timeout=60)
    if kind == "error":
        raise value  # the loop's own exception: Interrupted, a one-line error, ...
    prog = value
    return loop.output(config, trun.identity(cfg), prog, sched, cost)


__all__ = ["ENGINES", "check_engine", "run_trl", "task_dataset", "trl_args"]
