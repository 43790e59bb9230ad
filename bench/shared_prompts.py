"""The learner's forward and backward with each group's prompt run once, against once per row.

A group's 8 samples share their prompt, and a built-in prompt (40-90 tokens with the chat
template) is longer than most answers. The learner used to run every row as prompt + completion;
now each distinct prompt of a micro-batch runs once and its rows continue from its cached keys
and values (`distrl/batch.py`, `_shared_prompt_hidden`). Both sides here take the same rows:
completions the untrained model samples (temperature 0.7, 48 new tokens, 8 per prompt) on
`--prompts` training prompts per family, micro-batches planned as the learner plans them (by
length, at most `--rows` rows each), every row with a gradient (a step where every group has
signal). The sides alternate `--repeats` times; each side's median is reported.

    python bench/shared_prompts.py [--families arithmetic,word] [--prompts 4] [--rows 8,16] [--repeats 3]

Last line: `shared/per_row forward_backward_s = X.XX`: the learner's default (shared prompts, its
micro-batch rows) against the faster of the per-row sides, all families together.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from distrl.batch import collate, completion_logprobs, microbatch_limits, plan_microbatches  # noqa: E402
from distrl.config import ModelConfig  # noqa: E402
from distrl.data.prompts import encode_prompt  # noqa: E402
from distrl.data.tasks import task_splits  # noqa: E402
from distrl.generation import SamplingParams  # noqa: E402
from distrl.generation.hf import HFBackend  # noqa: E402
from distrl.models import load_policy, load_tokenizer, low_precision_cpu, resolve_model  # noqa: E402


def step_seconds(model, rollouts, plans, pad_id: int, shared: bool) -> float:
    """One forward and backward over all micro-batches, as the learner runs them."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for plan in plans:
        batch = collate([rollouts[i] for i in plan], pad_id)
        if not shared:
            batch = dataclasses.replace(batch, shared=None)
        (completion_logprobs(model, batch, temperature=0.7).sum() / 1000).backward()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--families", default="arithmetic,word")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--rows", default="8,16", help="micro-batch row caps to time each side at")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    model = load_policy(path, ModelConfig(model=path, dtype=args.dtype), torch.device("cpu"), seed=0)
    default_rows, tokens_cap = microbatch_limits(0, 0, low_precision_cpu(model, torch.device("cpu")), cpu=True)
    caps = sorted({int(c) for c in args.rows.split(",")} | {default_rows})
    sides = [(shared, cap) for shared in (False, True) for cap in caps]
    sampler = HFBackend(model.eval(), tokenizer, torch.device("cpu"))
    print(f"{args.model} ({next(model.parameters()).dtype}), {args.threads} threads, {args.prompts} prompts x 8 "
          f"samples per family; the learner's default: shared prompts, micro-batches of <= {default_rows} rows",
          flush=True)
    totals = {side: 0.0 for side in sides}
    table = []
    for family in args.families.split(","):
        prompts = [encode_prompt(tokenizer, r["prompt"]) for r in task_splits(family)["train"][: args.prompts]]
        with torch.no_grad():
            groups = sampler.generate(prompts, SamplingParams(n=8, max_new_tokens=48, temperature=0.7, seed=1), 0)
        rollouts = [r for g in groups for r in g]
        model.train()
        lengths = [len(r.prompt_ids) + len(r.completion_ids) for r in rollouts]
        plans = {cap: plan_microbatches(lengths, cap, tokens_cap) for cap in caps}
        step_seconds(model, rollouts, plans[caps[0]][:1], tokenizer.pad_token_id, True)  # first-call warm-up
        times = {side: [] for side in sides}
        for _ in range(args.repeats):
            for shared, cap in sides:
                times[(shared, cap)].append(step_seconds(model, rollouts, plans[cap], tokenizer.pad_token_id, shared))
        prompt_len = statistics.median(len(r.prompt_ids) for r in rollouts)
        answer_len = statistics.median(len(r.completion_ids) for r in rollouts)
        for side in sides:
            totals[side] += statistics.median(times[side])
            table.append((family, len(rollouts), prompt_len, answer_len, side, statistics.median(times[side])))
            print(f"  {family}: {'shared' if side[0] else 'per_row'} <= {side[1]} rows "
                  f"{statistics.median(times[side]):.2f} s", flush=True)
    print()
    print("| family | rows | prompt tokens p50 | completion tokens p50 | prompts | micro-batch rows | forward+backward s |")
    print("|---|---|---|---|---|---|---|")
    for family, n, p, c, (shared, cap), t in table:
        print(f"| {family} | {n} | {p:.0f} | {c:.0f} | {'once' if shared else 'per row'} | {cap} | {t:.2f} |")
    best_per_row = min(totals[(False, cap)] for cap in caps)
    print(f"shared/per_row forward_backward_s = {totals[(True, default_rows)] / best_per_row:.2f}")


if __name__ == "__main__":
    main()
