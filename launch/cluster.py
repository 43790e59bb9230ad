"""Join or start a Ray cluster, check it can place the actors, and create them by name.

`ray.remote(...)` is applied here and only here, so `actors/` and `learners/` stay plain classes.
A run that cannot be placed fails at once with what it needs and what is free, instead of
waiting forever for resources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.generation_actor import GenerationActor
from distrl.config import ConfigError, RunConfig, TrainConfig
from distrl.generation.base import model_shape, vllm_device
from learners.learner_actor import LearnerActor
from learners.reference_actor import ReferenceActor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Actors:
    learner: Any  # rank 0 of the learner group (it also generates)
    generators: list[Any]
    reference: Any | None
    placement_group: Any = None
    info: dict[str, dict] | None = None  # name -> what its ready() said (pid, node, device)
    learners: list[Any] = field(default_factory=list)  # every learner rank, rank 0 first


def learner_names(n: int) -> list[str]:
    return ["distrl-learner"] + [f"distrl-learner-{r}" for r in range(1, n)]


def connect(cfg: TrainConfig) -> None:
    """Join `--ray_address` / RAY_ADDRESS when given, else start a local cluster.

    Joining a cluster ships this repository to every node as the job's `working_dir` (workers
    import actors/, learners/ and distrl/ from it), so nothing depends on the driver's directory
    existing on other machines; inside `ray job submit --working-dir .` the job's own copy is
    used. A local cluster shares this machine's files: PYTHONPATH is enough."""
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        pythonpath = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
    elif os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # a submitted job: its runtime_env carries the code
        runtime_env = None
    else:
        runtime_env = {"working_dir": REPO_ROOT,
                       "excludes": [".venv/", ".git/", "outputs/", "__pycache__/", ".pytest_cache/"]}
    # A cluster started here serves its dashboard (and job API) on 127.0.0.1 only.
    local = {"dashboard_host": "127.0.0.1"} if address is None else {}
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level="WARNING", **local)


def vllm_on_gpu(cfg: TrainConfig) -> bool:
    """The generators are vLLM engines on GPUs (the CPU build reserves CPUs like any actor)."""
    return cfg.run.backend == "vllm" and vllm_device(cfg.run.num_gpus_per_actor) == "cuda"


def generator_gpus(cfg: TrainConfig) -> float:
    """GPUs one generation actor reserves: its tensor-parallel size with vLLM (half of the
    learner's GPU when colocated), else --num_gpus_per_actor."""
    if not vllm_on_gpu(cfg):
        return cfg.run.num_gpus_per_actor
    return 0.5 if cfg.run.colocate else float(cfg.run.gpus_per_actor)


def generator_actor_gpus(cfg: TrainConfig) -> float:
    """GPUs the generation actor itself holds. A tensor-parallel vLLM engine runs its workers as
    Ray actors that reserve the GPUs themselves (in vLLM's own placement group), so the actor
    that drives it holds none, or the workers could never be placed."""
    if vllm_on_gpu(cfg) and not cfg.run.colocate and cfg.run.gpus_per_actor > 1:
        return 0.0
    return generator_gpus(cfg)


def bundles(cfg: TrainConfig) -> list[dict[str, float]]:
    """One placement-group bundle per actor: learner ranks, generators, then the reference actor."""
    run = cfg.run

    def bundle(gpus: float) -> dict[str, float]:
        return {"CPU": run.num_cpus_per_actor, **({"GPU": gpus} if gpus > 0 else {})}

    out = [bundle(learner_gpus(cfg))] * run.num_learners + [bundle(generator_actor_gpus(cfg))] * run.number_of_actors
    if cfg.ref_mode == "actor":
        out.append(bundle(run.num_gpus_per_actor))
    return out


def place(cfg: TrainConfig) -> PlacementGroup:
    """Reserve every actor's resources at once (`--placement_strategy` pack or spread over
    nodes); a cluster that cannot hold them is an error naming what was asked, never a wait."""
    pg = placement_group(bundles(cfg), strategy=cfg.run.placement_strategy.upper(), name="distrl")
    ready, _ = ray.wait([pg.ready()], timeout=cfg.run.placement_timeout_s)
    if not ready:
        remove_placement_group(pg)
        asked = ", ".join(f"{b}" for b in bundles(cfg))
        raise ConfigError(f"placement group ({cfg.run.placement_strategy}) not placed within "
                          f"{cfg.run.placement_timeout_s:g}s: bundles {asked}; the cluster has "
                          f"{ray.cluster_resources()}: lower the actors' resources, try "
                          "--placement_strategy spread/pack, or add nodes")
    return pg


def learner_gpus(cfg: TrainConfig) -> float:
    return 0.5 if cfg.run.colocate else cfg.run.num_gpus_per_actor


def _needed(cfg: TrainConfig) -> tuple[int, float, float]:
    others = 1 if cfg.ref_mode == "actor" else 0
    actors = cfg.run.number_of_actors + cfg.run.num_learners + others
    gpus = cfg.run.num_learners * learner_gpus(cfg) + cfg.run.number_of_actors * generator_gpus(cfg) + others * cfg.run.num_gpus_per_actor
    return actors, actors * cfg.run.num_cpus_per_actor, gpus


def check_resources(cfg: TrainConfig, available: dict[str, float],
                    nodes: dict[str, dict[str, float]] | None = None) -> None:
    """Raise ConfigError when the cluster cannot place every actor right now: too few CPUs/GPUs
    free in all, or no node big enough for one actor (an actor never spans nodes). `nodes`: each
    live node's total resources, named in the error so the user sees where they are."""
    actors, cpus, gpus = _needed(cfg)
    free_cpus, free_gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    per_node = ("; per node: " + ", ".join(f"{name} {r.get('CPU', 0):g} CPUs {r.get('GPU', 0):g} GPUs"
                                           for name, r in nodes.items())) if nodes else ""
    if cpus > free_cpus + 1e-9 or gpus > free_gpus + 1e-9:
        raise ConfigError(
            f"{actors} actors need {cpus:g} CPUs and {gpus:g} GPUs "
            f"({cfg.run.num_cpus_per_actor:g} CPU, {cfg.run.num_gpus_per_actor:g} GPU each) but the "
            f"cluster has {free_cpus:g} CPUs and {free_gpus:g} GPUs free{per_node}: lower --number_of_actors "
            "or --num_cpus_per_actor/--num_gpus_per_actor, or add nodes")
    biggest = max(bundles(cfg), key=lambda b: (b.get("GPU", 0.0), b["CPU"]))
    if nodes and not any(all(r.get(k, 0.0) + 1e-9 >= v for k, v in biggest.items()) for r in nodes.values()):
        raise ConfigError(f"one actor needs {biggest.get('CPU', 0):g} CPUs and {biggest.get('GPU', 0):g} GPUs on "
                          f"one node, and no node has that many{per_node}: lower --num_cpus_per_actor/"
                          "--num_gpus_per_actor/--gpus_per_actor, or add a bigger node")


def node_resources() -> dict[str, dict[str, float]]:
    """Each live node's total resources, by address."""
    return {n["NodeManagerAddress"]: n["Resources"] for n in ray.nodes() if n.get("Alive")}


def engine_max_len(cfg: TrainConfig, model_path: str) -> int:
    """A vLLM engine's longest sequence: --max_model_len, else the longest prompt any generator
    gets (training prompts are dropped or refused over --max_prompt_tokens, held-out ones left out
    in preflight) plus the completion budget, within the model's position limit."""
    if cfg.run.max_model_len or cfg.run.backend != "vllm":
        return cfg.run.max_model_len
    need = cfg.data.max_prompt_tokens + max(cfg.sampling.max_new_tokens, cfg.sampling.eval_tokens)
    limit = model_shape(model_path, cfg.model.trust_remote_code)["max_len"]
    return min(need, limit) if limit else need


def learner_sample_threads(run: RunConfig) -> int:
    """Threads the learner samples its chunk with: with generators running beside it, one, like
    each of them. Sampling a few dozen sequences is op overhead, not matrix work: one thread is
    as fast as two alone, and two threads on cores the generators also use stall each other
    (16 samples of SmolLM2 in bf16 next to two vLLM engines on 2 cores: 7.0 s with 2 threads,
    5.0 s with 1). 0 (its training threads) with --torch_threads or without generators."""
    return 1 if run.number_of_actors and not run.torch_threads else 0


def create_actors(cfg: TrainConfig, model_path: str) -> Actors:
    """Named actors (distrl-learner[-r], distrl-generator-i, distrl-reference), each in its bundle
    of one placement group, all started; learner ranks joined into one process group."""
    run = cfg.run
    pg = place(cfg)
    shape = bundles(cfg)
    n = run.num_learners

    def opts(i: int) -> dict:
        return dict(num_cpus=shape[i]["CPU"], num_gpus=shape[i].get("GPU", 0.0),
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i))

    learners = [ray.remote(LearnerActor).options(name=name, **opts(r)).remote(
        model_path, cfg.model, cfg.algo, cfg.sampling.temperature, ref_mode=cfg.ref_mode,
        seed=run.seed, torch_threads=run.torch_threads, max_staleness=run.async_staleness,
        max_new_tokens=cfg.sampling.max_new_tokens, world_size=n,
        correct_mismatch=cfg.corrects_mismatch, sample_threads=learner_sample_threads(run))
        for r, name in enumerate(learner_names(n))]
    vllm = dict(tensor_parallel_size=run.gpus_per_actor, gpu_memory_utilization=run.gpu_memory_utilization,
                max_model_len=engine_max_len(cfg, model_path), device=vllm_device(run.num_gpus_per_actor), colocate=run.colocate, kv_cache_gb=run.vllm_kv_cache_gb,
                torch_threads=run.torch_threads or 1)
    generators = [
        # Ray restarts a dead generator; the driver then reloads its weights and calls again
        # (max_task_retries=0: a call must never rerun on an actor that holds no weights).
        ray.remote(GenerationActor).options(name=f"distrl-generator-{i}", max_restarts=run.max_actor_restarts,
                                            max_task_retries=0, **opts(n + i)).remote(
            model_path, cfg.model, backend=run.backend, seed=run.seed,
            torch_threads=run.torch_threads or 1, vllm_options=vllm)
        for i in range(run.number_of_actors)]
    reference = None
    if cfg.ref_mode == "actor":
        reference = ray.remote(ReferenceActor).options(name="distrl-reference", **opts(len(shape) - 1)).remote(
            model_path, cfg.model, cfg.sampling.temperature, cfg.algo.micro_batch_size,
            torch_threads=run.torch_threads or 1)
    handles = [*learners, *generators] + ([reference] if reference else [])
    names = learner_names(n) + [f"distrl-generator-{i}" for i in range(len(generators))] + \
        (["distrl-reference"] if reference else [])
    info = dict(zip(names, ray.get([h.ready.remote() for h in handles], timeout=run.timeout_s)))
    if n > 1:
        address = ray.get(learners[0].rendezvous_address.remote(), timeout=run.timeout_s)
        joined = ray.get([h.join_group.remote(address, r, run.sync_timeout_s, run.fsdp)
                          for r, h in enumerate(learners)], timeout=run.timeout_s)
        for name, group in zip(learner_names(n), joined):
            info[name]["group"] = group
    return Actors(learners[0], generators, reference, pg, info, learners)
