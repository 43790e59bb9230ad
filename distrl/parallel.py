"""The learner group's torch.distributed plumbing: joining the process group, summing gradients
over ranks, sharding the model with FSDP2, and checking that replicas agree.

Pure torch: it knows nothing about Ray (the rendezvous address comes from `launch/`) nor about
losses (the learner normalises its loss over the global batch before any of this runs, so a
SUM over ranks is exactly the single-learner gradient).
"""

from __future__ import annotations

import datetime
import socket
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

BUCKET_MB = 64.0  # gradients travel in flat buckets of about this size (one collective each)


def free_address() -> str:
    """host:port where this process can serve the group's rendezvous (rank 0 calls it)."""
    import ray

    host = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind(("", 0))
        return f"{host}:{s.getsockname()[1]}"


def join(address: str, rank: int, world_size: int, device: torch.device, timeout_s: float) -> None:
    """Join the group: nccl on GPU, gloo on CPU. `timeout_s` bounds every collective, so a rank
    whose peer died fails within it instead of waiting forever."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{address}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": torch.device("cuda", torch.cuda.current_device())}
                               if device.type == "cuda" else {}))


def cpu_group(device: torch.device, timeout_s: float) -> dist.ProcessGroup | None:
    """A group for collectives on CPU tensors (CPUAdamW's state): the default one with gloo, a
    gloo group beside nccl on GPU, with the same deadline. Every rank must call this at once."""
    if device.type != "cuda":
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


def broadcast_params(params: list[torch.Tensor]) -> None:
    """Rank 0's values into every rank's parameters (replicas start identical)."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (e.g. a non-finite loss: all must skip)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def max_over_ranks(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def buckets(nbytes: list[int], kinds: list[Any] | None = None) -> list[list[int]]:
    """Consecutive indices grouped into buckets of at most BUCKET_MB (a larger tensor goes alone),
    a new bucket wherever `kinds` (e.g. dtypes) changes: one flat collective per bucket."""
    limit, out, size = int(BUCKET_MB * 2**20), [], 0
    for i, n in enumerate(nbytes):
        if not out or size + n > limit or (kinds is not None and kinds[i] != kinds[out[-1][0]]):
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return out


def through_flat(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], Any],
                 write_back: bool = True) -> None:
    """Run `collective` on the tensors concatenated into one flat buffer (same dtype and device)
    and, with `write_back`, copy the result back into them."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    collective(flat)
    if write_back:
        offset = 0
        for t in tensors:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()


def sum_grads(params: list[torch.Tensor], group: dist.ProcessGroup | None = None) -> None:
    """Sum every parameter's gradient over ranks in place, in flat buckets (one collective per
    bucket, not per tensor). A missing gradient counts as zero: a rank whose rows all had
    advantage 0 skipped autograd, and it must still take part."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    for bucket in buckets([g.nbytes for g in grads], [g.dtype for g in grads]):
        through_flat([grads[i] for i in bucket], lambda flat: dist.all_reduce(flat, group=group))


def checksum(params: list[torch.Tensor]) -> tuple[float, float]:
    """(sum, sum of squares) of every weight in fp64: equal on replicas holding equal weights."""
    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) for p in params)
        squares = sum(float(p.detach().double().square().sum()) for p in params)
    return total, squares


def fsdp_shard(model: torch.nn.Module) -> None:
    """FSDP2: each decoder layer, then the rest, sharded over the group. Gradients are summed
    over ranks (the loss is already normalised over the global batch), not averaged."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module)
    fully_shard(model)
    for module in model.modules():  # each sharded module reduces its own gradients
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum


def full_tensors(named: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each (sharded) tensor gathered in full, one at a time, moved to CPU (every rank must iterate)."""
    for name, t in named.items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        yield name, full.detach().to("cpu")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly FSDP-sharded) tensor."""
    return t.to_local() if hasattr(t, "to_local") else t
