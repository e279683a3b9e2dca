"""Calibration: the learning model fitted to a real run's rollout log (docs/simulator.md#calibration).

Input: the rollout log of a run that samples once per step (uniform GRPO: ``rollouts.parquet``,
``allocators/rollout_log.py``) and, where the run folder has them, its test accuracies
(``evals.csv``). What is fitted:

- **The pool**, from each prompt's first visit: the Beta mixture of the first-visit counts
  (``simulator/pools.py``, maximum likelihood, components by BIC); in the replay every logged
  prompt's initial rate is drawn from its own posterior, so the simulated prompts are the real
  ones, not draws like them. (A first visit after step 1 comes after some learning; on a short
  run most first visits are early.) Lengths: the first visits' mean tokens (``fit_lengths``).
- **The learning dynamics**: ``shared_lr`` (= lr·transfer², the rate at which one prompt's
  update moves the others, which test accuracy pins down), ``memorization_lr`` and
  ``transfer`` of the scenario, ``lr`` following from the first and the last (and
  the chain model's ``steps_per_prompt``, chosen among ``STEP_CHOICES`` by the fitted loss), by
  *replaying* the log: the simulator runs the same steps with the same prompts and the same
  rollouts per prompt (GRPO advantages, every sample trained) and the observed curves are
  matched by the simulated ones.

The loss is a weighted sum of squares over steps (a Gaussian approximation of the curves'
likelihood, so a difference of 3.84 is a 95% profile interval for one parameter):

    L(θ) = Σ_t (R_t − R̂_t(θ))² / v_R,t + Σ_t (E_t − Ê_t(θ))² / v_E,t + Σ_e (ΔA_e − ΔÂ_e(θ))² / v_A

with R_t the step's train reward (successes over rollouts), E_t its effective-prompt ratio
(share of visits with mixed rewards), ΔA_e the change in test accuracy since step 0 (the test
set's starting level is the real model's, which the pool does not give), hats the mean of
``replicates`` simulations with fixed seeds (common random numbers, so that L is a
deterministic function of θ), and v the observed curves' binomial sampling variances times
(1 + 1/replicates). Optimiser: a Sobol design over the parameter box, then Nelder–Mead
(``scipy.optimize.minimize``) from its best point. Uncertainty: refits on bootstrap resamples
of the prompts (each prompt's visits weighted by how often it was drawn), started at the fit.
A parameter whose profile loss stays within 3.84 of the minimum across its whole range is
reported as not identified by the log ("upper/lower bound only" where it rises on one side);
one whose refits spread over more than half its range, or whose 95% refit interval leaves out
the fit itself, as identified only weakly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.stats import qmc

from allocators.advantages import GRPO_EPS, group_normalized
from allocators.base import PromptStream, Step, TrainBatch
from allocators.rollout_log import LogError
from simulator import pools
from simulator.model import LearningModel, SimulatedSource
from simulator.scenarios import Scenario, build_world, get_scenario

# The fitted parameters: name, transform to the optimiser's coordinate, bounds there.
# ``shared_lr`` = lr·transfer²: a prompt's update moves another's logit by about lr·x_i·x_j, whose
# mean is lr·transfer²·2/π, so it is what test accuracy identifies; ``lr`` = shared_lr/transfer²
# follows (on its own it moves mostly the trained prompts, next to memorisation).
PARAMS = ("shared_lr", "memorization_lr", "transfer")
BOUNDS = {"shared_lr": (-3.0, 1.0), "memorization_lr": (-1.0, 4.0), "transfer": (0.05, 0.9)}
LOG_PARAMS = ("shared_lr", "memorization_lr")  # fitted as log10
STEP_CHOICES = (1, 3)  # one-step model and a chain of three
CHI2_95 = 3.84  # χ²₁ 95% quantile: the profile-loss rise that bounds a 95% interval
NUM_TEST = 256  # simulated test prompts (exact accuracy)
VAR_FLOOR = 1e-4
PROFILE_POINTS = 9  # per parameter, across its range
RESTARTS = 3  # Nelder–Mead restarts from a profile point below the optimum


@dataclass(frozen=True)
class Observed:
    """A rollout log in the form the replay needs: visits aggregated per (step, prompt)."""

    steps: int
    step: np.ndarray  # 0-based step of each visit
    prompt: np.ndarray  # compact prompt index 0..P−1 of each visit
    rollouts: np.ndarray
    successes: np.ndarray
    tokens: np.ndarray
    prompt_ids: np.ndarray  # the log's id of each compact prompt
    first_successes: np.ndarray  # per compact prompt: its first visit
    first_trials: np.ndarray
    first_tokens: np.ndarray  # mean response tokens at the first visit
    eval_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    num_test: int = 0  # the real test set's size (for the variance of test accuracy)
    num_prompts: int = 0  # the training set's size (the pool of the written scenario)

    @property
    def num_visits(self) -> int:
        return int(self.step.size)

    @property
    def has_test(self) -> bool:
        return self.eval_steps.size > 1 and self.num_test > 0


def observe(
    log: pd.DataFrame,
    evals: pd.DataFrame | None = None,
    num_test: int = 0,
    num_prompts: int = 0,
) -> Observed:
    """``Observed`` of a checked rollout log (``allocators.rollout_log.check_log``) and, where
    given, the run's evaluations (step, test_accuracy; step 0 the starting point)."""
    if (log["round"] > 0).any():
        raise LogError(
            "rollout log: calibration replays one generation round per step; this log has "
            "several (a multi-round method): calibrate from a uniform run's log"
        )
    agg = log.groupby(["step", "prompt_id"], sort=True)[["rollouts", "successes", "tokens"]].sum()
    agg = agg.reset_index()
    ids, prompt = np.unique(agg["prompt_id"].to_numpy(), return_inverse=True)
    first = agg.drop_duplicates("prompt_id").set_index("prompt_id").loc[ids]
    eval_steps = np.zeros(0, np.int64)
    acc = np.zeros(0)
    if evals is not None and len(evals):
        ev = evals[["step", "test_accuracy"]].dropna().sort_values("step")
        ev = ev[ev["step"] <= agg["step"].max()]
        if len(ev) and ev["step"].iloc[0] == 0:
            eval_steps, acc = ev["step"].to_numpy(np.int64), ev["test_accuracy"].to_numpy(float)
    return Observed(
        steps=int(agg["step"].max()),
        step=agg["step"].to_numpy(np.int64) - 1,
        prompt=prompt.astype(np.int64),
        rollouts=agg["rollouts"].to_numpy(np.int64),
        successes=agg["successes"].to_numpy(np.int64),
        tokens=agg["tokens"].to_numpy(np.int64),
        prompt_ids=ids,
        first_successes=first["successes"].to_numpy(np.int64),
        first_trials=first["rollouts"].to_numpy(np.int64),
        first_tokens=first["tokens"].to_numpy(float) / first["rollouts"].to_numpy(float),
        eval_steps=eval_steps,
        test_accuracy=acc,
        num_test=int(num_test),
        num_prompts=int(num_prompts) or int(ids.size),
    )


def curves(obs: Observed, successes: np.ndarray, weights: np.ndarray) -> tuple:
    """Per step: train reward and effective-prompt ratio of visits with ``successes``, each
    visit weighted by its prompt's ``weights`` (1 everywhere, or bootstrap multiplicities)."""
    w = weights[obs.prompt]
    T = obs.steps
    rollouts = np.bincount(obs.step, w * obs.rollouts, T)
    visits = np.bincount(obs.step, w, T)
    mixed = (successes > 0) & (successes < obs.rollouts)
    with np.errstate(invalid="ignore", divide="ignore"):
        reward = np.bincount(obs.step, w * successes, T) / rollouts
        effective = np.bincount(obs.step, w * mixed, T) / visits
    return reward, effective


def expected_curves(obs: Observed, rates: np.ndarray, weights: np.ndarray) -> tuple:
    """``curves``' expectation given each visit's true success rate at the time of the visit
    (a simulation knows it): reward Σ w·n·p / Σ w·n, effective ratio Σ w·(1 − pⁿ − (1 − p)ⁿ) /
    Σ w. Taking the expectation removes the curves' own sampling noise from the simulated side,
    so the loss is smooth in θ but for the learning trajectory's noise."""
    w = weights[obs.prompt]
    T, n = obs.steps, obs.rollouts
    q = 1.0 - rates**n - (1.0 - rates) ** n
    with np.errstate(invalid="ignore", divide="ignore"):
        reward = np.bincount(obs.step, w * n * rates, T) / np.bincount(obs.step, w * n, T)
        effective = np.bincount(obs.step, w * q, T) / np.bincount(obs.step, w, T)
    return reward, effective


def variances(obs: Observed, weights: np.ndarray, replicates: int) -> tuple:
    """The observed curves' sampling variances (binomial, per visit, from each visit's
    shrunk rate (s + ½)/(n + 1)), times 1 + 1/replicates for the simulated mean's own noise."""
    w = weights[obs.prompt]
    T, n = obs.steps, obs.rollouts
    p = (obs.successes + 0.5) / (n + 1.0)
    q = 1.0 - p**n - (1.0 - p) ** n
    rollouts = np.bincount(obs.step, w * n, T)
    visits = np.bincount(obs.step, w, T)
    with np.errstate(invalid="ignore", divide="ignore"):
        v_r = np.bincount(obs.step, w * w * n * p * (1 - p), T) / rollouts**2
        v_e = np.bincount(obs.step, w * w * q * (1 - q), T) / visits**2
    inflate = 1.0 + 1.0 / replicates
    v_r = np.where(np.isfinite(v_r), np.maximum(v_r, VAR_FLOOR), np.inf) * inflate
    v_e = np.where(np.isfinite(v_e), np.maximum(v_e, VAR_FLOOR), np.inf) * inflate
    v_a = 0.0
    if obs.has_test:
        a = float(np.clip(obs.test_accuracy.mean(), 0.05, 0.95))
        v_a = max(2 * a * (1 - a) / obs.num_test, VAR_FLOOR) * inflate
    return v_r, v_e, v_a


@dataclass(frozen=True)
class Setting:
    """What a replay needs besides the parameters: the scenario it starts from and the
    fitted pool."""

    base: Scenario
    mixture: tuple[tuple[float, float, float], ...]
    lengths: dict
    replicates: int = 4
    seed: int = 0


def scenario_for(obs: Observed, st: Setting, params: dict, num_prompts: int) -> Scenario:
    """The calibrated scenario: the base with the fitted pool, lengths and parameters."""
    return replace(
        st.base,
        num_prompts=num_prompts,
        num_test=NUM_TEST,
        pass_rate_mixture=st.mixture,
        optimizer="sgd",
        loss_agg="token-mean",
        **st.lengths,
        **params,
    )


def replay(obs: Observed, st: Setting, params: dict, replicate: int) -> tuple:
    """One simulation of the logged schedule under ``params``: per visit the prompt's true
    success rate when it was sampled, and the exact test accuracy at the log's evaluation
    steps."""
    scenario = scenario_for(obs, st, params, int(obs.prompt_ids.size))
    seed = st.seed * 1000 + replicate
    rates = pools.posterior_rates(
        obs.first_successes, obs.first_trials, st.mixture, np.random.default_rng([seed, 7])
    )
    model = LearningModel(scenario, build_world(scenario, seed, rates))
    source = SimulatedSource(model, np.random.default_rng([seed, 1]))
    stream = PromptStream(scenario.num_prompts, np.random.default_rng([seed, 2]))
    bounds = np.searchsorted(obs.step, np.arange(obs.steps + 1))
    out = np.empty(obs.num_visits)
    evals = set(obs.eval_steps.tolist())
    acc = {0: model.test_accuracy()} if 0 in evals else {}
    for t in range(obs.steps):
        lo, hi = bounds[t], bounds[t + 1]
        step = Step(t, stream, source, int(obs.rollouts[lo:hi].sum()), hi - lo)
        groups = step.add_prompts(obs.prompt[lo:hi])
        out[lo:hi] = model.success_rates(obs.prompt[lo:hi])
        samples = step.sample(groups, obs.rollouts[lo:hi])
        adv = group_normalized(samples.group, samples.rewards, step.num_groups, GRPO_EPS, True)
        result = step.finish(TrainBatch.all_of(samples, adv), 0.0, {})
        model.update(result)
        if t + 1 in evals:
            acc[t + 1] = model.test_accuracy()
    return out, np.array([acc[s] for s in obs.eval_steps.tolist()])


class Objective:
    """L(θ) of a fixed (observation, setting, steps_per_prompt), counting simulations."""

    def __init__(self, obs: Observed, st: Setting, steps_per_prompt: int):
        self.obs, self.st, self.k = obs, st, steps_per_prompt
        self.simulations = 0
        self._cache: dict[tuple, tuple] = {}
        # the simulated curves' spread over replicates (the posterior draws of the initial
        # rates and the learning trajectory's noise), fixed at one point (``fix_spread``)
        self.spread: tuple[np.ndarray, np.ndarray, float] | None = None
        self._targets: dict[bytes | None, tuple] = {}

    def _sim_curves(self, x: np.ndarray, w: np.ndarray) -> tuple:
        rates, acc = self.simulate(x)
        sims = [expected_curves(self.obs, r, w) for r in rates]
        return np.array([c[0] for c in sims]), np.array([c[1] for c in sims]), acc

    def fix_spread(self, x: np.ndarray) -> None:
        """Add the replicates' variance at ``x`` to the observed curves' binomial variance:
        the observed curve is one realisation of what the replicates spread over."""
        r, e, acc = self._sim_curves(x, np.ones(self.obs.prompt_ids.size))
        dd = 1 if r.shape[0] > 1 else 0
        va = float(np.var(acc[:, 1:] - acc[:, :1], axis=0, ddof=dd).mean()) if acc.size else 0.0
        self.spread = (np.var(r, axis=0, ddof=dd), np.var(e, axis=0, ddof=dd), va)

    @staticmethod
    def natural(x: np.ndarray) -> dict:
        """The fitted parameters at optimiser point ``x`` (clipped to ``BOUNDS``), with the
        ``lr`` they imply."""
        out = {}
        for name, v in zip(PARAMS, x):
            lo, hi = BOUNDS[name]
            v = float(np.clip(v, lo, hi))
            out[name] = 10.0**v if name in LOG_PARAMS else v
        out["lr"] = out["shared_lr"] / out["transfer"] ** 2
        return out

    def params(self, x: np.ndarray) -> dict:
        """The scenario fields at ``x``."""
        nat = self.natural(x)
        out = {k: nat[k] for k in ("lr", "memorization_lr", "transfer")}
        if self.k != 1:
            out["steps_per_prompt"] = self.k
        return out

    def simulate(self, x: np.ndarray) -> tuple:
        """The replicates' per-visit success rates and test accuracies at ``x`` (cached)."""
        key = tuple(np.round(np.clip(x, *zip(*[BOUNDS[p] for p in PARAMS])), 12))
        if key not in self._cache:
            params = self.params(np.array(key))
            runs = [replay(self.obs, self.st, params, r) for r in range(self.st.replicates)]
            self.simulations += len(runs)
            self._cache[key] = (np.stack([r[0] for r in runs]), np.stack([r[1] for r in runs]))
        return self._cache[key]

    def _target(self, weights: np.ndarray | None) -> tuple:
        """The prompt weights, the observed curves and their binomial variances under
        ``weights`` (None: every prompt once); cached, as they do not depend on θ."""
        key = None if weights is None else weights.tobytes()
        if key not in self._targets:
            obs = self.obs
            w = np.ones(obs.prompt_ids.size) if weights is None else weights
            observed = curves(obs, obs.successes, w)
            self._targets[key] = (w, observed, variances(obs, w, self.st.replicates))
        return self._targets[key]

    def __call__(self, x: np.ndarray, weights: np.ndarray | None = None) -> float:
        obs = self.obs
        w, (r_obs, e_obs), (v_r, v_e, v_a) = self._target(weights)
        r_all, e_all, acc = self._sim_curves(x, w)
        r_sim, e_sim = r_all.mean(axis=0), e_all.mean(axis=0)
        if self.spread is not None:
            inflate = 1.0 + 1.0 / self.st.replicates
            v_r = v_r + inflate * self.spread[0]
            v_e = v_e + inflate * self.spread[1]
            v_a = v_a + inflate * self.spread[2]
        ok = np.isfinite(r_obs)
        loss = np.sum((r_obs - r_sim)[ok] ** 2 / v_r[ok]) + np.sum(
            (e_obs - e_sim)[ok] ** 2 / v_e[ok]
        )
        if obs.has_test:
            d_obs = obs.test_accuracy[1:] - obs.test_accuracy[0]
            d_sim = (acc[:, 1:] - acc[:, :1]).mean(axis=0)
            loss += float(np.sum((d_obs - d_sim) ** 2) / v_a)
        return float(loss)


def _box() -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([BOUNDS[p][0] for p in PARAMS])
    hi = np.array([BOUNDS[p][1] for p in PARAMS])
    return lo, hi


def minimise(
    f: Objective,
    start: np.ndarray | None,
    design: int,
    evals: int,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """A Sobol design of ``design`` points (none when ``start`` is given; its best point fixes
    the replicates' spread), then Nelder–Mead."""
    lo, hi = _box()
    if start is None:
        m = max(1, round(math.log2(design)))  # Sobol points come in powers of two
        pts = qmc.scale(qmc.Sobol(len(PARAMS), scramble=True, seed=0).random_base2(m), lo, hi)
        start = min(pts, key=f)
        f.fix_spread(start)
    res = optimize.minimize(
        lambda y: f(y, weights),
        start,
        method="Nelder-Mead",
        bounds=list(zip(lo, hi)),
        options={
            "maxfev": evals,
            "xatol": 0.02,
            "fatol": 0.05,
            "initial_simplex": _simplex(start, 0.15 if weights is None else 0.3),
        },
    )
    return np.asarray(res.x), float(res.fun)


def _profile(f: Objective, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The loss along each parameter's whole range (``PROFILE_POINTS`` points), the others
    at ``x``: rows of (grid, loss) per parameter."""
    lo, hi = _box()
    grids = np.array([np.linspace(lo[j], hi[j], PROFILE_POINTS) for j in range(x.size)])
    vals = np.empty_like(grids)
    for j in range(x.size):
        for g in range(PROFILE_POINTS):
            y = x.copy()
            y[j] = grids[j, g]
            vals[j, g] = f(y)
    return grids, vals


def _simplex(x: np.ndarray, size: float) -> np.ndarray:
    """Nelder–Mead's first simplex: ``x`` and a step of ``size`` of each range from it (a
    bootstrap refit starts wider, so that it can leave the fit's basin)."""
    lo, hi = _box()
    step = size * (hi - lo)
    pts = [x]
    for j in range(x.size):
        y = x.copy()
        y[j] = y[j] + step[j] if y[j] + step[j] <= hi[j] else y[j] - step[j]
        pts.append(y)
    return np.array(pts)


@dataclass
class Calibration:
    """The result of ``calibrate``."""

    scenario: Scenario
    params: dict  # fitted values (natural scale)
    loss: float
    losses: dict  # steps_per_prompt -> fitted loss
    bootstrap: dict  # parameter -> array of refitted values
    profile: dict  # parameter -> (grid of natural values, losses)
    identified: dict  # parameter -> "yes" | "lower bound only" | "upper bound only" | "no"
    simulations: int
    seconds: float
    observed: Observed
    setting: Setting
    mixture_fit: pools.MixtureFit
    length_fit: object | None
    curves: dict = field(default_factory=dict)  # observed and fitted curves, for the plot

    def summary(self) -> dict:
        """Per parameter (and the implied ``lr``): value, bootstrap sd and 95% interval, and
        whether the log identifies it."""
        rows = {}
        for p in (*PARAMS, "lr"):
            boot = self.bootstrap.get(p, np.zeros(0))
            rows[p] = {
                "value": self.params[p],
                "bootstrap_sd": float(np.std(boot, ddof=1)) if boot.size > 1 else float("nan"),
                "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
                if boot.size > 1
                else [float("nan")] * 2,
                "identified": self.identified.get(p, "as shared_lr / transfer²"),
            }
        return rows


def calibrate(
    obs: Observed,
    base: str | Scenario = "dapo-math",
    replicates: int = 4,
    bootstrap: int = 10,
    design: int = 32,
    evals: int = 80,
    step_choices: tuple[int, ...] = STEP_CHOICES,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
    max_tokens: int | None = None,
) -> Calibration:
    """Fit the pool and the learning dynamics to ``obs`` (see the module docstring);
    ``max_tokens`` is the run's response-length cap where known."""
    t0 = time.perf_counter()
    base_s = get_scenario(base) if isinstance(base, str) else base
    progress("fitting the pool")
    mix = pools.fit_beta_mixture(obs.first_successes, obs.first_trials)
    lengths: dict = {}
    length_fit = None
    try:
        length_fit = pools.fit_lengths(
            obs.first_tokens, obs.first_successes, obs.first_trials, mix.components
        )
        lengths = dict(length_fit.scenario_fields())
    except (pools.PoolError, ValueError):
        pass  # too few prompts or no spread: the base scenario's length model stays
    if max_tokens:
        lengths["max_tokens"] = int(max_tokens)
    st = Setting(base_s, tuple(mix.components), lengths, replicates, seed)
    fits = {}
    for k in step_choices:
        progress(f"fitting the learning dynamics (steps_per_prompt = {k})")
        f = Objective(obs, st, k)
        x, loss = minimise(f, None, design, evals)
        for _ in range(RESTARTS):  # a profile point below the optimum: start again from it
            grids, vals = _profile(f, x)
            j, g = np.unravel_index(np.argmin(vals), vals.shape)
            if vals[j, g] >= loss - 1e-9:
                break
            y = x.copy()
            y[j] = grids[j, g]
            x, loss = minimise(f, y, design, evals)
        fits[k] = (f, x, loss, grids, vals)
    k_best = min(fits, key=lambda k: fits[k][2])
    f, x, loss, grids, vals = fits[k_best]
    if np.min(vals) < loss:  # the restarts ran out: the best point seen is the fit
        j, g = np.unravel_index(np.argmin(vals), vals.shape)
        x = x.copy()
        x[j] = grids[j, g]
        loss = float(vals[j, g])
        grids, vals = _profile(f, x)
    profile, identified = {}, {}
    for j, name in enumerate(PARAMS):
        inside = vals[j] - min(loss, vals[j].min()) < CHI2_95
        identified[name] = (
            "no"
            if inside[0] and inside[-1]
            else "upper bound only"
            if inside[0]
            else "lower bound only"
            if inside[-1]
            else "yes"
        )
        nat = 10.0 ** grids[j] if name in LOG_PARAMS else grids[j]
        profile[name] = (nat, vals[j])
    sims = sum(v[0].simulations for v in fits.values())
    boots: dict[str, list] = {p: [] for p in (*PARAMS, "lr")}
    rng = np.random.default_rng([seed, 99])
    P = obs.prompt_ids.size
    for b in range(bootstrap):
        progress(f"bootstrap {b + 1}/{bootstrap}")
        w = rng.multinomial(P, np.full(P, 1.0 / P)).astype(float)
        # new simulation seeds too, so that the intervals carry the simulator's own noise
        fb = Objective(obs, replace(st, seed=st.seed + 1 + b), k_best)
        fb.spread = f.spread
        xb, _ = minimise(fb, x, design, max(evals // 2, 20), w)
        sims += fb.simulations
        for name, v in fb.natural(xb).items():
            boots[name].append(v)
    fitted = f.natural(x)
    lo, hi = _box()
    for j, name in enumerate(PARAMS):  # the bootstrap can overrule a sharp profile
        b = np.asarray(boots[name])
        if identified[name] != "yes" or b.size < 2:
            continue
        coord = np.log10(b) if name in LOG_PARAMS else b
        lo_b, hi_b = np.percentile(coord, [2.5, 97.5])
        own = math.log10(fitted[name]) if name in LOG_PARAMS else fitted[name]
        if hi_b - lo_b > 0.5 * (hi[j] - lo[j]) or not lo_b <= own <= hi_b:
            identified[name] = "weakly (the refits disagree with the fit)"
    params = f.params(x)
    ones, (r_obs, e_obs), _ = f._target(None)
    r_all, e_all, acc = f._sim_curves(x, ones)
    plot = {
        "step": np.arange(1, obs.steps + 1),
        "reward_observed": r_obs,
        "effective_observed": e_obs,
        "reward_simulated": r_all.mean(axis=0),
        "effective_simulated": e_all.mean(axis=0),
        "reward_sim_sd": r_all.std(axis=0),
        "effective_sim_sd": e_all.std(axis=0),
    }
    if obs.has_test:
        plot["eval_step"] = obs.eval_steps
        plot["test_observed"] = obs.test_accuracy - obs.test_accuracy[0]
        plot["test_simulated"] = (acc - acc[:, :1]).mean(axis=0)
    scenario = scenario_for(obs, st, params, obs.num_prompts)
    return Calibration(
        scenario=scenario,
        params=fitted | {"steps_per_prompt": k_best},
        loss=loss,
        losses={k: v[2] for k, v in fits.items()},
        bootstrap={p: np.array(v) for p, v in boots.items()},
        profile=profile,
        identified=identified,
        simulations=sims,
        seconds=time.perf_counter() - t0,
        observed=obs,
        setting=st,
        mixture_fit=mix,
        length_fit=length_fit,
        curves=plot,
    )


def fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else "nan"
