"""Run configuration: frozen dataclasses, one documented field each; the CLI is built from them.

`TrainConfig` groups five sub-configs so each actor receives only what it needs: the model
config goes to every actor, sampling to generators, the algorithm to the learner, data and run
settings stay in the driver. Validation that needs no I/O happens in `__post_init__`; checks that
touch the disk or the cluster (model path, dataset fields, free resources) live in `launch/`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from distrl.algorithms import LEARNERS, LOSS_AGGREGATIONS
from distrl.optim import OPTIMIZERS

DEFAULT_MODEL = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """Bad user input; the entry point prints it as one line and exits with code 2."""


class RunStopped(RuntimeError):
    """A run that cannot go on (an actor lost for good, updates that keep failing); the entry
    point prints it as one line, which says how to continue, and exits with code 1."""


def _field(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class ModelConfig:
    model: str = _field(DEFAULT_MODEL, f"Policy model: '{DEFAULT_MODEL}' (embedded, no hub needed), "
                        "a local folder, or a hub id (only when the hub is reachable).")
    lora_rank: int = _field(0, "LoRA rank; 0 trains all weights (full fine-tune).")
    lora_alpha: int = _field(32, "LoRA alpha (scale = alpha / rank).")
    lora_target_modules: str = _field("all-linear", "Modules that get LoRA: 'all-linear' or a "
                                      "comma-separated list of module names (e.g. q_proj,v_proj).")
    load_in_4bit: bool = _field(False, "QLoRA: load the base model in 4-bit NF4 with bitsandbytes "
                                "(needs --lora_rank > 0); generators use the same 4-bit base.")
    gradient_checkpointing: bool = _field(False, "Recompute activations in backward (learner only).")
    unsloth: bool = _field(False, "Load the learner with Unsloth's FastLanguageModel (needs a CUDA "
                           "GPU and `pip install -r requirements-unsloth.txt`).")
    dtype: str = _field("auto", "Weights dtype: auto (bfloat16 on CUDA with LoRA, whose adapter "
                        "stays fp32; else float32), float32, bfloat16, float16.",
                        choices=["auto", "float32", "bfloat16", "float16"])
    trust_remote_code: bool = _field(False, "Allow model code from the model folder/hub to run.")

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ConfigError(f"--lora_rank must be >= 0 (0 = full fine-tune), got {self.lora_rank}")



@dataclass(frozen=True)
class DataConfig:
    dataset: str = _field("arithmetic", "Training data: 'arithmetic' (built-in, seeded 2-digit + - x), "
                          "a local .jsonl/.json/.parquet/.csv file, or a hub id.")
    prompt_field: str = _field("prompt", "Column holding the question.")
    answer_field: str = _field("answer", "Column holding the reference answer.")
    eval_dataset: str = _field("", "Held-out data (same forms as --dataset); empty = split off "
                               "--eval_fraction of the training data.")
    eval_fraction: float = _field(0.1, "Fraction of the training data held out when there is no "
                                  "--eval_dataset.")
    num_eval: int = _field(50, "Held-out prompts scored (greedy) at each evaluation.")
    system_prompt: str = _field("", "System message put before each prompt by the chat template; "
                                "empty = the template's default.")
    reward: str = _field("numeric", "Reward: 'numeric' (last number or \\boxed{} equals the answer), "
                         "'math_verify' (math-verify equivalence), or 'module:function'.")
    format_reward_weight: float = _field(0.0, "Weight of an extra format reward (the completion "
                                         "ends with its answer); 0 = off.")
    reward_timeout_s: float = _field(10.0, "Deadline for one reward call (one completion); a call "
                                     "past it scores --reward_default and is counted.")
    reward_default: float = _field(0.0, "Score of a completion whose reward raised or timed out.")
    max_reward_error_rate: float = _field(0.1, "Stop the run when more than this fraction of a "
                                          "step's reward calls raise or time out.")
    max_prompt_tokens: int = _field(1024, "Longest prompt (chat template included), in tokens.")
    long_prompts: str = _field("drop", "Prompts over --max_prompt_tokens: drop (skipped when drawn, "
                               "counted in prompts_dropped) or error (all rows checked before the "
                               "run starts).", choices=["drop", "error"])

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"--eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0.0 <= self.max_reward_error_rate <= 1.0:
            raise ConfigError(f"--max_reward_error_rate must be in [0, 1], got {self.max_reward_error_rate}")
        if self.reward_timeout_s <= 0:
            raise ConfigError(f"--reward_timeout_s must be > 0, got {self.reward_timeout_s}")
        if self.num_eval < 1:
            raise ConfigError(f"--num_eval must be >= 1, got {self.num_eval}")
        if self.max_prompt_tokens < 1:
            raise ConfigError(f"--max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = _field(32, "Longest completion, in tokens.")
    temperature: float = _field(1.0, "Sampling temperature (log-probs are taken at this temperature).")
    top_p: float = _field(1.0, "Nucleus sampling; 1.0 = off.")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class AlgoConfig:
    learner: str = _field("grpo", "Learning algorithm.", choices=sorted(LEARNERS))
    lr: float = _field(1e-5, "AdamW learning rate.")
    beta: float = _field(0.0, "KL coefficient to the reference model (k3 estimator); 0 = no "
                         "reference model.")
    clip_eps: float = _field(0.2, "PPO clip range for the ratio against generation-time log-probs.")
    topk: int = _field(0, "Keep only the k best completions per prompt before learning; 0 = all.")
    loss_agg: str = _field("token_mean", "Loss aggregation: token_mean (all tokens of the batch "
                           "weigh equally) or seq_mean_token_mean (each sequence weighs equally).",
                           choices=list(LOSS_AGGREGATIONS))
    std_floor: float = _field(1e-4, "Groups whose reward std is below this get advantage 0.")
    micro_batch_size: int = _field(8, "Sequences per forward/backward pass.")
    max_tokens_per_microbatch: int = _field(0, "Also cap each micro-batch at this many padded tokens "
                                            "(rows x longest row; rows grouped by length); 0 = no cap.")
    logprob_chunk_size: int = _field(0, "Compute log-probs from the last hidden states this many "
                                     "completion positions at a time, so the full (B, T, vocab) "
                                     "logits never exist at once; 0 = one full forward.")
    max_grad_norm: float = _field(1.0, "Global gradient-norm clip; 0 = off.")
    weight_decay: float = _field(0.0, "AdamW weight decay.")
    optimizer: str = _field("adamw", "adamw (torch fused, state beside the weights), cpu_adamw (fp32 "
                            "master weights and moments in CPU memory), adamw_8bit (bitsandbytes).",
                            choices=list(OPTIMIZERS))
    max_importance_weight: float = _field(2.0, "With --async_staleness: cap on the per-token weight "
                                          "pi_learner / pi_generator that corrects for rollouts "
                                          "from an older policy (truncated importance sampling).")
    grad_offload: bool = _field(False, "With cpu_adamw: move each gradient to CPU as backward "
                                "produces it, so the device never holds a full gradient buffer.")

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.beta < 0:
            raise ConfigError(f"--beta must be >= 0, got {self.beta}")
        if self.grad_offload and self.optimizer != "cpu_adamw":
            raise ConfigError("--grad_offload needs --optimizer cpu_adamw")
        if self.micro_batch_size < 1:
            raise ConfigError(f"--micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.max_importance_weight < 1:
            raise ConfigError(f"--max_importance_weight must be >= 1, got {self.max_importance_weight}")


@dataclass(frozen=True)
class RunConfig:
    number_of_actors: int = _field(2, "Generation actors besides the learner.")
    batch_size: int = _field(8, "Prompts per step (learner chunk + generators' share).")
    num_candidates: int = _field(4, "Completions sampled per prompt (the group size).")
    learner_chunk_size: int = _field(2, "Prompts per step the learner generates itself; the rest "
                                     "is split evenly over the generation actors.")
    max_steps: int = _field(20, "Training steps (one optimizer update each).")
    backend: str = _field("auto", "Generation backend: auto (vllm on GPU when installed, else hf), "
                          "hf (transformers), vllm.", choices=["auto", "hf", "vllm"])
    eval_every: int = _field(10, "Evaluate every N steps (always at step 0 and at the end); 0 = "
                             "only then.")
    ref_mode: str = _field("auto", "Reference log-probs for the KL term: actor (a ReferenceActor), "
                           "adapter_disabled (LoRA base model inside the learner), none, or auto "
                           "(none when --beta 0, adapter_disabled with LoRA, else actor).",
                           choices=["auto", "actor", "adapter_disabled", "none"])
    plot_every: int = _field(10, "Redraw PNG plots in output_dir/run_name/plots every N steps (and "
                             "always at the end); 0 = only at the end.")
    seed: int = _field(0, "Seed for data order, sampling and initialisation.")
    output_dir: str = _field("outputs", "Folder for runs; each run writes to output_dir/run_name.")
    run_name: str = _field("", "Run folder name; empty = a timestamp.")
    ray_address: str = _field("", "Ray cluster to join (also RAY_ADDRESS); empty = start a local one.")
    num_cpus_per_actor: float = _field(0.5, "CPUs Ray reserves for each actor.")
    num_gpus_per_actor: float = _field(0.0, "GPUs Ray reserves for each actor (1 on a GPU box).")
    torch_threads: int = _field(0, "Torch threads per actor; 0 = auto (generators 1, learner all "
                                "cores of its node).")
    timeout_s: float = _field(1800.0, "Deadline for any single remote call (generation, learning).")
    sync_timeout_s: float = _field(120.0, "Deadline for every generator to load a new policy version; "
                                   "a generator that misses it stops the run with its name.")
    gpus_per_actor: int = _field(1, "vLLM: GPUs per generation actor (its tensor-parallel size).")
    gpu_memory_utilization: float = _field(0.85, "vLLM: fraction of each GPU the engine may take.")
    max_model_len: int = _field(0, "vLLM: longest prompt + completion; 0 = the model's own limit.")
    colocate: bool = _field(False, "vLLM on one GPU: the learner and one generator share it; the "
                            "engine sleeps while the learner trains.")
    tensorboard: bool = _field(False, "Also write TensorBoard scalars to output_dir/run_name/tensorboard.")
    wandb: bool = _field(False, "Also log to Weights & Biases (project distrl), if wandb is installed.")
    log_samples: int = _field(2, "Prompts per step written to samples.jsonl (first completion, its "
                              "reward); 0 = none.")
    placement_strategy: str = _field("pack", "Placement group strategy for the actors' bundles: "
                                     "pack (as few nodes as possible) or spread (over nodes).",
                                     choices=["pack", "spread"])
    placement_timeout_s: float = _field(60.0, "Deadline for the cluster to place every actor's "
                                        "bundle; a miss is an error naming what was asked.")
    async_staleness: int = _field(0, "Asynchronous mode: generators keep sampling while the learner "
                                  "trains, and the learner takes rollouts at most this many policy "
                                  "versions old (off-policy corrected, decoupled PPO). 0 = synchronous.")
    save_every: int = _field(10, "Checkpoint every N steps (and always at the end) to "
                             "output_dir/run_name/checkpoints; 0 = only at the end.")
    keep_checkpoints: int = _field(2, "Keep the newest N checkpoints; 0 = keep all.")
    resume: str = _field("", "Continue a run: 'auto' (the newest checkpoint of --run_name, or of the "
                         "newest run in --output_dir; a fresh start when there is none) or a "
                         "checkpoint/run folder. Empty = start from step 0.")
    auto_resume: bool = _field(False, "When the learner or reference actor dies (or a generator "
                               "cannot be restarted), restart every actor from the last checkpoint "
                               "by itself (at most --max_auto_resumes times) instead of stopping.")
    max_auto_resumes: int = _field(3, "With --auto_resume: restarts from a checkpoint per run.")
    max_actor_restarts: int = _field(3, "Times Ray restarts a dead generation actor; it then loads "
                                     "the current weights and regenerates its prompts of the step.")
    max_bad_steps: int = _field(3, "Stop after this many updates in a row skipped for a non-finite "
                                "loss or gradient norm.")
    weight_sync_every: int = _field(1, "Broadcast new weights to the generators every N learner "
                                    "updates (rollouts then lag up to N-1 versions: needs "
                                    "--async_staleness >= N-1).")

    @property
    def pipeline_depth(self) -> int:
        """How many batches generators may run ahead of the one the learner trains: the staleness
        budget left after the lag that syncing every N updates costs."""
        return self.async_staleness - (self.weight_sync_every - 1)

    def __post_init__(self) -> None:
        if self.colocate and self.number_of_actors != 1:
            raise ConfigError("--colocate shares one GPU between the learner and one generator: "
                              "set --number_of_actors 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"--gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.gpus_per_actor < 1:
            raise ConfigError(f"--gpus_per_actor must be >= 1, got {self.gpus_per_actor}")
        if self.async_staleness < 0:
            raise ConfigError(f"--async_staleness must be >= 0, got {self.async_staleness}")
        if self.weight_sync_every < 1:
            raise ConfigError(f"--weight_sync_every must be >= 1, got {self.weight_sync_every}")
        if self.pipeline_depth < 0:
            raise ConfigError(f"--weight_sync_every {self.weight_sync_every} lets rollouts lag "
                              f"{self.weight_sync_every - 1} versions behind the learner: set "
                              f"--async_staleness >= {self.weight_sync_every - 1}")
        for name in ("save_every", "keep_checkpoints", "max_auto_resumes", "max_actor_restarts"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"--max_bad_steps must be >= 1, got {self.max_bad_steps}")
        if self.number_of_actors < 0:
            raise ConfigError(f"--number_of_actors must be >= 0, got {self.number_of_actors}")
        if self.num_candidates < 1:
            raise ConfigError(f"--num_candidates must be >= 1, got {self.num_candidates}")
        if self.timeout_s <= 0 or self.sync_timeout_s <= 0:
            raise ConfigError("--timeout_s and --sync_timeout_s must be > 0")
        if self.max_steps < 0:
            raise ConfigError(f"--max_steps must be >= 0, got {self.max_steps}")
        if not 0 <= self.learner_chunk_size <= self.batch_size:
            raise ConfigError(f"--learner_chunk_size must be in [0, --batch_size={self.batch_size}], "
                              f"got {self.learner_chunk_size}")
        if self.number_of_actors == 0 and self.learner_chunk_size < self.batch_size:
            raise ConfigError("with --number_of_actors 0 the learner generates everything: set "
                              f"--learner_chunk_size {self.batch_size} (= --batch_size)")
        shared = self.batch_size - self.learner_chunk_size
        if self.number_of_actors > 0 and shared < self.number_of_actors:
            raise ConfigError(f"--batch_size {self.batch_size} leaves {shared} prompts for "
                              f"{self.number_of_actors} generation actors; each needs at least one: "
                              f"raise --batch_size to >= {self.learner_chunk_size + self.number_of_actors}"
                              " or lower --number_of_actors")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.algo.topk > self.run.num_candidates:
            raise ConfigError(f"--topk {self.algo.topk} is larger than --num_candidates "
                              f"{self.run.num_candidates}: keep at most as many as are sampled")
        if self.algo.topk < 0:
            raise ConfigError(f"--topk must be >= 0, got {self.algo.topk}")
        group = self.algo.topk or self.run.num_candidates
        if LEARNERS[self.algo.learner].needs_groups and group < 2:
            raise ConfigError(f"--learner {self.algo.learner} compares completions within a group: "
                              "use --num_candidates >= 2 (and --topk 0 or >= 2)")
        if self.model.load_in_4bit and self.model.lora_rank == 0:
            raise ConfigError("--load_in_4bit trains a LoRA adapter on a frozen 4-bit base: set "
                              "--lora_rank (e.g. 16)")
        if (self.model.dtype in ("bfloat16", "float16") and self.model.lora_rank == 0
                and self.algo.optimizer != "cpu_adamw"):
            raise ConfigError(f"--dtype {self.model.dtype} full fine-tuning with --optimizer "
                              f"{self.algo.optimizer} loses every update smaller than the weights' "
                              "precision: use --optimizer cpu_adamw (fp32 masters), LoRA, or --dtype float32")
        if self.algo.beta > 0 and self.run.ref_mode == "none":
            raise ConfigError(f"--beta {self.algo.beta} needs reference log-probs: use --ref_mode "
                              "auto/actor (or adapter_disabled with LoRA), or --beta 0")
        if self.ref_mode == "adapter_disabled" and self.model.lora_rank == 0:
            raise ConfigError("--ref_mode adapter_disabled needs LoRA (--lora_rank > 0)")

    @property
    def ref_mode(self) -> str:
        """The resolved reference mode: never 'auto'."""
        mode = self.run.ref_mode
        if self.algo.beta == 0:
            return "none"
        if mode == "auto":
            return "adapter_disabled" if self.model.lora_rank > 0 else "actor"
        return mode

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        parts = {f.name: f.type for f in dataclasses.fields(cls)}
        classes = {"model": ModelConfig, "data": DataConfig, "sampling": SamplingConfig,
                   "algo": AlgoConfig, "run": RunConfig}
        assert set(parts) == set(classes)
        return cls(**{name: classes[name](**d.get(name, {})) for name in classes})


SUB_CONFIGS = (ModelConfig, DataConfig, SamplingConfig, AlgoConfig, RunConfig)


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse command-line flags into a TrainConfig (flags are the sub-configs' fields)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(SUB_CONFIGS, description="Distributed RL fine-tuning of language models on Ray.")
    parts = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
    return TrainConfig(*parts)
