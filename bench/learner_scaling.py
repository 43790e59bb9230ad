"""Learner step time with one learner and with a group of two (`--num_learners 2`, gloo), side by
side in one run, and how much of a group step is communication.

Every learner is a real Ray actor (the same class the driver starts), on the embedded
SmolLM2-135M by default, full fine-tune. Rows are synthetic but realistic: 32 rollouts of 40
prompt + 8..32 completion tokens, micro-batches of 8, the same rows for every configuration.
The cores are split evenly: one learner gets all of them as torch threads, each of two ranks
half. Configurations:

- `N=1 adamw` / `N=2 adamw`: torch fused AdamW; a group sums gradients with one all-reduce per
  64 MB bucket and every rank steps the full optimizer;
- `N=1 cpu_adamw` / `N=2 cpu_adamw zero1` / `N=2 cpu_adamw rank0`: CPUAdamW; in a group either
  each rank owns half the state (ZeRO-1) or rank 0 owns it all (LSRL's way). Both reduce every
  gradient to its owner and broadcast updated weights from it.

Per configuration: one warm-up step (optimizer state allocated), then the median of `--steps`.
`comm` is the slowest rank's time in collectives outside backward. On a 2-core machine two ranks
cannot be faster than one learner using both cores: the point is correctness and overhead.

    python bench/learner_scaling.py [--steps 3] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {
    "N=1 adamw": (1, "adamw", "zero1"),
    "N=2 adamw": (2, "adamw", "zero1"),
    "N=1 cpu_adamw": (1, "cpu_adamw", "zero1"),
    "N=2 cpu_adamw zero1": (2, "cpu_adamw", "zero1"),
    "N=2 cpu_adamw rank0": (2, "cpu_adamw", "rank0"),
}


def rows(vocab: int, count: int = 32):
    import torch

    from distrl.generation import Rollout

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 33, (count,), generator=g).tolist()  # uneven: the split is by tokens
    return [Rollout(torch.randint(0, vocab, (40,), generator=g).tolist(),
                    torch.randint(0, vocab, (n,), generator=g).tolist(), [-5.0] * n, "length", 0)
            for n in lengths], [1.0 if i % 2 else -1.0 for i in range(count)]


def measure(name: str, model_path: str, steps: int, cores: int) -> dict:
    import ray

    from distrl.config import AlgoConfig, ModelConfig
    from launch.learner_group import LearnerGroup
    from learners.learner_actor import LearnerActor

    n, optimizer, sharding = CONFIGS[name]
    algo = AlgoConfig(lr=1e-6, optimizer=optimizer, micro_batch_size=8)
    handles = [ray.remote(LearnerActor).options(num_cpus=cores / n).remote(
        model_path, ModelConfig(), algo, temperature=1.0, torch_threads=max(1, cores // n), world_size=n,
        cpu_adamw_sharding=sharding) for _ in range(n)]
    ray.get([h.ready.remote() for h in handles])
    if n > 1:
        address = ray.get(handles[0].rendezvous_address.remote())
        ray.get([h.join_group.remote(address, r, 600.0) for r, h in enumerate(handles)])
    group = LearnerGroup(handles)
    from transformers import AutoConfig

    rollouts, advantages = rows(AutoConfig.from_pretrained(model_path).vocab_size)
    times, comms = [], []
    for i in range(steps + 1):
        for r in rollouts:
            r.policy_version = i
        start = time.perf_counter()
        refs, _ = group.step(rollouts, advantages, None)
        metrics = group.metrics(refs, timeout_s=1800)
        times.append(time.perf_counter() - start)
        comms.append(metrics["comm_s"])
    for h in handles:
        ray.kill(h)
    step_s, comm_s = statistics.median(times[1:]), statistics.median(comms[1:])
    return {"name": name, "step_s": step_s, "comm_s": comm_s, "comm_share": comm_s / step_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()

    import ray

    from distrl.models import resolve_model

    cores = os.cpu_count() or 1
    model_path = resolve_model(args.model)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    results = {}
    for name in args.configs.split(","):
        results[name] = r = measure(name, model_path, args.steps, cores)
        print(f"{name:22s} {r['step_s']:7.2f} s/step  comm {r['comm_s']:6.2f} s ({100 * r['comm_share']:4.1f}%)",
              flush=True)
    ray.shutdown()
    if "N=2 cpu_adamw zero1" in results and "N=2 cpu_adamw rank0" in results:
        z, r0 = results["N=2 cpu_adamw zero1"], results["N=2 cpu_adamw rank0"]
        print(f"cpu_adamw across 2 ranks: rank0/zero1 step time = {r0['step_s'] / z['step_s']:.2f}")
    one, two = results.get("N=1 adamw"), results.get("N=2 adamw")
    if one and two:
        print(f"learner step N=2/N=1 (adamw, {cores} cores) = {two['step_s'] / one['step_s']:.2f}, "
              f"communication {100 * two['comm_share']:.0f}% of the N=2 step")


if __name__ == "__main__":
    main()
