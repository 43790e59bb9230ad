"""Each benchmark's smallest setting runs and prints its last line in the documented format, so a
benchmark that breaks fails CI instead of rotting (bench/pipeline.py once crashed unnoticed)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def last_line(script: str, *args: str, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("script, args, pattern", [
    ("bench/logprob_gap.py", ["--prompts", "2", "--n", "2", "--max_new_tokens", "4", "--backends", "vllm",
                              "--modes", "full"],
     r"bf16/fp32 median logprob_gap \(vllm, full\) = \d+\.\d\d"),
    ("bench/cpu_adam.py", ["--steps", "1"], r"cpu_adamw/fused = \d+\.\d\d"),
    ("bench/zero_advantage_step.py", ["--groups", "2", "--group", "2", "--max_new_tokens", "4", "--repeats", "1"],
     r"one group with signal: by length / apart = \d+\.\d\d"),
    ("bench/gpu_learner.py", ["--tiny"], r"peak adamw/cpu_adamw\+offload = \S+"),
])
def test_bench_smallest_setting_prints_its_last_line(script, args, pattern):
    assert re.search(pattern, last_line(script, *args)), script


def test_generation_times_both_engines_in_both_dtypes_on_a_tiny_model(tmp_path):
    """A tiny model vLLM's CPU kernels take (head size 64), with the 1024 positions the bench asks
    the engine for: the embedded model costs this test a minute more and checks nothing more."""
    from tests.conftest import build_tiny_model

    model = build_tiny_model(str(tmp_path / "tiny"), head_dim=64, max_position_embeddings=1024)
    line = last_line("bench/generation.py", "--model", model, "--prompts", "2", "--n", "2", "--max_new_tokens", "4")
    assert re.fullmatch(r"vllm/hf tokens_per_s = \d+\.\d\d", line), line


def test_broadcast_times_the_floor_and_grows_the_store_through_the_driver_path(tiny_model_dir):
    line = last_line("bench/broadcast.py", "--repeats", "1", "--versions", "2", "--model", tiny_model_dir,
                     "--store_backend", "hf")
    assert re.fullmatch(r"packed/floor = \d+\.\d\d  naive/packed = \d+\.\d\d  store_growth_mb = -?\d+", line), line


def test_pipeline_simulates_then_measures_sync_and_async_runs_for_real(tiny_model_dir):
    """The last line is the real ratio (two train_distributed.py runs), the simulation above it
    says it is one."""
    out = subprocess.run([sys.executable, "bench/pipeline.py", "--steps", "2", "--sim_steps", "2", "--gen_s", "0.05",
                          "--train_s", "0.05", "--model", tiny_model_dir, "--", "--backend", "hf", "--batch_size", "4",
                          "--num_candidates", "2", "--max_new_tokens", "4"],
                         cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"async/sync throughput = \d+\.\d\d \(real\)", lines[-1]), lines[-1]
    assert any(re.fullmatch(r"async/sync throughput = \d+\.\d\d \(simulated\)", line) for line in lines)
    assert any(line.startswith("  real k=1 step 2:") for line in lines)  # the async run really ran


def test_step_speed_runs_both_dtypes_on_a_tiny_model(tiny_model_dir):
    line = last_line("bench/step_speed.py", "--steps", "2", "--model", tiny_model_dir, "--backend", "hf",
                     "--bf16", "bfloat16", "--batch_size", "4", "--num_candidates", "2", "--max_new_tokens", "4")
    assert re.fullmatch(r"bf16/fp32 step_s = \d+\.\d\d", line), line


def test_learner_chunk_runs_both_sides_on_a_tiny_model(tiny_model_dir):
    line = last_line("bench/learner_chunk.py", "--steps", "2", "--repeats", "1", "--model", tiny_model_dir,
                     "--backend", "hf", "--batch_size", "4", "--num_candidates", "2", "--max_new_tokens", "4")
    assert re.fullmatch(r"chunk0/chunk2 step_s = \d+\.\d\d", line), line


def test_bf16_masters_runs_every_contender_on_a_tiny_model(tiny_model_dir):
    line = last_line("bench/bf16_masters.py", "--steps", "10", "--rows", "2", "--held_out", "4",
                     "--model", tiny_model_dir)
    assert re.fullmatch(r"validation loss after 10 updates: centred / dithered masters = \d+\.\d\d", line), line


def test_learner_scaling_runs_a_group_of_two_on_a_tiny_model(tiny_model_dir):
    line = last_line("bench/learner_scaling.py", "--steps", "1", "--model", tiny_model_dir,
                     "--configs", "N=1 adamw,N=2 adamw")
    assert re.fullmatch(r"learner step N=2/N=1 \(adamw, \d+ cores\) = \d+\.\d\d, communication \d+% of the N=2 step",
                        line), line


def test_learning_bench_trains_both_systems_scores_them_once_and_reuses_stored_runs(tiny_model_dir, tmp_path):
    """bench/learning.py --vs_trl end to end on a tiny model: distrl and TRL (in the venv the bench
    creates) each train one step, the shared evaluator scores them, and a second call reuses the
    stored runs instead of training again."""
    args = ["--vs_trl", "--families", "word", "--split", "validation", "--budget_min", "0.01", "--eval_rows", "4",
            "--model", tiny_model_dir, "--results_dir", str(tmp_path / "results"), "--output_dir", str(tmp_path / "out"),
            "--", "--max_steps", "1", "--batch_size", "3", "--num_candidates", "2", "--max_new_tokens", "4",
            "--number_of_actors", "1", "--backend", "hf", "--num_eval", "2"]
    pattern = r"distrl-trl gain = [+-]\d+\.\d points \(worst family\), distrl gain = [+-]\d+\.\d points \(worst family\)"
    first = last_line("bench/learning.py", *args, timeout=1500)
    assert re.fullmatch(pattern, first), first
    stored = sorted(os.listdir(tmp_path / "results" / "word"))
    assert len(stored) == 3 and any(f.startswith("trl-") for f in stored), stored  # base, distrl, trl
    trl_name = next(f for f in stored if f.startswith("trl-"))
    run = json.loads((tmp_path / "results" / "word" / trl_name).read_text())
    assert run["steps"] >= 1 and 0.0 <= run["accuracy"] <= 1.0 and run["system"] == "trl"
    # TRL ran in the dtype this machine's auto picks, and its row is keyed by it
    assert trl_name.endswith({"bfloat16": "-trl1.16.0.json", "float32": "-trl1.16.0-float32.json"}[run["dtype"]])
    ours = json.loads((tmp_path / "results" / "word" / next(f for f in stored if f.startswith("distrl-"))).read_text())
    assert 0.0 <= ours["loop_frac"] <= 1.0 and 0.0 <= ours["repeat_frac_end"] <= 1.0  # answers that loop
    assert isinstance(ours["warnings"], list)  # the run's learning-health warnings, kept with its row
    (distrl_run,) = [d for d in (tmp_path / "out").iterdir() if "-distrl-" in d.name]
    # scored from final/; the run's checkpoint (1.8 GB for the embedded model) is not kept
    assert (distrl_run / "final").is_dir() and not (distrl_run / "checkpoints").exists()
    shutil.rmtree(tmp_path / "out")
    assert last_line("bench/learning.py", *args) == first
    assert not (tmp_path / "out").exists()  # nothing trained the second time
    # A stored run from another machine is reused, but not silently: its budget bought other work.
    trl_path = tmp_path / "results" / "word" / next(f for f in stored if f.startswith("trl-"))
    assert re.fullmatch(r".+, \d+ cores, .+", run["machine"]), run["machine"]  # CPU, cores, bf16 units
    trl_path.write_text(json.dumps({**run, "machine": "Another CPU, 64 cores, amx_bf16"}))
    proc = subprocess.run([sys.executable, "bench/learning.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == first
    assert re.search(r"warning: the stored trl run on word \(seed 0\) was measured on Another CPU, 64 cores, "
                     r"amx_bf16, this is .+, \d+ cores, .+: its 0.01 minutes bought another amount", proc.stderr)


def test_reward_signal_counts_groups_with_signal_per_reward_on_a_tiny_model(tiny_model_dir):
    line = last_line("bench/reward_signal.py", "--model", tiny_model_dir, "--families", "arithmetic",
                     "--prompts", "2", "--group", "2", "--max_new_tokens", "4")
    assert re.fullmatch(r"groups with signal: numeric_digits [0-2], numeric [0-2]", line), line


def test_learner_memory_measures_full_and_4bit_lora_on_a_tiny_model(tiny_model_dir):
    line = last_line("bench/learner_memory.py", "--model", tiny_model_dir,
                     "--configs", "full + AdamW;4-bit LoRA r=16, grad checkpointing")
    assert re.fullmatch(r"peak full\+AdamW / \(4-bit LoRA \+ checkpointing\) = \d+\.\d\d", line), line


def test_shared_prompts_times_both_sides_on_a_tiny_model(tiny_model_dir):
    line = last_line("bench/shared_prompts.py", "--model", tiny_model_dir, "--families", "arithmetic",
                     "--prompts", "2", "--rows", "4", "--repeats", "1")
    assert re.fullmatch(r"shared/per_row forward_backward_s = \d+\.\d\d", line), line


def test_trl_runs_in_fp32_where_the_cpu_has_no_bf16_units_and_its_rows_are_keyed_apart():
    """TRL's default bf16 autocast is emulated, ~5x slower than fp32, on a CPU without bf16 matrix
    units: there the bench runs TRL in fp32, as distrl's --dtype auto does, and stores those runs
    under their own key, so the bf16 rows from a machine with the units stay as they were."""
    spec = importlib.util.spec_from_file_location("learning_bench", os.path.join(ROOT, "bench", "learning.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.trl_dtype("auto", {"avx512f", "avx2"}) == "float32"
    assert bench.trl_dtype("auto", {"avx512f", "amx_bf16"}) == "bfloat16"
    assert bench.trl_dtype("auto", {"avx512_bf16"}) == "bfloat16"
    assert bench.trl_dtype("bfloat16", {"avx2"}) == "bfloat16"  # an explicit choice wins
    assert bench.trl_version("bfloat16") == "trl1.16.0"
    assert bench.trl_version("float32") == "trl1.16.0-float32"
