"""Rollouts -> padded tensors, and the log-probs a model gives to exactly the sampled tokens.

Sequences are `prompt_ids + completion_ids` (token ids as sampled, never re-tokenized), right
padded. The completion tensors are `(B, Tc)` aligned with `Rollout.logprobs`; `completion_mask`
is 1 on every sampled token (EOS included) and 0 on padding, so prompt tokens never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from distrl.algorithms import token_logprobs
from distrl.generation.base import Rollout


@dataclass
class Collated:
    input_ids: torch.Tensor        # (B, L) prompt + completion, right padded
    attention_mask: torch.Tensor   # (B, L)
    positions: torch.Tensor        # (B, Tc) index into the (B, L-1) next-token predictions
    completion_ids: torch.Tensor   # (B, Tc)
    completion_mask: torch.Tensor  # (B, Tc) 1 on sampled tokens, 0 on padding
    old_logprobs: torch.Tensor     # (B, Tc) generation-time log-probs


def collate(rollouts: Sequence[Rollout], pad_id: int) -> Collated:
    n = len(rollouts)
    seq_len = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    comp_len = max(1, max(len(r.completion_ids) for r in rollouts))
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, seq_len), dtype=torch.long)
    positions = torch.zeros((n, comp_len), dtype=torch.long)
    completion_ids = torch.full((n, comp_len), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((n, comp_len))
    old_logprobs = torch.zeros((n, comp_len))
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        input_ids[i, : p + c] = torch.tensor(r.prompt_ids + r.completion_ids, dtype=torch.long)
        attention_mask[i, : p + c] = 1
        if c:
            # Logits at position t predict token t + 1: completion token j sits at p + j.
            positions[i, :c] = torch.arange(p - 1, p - 1 + c)
            completion_ids[i, :c] = torch.tensor(r.completion_ids, dtype=torch.long)
            completion_mask[i, :c] = 1.0
            old_logprobs[i, :c] = torch.tensor(r.logprobs, dtype=torch.float32)
    return Collated(input_ids, attention_mask, positions, completion_ids, completion_mask, old_logprobs)


def completion_logprobs(model: torch.nn.Module, batch: Collated, temperature: float) -> torch.Tensor:
    """`(B, Tc)` log-probs of the completion tokens under `model` (differentiable; 0 on padding)."""
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    # Explicit positions 0..L-1 from the first prompt token: the same positions the generator
    # gave these tokens (its left padding is skipped by the attention mask).
    position_ids = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids)
    logits = model(input_ids=input_ids, attention_mask=batch.attention_mask.to(device),
                   position_ids=position_ids, use_cache=False).logits
    index = batch.positions.to(device)
    picked = torch.gather(logits[:, :-1], 1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    logprobs = token_logprobs(picked, batch.completion_ids.to(device), temperature)
    return logprobs * batch.completion_mask.to(device)
