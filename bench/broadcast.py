"""Weight broadcast through Ray's object store: packed buffers vs the naive state_dict way vs
the memcpy floor, publish + load on K=2 actors, for SmolLM2-135M full and LoRA r=16.

- packed: the learner's WeightPacker copies the trainable tensors into one buffer per dtype
  (allocated once), one `ray.put`, every actor copies its zero-copy view into its parameters.
- naive: `ray.put(model.state_dict())`, every actor `ray.get` + `load_state_dict`.
- floor: (K + 1) x one plain memcpy of the packed bytes, measured in the same run (the learner
  writes the buffer once, each actor copies it once).
- store_growth_mb: object-store bytes in use after 50 more published versions (each released
  once every actor holds the next) minus before them: flat means no leak.

    python bench/broadcast.py [--repeats 5] [--versions 50]

Last line exactly: `packed/floor = X.XX  naive/packed = Y.YY  store_growth_mb = Z` (full model).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ray  # noqa: E402
import torch  # noqa: E402

from distrl.config import ModelConfig  # noqa: E402
from distrl.models import load_policy, resolve_model, trainable_parameters  # noqa: E402
from distrl.weights import WeightPacker, load_packed  # noqa: E402
from launch.metrics import object_store_bytes_used  # noqa: E402

K = 2


class Holder:
    """A generator's side of the sync: a policy model that loads what it is sent."""

    def __init__(self, path: str, lora_rank: int) -> None:
        torch.set_num_threads(1)
        self.model = load_policy(path, ModelConfig(lora_rank=lora_rank), torch.device("cpu"))
        self.params = dict(self.model.named_parameters())

    def load_packed(self, packed) -> int:
        load_packed(self.params, packed)
        return packed.policy_version

    def load_naive(self, state_dict) -> int:
        self.model.load_state_dict(state_dict)
        return 0


def settle() -> None:
    """Released objects are freed asynchronously: collect, then give the store a moment."""
    gc.collect()
    time.sleep(2.0)


def measure(path: str, lora_rank: int, repeats: int, versions: int) -> dict[str, float]:
    model = load_policy(path, ModelConfig(lora_rank=lora_rank), torch.device("cpu"))
    trainable = trainable_parameters(model)
    packer = WeightPacker(trainable)  # allocated once, as in the learner
    actors = [ray.remote(Holder).options(num_cpus=0.5).remote(path, lora_rank) for _ in range(K)]
    ray.get([a.load_packed.remote(packer.pack(trainable, 0)) for a in actors])

    nbytes = sum(t.numel() * t.element_size() for t in packer.flat.values())
    src, dst = torch.empty(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
    packed_t, naive_t, copy_t = [], [], []
    for version in range(1, repeats + 1):
        start = time.perf_counter()
        dst.copy_(src)
        copy_t.append(time.perf_counter() - start)

        start = time.perf_counter()
        ref = ray.put(packer.pack(trainable, version))
        ray.get([a.load_packed.remote(ref) for a in actors])
        packed_t.append(time.perf_counter() - start)
        del ref

        start = time.perf_counter()
        ref = ray.put(model.state_dict())
        ray.get([a.load_naive.remote(ref) for a in actors])
        naive_t.append(time.perf_counter() - start)
        del ref

    settle()
    before = object_store_bytes_used()
    ref = None
    for version in range(versions):
        new = ray.put(packer.pack(trainable, version))
        ray.get([a.load_packed.remote(new) for a in actors])
        ref = new  # the previous version's object is released here
    del ref, new
    settle()
    growth = (object_store_bytes_used() - before) / 2**20
    for a in actors:
        ray.kill(a)
    return {"mb": nbytes / 2**20, "copy": statistics.median(copy_t), "packed": statistics.median(packed_t),
            "naive": statistics.median(naive_t), "growth": growth}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--versions", type=int, default=50)
    ap.add_argument("--only", choices=["full", "lora"], default=None)
    args = ap.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    path = resolve_model("smollm2-135m-instruct")
    results = {}
    for name, rank in (("LoRA r=16", 16), ("full", 0)):
        if args.only and (args.only == "full") != (rank == 0):
            continue
        r = results[name] = measure(path, rank, args.repeats, args.versions)
        floor = (K + 1) * r["copy"]
        print(f"{name:10s} {r['mb']:7.1f} MB  memcpy floor {floor:.3f}s  packed {r['packed']:.3f}s  "
              f"naive {r['naive']:.3f}s  store growth after {args.versions} versions {r['growth']:.1f} MB")
    full = results["full"]
    print(f"packed/floor = {full['packed'] / ((K + 1) * full['copy']):.2f}  "
          f"naive/packed = {full['naive'] / full['packed']:.2f}  store_growth_mb = {full['growth']:.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
