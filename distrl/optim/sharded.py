"""CPUAdamW across a learner group: each parameter has one owner rank that holds its fp32 master,
its moments and its update, on that rank's host.

One `step()`: every gradient is summed onto its owner (one reduce per owner, a flat CPU buffer),
each owner runs CPUAdamW on what it owns with the global gradient norm, then each owner
broadcasts its updated parameters to the other ranks. Two ownership maps:

- `zero1`: parameters spread over ranks by size (ZeRO stage 1): host memory and update work per
  rank are 1/N of the state;
- `rank0`: rank 0 owns everything (LSRL's DistributedCPUAdamW): one host holds the whole state.

`bench/learner_scaling.py` times both; the learner uses `zero1` (see the README for the numbers).
It does not compute the loss or decide when to step.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.distributed as dist

from distrl import parallel
from distrl.optim.cpu_adamw import CPUAdamW

SHARDINGS = ("zero1", "rank0")


def owners(sizes: list[int], world_size: int, sharding: str) -> list[int]:
    """The owner rank of each parameter: `zero1` balances element counts (largest first)."""
    if sharding == "rank0":
        return [0] * len(sizes)
    if sharding != "zero1":
        raise KeyError(f"unknown sharding '{sharding}'; valid: {', '.join(SHARDINGS)}")
    load, out = [0] * world_size, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[i], load[r] = r, load[r] + sizes[i]
    return out


class ShardedCPUAdamW:
    def __init__(self, params: list[torch.nn.Parameter], rank: int, world_size: int, sharding: str = "zero1",
                 cpu_group: dist.ProcessGroup | None = None, **cpu_adamw: Any) -> None:
        """`cpu_group`: the group for CPU tensors (gloo); None = the default group."""
        self.params = [p for p in params if p.requires_grad]
        self.rank, self.world_size, self.cpu_group = rank, world_size, cpu_group
        self.comm_s = 0.0  # seconds the last step spent in reduce + broadcast (the bench reads it)
        self.owner = owners([p.numel() for p in self.params], world_size, sharding)
        owned = [p for p, o in zip(self.params, self.owner) if o == rank]
        self.local = CPUAdamW(owned, norm_reduce=self._sum_over_ranks, **cpu_adamw) if owned else None
        self._grad_of = {}  # id(param) -> its CPU fp32 gradient accumulator (owned params)
        if self.local is not None:
            for p, m in zip(self.local.params, self.local.masters):
                self._grad_of[id(p)] = m

    def _sum_over_ranks(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.cpu_group)
        return float(t.item())

    def _indices(self, r: int) -> list[int]:
        return [i for i, o in enumerate(self.owner) if o == r]

    def _reduce_grads(self) -> None:
        """Each rank's gradients, summed onto their owners' CPU accumulators, in flat buckets
        (one reduce each), so no rank copies more than a bucket at a time."""
        if self.local is not None:
            self.local._gather_grads()  # device grads (and offloaded copies) into the masters
        for r in range(self.world_size):
            mine = self._indices(r)
            for bucket in parallel.buckets([4 * self.params[i].numel() for i in mine]):  # as fp32
                params = [self.params[mine[j]] for j in bucket]
                grads = [self._owned_grad(p) for p in params] if r == self.rank else [self._cpu_grad(p) for p in params]
                parallel.through_flat(grads, lambda flat, r=r: dist.reduce(flat, dst=r, group=self.cpu_group),
                                      write_back=r == self.rank)

    def _owned_grad(self, p: torch.Tensor) -> torch.Tensor:
        master = self._grad_of[id(p)]
        if master.grad is None:  # the parameter is its own master and had no backward
            master.grad = torch.zeros_like(master)
        return master.grad

    @staticmethod
    def _cpu_grad(p: torch.Tensor) -> torch.Tensor:
        grad = p.grad
        p.grad = None  # not ours to keep: its owner accumulates it
        if grad is None:
            return torch.zeros(p.shape, dtype=torch.float32)
        return grad.to("cpu", torch.float32)

    def _broadcast_params(self) -> None:
        """Each owner's updated parameters to every rank (in the parameters' own dtype/device)."""
        with torch.no_grad():
            for r in range(self.world_size):
                mine = [self.params[i] for i in self._indices(r)]
                for bucket in parallel.buckets([p.nbytes for p in mine], [p.dtype for p in mine]):
                    parallel.through_flat([mine[j] for j in bucket], lambda flat, r=r: dist.broadcast(flat, src=r),
                                          write_back=r != self.rank)

    def step(self) -> float:
        """Reduce, update the owned shard, broadcast; the global gradient norm before clipping
        (non-finite: no rank updated)."""
        start = time.perf_counter()
        self._reduce_grads()
        self.comm_s = time.perf_counter() - start
        if self.local is not None:
            norm = self.local.step()
        else:  # owns nothing, still takes part in the norm
            norm = math.sqrt(self._sum_over_ranks(0.0))
        if math.isfinite(norm):
            start = time.perf_counter()
            self._broadcast_params()
            self.comm_s += time.perf_counter() - start
        return norm

    def zero_grad(self) -> None:
        if self.local is not None:
            self.local.zero_grad()
        for p in self.params:
            p.grad = None

    @property
    def lr(self) -> float:
        return self.local.lr if self.local is not None else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard only (each rank checkpoints its own)."""
        return {"owner": self.owner, "local": self.local.state_dict() if self.local is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["owner"]) != self.owner:
            raise ValueError("optimizer shard was written with another parameter ownership "
                             "(another --num_learners?)")
        if self.local is not None:
            self.local.load_state_dict(state["local"])
