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
import torch.nn.functional as F

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


@dataclass
class SequenceBatch:
    """Prompt + response token sequences, right-padded, with a mask over response tokens."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, L-1]: 1 where position t predicts a response token


def make_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> SequenceBatch:
    """Right-padded sequences (width a multiple of 16); padding is masked out of attention and
    of the loss."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = -(-max(lengths) // 16) * 16  # few distinct shapes: CPU kernels are set up per shape
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    resp = torch.zeros((len(prompts), width - 1), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = list(p) + list(r)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        resp[i, len(p) - 1 : len(seq) - 1] = 1.0  # logits at t predict token t+1
    return SequenceBatch(ids, attn, resp)


def token_logprobs(model, batch: SequenceBatch, temperature: float) -> torch.Tensor:
    """log pi(token_{t+1} | tokens_{<=t}) for every position, [B, L-1] (float32)."""
    dev = next(model.parameters()).device
    ids = batch.input_ids.to(dev)
    logits = model(input_ids=ids, attention_mask=batch.attention_mask.to(dev)).logits
    logits = logits[:, :-1].float() / temperature
    target = ids[:, 1:]
    picked = torch.gather(logits, 2, target.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def policy_loss_terms(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, cfg: GRPOConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped policy-gradient loss and whether the clip was active."""
    a = adv[:, None]
    ratio = torch.exp(logp - old_logp)
    loss_unclipped = -a * ratio
    loss_clipped = -a * torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg = torch.maximum(loss_unclipped, loss_clipped)
    dual = torch.minimum(pg, -a * cfg.clip_ratio_c)
    pg = torch.where(a < 0, dual, pg)
    return pg, (loss_clipped > loss_unclipped)


def _autocast(model, cfg: GRPOConfig):
    """bf16 autocast on the model's device when ``cfg.autocast_bf16``, else a no-op context."""
    dev = next(model.parameters()).device.type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=cfg.autocast_bf16)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def old_logprobs(model, prompts, responses, cfg: GRPOConfig, pad_id: int) -> list[torch.Tensor]:
    """log-probs of every sample under the current (pre-update) policy, one 1-D tensor each."""
    out: list[torch.Tensor] = []
    with torch.no_grad(), _autocast(model, cfg):
        for sl in _chunks(len(responses), cfg.micro_batch_size):
            b = make_batch(prompts[sl], responses[sl], pad_id)
            out.extend(token_logprobs(model, b, cfg.temperature).float())
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
    autocast = _autocast(model, cfg)
    for sl in _chunks(run.size, cfg.micro_batch_size):
        idx = run[sl]
        b = make_batch([prompts[i] for i in idx], [responses[i] for i in idx], pad_id)
        with autocast:
            logp = token_logprobs(model, b, cfg.temperature)
        if old is None:  # one optimiser step per training step: on-policy
            old_lp = logp.detach()
        else:
            width = logp.shape[1]
            old_lp = torch.stack(
                [F.pad(old[i], (0, max(0, width - old[i].shape[0])))[:width] for i in idx]
            )
        dev = logp.device
        mask = b.response_mask.to(dev)
        pg, clipped = policy_loss_terms(logp, old_lp.to(dev), adv_all[idx].to(dev), cfg)
        loss = (w_all[idx].to(dev)[:, None] * pg * mask).sum() / denom
        out["pg_loss"] += float(loss.detach())
        out["clipped_tokens"] += float((clipped.float() * mask).sum())
        if cfg.kl_coef > 0 and ref_model is not None:
            with torch.no_grad(), autocast:
                ref_lp = token_logprobs(ref_model, b, cfg.temperature)
            delta = torch.clamp(ref_lp - logp, -20.0, 20.0)
            k3 = torch.clamp(torch.exp(delta) - delta - 1.0, -10.0, 10.0)  # verl low_var_kl
            kl = (k3 * mask).sum() / denom
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
