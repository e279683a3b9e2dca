"""CROPI: curriculum prompt selection by off-policy influence (docs/methods.md#cropi).

CROPI does not split rollouts: it chooses which prompts train in each stage, then runs uniform GRPO
on them. Read against docs/methods.md#cropi (influence score) and docs/methods.md#cropi (stages); official code
``thu-coai/CROPI`` ``cropi/core/get_grad.py``, ``compute_inf_score.py``, ``select.py``,
``cropi/utils/rl_utils.py::grpo_loss``, ``cropi/scripts/run_cropi.sh``.

**Offline rollouts.** Generated once, by the initial policy, in the run's first step:
``n_offline`` = 8 per training prompt for every prompt of the pool, ``n_offline_val`` = 32 per
validation prompt. They are reused unchanged at every stage (``prepare_rollout_jsonls``).
*Cost:* the training-prompt rollouts go through ``Step.sample`` in step 0, so the run's
``rollouts`` and ``tokens`` include them (step 0's batch is the whole pool plus that step's
training samples, and its per-step metrics such as the effective-prompt ratio are over the whole
pool). That is why ``uses_budget`` is False: step 0 spends pool × 8 rollouts on top of the
budget; every later step spends at most the budget. The validation rollouts are drawn from
validation (test) prompts, which a ``Step`` cannot sample; they are generated through the
``GradientSource`` and reported in step 0's ``info`` (``offline_validation_rollouts``), not in the
rollout count (about a quarter of the training-prompt cost on ``cropi-math``).

**Per-prompt gradient.** At the current policy θ_t, for prompt x with offline samples
y_1..y_n, rewards r_j and behaviour log-probabilities log π_β(y_j):
A_j = (r_j − mean r)/(std r + 1e-4) (unbiased std), ρ_j = π_θt(y_j)/π_β(y_j), unclipped
(``--cancel_ppo_clip``), no KL term; loss −(1/n)Σ_j ρ_j·A_j (per-token mean inside a response;
one micro-batch per prompt). The gradient of that loss w.r.t. the policy's parameters comes from
the learner through the ``GradientSource`` protocol below: the simulator implements it with a
Numba kernel (``simulator.kernels.offpolicy_grpo_gradients``), a trainer would with autograd. At
stage 0 θ_t = π_β, ρ ≡ 1: the ordinary GRPO gradient. A prompt whose offline rewards are all
equal has A ≡ 0, a zero gradient, and drops out: it is never scored or selected.

**Projection.** ``allocators.projection.SparseRandomProjection``: ``sparsity`` × d random
coordinates (seed ``proj_seed``), then a dense Gaussian (official ``trak_norm``) or Rademacher
projection to ``proj_dim``; ``projection=identity`` keeps the coordinates unprojected, and
``projection=identity:sparsity=1`` is the exact, unprojected score.

**Targets and score.** Per validation set v (the source's named subsets of the test
prompts), the target ḡ_v is the mean projected gradient of at most ``max_valid`` = 100 of the
set's prompts with a non-zero gradient, chosen by a permutation with seed 0 (fixed across
stages, as ``compute_inf_score.py``'s ``torch.manual_seed(0)``). The score is the cosine
s_v(x) = cos(P g(x), ḡ_v). A set whose prompts all have zero gradients has no target and is
skipped (the official code warns and continues).

**Selection (``select.py``).** K = ⌊ratio × pool⌋ with pool the whole training set
(``int(num_raw * select_ratio)``), candidates the prompts with a non-zero gradient.
``score=inf_valid_uniform`` (default, ``run_cropi.sh``): per validation set the top K candidates
by s_v (stable sort: ties in candidate order), fused score Σ_v 1/rank_v(x) over the sets whose
top K hold x, keep the top K by fused score (ties: order of first appearance, sets in order,
ranks ascending, as the official dict order). ``score=inf``: the top K by max_v s_v(x).
Baselines: ``score=random``, K random prompts of the whole pool (no offline rollouts, no
gradients), drawn afresh at every stage; ``resample_random=false`` keeps the first draw, which is
what the official ``select.py`` does (it reseeds with seed 0 at every call); and
``score=difficulty_random``, K random prompts among those with mixed offline rewards (the
official ``difficulty_random``, which isolates the effect of dropping zero-variance prompts). When
there are fewer candidates than K, all of them are kept.

**Stages.** Every ``stage_steps`` steps (``RL_TOTAL_TRAINING_STEPS`` = 10) the policy's
current θ_t re-scores the pool from the same offline rollouts and a new subset is selected;
``stages`` = 0 re-selects until the run ends, ``stages`` = S stops after S selections and keeps
training on the last subset (the official script runs ``NUM_RL_ROUNDS`` = 2 rounds, likely a
demo value, docs/methods.md). Inside a stage: uniform GRPO as ``allocators/uniform.py`` (n = budget //
prompts_per_step, ``even_split``; A = (r − mean)/(std + 1e-6) via ``group_normalized``) on
batches drawn from an epoch-shuffled ``PromptStream`` over the subset, a fresh stream per stage
(verl restarts with a new dataloader each round). A subset smaller than a batch trains whole each
step with the same per-prompt n (fewer rollouts than the budget).

Statistics. CROPI reads no online reward statistics (its evidence is the fixed offline rollouts),
so it keeps no ``PromptStats``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, cast, runtime_checkable

import numpy as np

from allocators.advantages import GRPO_EPS, group_normalized
from allocators.base import (
    Allocator,
    AllocatorConfig,
    Capabilities,
    PromptStream,
    Samples,
    Step,
    TrainBatch,
    even_split,
)
from allocators.projection import ProjectionKind, SparseRandomProjection, sparse_dim_for

CROPI_ADV_EPS = 1e-4  # get_grad.py / grpo_loss: A = (r − mean) / (std + 1e-4)
_CHUNK = 1024  # prompts whose full gradients are held at once


# --------------------------------------------------------------------------------------------
# What CROPI needs from the learner
# --------------------------------------------------------------------------------------------
@runtime_checkable
class GradientSource(Protocol):
    """Per-prompt policy gradients, and validation prompts to take them on.

    ``split`` is ``"train"`` (prompt ids index the training pool) or ``"validation"`` (they index
    the validation/test prompts). Samples are grouped: ``counts[k]`` consecutive samples belong to
    the k-th prompt, as ``RolloutSource.sample`` returns them.
    """

    @property
    def grad_dim(self) -> int:
        """Number of gradient coordinates (the policy's trainable parameters)."""
        ...

    def validation_sets(self) -> dict[str, np.ndarray]:
        """Named validation sets: prompt ids in the validation index space."""
        ...

    def sample_validation(self, prompt_ids: np.ndarray, counts: np.ndarray) -> Samples:
        """Rollouts of validation prompts by the current policy."""
        ...

    def log_probs(self, samples: Samples, counts: np.ndarray, split: str = "train") -> np.ndarray:
        """The current policy's log-probabilities of the samples (per sample, or per token in
        any layout ``prompt_gradients`` accepts back); called right after sampling it gives the
        behaviour log-probabilities."""
        ...

    def prompt_gradients(
        self,
        samples: Samples,
        counts: np.ndarray,
        behaviour: np.ndarray,
        split: str = "train",
        adv_eps: float = CROPI_ADV_EPS,
    ) -> np.ndarray:
        """One row per prompt: the gradient, at the current policy, of the off-policy GRPO loss
        −(1/n)Σ_j ρ_j A_j with ρ = π_θ/π_β unclipped (``behaviour`` = what ``log_probs``
        returned at sampling time) and A_j = (r_j − mean)/(std + adv_eps), unbiased std."""
        ...


# --------------------------------------------------------------------------------------------
# Scores and selection (pure functions: the tests and scripts/cropi_precision.py use them)
# --------------------------------------------------------------------------------------------
def cosine_scores(train: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """cos(train_i, target_v) for every row i and target v: an (n, V) matrix. Rows of ``train``
    must be non-zero; a zero target gives a column of zeros."""
    tn = np.linalg.norm(train, axis=1)
    vn = np.linalg.norm(targets, axis=1)
    vn = np.where(vn > 0, vn, 1.0)
    # einsum, not a BLAS product: a tall, thin product is slower under BLAS threads (8 ms against
    # 1 ms for 9,000 x 64 by 3 on two shared cores)
    return np.einsum("ij,kj->ik", train, targets / vn[:, None]) / tn[:, None]


def select_valid_uniform(scores: np.ndarray, k: int) -> np.ndarray:
    """``select.py``'s ``inf_valid_uniform``: per column the top ``k`` rows by score (stable
    descending sort), fused score Σ 1/rank over the columns whose top k hold the row, the top
    ``k`` by fused score (ties by order of first appearance). Returns row indices, best first."""
    n, n_sets = scores.shape
    k = min(int(k), n)
    if k <= 0 or n_sets == 0:
        return np.zeros(0, np.int64)
    fused = np.zeros(n)
    tops = []
    for v in range(n_sets):
        top = np.argsort(-scores[:, v], kind="stable")[:k]
        fused[top] += 1.0 / np.arange(1, k + 1)
        tops.append(top)
    listed = np.concatenate(tops)
    rows, first = np.unique(listed, return_index=True)
    appearance = first  # position of the first appearance in the listing
    order = np.lexsort((appearance, -fused[rows]))
    return rows[order][:k].astype(np.int64)


def select_max(scores: np.ndarray, k: int) -> np.ndarray:
    """``select.py``'s ``inf``: the top ``k`` rows by max over columns (stable descending)."""
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        return np.zeros(0, np.int64)
    return np.argsort(-scores.max(axis=1), kind="stable")[: int(k)].astype(np.int64)


def precision_at(selected: np.ndarray, reference: np.ndarray) -> float:
    """|selected ∩ reference| / |reference|: precision@K of a selection against another."""
    if reference.size == 0:
        return float("nan")
    return float(np.intersect1d(selected, reference).size / reference.size)


def _by_prompt(prompts: int, per_prompt: int) -> np.ndarray:
    """The group of each of ``per_prompt`` samples of every prompt, in prompt order."""
    return np.repeat(np.arange(prompts, dtype=np.int64), per_prompt)


def _take_behaviour(behaviour, index: np.ndarray):
    if isinstance(behaviour, np.ndarray):
        return behaviour[index]
    return [behaviour[i] for i in index]


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------
@dataclass
class CropiConfig(AllocatorConfig):
    bounds = {
        "ratio": (0.0, 1.0),
        "stage_steps": (0, 10_000_000),
        "stage_passes": (0.0, 1e6),
        "stages": (0, 10_000_000),
        "sparsity": (0.0, 1.0),
        "proj_dim": (1, 1 << 20),
        "proj_seed": (0, 2**63 - 1),
        "n_offline": (2, 100_000),
        "n_offline_val": (2, 100_000),
        "max_valid": (0, 10_000_000),
        "adv_eps": (0.0, 1.0),
        "eps": (0.0, 1.0),
    }

    score: Literal["inf_valid_uniform", "inf", "random", "difficulty_random"] = "inf_valid_uniform"
    ratio: float = 0.1  # SELECT_RATIO (run_cropi.sh)
    # stage length: passes over the subset per stage, as the official run (module docstring);
    # stage_steps > 0 fixes the steps per stage instead (RL_TOTAL_TRAINING_STEPS = 10)
    stage_passes: float = 0.23
    stage_steps: int = 0
    stages: int = 0  # selections; 0 = re-select every stage until the run ends
    projection: ProjectionKind = "gaussian"  # trak_norm
    sparsity: float = 1.0  # share of gradient coordinates kept before projecting
    proj_dim: int = 32_768  # the official PROJ_DIM; at d <= proj_dim the score is exact
    proj_seed: int = 0
    n_offline: int = 8  # N_SAMPLES
    n_offline_val: int = 32  # N_SAMPLES_VAL
    max_valid: int = 100  # --max_valid_grads; 0 = every validation prompt
    adv_eps: float = CROPI_ADV_EPS
    resample_random: bool = False  # random baselines: the same subset every stage (select.py)
    eps: float = GRPO_EPS  # the stage's GRPO advantage (uniform.py)

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.stage_steps < 0 or self.stages < 0:
            raise ValueError("stage_steps and stages must be >= 0")
        if self.stage_steps == 0 and self.stage_passes <= 0:
            raise ValueError("stage_passes must be > 0 when stage_steps is 0")
        if self.n_offline < 2 or self.n_offline_val < 2:
            raise ValueError("n_offline and n_offline_val must be >= 2 (a group needs two rewards)")
        if self.max_valid < 0 or self.proj_dim < 1:
            raise ValueError("max_valid must be >= 0 and proj_dim >= 1")
        sparse_dim_for(1, self.sparsity)  # validates the range


class Cropi(Allocator):
    name = "cropi"
    Config = CropiConfig
    # step 0 adds the offline rollouts to the budget (module docstring): its own spend
    caps = Capabilities(
        spend="own",
        min_rollouts_per_prompt=2,
        presets={"compressed": {"sparsity": 0.5, "proj_dim": 1024}},
    )

    def capabilities(self) -> Capabilities:
        if self.needs_gradients:
            return replace(
                self.caps,
                needs=frozenset({"gradients"}),
                instead="cropi:score=random or cropi:score=difficulty_random",
            )
        return self.caps

    # -- lifecycle ---------------------------------------------------------------------------
    def reset(self, num_prompts: int, rng: np.random.Generator) -> None:
        super().reset(num_prompts, rng)
        c = self.config
        self.k = max(1, int(self.num_prompts * c.ratio))
        self.selections = 0  # subsets selected so far
        self.in_stage = 0  # steps trained on the current subset
        self.stage_len = 0  # steps of the current stage (``stage_length``)
        self.subset: np.ndarray | None = None
        self.stream: PromptStream | None = None
        self.projector: SparseRandomProjection | None = None
        self.gradients: GradientSource | None = None  # the step's source (``needs_gradients``)
        # offline rollouts of the training pool (n_offline per prompt, prompt order)
        self.offline: Samples | None = None
        self.offline_behaviour: Any = None  # per sample, or per token (whatever log_probs gives)
        self.offline_successes: np.ndarray | None = None
        # validation sets: name -> (prompt ids, samples, counts, behaviour)
        self.valid: dict[str, tuple] = {}

    def grads(self) -> GradientSource:
        """The step's source as a ``GradientSource`` (bound at the start of every step)."""
        if self.gradients is None:
            raise RuntimeError("cropi's influence score runs before its first step")
        return self.gradients

    def _offline(self) -> Samples:
        if self.offline is None:
            raise RuntimeError("cropi has no offline rollouts yet")
        return self.offline

    @property
    def needs_offline(self) -> bool:
        return self.config.score != "random"

    @property
    def needs_gradients(self) -> bool:
        return self.config.score in ("inf_valid_uniform", "inf")

    # -- the step ----------------------------------------------------------------------------
    def run_step(self, step: Step) -> tuple[TrainBatch, dict]:
        c = self.config
        info: dict = {}
        pool_in_batch = False
        if self.needs_gradients:  # declared in capabilities(); validate() checked the source
            self.gradients = cast(GradientSource, step.source)
        if self.subset is None or (
            self.in_stage >= self.stage_len and (c.stages == 0 or self.selections < c.stages)
        ):
            if self.needs_offline and self.offline is None:
                self._generate_offline(step, info)
                pool_in_batch = True
            self.subset = self._select(info)
            self.stream = PromptStream(self.subset.size, self.rng)
            self.selections += 1
            self.in_stage = 0
            self.stage_len = self.stage_length(self.subset.size, step.prompts_per_step)
            info.update(stage=self.selections, subset=int(self.subset.size), steps=self.stage_len)
        m = min(step.prompts_per_step, self.subset.size)
        assert self.stream is not None
        ids = self.subset[self.stream.take(m)]
        # step 0 holds the whole pool as groups 0..N-1 (group = prompt id): train in those groups
        groups = ids if pool_in_batch else step.add_prompts(ids)
        counts = even_split(step.budget, step.prompts_per_step)[:m]
        start = step.rollouts
        part = step.sample(groups, counts)
        adv = group_normalized(part.group, part.rewards, step.num_groups, c.eps)
        self.in_stage += 1
        index = np.arange(start, start + len(part), dtype=np.int64)
        return TrainBatch(index, adv, np.ones(index.size)), info

    def stage_length(self, subset: int, prompts_per_step: int) -> int:
        """Steps per stage: ``stage_steps``, or the steps that make ``stage_passes`` passes over
        the subset (at least one): round(passes × subset / min(prompts_per_step, subset))."""
        c = self.config
        if c.stage_steps > 0:
            return c.stage_steps
        batch = max(1, min(prompts_per_step, subset))
        return max(1, round(c.stage_passes * subset / batch))

    # -- offline rollouts -------------------------------------------------------------
    def _generate_offline(self, step: Step, info: dict) -> None:
        c = self.config
        n = self.num_prompts
        groups = step.add_prompts(np.arange(n, dtype=np.int64))
        counts = np.full(n, c.n_offline, np.int64)
        off = step.sample(groups, counts)
        self.offline = Samples(
            off.prompt_ids,
            _by_prompt(n, c.n_offline),
            off.rewards,
            off.lengths,
            off.answers,
            off.tokens,
        )
        self.offline_successes = (off.rewards > 0.5).reshape(n, c.n_offline).sum(axis=1)
        info["offline_rollouts"] = int(counts.sum())
        if not self.needs_gradients:
            return
        g = self.grads()
        self.offline_behaviour = g.log_probs(self.offline, counts, "train")
        val_rollouts = 0
        for name, vids in g.validation_sets().items():
            vids = np.asarray(vids, np.int64)
            vcounts = np.full(vids.size, c.n_offline_val, np.int64)
            vs = g.sample_validation(vids, vcounts)
            self.valid[name] = (vids, vs, vcounts, g.log_probs(vs, vcounts, "validation"))
            val_rollouts += int(vcounts.sum())
        info["offline_validation_rollouts"] = val_rollouts

    @property
    def informative(self) -> np.ndarray:
        """Prompts whose offline rewards are not all equal (the only ones CROPI can select)."""
        s = self.offline_successes
        assert s is not None, "no offline rollouts yet"
        return (s > 0) & (s < self.config.n_offline)

    # -- scores -------------------------------------------------------------------------
    def make_projector(
        self,
        kind: ProjectionKind | None = None,
        sparsity: float | None = None,
        proj_dim: int | None = None,
        seed: int | None = None,
    ) -> SparseRandomProjection:
        c = self.config
        dim = self.grads().grad_dim
        return SparseRandomProjection(
            dim,
            sparse_dim_for(dim, c.sparsity if sparsity is None else sparsity),
            c.proj_dim if proj_dim is None else proj_dim,
            kind or c.projection,
            c.proj_seed if seed is None else seed,
        )

    def train_gradients(
        self, prompts: np.ndarray, projector: SparseRandomProjection | None
    ) -> np.ndarray:
        """Projected (or, with ``projector=None``, full) off-policy gradients of training
        ``prompts`` at the current policy, computed ``_CHUNK`` prompts at a time."""
        n_off = self.config.n_offline
        width = self.grads().grad_dim if projector is None else projector.out_dim
        out = np.empty((prompts.size, width))
        for lo in range(0, prompts.size, _CHUNK):
            chunk = prompts[lo : lo + _CHUNK]
            rows = (chunk[:, None] * n_off + np.arange(n_off)).ravel()
            g = self.grads().prompt_gradients(
                self._offline().take(rows),
                np.full(chunk.size, n_off, np.int64),
                _take_behaviour(self.offline_behaviour, rows),
                "train",
                self.config.adv_eps,
            )
            out[lo : lo + chunk.size] = g if projector is None else projector(g)
        return out

    def validation_gradients(self) -> dict[str, np.ndarray]:
        """Full gradients of the (at most ``max_valid``) validation prompts of each set that
        enter its target: non-zero rows, subset by a seed-0 permutation."""
        out = {}
        for name, (_vids, vs, vcounts, beh) in self.valid.items():
            g = self.grads().prompt_gradients(vs, vcounts, beh, "validation", self.config.adv_eps)
            g = g[np.any(g != 0.0, axis=1)]
            if self.config.max_valid and g.shape[0] > self.config.max_valid:
                g = g[np.random.default_rng(0).permutation(g.shape[0])[: self.config.max_valid]]
            if g.shape[0]:
                out[name] = g
        return out

    def influence(
        self, projector: SparseRandomProjection | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(candidates, scores, set names): cosine of every candidate's projected gradient with
        every validation target at the current policy. Candidates: prompts with mixed offline
        rewards and a non-zero projected gradient."""
        proj = projector if projector is not None else self.make_projector()
        vgrads = self.validation_gradients()
        names = list(vgrads)
        targets = (
            np.stack([proj(vgrads[v]).mean(axis=0) for v in names])
            if names
            else np.zeros((0, proj.out_dim))
        )
        # chunk by chunk: the candidates' gradients are never held whole (6,800 x 2,048 floats
        # on cropi-math, 110 MB)
        cand = np.flatnonzero(self.informative).astype(np.int64)
        kept, scores = [np.zeros(0, np.int64)], [np.zeros((0, len(names)))]
        for lo in range(0, cand.size, _CHUNK):
            chunk = cand[lo : lo + _CHUNK]
            train = self.train_gradients(chunk, proj)
            nonzero = np.any(train != 0.0, axis=1)
            kept.append(chunk[nonzero])
            scores.append(cosine_scores(train[nonzero], targets))
        return np.concatenate(kept), np.concatenate(scores), names

    # -- selection (select.py) ---------------------------------------------------------
    def _select(self, info: dict) -> np.ndarray:
        c = self.config
        if c.score == "random":
            if self.subset is not None and not c.resample_random:
                return self.subset
            return np.sort(self.rng.permutation(self.num_prompts)[: self.k])
        if c.score == "difficulty_random":
            if self.subset is not None and not c.resample_random:
                return self.subset
            cand = np.flatnonzero(self.informative)
            info["candidates"] = int(cand.size)
            return (
                np.sort(self.rng.permutation(cand)[: self.k])
                if cand.size
                else np.arange(self.num_prompts)
            )
        if self.projector is None:
            self.projector = self.make_projector()
        cand, scores, names = self.influence(self.projector)
        info["candidates"] = int(cand.size)
        info["validation_sets"] = names
        if cand.size == 0:  # nothing informative: train on the whole pool
            return np.arange(self.num_prompts, dtype=np.int64)
        if not names:  # no validation set has a target: random candidates
            return np.sort(self.rng.permutation(cand)[: self.k])
        rows = (
            select_valid_uniform(scores, self.k)
            if c.score == "inf_valid_uniform"
            else select_max(scores, self.k)
        )
        return np.sort(cand[rows])

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        def arr(x):
            return None if x is None else np.asarray(x).tolist()

        off = self.offline
        return {
            "selections": self.selections,
            "in_stage": self.in_stage,
            "stage_len": self.stage_len,
            "subset": arr(self.subset),
            "stream": None if self.stream is None else self.stream.state_dict(),
            "offline": None
            if off is None
            else {
                "prompt_ids": arr(off.prompt_ids),
                "rewards": arr(off.rewards),
                "lengths": arr(off.lengths),
                "tokens": off.tokens,
                "behaviour": (
                    arr(self.offline_behaviour)
                    if isinstance(self.offline_behaviour, np.ndarray)
                    else self.offline_behaviour
                ),
            },
            "valid": {
                name: {
                    "ids": arr(v[0]),
                    "rewards": arr(v[1].rewards),
                    "prompt_ids": arr(v[1].prompt_ids),
                    "lengths": arr(v[1].lengths),
                    "tokens": v[1].tokens,
                    "counts": arr(v[2]),
                    "behaviour": arr(v[3]) if isinstance(v[3], np.ndarray) else v[3],
                }
                for name, v in self.valid.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.selections = int(state["selections"])
        self.in_stage = int(state["in_stage"])
        self.stage_len = int(state["stage_len"])
        self.subset = None if state["subset"] is None else np.asarray(state["subset"], np.int64)
        self.stream = None
        if state["stream"] is not None:
            assert self.subset is not None
            self.stream = PromptStream(self.subset.size, self.rng)
            self.stream.load_state_dict(state["stream"])
        off = state["offline"]
        if off is not None:
            self.offline = Samples(
                np.asarray(off["prompt_ids"], np.int64),
                _by_prompt(self.num_prompts, self.config.n_offline),
                np.asarray(off["rewards"], np.float64),
                np.asarray(off["lengths"], np.int64),
                tokens=off["tokens"],
            )
            b = off["behaviour"]
            self.offline_behaviour = (
                None if b is None else (np.asarray(b, np.float64) if off["tokens"] is None else b)
            )
            self.offline_successes = (
                (self.offline.rewards > 0.5).reshape(-1, self.config.n_offline).sum(axis=1)
            )
        self.valid = {}
        for name, v in state["valid"].items():
            vcounts = np.asarray(v["counts"], np.int64)
            vs = Samples(
                np.asarray(v["prompt_ids"], np.int64),
                np.repeat(np.arange(vcounts.size, dtype=np.int64), vcounts),
                np.asarray(v["rewards"]),
                np.asarray(v["lengths"], np.int64),
                tokens=v["tokens"],
            )
            beh = np.asarray(v["behaviour"], np.float64) if v["tokens"] is None else v["behaviour"]
            self.valid[name] = (
                np.asarray(v["ids"], np.int64),
                vs,
                np.asarray(v["counts"], np.int64),
                beh,
            )
