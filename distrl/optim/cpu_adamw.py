"""CPUAdamW: AdamW whose fp32 master weights and moments live in CPU memory.

The model on the device may be bf16/fp16; the update is torch's fused AdamW kernel on the CPU
tensors (we do not hand-write Adam; the work here is the offload around it):

- gradients reach CPU accumulators either at step time (one copy per tensor) or, with
  `grad_offload=True`, as backward produces each one (post-accumulate-grad hooks): the copy is
  queued asynchronously and the device gradient freed, so the device never holds a full
  gradient buffer. Before the CPU step reads the accumulators we synchronise (LSRL's CPUAdamW
  skips this: a race);
- gradient accumulation over `accum_steps` calls of `step()`, global-norm clipping over the CPU
  gradients, weight decay, and an LR schedule hook;
- after the update the fp32 masters are copied back into the device parameters in their dtype;
  with `dither_seed` each master starts at a random point inside its bf16/fp16 value's rounding
  cell (`dither`), so that the updates that reach the rounded weights are unbiased from the first step;
- when a parameter already is an fp32 CPU tensor it is its own master: no second copy is made.

It does not own the model; the learner decides when to call it. Across a learner group each rank
runs one over its shard of the parameters (`distrl/optim/sharded.py`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch


def clip_coef(norm: float, max_norm: float) -> float:
    """The factor `clip_grad_norm_` would scale gradients by (1 when not clipping)."""
    return min(1.0, max_norm / (norm + 1e-6)) if max_norm > 0 else 1.0


def global_norm(grads: list[torch.Tensor]) -> float:
    """The L2 norm over all gradients (inf/nan when any value is). On CPU, one BLAS dot per fp32
    tensor: it reads memory ~25% faster than `get_total_norm`'s norm kernels, and this read is
    the only pass over the gradients besides the update's own. On a GPU, one synchronisation."""
    if any(hasattr(g, "to_local") for g in grads):  # FSDP shards: local squares summed over ranks
        import torch.distributed as dist

        local = [g.to_local() for g in grads]
        squares = torch.nn.utils.get_total_norm(local).double().square().reshape(1) if local else torch.zeros(1)
        dist.all_reduce(squares)
        return math.sqrt(float(squares))
    if any(g.device.type != "cpu" or g.dtype != torch.float32 for g in grads):
        return float(torch.nn.utils.get_total_norm(grads))
    return math.sqrt(sum(float(torch.dot(g.reshape(-1), g.reshape(-1))) for g in grads))


def dither(master: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> None:
    """Move each fp32 `master` to a uniformly random point of the `dtype` rounding cell it lies at
    the centre of: `master.to(dtype)` is unchanged, bit for bit, so the model computes with the
    same weights as before.

    Why: an update of lr 1e-5 moves a weight of 0.05 by a twentieth of its bf16 spacing. Masters
    copied from the rounded weights all start at a cell's centre, so no update reaches the weights
    until a master has drifted half a spacing, and then every weight pushed the same way jumps
    at once: the first steps change nothing, and afterwards only weights pushed consistently (or
    small ones) move. From a random point in the cell a weight flips with probability (update /
    spacing), so the rounded weights move by the update on average from the first step, as
    stochastic rounding would, without rounding noise that changes from step to step. On an SFT
    proxy (`bench/bf16_masters.py`: arithmetic answers, lr 1e-5, 16 rows a step) the bf16 weights'
    validation loss after 10 updates was 0.52 from centred masters, 0.31 from dithered ones and
    0.31 in fp32."""
    with torch.no_grad():
        mantissa, exponent = torch.frexp(master)
        spacing = torch.ldexp(torch.full_like(master, torch.finfo(dtype).eps), exponent - 1)
        spacing = torch.where(mantissa.abs() == 0.5, spacing / 2, spacing)  # a power of two: half below
        moved = master + (torch.rand(master.shape, generator=generator) - 0.5) * spacing
        # A tie at the edge, zeros, subnormals and the extremes keep their value where it would round away.
        master.copy_(torch.where(moved.to(dtype) == master.to(dtype), moved, master))


def scaled_step(optimizer: torch.optim.Optimizer, divisor: float) -> None:
    """`optimizer.step()` on gradients divided by `divisor`. With torch's fused AdamW/Adam the
    kernel unscales as it reads (as under AMP, writing the unscaled gradients back), so no
    separate pass over the gradients is needed; other optimizers get a foreach division."""
    if divisor == 1.0:
        optimizer.step()
        return
    fused = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and optimizer.defaults.get("fused")
    if fused:
        device = optimizer.param_groups[0]["params"][0].device
        optimizer.grad_scale = torch.tensor(divisor, dtype=torch.float32, device=device)
        try:
            optimizer.step()
        finally:
            optimizer.grad_scale = None
        return
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    torch._foreach_div_(grads, divisor)
    optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CPUAdamW:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 max_grad_norm: float = 0.0, accum_steps: int = 1, grad_offload: bool = False,
                 lr_schedule: Callable[[int], float] | None = None,
                 master_copy: bool | None = None,
                 norm_reduce: Callable[[float], float] | None = None, dither_seed: int | None = None) -> None:
        """`master_copy=None` copies only parameters that are not fp32 CPU tensors already;
        True forces separate masters (what a device model gets), False forbids them. Masters of
        bf16/fp16 parameters are dithered in their rounding cell (`dither`) with `dither_seed`
        (`--dither_masters`); None keeps them at the cell's centre (the rounded value).
        `norm_reduce` maps this optimizer's squared gradient norm to the global one (a shard
        of a learner group sums it over ranks), so every shard clips by the same factor."""
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        self.params = [p for p in params if p.requires_grad]
        self.base_lr, self.max_grad_norm, self.accum_steps = lr, max_grad_norm, accum_steps
        self.lr_schedule, self.grad_offload, self.norm_reduce = lr_schedule, grad_offload, norm_reduce
        self.num_updates, self.micro_steps = 0, 0
        self.pin = pin = torch.cuda.is_available()
        self.masters: list[torch.Tensor] = []
        generator = torch.Generator().manual_seed(dither_seed) if dither_seed is not None else None
        for p in self.params:
            own = p.device.type == "cpu" and p.dtype == torch.float32
            if master_copy is False and not own:
                raise ValueError("master_copy=False needs fp32 CPU parameters")
            if own and not master_copy:
                self.masters.append(p)  # the parameter is its own master: no copy
                continue
            master = torch.empty(p.shape, dtype=torch.float32, pin_memory=pin)
            master.copy_(p.detach())
            if generator is not None and p.dtype in (torch.bfloat16, torch.float16):
                dither(master, p.dtype, generator)
            master.requires_grad_(True)
            master.grad = torch.zeros(p.shape, dtype=torch.float32, pin_memory=pin)
            self.masters.append(master)
        self.separate = [m is not p for m, p in zip(self.masters, self.params)]
        self.inner = torch.optim.AdamW(self.masters, lr=lr, betas=betas, eps=eps,
                                       weight_decay=weight_decay, fused=True)
        self._staging: dict[int, torch.Tensor] = {}
        self._events: dict[int, torch.cuda.Event] = {}
        self._pending: set[int] = set()
        self._hooks = []
        self.offloaded_bytes = 0  # gradient bytes the hooks moved off the parameters (grad_offload)
        if grad_offload:
            for i, p in enumerate(self.params):
                if self.separate[i]:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(i)))

    # -- gradients --------------------------------------------------------------------
    def _make_hook(self, i: int) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            self._drain(i)  # the previous micro-batch's copy of this tensor must land first
            stage = self._staging.get(i)
            if stage is None:  # pinned, so the device-to-host copy really runs asynchronously
                stage = self._staging[i] = torch.empty(param.shape, dtype=torch.float32, pin_memory=self.pin)
            stage.copy_(param.grad, non_blocking=True)
            self.offloaded_bytes += param.grad.numel() * param.grad.element_size()
            if param.device.type == "cuda":
                self._events[i] = torch.cuda.Event()
                self._events[i].record()
            self._pending.add(i)
            param.grad = None  # the device never holds more than the gradients in flight

        return hook

    def _drain(self, i: int) -> None:
        if i in self._pending:
            event = self._events.pop(i, None)
            if event is not None:  # wait for this tensor's copy only, not the whole device
                event.synchronize()
            self.masters[i].grad.add_(self._staging[i])
            self._pending.discard(i)

    def _gather_grads(self) -> None:
        """Bring every gradient into its CPU accumulator (synchronised) and free device grads."""
        for i, p in enumerate(self.params):
            if self.separate[i] and p.grad is not None:  # not taken by a hook: copy it now
                self.masters[i].grad.add_(p.grad.to("cpu", torch.float32))
                p.grad = None
            elif not self.separate[i] and p.grad is None:  # own master: missing = zero gradient
                p.grad = torch.zeros_like(p)
        for i in sorted(self._pending):
            self._drain(i)

    # -- the update -------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.inner.param_groups[0]["lr"]

    def step(self) -> float | None:
        """Count one micro-step; every `accum_steps`-th call updates and returns the grad norm
        (before clipping; inf/nan means the update was skipped), otherwise None."""
        self.micro_steps += 1
        self._gather_grads()
        if self.micro_steps % self.accum_steps:
            return None
        grads = [m.grad for m in self.masters if m.grad is not None]
        norm = global_norm(grads)
        if self.norm_reduce is not None:
            norm = math.sqrt(self.norm_reduce(norm * norm))
        norm /= self.accum_steps
        if math.isfinite(norm):
            if self.lr_schedule is not None:
                for group in self.inner.param_groups:
                    group["lr"] = self.base_lr * self.lr_schedule(self.num_updates)
            # Averaging and clipping ride inside the fused kernel: it divides every gradient by
            # `grad_scale` as it reads it, which saves a separate pass over the gradients.
            scaled_step(self.inner, self.accum_steps / clip_coef(norm, self.max_grad_norm))
            self.num_updates += 1
            self._copy_back()
        self.zero_grad()
        return norm

    def _copy_back(self) -> None:
        devices = set()
        with torch.no_grad():
            for p, m, sep in zip(self.params, self.masters, self.separate):
                if sep:
                    p.copy_(m, non_blocking=True)
                    devices.add(p.device)
        for d in devices:  # the next forward must see the new weights
            _sync(d)

    def zero_grad(self) -> None:
        # Copies still in flight (gradient offload) land first, or they would add stale (possibly
        # non-finite) gradients to the next step after a skipped one.
        for i in sorted(self._pending):
            self._drain(i)
        for p, m, sep in zip(self.params, self.masters, self.separate):
            if sep:
                m.grad.zero_()
                p.grad = None
            else:
                p.grad = None

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "num_updates": self.num_updates,
                "micro_steps": self.micro_steps,
                # Every master, own ones too: the moments are only valid with these weights.
                "masters": [m.detach().clone() for m in self.masters]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.num_updates, self.micro_steps = state["num_updates"], state["micro_steps"]
        with torch.no_grad():
            for m, saved in zip(self.masters, state["masters"]):
                m.copy_(saved)
        self._copy_back()
