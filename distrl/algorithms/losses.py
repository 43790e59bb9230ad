"""Policy losses, KL estimators and loss aggregation; each loss returns `(loss, metrics)`.

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
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
              num_tokens: float | None = None, num_seqs: float | None = None,
              norm_len: float | None = None) -> torch.Tensor:
    """Reduce per-token `values (B, T)` to a scalar over `mask`.

    token_mean: sum over all tokens / num_tokens (default: tokens in this mask).
    seq_mean_token_mean: each sequence's token mean, summed / num_seqs (default: B).
    seq_mean_token_sum_norm (Dr. GRPO): each sequence's token sum / the constant `norm_len`
    (the generation budget; default T), summed / num_seqs: no length bias either way.
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
    if mode == "seq_mean_token_sum_norm":
        per_seq = (values * mask).sum(-1) / float(norm_len or values.shape[-1])
        denom = float(values.shape[0]) if num_seqs is None else float(num_seqs)
        return per_seq.sum() / max(denom, 1.0)
    raise KeyError(f"unknown loss aggregation '{mode}'; valid: {', '.join(LOSS_AGGREGATIONS)}")


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || ref): `exp(d) - d - 1` with `d = ref - policy` (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimates of KL(policy || ref) from the sampled tokens' log-probs (Schulman's
    k1 `log pi - log ref` (unbiased, can be negative), k2 `(log pi - log ref)^2 / 2`, k3 as above)."""
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if estimator == "k3":
        return k3_kl(logprobs, ref_logprobs)
    raise KeyError(f"unknown KL estimator '{estimator}'; valid: {', '.join(KL_ESTIMATORS)}")


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
            metrics: dict[str, torch.Tensor], kl_estimator: str = "k3", entropy: torch.Tensor | None = None,
            entropy_coef: float = 0.0, norm_len: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Add the KL and entropy terms, aggregate, and report per-token metrics normalised like the loss."""
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs, kl_estimator)
        if beta > 0:
            per_token = per_token + beta * kl
        metrics["kl"] = aggregate(kl.detach(), mask, "token_mean", num_tokens)
    if entropy is not None:
        if entropy_coef:
            per_token = per_token - entropy_coef * entropy  # a bonus: higher entropy, lower loss
        metrics["entropy"] = aggregate(entropy.detach(), mask, "token_mean", num_tokens)
    loss = aggregate(per_token, mask, agg, num_tokens, num_seqs, norm_len)
    metrics["loss"] = loss.detach()
    return loss, metrics


@register_policy_loss("pg")
def pg_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
            mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
            clip_eps: float = 0.2, agg: str = "token_mean", num_tokens: float | None = None,
            num_seqs: float | None = None, prox_logprobs: torch.Tensor | None = None,
            max_importance_weight: float = 2.0, clip_eps_high: float | None = None,
            **terms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE: `-A * log pi(token)`; its gradient is `-A * grad log pi` (on-policy). With
    `prox_logprobs` (off-policy rollouts) each token is weighted by `behaviour_weight`."""
    per_token = -advantages.unsqueeze(-1) * logprobs
    metrics = {"clip_frac": torch.zeros(())}
    weight = behaviour_weight(prox_logprobs, old_logprobs, max_importance_weight)
    if weight is not None:
        per_token = weight * per_token
        metrics["importance_weight"] = aggregate(weight, mask, "token_mean", num_tokens)
    return _finish(per_token, logprobs, mask, ref_logprobs, beta, agg, num_tokens, num_seqs, metrics, **terms)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
                  clip_eps: float = 0.2, agg: str = "token_mean", num_tokens: float | None = None,
                  num_seqs: float | None = None, prox_logprobs: torch.Tensor | None = None,
                  max_importance_weight: float = 2.0, clip_eps_high: float | None = None,
                  **terms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip on the ratio `pi / pi_old`, pi_old being the generation-time log-probs, clipped to
    `[1 - clip_eps, 1 + clip_eps_high]` (DAPO's clip-higher when `clip_eps_high > clip_eps`); with
    `prox_logprobs` (off-policy rollouts), decoupled PPO: the ratio `pi / pi_prox`, weighted by
    `behaviour_weight`."""
    adv = advantages.unsqueeze(-1)
    weight = behaviour_weight(prox_logprobs, old_logprobs, max_importance_weight)
    ratio = torch.exp(logprobs - (old_logprobs if weight is None else prox_logprobs))
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).to(logprobs.dtype)
    metrics = {"clip_frac": aggregate(was_clipped, mask, "token_mean", num_tokens)}
    if weight is not None:
        per_token = weight * per_token
        metrics["importance_weight"] = aggregate(weight, mask, "token_mean", num_tokens)
    return _finish(per_token, logprobs, mask, ref_logprobs, beta, agg, num_tokens, num_seqs, metrics, **terms)


@register_policy_loss("gspo")
def gspo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, *, ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
              clip_eps: float = 3e-4, agg: str = "seq_mean_token_mean", num_tokens: float | None = None,
              num_seqs: float | None = None, prox_logprobs: torch.Tensor | None = None,
              max_importance_weight: float = 2.0, clip_eps_high: float | None = None,
              **terms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Qwen): one ratio per sequence, `s = exp(mean_t(log pi - log pi_old))` (the geometric
    mean of the token ratios), clipped to `[1 - clip_eps, 1 + clip_eps_high]`; each of the
    sequence's tokens carries the sequence's clipped objective, so `seq_mean_token_mean`
    aggregation gives the paper's mean over sequences. With `prox_logprobs`, the ratio is taken
    against the proximal policy and weighted by the sequence's mean behaviour weight."""
    weight = behaviour_weight(prox_logprobs, old_logprobs, max_importance_weight)
    base = old_logprobs if weight is None else prox_logprobs
    m = mask.to(logprobs.dtype)
    lengths = m.sum(-1).clamp_min(1.0)
    seq_ratio = torch.exp(((logprobs - base) * m).sum(-1) / lengths)  # (B,)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * seq_ratio
    clipped = -advantages * torch.clamp(seq_ratio, 1.0 - clip_eps, 1.0 + high)
    per_seq = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).to(logprobs.dtype)
    seqs = float(logprobs.shape[0] if num_seqs is None else num_seqs) or 1.0  # whole-batch normaliser
    metrics = {"clip_frac": was_clipped.sum() / seqs}
    if weight is not None:
        seq_weight = (weight * m).sum(-1) / lengths
        per_seq = seq_weight * per_seq
        metrics["importance_weight"] = seq_weight.sum() / seqs
    per_token = per_seq.unsqueeze(-1).expand_as(logprobs)
    return _finish(per_token, logprobs, mask, ref_logprobs, beta, agg, num_tokens, num_seqs, metrics, **terms)


def policy_loss(name: str, *args, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Call the policy loss registered as `name`."""
    return lookup(POLICY_LOSSES, "policy loss", name)(*args, **kwargs)
