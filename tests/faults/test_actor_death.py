"""Actors die or hang for real (SIGKILL / SIGSTOP by pid) in the middle of a run."""

import os
import re
import signal
import time

from tests.faults.runs import Run, actor_pid, metrics, run_args


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_a_generator_killed_mid_rollout_is_restarted_and_the_step_completes(tiny_model_dir, tmp_path):
    """SIGKILL generator-1 while it samples step 3: Ray restarts it, it loads the current weights,
    regenerates its prompts, and every step trains on a whole batch from the right weights."""
    run = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "4", "--max_new_tokens", "96"),
              gate=tmp_path / "gate", gate_step=2)
    run.wait_at_gate()
    pid = actor_pid(tmp_path / "run", "distrl-generator-1")
    before = _cpu_ticks(pid)
    run.release()  # update 2, sync, then step 3's generation starts
    deadline = time.time() + 30
    while _cpu_ticks(pid) - before < 5 and time.time() < deadline:  # it is sampling now
        time.sleep(0.01)
    assert _cpu_ticks(pid) - before >= 5, "generator-1 never started sampling step 3"
    os.kill(pid, signal.SIGKILL)
    code, out, err = run.finish()
    assert code == 0, err[-3000:]
    steps = metrics(tmp_path / "run")[1:]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert [m["policy_version"] for m in steps] == [1, 2, 3, 4]
    assert all(m["rollouts"] == 16 for m in steps)  # no half-used batch
    assert all(m["logprob_gap"] < 1e-4 for m in steps)  # the restarted actor got the weights
    assert steps[-1]["generator_restarts"] == 1
    assert "distrl-generator-1 died" in err and "distrl-generator-1 is back" in err
    # The kill landed in step 3's generate (not in a weight load): that is the call sent again.
    assert re.search(r"distrl-generator-1 regenerates its \d+ prompts of step 3\n", err), err[-3000:]


def test_a_generator_restarted_between_syncs_loads_weights_before_it_samples(tiny_model_dir, tmp_path):
    """Weights go out every 2 updates: a generator killed after the sync of version 2 comes back
    empty, is refused sampling (no silent initial weights), gets version 2, and the run goes on."""
    run = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "4", "--async_staleness", "1",
                       "--weight_sync_every", "2"), gate=tmp_path / "gate", gate_step=3)
    run.wait_at_gate()
    os.kill(actor_pid(tmp_path / "run", "distrl-generator-1"), signal.SIGKILL)
    time.sleep(1.0)
    run.release()
    code, out, err = run.finish()
    assert code == 0, err[-3000:]
    steps = metrics(tmp_path / "run")[1:]
    assert [m["policy_version"] for m in steps] == [1, 2, 3, 4]
    assert all(m["rollouts"] == 16 and m["staleness_max"] <= 1 for m in steps)
    assert steps[-1]["generator_restarts"] == 1
    assert "distrl-generator-1 is back" in err and "with policy version 2" in err


def test_a_generator_that_never_answers_a_sync_stops_the_run_naming_it(tiny_model_dir, tmp_path):
    run = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "4", "--sync_timeout_s", "5"),
              gate=tmp_path / "gate", gate_step=2)
    run.wait_at_gate()
    pid = actor_pid(tmp_path / "run", "distrl-generator-1")
    os.kill(pid, signal.SIGSTOP)  # alive, holding its resources, answering nothing
    try:
        run.release()
        start = time.time()
        code, out, err = run.finish(timeout=300)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert code == 1
    assert err.strip().splitlines()[-1] == ("error: weight sync to version 2: no answer within 5s from "
                                            "distrl-generator-1")
    assert time.time() - start < 120


def test_a_learner_killed_between_update_and_checkpoint(tiny_model_dir, tmp_path):
    """The learner dies after update 3, before checkpoint 4: the run stops naming it and the
    checkpoint of step 2; resuming from there finishes the run with steps 3 and 4 redone."""
    args = run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "4", "--save_every", "2")
    run = Run(args, gate=tmp_path / "gate", gate_step=4)
    run.wait_at_gate()
    os.kill(actor_pid(tmp_path / "run", "distrl-learner"), signal.SIGKILL)
    run.release()
    code, out, err = run.finish()
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    assert code == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: distrl-learner died (") and last.endswith(f"resume with --resume {ckpt}")
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000002"

    code, out, err = Run(args + ["--resume", "auto"]).finish()
    assert code == 0, err[-3000:]
    assert f"resumed from {ckpt}: step 2, policy version 2" in out
    steps = metrics(tmp_path / "run")[1:]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and [m["policy_version"] for m in steps] == [1, 2, 3, 4]


def test_auto_resume_restarts_every_actor_from_the_last_checkpoint(tiny_model_dir, tmp_path):
    run = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "4", "--save_every", "2",
                       "--auto_resume"), gate=tmp_path / "gate", gate_step=3)
    run.wait_at_gate()
    os.kill(actor_pid(tmp_path / "run", "distrl-learner"), signal.SIGKILL)
    run.release()
    code, out, err = run.finish()
    assert code == 0, err[-3000:]
    assert "distrl-learner died" in err and "--auto_resume: restarting every actor from" in err
    steps = metrics(tmp_path / "run")[1:]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and [m["policy_version"] for m in steps] == [1, 2, 3, 4]
    assert all(m["logprob_gap"] < 1e-4 for m in steps)  # the new generators got the restored weights
    assert "== distrl summary ==" in out
