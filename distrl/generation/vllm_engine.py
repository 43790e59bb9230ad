"""The vLLM side of a weight sync: a weight-transfer engine that takes policy weights from the
Ray object store, for vLLM's own RL update API (`LLM.start_weight_update` / `update_weights` /
`finish_weight_update`).

vLLM builds a weight-transfer engine inside every one of its workers, so this module registers
ours when it is imported, and the backend names `DistrlWorkerExtension` (below) as vLLM's
`worker_extension_cls`: vLLM imports this module in each worker before it loads the model. Each
worker then fetches the packed buffer from its node's object store (zero-copy on the node) and
hands every tensor to the model's own `load_weights`, which shards it for tensor parallelism.

The workers must be Ray workers of the same cluster to read the object store: in-process (`uni`:
one GPU, or the CPU build) or `distributed_executor_backend="ray"` (tensor parallel). Imports vLLM: only ever
imported where vLLM is installed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import ray
import ray.cloudpickle
import torch
from vllm.distributed.weight_transfer.base import (WeightTransferEngine, WeightTransferInitInfo,
                                                   WeightTransferUpdateInfo)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from distrl.weights import fingerprint, tensor_views

ENGINE_NAME = "distrl_object_store"
LOADED: dict[str, tuple[float, float]] = {}  # this worker process's last sync


def encode_ref(ref: ray.ObjectRef) -> str:
    """An ObjectRef as plain text, so it survives whatever vLLM uses to reach its workers. The
    caller holds the ref (it is the argument of the running load call) until the update ends."""
    return base64.b64encode(ray.cloudpickle.dumps(ref)).decode()


def release_encoded(ref: ray.ObjectRef) -> None:
    """Undo the reference `encode_ref` added. Ray pins a ref pickled out of band for the rest
    of the pickling process's life (it cannot know when the text is done with), so without
    this every published version stayed in the object store: +5.1 GB over 50 versions of
    SmolLM2 through two vLLM generators (bench/broadcast.py's store_growth_mb). Call it once the
    update that used the text has finished."""
    ray._private.worker.global_worker.core_worker.remove_object_ref_reference(ref)


def decode_ref(text: str) -> ray.ObjectRef:
    return ray.cloudpickle.loads(base64.b64decode(text))


@dataclass
class DistrlInitInfo(WeightTransferInitInfo):
    pass  # nothing to set up: the object store is already there


@dataclass
class DistrlUpdateInfo(WeightTransferUpdateInfo):
    ref: str  # encode_ref(ObjectRef of a distrl.weights.PackedWeights)
    policy_version: int


class DistrlObjectStoreEngine(WeightTransferEngine[DistrlInitInfo, DistrlUpdateInfo]):
    init_info_cls = DistrlInitInfo
    update_info_cls = DistrlUpdateInfo
    supports_draft_weight_update = False

    def init_transfer_engine(self, init_info: DistrlInitInfo) -> None:
        if not ray.is_initialized():
            raise RuntimeError("distrl weight sync: this vLLM worker is not a Ray worker, so it cannot "
                               "read the object store; use distributed_executor_backend='ray' or 'uni'")

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: DistrlUpdateInfo) -> None:
        packed = ray.get(decode_ref(update_info.ref))
        if packed.policy_version != update_info.policy_version:
            raise RuntimeError(f"distrl weight sync: object holds version {packed.policy_version}, "
                               f"expected {update_info.policy_version}")
        names = [name for name, _ in tensor_views(packed)]
        taken: list[torch.Tensor] = []

        def feed():  # what the model's loader really pulls, for the fingerprint
            for name, t in tensor_views(packed):
                taken.append(t)
                yield name, t.to(self.device, non_blocking=True)

        loaded = self.model.load_weights(feed())
        check_all_loaded(names, loaded, getattr(self.model, "packed_modules_mapping", {}))
        LOADED["fingerprint"] = fingerprint(taken)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        refresh_cpu_packed_weights(self.model)

    def shutdown(self) -> None:
        pass


def check_all_loaded(sent: list[str], loaded: set[str] | None, packed_modules: dict[str, list[str]]) -> None:
    """Strict loading, as the hf backend's: every tensor the learner sent must have reached a
    parameter. vLLM's layerwise reload otherwise keeps a layer that got nothing on its old weights
    and only logs it. `loaded` is what the model's `load_weights` reports, in vLLM's names, where
    `packed_modules` fuses some (q/k/v_proj -> qkv_proj); a model that reports nothing is not
    checked here (logprob_gap still is)."""
    if loaded is None:
        return
    fused = {part: whole for whole, parts in packed_modules.items() for part in parts}
    missing = [name for name in sent
               if name not in loaded and ".".join(fused.get(p, p) for p in name.split(".")) not in loaded]
    if missing:
        raise RuntimeError(f"distrl weight sync: the vLLM model took no parameter for {len(missing)} of "
                           f"{len(sent)} sent tensors (first: {missing[0]}); generators would keep old weights")


def refresh_cpu_packed_weights(model: torch.nn.Module) -> int:
    """Repack the CPU GEMM copy of every layer whose weight it shares with another layer.

    On CPU, vLLM multiplies with a separately packed copy of each weight, built once after
    loading. A layerwise reload rebuilds it only for layers that received a tensor. A tied output
    head (SmolLM2, Llama-3.2, Qwen2.5-0.5B) receives none: its weight is the embedding's, loaded
    under the embedding's name. The head would go on scoring with the old weights, a silent half
    sync. Layers with a weight of their own were rebuilt by the reload and are left alone. On GPU
    no layer has `cpu_linear`: nothing to do. Returns the number of layers repacked."""
    from collections import Counter

    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    layers = [m for m in model.modules() if hasattr(m, "cpu_linear") and isinstance(getattr(m, "weight", None), torch.Tensor)
              and m.weight.ndim == 2 and m.weight.numel() > 0 and not m.weight.is_meta]
    owners = Counter(m.weight.data_ptr() for m in layers)
    tied = [m for m in layers if owners[m.weight.data_ptr()] > 1]
    for module in tied:
        dispatch_cpu_unquantized_gemm(module, remove_weight=False)
    return len(tied)


class DistrlWorkerExtension:
    """Named as vLLM's `worker_extension_cls` so that every worker imports this module (and with
    it the engine registration); its method is called on every worker by `collective_rpc`."""

    def distrl_loaded_fingerprint(self) -> tuple[float, float] | None:
        """The fingerprint of the tensors this worker's model loader took in the last sync."""
        return LOADED.get("fingerprint")


try:
    WeightTransferEngineFactory.register_engine(ENGINE_NAME, DistrlObjectStoreEngine)
except ValueError:  # imported a second time in this process: already registered
    pass
