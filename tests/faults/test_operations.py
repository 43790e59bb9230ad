"""Operations a user trips over, done for real on a training run in a subprocess: two runs on
one folder, SIGTERM and Ctrl-C, a disk too small for a checkpoint."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from launch.disk import parameter_count
from tests.faults.runs import Run, metrics, run_args, write_rows


def test_a_second_run_on_the_same_folder_refuses_at_once_naming_the_first(tiny_model_dir, tmp_path):
    first = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "3"), gate=tmp_path / "gate", gate_step=2)
    first.wait_at_gate()  # running, step 1 written
    code, out, err = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "3")).finish(timeout=300)
    assert code == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: run folder {tmp_path / 'run'} is in use by another run (pid {first.proc.pid} on "), last
    assert "pick another --run_name or --output_dir" in last
    first.release()
    code, out, err = first.finish()
    assert code == 0, err[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "run")] == [0, 1, 2, 3]  # one run's lines, in order


def test_the_lock_of_a_killed_run_is_taken_over(tiny_model_dir, tmp_path):
    first = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "3", "--save_every", "1"),
                gate=tmp_path / "gate", gate_step=2)
    first.wait_at_gate()
    first.kill()  # SIGKILL: no chance to clean up; the kernel drops its lock
    code, out, err = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "3", "--resume", "auto")).finish()
    assert code == 0, err[-3000:]
    assert f"took over the lock of pid {first.proc.pid} on " in err
    assert [m["step"] for m in metrics(tmp_path / "run")][-3:] == [1, 2, 3]


def test_sigterm_finishes_the_step_checkpoints_it_and_resume_goes_on_from_there(tiny_model_dir, tmp_path):
    """SIGTERM (kill, a preemption notice) mid-step: the step finishes, its checkpoint is
    written, one line says where and how to resume, exit 143; --resume auto goes on from the
    same data position."""
    rows = write_rows(tmp_path / "train.jsonl", [f"Say {i} ones" for i in range(20)])  # one epoch: 5 steps
    held_out = write_rows(tmp_path / "eval.jsonl", [f"Eval {i}" for i in range(4)])
    args = run_args(tiny_model_dir, tmp_path, "run", "--dataset", rows, "--eval_dataset", held_out,
                    "--max_steps", "5", "--save_every", "10", "--replay_prompts", "0")  # 4 fresh prompts a step
    run = Run(args, gate=tmp_path / "gate", gate_step=3)
    run.wait_at_gate()  # step 3 is being scored
    os.kill(run.proc.pid, signal.SIGTERM)
    time.sleep(2.0)  # the driver has taken the signal before the step goes on
    run.release()
    code, out, err = run.finish()
    ckpt = tmp_path / "run" / "checkpoints" / "step-000003"
    assert code == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"stopped by SIGTERM after step 3: checkpoint {ckpt}; resume with "
                                             "--resume auto (same --output_dir and --run_name)")
    assert "SIGTERM received: finishing the current step" in err and "*** SIGTERM received" not in err
    assert json.loads((ckpt / "trainer_state.json").read_text())["data_position"] == [0, 12]
    assert [m["step"] for m in metrics(tmp_path / "run")] == [0, 1, 2, 3]

    code, out, err = Run(args + ["--resume", "auto"]).finish()
    assert code == 0, err[-3000:]
    assert f"resumed from {ckpt}: step 3" in out
    assert [m["step"] for m in metrics(tmp_path / "run")] == [0, 1, 2, 3, 4, 5]
    seen = {}
    for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines():
        seen.setdefault(json.loads(line)["step"], set()).add(json.loads(line)["prompt"])
    assert not (seen[4] | seen[5]) & (seen[1] | seen[2] | seen[3])  # prompts 13-20 of the epoch, not again 1-12


def test_a_second_signal_stops_at_once_naming_the_last_checkpoint(tiny_model_dir, tmp_path):
    run = Run(run_args(tiny_model_dir, tmp_path, "run", "--max_steps", "5", "--save_every", "1"),
              gate=tmp_path / "gate", gate_step=3)
    run.wait_at_gate()  # step 2 is checkpointed; step 3 is held at its rewards and never released
    # Ctrl-C in a terminal: SIGINT to the whole process group (the reward process included).
    os.killpg(run.proc.pid, signal.SIGINT)
    time.sleep(2.0)
    assert run.proc.poll() is None  # the first one only asks for a clean stop
    os.killpg(run.proc.pid, signal.SIGINT)
    code, out, err = run.finish(timeout=120)
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    assert code == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"stopped by SIGINT at once (a second signal, or --stop_grace_s ran out): "
                                             f"last checkpoint {ckpt}; resume with --resume auto (same --output_dir "
                                             "and --run_name)")


@pytest.fixture
def small_disk(tmp_path, tiny_model_dir_64):
    """A tmpfs with room for the run's logs and final model but not for one checkpoint."""
    mount = tmp_path / "small"
    mount.mkdir()
    room = parameter_count(tiny_model_dir_64) * 12 * 7 // 10 // 1024  # KB: 0.7 of a checkpoint
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_checkpoint_onto_a_full_disk_is_warned_of_then_fails_in_one_line(tiny_model_dir_64, small_disk):
    code, out, err = Run(run_args(tiny_model_dir_64, small_disk, "run", "--max_steps", "2", "--save_every", "1",
                                  "--plot_every", "0")).finish()
    root = small_disk / "run" / "checkpoints"
    assert code == 1, err[-3000:]
    assert re.search(rf"warning: {small_disk / 'run'} has \d+ KB free, a checkpoint of this run needs about \d+ KB: "
                     r"saves will fail", err), err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint of step 1 failed: no space left on the device of {root} (about "), last
    assert "last good checkpoint: none" in last and "--resume auto" in last and "Traceback" not in err
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]  # the partial folder is gone
    assert [m["step"] for m in metrics(small_disk / "run")] == [0]  # stopped at the failed save


def test_on_save_error_continue_trains_on_without_checkpoints(tiny_model_dir_64, small_disk):
    code, out, err = Run(run_args(tiny_model_dir_64, small_disk, "run", "--max_steps", "2", "--save_every", "1",
                                  "--plot_every", "0", "--on_save_error", "continue")).finish()
    assert code == 0, err[-3000:]
    assert err.count("going on without it (--on_save_error continue)") == 2  # steps 1 and 2
    assert [m["step"] for m in metrics(small_disk / "run")] == [0, 1, 2]
    assert (small_disk / "run" / "final" / "model.safetensors").exists()
