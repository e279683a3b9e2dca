"""The policy update: a clipped policy-gradient step over variable-size groups (one torch
implementation, readable top to bottom).

Inputs are what the allocator's ``TrainBatch`` says: which samples train, with one advantage and
one weight each. Group sizes never appear here: the method already turned its groups into
per-sample advantages, so any allocation (2 samples for one prompt, 40 for the next) trains the
same way.

Loss (verl's ``compute_policy_loss_vanilla`` as configured in docs/training.md#the-update):

    ratio_t  = exp(logp_t − logp_old_t)                           per response token t
    pg_t     = max(−A·ratio_t, −A·clip(ratio_t, 1 − clip_low, 1 + clip_high))
    pg_t     = min(pg_t, −A·clip_ratio_c)           for A < 0 only (dual clip, clip_ratio_c = 10)
    loss     = Σ_t w·pg_t / (response tokens of every trained sample in the mini-batch)
               + kl_coef · the same token-mean of k3 = exp(ref − logp) − (ref − logp) − 1

"token-mean": every trained sample's tokens count in the normaliser, zero-advantage ones included
(docs/training.md#the-update, verl ``loss_agg_mode="token-mean"``). A sample's weight ``w`` scales its tokens' terms.
The batch is split into ``mini_batches`` optimiser steps (verl's PPO mini-batches; docs/training.md#the-update uses 8);
``logp_old`` is the policy before the step's first optimiser step, so with one mini-batch the
ratio is 1 and the update is the plain policy gradient. Each optimiser step clips the gradient
norm to ``max_grad_norm`` and is skipped when the norm is not finite (verl). Log-probabilities
are those of the sampling distribution: logits divided by the sampling temperature (verl).
Forward passes run in micro-batches of ``micro_batch_size`` sequences (memory only: the result
does not depend on it beyond float rounding). Samples whose advantage × weight is 0 (every sample
of a zero-variance group under GRPO) have a policy-gradient term of exactly 0 whatever the ratio,
so without a KL term they are not run through the model at all: they only count in the
token-mean normaliser. With ``autocast_bf16`` the forward and backward passes run under bf16
autocast (the weights and the optimiser stay fp32): about 6× faster than fp32 on CPUs with AMX.
Tensors follow the model's device (CPU here; a GPU when the trainer puts the model there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from allocators.base import check_numbers


@dataclass(frozen=True)
class GRPOConfig:
    lr: float = 3e-5
    weight_decay: float = 0.0  # docs/training.md#the-update
    max_grad_norm: float = 1.0  # docs/training.md#the-update
    clip_low: float = 0.2  # docs/training.md#the-update
    clip_high: float = 0.28  # docs/training.md#the-update
    clip_ratio_c: float = 10.0  # docs/training.md#the-update (dual clip for negative advantages)
    kl_coef: float = (
        0.0  # docs/training.md#the-update: KL loss on with coefficient 0; >0 loads a reference
    )
    mini_batches: int = 1  # optimiser steps per training step
    micro_batch_size: int = 16  # sequences per forward pass
    temperature: float = 0.7  # sampling temperature the log-probs are taken at
    autocast_bf16: bool = False  # bf16 autocast for forward/backward (weights stay fp32)

    bounds = {
        "lr": (0.0, 1.0),
        "weight_decay": (0.0, 1e3),
        "max_grad_norm": (0.0, 1e6),
        "clip_low": (0.0, 1.0),
        "clip_high": (0.0, 1e3),
        "clip_ratio_c": (1.0, 1e6),
        "kl_coef": (0.0, 1e6),
        "mini_batches": (1, 100_000),
        "micro_batch_size": (1, 1_000_000),
        "temperature": (1e-6, 1e3),
    }

    def __post_init__(self) -> None:
        check_numbers(self, self.bounds, "grpo.")


def sample_logprobs(
    model, prompts: list[list[int]], responses: list[list[int]], temperature: float, pad_id: int
) -> torch.Tensor:
    """log pi(token | the tokens before it) for every response token, flat and row-major
    (sample 0's response tokens first), float32, at the sampling temperature (the computation:
    ``response_logits``)."""
    picked, target = response_logits(model, prompts, responses, temperature, pad_id)
    return picked.gather(1, target[:, None]).squeeze(1) - torch.logsumexp(picked, dim=-1)


def response_logits(
    model, prompts: list[list[int]], responses: list[list[int]], temperature: float, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits / temperature, float32, [N, vocab]; the token there, [N]) at every response
    token, flat and row-major (sample 0's response tokens first).

    Each distinct prompt runs through the model once (left-padded, with its KV cache kept, under
    autograd), the cache is repeated for that prompt's samples, and the right-padded responses
    run as its continuation: the same log-probabilities as one forward pass over each
    prompt + response sequence (tests/test_train.py compares them), without recomputing a prompt
    for every sample of its group, and with the output layer applied only where a response token
    is predicted (docs/measurements.md#the-cpu-trainer-step)."""
    from transformers import DynamicCache

    from trainers.models import cache_kwarg

    dev = next(model.parameters()).device
    if not any(responses):
        vocab = model.get_output_embeddings().weight.shape[0]
        return torch.zeros((0, vocab), device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    distinct: dict[tuple[int, ...], int] = {}
    rep = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    unique = list(distinct)
    pw = max(map(len, unique))
    p_ids = torch.full((len(unique), pw), pad_id, dtype=torch.long)
    p_attn = torch.zeros((len(unique), pw), dtype=torch.long)
    for row, p in enumerate(unique):  # left padding: every prompt ends at column pw - 1
        p_ids[row, pw - len(p) :] = torch.tensor(p, dtype=torch.long)
        p_attn[row, pw - len(p) :] = 1
    p_ids, p_attn = p_ids.to(dev), p_attn.to(dev)
    p_pos = (p_attn.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    kv = {cache_kwarg(model): cache}
    first = model(
        input_ids=p_ids,
        attention_mask=p_attn,
        position_ids=p_pos,
        use_cache=True,
        logits_to_keep=1,
        **kv,
    ).logits[:, -1:]  # [P, 1, V]: predicts each response's first token
    idx = torch.tensor(rep, dtype=torch.long, device=dev)
    cache.batch_select_indices(idx)
    lengths = [len(r) for r in responses]
    rw = max(lengths)
    r_ids = torch.full((len(responses), rw), pad_id, dtype=torch.long)
    r_mask = torch.zeros((len(responses), rw), dtype=torch.bool)
    for row, r in enumerate(responses):
        r_ids[row, : len(r)] = torch.tensor(r, dtype=torch.long)
        r_mask[row, : len(r)] = True
    r_ids, r_mask = r_ids.to(dev), r_mask.to(dev)
    logits = first[idx]
    if rw > 1:  # response token k + 1 is predicted at response position k
        rest = model(
            input_ids=r_ids[:, :-1],
            attention_mask=torch.cat([p_attn[idx], r_mask[:, :-1].long()], dim=1),
            position_ids=p_pos[idx, -1:] + 1 + torch.arange(rw - 1, device=dev),
            use_cache=True,
            **kv,
        ).logits
        logits = torch.cat([logits, rest], dim=1)  # [S, rw, V]
    return logits[r_mask].float() / temperature, r_ids[r_mask]  # [N, V], [N]


def policy_loss_terms(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, cfg: GRPOConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped policy-gradient loss and whether the clip was active (``adv``: each
    token's sample's advantage, the same shape as ``logp``)."""
    ratio = torch.exp(logp - old_logp)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg = torch.maximum(loss_unclipped, loss_clipped)
    dual = torch.minimum(pg, -adv * cfg.clip_ratio_c)
    pg = torch.where(adv < 0, dual, pg)
    return pg, (loss_clipped > loss_unclipped)


def _autocast(model, cfg: GRPOConfig):
    """bf16 autocast on the model's device when ``cfg.autocast_bf16``, else a no-op context."""
    dev = next(model.parameters()).device.type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=cfg.autocast_bf16)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _grouped(idx: np.ndarray, prompts, responses) -> np.ndarray:
    """``idx`` ordered by (prompt length, prompt, response length): a prompt's samples sit
    together, so a micro-batch runs each prompt once and pads little (the loss is a sum: the
    order changes only rounding)."""
    keys = {i: (len(prompts[i]), tuple(prompts[i]), len(responses[i])) for i in idx}
    return np.array(sorted(np.asarray(idx).tolist(), key=keys.__getitem__), np.int64)


def old_logprobs(model, prompts, responses, cfg: GRPOConfig, pad_id: int) -> list[torch.Tensor]:
    """log-probs of every sample's response tokens under the current (pre-update) policy, one
    1-D tensor per sample."""
    out: list[torch.Tensor] = [torch.zeros(0)] * len(responses)
    order = _grouped(np.arange(len(responses)), prompts, responses)
    with torch.no_grad(), _autocast(model, cfg):
        for sl in _chunks(order.size, cfg.micro_batch_size):
            idx = order[sl]
            ps, rs = [prompts[i] for i in idx], [responses[i] for i in idx]
            flat = sample_logprobs(model, ps, rs, cfg.temperature, pad_id).float().cpu()
            for i, piece in zip(idx, flat.split([len(responses[i]) for i in idx])):
                out[i] = piece
    return out


def accumulate_gradients(
    model,
    prompts,
    responses,
    coef_adv: np.ndarray,
    weights: np.ndarray,
    part: np.ndarray,
    cfg: GRPOConfig,
    pad_id: int,
    old: list[torch.Tensor] | None = None,
    ref_model=None,
    skip_zero: bool = True,
) -> dict[str, float]:
    """Backpropagate the token-mean loss of the samples ``part`` (one mini-batch) into
    ``.grad``; returns the loss terms and the number of response tokens (the normaliser)."""
    adv_all = torch.as_tensor(np.asarray(coef_adv, np.float64), dtype=torch.float32)
    w_all = torch.as_tensor(np.asarray(weights, np.float64), dtype=torch.float32)
    denom = float(sum(len(responses[i]) for i in part))  # every trained sample's tokens
    out = {"pg_loss": 0.0, "kl": 0.0, "clipped_tokens": 0.0, "tokens": denom}
    if denom == 0:
        return out
    run = part
    if skip_zero and cfg.kl_coef == 0:
        nonzero = (np.asarray(coef_adv)[part] * np.asarray(weights)[part]) != 0
        run = part[nonzero]
    run = _grouped(run, prompts, responses)
    autocast = _autocast(model, cfg)
    for sl in _chunks(run.size, cfg.micro_batch_size):
        idx = run[sl]
        ps, rs = [prompts[i] for i in idx], [responses[i] for i in idx]
        with autocast:
            logp = sample_logprobs(model, ps, rs, cfg.temperature, pad_id)
        if logp.numel() == 0:
            continue
        dev = logp.device
        if old is None:  # one optimiser step per training step: on-policy
            old_lp = logp.detach()
        else:
            old_lp = torch.cat([old[i] for i in idx]).to(dev)
        lengths = torch.tensor([len(responses[i]) for i in idx], device=dev)
        adv = adv_all[idx].to(dev).repeat_interleave(lengths)  # each token: its sample's
        w = w_all[idx].to(dev).repeat_interleave(lengths)
        pg, clipped = policy_loss_terms(logp, old_lp, adv, cfg)
        loss = (w * pg).sum() / denom
        out["pg_loss"] += float(loss.detach())
        out["clipped_tokens"] += float(clipped.float().sum())
        if cfg.kl_coef > 0 and ref_model is not None:
            with torch.no_grad(), autocast:
                ref_lp = sample_logprobs(ref_model, ps, rs, cfg.temperature, pad_id)
            delta = torch.clamp(ref_lp - logp, -20.0, 20.0)
            k3 = torch.clamp(torch.exp(delta) - delta - 1.0, -10.0, 10.0)  # verl low_var_kl
            kl = k3.sum() / denom
            out["kl"] += float(kl.detach())
            loss = loss + cfg.kl_coef * kl
        loss.backward()
    return out


def grpo_update(
    model,
    optimizer,
    prompts: list[list[int]],
    responses: list[list[int]],
    advantages: np.ndarray,
    weights: np.ndarray,
    cfg: GRPOConfig,
    pad_id: int,
    ref_model=None,
) -> dict[str, float]:
    """One training step's update on the trained samples; returns loss statistics.

    ``prompts``/``responses``: token ids per trained sample; ``advantages``/``weights``: the
    allocator's ``TrainBatch`` values for the same samples, in the same order.
    """
    n = len(responses)
    stats = {
        "pg_loss": 0.0,
        "kl": 0.0,
        "clip_frac": 0.0,
        "grad_norm": 0.0,
        "optimizer_steps": 0.0,
        "skipped_steps": 0.0,
    }
    if n == 0:
        return stats
    model.eval()  # no dropout: the update scores exactly the policy that sampled
    params = [p for p in model.parameters() if p.requires_grad]
    # logp_old: the policy that generated the step, before its first optimiser step
    old = old_logprobs(model, prompts, responses, cfg, pad_id) if cfg.mini_batches > 1 else None
    tokens = clipped = 0.0
    parts = [p for p in np.array_split(np.arange(n), min(cfg.mini_batches, n)) if p.size]
    for part in parts:
        optimizer.zero_grad(set_to_none=True)
        terms = accumulate_gradients(
            model, prompts, responses, advantages, weights, part, cfg, pad_id, old, ref_model
        )
        for p in params:  # a mini-batch with nothing to learn: a zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        if math.isfinite(norm):
            optimizer.step()
            stats["optimizer_steps"] += 1
            stats["grad_norm"] = max(stats["grad_norm"], norm)
        else:
            stats["skipped_steps"] += 1
            stats["grad_norm"] = norm
        optimizer.zero_grad(set_to_none=True)
        stats["pg_loss"] += terms["pg_loss"] / len(parts)
        stats["kl"] += terms["kl"] / len(parts)
        tokens += terms["tokens"]
        clipped += terms["clipped_tokens"]
    stats["clip_frac"] = clipped / tokens if tokens else 0.0
    return stats


def make_optimizer(model, cfg: GRPOConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
