"""Cost per step of the chain learning model against the one-step model (docs/simulator.md#the-chain-model).

    python scripts/chain_speed.py [--scenario dapo-math] [--method uniform] [--ks 1,2,3,5]
                                  [--steps 1000] [--repeats 3]
    python scripts/chain_speed.py --ratios [--ks 1,3] [--steps 1000] [--seeds 0,1,2]

Speed: each k (``steps_per_prompt``; 1 is the one-step model) runs once briefly to compile its
kernels, then ``--repeats`` timed runs of ``--steps`` steps, the repeats of every k interleaved so
that a change in the machine's load falls on all of them. A run is the loop of
``simulator.run.run_simulation`` (256 prompts × 8, evaluation every 50 steps); only the loop is
timed, not the world's construction, which is reported apart (one build). "model" is the part
of a step spent in the learning model (sampling, the update with its allocation moments,
evaluation), where k enters; the rest (selection, allocation, advantages, statistics, metrics)
does not depend on k. Ratios are to the first k listed.

Ratios: uniform's effective-gradient ratio over the run (first 10 steps, last 50) and Knapsack
RL's gain on it (its run-mean over uniform's, paired by seed), per k; uniform's test accuracy
(start -> end) and how far its prompts' score directions turned: the mean cosine between e_i at
the start and at the end of the run (``LearningModel.directions``; exactly 1 at one step).

The scenarios at k > 1 are ``dataclasses.replace(get_scenario(name), steps_per_prompt=k)``,
registered in-process under ``<name>@k<k>``.
"""

from __future__ import annotations

import dataclasses
import time

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from allocators import loop
from allocators.base import PromptStream
from bench.errors import run_one_line, usage_error
from simulator import scenarios
from simulator.model import LearningModel, SimulatedSource
from simulator.run import SimConfig, run_simulation, schedule


def _scenario(name: str, k: int) -> str:
    """The name of ``name`` at ``k`` steps per prompt, registered in-process."""
    if k == 1:
        return name
    chain = f"{name}@k{k}"
    base = scenarios.get_scenario(name)
    scenarios.SCENARIOS[chain] = dataclasses.replace(base, name=chain, steps_per_prompt=k)
    return chain


class _Timer:
    """Wraps methods of an object so that the seconds spent in them add up in ``seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, obj, *names: str) -> None:
        for name in names:
            fn = getattr(obj, name)

            def timed(*a, _fn=fn, **kw):
                t0 = time.perf_counter()
                try:
                    return _fn(*a, **kw)
                finally:
                    self.seconds += time.perf_counter() - t0

            setattr(obj, name, timed)


def _run(cfg: SimConfig):
    """``run_simulation``'s loop for ``cfg``: (steps table, evals table, the final model, seconds
    of the loop, seconds of the world's build, seconds in the learning model: sampling, the
    update with its allocation moments, evaluation)."""
    scenario = scenarios.get_scenario(cfg.scenario)
    t0 = time.perf_counter()
    world = scenarios.build_world(scenario, cfg.seed)
    build = time.perf_counter() - t0
    model = LearningModel(scenario, world)
    source = SimulatedSource(model, np.random.default_rng([cfg.seed, 1]))
    stream = PromptStream(scenario.num_prompts, np.random.default_rng([cfg.seed, 2]))
    allocator = cfg.spec().build()
    allocator.reset(scenario.num_prompts, np.random.default_rng([cfg.seed, 3]))
    in_model = _Timer()
    in_model.wrap(source, "sample")
    in_model.wrap(model, "learn", "evaluate")
    t0 = time.perf_counter()
    prog, _ = loop.run(allocator, source, model, stream, schedule(cfg), cost=cfg.cost())
    wall = time.perf_counter() - t0
    steps, evals, _ = loop.tables(prog)
    return steps, evals, model, wall, build, in_model.seconds


def _turn(model: LearningModel) -> float:
    """Mean cosine, over the training prompts, between a prompt's score direction for θ at the
    start (θ = 0, u = 0) and at the model's current parameters (1 in the one-step model)."""
    ids = np.arange(model.w.X.shape[0])
    _, now = model.directions(ids)
    theta, u = model.theta.copy(), model.u.copy()
    model.theta[:], model.u[:] = 0.0, 0.0
    _, start = model.directions(ids)
    model.theta[:], model.u[:] = theta, u
    cos = np.einsum("ij,ij->i", now, start)
    return float(np.mean(cos / np.linalg.norm(now, axis=1) / np.linalg.norm(start, axis=1)))


def speed(scenario: str, method: str, ks: list[int], steps: int, repeats: int) -> Table:
    cfgs = {
        k: SimConfig(scenario=_scenario(scenario, k), method=method, steps=steps, eval_every=50)
        for k in ks
    }
    for cfg in cfgs.values():
        run_simulation(dataclasses.replace(cfg, steps=12, eval_every=6))  # compile
    best = {k: np.inf for k in ks}
    best_model = {k: np.inf for k in ks}
    build: dict[int, float] = {}
    for r in range(repeats):
        for k, cfg in cfgs.items():
            *_, wall, b, in_model = _run(dataclasses.replace(cfg, seed=r))
            best[k] = min(best[k], wall)
            best_model[k] = min(best_model[k], in_model)
            build.setdefault(k, b)
    table = Table(
        title=f"cost per step: {scenario}, {method}, 256 prompts x 8, {steps} steps, "
        f"best of {repeats}"
    )
    cols = (
        "steps per prompt",
        "ms/step",
        "steps/s",
        "x first",
        "model ms/step",
        "model x first",
        "world build (s)",
    )
    for col in cols:
        table.add_column(col, justify="right")
    ref, ref_model = best[ks[0]], best_model[ks[0]]
    for k in ks:
        table.add_row(
            str(k),
            f"{1e3 * best[k] / steps:.3f}",
            f"{steps / best[k]:,.0f}",
            f"{best[k] / ref:.2f}",
            f"{1e3 * best_model[k] / steps:.3f}",
            f"{best_model[k] / ref_model:.2f}",
            f"{build[k]:.2f}",
        )
    return table


def ratios(scenario: str, ks: list[int], steps: int, seeds: list[int]) -> Table:
    table = Table(
        title=f"effective-gradient ratio: {scenario}, 256 prompts x 8, {steps} steps, "
        f"seeds {','.join(map(str, seeds))}"
    )
    cols = (
        "steps per prompt",
        "uniform first 10",
        "uniform last 50",
        "uniform mean",
        "knapsack mean",
        "knapsack gain",
        "uniform test acc",
        "direction cos",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for k in ks:
        name = _scenario(scenario, k)
        rows: dict[str, list] = {"uniform": [], "knapsack": []}
        for method in rows:
            for seed in seeds:
                cfg = SimConfig(scenario=name, method=method, seed=seed, steps=steps, eval_every=50)
                st, ev, model, *_ = _run(cfg)
                e = st.effective_grad_ratio.to_numpy()
                acc = ev.test_accuracy.to_numpy()
                turn = _turn(model) if method == "uniform" else np.nan
                rows[method].append(
                    (e[:10].mean(), e[-50:].mean(), e.mean(), acc[0], acc[-1], turn)
                )
        u, kn = np.asarray(rows["uniform"]), np.asarray(rows["knapsack"])
        gain = np.mean(kn[:, 2] / u[:, 2]) - 1
        table.add_row(
            str(k),
            f"{u[:, 0].mean():.3f}",
            f"{u[:, 1].mean():.3f}",
            f"{u[:, 2].mean():.3f}",
            f"{kn[:, 2].mean():.3f}",
            f"{100 * gain:+.1f}%",
            f"{u[:, 3].mean():.3f} -> {u[:, 4].mean():.3f}",
            f"{u[:, 5].mean():.3f}",
        )
    return table


def _ints(text: str, what: str, lo: int, hi: int) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise usage_error(f"--{what} must be a comma-separated list of integers") from None
    if not out or any(not lo <= v <= hi for v in out):
        raise usage_error(f"--{what} must list integers from {lo} to {hi}")
    return out


@click.command()
@click.option("--scenario", default="dapo-math", show_default=True)
@click.option("--method", default="uniform", show_default=True, help="Method of the speed table.")
@click.option("--ks", default="1,2,3,5", show_default=True, help="Steps per prompt to compare.")
@click.option("--steps", type=click.IntRange(min=50), default=1000, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--ratios", "do_ratios", is_flag=True, help="The ratio table instead of speed.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds of the ratio table.")
def main(scenario, method, ks, steps, repeats, do_ratios, seeds):
    """Print the chain model's cost per step (or its effective-gradient ratios) per k."""
    if scenario not in scenarios.SCENARIOS:
        raise usage_error(f"unknown scenario {scenario!r}")
    lo, hi = scenarios.STEPS_PER_PROMPT
    k_list = _ints(ks, "ks", lo, hi)
    console = Console(width=160)
    if do_ratios:
        console.print(ratios(scenario, k_list, steps, _ints(seeds, "seeds", 0, 2**31)))
    else:
        console.print(speed(scenario, method, k_list, steps, repeats))


if __name__ == "__main__":
    run_one_line(main.main)
