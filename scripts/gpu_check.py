"""The GPU check behind ``scripts/gpu_check.sh``: ``bench train`` and ``--engine trl`` for a few
steps on SmolLM2-135M's architecture with random weights, on one CUDA GPU, offline.

Nothing is downloaded: the model is built from SmolLM2-135M-Instruct's ``config.json`` (its
values are written below: LlamaForCausalLM, 30 layers, hidden 576, 9 heads, 3 KV heads) with
random weights, and a character-level tokenizer over printable ASCII (so the embedding is 100
rows, not 49,152: about 106 M parameters instead of 135 M). Each engine trains the same settings
on the embedded chain-sum task; the check records where the policy, the update and the
generation ran (it fails if any ran off the GPU), and prints per engine the median step time
after the first step, generation tokens per second and peak GPU memory
(``torch.cuda.max_memory_allocated``). Random weights learn nothing in a few steps: this checks
the machinery and its speed, not learning.

    python scripts/gpu_check.py                # on a GPU machine
    python scripts/gpu_check.py --cpu --layers 2 --steps 1 --budget 8   # the CPU path (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# SmolLM2-135M-Instruct's config.json (HuggingFaceTB/SmolLM2-135M-Instruct), vocabulary aside
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.041666666666666664,
}
SPECIALS = ["<pad>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer():
    """A character-level fast tokenizer over printable ASCII, with a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model_folder(folder: Path, layers: int | None = None, seed: int = 0) -> Path:
    """SmolLM2-135M's architecture, random weights, the character tokenizer; saved as a HF
    folder ``--model`` can load offline."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = build_tokenizer()
    cfg = dict(SMOLLM2_135M)
    if layers:
        cfg["num_hidden_layers"] = int(layers)
    cfg.pop("architectures")
    cfg.pop("model_type")
    config = LlamaConfig(
        **cfg,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class Devices:
    """Where the policy's update and the generation ran, recorded by wrapping the calls."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {"update": set(), "generation": set(), "policy": set()}

    def install(self, trl: bool) -> None:
        from trainers import backends, grpo, run

        seen = self.seen
        real_update = grpo.grpo_update

        def update(model, *a, **kw):
            seen["update"].add(str(next(model.parameters()).device.type))
            return real_update(model, *a, **kw)

        run_learn = run.PolicyLearner.learn

        def learn(self, result):
            seen["policy"].add(str(next(self.policy.model.parameters()).device.type))
            return run_learn(self, result)

        grpo.grpo_update = update
        run.PolicyLearner.learn = learn
        real_gen = backends.TransformersBackend.generate

        def generate(self, *a, **kw):
            seen["generation"].add(str(next(self.model.parameters()).device.type))
            return real_gen(self, *a, **kw)

        backends.TransformersBackend.generate = generate
        if not trl:
            return
        from trainers import trl_plugin

        real_inputs = trl_plugin.AllocatorGRPOTrainer.inputs_for

        def inputs_for(self, result, parts):
            dev = str(next(self.model.parameters()).device.type)
            seen["policy"].add(dev)
            seen["update"].add(str(self.accelerator.device.type))
            return real_inputs(self, result, parts)

        trl_plugin.AllocatorGRPOTrainer.inputs_for = inputs_for
        # the engine generates with TransformersBackend (wrapped above) and computes TRL's
        # log-probabilities with prompt_once_logps: where its forward pass runs
        from trainers import trl_engine

        real_logps = trl_engine.prompt_once_logps

        def logps(model, input_ids, *a, **kw):
            seen["update"].add(str(input_ids.device.type))
            seen["policy"].add(str(next(model.parameters()).device.type))
            return real_logps(model, input_ids, *a, **kw)

        trl_engine.prompt_once_logps = logps

    def reset(self) -> None:
        for v in self.seen.values():
            v.clear()


def run_engine(engine: str, model: Path, out: Path, args, devices: Devices) -> dict:
    import torch

    from trainers.grpo import GRPOConfig
    from trainers.run import TrainConfig, run_training

    cfg = TrainConfig(
        model=str(model),
        engine=engine,
        method=args.method,
        seed=0,
        steps=args.steps,
        budget=args.budget,
        prompts_per_step=args.prompts_per_step,
        train_prompts=max(64, args.prompts_per_step),
        test_prompts=16,
        eval_every=args.steps,
        max_new_tokens=args.max_new_tokens,
        checkpoint_every=100_000,
        grpo=GRPOConfig(lr=1e-5),
    )
    devices.reset()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = run_training(cfg, out / engine)
    wall = time.perf_counter() - t0
    steps = result.steps
    later = steps["step_seconds"].tolist()[1:] or steps["step_seconds"].tolist()
    gen = steps["tokens"].sum() / max(steps["gen_seconds"].sum(), 1e-9)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {
        "engine": engine,
        "steps": int(len(steps)),
        "step_seconds_median_after_first": statistics.median(later),
        "first_step_seconds": float(steps["step_seconds"].iloc[0]),
        "gen_tokens_per_second": float(gen),
        "update_seconds_median": float(steps["update_seconds"].median()),
        "rollouts": int(steps["rollouts"].sum()),
        "peak_gpu_gib": peak,
        "wall_seconds": wall,
        "devices": {k: sorted(v) for k, v in devices.seen.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="the CPU path: no GPU required")
    p.add_argument("--layers", type=int, default=None, help="override the 30 layers")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--method", default="knapsack")
    p.add_argument("--engines", default="native,trl")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path on any machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    want = "cpu" if args.cpu else "cuda"
    if want == "cuda" and not torch.cuda.is_available():
        print("Error: no CUDA GPU visible to torch (run with --cpu for the CPU path)")
        return 2
    if want == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    devices = Devices()
    devices.install("trl" in engines)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp_path = Path(tmp)
        model = build_model_folder(tmp_path / "model", args.layers)
        for engine in engines:
            row = run_engine(engine, model, tmp_path / "runs", args, devices)
            rows.append(row)
            off = {k: v for k, v in row["devices"].items() if v and v != [want]}
            missing = [k for k, v in row["devices"].items() if not v]
            print(json.dumps(row))
            if off or missing:
                print(f"Error: {engine}: ran off {want}: {off or ''} never seen: {missing or ''}")
                return 1
    print(f"{'engine':8} {'s/step':>8} {'gen tok/s':>10} {'update s':>9} {'peak GiB':>9}")
    for r in rows:
        print(
            f"{r['engine']:8} {r['step_seconds_median_after_first']:8.2f} "
            f"{r['gen_tokens_per_second']:10.0f} {r['update_seconds_median']:9.2f} "
            f"{r['peak_gpu_gib']:9.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(
        f"ok: policy, update and generation ran on {want} for {', '.join(r['engine'] for r in rows)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
