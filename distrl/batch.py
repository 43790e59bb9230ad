"""Rollouts -> padded tensors, and the log-probs a model gives to exactly the sampled tokens.

Sequences are `prompt_ids + completion_ids` (token ids as sampled, never re-tokenized), right
padded. The completion tensors are `(B, Tc)` aligned with `Rollout.logprobs`; `completion_mask`
is 1 on every sampled token (EOS included) and 0 on padding, so prompt tokens never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from distrl.algorithms.logprobs import token_entropy, token_logprobs
from distrl.generation.base import Rollout


@dataclass
class SharedPrompts:
    """The same rows laid out so each distinct prompt runs once: its tokens but the last
    (`prefix_*`, one row per distinct prompt, right padded), then every row's last prompt token
    and completion (`suffix_*`, right padded) attending to its prompt's cached keys and values."""
    prefix_ids: torch.Tensor       # (U, Lp)
    prefix_mask: torch.Tensor      # (U, Lp)
    rows: torch.Tensor             # (B,) which prefix each row continues
    suffix_ids: torch.Tensor       # (B, 1 + Tc) last prompt token + completion
    suffix_mask: torch.Tensor      # (B, 1 + Tc)
    suffix_positions: torch.Tensor  # (B, 1 + Tc) from len(prompt) - 1 on


@dataclass
class Collated:
    input_ids: torch.Tensor        # (B, L) prompt + completion, right padded
    attention_mask: torch.Tensor   # (B, L)
    positions: torch.Tensor        # (B, Tc) index into the (B, L-1) next-token predictions
    completion_ids: torch.Tensor   # (B, Tc)
    completion_mask: torch.Tensor  # (B, Tc) 1 on sampled tokens, 0 on padding
    old_logprobs: torch.Tensor     # (B, Tc) generation-time log-probs
    shared: SharedPrompts | None = None  # where rows share prompts (a group's samples)


def collate(rollouts: Sequence[Rollout], pad_id: int, share_prompts: bool = True) -> Collated:
    n = len(rollouts)
    seq_len = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    comp_len = max(1, max(len(r.completion_ids) for r in rollouts))
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, seq_len), dtype=torch.long)
    positions = torch.zeros((n, comp_len), dtype=torch.long)
    completion_ids = torch.full((n, comp_len), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((n, comp_len))
    old_logprobs = torch.zeros((n, comp_len))
    for i, r in enumerate(rollouts):
        p, c = len(r.prompt_ids), len(r.completion_ids)
        input_ids[i, : p + c] = torch.tensor(r.prompt_ids + r.completion_ids, dtype=torch.long)
        attention_mask[i, : p + c] = 1
        if c:
            # Logits at position t predict token t + 1: completion token j sits at p + j.
            positions[i, :c] = torch.arange(p - 1, p - 1 + c)
            completion_ids[i, :c] = torch.tensor(r.completion_ids, dtype=torch.long)
            completion_mask[i, :c] = 1.0
            old_logprobs[i, :c] = torch.tensor(r.logprobs, dtype=torch.float32)
    return Collated(input_ids, attention_mask, positions, completion_ids, completion_mask, old_logprobs,
                    _shared_prompts(rollouts, pad_id, comp_len) if share_prompts else None)


def _shared_prompts(rollouts: Sequence[Rollout], pad_id: int, comp_len: int) -> SharedPrompts | None:
    """The shared-prompt layout of these rows, or None where no two rows share a prompt."""
    distinct: dict[tuple[int, ...], int] = {}
    rows = [distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in rollouts]
    if len(distinct) == len(rollouts) or any(len(p) < 2 for p in distinct):
        return None
    prefix_len = max(len(p) for p in distinct) - 1
    prefix_ids = torch.full((len(distinct), prefix_len), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(distinct), prefix_len), dtype=torch.long)
    for u, p in enumerate(distinct):
        prefix_ids[u, : len(p) - 1] = torch.tensor(p[:-1], dtype=torch.long)
        prefix_mask[u, : len(p) - 1] = 1
    suffix_ids = torch.full((len(rollouts), 1 + comp_len), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(rollouts), 1 + comp_len), dtype=torch.long)
    suffix_positions = torch.zeros((len(rollouts), 1 + comp_len), dtype=torch.long)
    for i, r in enumerate(rollouts):
        tokens = r.prompt_ids[-1:] + r.completion_ids
        suffix_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        suffix_mask[i, : len(tokens)] = 1
        # Padding repeats the row's last position: none beyond what the row itself reaches.
        first = len(r.prompt_ids) - 1
        suffix_positions[i] = torch.arange(first, first + 1 + comp_len).clamp(max=first + len(tokens) - 1)
    return SharedPrompts(prefix_ids, prefix_mask, torch.tensor(rows), suffix_ids, suffix_mask, suffix_positions)


def microbatch_limits(rows: int, tokens: int, low_precision_cpu: bool, cpu: bool = False) -> tuple[int, int]:
    """(rows, padded tokens) per micro-batch from --micro_batch_size / --max_tokens_per_microbatch,
    0 rows being auto. bf16 matmuls on a CPU's AMX tiles pay on long matrices: a default step's
    forward and backward (64 x ~56 tokens of SmolLM2) took 18% less time in micro-batches of 32
    than of 8, for 0.9 GB more peak memory; the 2048-token cap bounds that for long prompts and
    larger models. In fp32 on CPU 16: with each distinct prompt of a micro-batch run once, 16 rows
    hold fewer copies of each prompt than 8 (bench/shared_prompts.py); 8 elsewhere (GPU)."""
    if rows:
        return rows, tokens
    if low_precision_cpu:
        return 32, tokens or 2048
    return (16 if cpu else 8), tokens


def plan_microbatches(lengths: Sequence[int], max_rows: int, max_tokens: int = 0,
                      needs_grad: Sequence[bool] | None = None) -> list[list[int]]:
    """Group row indices into micro-batches, shortest rows first, so rows of similar length share
    one (less padding). Each holds at most `max_rows` rows and, with `max_tokens > 0`, at most
    `max_tokens` padded tokens (rows x longest row); a row longer than the budget goes alone.

    With `needs_grad` (one flag per row), rows with a gradient and rows without never share a
    micro-batch, the former planned first: a micro-batch of rows without one runs no backward,
    so a step where one group in eight has signal pays a backward for those rows only."""
    if needs_grad is not None:
        split = [[i for i in range(len(lengths)) if bool(needs_grad[i]) == want] for want in (True, False)]
        return [[part[j] for j in plan] for part in split
                for plan in plan_microbatches([lengths[i] for i in part], max_rows, max_tokens)]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    plans: list[list[int]] = []
    current: list[int] = []
    for i in order:
        padded = (len(current) + 1) * lengths[i]  # sorted: row i is the longest so far
        if current and (len(current) >= max_rows or (max_tokens and padded > max_tokens)):
            plans.append(current)
            current = []
        current.append(i)
    if current:
        plans.append(current)
    return plans


def gap_rows(samplers: Sequence[object], per_sampler: int) -> list[int]:
    """Which rows without a gradient to forward for logprob_gap alone: at most `per_sampler` of
    each sampler's rows (`samplers[i]` names who sampled row i), spread evenly over them, so over
    its groups; 0 = every row. Indices into `samplers`, ascending."""
    if not per_sampler:
        return list(range(len(samplers)))
    rows: dict[object, list[int]] = {}
    for i, who in enumerate(samplers):
        rows.setdefault(who, []).append(i)
    keep = [mine[int((j + 0.5) * len(mine) / per_sampler)] if len(mine) > per_sampler else mine[j]
            for mine in rows.values() for j in range(min(per_sampler, len(mine)))]
    return sorted(keep)


def _split_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder body, output head) when logits are exactly `head(body(...))`, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    # Models that rescale or soft-cap their logits after the head are left to the plain path.
    if config is None or getattr(config, "final_logit_softcapping", None) or hasattr(config, "logit_scale"):
        return None
    try:
        body, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return (body, head) if body is not None and isinstance(head, torch.nn.Linear) else None


def _can_share_prompts(body: torch.nn.Module) -> bool:
    """Whether `_shared_prompt_hidden` computes what one pass per row computes for this decoder:
    a transformers model (its cache and positions are the library's) with full attention in every
    layer and plain RoPE. A sliding window or attention chunks count distances in cache slots,
    which the padding between a short prompt and its suffix would stretch; dynamic and longrope
    RoPE pick their frequencies from the longest position of each call; recurrent layers keep
    state the cache does not select. Gradient checkpointing turns the cache off."""
    config = getattr(body, "config", None)
    if config is None or not type(body).__module__.startswith("transformers.models."):
        return False
    if getattr(body, "gradient_checkpointing", False):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        full = all(t == "full_attention" for t in layer_types)
    else:
        full = getattr(config, "sliding_window", None) is None or getattr(config, "use_sliding_window", None) is False
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_types = {v.get("rope_type") for v in rope.values() if isinstance(v, dict)} | {rope.get("rope_type")}
    return (full and not getattr(config, "attention_chunk_size", None)
            and not rope_types & {"dynamic", "longrope"})


def _sharded(model: torch.nn.Module) -> bool:
    """FSDP2: only the whole model's forward gathers the parameters outside the decoder layers."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def completion_logprobs(model: torch.nn.Module, batch: Collated, temperature: float,
                        chunk_size: int = 0, with_entropy: bool = False) -> torch.Tensor:
    """`(B, Tc)` log-probs of the completion tokens under `model` (differentiable; 0 on padding).
    With `with_entropy`, `(2, B, Tc)`: the log-probs and the policy's entropy at each position,
    read off the same logits (no second forward).

    With a model whose logits are a plain linear head over the last hidden states, the head runs
    only on completion positions; with `chunk_size > 0`, `chunk_size` of them at a time, each
    chunk recomputed in backward: the full `(B, Tc, vocab)` logits never exist at once. Rows that
    share a prompt (`batch.shared`: a group's samples) run that prompt once (`_shared_prompt_hidden`).
    """
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    # Explicit positions 0..L-1 from the first prompt token: the same positions the generator
    # gave these tokens (its left padding is skipped by the attention mask).
    position_ids = torch.arange(input_ids.shape[1], device=device).expand_as(input_ids)
    inputs = dict(input_ids=input_ids, attention_mask=batch.attention_mask.to(device),
                  position_ids=position_ids, use_cache=False)
    index = batch.positions.to(device)
    tokens = batch.completion_ids.to(device)
    # The head runs on completion positions only: prompt positions' logits (most of a row, over
    # the whole vocabulary) are never needed. chunk_size 0 = all of them in one piece.
    split = None if _sharded(model) and not chunk_size else _split_head(model)
    if split is None:
        logits = model(**inputs).logits
        picked = torch.gather(logits[:, :-1], 1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        logprobs = token_logprobs(picked, tokens, temperature)
        if with_entropy:
            logprobs = torch.stack([logprobs, token_entropy(picked, temperature)])
    else:
        body, head = split
        if batch.shared is not None and not _sharded(model) and _can_share_prompts(body):
            # Suffix position j predicts completion token j.
            hidden = _shared_prompt_hidden(body, batch.shared, device)[:, : tokens.shape[1]]
        else:
            hidden = body(**inputs).last_hidden_state
            hidden = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

        def chunk_logprobs(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            logits = head(h)
            lp = token_logprobs(logits, t, temperature)
            return torch.stack([lp, token_entropy(logits, temperature)]) if with_entropy else lp

        parts = []
        step = chunk_size or max(hidden.shape[1], 1)
        for s in range(0, hidden.shape[1], step):
            h, t = hidden[:, s: s + step], tokens[:, s: s + step]
            if torch.is_grad_enabled() and chunk_size:
                parts.append(checkpoint(chunk_logprobs, h, t, use_reentrant=False))
            else:
                parts.append(chunk_logprobs(h, t))
        logprobs = torch.cat(parts, dim=-1)
    return logprobs * batch.completion_mask.to(device)


def _shared_prompt_hidden(body: torch.nn.Module, shared: SharedPrompts, device: torch.device) -> torch.Tensor:
    """`(B, 1 + Tc, H)` last hidden states of the suffixes, each distinct prompt run once: its
    keys and values are cached (differentiably: the backward reaches the prompt's forward once
    with every row's gradient) and selected for each row that continues it. The right padding
    between a prompt and a row's suffix is masked; positions continue the prompt's, so the
    numbers are those of the whole sequence run as one row."""
    from transformers import DynamicCache

    cache = DynamicCache()
    prefix_mask = shared.prefix_mask.to(device)
    body(input_ids=shared.prefix_ids.to(device), attention_mask=prefix_mask,
         position_ids=torch.arange(prefix_mask.shape[1], device=device).expand_as(prefix_mask),
         past_key_values=cache, use_cache=True)
    if cache.get_seq_length() != prefix_mask.shape[1]:
        raise RuntimeError(f"{type(body).__name__} did not fill the key/value cache for its prompts")
    rows = shared.rows.to(device)
    cache.batch_select_indices(rows)
    mask = torch.cat([prefix_mask[rows], shared.suffix_mask.to(device)], dim=1)
    return body(input_ids=shared.suffix_ids.to(device), attention_mask=mask,
                position_ids=shared.suffix_positions.to(device), past_key_values=cache,
                use_cache=True).last_hidden_state


def split_by_tokens(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Split row indices over `parts` learner ranks so each gets about the same number of tokens
    (longest rows first, each to the rank with the fewest tokens so far): a rank's step time
    follows its tokens, not its rows. Each part keeps its rows in their original order."""
    loads, out = [0] * parts, [[] for _ in range(parts)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(parts), key=lambda r: (loads[r], len(out[r]), r))
        out[r].append(i)
        loads[r] += lengths[i]
    return [sorted(p) for p in out]
