"""Optimizers for the learner: CPU-offloaded AdamW, and the factory behind `--optimizer`."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from distrl.optim.cpu_adamw import CPUAdamW, clip_coef, global_norm, scaled_step
from distrl.optim.sharded import ShardedCPUAdamW

OPTIMIZERS = ("auto", "adamw", "cpu_adamw", "adamw_8bit")


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                   max_grad_norm: float, grad_offload: bool = False, rank: int = 0, world_size: int = 1,
                   cpu_group=None, sharding: str = "zero1", seed: int | None = None):
    """`adamw` (torch fused), `cpu_adamw` (fp32 masters + moments on CPU; in a learner group of
    `world_size` > 1, sharded ZeRO-1 style over the ranks), `adamw_8bit` (bitsandbytes); `auto`:
    cpu_adamw when a trained tensor is bf16/fp16 (its update needs an fp32 master), else adamw.
    `seed` places cpu_adamw's masters at random in their bf16 rounding cells (`cpu_adamw.dither`,
    `--dither_masters`); None (the default) leaves them at the rounded weights."""
    params = list(params)
    if name == "auto":
        name = "cpu_adamw" if any(p.dtype != torch.float32 for p in params) else "adamw"
    if name == "cpu_adamw" and world_size > 1:
        return ShardedCPUAdamW(params, rank, world_size, sharding, cpu_group, lr=lr, weight_decay=weight_decay,
                               max_grad_norm=max_grad_norm, grad_offload=grad_offload, dither_seed=seed)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "cpu_adamw":
        return CPUAdamW(params, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                        grad_offload=grad_offload, dither_seed=seed)
    if name == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise KeyError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")


LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_scale(schedule: str, progress: float) -> float:
    """The factor on --lr at `progress` (0 at the first step, 1 at the end of --max_steps or
    --time_budget_s): constant 1; linear 1 - progress; cosine (1 + cos(pi * progress)) / 2."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise KeyError(f"unknown lr schedule '{schedule}'; valid: {', '.join(LR_SCHEDULES)}")


def _groups(optimizer) -> list[dict] | None:
    """The param groups whose "lr" an update reads (None for a rank that owns no shard)."""
    inner = optimizer.local if isinstance(optimizer, ShardedCPUAdamW) else optimizer
    if inner is None:
        return None
    return inner.inner.param_groups if isinstance(inner, CPUAdamW) else inner.param_groups


def set_lr(optimizer, lr: float) -> None:
    """The lr of the next update (the schedule's; see `lr_scale`)."""
    for group in _groups(optimizer) or []:
        group["lr"] = lr


def set_hyperparameters(optimizer, lr: float, weight_decay: float) -> float | None:
    """Give a loaded optimizer this run's lr and weight decay; returns the lr it was saved with
    (None for a rank that owns no shard). torch's load_state_dict restores every param group's
    hyperparameters, so a run resumed with another --lr would otherwise keep the old one."""
    groups = _groups(optimizer)
    if groups is None:
        return None
    inner = optimizer.local if isinstance(optimizer, ShardedCPUAdamW) else optimizer
    if isinstance(inner, CPUAdamW):
        inner.base_lr = lr
    saved = float(groups[0]["lr"])
    for group in groups:
        group["lr"], group["weight_decay"] = lr, weight_decay
    return saved


def clip_and_step(optimizer, params: list[torch.nn.Parameter], max_grad_norm: float) -> float:
    """Clip the global gradient norm, update unless it is non-finite, clear gradients; return the
    norm before clipping. CPUAdamW clips its own CPU gradients.

    A parameter without a gradient steps with a zero one: the learner skips autograd for
    micro-batches whose gradient is exactly zero, and momentum and weight decay must act as if
    the backward had run."""
    if isinstance(optimizer, CPUAdamW | ShardedCPUAdamW):
        return optimizer.step()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    norm = global_norm([p.grad for p in params])
    if math.isfinite(norm):  # a non-finite gradient must never reach the weights
        scaled_step(optimizer, 1.0 / clip_coef(norm, max_grad_norm))
    optimizer.zero_grad(set_to_none=True)
    return norm


__all__ = ["CPUAdamW", "ShardedCPUAdamW", "LR_SCHEDULES", "OPTIMIZERS", "clip_and_step", "lr_scale", "make_optimizer",
           "set_hyperparameters", "set_lr"]
