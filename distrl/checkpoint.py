"""Checkpoints: written atomically, found again, and read without ever unpickling.

A checkpoint is a folder `checkpoints/step-000012/` holding only safetensors and JSON files:
the learner's trainable weights, its optimizer state (tensors in safetensors, the rest in JSON)
and RNG state, and the driver's `trainer_state.json` (step, policy version, data position,
config). It is written under a temporary name and renamed when complete; the `latest` pointer is
replaced after that, so a run killed mid-write leaves the previous checkpoint and pointer intact.
Who writes which file is the actors' business; this module only knows folders and formats.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

import torch

STEP_DIR = re.compile(r"^step-(\d{6,})$")
TRAINER_STATE = "trainer_state.json"
SAFE_SUFFIXES = (".safetensors", ".json")


class CheckpointError(ValueError):
    """A checkpoint that cannot (or must not) be loaded."""


@dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int

    @property
    def run_dir(self) -> str:
        """The run folder the checkpoint belongs to (`run/checkpoints/step-N` -> `run`)."""
        return os.path.dirname(os.path.dirname(self.path))

    def trainer_state(self) -> dict[str, Any]:
        with open(os.path.join(self.path, TRAINER_STATE)) as f:
            return json.load(f)


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def begin(root: str, step: int) -> str:
    """A fresh temporary folder for the checkpoint of `step` (leftovers of a killed write go)."""
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        if name.startswith(".tmp-"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    tmp = os.path.join(root, f".tmp-{step_name(step)}")
    os.makedirs(tmp)
    return tmp


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(root: str, step: int, keep: int) -> Checkpoint:
    """Make the temporary folder of `step` the checkpoint, then point `latest` at it, then drop
    all but the newest `keep` checkpoints (0 keeps all). Each stage is one atomic rename."""
    tmp, final = os.path.join(root, f".tmp-{step_name(step)}"), os.path.join(root, step_name(step))
    for name in os.listdir(tmp):
        with open(os.path.join(tmp, name), "rb") as f:
            os.fsync(f.fileno())
    if os.path.exists(final):  # a resumed run saving the same step again
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer = os.path.join(root, ".latest.tmp")
    with open(pointer, "w") as f:
        f.write(step_name(step) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer, os.path.join(root, "latest"))
    _fsync_dir(root)
    if keep > 0:
        for old in complete(root)[:-keep]:
            shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def complete(root: str) -> list[Checkpoint]:
    """The complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = STEP_DIR.match(name)
        if match and os.path.isfile(os.path.join(root, name, TRAINER_STATE)):
            found.append(Checkpoint(os.path.join(root, name), int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest(root: str) -> Checkpoint | None:
    """What `latest` points at, or the newest complete checkpoint when the pointer is missing."""
    pointer = os.path.join(root, "latest")
    if os.path.isfile(pointer):
        with open(pointer) as f:
            name = f.read().strip()
        match = STEP_DIR.match(name)
        if match and os.path.isfile(os.path.join(root, name, TRAINER_STATE)):
            return Checkpoint(os.path.join(root, name), int(match.group(1)))
    found = complete(root)
    return found[-1] if found else None


def resolve(spec: str, output_dir: str, run_name: str) -> Checkpoint | None:
    """`--resume auto`: the newest checkpoint of run `run_name` (or, without one, of the newest
    run under `output_dir` that has one); None when there is none. `--resume PATH`: a checkpoint
    folder, a run's `checkpoints/` folder or a run folder; missing is an error."""
    if spec == "auto":
        if run_name:
            return latest(os.path.join(output_dir, run_name, "checkpoints"))
        runs = [os.path.join(output_dir, d) for d in os.listdir(output_dir)] if os.path.isdir(output_dir) else []
        candidates = [c for c in (latest(os.path.join(r, "checkpoints")) for r in runs) if c is not None]
        return max(candidates, key=lambda c: os.path.getmtime(c.path), default=None)
    path = os.path.abspath(spec)
    if STEP_DIR.match(os.path.basename(path)):
        if not os.path.isfile(os.path.join(path, TRAINER_STATE)):
            raise CheckpointError(f"--resume {spec}: not a complete checkpoint (no {TRAINER_STATE})")
        return Checkpoint(path, int(STEP_DIR.match(os.path.basename(path)).group(1)))
    for root in (path, os.path.join(path, "checkpoints")):
        found = latest(root)
        if found is not None:
            return found
    raise CheckpointError(f"--resume {spec}: no complete checkpoint there; give a "
                          "checkpoints/step-N folder, a run folder, or --resume auto")


def check_safe(path: str) -> None:
    """Refuse a checkpoint holding anything but safetensors and JSON: a pickle payload (.pt,
    .bin, .pkl) can run arbitrary code when loaded, so distrl never opens one."""
    for name in sorted(os.listdir(path)):
        if not name.endswith(SAFE_SUFFIXES) or not os.path.isfile(os.path.join(path, name)):
            raise CheckpointError(f"checkpoint {path} holds '{name}', which is not safetensors or JSON "
                                  "(a pickle payload can run code when loaded): distrl refuses to read "
                                  "it; remove it or resume from a checkpoint distrl wrote")


# -- nested state (optimizer state_dicts) as safetensors + JSON ------------------------------
def _split(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_split(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {key}")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
    return obj


def save_state(folder: str, name: str, state: Any) -> None:
    """Write a nested state (dicts, lists, tensors, numbers) as `name.safetensors` + `name.json`."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, name, tensors)
    save_file(tensors, os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(skeleton, f)


def load_state(folder: str, name: str) -> Any:
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.json")) as f:
        return _join(json.load(f), tensors)
