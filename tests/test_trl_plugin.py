# ruff: noqa: E402  (the imports follow the skip without trl)
"""The TRL plug-in (``trainers/trl_plugin.py``): the update matches the project's, variable and
degenerate groups, multi-round methods, observe, guards, resume, and the documented example.

A tiny random Llama with the embedded SmolLM2-135M tokenizer (its vocabulary and chat template)
keeps every TRL step well under a second. Skipped without ``trl`` (the ``trl`` extra).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

for _module in ("torch", "transformers", "trl"):
    pytest.importorskip(_module, reason="the TRL plug-in tests need: pip install -e '.[train,trl]'")
import torch
from datasets import Dataset
from trl import GRPOConfig

from allocators.advantages import group_normalized
from allocators.base import (
    Capabilities,
    GroupCounts,
    Samples,
    SettingsError,
    StaticAllocator,
    StepResult,
    TrainBatch,
)
from trainers.grpo import GRPOConfig as ProjectGRPO
from trainers.grpo import accumulate_gradients
from trainers.models import embedded_model_dir, load_tokenizer
from trainers.trl_plugin import (
    AllocatorGRPOTrainer,
    check_args,
    check_trl_version,
    split_rows,
    training_rows,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(embedded_model_dir()))


def tiny_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(cfg)


def dataset(n: int = 8) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": f"Say a word number {i}."}] for i in range(n)],
            "answer": [str(i % 2) for i in range(n)],
        }
    )


def parity(completions, completion_ids, **kw):
    """Binary and about half right on a random model: the first token id is even."""
    return [float(ids[0] % 2 == 0) for ids in completion_ids]


def never(completions, **kw):
    return [0.0 for _ in completions]


def args(tmp_path, **kw) -> GRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        temperature=1.0,
        loss_type="dapo",
        seed=0,
        disable_tqdm=True,
    )
    base.update(kw)
    return GRPOConfig(**base)


def make(tmp_path, tokenizer, reward=parity, n=8, model_seed=0, **kw):
    trainer_kw = {
        k: kw.pop(k)
        for k in ("allocator", "budget", "prompts_per_step", "answer_fn", "keep_results")
        if k in kw
    }
    trainer_kw.setdefault("budget", 8)
    trainer_kw.setdefault("prompts_per_step", 4)
    return AllocatorGRPOTrainer(
        model=tiny_model(tokenizer, model_seed),
        processing_class=tokenizer,
        reward_funcs=[reward],
        args=args(tmp_path, **kw),
        train_dataset=dataset(n),
        **trainer_kw,
    )


# --------------------------------------------------------------------------------------------
# the update: TRL's loss on the plug-in's inputs is the project's token-mean gradient
# --------------------------------------------------------------------------------------------
def _fake_result(samples: Samples, train: TrainBatch, groups: int) -> StepResult:
    zero = np.zeros(groups, np.int64)
    return StepResult(
        0, np.arange(groups), samples, train, GroupCounts(zero, zero, zero, zero, zero), 0.0
    )


@pytest.mark.parametrize("parts", [1, 3])
def test_gradient_matches_the_project_update(tmp_path, tokenizer, parts):
    tr = make(tmp_path, tokenizer, gradient_accumulation_steps=parts)
    model = tr.model
    rng = np.random.default_rng(0)
    counts = np.array([3, 1, 4])  # a group of one, unrewarded: zero advantage
    ids = np.repeat(np.arange(3), counts)
    responses = [list(rng.integers(5, 500, size=rng.integers(2, 7))) for _ in ids]
    rewards = np.array([1, 0, 1, 0, 1, 1, 1, 1], float)  # the last group: zero variance
    samples = Samples.from_request(
        np.arange(3), counts, rewards, np.array([len(r) for r in responses]), tokens=responses
    )
    adv = group_normalized(samples.group, rewards, 3)
    weights = np.linspace(0.5, 1.5, ids.size)
    train = TrainBatch(np.arange(ids.size), adv, weights)
    result = _fake_result(samples, train, 3)
    rows, coef, tokens = training_rows(result, with_zero=False)
    assert rows.tolist() == [0, 1, 2] and tokens == sum(map(len, responses))

    model.train()
    tr.current_gradient_accumulation_steps = parts
    model.zero_grad()
    chunks = tr.inputs_for(result, parts)
    assert len(chunks) == parts
    for chunk in chunks:
        tr.compute_loss(model, chunk).backward()
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    prompts = tr._prompt_tokens(samples.prompt_ids)
    cfg = ProjectGRPO(temperature=tr.temperature, autocast_bf16=False, micro_batch_size=3)
    model.zero_grad()
    accumulate_gradients(model, prompts, responses, adv, weights, np.arange(ids.size), cfg, 0)
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    rel = float((got - want).norm() / want.norm())
    assert want.norm() > 0 and rel < 1e-4, rel


def test_engine_logps_are_trls_own(tmp_path, tokenizer):
    """The TRL engine computes TRL's per-token log-probabilities and entropies prompt-once
    (``prompt_once_logps``); on the plug-in's batch layout they and their gradient are TRL's
    own ``_get_per_token_logps_and_entropies``'s (its fused LM head over whole sequences)."""
    from trl import GRPOTrainer

    from trainers.trl_engine import prompt_once_logps

    tr = make(tmp_path, tokenizer)
    model = tr.model
    rng = np.random.default_rng(1)
    prompt_ids = np.array([0, 0, 0, 2, 2, 5])  # shared prompts of different lengths
    result = _fake_result(
        Samples.from_request(
            np.array([0, 2, 5]),
            np.array([3, 2, 1]),
            np.array([1, 0, 1, 0, 1, 0], float),
            np.array([3, 1, 5, 2, 4, 6]),
            tokens=[list(rng.integers(5, 500, size=n)) for n in (3, 1, 5, 2, 4, 6)],
        ),
        TrainBatch(np.arange(6), np.linspace(-1, 1, 6), np.ones(6)),
        3,
    )
    assert result.samples.prompt_ids.tolist() == prompt_ids.tolist()
    (batch,) = tr.inputs_for(result, 1)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    keep = batch["completion_ids"].size(1)
    model.train()
    grads = []
    outs = []
    for fn in (
        lambda: GRPOTrainer._get_per_token_logps_and_entropies(
            tr, model, ids, mask, keep, compute_entropy=True
        )[:2],
        lambda: prompt_once_logps(model, ids, mask, keep, tr.temperature, tokenizer.pad_token_id),
    ):
        model.zero_grad()
        logps, ent = fn()
        (logps * batch["completion_mask"]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        outs.append((logps.detach() * batch["completion_mask"], ent * batch["completion_mask"]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-5)
    rel = float((grads[1] - grads[0]).norm() / grads[0].norm())
    assert grads[0].norm() > 0 and rel < 1e-4, rel
    # a batch with no completion token (the plug-in's fully masked row) is left to TRL
    assert prompt_once_logps(model, ids, mask * 0, keep, 1.0, 0) is None


def test_split_rows_keeps_every_row():
    for n, parts in ((7, 3), (2, 4), (0, 2), (9, 1)):
        chunks = split_rows(n, parts)
        assert len(chunks) == parts and np.concatenate(chunks).tolist() == list(range(n))
        assert max(c.size for c in chunks) - min(c.size for c in chunks) <= 1


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
class ZeroOneMany(StaticAllocator):
    """Counts 0, 1, then the rest of the budget on the last prompt (group-normalised)."""

    name = "zero-one-many"
    caps = Capabilities(spend="budget", min_rollouts_per_prompt=1)

    def allocate(self, step, groups):
        counts = np.zeros(groups.size, np.int64)
        counts[1] = 1
        counts[-1] = step.budget - 1
        return counts, {}

    def build(self, step, samples):
        adv = group_normalized(samples.group, samples.rewards, step.num_groups)
        return TrainBatch.all_of(samples, adv)


def test_counts_of_zero_and_one_train(tmp_path, tokenizer):
    tr = make(tmp_path, tokenizer, allocator=ZeroOneMany(), budget=6, keep_results=True)
    tr.train()
    assert tr.observed == tr.allocator_steps == 2 == len(tr.step_results)
    for r in tr.step_results:
        assert np.bincount(r.samples.group, minlength=4).tolist() == [0, 1, 0, 5]
        one = r.samples.group == 1  # a group of one: advantage = its reward (verl's rule)
        assert np.allclose(r.train.advantages[one], r.samples.rewards[one], atol=1e-5)


def test_all_zero_advantage_step_leaves_the_model(tmp_path, tokenizer):
    tr = make(tmp_path, tokenizer, reward=never, allocator="uniform", max_steps=1)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train()
    assert tr.observed == 1
    for a, b in zip(before, tr.model.parameters()):
        assert torch.equal(a, b.detach())


@pytest.mark.parametrize("method", ["dapo", "ada-seq-balance:round_repeat=2", "cgrpo"])
def test_multi_round_methods(tmp_path, tokenizer, method):
    tr = make(
        tmp_path,
        tokenizer,
        allocator=method,
        budget=8,
        keep_results=True,
        answer_fn=lambda text: text.strip()[-1:],
        max_steps=1,
    )
    tr.train()
    assert tr.observed == tr.allocator_steps == 1
    for r in tr.step_results:
        assert len(r.rounds) >= 1 and len(r.samples) == sum(x.sequences for x in r.rounds)
        assert r.samples.rewards.size and set(np.unique(r.samples.rewards)) <= {0.0, 1.0}
    if method.startswith("ada-seq"):  # Reinforce-Ada-Seq samples until a prompt shows both outcomes
        assert any(len(r.rounds) > 1 for r in tr.step_results)


def test_observe_runs_once_per_optimiser_step(tmp_path, tokenizer):
    tr = make(tmp_path, tokenizer, allocator="knapsack", gradient_accumulation_steps=2)
    calls = []
    real = tr.allocator.observe

    def counting(result):
        calls.append((tr.state.global_step, result.step))
        real(result)

    tr.allocator.observe = counting
    tr.train()
    # after each optimiser step (global_step already advanced), one call per allocator step
    assert calls == [(1, 0), (2, 1)]


def test_resume_continues_the_allocation(tmp_path, tokenizer):
    kw = dict(allocator="knapsack", keep_results=True, save_strategy="steps")
    full = make(tmp_path / "full", tokenizer, save_steps=10, **kw)
    full.train()
    cut = make(tmp_path / "cut", tokenizer, save_steps=1, max_steps=1, **kw)
    cut.train()
    ckpt = tmp_path / "cut" / "out" / "checkpoint-1"
    assert (ckpt / "allocator_state.pt").is_file()
    resumed = make(tmp_path / "cut", tokenizer, save_steps=10, **kw)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.allocator_steps == 2 and len(resumed.step_results) == 1
    a, b = full.step_results[1], resumed.step_results[0]
    assert a.prompt_ids.tolist() == b.prompt_ids.tolist()
    assert np.bincount(a.samples.group).tolist() == np.bincount(b.samples.group).tolist()
    assert a.samples.tokens == b.samples.tokens
    assert np.array_equal(a.samples.rewards, b.samples.rewards)
    sa, sb = full.allocation_state(), resumed.allocation_state()
    assert sa["stream"] == sb["stream"] and sa["alloc_rng"] == sb["alloc_rng"]
    assert sa["allocator"].keys() == sb["allocator"].keys()


# --------------------------------------------------------------------------------------------
# guards: one line each
# --------------------------------------------------------------------------------------------
def test_guards_refuse_with_one_line(tmp_path, tokenizer):
    def refused(match, **kw):
        with pytest.raises((SettingsError, ValueError)) as info:
            make(tmp_path, tokenizer, **kw)
        assert "\n" not in str(info.value) and re.search(match, str(info.value)), info.value

    refused("loss_type 'grpo' averages per sequence", loss_type="grpo")
    refused("num_iterations=2", num_iterations=2)
    refused(r"steps_per_generation \(2\) must equal", steps_per_generation=2)
    refused("mask_truncated_completions", mask_truncated_completions=True)
    refused("cropi needs gradients", allocator="cropi")
    refused("gvm needs grad_norms", allocator="gvm")
    refused("reference for the simulator", allocator="oracle")
    refused("cgrpo needs answers", allocator="cgrpo")
    refused(
        "budget 4 is below uniform's minimum", allocator="uniform", budget=4, prompts_per_step=4
    )
    refused("unknown method 'nosuch'", allocator="nosuch")
    refused("9 prompts per step but the dataset has only 8 rows", prompts_per_step=9, budget=18)
    ok = args(tmp_path)
    with pytest.raises(SettingsError, match="2 processes"):
        check_args(ok, num_processes=2)
    vllm = SimpleNamespace(**{**vars(ok), "use_vllm": True})
    with pytest.raises(SettingsError, match="importance-sampling correction"):
        check_args(vllm)
    check_args(SimpleNamespace(**{**vars(vllm), "vllm_importance_sampling_correction": False}))
    with pytest.raises(SettingsError, match="tested with trl>=1.16,<1.17, not 1.14.0"):
        check_trl_version("1.14.0")
    check_trl_version("1.16.0")
    tr = make(tmp_path, tokenizer, reward=lambda completions, **kw: [0.5] * len(completions))
    with pytest.raises(SettingsError, match="binary rewards .* got 0.5"):
        tr.train()


# --------------------------------------------------------------------------------------------
# the documented example, run as written
# --------------------------------------------------------------------------------------------
def _doc_example() -> str:
    text = (ROOT / "docs" / "integrations.md").read_text()
    block = re.search(r"<!-- trl-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/integrations.md lost its TRL example"
    return block.group(1)


@pytest.mark.parametrize("method", ["knapsack", "coba"])
def test_the_documented_example_trains(tmp_path, tokenizer, monkeypatch, method):
    code = _doc_example()
    assert len(code.strip().splitlines()) <= 12 and 'allocator="knapsack"' in code
    monkeypatch.chdir(tmp_path)
    ns = {
        "model": tiny_model(tokenizer),
        "tokenizer": tokenizer,
        "dataset": dataset(8).map(lambda r: {"answer": "1"}),
    }
    code = code.replace('allocator="knapsack"', f'allocator="{method}"')
    code = code.replace(
        "max_steps=100", "max_steps=2, use_cpu=True, report_to='none', max_completion_length=8"
    )
    exec(compile(code, "docs/integrations.md", "exec"), ns)  # noqa: S102  (our own docs)
    trainer = ns["trainer"]
    assert trainer.state.global_step == 2 and trainer.observed == 2
    assert trainer.allocator.name == method


# --------------------------------------------------------------------------------------------
# bench train --engine trl: TRL runs the updates, the rows are bench train's
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


ENGINE_RUN = [
    "--steps",
    "2",
    "--budget",
    "6",
    "--prompts-per-step",
    "3",
    "--train-prompts",
    "6",
    "--test-prompts",
    "2",
    "--max-new-tokens",
    "4",
    "--eval-every",
    "1",
    "--lr",
    "1e-3",
]


def _train(args, tmp_path, name):
    from click.testing import CliRunner

    from bench.cli import main

    return CliRunner().invoke(
        main,
        [
            "train",
            *args,
            "--out",
            str(tmp_path / name / "results"),
            "--runs-dir",
            str(tmp_path / name / "runs"),
        ],
    )


def test_engine_trl_writes_the_native_rows(tmp_path, tiny_folder):
    import json

    import pandas as pd

    base = [*ENGINE_RUN, "--model", str(tiny_folder), "--methods", "knapsack"]
    native = _train(base, tmp_path, "native")
    trl_run = _train([*base, "--engine", "trl"], tmp_path, "trl")
    assert native.exit_code == 0, native.output
    assert trl_run.exit_code == 0, trl_run.output
    assert "{'loss'" not in trl_run.output  # TRL's own log lines stay quiet
    a = pd.read_csv(tmp_path / "native" / "results" / "train_leaderboard.csv")
    b = pd.read_csv(tmp_path / "trl" / "results" / "train_leaderboard.csv")
    assert list(a.columns) == list(b.columns) and len(b) == 1
    for col in ("mode", "scenario", "method", "seed", "budget", "steps"):
        assert a[col].iloc[0] == b[col].iloc[0], col
    assert b["model"].iloc[0] == a["model"].iloc[0] + "+trl"  # ranked apart by bench report
    assert b["steps_done"].iloc[0] == 2 and b["rollouts"].iloc[0] == 12
    assert a["config_hash"].iloc[0] != b["config_hash"].iloc[0]
    fa = tmp_path / "native" / "runs" / a["run_id"].iloc[0]
    fb = tmp_path / "trl" / "runs" / b["run_id"].iloc[0]
    assert {p.name for p in fa.iterdir()} == {p.name for p in fb.iterdir()}
    for name in ("steps.csv", "evals.csv", "allocation.csv", "rounds.csv", "rollouts.parquet"):
        read = pd.read_parquet if name.endswith(".parquet") else pd.read_csv
        ta, tb = read(fa / name), read(fb / name)
        assert list(ta.columns) == list(tb.columns) and len(ta) == len(tb), name
    steps = pd.read_csv(fb / "steps.csv")
    assert np.isfinite(steps["grad_norm"]).all() and (steps["gen_seconds"] > 0).all()
    # both engines generate with the same decode loop and per-call seeds: the first step's
    # samples are the same, and so is its update (TRL's token-mean loss, the same clip)
    ra, rb = pd.read_parquet(fa / "rollouts.parquet"), pd.read_parquet(fb / "rollouts.parquet")
    first_a, first_b = ra[ra["step"] == 1], rb[rb["step"] == 1]
    for col in ("prompt_id", "rollouts", "successes", "tokens"):
        assert first_a[col].tolist() == first_b[col].tolist(), col
    sa = pd.read_csv(fa / "steps.csv")
    assert steps["grad_norm"].iloc[0] == pytest.approx(sa["grad_norm"].iloc[0], rel=1e-4)
    config = json.loads((fb / "config.json").read_text())
    assert config["engine"] == "trl" and "engine" not in json.loads(
        (fa / "config.json").read_text()
    )


def test_engine_trl_resume_reproduces(tmp_path, tiny_folder, monkeypatch):
    import pandas as pd

    from trainers.grpo import GRPOConfig as G
    from trainers.run import Interrupted, TrainConfig, run_training

    cfg = TrainConfig(
        model=str(tiny_folder),
        engine="trl",
        method="knapsack",
        steps=3,
        budget=6,
        prompts_per_step=3,
        train_prompts=6,
        test_prompts=2,
        max_new_tokens=4,
        eval_every=3,
        grpo=G(lr=1e-3),
    )
    from trainers import trl_plugin

    drawn = []
    real = trl_plugin.TRLSource.sample

    def recording(self, prompt_ids, counts):
        out = real(self, prompt_ids, counts)
        drawn.append((prompt_ids.tolist(), counts.tolist(), out.tokens))
        return out

    monkeypatch.setattr(trl_plugin.TRLSource, "sample", recording)
    full = run_training(cfg, tmp_path / "full")
    full_draws, drawn[:] = list(drawn), []
    calls = []
    with pytest.raises(Interrupted):
        run_training(cfg, tmp_path / "cut", should_stop=lambda: calls.append(1) or len(calls) == 1)
    drawn[:] = []
    resumed = run_training(cfg, tmp_path / "cut", resume=True)
    assert len(full_draws) == 3 and drawn == full_draws[1:]  # steps 2 and 3, exactly
    cols = ["rollouts", "tokens", "train_reward", "cum_tokens", "grad_norm"]
    pd.testing.assert_frame_equal(full.steps[cols], resumed.steps[cols])
    assert full.summary["final_test_accuracy"] == resumed.summary["final_test_accuracy"]


def test_engine_trl_refusals_are_one_line(tmp_path, tiny_folder, monkeypatch):
    for extra, words in (
        (["--mini-batches", "2"], "one optimiser step per training step"),
        (["--methods", "cropi"], "cropi needs gradients"),
    ):
        r = _train(
            [*ENGINE_RUN, "--model", str(tiny_folder), "--engine", "trl", *extra], tmp_path, "x"
        )
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error:"), r.output
        assert words in lines[0], lines[0]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a)
    )
    r = _train([*ENGINE_RUN, "--engine", "trl"], tmp_path, "y")
    assert r.exit_code == 2 and "pip install 'rollout-bench[trl]'" in r.output, r.output


def test_gpu_check_cpu_path(tmp_path):
    """scripts/gpu_check.sh's CPU path: both engines on SmolLM2-135M's architecture (one layer
    here), random weights, offline; it records where each part ran."""
    import json
    import subprocess

    out = tmp_path / "check.json"
    r = subprocess.run(
        [
            str(ROOT / "scripts" / "gpu_check.sh"),
            "--cpu",
            "--layers",
            "1",
            "--steps",
            "2",
            "--budget",
            "4",
            "--prompts-per-step",
            "2",
            "--max-new-tokens",
            "4",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: policy, update and generation ran on cpu for native, trl" in r.stdout
    rows = json.loads(out.read_text())
    assert [x["engine"] for x in rows] == ["native", "trl"]
    for x in rows:
        assert x["steps"] == 2 and x["rollouts"] == 8 and x["gen_tokens_per_second"] > 0
        assert x["devices"] == {"update": ["cpu"], "generation": ["cpu"], "policy": ["cpu"]}
