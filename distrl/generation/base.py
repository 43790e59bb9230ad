"""The rollout type, sampling parameters, and backend selection."""

from __future__ import annotations

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
    """Why the vLLM backend cannot run in this process ("" when it can)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install -r requirements-gpu.txt on a GPU machine)"
    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU and none is visible here"
    return ""


def resolve_backend(name: str, verbose: bool = False) -> str:
    """The backend an actor will build for `--backend`: auto is vllm where vLLM and a GPU are
    present, else hf. An explicit vllm that cannot run is refused before any actor starts."""
    from distrl.config import ConfigError

    if name == "auto":
        why = vllm_missing()
        choice = "hf" if why else "vllm"
        if verbose:
            print(f"backend auto: {choice}" + (f" ({why})" if why else ""), flush=True)
        return choice
    if name == "vllm":
        why = vllm_missing()
        if why:
            raise ConfigError(f"--backend vllm is not available here: {why}; use --backend hf")
    return name
