"""The transformers backend: batched `generate` with KV cache and left padding, CPU or GPU.

Log-probs of the sampled tokens come from the raw logits `generate` already computed
(`output_logits=True`), so they cost no extra forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig

from distrl.algorithms import token_logprobs
from distrl.generation.base import Rollout, SamplingParams
from distrl.weights import PackedWeights, fingerprint, load_packed


class HFBackend:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        ids = model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        self.eos_ids = sorted({i for i in ids + [tokenizer.eos_token_id] if i is not None})
        self.pad_id = tokenizer.pad_token_id
        self.loaded_names: list[str] = []

    def load_weights(self, packed: PackedWeights) -> int:
        self.loaded_names = [slot.name for slot in packed.index]
        return load_packed(dict(self.model.named_parameters()), packed)

    def held_fingerprint(self) -> tuple[float, float]:
        """The fingerprint of the weights this model now holds, read back from its parameters,
        over the tensors the last version published."""
        params = dict(self.model.named_parameters())
        return fingerprint(params[name] for name in self.loaded_names)

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 policy_version: int) -> list[list[Rollout]]:
        """`sampling.n` rollouts for each prompt, grouped per prompt in input order."""
        if not prompts:
            return []
        was_training = self.model.training
        self.model.eval()
        ids, mask = self._left_pad(prompts)
        torch.manual_seed(sampling.seed)
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
            pad_token_id=self.pad_id, eos_token_id=self.eos_ids, output_logits=not sampling.greedy,
            return_dict_in_generate=True,
            **(dict(do_sample=False) if sampling.greedy else
               dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)))
        # transformers fills every field we leave unset from the model's own generation_config,
        # which may carry repetition penalties, min_p, beams...: samples would then come from
        # another distribution than the log-probs describe. Hide it while we generate.
        hf_model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        shipped, hf_model.generation_config = hf_model.generation_config, GenerationConfig(
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id)
        try:
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        finally:
            hf_model.generation_config = shipped
        self.model.train(was_training)
        completions = out.sequences[:, ids.shape[1]:].cpu()
        if sampling.greedy:
            logprobs = torch.zeros(completions.shape)
        else:
            logits = torch.stack(out.logits, dim=1)  # (B*n, T, V)
            logprobs = token_logprobs(logits, completions.to(logits.device), sampling.temperature).cpu()
        groups: list[list[Rollout]] = []
        for row in range(completions.shape[0]):
            prompt = prompts[row // sampling.n]
            tokens = completions[row].tolist()
            end = next((j for j, t in enumerate(tokens) if t in self.eos_ids), None)
            length = len(tokens) if end is None else end + 1  # the EOS token is kept
            rollout = Rollout(prompt_ids=list(prompt), completion_ids=tokens[:length],
                              logprobs=logprobs[row, :length].tolist(),
                              finish_reason="length" if end is None else "stop",
                              policy_version=policy_version)
            if row % sampling.n == 0:
                groups.append([])
            groups[-1].append(rollout)
        return groups
