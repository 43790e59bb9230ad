"""Which dtype a run computes in, and why: `--dtype auto` resolved from what the hardware has.

bf16 where the device has bf16 matrix units (a CPU with AMX-BF16 or AVX512-BF16; CUDA with
LoRA), fp32 elsewhere. The trained weights always keep fp32 masters (CPUAdamW for full weights,
fp32 adapters for LoRA), so auto never picks bf16 where an optimizer would step bf16 weights
directly. The choice is made once, in the driver, and handed to every actor as a concrete dtype.
This module does not load models or build optimizers.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Default --max_logprob_gap per compute dtype. fp32: generators and learner agree to ~1e-5 (hf
# 3e-6, vLLM 1e-5 mean); a stale tied head (8e-3) or one missed default step (~1e-1) is far
# above 1e-3. bf16: incremental decoding and a full forward round differently, mean 4e-2 on
# SmolLM2 (hf and vLLM, full and LoRA; bench/logprob_gap.py), while one missed default full
# step moves log-probs by ~2e-1. LoRA steps move less than bf16 noise: that is caught by the
# weight fingerprint every generator checks on receipt, not here.
GAP_LIMITS = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.1}
# CPU flags (Linux /proc/cpuinfo names) of units that multiply bf16 matrices natively.
BF16_UNITS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_units(flags: set[str] | None = None) -> list[str]:
    """The bf16 matrix units among `flags` (this CPU's when None)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in BF16_UNITS if f in flags]


def choose_dtype(name: str, device: torch.device | str, lora: bool = False, masters: bool = True,
                 flags: set[str] | None = None) -> tuple[torch.dtype, str]:
    """(dtype, reason). `masters`: full fine-tuning keeps fp32 master weights (the optimizer is
    auto or cpu_adamw, no FSDP); without them auto keeps full weights in fp32. `flags`: the CPU's
    feature flags (read from this machine when None), so tests can inject a CPU."""
    if name != "auto":
        return DTYPES[name], "set by --dtype"
    if torch.device(device).type == "cuda":
        if lora:
            return torch.bfloat16, "CUDA with LoRA: the base computes in bf16, the adapter stays fp32"
        return torch.float32, "CUDA full fine-tuning keeps fp32 weights and fused AdamW on the GPU"
    units = cpu_bf16_units(flags)
    if not units:
        return torch.float32, "this CPU has no bf16 matrix units (amx_bf16/avx512_bf16)"
    if not lora and not masters:
        return torch.float32, (f"this CPU has {'/'.join(units)}, but this optimizer would step bf16 weights "
                               "without fp32 masters (use --optimizer auto or cpu_adamw)")
    kept = "fp32 LoRA adapters" if lora else "fp32 master weights in CPUAdamW"
    return torch.bfloat16, f"this CPU has {'/'.join(units)}: bf16 matrix work, {kept}"


def resolve_dtype(name: str, device: torch.device | str, lora: bool = False, masters: bool = True) -> torch.dtype:
    """`choose_dtype` without the reason."""
    return choose_dtype(name, device, lora, masters)[0]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
