"""Generation backends behind one small interface, shared by generation actors and the learner.

`generate(prompts, sampling, policy_version) -> list[list[Rollout]]` and `load_weights(packed)`.
`hf` (transformers) runs on CPU and GPU. vLLM is imported lazily and only where selected.
"""

from distrl.generation.base import Rollout, SamplingParams, WeightsMissing, resolve_backend

__all__ = ["Rollout", "SamplingParams", "WeightsMissing", "resolve_backend"]
