"""Log-probabilities of sampled tokens from logits, the one quantity every side must agree on."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of each token under `softmax(logits / temperature)`, in fp32.

    logits `(B, T, V)` predict tokens `(B, T)` (already shifted by the caller). Untruncated by
    top-k/top-p, so generators and learner compute comparable numbers.
    """
    scaled = logits.float() / temperature
    picked = torch.gather(scaled, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`(B, T)` entropy of `softmax(logits / temperature)` at each position, in fp32."""
    scaled = logits.float() / temperature
    logp = torch.log_softmax(scaled, dim=-1)
    return -(logp.exp() * logp).sum(-1)
