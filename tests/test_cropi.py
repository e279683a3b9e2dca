"""CROPI (docs/methods.md#cropi): projection, per-prompt gradients, selection, stages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from allocators.base import SettingsError, validate
from allocators.cropi import (
    Cropi,
    CropiConfig,
    GradientSource,
    cosine_scores,
    precision_at,
    select_max,
    select_valid_uniform,
)
from allocators.projection import SparseRandomProjection, sparse_dim_for
from allocators.registry import SpecError, parse_spec
from simulator import kernels


# --------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_projection_preserves_inner_products_within_the_jl_bound(kind):
    """Johnson–Lindenstrauss on 200 random vectors in d = 2,048, projected to k = 512.

    Norms: |‖Pu‖² − ‖u‖²| ≤ ε‖u‖² with ε = 0.35 for every vector; the JL tail bound
    2·exp(−k(ε²/2 − ε³/3)/2) = 1.3e-5 per vector makes a violation among 200 a 0.3% event for a
    correct projection. Inner products of 100 disjoint pairs: the errors divided by their
    standard deviation √((‖u‖²‖v‖² + ⟨u,v⟩²)/k) have mean within ±0.4 (4 standard errors of a
    mean of 100) and mean square within [0.6, 1.4] (Gaussian: about 4.4 standard errors of
    χ²₁₀₀/100; Rademacher's variance is at most the Gaussian one, and for these dense vectors
    within 0.1% of it)."""
    d, k = 2048, 512
    rng = np.random.default_rng(11)
    u = rng.standard_normal((200, d)) * rng.uniform(0.5, 2.0, (200, 1))
    u[100:] += 0.7 * u[:100]  # pairs (i, i + 100) with inner products of every size
    p = SparseRandomProjection(d, d, k, kind, seed=3)
    pu = p(u)
    assert pu.shape == (200, k)
    nu = (u * u).sum(1)
    assert np.all(np.abs((pu * pu).sum(1) - nu) <= 0.35 * nu)
    a, b, pa, pb = u[:100], u[100:], pu[:100], pu[100:]
    ip = (a * b).sum(1)
    sd = np.sqrt(((a * a).sum(1) * (b * b).sum(1) + ip**2) / k)
    z = ((pa * pb).sum(1) - ip) / sd
    assert abs(z.mean()) < 0.4
    assert 0.6 < (z * z).mean() < 1.4


def test_sparse_projection_is_unbiased_for_spread_vectors():
    """Coordinate sampling (half the coordinates) then projection: squared norms are unbiased,
    ‖Pu‖²/‖u‖² averages 1 within ±0.03 over 400 dense vectors (standard error about 0.005:
    sampling half of 2,048 coordinates adds a relative standard deviation of about 0.04, the
    projection to 1,024 about 0.044)."""
    d = 2048
    u = np.random.default_rng(5).standard_normal((400, d))
    p = SparseRandomProjection(d, sparse_dim_for(d, 0.5), 1024, "gaussian", seed=1)
    ratio = (p(u) ** 2).sum(1) / (u * u).sum(1)
    assert abs(ratio.mean() - 1) < 0.03
    assert p.coords.size == 1024 and np.unique(p.coords).size == 1024


def test_identity_projection_is_exact_and_sparse_identity_selects_coordinates():
    g = np.random.default_rng(0).standard_normal((7, 64))
    exact = SparseRandomProjection(64, 64, 0, "identity")
    assert exact.is_exact and np.array_equal(exact(g), g)
    sub = SparseRandomProjection(64, 16, 0, "identity", seed=4)
    assert np.allclose(sub(g), g[:, sub.coords] * 2.0)  # √(64/16)
    again = SparseRandomProjection(64, 16, 0, "identity", seed=4)
    assert np.array_equal(sub.coords, again.coords)  # fixed seed, fixed coordinates


def test_projection_rejects_bad_sizes():
    with pytest.raises(ValueError):
        SparseRandomProjection(10, 11, 4)
    with pytest.raises(ValueError):
        SparseRandomProjection(10, 5, 4, "sparse")
    with pytest.raises(ValueError):
        sparse_dim_for(10, 0.0)
    assert sparse_dim_for(2048, 0.1) == 205 and sparse_dim_for(10, 0.01) == 1


# --------------------------------------------------------------------------------------------
# Selection against a reference written like select.py (dicts, stable sorted)
# --------------------------------------------------------------------------------------------
def reference_valid_uniform(scores: np.ndarray, k: int) -> list[int]:
    merged: dict[int, dict[int, int]] = {}
    for v in range(scores.shape[1]):
        ranked = sorted(range(scores.shape[0]), key=lambda i: scores[i, v], reverse=True)[:k]
        for rank, i in enumerate(ranked, start=1):
            merged.setdefault(i, {})[v] = rank
    fused = {i: float(np.sum(1 / np.array(list(r.values())))) for i, r in merged.items()}
    return [i for i, _ in sorted(fused.items(), key=lambda x: x[1], reverse=True)[:k]]


@pytest.mark.parametrize("seed", range(5))
def test_fused_selection_matches_reference(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(-1, 1, (300, 3)), 1)  # coarse: many ties
    for k in (1, 30, 120, 300):
        assert select_valid_uniform(scores, k).tolist() == reference_valid_uniform(scores, k)
    top = select_max(scores, 30)
    assert top.tolist() == sorted(range(300), key=lambda i: scores[i].max(), reverse=True)[:30]


def test_cosine_scores():
    rng = np.random.default_rng(1)
    a, t = rng.standard_normal((5, 9)), rng.standard_normal((2, 9))
    want = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in t] for x in a])
    np.testing.assert_allclose(cosine_scores(a, t), want, rtol=1e-12)
    assert precision_at(np.array([1, 2, 3]), np.array([2, 3, 4, 5])) == 0.5


# --------------------------------------------------------------------------------------------
# The simulator's per-prompt gradient
# --------------------------------------------------------------------------------------------
def _loss(theta, X, u, b, ids, counts, rewards, beh, eps=1e-4):
    """CROPI's per-prompt loss −(1/n)Σ ρ_j A_j, written out in numpy, one value per prompt."""
    out, j = [], 0
    for i, n in zip(ids, counts):
        r = rewards[j : j + n]
        a = (r - r.mean()) / (r.std(ddof=1) + eps)
        p = 1 / (1 + np.exp(-(X[i] @ theta + u[i] - b[i])))
        logp = np.where(r > 0.5, np.log(p), np.log1p(-p))
        out.append(-np.mean(np.exp(logp - beh[j : j + n]) * a))
        j += n
    return np.array(out)


def test_gradient_equals_finite_differences():
    rng = np.random.default_rng(2)
    m, d, n = 6, 5, 8
    X, u, b = rng.normal(size=(m, d)), rng.normal(size=m), rng.normal(size=m)
    theta_b = rng.normal(size=d) * 0.3
    ids, counts = np.arange(m), np.full(m, n)
    rewards = (rng.random(m * n) < 0.5).astype(float)
    rewards[:n] = 1.0  # prompt 0: equal rewards -> zero row
    beh = kernels.sample_log_probs(ids, counts, rewards, X, theta_b, u, b)
    theta = theta_b + rng.normal(size=d) * 0.5  # off-policy: ρ ≠ 1
    g = kernels.offpolicy_grpo_gradients(ids, counts, rewards, beh, X, theta, u, b, 1e-4)
    h = 1e-6
    fd = np.empty((m, d))
    for k in range(d):
        e = np.zeros(d)
        e[k] = h
        fd[:, k] = (
            _loss(theta + e, X, u, b, ids, counts, rewards, beh)
            - _loss(theta - e, X, u, b, ids, counts, rewards, beh)
        ) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
    assert np.all(g[0] == 0.0) and np.all(np.abs(g[1:]).sum(1) > 0)


def test_gradient_on_policy_by_hand():
    """At θ = θ_β (ρ = 1) and p = 1/2: rewards 1,0,0,1 have mean 1/2, unbiased std 1/√3 ≈ 0.577,
    A_j = (r_j − 1/2)/(std + 1e-4), Σ_j (r_j − 1/2)² = 1, so
    ∇L = −(1/4)Σ_j A_j (r_j − 1/2) x = −(1/4)/(std + 1e-4) · x."""
    x = np.array([[1.0, -2.0, 0.5]])
    theta, u, b = np.zeros(3), np.zeros(1), np.zeros(1)
    ids, counts = np.array([0]), np.array([4])
    r = np.array([1.0, 0.0, 0.0, 1.0])
    beh = np.full(4, math.log(0.5))
    g = kernels.offpolicy_grpo_gradients(ids, counts, r, beh, x, theta, u, b, 1e-4)
    np.testing.assert_allclose(g[0], -0.25 / (1 / math.sqrt(3) + 1e-4) * x[0], rtol=1e-12)


def test_simulated_source_is_a_gradient_source(harness):
    h = harness("cropi-math", seed=0)
    assert isinstance(h.source, GradientSource)
    assert h.source.grad_dim == 2048
    sets = h.source.validation_sets()
    assert set(sets) == {"gsm8k", "math"}
    dom = h.world.domain_test
    assert np.all(dom[sets["gsm8k"]] == 0) and np.all(dom[sets["math"]] == 1)
    vs = h.source.sample_validation(sets["math"][:5], np.full(5, 3))
    assert len(vs) == 15 and set(np.unique(vs.prompt_ids)) <= set(sets["math"][:5].tolist())
    plain = harness("dapo-math", seed=0)
    assert list(plain.source.validation_sets()) == ["test"]
    assert plain.source.validation_sets()["test"].size == plain.scenario.num_test


# --------------------------------------------------------------------------------------------
# The allocator
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", ["inf_valid_uniform", "inf", "difficulty_random"])
def test_selection_returns_k_prompts_with_mixed_offline_rewards(score, harness):
    h = harness("dapo-math", seed=4, budget=512, prompts_per_step=64)
    a = h.start(parse_spec(f"cropi:score={score}").build())
    r = h.step(a)
    k = int(h.scenario.num_prompts * 0.1)
    assert a.subset.size == k == np.unique(a.subset).size
    succ = a.offline_successes[a.subset]
    assert np.all((succ > 0) & (succ < 8))
    # step 0: the whole pool's offline rollouts plus one budget of training samples
    assert len(r.samples) == h.scenario.num_prompts * 8 + 512
    assert np.isin(r.train.index, np.arange(h.scenario.num_prompts * 8, len(r.samples))).all()
    assert np.isin(r.samples.prompt_ids[r.train.index], a.subset).all()
    r = h.step(a)
    assert len(r.samples) == 512 and np.isin(r.prompt_ids, a.subset).all()


def test_identity_projection_gives_the_exact_ranking(harness):
    """With ``projection=identity:sparsity=1`` the allocator's subset equals the selection from
    cosines computed directly from the source's full gradients (independent code path)."""
    h = harness("cropi-math", seed=1, budget=512, prompts_per_step=64)
    a = h.start(parse_spec("cropi:projection=identity:sparsity=1").build())
    for _ in range(3):
        h.step(a)
    h.model.theta += 0.05  # move the policy: off-policy ratios ≠ 1
    cand, scores, names = a.influence()
    src, n = h.source, 8
    informative = np.flatnonzero(a.informative)
    assert np.array_equal(cand, informative)
    counts = np.full(informative.size, n)
    rows = (informative[:, None] * n + np.arange(n)).ravel()
    off = a.offline
    sub = off.take(rows)
    g = src.prompt_gradients(sub, counts, a.offline_behaviour[rows])
    targets = []
    for name in names:
        vids, vs, vc, beh = a.valid[name]
        gv = src.prompt_gradients(vs, vc, beh, "validation")
        gv = gv[np.abs(gv).sum(1) > 0]
        gv = gv[np.random.default_rng(0).permutation(len(gv))[:100]]
        targets.append(gv.mean(0))
    want = np.array([[x @ t / np.linalg.norm(x) / np.linalg.norm(t) for t in targets] for x in g])
    np.testing.assert_allclose(scores, want, rtol=1e-9, atol=1e-12)
    k = int(h.scenario.num_prompts * 0.1)
    exact = informative[reference_valid_uniform(want, k)]
    assert sorted(exact.tolist()) == sorted(informative[select_valid_uniform(scores, k)].tolist())
    # a projected ranking is close to, but not the same as, the exact one
    proj = a.make_projector("gaussian", 0.5, 512)
    c2, s2, _ = a.influence(proj)
    p = precision_at(c2[select_valid_uniform(s2, k)], exact)
    assert 0.3 < p < 1.0


def test_stages_reselect_and_offline_rollouts_are_reused(harness):
    h = harness("easy", seed=2, budget=256, prompts_per_step=32)
    a = h.start(parse_spec("cropi:stage_steps=3:stages=2").build())
    infos = [h.step(a).info for _ in range(8)]
    stages = [i.get("stage") for i in infos]
    assert stages == [1, None, None, 2, None, None, None, None]  # two selections, then stays
    assert "offline_rollouts" in infos[0] and all("offline_rollouts" not in i for i in infos[1:])
    assert infos[0]["offline_validation_rollouts"] == h.scenario.num_test * 32
    assert a.selections == 2


def test_random_baseline_needs_no_gradients(harness):
    class Bare:  # a rollout source without the GradientSource capability
        provides = frozenset()

        def __init__(self, src):
            self.src = src

        def begin_step(self, index):
            pass

        def sample(self, ids, counts):
            return self.src.sample(ids, counts)

    h = harness("hard", seed=0, budget=256, prompts_per_step=32)
    h.source = Bare(h.source)
    # default: select.py reseeds with seed 0 at every stage, so the subset never changes
    fixed = h.start(parse_spec("cropi:score=random:stage_steps=2").build())
    first = h.step(fixed)
    assert len(first.samples) == 256  # no offline rollouts
    s0 = fixed.subset.copy()
    for _ in range(4):
        h.step(fixed)
    assert fixed.selections == 3 and np.array_equal(s0, fixed.subset)
    a = h.start(parse_spec("cropi:score=random:stage_steps=2:resample_random=true").build())
    h.step(a)
    sub0 = a.subset.copy()
    h.step(a)
    h.step(a)
    assert sub0.size == a.subset.size == 500 and not np.array_equal(sub0, a.subset)
    needy = parse_spec("cropi").build()
    with pytest.raises(SettingsError, match="needs gradients"):
        validate(needy, "cropi", 256, 32, h.source.provides)


def test_state_dict_round_trip(harness):
    h = harness("hard", seed=3, budget=256, prompts_per_step=32)
    a = h.start(parse_spec("cropi:stage_steps=2").build())
    for _ in range(3):
        h.step(a)
    state = json.loads(json.dumps(a.state_dict()))
    b = parse_spec("cropi:stage_steps=2").build()
    b.reset(h.scenario.num_prompts, np.random.default_rng(0))
    b.gradients = h.source
    b.load_state_dict(state)
    assert np.array_equal(a.subset, b.subset) and a.selections == b.selections
    assert a.stream.state_dict() == b.stream.state_dict()
    assert np.array_equal(a.informative, b.informative)
    ca, sa, _ = a.influence()
    cb, sb, _ = b.influence()
    assert np.array_equal(ca, cb) and np.array_equal(sa, sb)


def test_bad_options_are_rejected():
    for spec in (
        "cropi:ratio=0",
        "cropi:ratio=1.5",
        "cropi:stage_steps=-1",
        "cropi:stage_passes=0",
        "cropi:n_offline=1",
        "cropi:sparsity=0",
        "cropi:projection=sparse",
        "cropi:score=best",
    ):
        with pytest.raises(SpecError):
            parse_spec(spec)
    assert isinstance(parse_spec("cropi:projection=rademacher:sparsity=0.1").build(), Cropi)
    assert CropiConfig().ratio == 0.1


# --------------------------------------------------------------------------------------------
# The measurement scripts
# --------------------------------------------------------------------------------------------
def _script(name: str):
    """A measurement script of ``scripts/`` as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crossing_interpolates():
    crossing = _script("cropi_speedup").crossing
    x, acc = np.array([0.0, 10, 20, 30]), np.array([0.5, 0.6, 0.7, 0.65])
    assert crossing(x, acc, 0.65) == pytest.approx(15.0)
    assert crossing(x, acc, 0.5) == 0.0
    assert math.isnan(crossing(x, acc, 0.71))


def test_speedup_and_precision_scripts_run(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main as bench_main

    precision = _script("cropi_precision").main
    speedup = _script("cropi_speedup").main

    runs = tmp_path / "runs"
    r = CliRunner().invoke(
        bench_main,
        [
            "simulate",
            "--scenario",
            "easy",
            "--methods",
            "uniform,cropi:score=random",
            "--seeds",
            "1",
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--budget",
            "256",
            "--prompts-per-step",
            "32",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "results"),
            "--runs-dir",
            str(runs),
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(speedup, ["--runs-dir", str(runs), "--at", "3"])
    assert r.exit_code == 0, r.output
    assert "cropi:score=random" in r.output and "1.00x" in r.output  # uniform against itself
    r = CliRunner().invoke(speedup, ["--runs-dir", str(runs), "--baseline", "nope"])
    assert r.exit_code == 2
    r = CliRunner().invoke(
        precision,
        [
            "--scenario",
            "hard",
            "--trained-steps",
            "2",
            "--sparsity",
            "1,0.5",
            "--proj-dims",
            "8,64",
            "--repeats",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "precision@0.1 (fused)" in r.output and "chance level" in r.output


def test_projection_never_goes_up_in_dimension():
    """proj_dim > sparse_dim: the kept coordinates are used as they are (exact inner products)."""
    from allocators.projection import SparseRandomProjection

    rng = np.random.default_rng(0)
    u, v = rng.normal(size=64), rng.normal(size=64)
    p = SparseRandomProjection(64, 64, 1024, "gaussian", seed=0)
    assert p.kind == "identity" and p.requested_kind == "gaussian" and p.out_dim == 64
    assert np.isclose(p(u[None])[0] @ p(v[None])[0], u @ v)
    q = SparseRandomProjection(2048, 1024, 1024, "gaussian", seed=0)
    assert q.kind == "gaussian" and q.out_dim == 1024


# --------------------------------------------------------------------------------------------
# Faithful defaults (docs/methods.md#cropi)
# --------------------------------------------------------------------------------------------
def test_difficulty_random_keeps_its_subset_at_every_stage(harness):
    """select.py calls random.seed(0) at every stage: the baselines' subset never changes."""
    h = harness("hard", seed=1, budget=256, prompts_per_step=32)
    a = h.start(parse_spec("cropi:score=difficulty_random:stage_steps=1").build())
    h.step(a)
    s0 = a.subset.copy()
    for _ in range(3):
        h.step(a)
    assert a.selections == 4 and np.array_equal(s0, a.subset)
    b = h.start(
        parse_spec("cropi:score=difficulty_random:stage_steps=1:resample_random=true").build()
    )
    h.step(b)
    s1 = b.subset.copy()
    h.step(b)
    assert not np.array_equal(s1, b.subset)


def test_stage_length_follows_the_official_exposure(harness):
    """10 steps x 128 prompts on a ~5,500-prompt subset: 0.23 passes over the subset a stage."""
    a = parse_spec("cropi").build()
    assert a.stage_length(5_529, 128) == 10
    assert a.stage_length(1_739, 256) == 2  # dapo-math: 17,398 x 0.1, 256 per step
    assert a.stage_length(100, 256) == 1  # a subset smaller than a batch: one step a stage
    assert parse_spec("cropi:stage_steps=10").build().stage_length(1_739, 256) == 10
    h = harness("hard", seed=2, budget=256, prompts_per_step=32)
    b = h.start(parse_spec("cropi:score=random").build())
    r = h.step(b)
    want = max(1, round(0.23 * b.subset.size / 32))
    assert r.info["steps"] == want
    for _ in range(want):
        r = h.step(b)
    assert r.info["stage"] == 2  # a new stage after ``want`` steps


def test_default_score_is_exact_at_the_scenarios_dimensions(harness):
    """The official run projects 1% of 1.5B coordinates to 32,768; every scenario's gradient has
    at most 2,048 coordinates, so the default keeps them all and does not project."""
    for name in ("dapo-math", "cropi-math"):
        h = harness(name, seed=0)
        a = h.start(parse_spec("cropi").build())
        a.gradients = h.source
        assert a.make_projector().is_exact
    h = harness("dapo-math", seed=0)
    old = h.start(parse_spec("cropi@compressed").build())
    old.gradients = h.source
    assert not old.make_projector().is_exact
