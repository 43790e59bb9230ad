"""Peak memory (RSS) of one learner step on the embedded SmolLM2-135M, per configuration.

Each configuration runs in its own process (so one's peak cannot hide another's): build the
learner, run one warm-up step (optimizer state allocated), then one measured step while a thread
samples RSS every 5 ms. Rows are synthetic but realistic: 16 rows of 40 prompt + 32 completion
tokens, micro-batches of 8. Prints a table; the last line compares full fine-tune + AdamW with
4-bit LoRA r=16 + gradient checkpointing. On this model activations (about 3 MB per token across
30 layers) dominate a step's growth; the vocabulary's logits are a small share.

    python bench/learner_memory.py [--configs "NAME;NAME"] [--model PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    "full + AdamW": dict(model={}, algo={}),
    "full + AdamW, chunked log-probs": dict(model={}, algo={"logprob_chunk_size": 8}),
    "full + AdamW, grad checkpointing": dict(model={"gradient_checkpointing": True}, algo={}),
    "full + CPUAdamW": dict(model={}, algo={"optimizer": "cpu_adamw"}),
    "full + AdamW 8-bit": dict(model={}, algo={"optimizer": "adamw_8bit"}),
    "LoRA r=16": dict(model={"lora_rank": 16}, algo={}),
    "4-bit LoRA r=16": dict(model={"lora_rank": 16, "load_in_4bit": True}, algo={}),
    "4-bit LoRA r=16, grad checkpointing": dict(model={"lora_rank": 16, "load_in_4bit": True,
                                                       "gradient_checkpointing": True}, algo={}),
}


def measure(name: str, model: str) -> dict:
    import psutil
    import torch

    from distrl.config import AlgoConfig, ModelConfig
    from distrl.generation import Rollout
    from distrl.models import resolve_model
    from learners.learner_actor import LearnerActor

    spec = CONFIGS[name]
    learner = LearnerActor(resolve_model(model), ModelConfig(**spec["model"]),
                           AlgoConfig(lr=1e-6, **spec["algo"]), temperature=1.0)
    vocab = learner.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rollouts = [Rollout(torch.randint(0, vocab, (40,), generator=g).tolist(),
                        torch.randint(0, vocab, (32,), generator=g).tolist(), [-5.0] * 32, "length", 0)
                for _ in range(16)]
    advantages = [1.0 if i % 2 else -1.0 for i in range(16)]
    proc = psutil.Process()

    def step() -> float:
        for r in rollouts:
            r.policy_version = learner.policy_version
        start = time.perf_counter()
        learner.step(rollouts, advantages)
        return time.perf_counter() - start

    step()  # warm-up: optimizer state exists from here on
    try:  # hand freed heap back to the OS, so "before" is what the learner really holds
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = proc.memory_info().rss
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample)
    thread.start()
    seconds = step()
    stop.set()
    thread.join()
    trainable = sum(p.numel() for p in learner.params.values())
    return {"name": name, "trainable_m": trainable / 1e6, "before_mb": before / 2**20,
            "peak_mb": peak[0] / 2**20, "step_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--configs", default=";".join(CONFIGS), help="names from CONFIGS, separated by ;")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a tiny one for a smoke test")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model)))
        return
    names = args.configs.split(";")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration {unknown[0]!r}: choose from {', '.join(CONFIGS)}")
    rows = []
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--model", args.model],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'configuration':34s} {'trainable':>10s} {'RSS before':>11s} {'peak RSS':>9s} {'in step':>8s} {'step':>7s}")
    for r in rows:
        print(f"{r['name']:34s} {r['trainable_m']:9.1f}M {r['before_mb']:9.0f}MB {r['peak_mb']:7.0f}MB "
              f"{r['peak_mb'] - r['before_mb']:+6.0f}MB {r['step_s']:6.1f}s")
    by = {r["name"]: r for r in rows}
    best = "4-bit LoRA r=16, grad checkpointing"
    if "full + AdamW" in by and best in by:
        print(f"peak full+AdamW / (4-bit LoRA + checkpointing) = {by['full + AdamW']['peak_mb'] / by[best]['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
