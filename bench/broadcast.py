"""Weight broadcast through Ray's object store: packed buffers vs the naive state_dict way vs
the memcpy floor, publish + load on K=2 actors, for SmolLM2-135M full and LoRA r=16.

- packed: the learner's WeightPacker copies the trainable tensors into one buffer per dtype
  (allocated once), one `ray.put`, every actor copies its zero-copy view into its parameters:
  K + 2 copies of the bytes, the K loads running at the same time on their own cores.
- naive: `ray.put(model.state_dict())`, every actor `ray.get` + `load_state_dict`.
- floor: the same K + 2 copies as plain memcpy of written memory (random bytes, destinations
  already touched, so no read hits the zero page), timed as they happen: the pack copy, the
  put copy, then K copies at once in K threads (one per actor), measured in the same run.
- store_growth_mb: object-store bytes in use after --versions more versions went through the
  driver's real path, minus before them: each version is the return value of a real
  LearnerActor's step, the driver's `Trainer._sync` sends its ref to K real GenerationActors
  (--store_backend), and keeps only the newest. Flat means no leak.

    python bench/broadcast.py [--repeats 5] [--versions 50] [--store_backend vllm] [--model M]

Last line exactly: `packed/floor = X.XX  naive/packed = Y.YY  store_growth_mb = Z` (full model).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ray  # noqa: E402
import torch  # noqa: E402

from distrl.config import AlgoConfig, ModelConfig, parse_args  # noqa: E402
from distrl.data import load_splits  # noqa: E402
from distrl.generation import Rollout  # noqa: E402
from distrl.models import load_policy, resolve_model, trainable_parameters  # noqa: E402
from distrl.weights import WeightPacker, load_packed  # noqa: E402
from launch.cluster import Actors  # noqa: E402
from launch.driver import Setup, Trainer  # noqa: E402
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


def floor_copies(nbytes: int) -> float:
    """The packed path's K + 2 copies as plain memcpy of written memory, timed as they happen:
    pack, put, then K loads at once (each actor copies on its own core)."""
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    outs = [torch.randint(0, 256, (nbytes,), dtype=torch.uint8) for _ in range(K + 2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # an actor copies with one thread
    try:
        start = time.perf_counter()
        outs[0].copy_(src)  # the learner packs
        outs[1].copy_(outs[0])  # ray.put copies into the store
        loads = [threading.Thread(target=outs[2 + i].copy_, args=(outs[1],)) for i in range(K)]
        for t in loads:  # copy_ releases the GIL: the K loads overlap as the actors' do
            t.start()
        for t in loads:
            t.join()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def measure(path: str, lora_rank: int, repeats: int) -> dict[str, float]:
    model = load_policy(path, ModelConfig(lora_rank=lora_rank), torch.device("cpu"))
    trainable = trainable_parameters(model)
    packer = WeightPacker(trainable)  # allocated once, as in the learner
    actors = [ray.remote(Holder).options(num_cpus=0.5).remote(path, lora_rank) for _ in range(K)]
    ray.get([a.load_packed.remote(packer.pack(trainable, 0)) for a in actors])

    nbytes = sum(t.numel() * t.element_size() for t in packer.flat.values())
    packed_t, naive_t, floor_t = [], [], []
    for version in range(1, repeats + 1):
        floor_t.append(floor_copies(nbytes))

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
    for a in actors:
        ray.kill(a)
    return {"mb": nbytes / 2**20, "floor": statistics.median(floor_t), "packed": statistics.median(packed_t),
            "naive": statistics.median(naive_t)}


class _Tokenizer:
    """Just enough of a tokenizer for a Trainer that only syncs weights."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1, 2, 3]}


def store_growth(path: str, versions: int, backend: str) -> float:
    """MB the object store grew over `versions` versions through the driver's real path: each one
    returned by a real LearnerActor's step (as the driver gets it), sent by Trainer._sync to K real
    GenerationActors, which load it; the driver keeps only the newest ref."""
    from actors.generation_actor import GenerationActor
    from learners.learner_actor import LearnerActor

    cfg = parse_args(["--model", path, "--number_of_actors", str(K), "--dtype", "float32"])
    model_cfg = ModelConfig(model=path, dtype="float32")
    learner = ray.remote(LearnerActor).options(num_cpus=0.5).remote(path, model_cfg, AlgoConfig(), temperature=1.0,
                                                                     torch_threads=1)
    vllm = dict(max_model_len=256, kv_cache_gb=0.25, torch_threads=1, device="cpu")
    gens = [ray.remote(GenerationActor).options(num_cpus=0.5).remote(path, model_cfg, backend=backend,
                                                                      torch_threads=1, vllm_options=vllm)
            for _ in range(K)]
    # As the driver does: the actors are up before the first sync, whose deadline is for loading
    # weights, not for starting processes (which a loaded machine can stretch past it).
    ray.get([a.ready.remote() for a in [learner, *gens]], timeout=cfg.run.timeout_s)
    rows, eval_rows = load_splits(cfg.data, 0)
    trainer = Trainer(cfg, Setup("", _Tokenizer(), rows, eval_rows, [("numeric", 1.0)], tempfile.mkdtemp()),
                      Actors(learner, gens, None))

    def publish(version: int) -> None:
        # Advantage 0: the learner's cheapest step (no backward); it still makes a new version.
        rollout = Rollout([1, 2, 3], [4, 5], [-1.0, -1.0], "length", version)
        _, trainer.weights_ref = learner.step.options(num_returns=2).remote([rollout], [0.0])
        trainer._sync(trainer.weights_ref, version + 1)

    trainer.weights_ref = learner.publish.remote()
    trainer._sync(trainer.weights_ref, 0)
    publish(0)
    settle()
    before = object_store_bytes_used()
    for version in range(1, versions + 1):
        publish(version)
    trainer._finish_sync()
    settle()
    growth = (object_store_bytes_used() - before) / 2**20
    trainer.close()
    for a in [learner, *gens]:
        ray.kill(a)
    return growth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--versions", type=int, default=50)
    ap.add_argument("--only", choices=["full", "lora"], default=None)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--store_backend", default="vllm", choices=["hf", "vllm"],
                    help="the GenerationActors' engine for store_growth_mb (vllm: what auto runs here)")
    args = ap.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    path = resolve_model(args.model)
    results = {}
    for name, rank in (("LoRA r=16", 16), ("full", 0)):
        if args.only and (args.only == "full") != (rank == 0):
            continue
        r = results[name] = measure(path, rank, args.repeats)
        print(f"{name:10s} {r['mb']:7.1f} MB  memcpy floor ({K + 2} copies) {r['floor']:.3f}s  "
              f"packed {r['packed']:.3f}s  naive {r['naive']:.3f}s")
    growth = store_growth(path, args.versions, args.store_backend)
    print(f"store growth over {args.versions} versions (learner step -> Trainer._sync -> {K} {args.store_backend} "
          f"GenerationActors): {growth:.1f} MB")
    full = results.get("full")
    if full:
        print(f"packed/floor = {full['packed'] / full['floor']:.2f}  "
              f"naive/packed = {full['naive'] / full['packed']:.2f}  store_growth_mb = {growth:.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
