"""Checkpoints and a full disk: before the run, a warning when the run folder's filesystem has
less room than a checkpoint needs (computable from the model's parameter count); when a save
fails for want of space, the partial folder goes and one line names the folder, the bytes
needed and free, and the last good checkpoint."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import sys

from distrl.config import TrainConfig

MB = 2**20


def size(n: float) -> str:
    """Bytes as people read them: 282 KB, 350 MB, 1.6 GB."""
    for unit, scale in (("GB", 2**30), ("MB", MB), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def parameter_count(model_path: str) -> int:
    """Parameters in a local model folder, read off its safetensors headers (no tensor is
    loaded); 0 when there are none to read (a hub id, .bin weights)."""
    if not os.path.isdir(model_path):
        return 0
    total = 0
    for name in os.listdir(model_path):
        if name.endswith(".safetensors"):
            with open(os.path.join(model_path, name), "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for key, entry in header.items():
                if key != "__metadata__":
                    count = 1
                    for dim in entry["shape"]:
                        count *= dim
                    total += count
    return total


def checkpoint_bytes(cfg: TrainConfig, model_path: str) -> int:
    """About what one checkpoint of this run writes, full fine-tuning: fp32 weights (the saved
    copy is fp32 masters in bf16/fp16) and two AdamW moments, plus fp32 masters in the optimizer
    state when the weights compute in bf16/fp16. LoRA saves adapters only: 0 (not checked)."""
    if cfg.model.lora_rank:
        return 0
    per_parameter = 4 + 8 + (4 if cfg.model.dtype in ("bfloat16", "float16") else 0)
    return parameter_count(model_path) * per_parameter


def free_bytes(folder: str) -> int:
    """Free bytes on the filesystem that holds (or will hold) `folder`."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def warn_if_short(folder: str, need: int) -> None:
    """Preflight: a checkpoint that cannot fit is said before the run, not after an hour of it."""
    free = free_bytes(folder)
    if need and free < need:
        print(f"warning: {folder} has {size(free)} free, a checkpoint of this run needs about "
              f"{size(need)}: saves will fail (free space, or point --output_dir elsewhere)",
              file=sys.stderr, flush=True)


def out_of_space(error: BaseException) -> bool:
    """Whether `error` (or the actor error wrapping it) is a full disk."""
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error)
