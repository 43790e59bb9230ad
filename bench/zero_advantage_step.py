"""Learner step time when every advantage is 0 (no gradient to take), when one group in eight
has signal, and when every group has.

Early in a run on a hard task most groups score all-equal rewards, so every advantage is 0.
With no KL term such a row has exactly zero gradient; the learner runs micro-batches of such rows
without autograd (still measuring logprob_gap) instead of a full forward + backward, and keeps
them apart from rows with a gradient. This runs the embedded SmolLM2-135M's learner (the default
flags: bf16 on a CPU with AMX, micro-batches of 32) on the same rollouts of a default step (8
prompts x 8 samples, 48 tokens), side by side: all advantages 0; one group with signal, planned
as now (its rows in micro-batches of their own) and as before (micro-batches by length only, so
its rows share them with rows without signal, and every micro-batch runs a backward); every group
with signal. Those four forward every row (`--gap_rows 0`). Rows without a gradient are
forwarded only to measure logprob_gap, so with `--gap_rows 8` (the default until 2026-12-07)
the learner forwards 8 of them per sampler; the rows are labelled as a step's samplers (the
learner's 2 prompts, 3 for each of two generators), and two more cases run with that setting:
all advantages 0, and one group with signal; two more with the default `--gap_rows 2`. Medians
of `--repeats`; the ratios of `--gap_rows 8` to 2 (all zero, one group), the ratio of the
all-zero cases, then the ratio of the one-group cases last.

    python bench/zero_advantage_step.py [--groups 8] [--group 8] [--repeats 3]

Second-to-last line: `all zero: every row / --gap_rows 8 = X.XX`.
Last line: `one group with signal: by length / apart = X.XX`.
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

from distrl.config import AlgoConfig, ModelConfig  # noqa: E402
from distrl.data import load_splits  # noqa: E402
from distrl.config import DataConfig  # noqa: E402
from distrl.data.prompts import encode_prompt  # noqa: E402
from distrl.generation import SamplingParams  # noqa: E402
from distrl.models import resolve_model  # noqa: E402
from learners.learner_actor import LearnerActor  # noqa: E402


def main() -> None:
    import learners.learner_actor as la
    from distrl.batch import plan_microbatches

    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    learner = LearnerActor(resolve_model(args.model), ModelConfig(), AlgoConfig(lr=1e-12), temperature=1.0)
    rows = load_splits(DataConfig(), seed=0)[0][: args.groups]
    prompts = [encode_prompt(learner.tokenizer, r["prompt"]) for r in rows]
    groups = learner.generate(prompts, SamplingParams(n=args.group, max_new_tokens=args.max_new_tokens, seed=0))
    rollouts = [r for g in groups for r in g]
    for i, r in enumerate(rollouts):  # who sampled it, as in a default step: 2 prompts learner, 3 + 3 generators
        r.source = min(2, max(0, (i // args.group + 1) // 3))
    tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    signal = [(1.0 if i % 2 else -1.0) for i in range(args.group)]  # lr 1e-12: the weights barely move
    one = signal + [0.0] * (len(rollouts) - args.group)
    zero = [0.0] * len(rollouts)
    cases = {"all zero": (zero, False, 0), "one group, apart": (one, False, 0),
             "one group, by length": (one, True, 0), "all groups": (signal * args.groups, False, 0),
             "all zero, gap_rows 8": (zero, False, 8), "one group, gap_rows 8": (one, False, 8),
             "all zero, gap_rows 2": (zero, False, 2), "one group, gap_rows 2": (one, False, 2)}
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (adv, by_length, gap_rows) in cases.items():
            la.plan_microbatches = ((lambda lengths, rows, tokens, needs_grad: plan_microbatches(lengths, rows, tokens))
                                    if by_length else plan_microbatches)
            learner.algo = dataclasses.replace(learner.algo, gap_rows=gap_rows)
            for r in rollouts:  # keep versions in step with the learner
                r.policy_version = learner.policy_version
            start = time.perf_counter()
            learner.step(rollouts, adv)
            timings[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in timings.items()}
    print(f"rows {len(rollouts)} ({args.groups} groups of {args.group}), tokens {tokens}, "
          f"threads {torch.get_num_threads()}, {next(iter(learner.params.values())).dtype}")
    for name, t in med.items():
        print(f"{name:<22} {t:6.2f} s  (median of {args.repeats})")
    print(f"normal/zero = {med['all groups'] / med['all zero']:.2f}")
    print(f"all zero: --gap_rows 8 / --gap_rows 2 = {med['all zero, gap_rows 8'] / med['all zero, gap_rows 2']:.2f}")
    print(f"one group: --gap_rows 8 / --gap_rows 2 = {med['one group, gap_rows 8'] / med['one group, gap_rows 2']:.2f}")
    print(f"all zero: every row / --gap_rows 8 = {med['all zero'] / med['all zero, gap_rows 8']:.2f}")
    print(f"one group with signal: by length / apart = {med['one group, by length'] / med['one group, apart']:.2f}")


if __name__ == "__main__":
    main()
