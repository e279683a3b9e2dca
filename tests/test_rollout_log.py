"""The rollout log: what both modes write per prompt visit, and the reader's checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from allocators.loop import ROLLOUT_LOG_COLUMNS, rollout_log
from allocators.rollout_log import LogError, check_log, from_samples, read_log
from simulator.run import SimConfig, run_simulation


@pytest.mark.parametrize("method", ["uniform", "ada-seq-balance", "dapo"])
def test_the_log_adds_up_to_the_steps_table(method):
    out = run_simulation(
        SimConfig(scenario="hard", method=method, steps=6, budget=256, prompts_per_step=32)
    )
    log, steps = out.visits, out.steps
    assert list(log.columns) == list(ROLLOUT_LOG_COLUMNS)
    assert (log.dtypes == np.int64).all()
    per_step = log.groupby("step")[["rollouts", "tokens"]].sum()
    assert per_step["rollouts"].tolist() == steps["rollouts"].tolist()
    assert per_step["tokens"].tolist() == steps["tokens"].tolist()
    rounds = log.groupby("step")["round"].max() + 1
    assert rounds.tolist() == steps["rounds"].tolist()
    assert (log.successes <= log.rollouts).all() and (log.rollouts >= 1).all()
    # the log's own reader accepts what the harness writes
    check_log(log)


def test_log_rows_match_the_samples():
    """Every visit's successes and tokens are the sums over its samples (the simulator's
    own source, redrawn with the same generator)."""
    from allocators.base import PromptStream, Step
    from allocators.loop import Progress, visit_rows
    from allocators.registry import parse_spec
    from simulator.model import LearningModel, SimulatedSource
    from simulator.scenarios import build_world, get_scenario

    s = get_scenario("hard")
    model = LearningModel(s, build_world(s, 0))
    source = SimulatedSource(model, np.random.default_rng(0))
    stream = PromptStream(s.num_prompts, np.random.default_rng(1))
    alloc = parse_spec("ada-seq-balance").build()
    alloc.reset(s.num_prompts, np.random.default_rng(2))
    result = alloc.step(Step(0, stream, source, 128, 16))
    rows = visit_rows(result, 1)
    smp = result.samples
    sizes = [r.sequences for r in result.rounds]
    rnd = np.repeat(np.arange(len(sizes)), sizes)
    for step, k, pid, n, succ, tok in rows:
        sel = (rnd == k) & (smp.prompt_ids == pid)
        assert (step, n, succ, tok) == (
            1,
            sel.sum(),
            smp.rewards[sel].sum(),
            smp.lengths[sel].sum(),
        )
    assert rollout_log(Progress(visits=[rows])).shape == rows.shape


def test_from_samples_aggregates_per_visit():
    df = from_samples(
        step=[1, 1, 1, 2, 2],
        prompt_id=[7, 7, 3, 7, 7],
        reward=[1, 0, 1, 0, 0],
        tokens=[5, 6, 7, 8, 9],
    )
    assert df.values.tolist() == [[1, 0, 3, 1, 1, 7], [1, 0, 7, 2, 1, 11], [2, 0, 7, 2, 0, 17]]
    check_log(df)


def _log(change=None):
    df = pd.DataFrame(
        {"step": [1, 1, 2], "round": [0, 0, 0], "prompt_id": [0, 1, 0]}
        | {"rollouts": [4, 4, 4], "successes": [1, 0, 4], "tokens": [40, 41, 42]}
    )
    for (col, row), value in (change or {}).items():
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
    return df


@pytest.mark.parametrize(
    "change, message",
    [
        ({("successes", 1): 5}, "row 2: 5 successes out of 4 rollouts"),
        ({("tokens", 2): -1}, "row 3: tokens must be at least 0"),
        ({("rollouts", 0): 0}, "row 1: rollouts must be at least 1"),
        ({("step", 2): 3}, "row 3: a gap in the steps: step 3 follows step 1"),
        ({("step", 0): 2, ("step", 1): 2, ("step", 2): 3}, "row 1: the first step is 2"),
        ({("prompt_id", 1): 0}, "row 2: a second row for step 1, round 0, prompt 0"),
        ({("successes", 0): 1.5}, "row 1: successes must be an integer"),
        ({("step", 1): 2, ("step", 2): 1}, "row 3: step 1 comes after step 2"),
    ],
)
def test_bad_logs_name_the_row(change, message):
    with pytest.raises(LogError, match=message.replace("(", r"\(")):
        check_log(_log(change))


def test_reader_formats_and_errors(tmp_path):
    df = _log()
    df.to_parquet(tmp_path / "rollouts.parquet")
    df.to_csv(tmp_path / "log.csv.gz", index=False)
    assert read_log(tmp_path).equals(read_log(tmp_path / "log.csv.gz"))
    df.drop(columns="tokens").to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(LogError, match="missing column.s. tokens"):
        read_log(tmp_path / "short.csv")
    with pytest.raises(LogError, match="does not exist"):
        read_log(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(LogError, match="cannot be read"):
        read_log(tmp_path / "junk.parquet")
    with pytest.raises(LogError, match="not a .parquet"):
        read_log(tmp_path / "log.json")
