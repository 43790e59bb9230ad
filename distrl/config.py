"""Run configuration: frozen dataclasses, one documented field each; the CLI is built from them.

`TrainConfig` groups five sub-configs so each actor receives only what it needs: the model
config goes to every actor, sampling to generators, the algorithm to the learner, data and run
settings stay in the driver. Validation that needs no I/O happens in `__post_init__`; checks that
touch the disk or the cluster (model path, dataset fields, free resources) live in `launch/`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Sequence

from distrl.algorithms import ADVANTAGES, KL_ESTIMATORS, LEARNERS, LOSS_AGGREGATIONS, POLICY_LOSSES
from distrl.optim import LR_SCHEDULES, OPTIMIZERS

DEFAULT_MODEL = "smollm2-135m-instruct"

# --algo_preset NAME sets these flags' defaults (flags given explicitly still win). Sources:
ALGO_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (Shao et al. 2024): z-scored groups, PPO-clip 0.2, per-sequence token mean, k3 KL 0.04.
    "grpo": dict(learner="grpo", clip_eps=0.2, loss_agg="seq_mean_token_mean", beta=0.04, kl_estimator="k3"),
    # Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no std, no length normalisation, no KL.
    "dr_grpo": dict(learner="dr_grpo", clip_eps=0.2, loss_agg="seq_mean_token_sum_norm", beta=0.0),
    # DAPO (Yu et al. 2025): clip-higher 0.2/0.28, token-level loss, dynamic sampling, overlong shaping, no KL.
    "dapo": dict(learner="grpo", clip_eps_low=0.2, clip_eps_high=0.28, loss_agg="token_mean", beta=0.0,
                 dynamic_sampling=True, overlong_buffer=8),
    # GSPO (Zheng et al. 2025): sequence-level ratio clipped to [1 - 3e-4, 1 + 4e-4], no KL.
    "gspo": dict(learner="gspo", clip_eps_low=3e-4, clip_eps_high=4e-4, loss_agg="seq_mean_token_mean", beta=0.0),
}


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
    dtype: str = _field("auto", "Compute dtype of every actor: auto (bfloat16 on a CPU with AMX/AVX512-BF16 "
                        "units and on CUDA with LoRA, trained weights kept as fp32 masters or fp32 "
                        "adapters; else float32; printed at start-up), float32, bfloat16, float16.",
                        choices=["auto", "float32", "bfloat16", "float16"])
    trust_remote_code: bool = _field(False, "Allow model code from the model folder/hub to run.")
    compile: str = _field("auto", "torch.compile each decoder layer for the learner's forward and backward: "
                          "auto (on for bf16/fp16 on CPU with a model of >= 20M parameters, where fusing the "
                          "elementwise work around the matmuls is most of the gain; the first compile takes "
                          "~30 s and is cached on disk), on, off.", choices=["auto", "on", "off"])

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ConfigError(f"--lora_rank must be >= 0 (0 = full fine-tune), got {self.lora_rank}")



@dataclass(frozen=True)
class DataConfig:
    dataset: str = _field("arithmetic", "Training data: a built-in task (arithmetic: 2-digit + - x; word, "
                          "two_step, big_numbers, gsm_format: see distrl/data/tasks.py), a local "
                          ".jsonl/.json/.parquet/.csv file, or a hub id.")
    prompt_field: str = _field("prompt", "Column holding the question.")
    answer_field: str = _field("answer", "Column holding the reference answer.")
    eval_dataset: str = _field("", "Held-out data (same forms as --dataset); empty = the built-in "
                               "task's --eval_split, or --eval_fraction split off a file's rows.")
    eval_split: str = _field("test", "Split of a built-in task that held-out evaluation scores: test "
                             "(report a result) or validation (choose settings on it).",
                             choices=["test", "validation"])
    eval_fraction: float = _field(0.1, "Fraction of the training data held out when there is no "
                                  "--eval_dataset.")
    num_eval: int = _field(50, "Held-out prompts scored (greedy) at each evaluation.")
    system_prompt: str = _field("", "System message put before each prompt by the chat template; "
                                "empty = the template's default.")
    reward: str = _field("numeric", "Reward: 'numeric' (1 when the last number or \\boxed{} "
                         "equals the answer, else 0; chosen on validation data: README, 'Does it "
                         "learn?'), 'numeric_close' (1 when equal, else partial credit below 0.5 that "
                         "shrinks with the distance: for tasks where exact answers never come), "
                         "'numeric_digits' (1 when equal, else credit below 0.5 for the answer's "
                         "trailing digits that match), 'math_verify' (math-verify equivalence), or 'module:function'.")
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
    max_new_tokens: int = _field(48, "Longest completion, in tokens (chosen on validation data: README, "
                                 "'Does it learn?').")
    temperature: float = _field(0.7, "Sampling temperature (log-probs are taken at this temperature; "
                                "0.7 chosen on validation data: README, 'Does it learn?').")
    top_p: float = _field(1.0, "Nucleus sampling; 1.0 = off.")
    eval_max_new_tokens: int = _field(0, "Token budget of held-out evaluation, its own so that a short "
                                      "training budget cannot cut answers off and count them wrong; "
                                      "0 = max(48, --max_new_tokens).")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.eval_max_new_tokens < 0:
            raise ConfigError(f"--eval_max_new_tokens must be >= 1 (0 = auto), got {self.eval_max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top_p must be in (0, 1], got {self.top_p}")

    @property
    def eval_tokens(self) -> int:
        """The evaluation budget: --eval_max_new_tokens, or max(48, --max_new_tokens)."""
        return self.eval_max_new_tokens or max(48, self.max_new_tokens)


@dataclass(frozen=True)
class AlgoConfig:
    learner: str = _field("grpo", "Learning algorithm.", choices=sorted(LEARNERS))
    lr: float = _field(1e-5, "AdamW learning rate.")
    lr_schedule: str = _field("linear", "The lr over the run: decayed to 0 at the end of --max_steps or "
                              "--time_budget_s, whichever comes first (linear, cosine; chosen on validation "
                              "data: README, Does it learn?), or constant. A resumed time budget decays again "
                              "over its new budget.",
                              choices=list(LR_SCHEDULES))
    beta: float = _field(0.0, "KL coefficient to the reference model (k3 estimator); 0 = no "
                         "reference model.")
    algo_preset: str = _field("", "Set the flags below as a paper did (explicit flags still win): grpo, "
                              "dr_grpo, dapo, gspo; see the README's Algorithms section.",
                              choices=list(ALGO_PRESETS))
    advantage: str = _field("", "Advantage estimator; empty = the --learner's.", choices=sorted(ADVANTAGES))
    policy_loss: str = _field("", "Policy loss; empty = the --learner's.", choices=sorted(POLICY_LOSSES))
    clip_eps: float = _field(0.2, "PPO clip range for the ratio against generation-time log-probs.")
    clip_eps_low: float = _field(0.0, "Lower clip range (ratio >= 1 - this); 0 = --clip_eps.")
    clip_eps_high: float = _field(0.0, "Upper clip range (ratio <= 1 + this; DAPO's clip-higher: "
                                  "0.28); 0 = --clip_eps.")
    kl_estimator: str = _field("k3", "KL estimator: k1 (log-ratio), k2 (half squared log-ratio), k3 "
                               "(exp(-d) + d - 1, always >= 0).", choices=list(KL_ESTIMATORS))
    kl_in_reward: bool = _field(False, "Subtract --beta x the completion's summed KL from its reward "
                                "(REINFORCE++) instead of adding the KL to the loss; needs a "
                                "reference actor (--ref_mode actor or auto without LoRA).")
    min_group_std: float = _field(0.0, "Drop groups whose reward std is below this before learning "
                                  "(reason-llm used 0.1); 0 = keep all.")
    positive_only: bool = _field(False, "Train only on completions with a positive advantage.")
    overlong_buffer: int = _field(0, "DAPO's soft overlong penalty: completions longer than "
                                  "--max_new_tokens minus this lose reward linearly, down to "
                                  "-overlong_penalty at --max_new_tokens; 0 = off.")
    overlong_penalty: float = _field(1.0, "Largest overlong penalty (see --overlong_buffer).")
    entropy_coef: float = _field(0.0, "Entropy bonus: the loss subtracts this x the mean token "
                                 "entropy of the policy; 0 = off (no extra cost).")
    topk: int = _field(0, "Keep only the k best completions per prompt before learning; 0 = all.")
    loss_agg: str = _field("token_mean", "Loss aggregation: token_mean (all tokens of the batch "
                           "weigh equally) or seq_mean_token_mean (each sequence weighs equally).",
                           choices=list(LOSS_AGGREGATIONS))
    std_floor: float = _field(1e-4, "Groups whose reward std is below this get advantage 0.")
    micro_batch_size: int = _field(0, "Sequences per forward/backward pass; 0 = auto: 32 where the "
                                   "learner trains in bf16/fp16 on CPU (AMX pays on long matrices), "
                                   "16 in fp32 on CPU, 8 on GPU.")
    max_tokens_per_microbatch: int = _field(0, "Also cap each micro-batch at this many padded tokens "
                                            "(rows x longest row; rows grouped by length); 0 = no cap "
                                            "(2048 with the auto micro-batch of 32).")
    gap_rows: int = _field(2, "Rows without a gradient (advantage 0, no KL or entropy term) are "
                           "forwarded only to measure logprob_gap: at most this many per sampler (the "
                           "learner, each generator), step and learner rank, spread over its groups; "
                           "0 = every row.")
    logprob_chunk_size: int = _field(0, "Compute log-probs from the last hidden states this many "
                                     "completion positions at a time, so the full (B, T, vocab) "
                                     "logits never exist at once; 0 = one full forward.")
    updates_per_batch: int = _field(1, "Optimizer steps on each step's rollouts (GRPO's mu, TRL's "
                                    "num_iterations, verl's ppo_epochs). The later ones run the rows with "
                                    "a gradient again, the ratio clipped around the batch's pre-update "
                                    "policy (decoupled PPO); the weights are published once per step. "
                                    "1 = one on-policy update.")
    max_grad_norm: float = _field(1.0, "Global gradient-norm clip; 0 = off.")
    weight_decay: float = _field(0.0, "AdamW weight decay.")
    optimizer: str = _field("auto", "auto (cpu_adamw when the trained weights compute in bf16/fp16, "
                            "else adamw), adamw (torch fused, state beside the weights), cpu_adamw (fp32 "
                            "master weights and moments in CPU memory), adamw_8bit (bitsandbytes).",
                            choices=list(OPTIMIZERS))
    max_importance_weight: float = _field(2.0, "Cap on the per-token weight pi_learner / pi_generator "
                                          "(truncated importance sampling) that corrects for rollouts from "
                                          "an older policy (--async_staleness) or other numerics "
                                          "(--mismatch_correction).")
    mismatch_correction: str = _field("auto", "Weight on-policy tokens too by pi_learner / pi_generator "
                                      "(capped), the PPO trust region taken around the learner's own "
                                      "log-probs: auto (on when generators compute with other kernels "
                                      "than the learner's forward: bf16/fp16, or the vllm engine), on, off.",
                                      choices=["auto", "on", "off"])
    grad_offload: bool = _field(False, "With cpu_adamw: move each gradient to CPU as backward "
                                "produces it, so the device never holds a full gradient buffer.")
    dither_masters: bool = _field(False, "With cpu_adamw and bf16/fp16 weights: start each fp32 master "
                                  "at a random point of its weight's rounding cell (the weights stay "
                                  "the same bits), so updates smaller than the bf16 spacing reach the "
                                  "weights on average from the first step. Off: the masters start at "
                                  "the rounded weights (learned more slowly per step, but scored higher "
                                  "after 20 minutes so far: README, bf16 on CPU).")

    @property
    def advantage_name(self) -> str:
        return self.advantage or LEARNERS[self.learner].advantage

    @property
    def loss_name(self) -> str:
        return self.policy_loss or LEARNERS[self.learner].loss

    @property
    def clip_range(self) -> tuple[float, float]:
        """(low, high): the ratio is clipped to [1 - low, 1 + high]."""
        return self.clip_eps_low or self.clip_eps, self.clip_eps_high or self.clip_eps

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.beta < 0:
            raise ConfigError(f"--beta must be >= 0, got {self.beta}")
        if self.grad_offload and self.optimizer != "cpu_adamw":
            raise ConfigError("--grad_offload needs --optimizer cpu_adamw")
        if self.micro_batch_size < 0:
            raise ConfigError(f"--micro_batch_size must be >= 1 (0 = auto), got {self.micro_batch_size}")
        if self.updates_per_batch < 1:
            raise ConfigError(f"--updates_per_batch must be >= 1 (1 = one update per step), got "
                              f"{self.updates_per_batch}")
        if self.updates_per_batch > 1 and self.loss_name == "pg":
            raise ConfigError(f"--updates_per_batch {self.updates_per_batch} reuses each batch, which needs a "
                              "ratio against the policy that sampled it: use --policy_loss ppo_clip or gspo, "
                              "not pg")
        if self.gap_rows < 0:
            raise ConfigError(f"--gap_rows must be >= 0 (0 = every row), got {self.gap_rows}")
        for name in ("clip_eps", "clip_eps_low", "clip_eps_high", "min_group_std", "entropy_coef",
                     "overlong_buffer", "overlong_penalty"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.max_importance_weight < 1:
            raise ConfigError(f"--max_importance_weight must be >= 1, got {self.max_importance_weight}")


@dataclass(frozen=True)
class RunConfig:
    number_of_actors: int = _field(2, "Generation actors besides the learner.")
    batch_size: int = _field(8, "Prompts per step (learner chunk + generators' share).")
    num_candidates: int = _field(8, "Completions sampled per prompt (the group size).")
    learner_chunk_size: int = _field(-1, "Prompts per step the learner generates itself; the rest "
                                     "is split evenly over the generation actors. -1 = auto: 0 with "
                                     "vLLM generators on CPU (the learner samples with transformers, "
                                     "slower per token, on the cores the engines use: each step would "
                                     "wait for it), --batch_size without generators, 0 with --fsdp, "
                                     "else 2.")
    max_steps: int = _field(25, "Training steps (one optimizer update each).")
    time_budget_s: float = _field(0.0, "Also stop training after this many seconds (measured from the "
                                  "first step; the final evaluation and checkpoint follow); 0 = no limit.")
    dynamic_sampling: bool = _field(False, "DAPO: drop groups whose rewards are all equal and refill "
                                    "the batch with fresh prompts, at most --max_sampling_rounds "
                                    "generation rounds per step (synchronous mode only).")
    max_sampling_rounds: int = _field(3, "With --dynamic_sampling: generation rounds per step at most.")
    replay_prompts: int = _field(0, "Prompts per step sampled again from recent steps' groups that had a "
                                 "learning signal (some rewards differed), newest first, each at most twice a run; "
                                 "the rest of the batch comes from the data in its order. 0 = off (synchronous "
                                 "mode with groups, --num_candidates >= 2, only).")
    eval_samples: int = _field(0, "Also sample this many completions per held-out prompt at "
                               "--temperature and report pass@k (k = this) as eval_pass_at_k; 0 = off.")
    backend: str = _field("auto", "Generation backend: auto (vllm when installed, on CPU only where "
                          "bench/generation.py measured it faster for the model; else hf), hf "
                          "(transformers), vllm.", choices=["auto", "hf", "vllm"])
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
                                "cores of its node to train, 1 to sample beside generators).")
    timeout_s: float = _field(1800.0, "Deadline for any single remote call (generation, learning).")
    sync_timeout_s: float = _field(120.0, "Deadline for every generator to load a new policy version; "
                                   "a generator that misses it stops the run with its name.")
    gpus_per_actor: int = _field(1, "vLLM: GPUs per generation actor (its tensor-parallel size).")
    gpu_memory_utilization: float = _field(0.85, "vLLM: fraction of each GPU the engine may take.")
    max_model_len: int = _field(0, "vLLM: longest prompt + completion; 0 = --max_prompt_tokens + "
                                "the larger of --max_new_tokens and the evaluation budget.")
    vllm_kv_cache_gb: float = _field(1.0, "vLLM on CPU: KV cache GiB per engine (on CPU vLLM's memory "
                                     "fraction would be of the machine's RAM, per engine).")
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
    on_save_error: str = _field("stop", "When a checkpoint cannot be written for want of disk space: stop "
                                "(naming the last good checkpoint) or continue training without it.",
                                choices=["stop", "continue"])
    resume: str = _field("", "Continue a run: 'auto' (the newest checkpoint of --run_name, or of the "
                         "newest run in --output_dir; a fresh start when there is none) or a "
                         "checkpoint/run folder. Empty = start from step 0.")
    auto_resume: bool = _field(False, "When the learner or reference actor dies (or a generator "
                               "cannot be restarted), restart every actor from the last checkpoint "
                               "by itself (at most --max_auto_resumes times) instead of stopping.")
    max_auto_resumes: int = _field(3, "With --auto_resume: restarts from a checkpoint per run.")
    stop_grace_s: float = _field(120.0, "On SIGTERM or Ctrl-C: seconds to finish the current step and "
                                 "checkpoint it before stopping anyway (a second signal stops at once).")
    max_actor_restarts: int = _field(3, "Times Ray restarts a dead generation actor; it then loads "
                                     "the current weights and regenerates its prompts of the step.")
    max_logprob_gap: float = _field(0.0, "Warn, naming the actor, when an actor's logprob_gap (mean "
                                    "|its log-prob - the learner's| on its rollouts at the learner's version) "
                                    "exceeds this, and stop after --max_bad_steps such steps in a row; 0 = per "
                                    "dtype: 1e-3 in float32, 0.1 in bfloat16/float16, hf and vllm alike "
                                    "(measured by bench/logprob_gap.py).")
    on_logprob_gap: str = _field("stop", "When --max_bad_steps steps in a row had an actor over "
                                 "--max_logprob_gap: stop the run, or only warn (each step is warned "
                                 "of either way).", choices=["stop", "warn"])
    max_bad_steps: int = _field(3, "Stop after this many updates in a row skipped for a non-finite "
                                "loss or gradient norm.")
    num_learners: int = _field(1, "Learner ranks: one torch.distributed group (gloo on CPU, nccl on "
                               "GPU) that splits each batch by tokens and sums gradients; rank 0 "
                               "publishes the weights and generates the learner's chunk.")
    fsdp: bool = _field(False, "Shard the model, gradients and optimizer state over the learner ranks "
                        "with FSDP2 (for models one device cannot hold); needs --num_learners >= 2.")
    learner_check_every: int = _field(10, "With --num_learners > 1 (no FSDP): compare a checksum of "
                                      "every rank's weights every N steps; a mismatch stops the run. 0 = never.")
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
        if self.replay_prompts < 0 or 0 < self.batch_size <= self.replay_prompts:
            raise ConfigError(f"--replay_prompts must be in [0, --batch_size) so each step draws a "
                              f"fresh prompt, got {self.replay_prompts} with --batch_size {self.batch_size}")
        if self.vllm_kv_cache_gb <= 0:
            raise ConfigError(f"--vllm_kv_cache_gb must be > 0, got {self.vllm_kv_cache_gb}")
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
        if self.dynamic_sampling and self.async_staleness:
            raise ConfigError("--dynamic_sampling refills a step's batch before the update: it needs "
                              "synchronous mode (--async_staleness 0)")
        if self.replay_prompts > 0 and (self.async_staleness or self.num_candidates < 2):
            raise ConfigError("--replay_prompts draws again from the groups the last update scored: it needs "
                              "synchronous mode (--async_staleness 0) and groups (--num_candidates >= 2)")
        if self.max_sampling_rounds < 1 or self.eval_samples < 0 or self.time_budget_s < 0:
            raise ConfigError("--max_sampling_rounds must be >= 1, --eval_samples and --time_budget_s >= 0")
        if self.stop_grace_s <= 0:
            raise ConfigError(f"--stop_grace_s must be > 0, got {self.stop_grace_s}")
        if self.max_logprob_gap < 0:
            raise ConfigError(f"--max_logprob_gap must be >= 0 (0 = per dtype), got {self.max_logprob_gap}")
        if self.max_bad_steps < 1:
            raise ConfigError(f"--max_bad_steps must be >= 1, got {self.max_bad_steps}")
        if self.number_of_actors < 0:
            raise ConfigError(f"--number_of_actors must be >= 0, got {self.number_of_actors}")
        if self.num_learners < 1 or self.learner_check_every < 0:
            raise ConfigError(f"--num_learners must be >= 1 and --learner_check_every >= 0, got "
                              f"{self.num_learners} and {self.learner_check_every}")
        if self.fsdp and self.num_learners < 2:
            raise ConfigError("--fsdp shards the model over the learner ranks: set --num_learners >= 2")
        if self.fsdp and self.number_of_actors == 0:
            raise ConfigError("--fsdp: a sharded learner cannot generate on its own (every forward "
                              "gathers weights from all ranks): set --number_of_actors >= 1")
        if self.fsdp and self.learner_chunk_size > 0:
            raise ConfigError("--fsdp: a sharded learner cannot generate on its own (every forward "
                              "gathers weights from all ranks): set --learner_chunk_size 0")
        if self.colocate and self.num_learners > 1:
            raise ConfigError("--colocate shares one GPU with one learner: use --num_learners 1")
        if self.num_candidates < 1:
            raise ConfigError(f"--num_candidates must be >= 1, got {self.num_candidates}")
        if self.timeout_s <= 0 or self.sync_timeout_s <= 0:
            raise ConfigError("--timeout_s and --sync_timeout_s must be > 0")
        if self.max_steps < 0:
            raise ConfigError(f"--max_steps must be >= 0, got {self.max_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not -1 <= self.learner_chunk_size <= self.batch_size:
            raise ConfigError(f"--learner_chunk_size must be -1 (auto) or in [0, --batch_size={self.batch_size}], "
                              f"got {self.learner_chunk_size}")
        if self.number_of_actors == 0 and 0 <= self.learner_chunk_size < self.batch_size:
            raise ConfigError("with --number_of_actors 0 the learner generates everything: set "
                              f"--learner_chunk_size {self.batch_size} (= --batch_size) or -1 (auto)")
        shared = self.batch_size - max(self.learner_chunk_size, 0)
        if self.number_of_actors > 0 and shared < self.number_of_actors:
            raise ConfigError(f"--batch_size {self.batch_size} leaves {shared} prompts for "
                              f"{self.number_of_actors} generation actors; each needs at least one: "
                              f"raise --batch_size to >= {self.batch_size - shared + self.number_of_actors}"
                              " or lower --number_of_actors")

    def learner_chunk(self, backend: str, device: str) -> tuple[int, str]:
        """--learner_chunk_size with auto (-1) resolved for the generators' backend and device,
        and why. On CPU the learner samples its chunk with transformers beside vLLM engines on the
        same cores: transformers is slower per token, and the step waits for the last chunk
        (bench/learner_chunk.py: a default step took 15.7 s with a chunk of 2, 11.0 s without)."""
        if self.learner_chunk_size >= 0:
            return self.learner_chunk_size, "set"
        if self.number_of_actors == 0:
            return self.batch_size, "no generation actors: the learner generates everything"
        if self.fsdp:
            return 0, "--fsdp: a sharded learner cannot generate on its own"
        if backend == "vllm" and device == "cpu":
            return 0, ("vLLM generators on CPU: the learner's transformers sampling, on the same cores, "
                       "would be the last to finish each step")
        return min(2, self.batch_size - self.number_of_actors), "the learner samples beside the generators"


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
        if self.algo.advantage_name in GROUP_ADVANTAGES and group < 2:
            raise ConfigError(f"--learner {self.algo.learner} compares completions within a group: "
                              "use --num_candidates >= 2 (and --topk 0 or >= 2)")
        if self.algo.kl_in_reward and (self.algo.beta == 0 or self.ref_mode != "actor"):
            raise ConfigError("--kl_in_reward needs --beta > 0 and a reference actor (--ref_mode actor; "
                              "auto picks it without LoRA)")
        if self.algo.overlong_buffer >= self.sampling.max_new_tokens:
            raise ConfigError(f"--overlong_buffer {self.algo.overlong_buffer} must be below --max_new_tokens "
                              f"{self.sampling.max_new_tokens}")
        if self.model.load_in_4bit and self.model.lora_rank == 0:
            raise ConfigError("--load_in_4bit trains a LoRA adapter on a frozen 4-bit base: set "
                              "--lora_rank (e.g. 16)")
        if (self.model.dtype in ("bfloat16", "float16") and self.model.lora_rank == 0
                and self.algo.optimizer not in ("auto", "cpu_adamw")):
            raise ConfigError(f"--dtype {self.model.dtype} full fine-tuning with --optimizer "
                              f"{self.algo.optimizer} loses every update smaller than the weights' "
                              "precision: use --optimizer cpu_adamw (fp32 masters), LoRA, or --dtype float32")
        if self.algo.beta > 0 and self.run.ref_mode == "none":
            raise ConfigError(f"--beta {self.algo.beta} needs reference log-probs: use --ref_mode "
                              "auto/actor (or adapter_disabled with LoRA), or --beta 0")
        if self.ref_mode == "adapter_disabled" and self.model.lora_rank == 0:
            raise ConfigError("--ref_mode adapter_disabled needs LoRA (--lora_rank > 0)")
        if self.run.fsdp and self.algo.optimizer not in ("auto", "adamw"):
            raise ConfigError(f"--fsdp shards the optimizer state itself: use --optimizer adamw, not "
                              f"{self.algo.optimizer}")
        if self.run.fsdp and self.model.dtype in ("bfloat16", "float16") and self.model.lora_rank == 0:
            raise ConfigError(f"--fsdp steps the sharded weights with torch AdamW, without fp32 masters: "
                              f"--dtype {self.model.dtype} full fine-tuning would lose small updates; use "
                              "--dtype float32 (or auto) with --fsdp")
        if self.run.fsdp and self.algo.logprob_chunk_size:
            raise ConfigError("--fsdp runs the whole model's forward (its hooks gather each layer): drop "
                              "--logprob_chunk_size")
        if self.run.fsdp and (self.model.load_in_4bit or self.model.unsloth):
            raise ConfigError("--fsdp cannot shard a 4-bit or Unsloth model: drop --load_in_4bit/--unsloth "
                              "(or --fsdp, with --num_learners for data parallelism)")

    @property
    def corrects_mismatch(self) -> bool:
        """Whether the learner weights on-policy tokens by the truncated pi_learner / pi_generator:
        where generators sample with other kernels (bf16/fp16, vLLM) their log-probs differ from
        the learner's by more than rounding, and the PPO ratio against them would clip on noise."""
        mode = self.algo.mismatch_correction
        return mode == "on" or (mode == "auto" and (self.model.dtype != "float32" or self.run.backend == "vllm"))

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
GROUP_ADVANTAGES = ("grpo", "dr_grpo", "rloo", "pg")  # baselines from the prompt's other completions


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse command-line flags into a TrainConfig (flags are the sub-configs' fields)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(SUB_CONFIGS, description="Distributed RL fine-tuning of language models on Ray.")
    args = list(argv) if argv is not None else None
    preset = parser.parse_known_args(args)[0].algo_preset
    if preset:
        parser.set_defaults(**ALGO_PRESETS[preset])
    *configs, unknown = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    if unknown:
        flag = next((a for a in unknown if a.startswith("--")), unknown[0])
        known = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        near = difflib.get_close_matches(flag.split("=")[0], known, n=1) or [
            o for o in known if flag.split("=")[0].lstrip("-") in o]
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"unknown argument(s) {' '.join(unknown)}: {hint}"
                          "`python train_distributed.py --help` lists every flag")
    return TrainConfig(*configs)
