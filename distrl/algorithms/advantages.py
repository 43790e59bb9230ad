"""Advantage estimators over groups of completions, and top-k selection within a group.

Input rewards are `(P, G)`: P prompts, G completions each. Output advantages have the same shape.
"""

from __future__ import annotations

from typing import Callable

import torch

from distrl.algorithms.registry import lookup, make_register

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}
register_advantage = make_register(ADVANTAGES, "advantage estimator")


@register_advantage("pg")
def group_mean_baseline(rewards: torch.Tensor, std_floor: float = 1e-4) -> torch.Tensor:
    """REINFORCE with the group mean as baseline: `A = r - mean(r_group)`."""
    return rewards - rewards.mean(dim=-1, keepdim=True)


@register_advantage("grpo")
def group_zscore(rewards: torch.Tensor, std_floor: float = 1e-4) -> torch.Tensor:
    """GRPO: `A = (r - mean) / std` within each group.

    A group whose std is below `std_floor` gets exactly 0: dividing fp noise by a tiny std would
    turn a group of equal rewards into advantages of +-thousands.
    """
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)
    flat = std < std_floor
    return torch.where(flat, torch.zeros_like(centered), centered / std.clamp_min(std_floor))


@register_advantage("dr_grpo")
def group_mean_unscaled(rewards: torch.Tensor, std_floor: float = 1e-4) -> torch.Tensor:
    """Dr. GRPO: `A = r - mean(r_group)`, no division by the group std (which favours groups that
    are nearly all right or all wrong); pair it with `seq_mean_token_sum_norm` aggregation."""
    return rewards - rewards.mean(dim=-1, keepdim=True)


@register_advantage("rloo")
def leave_one_out(rewards: torch.Tensor, std_floor: float = 1e-4) -> torch.Tensor:
    """RLOO: each completion's baseline is the mean of the *other* completions of its group,
    `A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean)`; a single completion gets 0."""
    g = rewards.shape[-1]
    if g < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean(dim=-1, keepdim=True)) * (g / (g - 1))


@register_advantage("reinforce_pp")
def batch_normalised(rewards: torch.Tensor, std_floor: float = 1e-4) -> torch.Tensor:
    """REINFORCE++: no per-group baseline; rewards (with the KL penalty already in them, see
    `--kl_in_reward`) are normalised over the whole batch, `A = (r - mean) / std`; a batch whose
    std is below `std_floor` gets 0."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    std = rewards.std()
    if std < std_floor:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / std


def compute_advantages(name: str, rewards: torch.Tensor, std_floor: float = 1e-4) -> torch.Tensor:
    """Advantages `(P, G)` from rewards `(P, G)` with the estimator registered as `name`."""
    if not torch.isfinite(rewards).all():  # one inf would turn a whole group's advantages to NaN
        raise ValueError(f"rewards must be finite, got {rewards[~torch.isfinite(rewards)][0].item()}")
    return lookup(ADVANTAGES, "advantage estimator", name)(rewards.float(), std_floor=std_floor)


def topk_indices(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Indices `(P, k)` of the k highest-reward completions of each group (ties: lowest index)."""
    if not 0 < k <= rewards.shape[-1]:
        raise ValueError(f"k must be in [1, {rewards.shape[-1]}], got {k}")
    # A stable sort keeps the earlier completion first among equal rewards, so runs are repeatable.
    order = torch.sort(rewards, dim=-1, descending=True, stable=True).indices
    return order[..., :k]
