"""Join or start a Ray cluster, check it can place the actors, and create them by name.

`ray.remote(...)` is applied here and only here, so `actors/` and `learners/` stay plain classes.
A run that cannot be placed fails at once with what it needs and what is free, instead of
waiting forever for resources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray

from actors.generation_actor import GenerationActor
from distrl.config import ConfigError, TrainConfig
from distrl.generation import resolve_backend
from learners.learner_actor import LearnerActor
from learners.reference_actor import ReferenceActor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Actors:
    learner: Any
    generators: list[Any]
    reference: Any | None


def connect(cfg: TrainConfig) -> None:
    """Join `--ray_address` / RAY_ADDRESS when given, else start a local cluster."""
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or None
    # Workers import actors/, learners/ and distrl/ from the repository root.
    pythonpath = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
             log_to_driver=True, logging_level="WARNING")


def generator_gpus(cfg: TrainConfig) -> float:
    """GPUs one generation actor reserves: its tensor-parallel size with vLLM (half of the
    learner's GPU when colocated), else --num_gpus_per_actor."""
    if resolve_backend(cfg.run.backend) != "vllm":
        return cfg.run.num_gpus_per_actor
    return 0.5 if cfg.run.colocate else float(cfg.run.gpus_per_actor)


def learner_gpus(cfg: TrainConfig) -> float:
    return 0.5 if cfg.run.colocate else cfg.run.num_gpus_per_actor


def _needed(cfg: TrainConfig) -> tuple[int, float, float]:
    others = 1 if cfg.ref_mode == "actor" else 0
    actors = cfg.run.number_of_actors + 1 + others
    gpus = learner_gpus(cfg) + cfg.run.number_of_actors * generator_gpus(cfg) + others * cfg.run.num_gpus_per_actor
    return actors, actors * cfg.run.num_cpus_per_actor, gpus


def check_resources(cfg: TrainConfig, available: dict[str, float]) -> None:
    """Raise ConfigError when the cluster cannot place every actor right now."""
    actors, cpus, gpus = _needed(cfg)
    free_cpus, free_gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    if cpus > free_cpus + 1e-9 or gpus > free_gpus + 1e-9:
        raise ConfigError(
            f"{actors} actors need {cpus:g} CPUs and {gpus:g} GPUs "
            f"({cfg.run.num_cpus_per_actor:g} CPU, {cfg.run.num_gpus_per_actor:g} GPU each) but the "
            f"cluster has {free_cpus:g} CPUs and {free_gpus:g} GPUs free: lower --number_of_actors "
            "or --num_cpus_per_actor/--num_gpus_per_actor, or add nodes")


def create_actors(cfg: TrainConfig, model_path: str) -> Actors:
    """Named actors (distrl-learner, distrl-generator-i, distrl-reference), all started."""
    run = cfg.run
    opts = dict(num_cpus=run.num_cpus_per_actor, num_gpus=run.num_gpus_per_actor)
    learner = ray.remote(LearnerActor).options(name="distrl-learner", **dict(opts, num_gpus=learner_gpus(cfg))).remote(
        model_path, cfg.model, cfg.algo, cfg.sampling.temperature, ref_mode=cfg.ref_mode,
        seed=run.seed, torch_threads=run.torch_threads, max_staleness=run.async_staleness)
    vllm = dict(tensor_parallel_size=run.gpus_per_actor, gpu_memory_utilization=run.gpu_memory_utilization,
                max_model_len=run.max_model_len, colocate=run.colocate)
    generators = [
        ray.remote(GenerationActor).options(name=f"distrl-generator-{i}",
                                            **dict(opts, num_gpus=generator_gpus(cfg))).remote(
            model_path, cfg.model, backend=run.backend, seed=run.seed,
            torch_threads=run.torch_threads or 1, vllm_options=vllm)
        for i in range(run.number_of_actors)]
    reference = None
    if cfg.ref_mode == "actor":
        reference = ray.remote(ReferenceActor).options(name="distrl-reference", **opts).remote(
            model_path, cfg.model, cfg.sampling.temperature, cfg.algo.micro_batch_size,
            torch_threads=run.torch_threads or 1)
    handles = [learner, *generators] + ([reference] if reference else [])
    ray.get([h.ready.remote() for h in handles], timeout=run.timeout_s)
    return Actors(learner, generators, reference)
