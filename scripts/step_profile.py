"""Where a `bench train` step's time goes: this checkout against an earlier revision, beside TRL.

    python scripts/step_profile.py [--before ea1090b] [--steps 5] [--rounds 1] [--no-trl]
        [--only 'native,trl engine']

Each of these runs in its own process, on the same settings (the embedded SmolLM2-135M-Instruct
on the embedded chain-sum task, 8 prompts x 8 samples per step, 32 new tokens, T = 0.7, seed 0,
the default dtypes: fp32 on CPUs without native bf16), round-robin ``--rounds`` times:

- ``native @ BEFORE``: `bench train` as it was at revision BEFORE (checked out in a temporary
  git worktree);
- ``native``: `bench train` of this checkout;
- ``trl engine @ BEFORE`` and ``trl engine``: `bench train --engine trl` at BEFORE and of this
  checkout (TRL's GRPOTrainer runs the update, the allocator sizes the groups);
- ``trl stock``: TRL's own ``GRPOTrainer`` with nothing of ours but the prompts and the reward:
  ``num_generations`` 8, 8 prompts per step, ``loss_type="dapo"`` (token-mean), ``beta`` 0,
  the same sampling, learning rate and clipping.

A step is split into generation (the rollout source's wall time; TRL stock: its
``_generate_and_score_completions``), the update's forward, its backward (timers around
``torch.Tensor.backward``), the optimiser step (timers around ``torch.optim.AdamW.step``) and the
rest. The table gives the median over steps 2..S of each part (step 1 sets up kernels), in
seconds, and the speed-up of each row's step against the first. ``--json FILE`` also writes
every step's figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("gen", "forward", "backward", "optimizer", "rest", "step")
SETTINGS = dict(steps=5, budget=64, prompts_per_step=8, max_new_tokens=32, seed=0)


class _Timers:
    """Seconds spent inside ``torch.Tensor.backward`` and ``AdamW.step`` since the last take."""

    def __init__(self):
        import torch

        self.backward = 0.0
        self.optimizer = 0.0
        real_backward, real_step = torch.Tensor.backward, torch.optim.AdamW.step

        def backward(tensor, *a, **k):
            t0 = time.perf_counter()
            try:
                return real_backward(tensor, *a, **k)
            finally:
                self.backward += time.perf_counter() - t0

        def step(opt, *a, **k):
            t0 = time.perf_counter()
            try:
                return real_step(opt, *a, **k)
            finally:
                self.optimizer += time.perf_counter() - t0

        torch.Tensor.backward = backward
        torch.optim.AdamW.step = step

    def take(self) -> tuple[float, float]:
        out = (self.backward, self.optimizer)
        self.backward = self.optimizer = 0.0
        return out


def _worker_bench(root: str, engine: str, steps: int) -> list[dict]:
    """Steps of `bench train` from the source tree ``root`` (this checkout or a worktree)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as bench train sets it
    sys.path.insert(0, root)
    timers = _Timers()
    import trainers.run
    from trainers.run import TrainConfig, run_training

    assert Path(trainers.run.__file__).resolve().is_relative_to(Path(root).resolve())
    kw = {**SETTINGS, "steps": steps}
    cfg = TrainConfig(eval_every=100_000, engine=engine, **kw)
    rows: list[dict] = []

    def progress(k: int, row: dict) -> None:
        if k == 0:
            timers.take()  # the initial evaluation
            return
        backward, optimizer = timers.take()
        update = float(row["update_seconds"])
        gen = float(row["gen_seconds"])
        step = float(row["step_seconds"])
        rows.append(
            {
                "gen": gen,
                "forward": max(update - backward - optimizer, 0.0),
                "backward": backward,
                "optimizer": optimizer,
                "rest": max(step - gen - update, 0.0),
                "step": step,
                "trained": float(row.get("train_samples", float("nan"))),
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        run_training(cfg, Path(tmp) / "run", progress)
    return rows


def _worker_trl_stock(steps: int) -> list[dict]:
    """Steps of TRL's stock GRPOTrainer on the same model, prompts, reward and settings."""
    sys.path.insert(0, str(ROOT))
    timers = _Timers()
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainers.models import bf16_supported, load_model, load_tokenizer, resolve_model
    from trainers.tasks import chain_sum
    from trainers.trl_engine import task_dataset

    task = chain_sum(SETTINGS["seed"], 64, 64)
    path = resolve_model("smollm2-135m")
    n = SETTINGS["budget"] // SETTINGS["prompts_per_step"]

    data, verifier = task_dataset(task)
    gen_time = [0.0]

    class Timed(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                gen_time[0] += time.perf_counter() - t0

    rows: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            gen_time[0] = 0.0
            timers.take()

        def on_step_end(self, args, state, control, **kw):
            step = time.perf_counter() - self.t0
            backward, optimizer = timers.take()
            gen = gen_time[0]
            update = step - gen
            rows.append(
                {
                    "gen": gen,
                    "forward": max(update - backward - optimizer, 0.0),
                    "backward": backward,
                    "optimizer": optimizer,
                    "rest": 0.0,
                    "step": step,
                    "trained": float(SETTINGS["budget"]),
                }
            )

    bf16 = bf16_supported("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=SETTINGS["budget"],
            num_generations=n,
            gradient_accumulation_steps=1,
            max_completion_length=SETTINGS["max_new_tokens"],
            temperature=0.7,
            top_p=1.0,
            top_k=0,
            learning_rate=3e-5,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            epsilon=0.2,
            epsilon_high=0.28,
            beta=0.0,
            loss_type="dapo",
            bf16=bf16,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=SETTINGS["seed"],
            disable_tqdm=True,
        )
        trainer = Timed(
            model=load_model(path, torch.float32),
            processing_class=load_tokenizer(path),
            reward_funcs=[verifier],
            args=args,
            train_dataset=data,
        )
        trainer.add_callback(Clock())
        trainer.train()
    return rows


def _run_worker(args: list[str], env: dict) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", json.dumps(args), "--json", out]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise click.ClickException(f"{args[0]} failed:\n{tail}")
    rows = json.loads(Path(out).read_text())
    os.unlink(out)
    return rows


@click.command()
@click.option("--before", default="ea1090b", show_default=True, help="Revision to compare.")
@click.option("--steps", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--trl/--no-trl", default=True, show_default=True, help="Include the TRL rows.")
@click.option(
    "--only",
    default=None,
    help="Comma-separated variants to run (default: all), e.g. 'native,trl engine'.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option("--worker", default=None, hidden=True)
def main(before, steps, rounds, trl, only, json_out, worker):
    if worker:  # one measurement, in this process
        kind, *rest = json.loads(worker)
        if kind == "bench":
            rows = _worker_bench(rest[0], rest[1], steps)
        else:
            rows = _worker_trl_stock(steps)
        Path(json_out).write_text(json.dumps(rows))
        return
    tree = Path(tempfile.mkdtemp(prefix="step-profile-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), before],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": ""}
    ways = {
        f"native @ {before}": ["bench", str(tree), "native"],
        "native": ["bench", str(ROOT), "native"],
    }
    if trl:
        ways[f"trl engine @ {before}"] = ["bench", str(tree), "trl"]
        ways["trl engine"] = ["bench", str(ROOT), "trl"]
        ways["trl stock"] = ["trl-stock"]
    if only:
        wanted = [w.strip() for w in only.split(",")]
        if unknown := [w for w in wanted if w not in ways]:
            raise click.UsageError(f"unknown variant(s) {unknown}; variants: {list(ways)}")
        ways = {k: ways[k] for k in wanted}
    results: dict[str, list[dict]] = {k: [] for k in ways}
    try:
        for r in range(rounds):
            for name, args in ways.items():
                t0 = time.perf_counter()
                rows = _run_worker(args, env)
                results[name].extend(rows[1:])  # step 1 sets up kernels
                print(f"round {r + 1}: {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            capture_output=True,
        )
    import torch

    print(
        f"\nmedian seconds per step over steps 2..{steps}, {rounds} round(s), "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'':<22}" + "".join(f"{p:>10}" for p in PARTS) + f"{'trained':>9}{'speed-up':>10}")
    first = None
    for name, rows in results.items():
        med = {p: statistics.median(row[p] for row in rows) for p in PARTS}
        trained = statistics.median(row["trained"] for row in rows)
        first = first or med["step"]
        print(
            f"{name:<22}"
            + "".join(f"{med[p]:>10.2f}" for p in PARTS)
            + f"{trained:>9.0f}{first / med['step']:>9.2f}x"
        )
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
