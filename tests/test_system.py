"""End to end through the CLI on a real local Ray cluster, with a tiny model built from a config:
2 generation actors + the learner's own chunk + a reference actor (or LoRA's disabled adapter)."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = {"step", "policy_version", "reward_mean", "reward_std", "accuracy", "loss", "kl", "clip_frac",
            "logprob_gap", "completion_len_mean", "truncated_frac", "frac_zero_std", "prompt_copy_frac", "repeat_frac", "gen_s", "reward_s", "ref_s",
            "train_s", "sync_s", "step_s", "tokens_per_s"}


def train(args, tmp_path, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "train_distributed.py", "--output_dir", str(tmp_path), "--run_name", "run", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_run_args(model_dir, *extra):
    return ["--model", model_dir, "--number_of_actors", "2", "--batch_size", "4", "--learner_chunk_size", "1",
            "--num_candidates", "4", "--max_steps", "2", "--max_new_tokens", "8", "--num_eval", "4",
            "--reward", "tests.helpers:ones_fraction", "--lr", "1e-2", "--learner", "grpo",
            # fp32: orchestration checked with the sharpest sync proof (gap ~1e-6); the default
            # dtype end to end (bf16 on an AMX CPU) is tests/test_precision.py's.
            "--dtype", "float32", *extra]


def read_metrics(tmp_path):
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_two_steps_full_finetune_with_reference_actor(tiny_model_dir, tmp_path):
    proc = train(tiny_run_args(tiny_model_dir, "--beta", "0.1"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_metrics(tmp_path)
    assert lines[0]["step"] == 0 and "eval_accuracy" in lines[0]
    # Evaluation samples on its own budget (48), not training's 8; the untrained tiny model seldom
    # stops, so its answers run long and most are cut off at that budget.
    assert 8 < lines[0]["eval_len_mean"] <= 48 and lines[0]["eval_truncated_frac"] > 0.5
    assert 0.0 <= lines[0]["eval_repeat_frac"] <= 1.0
    assert re.search(r"held-out accuracy: .* \(greedy, 48 new tokens; cut off at the budget: \d+% -> \d+%\)",
                     proc.stdout), proc.stdout
    steps = lines[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]
    for m in steps:
        assert REQUIRED <= set(m), REQUIRED - set(m)
        assert m["logprob_gap"] < 1e-4 and m["logprob_gap_learner"] < 1e-4
        assert math.isnan(m["logprob_gap_stale"])  # lockstep: every rollout at the learner's version
        assert m["ref_s"] > 0
        assert "replayed_prompts" not in m  # replay is off by default: every prompt is fresh
    assert steps[-1]["kl"] > 0  # the policy moved away from the reference after update 1
    assert "eval_accuracy" in steps[-1]
    assert "== distrl summary ==" in proc.stdout and "held-out accuracy" in proc.stdout
    assert re.search(r"logprob_gap \(generators vs learner\): median \S+, max \S+ at step [12]\n", proc.stdout)
    assert re.search(r"logprob_gap_learner \(its own chunk\): median \S+, max \S+ at step [12]\n", proc.stdout)
    for png in ("reward.png", "eval_accuracy.png", "kl_logprob_gap.png", "time_per_step.png"):
        assert (tmp_path / "run" / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diffs = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), initial.parameters())]
    assert max(diffs) > 1e-4


def test_two_steps_lora_with_adapter_disabled_reference(tiny_model_dir, tmp_path):
    proc = train(tiny_run_args(tiny_model_dir, "--lora_rank", "4", "--lora_alpha", "8", "--beta", "0.1",
                               "--lr", "5e-2"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(tmp_path)[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]
    assert all(m["logprob_gap"] < 1e-4 for m in steps)
    assert steps[0]["ref_s"] < 0.5  # no reference actor: the learner's disabled adapter serves it
    assert steps[-1]["kl"] > 0

    from peft import AutoPeftModelForCausalLM

    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(final)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and max(p.abs().max().item() for p in lora_b) > 0  # B starts at 0: it trained


@pytest.mark.parametrize("optimizer, max_gap", [
    # bf16 weights: CPUAdamW keeps separate fp32 masters, so the offload hooks really move each
    # gradient (in fp32 on CPU the parameters are their own masters and there is nothing to move).
    (["--optimizer", "cpu_adamw", "--grad_offload", "--dtype", "bfloat16"], 0.1),
    (["--optimizer", "adamw_8bit"], 1e-4)])
def test_two_steps_with_memory_saving_optimizers(tiny_model_dir, tmp_path, optimizer, max_gap):
    proc = train(tiny_run_args(tiny_model_dir, *optimizer), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(tmp_path)[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]
    assert all(m["logprob_gap"] < max_gap for m in steps)
    if "--grad_offload" in optimizer:
        assert all(m["grad_offload_mb"] > 0 for m in steps), [m.get("grad_offload_mb") for m in steps]


def test_more_actors_than_the_cluster_can_place(tiny_model_dir, tmp_path):
    proc = train(["--model", tiny_model_dir, "--number_of_actors", "6", "--batch_size", "8",
                  "--num_cpus_per_actor", "1"], tmp_path, timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 7 actors need 7 CPUs") and "free" in last
    assert re.search(r"free; per node: \S+ \d+ CPUs 0 GPUs: lower", last), last  # where the CPUs are


def test_a_reward_that_always_raises_stops_the_run_with_its_traceback(tiny_model_dir, tmp_path):
    proc = train(tiny_run_args(tiny_model_dir, "--reward", "tests.helpers:always_raises",
                               "--max_steps", "1"), tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "above --max_reward_error_rate" in proc.stderr and "KeyError: 'missing'" in proc.stderr


def test_async_pipeline_keeps_the_staleness_bound_and_every_rollout(tiny_model_dir, tmp_path):
    """Generators run one batch ahead and get weights every 2 updates: rollouts lag at most
    --async_staleness 2 versions, none is dropped or counted twice, the learner's own chunk is
    always fresh, and the final evaluation still runs on the newest weights."""
    steps, batch, group = 5, 4, 4
    proc = train(tiny_run_args(tiny_model_dir, "--max_steps", str(steps), "--async_staleness", "2",
                               "--weight_sync_every", "2", "--eval_every", "0", "--tensorboard"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_metrics(tmp_path)
    train_steps = [m for m in lines[1:]]
    assert [m["policy_version"] for m in train_steps] == list(range(1, steps + 1))
    assert max(m["staleness_max"] for m in train_steps) == 2  # the bound is reached, never passed
    assert all(m["rollouts"] == batch * group and m["rollouts_dropped"] == 0 for m in train_steps)
    # Weights went out after updates 2 and 4 only (the final evaluation syncs out of turn).
    assert [m["generator_version"] for m in train_steps] == [0, 2, 2, 4, 4]
    # The lag shows, apart from the sync proof: the stale rollouts' log-probs are no longer the
    # learner's, while those sampled at the learner's own version match it (the first step's, at
    # least) and the learner's own chunk is always fresh.
    assert max(m["logprob_gap_stale"] for m in train_steps if m["staleness_max"]) > 1e-3
    fresh = [m["logprob_gap"] for m in train_steps if not math.isnan(m["logprob_gap"])]
    assert fresh and max(fresh) < 1e-4, fresh
    assert all(m["logprob_gap_learner"] < 1e-4 for m in train_steps)
    assert all(0 < m["importance_weight"] <= 2.0 for m in train_steps)
    assert "eval_accuracy" in train_steps[-1]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "run" / "tensorboard"))


def test_presets_run_end_to_end_and_evaluation_is_deterministic(tiny_model_dir, tmp_path):
    """DAPO (dynamic sampling, overlong shaping, clip-higher) and GSPO through the whole system on
    a sparse 0/1 reward; both evaluate the same initial model to the same numbers at step 0."""
    step0 = []
    for preset in ("dapo", "gspo"):
        proc = train(tiny_run_args(tiny_model_dir, "--algo_preset", preset, "--reward", "tests.helpers:has_one",
                                   "--eval_samples", "4", "--overlong_buffer", "4"), tmp_path / preset)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = read_metrics(tmp_path / preset)
        step0.append({k: lines[0][k] for k in ("eval_accuracy", "eval_pass_at_k", "eval_len_mean")})
        steps = lines[1:]
        assert [m["policy_version"] for m in steps] == [1, 2]
        assert "eval_pass_at_k" in steps[-1] and 0 <= steps[-1]["eval_pass_at_k"] <= 1
        if preset == "dapo":
            assert all(1 <= m["sampling_rounds"] <= 3 for m in steps)
            assert max(m["sampling_rounds"] for m in steps) > 1  # flat groups were replaced
            assert all(m["frac_zero_std"] == 0.0 for m in steps)  # only informative groups trained
            assert all("overlong_penalty_mean" in m for m in steps)
    assert step0[0] == step0[1]


def test_reinforce_pp_with_kl_in_reward_and_no_groups(tiny_model_dir, tmp_path):
    """REINFORCE++ needs no group: one completion per prompt, the KL to the reference actor
    subtracted from the reward, an entropy bonus, and only positive advantages trained on."""
    proc = train(tiny_run_args(tiny_model_dir, "--learner", "reinforce_pp", "--num_candidates", "1",
                               "--kl_in_reward", "--beta", "0.1", "--kl_estimator", "k1",
                               "--entropy_coef", "0.01", "--positive_only"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(tmp_path)[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]
    # Batch-normalised advantages have mean 0, so positive-only always leaves some out (step 1's
    # rewards are all 0 here: nothing is positive, and nothing is learned from it).
    assert all(m["rollouts"] == 4 and m["rollouts_trained"] < 4 for m in steps)
    assert steps[1]["rollouts_trained"] > 0
    # Update 0 is the reference itself; after one update the policy has moved away from it.
    assert abs(steps[0]["kl_reward_penalty_mean"]) < 1e-4 < abs(steps[1]["kl_reward_penalty_mean"])
    assert all(m["entropy"] > 0 and m["logprob_gap"] < 1e-4 for m in steps)


def test_replay_samples_again_the_prompts_whose_groups_had_signal(tiny_model_dir, tmp_path):
    """--replay_prompts 2: from step 2 on, the last 2 prompts of each batch are prompts of earlier
    steps whose rewards differed (ones_fraction: nearly every group), and the checkpoint keeps the
    queue for --resume."""
    proc = train(tiny_run_args(tiny_model_dir, "--replay_prompts", "2", "--max_steps", "3", "--log_samples", "4",
                               "--save_every", "3"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(tmp_path)[1:]
    assert [m["replayed_prompts"] for m in steps] == [0, 2, 2]
    assert all(0.0 <= m["replay_signal_frac"] <= 1.0 for m in steps)
    with open(tmp_path / "run" / "samples.jsonl") as f:
        prompts: dict[int, list[str]] = {}
        for line in f:
            row = json.loads(line)
            prompts.setdefault(row["step"], []).append(row["prompt"])
    for step in (2, 3):
        earlier = [p for s in range(1, step) for p in prompts[s]]
        assert set(prompts[step][2:]) <= set(earlier), (step, prompts)
        assert not set(prompts[step][:2]) & set(earlier)  # the data order goes on as without replay
    with open(tmp_path / "run" / "checkpoints" / "step-000003" / "trainer_state.json") as f:
        assert sum(json.load(f)["replay"]["replays"].values()) == 4


def test_replay_works_with_dynamic_sampling(tiny_model_dir, tmp_path):
    """--replay_prompts 1 runs together with --dynamic_sampling's refill rounds: one replay a step
    from step 2 on, however many rounds the step took."""
    proc = train(tiny_run_args(tiny_model_dir, "--dynamic_sampling", "--max_sampling_rounds", "2",
                               "--replay_prompts", "1", "--max_steps", "3"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_metrics(tmp_path)[1:]
    assert [m["replayed_prompts"] for m in steps] == [0, 1, 1]
    assert all(1 <= m["sampling_rounds"] <= 2 for m in steps)
