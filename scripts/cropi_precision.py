"""Precision@10% of CROPI's projected influence ranking against the exact one (docs/methods.md#cropi).

    python scripts/cropi_precision.py [--scenario cropi-math] [--seed 0] [--trained-steps 100]
        [--sparsity 1,0.5,0.25,0.1,0.05] [--proj-dims 16,32,64,128,256,512,1024]
        [--projection gaussian] [--repeats 3]

The claim checked: sparse random projection keeps about 80% precision@10% of the influence ranking
at sparsity ratio 0.1, better than direct projection (sparsity 1).

Procedure. A simulated world of the scenario; CROPI's offline rollouts are drawn by the initial
policy (8 per training prompt, 32 per validation prompt); then the policy trains ``--trained-steps``
steps of uniform GRPO, so that the off-policy importance ratios are not 1 (0 scores at the initial
policy). At that policy the exact per-prompt gradients (d coordinates) of every candidate (mixed
offline rewards) and of the validation prompts are computed once. For each sparsity and projection
size and ``--repeats`` projection seeds, the projected scores give:

- ``per-set``: |top-K by projected cosine ∩ top-K by exact cosine| / K per validation set, mean over
  the sets, K = ⌊0.1 × pool⌋ (CROPI's selection size);
- ``fused``: the same for CROPI's selection (``inf_valid_uniform``: per-set top K, reciprocal-rank
  fusion, top K).

Each cell is the mean over seeds (± the standard deviation when there is more than one). The
header gives the chance level, K / candidates: the precision of K candidates drawn at random.
"""

from __future__ import annotations

import time

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from allocators.base import PromptStream, Step
from allocators.cropi import Cropi, CropiConfig, cosine_scores, precision_at, select_valid_uniform
from allocators.projection import SparseRandomProjection, sparse_dim_for
from allocators.registry import parse_spec
from bench.errors import run_one_line, usage_error
from simulator.model import LearningModel, SimulatedSource
from simulator.scenarios import SCENARIOS, build_world


def _floats(text: str, name: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise usage_error(f"--{name} expects comma-separated numbers, got {text!r}") from None
    if not out:
        raise usage_error(f"--{name} is empty")
    return out


def exact_gradients(
    scenario: str, seed: int, trained_steps: int, budget: int, prompts_per_step: int
):
    """(cropi, candidate ids, full train gradients, full validation gradients per set)."""
    s = SCENARIOS[scenario]
    world = build_world(s, seed)
    model = LearningModel(s, world)
    source = SimulatedSource(model, np.random.default_rng([seed, 1]))
    stream = PromptStream(s.num_prompts, np.random.default_rng([seed, 2]))
    rng = np.random.default_rng([seed, 3])
    cropi = Cropi(CropiConfig(projection="identity", sparsity=1.0))
    cropi.reset(s.num_prompts, rng)
    # offline rollouts at the initial policy (CROPI's step 0; its training batch is not learned)
    cropi.step(Step(0, stream, source, budget, prompts_per_step))
    uniform = parse_spec("uniform").build()
    uniform.reset(s.num_prompts, rng)
    for t in range(trained_steps):
        r = uniform.step(Step(t, stream, source, budget, prompts_per_step))
        model.learn(r)
    cand = np.flatnonzero(cropi.informative).astype(np.int64)
    train = cropi.train_gradients(cand, None)
    keep = np.any(train != 0.0, axis=1)
    return cropi, cand[keep], train[keep], cropi.validation_gradients(), model.test_accuracy()


def scores_with(proj: SparseRandomProjection, train: np.ndarray, valid: dict[str, np.ndarray]):
    targets = np.stack([proj(g).mean(axis=0) for g in valid.values()])
    return cosine_scores(proj(train), targets)


@click.command()
@click.option("--scenario", default="cropi-math", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--trained-steps",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Uniform GRPO steps between the offline rollouts and the scoring.",
)
@click.option(
    "--sparsity",
    default="1,0.5,0.25,0.1,0.05",
    show_default=True,
    help="Shares of gradient coordinates kept before projecting (1 = direct projection).",
)
@click.option("--proj-dims", default="16,32,64,128,256,512,1024", show_default=True)
@click.option(
    "--projection",
    type=click.Choice(["gaussian", "rademacher"]),
    default="gaussian",
    show_default=True,
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Projection seeds per cell.",
)
@click.option(
    "--ratio",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.1,
    show_default=True,
    help="K = ratio x pool (precision@ratio).",
)
def main(scenario, seed, trained_steps, sparsity, proj_dims, projection, repeats, ratio):
    """Print precision@10% of projected against exact influence rankings."""
    if scenario not in SCENARIOS:
        raise usage_error(f"unknown scenario {scenario!r} (scenarios: {', '.join(SCENARIOS)})")
    sparsities = _floats(sparsity, "sparsity")
    dims = [int(x) for x in _floats(proj_dims, "proj-dims")]
    if any(not 0 < x <= 1 for x in sparsities) or any(x < 1 for x in dims):
        raise usage_error("--sparsity values must be in (0, 1] and --proj-dims values >= 1")
    t0 = time.perf_counter()
    cropi, cand, train, valid, acc = exact_gradients(scenario, seed, trained_steps, 2048, 256)
    d = train.shape[1]
    k = int(cropi.num_prompts * ratio)
    exact = cosine_scores(train, np.stack([g.mean(axis=0) for g in valid.values()]))
    exact_top = [np.argsort(-exact[:, v], kind="stable")[:k] for v in range(exact.shape[1])]
    exact_sel = select_valid_uniform(exact, k)
    console = Console(width=160)
    console.print(
        f"{scenario}, seed {seed}: d = {d}, pool {cropi.num_prompts}, "
        f"{cand.size} candidates, K = {k}, validation sets "
        f"{', '.join(f'{n} ({g.shape[0]} prompts)' for n, g in valid.items())}; "
        f"policy after {trained_steps} uniform steps (test accuracy {acc:.3f}); "
        f"exact gradients in {time.perf_counter() - t0:.1f} s; chance level "
        f"(K random candidates) {k / cand.size:.3f}"
    )
    for what in ("per-set", "fused"):
        table = Table(
            title=f"precision@{ratio:g} ({what}), {projection} projection, "
            f"mean over {repeats} projection seeds"
        )
        table.add_column("sparsity (kept coords)", justify="left")
        for p in dims:
            table.add_column(f"proj {p}", justify="right")
        for sp in sparsities:
            row = [f"{sp:g} ({sparse_dim_for(d, sp)})"]
            for p in dims:
                vals = []
                for r in range(repeats):
                    proj = SparseRandomProjection(d, sparse_dim_for(d, sp), p, projection, seed=r)
                    sc = scores_with(proj, train, valid)
                    if what == "per-set":
                        vals.append(
                            np.mean(
                                [
                                    precision_at(
                                        np.argsort(-sc[:, v], kind="stable")[:k], exact_top[v]
                                    )
                                    for v in range(sc.shape[1])
                                ]
                            )
                        )
                    else:
                        vals.append(precision_at(select_valid_uniform(sc, k), exact_sel))
                row.append(f"{np.mean(vals):.3f}" + (f"±{np.std(vals):.3f}" if repeats > 1 else ""))
            table.add_row(*row)
        console.print(table)
    console.print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    run_one_line(main.main)
