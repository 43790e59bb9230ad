"""Generation speed on this machine: hf (transformers generate) vs the real vLLM engine, fp32 and bf16.

The same prompts for every side (built-in arithmetic prompts, chat-formatted), the same sampling
(n samples per prompt, temperature 1.0, at most --max_new_tokens), the same torch threads (1 by
default: what each distrl generation actor gets). Each side is warmed up with one small call
first; vLLM's start-up (engine build, no torch.compile: `enforce_eager`) is timed apart. It prints
completion tokens/s and the seconds the whole batch took per side, and last:

    vllm/hf tokens_per_s = X.XX      (vLLM in bf16 against hf in fp32, distrl's CPU default before bf16)

With `--backends vllm,vllm_block128` it compares distrl's KV-cache blocks of 32 tokens with vLLM's
CPU default of 128 (prefix caching shares only full blocks, so under 128 every one of a prompt's
n samples runs the prompt's prefill) and prints `vllm/vllm_block128 tokens_per_s = X.XX (dtype)`.

`--record` stores the tokens/s per dtype in distrl/generation/measured_speed.json, under the
model's shape: `--backend auto` on CPU picks vllm for a model only where this measured it faster.

    python bench/generation.py [--model smollm2-135m-instruct] [--prompts 64] [--batches 1] [--n 8] [--record]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from distrl.config import DataConfig, ModelConfig  # noqa: E402
from distrl.data import load_splits  # noqa: E402
from distrl.data.prompts import encode_prompt  # noqa: E402
from distrl.generation import SamplingParams  # noqa: E402
from distrl.generation.base import SPEED_RECORD, model_shape  # noqa: E402
from distrl.generation.vllm import CPU_BLOCK_SIZE  # noqa: E402
from distrl.generation.hf import HFBackend  # noqa: E402
from distrl.models import load_policy, load_tokenizer, resolve_model  # noqa: E402


def build(kind: str, path: str, dtype: str, threads: int):
    """A generation backend as a generation actor builds it, and its start-up seconds."""
    start = time.perf_counter()
    cfg = ModelConfig(model=path, dtype=dtype)
    if kind.startswith("vllm"):
        from distrl.generation.vllm import VLLMBackend

        # vllm_compiled: torch.compile; vllm_block128: vLLM's own CPU KV-cache block (distrl's: 32).
        backend = VLLMBackend(path, cfg, torch_threads=threads, max_model_len=1024,
                              enforce_eager=kind != "vllm_compiled",
                              cpu_block_size=128 if kind == "vllm_block128" else CPU_BLOCK_SIZE)
    else:
        torch.set_num_threads(threads)
        model = load_policy(path, cfg, torch.device("cpu")).eval()
        backend = HFBackend(model, load_tokenizer(path), torch.device("cpu"))
    return backend, time.perf_counter() - start


def measure(backend, prompts: list[list[int]], sampling: SamplingParams) -> tuple[float, int]:
    """(seconds, completion tokens) for one generate call over all prompts."""
    start = time.perf_counter()
    groups = backend.generate(prompts, sampling, policy_version=0)
    return time.perf_counter() - start, sum(len(r.completion_ids) for g in groups for r in g)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, default=1, help="time this many calls of --prompts each (a training "
                    "step's shape: --prompts 4 --batches 6)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--backends", default="hf,vllm", help="of hf, vllm, vllm_compiled, vllm_block128")
    ap.add_argument("--record", action="store_true", help="store tokens/s in " + SPEED_RECORD)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")  # vLLM's weight engine reads the object store
    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    rows = load_splits(DataConfig(), seed=0)[0][: args.prompts * args.batches]
    prompts = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    sampling = SamplingParams(n=args.n, max_new_tokens=args.max_new_tokens, temperature=1.0, seed=1)
    warm = SamplingParams(n=2, max_new_tokens=8, temperature=1.0, seed=2)
    print(f"{args.model}: {args.batches} x {args.prompts} prompts x {args.n} samples, <= {args.max_new_tokens} new tokens, "
          f"temperature 1.0, {args.threads} torch thread(s) per side", flush=True)
    results: dict[tuple[str, str], dict] = {}
    for dtype in args.dtypes.split(","):
        for kind in args.backends.split(","):
            backend, startup = build(kind, path, dtype, args.threads)
            measure(backend, prompts[:2], warm)
            seconds, tokens = map(sum, zip(*(measure(backend, prompts[i:i + args.prompts], sampling)
                                             for i in range(0, len(prompts), args.prompts))))
            results[(kind, dtype)] = dict(tokens_per_s=tokens / seconds, gen_s=seconds, tokens=tokens,
                                          startup_s=startup)
            print(f"  {kind:4s} {dtype:8s} {tokens / seconds:7.1f} tokens/s  {seconds:6.1f} s for the batch "
                  f"({tokens} tokens)  start-up {startup:5.1f} s", flush=True)
            if kind.startswith("vllm"):
                backend.close()
            del backend
            gc.collect()
    print()
    print(f"| backend | dtype | completion tokens/s | gen_s ({args.batches}x{args.prompts}x{args.n}) | start-up s |")
    print("|---|---|---|---|---|")
    for (kind, dtype), r in results.items():
        print(f"| {kind} | {dtype} | {r['tokens_per_s']:.1f} | {r['gen_s']:.1f} | {r['startup_s']:.1f} |")
    if args.record:
        record(path, results, args)
    for dtype in args.dtypes.split(","):
        if ("vllm", dtype) in results and ("vllm_block128", dtype) in results:
            ratio = results[("vllm", dtype)]["tokens_per_s"] / results[("vllm_block128", dtype)]["tokens_per_s"]
            print(f"vllm/vllm_block128 tokens_per_s = {ratio:.2f} ({dtype})")
    if ("vllm", "bfloat16") in results and ("hf", "float32") in results:
        ratio = results[("vllm", "bfloat16")]["tokens_per_s"] / results[("hf", "float32")]["tokens_per_s"]
        print(f"vllm/hf tokens_per_s = {ratio:.2f}")


def record(path: str, results: dict, args: argparse.Namespace) -> None:
    """Merge this run's tokens/s into the speed record `--backend auto` reads."""
    saved = {}
    if os.path.isfile(SPEED_RECORD):
        with open(SPEED_RECORD) as f:
            saved = json.load(f)
    entry = saved.setdefault(model_shape(path)["key"], {})
    for (kind, dtype), r in results.items():
        if kind in ("hf", "vllm"):  # what a generation actor builds
            entry.setdefault(dtype, {})[kind] = round(r["tokens_per_s"], 1)
    entry["measured"] = (f"{time.strftime('%Y-%m-%d')} bench/generation.py --model {args.model} --prompts "
                         f"{args.prompts} --n {args.n} --max_new_tokens {args.max_new_tokens} --threads {args.threads}")
    with open(SPEED_RECORD, "w") as f:
        json.dump(saved, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"recorded in {SPEED_RECORD}")


if __name__ == "__main__":
    main()
