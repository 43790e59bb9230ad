"""How far the generators' log-probs sit from the learner's, per engine, dtype and fine-tuning mode.

For each of hf and vllm (the CPU build), fp32 and bf16, full fine-tuning and LoRA r16: a learner
(default lr; bf16 full fine-tuning with CPUAdamW's fp32 masters) takes one step, the generator
loads the new version the way a run does (vLLM: through the object store), samples the built-in
arithmetic prompts, and the learner scores the same tokens. The per-token |difference| is
reported as mean (what `logprob_gap` logs), median and p99. These are the numbers a per-dtype
threshold on `logprob_gap` has to be set from.

    python bench/logprob_gap.py [--prompts 8] [--n 4] [--max_new_tokens 32] [--modes full,lora]

Last line: `bf16/fp32 median logprob_gap (vllm, full) = X.XX`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from actors.generation_actor import GenerationActor  # noqa: E402
from distrl.batch import collate, completion_logprobs  # noqa: E402
from distrl.config import AlgoConfig, DataConfig, ModelConfig  # noqa: E402
from distrl.data import load_splits  # noqa: E402
from distrl.data.prompts import encode_prompt  # noqa: E402
from distrl.generation import SamplingParams  # noqa: E402
from distrl.models import resolve_model  # noqa: E402
from learners.learner_actor import LearnerActor  # noqa: E402


@torch.no_grad()
def learner_logprobs(learner: LearnerActor, rollouts: list) -> list[list[float]]:
    # With the kernels the learner's training pass uses (bf16 on CPU: eager attention, compiled layers).
    with learner.kernels.active() if learner.kernels else contextlib.nullcontext():
        lp = completion_logprobs(learner.model, collate(rollouts, learner.tokenizer.pad_token_id), 1.0).float()
    return [lp[i, : len(r.completion_ids)].tolist() for i, r in enumerate(rollouts)]


def measure(ray, path: str, backend: str, dtype: str, lora_rank: int, prompts: list, sampling) -> list[float]:
    model_cfg = ModelConfig(model=path, dtype=dtype, lora_rank=lora_rank, lora_alpha=2 * lora_rank or 32)
    optimizer = "cpu_adamw" if dtype != "float32" and not lora_rank else "adamw"
    learner = LearnerActor(path, model_cfg, AlgoConfig(optimizer=optimizer), temperature=1.0, torch_threads=2)
    generator = GenerationActor(path, model_cfg, backend=backend, torch_threads=2,
                                vllm_options=dict(max_model_len=512, kv_cache_gb=0.25))
    generator.load_weights([ray.put(learner.publish())])
    first = [r for g in generator.generate(prompts, sampling) for r in g]
    _, weights = learner.step(first, [1.0 if i % 2 else -1.0 for i in range(len(first))])
    generator.load_weights([ray.put(weights)])
    rollouts = [r for g in generator.generate(prompts, sampling) for r in g]
    theirs = learner_logprobs(learner, rollouts)
    if backend == "vllm":
        generator.backend.close()
    del generator, learner
    gc.collect()
    return sorted(abs(a - b) for r, lp in zip(rollouts, theirs) for a, b in zip(r.logprobs, lp))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--modes", default="full,lora", help="full fine-tuning, LoRA r16, or both")
    args = ap.parse_args()
    if not set(args.modes.split(",")) <= {"full", "lora"}:
        ap.error(f"--modes {args.modes}: a comma-separated list of full and lora")
    ranks = [{"full": 0, "lora": 16}[m] for m in args.modes.split(",")]
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    path = resolve_model("smollm2-135m-instruct")
    from distrl.models import load_tokenizer

    tokenizer = load_tokenizer(path)
    prompts = [encode_prompt(tokenizer, r["prompt"]) for r in load_splits(DataConfig(), seed=0)[1][: args.prompts]]
    sampling = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=11)
    print("| generator | dtype | mode | mean | median | p99 | max | tokens |")
    print("|---|---|---|---|---|---|---|---|")
    medians = {}
    for dtype in args.dtypes.split(","):
        for backend in args.backends.split(","):
            for lora_rank in ranks:
                try:
                    diffs = measure(ray, path, backend, dtype, lora_rank, prompts, sampling)
                except Exception as e:  # e.g. a dtype this engine does not run on CPU
                    print(f"| {backend} | {dtype} | {'LoRA r16' if lora_rank else 'full'} | failed: "
                          f"{str(e).splitlines()[0][:120]} |", flush=True)
                    continue
                median = statistics.median(diffs)
                medians[(backend, dtype, lora_rank)] = median
                print(f"| {backend} | {dtype} | {'LoRA r16' if lora_rank else 'full'} | {statistics.mean(diffs):.2e} | "
                      f"{median:.2e} | {diffs[int(0.99 * (len(diffs) - 1))]:.2e} | {diffs[-1]:.2e} | {len(diffs)} |",
                      flush=True)
    if ("vllm", "bfloat16", 0) in medians and ("vllm", "float32", 0) in medians:
        ratio = medians[("vllm", "bfloat16", 0)] / medians[("vllm", "float32", 0)]
        print(f"bf16/fp32 median logprob_gap (vllm, full) = {ratio:.2f}")


if __name__ == "__main__":
    main()
