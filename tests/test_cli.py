"""Bad input ends the run before any actor (or Ray) starts: exit code 2 and one clear line."""

import json
import os
import subprocess
import sys

import pytest

from distrl.config import ConfigError, RunConfig, TrainConfig, AlgoConfig, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "train_distributed.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # nothing else ran: no Ray start-up, no tracebacks
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_model_path():
    assert_one_line_error(cli("--model", "/no/such/model"), "model path '/no/such/model' does not exist")


def test_hub_id_without_a_hub():
    assert_one_line_error(cli("--model", "distrl-test-org/no-such-model-42"),
                          "not a local folder and the hub could not provide it")


def test_dataset_missing_fields_names_the_fields_it_has(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "1+1", "solution": "2"}) + "\n")
    assert_one_line_error(cli("--model", tiny_model_dir, "--dataset", str(data)),
                          "no field 'prompt', 'answer'", "its fields are question, solution")


def test_batch_smaller_than_the_generators_that_need_prompts():
    assert_one_line_error(cli("--number_of_actors", "4", "--batch_size", "5", "--learner_chunk_size", "2"),
                          "leaves 3 prompts for 4 generation actors", "raise --batch_size to >= 6")


def test_topk_larger_than_num_candidates():
    assert_one_line_error(cli("--topk", "5", "--num_candidates", "4"), "--topk 5 is larger than --num_candidates 4")


def test_what_the_cpu_vllm_engine_cannot_do_is_refused_before_anything_starts(tiny_model_dir):
    assert_one_line_error(cli("--backend", "vllm", "--colocate", "--number_of_actors", "1", "--batch_size", "3"),
                          "vLLM has no sleep mode on CPU", "drop --colocate")
    assert_one_line_error(cli("--backend", "vllm", "--gpus_per_actor", "2"),
                          "--gpus_per_actor 2 is tensor parallelism over GPUs", "--number_of_actors")
    assert_one_line_error(cli("--backend", "vllm", "--load_in_4bit", "--lora_rank", "4"),
                          "--load_in_4bit with --backend vllm on CPU", "use --backend hf")
    assert_one_line_error(cli("--backend", "vllm", "--model", tiny_model_dir),
                          "this model's head size 8 is not one the CPU attention kernels take", "use --backend hf")


def test_an_unknown_flag_is_named_with_the_nearest_one():
    assert_one_line_error(cli("--steps", "10"), "unknown argument(s) --steps 10", "did you mean --max_steps?",
                          "--help")
    assert_one_line_error(cli("--lr", "1e-5", "extra"), "unknown argument(s) extra")


def test_unknown_learner_lists_choices():
    proc = cli("--learner", "ppo")
    assert proc.returncode == 2 and "choose from 'dr_grpo', 'grpo', 'gspo', 'pg', 'reinforce_pp', 'rloo'" in proc.stderr


def test_help_shows_each_flag_documented():
    proc = cli("--help")
    assert proc.returncode == 0
    for text in ("--number_of_actors", "Completions sampled per prompt", "--learner {dr_grpo,grpo,gspo,pg,reinforce_pp,rloo}", "--algo_preset {grpo,dr_grpo,dapo,gspo}",
                 "KL coefficient", "--ray_address"):
        assert text in proc.stdout


def test_flags_reach_the_sub_configs():
    cfg = parse_args(["--batch_size", "6", "--lora_rank", "8", "--beta", "0.05", "--learner", "pg"])
    assert cfg.run.batch_size == 6 and cfg.model.lora_rank == 8 and cfg.algo.learner == "pg"
    assert cfg.ref_mode == "adapter_disabled"  # auto with LoRA and beta > 0
    assert TrainConfig().ref_mode == "none"  # beta 0: no reference model at all
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_group_based_learners_need_groups():
    with pytest.raises(ConfigError, match="--num_candidates >= 2"):
        TrainConfig(run=RunConfig(num_candidates=1), algo=AlgoConfig(learner="grpo"))


def test_unsloth_without_a_gpu_is_refused():
    assert_one_line_error(cli("--unsloth", "--lora_rank", "16"), "--unsloth needs a CUDA GPU")


def test_4bit_needs_lora():
    assert_one_line_error(cli("--load_in_4bit"), "--load_in_4bit trains a LoRA adapter", "--lora_rank")


def test_grad_offload_needs_cpu_adamw():
    assert_one_line_error(cli("--grad_offload"), "--grad_offload needs --optimizer cpu_adamw")


def test_low_precision_full_finetune_needs_fp32_masters():
    with pytest.raises(ConfigError, match="use --optimizer cpu_adamw"):
        parse_args(["--dtype", "bfloat16", "--optimizer", "adamw"])
    assert parse_args(["--dtype", "bfloat16", "--optimizer", "cpu_adamw"]).model.dtype == "bfloat16"
    assert parse_args(["--dtype", "bfloat16"]).algo.optimizer == "auto"  # auto gives it fp32 masters
    with pytest.raises(ConfigError, match="--fsdp steps the sharded weights"):
        parse_args(["--dtype", "bfloat16", "--fsdp", "--num_learners", "2", "--learner_chunk_size", "0"])


# A model type of its own (remote code) whose layers are all plain parameters, no nn.Linear:
# bitsandbytes has nothing to quantize in it.
NO_LINEAR_MODEL = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel


class BagConfig(PretrainedConfig):
    model_type = "distrl_bag"

    def __init__(self, vocab_size=8, hidden_size=4, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(**kwargs)


class BagForCausalLM(PreTrainedModel):
    config_class = BagConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = torch.nn.Parameter(torch.eye(config.hidden_size))
        self.post_init()

    def forward(self, input_ids, **kwargs):
        return self.embed(input_ids) @ self.mix @ self.embed.weight.T
'''


def test_4bit_refuses_a_model_type_bitsandbytes_cannot_quantize(tmp_path):
    (tmp_path / "modeling_bag.py").write_text(NO_LINEAR_MODEL)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "distrl_bag", "vocab_size": 8, "hidden_size": 4,
        "auto_map": {"AutoConfig": "modeling_bag.BagConfig", "AutoModelForCausalLM": "modeling_bag.BagForCausalLM"}}))
    assert_one_line_error(cli("--model", str(tmp_path), "--trust_remote_code", "--load_in_4bit", "--lora_rank", "4"),
                          "--load_in_4bit: bitsandbytes cannot quantize this distrl_bag model", "drop --load_in_4bit")


def test_4bit_preflight_accepts_a_llama(tiny_model_dir):
    from distrl.config import ModelConfig
    from distrl.models import check_quantizable

    check_quantizable(tiny_model_dir, ModelConfig(model=tiny_model_dir, load_in_4bit=True, lora_rank=4))


def test_weight_sync_period_needs_the_staleness_it_causes():
    assert_one_line_error(cli("--weight_sync_every", "3", "--async_staleness", "1"),
                          "--weight_sync_every 3 lets rollouts lag 2 versions", "--async_staleness >= 2")


def test_placement_bundles_follow_the_actors_and_their_resources():
    from launch.cluster import bundles

    cfg = parse_args(["--number_of_actors", "2", "--beta", "0.1", "--num_cpus_per_actor", "0.5"])
    assert bundles(cfg) == [{"CPU": 0.5}] * 4  # learner, 2 generators, reference; no GPU keys on CPU
    cfg = parse_args(["--number_of_actors", "1", "--num_gpus_per_actor", "1", "--backend", "hf"])
    assert bundles(cfg) == [{"CPU": 0.5, "GPU": 1.0}] * 2


def test_an_actor_that_fits_no_single_node_is_refused_naming_each_node():
    """Enough GPUs in the cluster (2 + 2 on four 1-GPU nodes), but an actor never spans nodes."""
    from launch.cluster import check_resources

    cfg = parse_args(["--number_of_actors", "1", "--num_gpus_per_actor", "2", "--backend", "hf"])
    nodes = {f"10.0.0.{i}": {"CPU": 4.0, "GPU": 1.0} for i in range(4)}
    with pytest.raises(ConfigError, match=r"^one actor needs 0.5 CPUs and 2 GPUs on one node, and no node has "
                                          r"that many; per node: 10.0.0.0 4 CPUs 1 GPUs, 10.0.0.1 4 CPUs"):
        check_resources(cfg, {"CPU": 16.0, "GPU": 4.0}, nodes)
    check_resources(cfg, {"CPU": 16.0, "GPU": 4.0}, {"big": {"CPU": 8.0, "GPU": 4.0}})  # one node holds it


def test_colocate_needs_the_vllm_backend():
    assert_one_line_error(cli("--colocate", "--number_of_actors", "1", "--batch_size", "3"),
                          "--colocate shares one GPU", "drop --colocate here")


def test_wandb_without_wandb_installed_says_how_to_get_it():
    assert_one_line_error(cli("--wandb"), "--wandb: wandb is not installed; pip install wandb", "drop --wandb")


def test_presets_expand_to_the_documented_flags_and_explicit_flags_win():
    from distrl.config import parse_args

    dapo = parse_args(["--algo_preset", "dapo"])
    assert dapo.algo.clip_range == (0.2, 0.28) and dapo.algo.loss_agg == "token_mean"
    assert dapo.run.dynamic_sampling and dapo.algo.overlong_buffer == 8 and dapo.algo.beta == 0.0
    dr = parse_args(["--algo_preset", "dr_grpo"])
    assert (dr.algo.advantage_name, dr.algo.loss_agg) == ("dr_grpo", "seq_mean_token_sum_norm")
    gspo = parse_args(["--algo_preset", "gspo"])
    assert gspo.algo.loss_name == "gspo" and gspo.algo.clip_range == (3e-4, 4e-4)
    grpo = parse_args(["--algo_preset", "grpo"])
    assert (grpo.algo.beta, grpo.algo.kl_estimator, grpo.ref_mode) == (0.04, "k3", "actor")
    mine = parse_args(["--clip_eps_high", "0.3", "--algo_preset", "dapo", "--max_sampling_rounds", "5"])
    assert mine.algo.clip_range == (0.2, 0.3) and mine.run.max_sampling_rounds == 5


def test_algorithm_flags_that_cannot_work_are_refused():
    assert_one_line_error(cli("--dynamic_sampling", "--async_staleness", "1"), "--dynamic_sampling refills")
    assert_one_line_error(cli("--kl_in_reward", "--beta", "0.1", "--lora_rank", "8"), "--kl_in_reward needs")
    assert_one_line_error(cli("--overlong_buffer", "40", "--max_new_tokens", "16"), "--overlong_buffer 40 must be below")


def test_learner_group_bundles_and_flags_that_cannot_work():
    from launch.cluster import bundles

    cfg = parse_args(["--num_learners", "3", "--number_of_actors", "1", "--num_cpus_per_actor", "0.25"])
    assert bundles(cfg) == [{"CPU": 0.25}] * 4  # three learner ranks, then the generator
    assert_one_line_error(cli("--fsdp"), "--fsdp shards the model over the learner ranks", "--num_learners >= 2")
    assert_one_line_error(cli("--fsdp", "--num_learners", "2", "--learner_chunk_size", "2"),
                          "cannot generate on its own", "--learner_chunk_size 0")
    assert_one_line_error(cli("--fsdp", "--num_learners", "2", "--number_of_actors", "0"),
                          "cannot generate on its own", "--number_of_actors >= 1")
    assert_one_line_error(cli("--fsdp", "--num_learners", "2", "--learner_chunk_size", "0", "--optimizer",
                              "cpu_adamw"), "--fsdp shards the optimizer state itself", "--optimizer adamw")
    assert_one_line_error(cli("--num_learners", "0"), "--num_learners must be >= 1")


def test_evaluation_has_its_own_token_budget():
    from distrl.config import parse_args

    assert parse_args(["--max_new_tokens", "16"]).sampling.eval_tokens == 48  # not the training budget
    assert parse_args(["--max_new_tokens", "96"]).sampling.eval_tokens == 96
    assert parse_args(["--eval_max_new_tokens", "24"]).sampling.eval_tokens == 24
    assert_one_line_error(cli("--eval_max_new_tokens", "-1"), "--eval_max_new_tokens must be >= 1")
    assert_one_line_error(cli("--temperature", "0"), "--temperature must be > 0")  # the checks after it still run


def test_dither_masters_is_off_unless_asked_for():
    assert parse_args([]).algo.dither_masters is False
    assert parse_args(["--dither_masters"]).algo.dither_masters is True


def test_the_lr_decays_linearly_unless_asked_otherwise():
    assert parse_args([]).algo.lr_schedule == "linear"
    assert parse_args(["--lr_schedule", "constant"]).algo.lr_schedule == "constant"
    proc = cli("--lr_schedule", "step")
    assert proc.returncode == 2 and "choose from 'constant', 'linear', 'cosine'" in proc.stderr


def test_gap_rows_is_read_and_checked():
    assert parse_args([]).algo.gap_rows == 2
    assert parse_args(["--gap_rows", "0"]).algo.gap_rows == 0  # 0: every row, as before
    assert_one_line_error(cli("--gap_rows", "-1"), "--gap_rows must be >= 0")


def test_updates_per_batch_is_read_and_checked():
    assert parse_args([]).algo.updates_per_batch == 1
    assert parse_args(["--updates_per_batch", "2"]).algo.updates_per_batch == 2
    assert_one_line_error(cli("--updates_per_batch", "0"), "--updates_per_batch must be >= 1")
    assert_one_line_error(cli("--updates_per_batch", "2", "--learner", "pg"), "use --policy_loss ppo_clip or gspo")


def test_learner_chunk_auto_samples_beside_the_generators_only_where_that_is_not_slower():
    run = parse_args([]).run
    assert run.learner_chunk_size == -1
    assert run.learner_chunk("vllm", "cpu")[0] == 0  # transformers beside vLLM engines on the same cores
    assert run.learner_chunk("hf", "cpu")[0] == 2
    assert run.learner_chunk("vllm", "cuda")[0] == 2
    assert parse_args(["--learner_chunk_size", "3"]).run.learner_chunk("vllm", "cpu") == (3, "set")
    assert parse_args(["--number_of_actors", "0"]).run.learner_chunk("vllm", "cpu")[0] == 8  # everything
    assert parse_args(["--number_of_actors", "7"]).run.learner_chunk("hf", "cpu")[0] == 1  # each generator gets one
    assert parse_args(["--fsdp", "--num_learners", "2", "--dtype", "float32"]).run.learner_chunk("hf", "cpu")[0] == 0
    assert_one_line_error(cli("--learner_chunk_size", "-2"), "--learner_chunk_size must be -1 (auto)")
    assert_one_line_error(cli("--batch_size", "0", "--number_of_actors", "0"), "--batch_size must be >= 1")
    assert_one_line_error(cli("--number_of_actors", "9"), "leaves 8 prompts for 9 generation actors",
                          "raise --batch_size to >= 9")
