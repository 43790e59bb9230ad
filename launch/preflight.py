"""Everything checked and loaded before the cluster is touched: model, data, reward, the
checkpoint to resume from; and the start-up check that every actor sees the same tokens.

Bad input raises ConfigError here, so a run fails in seconds with one line, before any actor
starts. The training loop itself lives in `launch/driver.py`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

from distrl import checkpoint
from distrl.checkpoint import Checkpoint, CheckpointError
from distrl.config import ConfigError, TrainConfig
from distrl.data import load_splits
from distrl.data.datasets import FILE_ROW
from distrl.data.prompts import encode_prompt
from distrl.generation import resolve_backend
from distrl.generation.base import choose, vllm_device
from distrl.models import (check_quantizable, check_unsloth, load_tokenizer, resolve_model,
                           tokenizer_fingerprint)
from distrl.rewards import load_reward
from launch import disk, run_lock


@dataclasses.dataclass
class Setup:
    """Everything checked and loaded before the cluster is touched."""

    model_path: str
    tokenizer: Any
    train_rows: list[dict]
    eval_rows: list[dict]
    reward_specs: list[tuple[str, float]]  # (registered name or module:function, weight)
    output_dir: str
    backend: str = "hf"  # the generators' backend, auto resolved ("hf" or "vllm")
    resume: Checkpoint | None = None
    dtype: str = "float32"  # every actor's compute dtype, auto resolved
    checkpoint_bytes: int = 0  # about what one checkpoint writes (0: not known, e.g. LoRA)

    @property
    def checkpoint_root(self) -> str:
        return os.path.abspath(os.path.join(self.output_dir, "checkpoints"))



def preflight(cfg: TrainConfig) -> Setup:
    """Resolve model, data and reward; raise ConfigError on bad input. Starts no actor. Last,
    locks the run folder (launch/run_lock.py): a second run on the same folder stops here."""
    if cfg.run.backend == "vllm":  # refused at once where it cannot run, before any loading
        device = vllm_device(cfg.run.num_gpus_per_actor)
        resolve_backend("vllm", device=device)
        check_vllm_flags(cfg, device)
    import importlib.util

    for flag, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if getattr(cfg.run, flag) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"--{flag}: {package} is not installed; pip install {package}"
                              f"{' (then wandb login)' if flag == 'wandb' else ''}, or drop --{flag}")
    check_unsloth(cfg.model, cfg.run.num_gpus_per_actor)
    try:
        load_reward(cfg.data.reward)  # imports here, so a bad spec fails before any process starts
    except ValueError as e:
        raise ConfigError(str(e)) from e
    reward_specs = [(cfg.data.reward, 1.0)]
    if cfg.data.format_reward_weight:
        reward_specs.append(("format", cfg.data.format_reward_weight))
    train_rows, eval_rows = load_splits(cfg.data, cfg.run.seed)
    model_path = resolve_model(cfg.model.model)
    dtype = choose_run_dtype(cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))
    backend = choose_backend(cfg, model_path)
    if cfg.run.learner_chunk_size < 0:
        chunk, reason = cfg.run.learner_chunk(backend, vllm_device(cfg.run.num_gpus_per_actor))
        print(f"learner_chunk_size auto: {chunk} ({reason})", flush=True)
    check_quantizable(model_path, cfg.model)
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    if cfg.data.long_prompts == "error":
        check_prompt_lengths(tokenizer, train_rows, cfg)
    eval_rows = drop_long_eval_prompts(tokenizer, eval_rows, cfg)
    resume = find_resume(cfg)
    if resume is not None and not cfg.run.run_name:
        output_dir = resume.run_dir  # a resumed run goes on writing where it started
    else:
        output_dir = os.path.join(cfg.run.output_dir, cfg.run.run_name or time.strftime("run-%Y%m%d-%H%M%S"))
    run_lock.hold(output_dir)
    need = disk.checkpoint_bytes(cfg, model_path)
    disk.warn_if_short(output_dir, need)
    return Setup(model_path, tokenizer, train_rows, eval_rows, reward_specs, output_dir, backend, resume, dtype, need)


def choose_run_dtype(cfg: TrainConfig, quiet: bool = False) -> str:
    """The one compute dtype every actor of this run uses, auto resolved for the device the
    actors run on (this machine's CPU flags; a cluster is assumed alike) and printed with why."""
    from distrl.precision import choose_dtype, dtype_name

    lora = cfg.model.lora_rank > 0
    masters = cfg.algo.optimizer in ("auto", "cpu_adamw") and not cfg.run.fsdp
    dtype, reason = choose_dtype(cfg.model.dtype, vllm_device(cfg.run.num_gpus_per_actor), lora, masters)
    if cfg.model.dtype == "auto" and not quiet:
        print(f"dtype auto: {dtype_name(dtype)} ({reason})", flush=True)
    return dtype_name(dtype)


def choose_backend(cfg: TrainConfig, model_path: str) -> str:
    """The generators' backend for this model, auto resolved and printed with its reason. An
    explicit vllm is refused (one line) where it cannot serve this model; auto falls back to hf."""
    from distrl.generation.base import CPU_HEAD_SIZES, model_shape
    device = vllm_device(cfg.run.num_gpus_per_actor)
    lora = cfg.model.lora_rank > 0
    dtype = choose_run_dtype(cfg, quiet=True)  # already concrete after preflight resolved it
    auto = cfg.run.backend == "auto"
    backend, reason = choose(cfg.run.backend, model_path, dtype, lora, device)
    if backend == "vllm":
        try:
            check_vllm_flags(cfg, device)
            head_dim = model_shape(model_path, cfg.model.trust_remote_code)["head_dim"]
            if device == "cpu" and head_dim is not None and head_dim not in CPU_HEAD_SIZES:
                raise ConfigError(f"--backend vllm on CPU: this model's head size {head_dim} is not one the CPU "
                                  f"attention kernels take ({', '.join(map(str, CPU_HEAD_SIZES))}); use --backend hf")
        except ConfigError as e:
            if not auto:
                raise
            backend, reason = "hf", f"vllm cannot run these flags: {e}"
    if auto:
        print(f"backend auto: {backend} ({reason})", flush=True)
    if backend != "vllm" and cfg.run.colocate:
        raise ConfigError("--colocate shares one GPU between the learner and a sleeping vLLM engine: it "
                          "needs the vllm backend (vllm and a CUDA GPU); drop --colocate here")
    return backend


def check_vllm_flags(cfg: TrainConfig, device: str) -> None:
    """What the vllm backend cannot do with these flags; on CPU, what the CPU engine cannot do."""
    if cfg.sampling.top_p < 1.0:
        raise ConfigError("--backend vllm reports log-probs of the top-p truncated distribution, not "
                          "the one the learner computes: use --top_p 1.0")
    if device != "cpu":
        return
    if cfg.run.colocate:
        raise ConfigError("--colocate shares one GPU between the learner and a sleeping vLLM engine, and vLLM "
                          "has no sleep mode on CPU: drop --colocate here")
    if cfg.run.gpus_per_actor > 1:
        raise ConfigError(f"--gpus_per_actor {cfg.run.gpus_per_actor} is tensor parallelism over GPUs, and "
                          "this run has none (--num_gpus_per_actor 0): drop it (more CPU engines: "
                          "--number_of_actors)")
    if cfg.model.load_in_4bit:
        raise ConfigError("--load_in_4bit with --backend vllm on CPU: the CPU engine has no bitsandbytes "
                          "4-bit kernels; use --backend hf for QLoRA on CPU")


def drop_long_eval_prompts(tokenizer: Any, rows: list[dict], cfg: TrainConfig) -> list[dict]:
    """Held-out prompts over --max_prompt_tokens are left out of evaluation, with a warning: no
    generator is sized for them (a vLLM engine's max_model_len is built from that limit)."""
    limit = cfg.data.max_prompt_tokens
    kept = [row for row in rows if len(encode_prompt(tokenizer, row["prompt"], cfg.data.system_prompt)) <= limit]
    if len(kept) < len(rows):
        print(f"warning: {len(rows) - len(kept)} held-out prompts are longer than --max_prompt_tokens "
              f"{limit} and are left out of evaluation", file=sys.stderr, flush=True)
    if rows and not kept:
        raise ConfigError(f"every held-out prompt is longer than --max_prompt_tokens {limit}: raise it")
    return kept


# What the learner's saved state depends on: a checkpoint only loads into the same shapes.
RESUME_MUST_MATCH = (("model", "model"), ("model", "lora_rank"), ("model", "lora_target_modules"),
                     ("model", "load_in_4bit"), ("algo", "optimizer"),
                     # A sharded optimizer (CPUAdamW over ranks, FSDP) is saved per layout.
                     ("run", "num_learners"), ("run", "fsdp"))
_OLD_DEFAULTS = {"num_learners": 1, "fsdp": False}  # for checkpoints written before these flags


def find_resume(cfg: TrainConfig) -> Checkpoint | None:
    """The checkpoint `--resume` names, checked (safe files, same model shapes, steps left)."""
    if not cfg.run.resume:
        return None
    try:
        found = checkpoint.resolve(cfg.run.resume, cfg.run.output_dir, cfg.run.run_name)
        if found is None:
            print(f"resume auto: no checkpoint under {cfg.run.output_dir}; starting from step 0", flush=True)
            return None
        checkpoint.check_safe(found.path)
    except CheckpointError as e:
        raise ConfigError(str(e)) from e
    saved, now = found.trainer_state()["config"], cfg.to_dict()
    for part, name in RESUME_MUST_MATCH:
        if saved[part].get(name, _OLD_DEFAULTS.get(name)) != now[part][name]:
            raise ConfigError(f"checkpoint {found.path} was written with --{name} {saved[part].get(name)!r}, "
                              f"this run has {now[part][name]!r}: its state only loads into the same "
                              f"setting (use --{name} {saved[part].get(name)!r} or start a new run)")
    if found.step >= cfg.run.max_steps:
        raise ConfigError(f"checkpoint {found.path} is at step {found.step} and --max_steps is "
                          f"{cfg.run.max_steps}: nothing left to train; raise --max_steps")
    return found


def check_prompt_lengths(tokenizer: Any, rows: list[dict], cfg: TrainConfig) -> None:
    """--long_prompts error: every training prompt is tokenized now, before any actor starts."""
    limit = cfg.data.max_prompt_tokens
    long = sorted(row.get(FILE_ROW, i + 1) for i, row in enumerate(rows)
                  if len(encode_prompt(tokenizer, row["prompt"], cfg.data.system_prompt)) > limit)
    if long:
        raise ConfigError(f"{len(long)} training prompts are longer than --max_prompt_tokens {limit} "
                          f"(rows {', '.join(map(str, long[:5]))}{', ...' if len(long) > 5 else ''} of "
                          f"{cfg.data.dataset}, counting from 1 in its order): raise the limit, shorten them, "
                          "or --long_prompts drop")


def check_tokenizers(tokenizer: Any, info: dict[str, dict]) -> None:
    """Every actor must see the token ids the driver sees: same vocabulary, special tokens and
    chat template, and the same EOS ids on every actor that generates."""
    expected = tokenizer_fingerprint(tokenizer)
    for name, said in info.items():
        if "tokenizer" in said and said["tokenizer"] != expected:
            raise ConfigError(f"{name} loaded a different tokenizer (vocabulary, special tokens or chat "
                              "template) than the driver: every actor must load the same model folder")
    eos = {name: said["eos_ids"] for name, said in info.items() if said.get("eos_ids") is not None}
    if len({tuple(ids) for ids in eos.values()}) > 1:
        raise ConfigError(f"actors stop generation at different EOS ids ({eos}): every actor must load "
                          "the same model folder and generation config")
