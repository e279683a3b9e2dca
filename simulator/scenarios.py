"""Scenarios: named presets of the simulated training set, policy and learner.

A scenario fixes the prompt pool (size, feature dimension, initial pass-rate distribution,
transfer strength), the learner (optimiser, learning rates, loss aggregation) and the length
model. ``build_world`` turns it and a seed into arrays.

Features. x_i = (ρ·|g_i| + √(1−ρ²)·h_i) / √d with g_i, h_i ~ N(0, I_d): ρ ("transfer") is the
share of skills every prompt draws on positively, so learning on one prompt raises the others;
the rest is prompt-specific and can interfere. θ starts at 0, so the initial success rate is
σ(−b_i) and b_i = −logit(p0_i) reproduces the initial pass-rate distribution exactly.
Held-out test prompts are drawn from the same distributions without a memorisation term.

Lengths. log L ~ N(log median_i, σ) with a per-prompt median (log-normal across prompts, longer
for initially harder prompts); wrong answers are ``wrong_length_factor`` times longer; capped at
``max_tokens``.

Answers (for answer-level methods such as C-GRPO). A correct sample answers 0; a wrong one picks
one of ``n_wrong_answers`` distractors with probability ∝ 1/k^``wrong_answer_conc``.

Domains (optional, for data-selection methods such as CROPI, docs/methods.md#cropi). A scenario may
split its prompts into named domains (say GSM8K-, MATH- and DeepScaleR-like), each with its own
share of the train pool and of the test set and its own initial pass-rate mixture. A domain adds a
shared skill direction s_D ~ N(0, I_d), drawn once per world, to its prompts' features:
x_i = (ρ·|g_i| + δ·s_D + √(1−ρ²−δ²)·h_i) / √d, δ = ``domain_strength``; prompts of one domain
then help each other more (by δ²) than prompts of different domains. Without domains the features
are exactly the formula above (δ = 0, same random draws).

Validation sets: named subsets of the test prompts (``World.validation``), the targets of
CROPI's influence scores. With domains, ``validation_sets`` names the domains whose test prompts
form one set each; without, there is one set, ``test``, holding every test prompt.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

# Fields added after the built-in presets were first run, with their defaults: a scenario
# resolves (and hashes) them only when it sets them, so earlier runs keep their config hashes.
_ADDED: dict[str, object] = {"pool": "", "pool_digest": "", "pool_mode": "mixture"}


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    calibration: str
    num_prompts: int = 17_398
    num_test: int = 1_024
    dim: int = 64
    # initial pass rates: mixture of Beta(a, b) components, (weight, a, b)
    pass_rate_mixture: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 1.0),)
    transfer: float = 0.15
    # learner
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 1.0
    memorization_lr: float = 300.0
    loss_agg: Literal["token-mean", "seq-mean", "seq-mean-token-mean"] = "token-mean"
    # lengths
    median_tokens: float = 1_200.0
    prompt_length_sigma: float = 0.35
    difficulty_length_slope: float = 0.6
    wrong_length_factor: float = 1.6
    sample_length_sigma: float = 0.3
    max_tokens: int = 4_096
    # answers
    n_wrong_answers: int = 8
    wrong_answer_conc: float = 1.0
    # the accuracy whose crossing the rollouts_to_target metric reports
    target_accuracy: float = 0.6
    frozen: bool = False
    # domains: (name, share of the train pool, share of the test set, pass-rate mixture); when
    # given they replace ``pass_rate_mixture`` (see the module docstring)
    domains: tuple[tuple[str, float, float, tuple[tuple[float, float, float], ...]], ...] = ()
    domain_strength: float = 0.0
    validation_sets: tuple[str, ...] = ()  # domain names whose test prompts are validation sets
    # the chain model (docs/simulator.md#the-chain-model): the steps every prompt needs, each
    # with its own logit, p_i = Π_j σ(z_ij); 1 is the one-step (logistic) model
    steps_per_prompt: int = 1
    # a pass-rate file (simulator/pools.py) that replaces the initial pass rates: "mixture"
    # (its fitted Beta mixture, set when the scenario file is loaded) or "prompts" (each of its
    # prompts, its initial rate drawn from its own posterior when the world is built)
    pool: str = ""
    pool_digest: str = ""  # sha256 prefix of the pool file's content (set on loading)
    pool_mode: Literal["mixture", "prompts"] = "mixture"

    def resolved(self) -> dict:
        d = asdict(self)
        d["pass_rate_mixture"] = [list(c) for c in self.pass_rate_mixture]
        if self.domains or self.domain_strength or self.validation_sets:
            d["domains"] = [[n, tr, te, [list(c) for c in mix]] for n, tr, te, mix in self.domains]
            d["validation_sets"] = list(self.validation_sets)
        else:  # scenarios without domains resolve (and hash) as before domains existed
            for key in ("domains", "domain_strength", "validation_sets"):
                del d[key]
        for key, default in _ADDED.items():  # fields added later resolve only when set
            if d.get(key) == default:
                del d[key]
        self._resolve_chain(d)
        return d

    def _resolve_chain(self, d: dict) -> None:
        """The chain field resolves (and hashes) only when it is not 1, so one-step scenarios keep
        their config hashes; out of range is a one-line ``ValueError``."""
        check_steps_per_prompt(self.steps_per_prompt)
        if self.steps_per_prompt == 1:
            del d["steps_per_prompt"]

    def with_frozen(self) -> Scenario:
        return replace(self, frozen=True, lr=0.0, memorization_lr=0.0)


STEPS_PER_PROMPT = (1, 32)  # the range of ``Scenario.steps_per_prompt``


def check_steps_per_prompt(k) -> None:
    """``ValueError`` (one line) unless ``k`` is an integer in ``STEPS_PER_PROMPT``."""
    lo, hi = STEPS_PER_PROMPT
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not lo <= k <= hi:
        raise ValueError(f"steps_per_prompt must be an integer from {lo} to {hi}, not {k!r}")


@dataclass
class World:
    """Arrays of one scenario instance (train pool and test set)."""

    X: np.ndarray
    b: np.ndarray
    log_len: np.ndarray
    X_test: np.ndarray
    b_test: np.ndarray
    p0: np.ndarray = field(repr=False)
    # validation sets: name -> indices into the test set (see the module docstring)
    validation: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # domain index per train / test prompt (all 0 without domains) and the domain names
    domain: np.ndarray | None = field(default=None, repr=False)
    domain_test: np.ndarray | None = field(default=None, repr=False)
    domain_names: tuple[str, ...] = ()
    # the chain model (steps_per_prompt > 1; None in a one-step world): prompt i's steps are rows
    # step_start[i] .. step_start[i + 1] − 1 of Xs (features) and bs (difficulties); likewise
    # for the test set (docs/simulator.md#the-chain-model)
    step_start: np.ndarray | None = field(default=None, repr=False)
    Xs: np.ndarray | None = field(default=None, repr=False)
    bs: np.ndarray | None = field(default=None, repr=False)
    step_start_test: np.ndarray | None = field(default=None, repr=False)
    Xs_test: np.ndarray | None = field(default=None, repr=False)
    bs_test: np.ndarray | None = field(default=None, repr=False)


def _initial_pass_rates(rng: np.random.Generator, n: int, mixture) -> np.ndarray:
    w = np.array([c[0] for c in mixture], float)
    comp = rng.choice(len(mixture), size=n, p=w / w.sum())
    out = np.empty(n)
    for k, (_, a, b) in enumerate(mixture):
        sel = comp == k
        out[sel] = rng.beta(a, b, size=int(sel.sum()))
    return np.clip(out, 1e-4, 1 - 1e-4)


def _features(rng: np.random.Generator, n: int, d: int, rho: float) -> np.ndarray:
    g = np.abs(rng.standard_normal((n, d)))
    h = rng.standard_normal((n, d))
    return (rho * g + math.sqrt(max(0.0, 1 - rho * rho)) * h) / math.sqrt(d)


def _domain_sizes(shares: list[float], n: int) -> np.ndarray:
    """``n`` split by ``shares``: floors, then the largest remainders (ties to the first)."""
    w = np.asarray(shares, float)
    exact = n * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    left = n - int(out.sum())
    out[np.argsort(-(exact - out), kind="stable")[:left]] += 1
    return out


def _domain_split(rng: np.random.Generator, s: Scenario, sizes: np.ndarray, dirs: np.ndarray):
    """Pass rates, features and domain labels of prompts drawn domain by domain (in blocks of
    rows, so that the temporary normal arrays stay small at large d)."""
    n, d = int(sizes.sum()), s.dim
    dom = np.repeat(np.arange(sizes.size), sizes)
    p0 = np.empty(n)
    X = np.empty((n, d))
    rest = math.sqrt(max(0.0, 1.0 - s.transfer**2 - s.domain_strength**2))
    start = 0
    for k, (_, _, _, mixture) in enumerate(s.domains):
        stop = start + int(sizes[k])
        p0[start:stop] = _initial_pass_rates(rng, stop - start, mixture)
        for lo in range(start, stop, 2048):
            hi = min(stop, lo + 2048)
            g = np.abs(rng.standard_normal((hi - lo, d)))
            h = rng.standard_normal((hi - lo, d))
            X[lo:hi] = (s.transfer * g + s.domain_strength * dirs[k] + rest * h) / math.sqrt(d)
        start = stop
    return p0, X, dom


def _build_domain_world(s: Scenario, seed: int) -> World:
    rng = np.random.default_rng([seed, 0x5EED, 1])
    names = tuple(dm[0] for dm in s.domains)
    unknown = [v for v in s.validation_sets if v not in names]
    if unknown:
        raise ValueError(f"scenario {s.name}: validation sets {unknown} are not domains {names}")
    dirs = rng.standard_normal((len(names), s.dim))
    p0, X, dom = _domain_split(
        rng, s, _domain_sizes([dm[1] for dm in s.domains], s.num_prompts), dirs
    )
    b = -np.log(p0 / (1 - p0))
    log_len = (
        math.log(s.median_tokens)
        + s.prompt_length_sigma * rng.standard_normal(s.num_prompts)
        + s.difficulty_length_slope * (0.5 - p0)
    )
    p0_test, X_test, dom_test = _domain_split(
        rng, s, _domain_sizes([dm[2] for dm in s.domains], s.num_test), dirs
    )
    b_test = -np.log(p0_test / (1 - p0_test))
    validation = {v: np.flatnonzero(dom_test == names.index(v)) for v in s.validation_sets} or {
        "test": np.arange(s.num_test)
    }
    world = World(X, b, log_len, X_test, b_test, p0, validation, dom, dom_test, names)
    return _with_chain(world, s, [seed, 0x5EED, 3], p0, p0_test, dirs)


def _chain_steps(rng, k, p0, X, dom, dirs, rho, delta):
    """The chain block of one prompt set: ``k`` steps per prompt in the ragged layout.

    Difficulties: flat Dirichlet weights w_i ~ Dir(1, .., 1) split −log p0_i over the steps,
    σ(−b_ij) = p0_i^(w_ij), so that Π_j σ(−b_ij) = p0_i: the initial rate is exactly the
    one-step world's. Features: step 0 is the one-step world's x_i; steps 1..k−1 are drawn by the
    same recipe (with the prompt's domain direction), in blocks of rows so that the temporary
    normal arrays stay small."""
    n, d = X.shape
    w = np.maximum(rng.standard_exponential((n, k)), np.finfo(float).tiny)
    w /= w.sum(axis=1, keepdims=True)
    lw = w * np.log(p0)[:, None]  # log σ(−b_ij) = w_ij·log p0_i < 0
    bs = np.ascontiguousarray((np.log(-np.expm1(lw)) - lw).ravel())  # −logit(e^lw)
    Xs = np.empty((n, k, d))
    Xs[:, 0] = X
    rest = math.sqrt(max(0.0, 1.0 - rho * rho - delta * delta))
    block = max(1, (1 << 22) // ((k - 1) * d))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        g = np.abs(rng.standard_normal((hi - lo, k - 1, d)))
        h = rng.standard_normal((hi - lo, k - 1, d))
        shared = delta * dirs[dom[lo:hi]][:, None, :]
        Xs[lo:hi, 1:] = (rho * g + shared + rest * h) / math.sqrt(d)
    return np.arange(0, n * k + 1, k, dtype=np.int64), Xs.reshape(n * k, d), bs


def _with_chain(w: World, s: Scenario, key: list[int], p0, p0_test, dirs) -> World:
    """The world of the chain model (``steps_per_prompt`` > 1): the one-step world's arrays
    unchanged plus the steps of its train and test prompts, drawn from their own generator
    ``key`` so that every other array is the same draw as at one step."""
    check_steps_per_prompt(s.steps_per_prompt)
    k = s.steps_per_prompt
    if k == 1:
        return w
    rng = np.random.default_rng(key)
    delta = s.domain_strength if s.domains else 0.0
    dirs = np.zeros((1, s.dim)) if dirs is None else dirs
    args = (s.transfer, delta)
    w.step_start, w.Xs, w.bs = _chain_steps(rng, k, p0, w.X, w.domain, dirs, *args)
    w.step_start_test, w.Xs_test, w.bs_test = _chain_steps(
        rng, k, p0_test, w.X_test, w.domain_test, dirs, *args
    )
    return w


def build_world(s: Scenario, seed: int, initial_rates: np.ndarray | None = None) -> World:
    """The world of scenario ``s`` under ``seed``. ``initial_rates`` (one per training prompt)
    replaces the drawn initial pass rates, every other draw staying the same; a scenario whose
    pool keeps its prompts (``pool_mode = "prompts"``) draws them from each prompt's posterior
    (``simulator/pools.py``). Domain scenarios take neither."""
    if initial_rates is None and s.pool and s.pool_mode == "prompts":
        initial_rates = _pool_rates(s, seed)
    if s.domains:
        if initial_rates is not None:
            raise ValueError(f"scenario {s.name}: a domain scenario draws its own initial rates")
        return _build_domain_world(s, seed)
    rng = np.random.default_rng([seed, 0x5EED])
    p0 = _initial_pass_rates(rng, s.num_prompts, s.pass_rate_mixture)
    if initial_rates is not None:
        if np.shape(initial_rates) != (s.num_prompts,):
            raise ValueError(f"scenario {s.name}: {s.num_prompts} initial rates expected")
        p0 = np.clip(np.asarray(initial_rates, np.float64), 1e-4, 1 - 1e-4)
    X = _features(rng, s.num_prompts, s.dim, s.transfer)
    b = -np.log(p0 / (1 - p0))
    # per-prompt median length: log-normal spread, harder prompts longer
    log_len = (
        math.log(s.median_tokens)
        + s.prompt_length_sigma * rng.standard_normal(s.num_prompts)
        + s.difficulty_length_slope * (0.5 - p0)
    )
    p0_test = _initial_pass_rates(rng, s.num_test, s.pass_rate_mixture)
    X_test = _features(rng, s.num_test, s.dim, s.transfer)
    b_test = -np.log(p0_test / (1 - p0_test))
    world = World(
        np.ascontiguousarray(X),
        b,
        log_len,
        np.ascontiguousarray(X_test),
        b_test,
        p0,
        {"test": np.arange(s.num_test)},
        np.zeros(s.num_prompts, np.int64),
        np.zeros(s.num_test, np.int64),
        ("all",),
    )
    return _with_chain(world, s, [seed, 0x5EED, 2], p0, p0_test, None)


def _pool_rates(s: Scenario, seed: int) -> np.ndarray:
    """Initial rates of a "prompts" pool: each prompt's draw from its posterior under the
    scenario's (fitted) mixture."""
    from simulator import pools

    rates = pools.read_pass_rates(s.pool)
    if len(rates) != s.num_prompts:
        raise ValueError(
            f"scenario {s.name}: num_prompts {s.num_prompts} but its pool has {len(rates)}"
        )
    rng = np.random.default_rng([seed, 0x5EED, 4])
    return pools.posterior_rates(rates.successes, rates.trials, s.pass_rate_mixture, rng)


SCENARIOS: dict[str, Scenario] = {}


def _register(s: Scenario) -> Scenario:
    SCENARIOS[s.name] = s
    return s


_register(
    Scenario(
        name="dapo-math",
        summary="DAPO-Math-17k-like pool: U-shaped initial pass rates, many all-wrong and "
        "all-right prompts at n = 8.",
        calibration="Knapsack RL's setting (docs/methods.md#knapsack): Qwen2.5-Math-7B with GRPO, "
        "n = 8, on DAPO-Math-17k (17,398 prompts, 256 per step). Initial pass rates: "
        "30% near zero Beta(0.3, 8), 15% near one Beta(6, 0.4), 55% spread Beta(0.9, 1.3); "
        "mean pass rate 0.375, at n = 8 33% of prompts all-wrong and 13% all-right in "
        "expectation. Learning calibrated so that uniform GRPO (n = 8) shows the decay "
        "docs/methods.md#knapsack reports: over 1,000 steps the effective-gradient ratio falls from 0.55 to "
        "about 0.26 and train reward rises 0.39 -> 0.75 while test accuracy rises "
        "0.37 -> 0.51 (seed 0).",
        pass_rate_mixture=((0.30, 0.3, 8.0), (0.15, 6.0, 0.4), (0.55, 0.9, 1.3)),
        target_accuracy=0.45,
    )
)

_register(
    Scenario(
        name="hard",
        summary="Hard set: base pass rate around 1-2 of 16 for every prompt.",
        calibration="Reinforce-Ada's hard split (docs/simulator.md#hard): prompts the base model solves "
        "1-2 times out of 16 (p ≈ 0.06-0.125). Initial pass rates Beta(2, 20): mean "
        "0.09, 90% of prompts between 0.017 and 0.21, half of them all-wrong at n = 8; "
        "5,000 prompts as in docs/simulator.md#hard Table 5.",
        num_prompts=5_000,
        pass_rate_mixture=((1.0, 2.0, 20.0),),
        target_accuracy=0.2,
    )
)

_register(
    Scenario(
        name="easy",
        summary="Mixed/easy pool: most prompts solvable, a long easy tail.",
        calibration="CROPI's GSM8K + MATH + DeepScaleR pool for an instruct model (docs/methods.md "
        "docs/methods.md#cropi): mean initial pass rate about 0.6. Initial pass rates: 35% near one "
        "Beta(5, 0.6), 50% Beta(2, 1.5), 15% hard Beta(0.5, 4); mean 0.615, at n = 8 "
        "10% all-wrong and 24% all-right in expectation.",
        num_prompts=10_000,
        pass_rate_mixture=((0.35, 5.0, 0.6), (0.50, 2.0, 1.5), (0.15, 0.5, 4.0)),
        target_accuracy=0.69,
    )
)

_register(
    Scenario(
        name="cropi-math",
        summary="CROPI's GSM8K + MATH + DeepScaleR pool in three skill domains, d = 2,048; "
        "validation sets gsm8k and math are the test prompts of those domains.",
        calibration="CROPI's setting (docs/methods.md#cropi): train pool gsm_math_dsr = GSM8K-train "
        "7,473 + MATH-train 7,500 + DeepScaleR 40,315 prompts, scaled to 11,000 with the "
        "same shares (13.6/13.6/72.8%); targets gsm8k and math (run_cropi.sh); test set "
        "shaped like its RL evaluation (gsm8k 1,319; MATH500 + gaokao2023en 885; "
        "olympiadbench + aime24 + amc23 745 prompts -> shares 45/30/25%). Initial pass "
        "rates for Qwen2.5-1.5B-Instruct at T = 0.5: gsm8k Beta(1.6, 0.6) (mean 0.73, 32% "
        "all-right at n = 8), math Beta(0.8, 0.65) (mean 0.55, 19% all-right, 11% "
        "all-wrong), deepscaler Beta(0.45, 1.3) (mean 0.26, 38% all-wrong). Domain "
        "strength 0.15: a prompt helps prompts of its own domain about 2.6x as much as "
        "the others (δ² = 0.0225 against the shared transfer ρ²·2/π = 0.014, an "
        "assumption). d = 2,048 so that CROPI's sparse random projection has something to "
        "compress (its official run keeps 1% of 1.5B coordinates and projects to 32,768). "
        "Target accuracy 0.62: uniform GRPO (256 prompts x 8) reaches it after about 165 "
        "steps (seeds 0-2), from 0.55 at the start.",
        num_prompts=11_000,
        dim=2_048,
        domains=(
            ("gsm8k", 0.136, 0.45, ((1.0, 1.6, 0.6),)),
            ("math", 0.136, 0.30, ((1.0, 0.8, 0.65),)),
            ("deepscaler", 0.728, 0.25, ((1.0, 0.45, 1.3),)),
        ),
        domain_strength=0.15,
        validation_sets=("gsm8k", "math"),
        target_accuracy=0.62,
    )
)


def get_scenario(name: str) -> Scenario:
    """A built-in scenario by name, or the scenario of a ``.toml`` file
    (``simulator/scenario_files.py``; ``ScenarioError`` when it cannot be used)."""
    if name.endswith(".toml"):
        from simulator.scenario_files import load_scenario_file

        return load_scenario_file(name)
    if name not in SCENARIOS:
        raise KeyError(name)
    return SCENARIOS[name]
