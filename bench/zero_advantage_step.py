"""Learner step time when every advantage is 0 (no gradient to take) vs a normal step.

Early in a run on a hard task most groups score all-equal rewards, so every advantage is 0.
With no KL term such a step has exactly zero gradient; the learner then runs its forward without
autograd (still measuring logprob_gap) instead of a full forward + backward. This runs both on
the same rollouts of the embedded SmolLM2-135M, side by side, and prints the ratio last.

    python bench/zero_advantage_step.py [--rows 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    path = resolve_model("smollm2-135m-instruct")
    learner = LearnerActor(path, ModelConfig(), AlgoConfig(lr=1e-12), temperature=1.0)
    rows = load_splits(DataConfig(), seed=0)[0][: args.rows // 4]
    prompts = [encode_prompt(learner.tokenizer, r["prompt"]) for r in rows]
    groups = learner.generate(prompts, SamplingParams(n=4, max_new_tokens=32, seed=0))
    rollouts = [r for g in groups for r in g]
    tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    timings: dict[str, list[float]] = {"zero": [], "normal": []}
    for _ in range(args.repeats):
        for name, adv in (("zero", 0.0), ("normal", 1e-9)):
            for r in rollouts:  # keep versions in step with the learner (lr 1e-12: weights barely move)
                r.policy_version = learner.policy_version
            start = time.perf_counter()
            learner.step(rollouts, [adv] * len(rollouts))
            timings[name].append(time.perf_counter() - start)
    zero, normal = statistics.median(timings["zero"]), statistics.median(timings["normal"])
    print(f"rows {len(rollouts)}, tokens {tokens}, threads {torch.get_num_threads()}")
    print(f"all-zero-advantage step: {zero:.2f} s   normal step: {normal:.2f} s  (medians of {args.repeats})")
    print(f"normal/zero = {normal / zero:.2f}")


if __name__ == "__main__":
    main()
