"""The whole system with a learner group: two ranks train, publish correct weights, checkpoint and
resume; a killed rank ends the run at once with its name and the checkpoint to resume from."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.faults.runs import Run, actor_pid, metrics, run_args


def _group_args(model_dir, out, *extra):
    # One generator: two learner ranks + one generator fit the 2 CPUs of a local test cluster.
    return run_args(model_dir, out, "run", "--num_learners", "2", "--number_of_actors", "1", *extra)


def test_a_killed_learner_rank_stops_the_run_then_it_resumes(tiny_model_dir, tmp_path):
    args = _group_args(tiny_model_dir, tmp_path, "--optimizer", "cpu_adamw", "--max_steps", "4", "--save_every",
                       "2", "--learner_check_every", "1", "--sync_timeout_s", "60")
    run = Run(args, gate=tmp_path / "gate", gate_step=3)
    run.wait_at_gate()
    with open(tmp_path / "run" / "actors.json") as f:
        group = json.load(f)["distrl-learner-1"]["group"]
    assert (group["rank"], group["world_size"], group["fsdp"]) == (1, 2, False)
    os.kill(actor_pid(tmp_path / "run", "distrl-learner-1"), signal.SIGKILL)
    released = time.monotonic()
    run.release()
    code, out, err = run.finish(timeout=120)  # well within the 60 s group deadline + shutdown
    stopped_after = time.monotonic() - released
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    assert code == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: distrl-learner-1 died (") and last.endswith(f"resume with --resume {ckpt}"), last
    print(f"killed learner rank: the run stopped {stopped_after:.1f}s after the step was released")
    steps = metrics(tmp_path / "run")[1:]
    assert [m["step"] for m in steps] == [1, 2] and all(m["logprob_gap"] < 1e-4 for m in steps)
    assert {f.name for f in ckpt.iterdir()} >= {"optimizer-rank0.safetensors", "optimizer-rank1.safetensors",
                                                "policy.safetensors"}

    code, out, err = Run(args + ["--resume", "auto"]).finish()
    assert code == 0, err[-3000:]
    assert f"resumed from {ckpt}: step 2, policy version 2" in out
    steps = metrics(tmp_path / "run")[1:]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and [m["policy_version"] for m in steps] == [1, 2, 3, 4]
    # Each rank got its own optimizer shard back and rank 0 published the restored weights.
    assert all(m["logprob_gap"] < 1e-4 for m in steps)


def test_fsdp_group_trains_publishes_checkpoints_and_resumes(tiny_model_dir, tmp_path):
    args = _group_args(tiny_model_dir, tmp_path, "--fsdp", "--learner_chunk_size", "0", "--save_every", "1")
    code, out, err = Run(args + ["--max_steps", "2"]).finish()
    assert code == 0, err[-3000:]
    steps = metrics(tmp_path / "run")[1:]
    assert [m["policy_version"] for m in steps] == [1, 2]
    # The weights gathered from the shards are the ones the learner trains: its own log-probs
    # match the generator's on the next batch.
    assert all(m["logprob_gap"] < 1e-4 for m in steps), [m["logprob_gap"] for m in steps]
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()

    code, out, err = Run(args + ["--max_steps", "3", "--resume", "auto"]).finish()
    assert code == 0, err[-3000:]
    assert "step 2, policy version 2" in out
    steps = metrics(tmp_path / "run")[1:]
    assert [m["step"] for m in steps] == [1, 2, 3] and steps[-1]["logprob_gap"] < 1e-4


def test_auto_resume_recreates_the_whole_group_after_a_rank_dies(tiny_model_dir, tmp_path):
    args = _group_args(tiny_model_dir, tmp_path, "--max_steps", "4", "--save_every", "2", "--auto_resume")
    run = Run(args, gate=tmp_path / "gate", gate_step=3)
    run.wait_at_gate()
    os.kill(actor_pid(tmp_path / "run", "distrl-learner-1"), signal.SIGKILL)
    run.release()
    code, out, err = run.finish()
    assert code == 0, err[-3000:]
    assert "distrl-learner-1 died" in err and "--auto_resume: restarting every actor from" in err
    steps = metrics(tmp_path / "run")[1:]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and [m["policy_version"] for m in steps] == [1, 2, 3, 4]
    assert all(m["logprob_gap"] < 1e-4 for m in steps)  # the new group published the restored weights
