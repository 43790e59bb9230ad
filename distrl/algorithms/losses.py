"""Policy losses, the k3 KL estimator and loss aggregation; each loss returns `(loss, metrics)`.

Shapes: `logprobs`, `old_logprobs`, `ref_logprobs`, `mask` are `(B, T)` over completion tokens
(mask 1 on sampled tokens including EOS, 0 on prompt and padding); `advantages` is `(B,)`.
`num_tokens` / `num_seqs` are the normalisers of the whole batch, so a batch split into
micro-batches gives the same gradient as one pass.
"""

from __future__ import annotations

from typing import Callable

import torch

from distrl.algorithms.registry import lookup, make_register

POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {}
register_policy_loss = make_register(POLICY_LOSSES, "policy loss")
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
              num_tokens: float | None = None, num_seqs: float | None = None) -> torch.Tensor:
    """Reduce per-token `values (B, T)` to a scalar over `mask`.

    token_mean: sum over all tokens / num_tokens (default: tokens in this mask).
    seq_mean_token_mean: each sequence's token mean, summed / num_seqs (default: B).
    An all-zero mask gives 0, never NaN.
    """
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        denom = mask.sum() if num_tokens is None else torch.tensor(float(num_tokens))
        return (values * mask).sum() / denom.clamp_min(1.0)
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        denom = float(values.shape[0]) if num_seqs is None else float(num_seqs)
        return per_seq.sum() / max(denom, 1.0)
    raise KeyError(f"unknown loss aggregation '{mode}'; valid: {', '.join(LOSS_AGGREGATIONS)}")


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || ref): `exp(d) - d - 1` with `d = ref - policy` (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def behaviour_weight(prox_logprobs: torch.Tensor | None, old_logprobs: torch.Tensor,
                     cap: float) -> torch.Tensor | None:
    """Decoupled PPO (AReaL): with rollouts from an older policy, the importance weight
    `pi_prox / pi_behaviour` (no gradient; truncated at `cap`) corrects for the lag, and the trust
    region is taken around the proximal policy `pi_prox` (the learner's own pre-update forward)."""
    if prox_logprobs is None:
        return None
    return torch.exp(prox_logprobs - old_logprobs).clamp(max=cap)


def _finish(per_token: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor,
            ref_logprobs: torch.Tensor | None, beta: float, agg: str,
            num_tokens: float | None, num_seqs: float | None,
            metrics: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Add the KL term, aggregate, and report per-token metrics normalised like the loss."""
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)
        if beta > 0:
            per_token = per_token + beta * kl
        metrics["kl"] = aggregate(kl.detach(), mask, "token_mean", num_tokens)
    loss = aggregate(per_token, mask, agg, num_tokens, num_seqs)
    metrics["loss"] = loss.detach()
    return loss, metrics


@register_policy_loss("pg")
def pg_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
            mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
            clip_eps: float = 0.2, agg: str = "token_mean", num_tokens: float | None = None,
            num_seqs: float | None = None, prox_logprobs: torch.Tensor | None = None,
            max_importance_weight: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE: `-A * log pi(token)`; its gradient is `-A * grad log pi` (on-policy). With
    `prox_logprobs` (off-policy rollouts) each token is weighted by `behaviour_weight`."""
    per_token = -advantages.unsqueeze(-1) * logprobs
    metrics = {"clip_frac": torch.zeros(())}
    weight = behaviour_weight(prox_logprobs, old_logprobs, max_importance_weight)
    if weight is not None:
        per_token = weight * per_token
        metrics["importance_weight"] = aggregate(weight, mask, "token_mean", num_tokens)
    return _finish(per_token, logprobs, mask, ref_logprobs, beta, agg, num_tokens, num_seqs, metrics)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
                  clip_eps: float = 0.2, agg: str = "token_mean", num_tokens: float | None = None,
                  num_seqs: float | None = None, prox_logprobs: torch.Tensor | None = None,
                  max_importance_weight: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip on the ratio `pi / pi_old`, pi_old being the generation-time log-probs; with
    `prox_logprobs` (off-policy rollouts), decoupled PPO: the ratio `pi / pi_prox`, weighted by
    `behaviour_weight`."""
    adv = advantages.unsqueeze(-1)
    weight = behaviour_weight(prox_logprobs, old_logprobs, max_importance_weight)
    ratio = torch.exp(logprobs - (old_logprobs if weight is None else prox_logprobs))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).to(logprobs.dtype)
    metrics = {"clip_frac": aggregate(was_clipped, mask, "token_mean", num_tokens)}
    if weight is not None:
        per_token = weight * per_token
        metrics["importance_weight"] = aggregate(weight, mask, "token_mean", num_tokens)
    return _finish(per_token, logprobs, mask, ref_logprobs, beta, agg, num_tokens, num_seqs, metrics)


def policy_loss(name: str, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Call the policy loss registered as `name`."""
    return lookup(POLICY_LOSSES, "policy loss", name)(*args, **kwargs)
