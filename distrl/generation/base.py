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


def resolve_backend(name: str) -> str:
    """The backend an actor will build for `--backend`; refuse choices that cannot run."""
    from distrl.config import ConfigError

    if name == "auto":
        # Until the vLLM engine integration lands, auto means hf everywhere.
        return "hf"
    if name == "vllm":
        # The vLLM engine integration is not part of this version; refuse before any actor starts.
        raise ConfigError("--backend vllm is not available in this version of distrl; use "
                          "--backend hf (transformers, CPU or GPU)")
    return name
