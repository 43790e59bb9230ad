"""The documented job path on a real local cluster: `ray start --head`, then `ray job submit
--working-dir . -- python train_distributed.py ...` with RAY_AUTH_MODE=token (Ray 2.60's token
authentication). A run succeeds with the summary in its logs, a broken one fails with its traceback,
and a stopped one leaves no actor or placement group behind."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.test_system import tiny_run_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.alone  # `ray start` here: ray.init() in a test beside it would join this head
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def ray_cli(*args, timeout=120):
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token"}
    return subprocess.run([RAY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def submit(*train_args) -> str:
    proc = ray_cli("job", "submit", "--working-dir", ".", "--no-wait", "--",
                   sys.executable, "train_distributed.py", *train_args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return re.search(r"raysubmit_\w+", proc.stdout + proc.stderr).group(0)


def status(job: str) -> str:
    out = ray_cli("job", "list").stdout
    match = re.search(rf"submission_id='{job}'.*?status=<JobStatus\.(\w+)", out)
    return match.group(1) if match else "UNKNOWN"


def wait_for(job: str, states: set[str], timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = status(job)
        if state in states:
            return state
        time.sleep(2)
    raise AssertionError(f"{job} never reached {states} (last: {state})")


def listing(kind: str) -> list[dict]:
    return json.loads(ray_cli("list", kind, "--format", "json", "--limit", "1000").stdout or "[]")


@pytest.fixture(scope="module")
def head():
    proc = ray_cli("start", "--head", "--num-cpus", "2", "--disable-usage-stats", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield
    ray_cli("stop", "--force", timeout=180)


def test_job_succeeds_fails_and_stops_cleanly(head, tiny_model_dir, tmp_path):
    ok = submit(*tiny_run_args(tiny_model_dir, "--output_dir", str(tmp_path), "--run_name", "ok"))
    assert wait_for(ok, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED", ray_cli("job", "logs", ok).stdout[-3000:]
    logs = ray_cli("job", "logs", ok).stdout
    assert "== distrl summary ==" in logs and "held-out accuracy" in logs

    # A run that breaks once training started: FAILED, and the traceback is in the job's logs.
    bad = submit(*tiny_run_args(tiny_model_dir, "--reward", "tests.helpers:always_raises", "--max_steps", "1",
                                "--output_dir", str(tmp_path), "--run_name", "bad"))
    assert wait_for(bad, {"SUCCEEDED", "FAILED"}) == "FAILED"
    logs = ray_cli("job", "logs", bad).stdout
    assert "Traceback (most recent call last)" in logs and "KeyError: 'missing'" in logs

    long = submit(*tiny_run_args(tiny_model_dir, "--max_steps", "500", "--output_dir", str(tmp_path),
                                 "--run_name", "long"))
    deadline = time.time() + 180
    while not any(a["name"] == "distrl-learner" and a["state"] == "ALIVE" for a in listing("actors")):
        assert time.time() < deadline, "the learner never started"
        time.sleep(2)
    assert ray_cli("job", "stop", long).returncode == 0
    assert wait_for(long, {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED"
    deadline = time.time() + 60
    while True:
        alive = [a["name"] for a in listing("actors") if a["state"] != "DEAD" and a["name"].startswith("distrl")]
        groups = [g["name"] for g in listing("placement-groups") if g["state"] != "REMOVED"]
        if not alive and not groups:
            break
        assert time.time() < deadline, f"left behind: actors {alive}, placement groups {groups}"
        time.sleep(2)


def _ms(stamp) -> float:
    """A task's time from `ray list tasks --detail` (epoch ms, or an ISO string in some versions)."""
    if isinstance(stamp, (int, float)):
        return float(stamp)
    from datetime import datetime

    return datetime.fromisoformat(str(stamp)).timestamp() * 1000


def test_in_lockstep_the_learner_samples_its_next_chunk_while_the_generators_load(head, tiny_model_dir,
                                                                                  tmp_path):
    """Ray's own task records of a lockstep run: after each update but the last, the learner's next
    generate call is sent before every generator has finished loading the new weights (it holds
    them already), and each generator's next generate waits for its load."""
    job = submit(*tiny_run_args(tiny_model_dir, "--max_steps", "3", "--output_dir", str(tmp_path),
                                "--run_name", "overlap"))
    assert wait_for(job, {"SUCCEEDED", "FAILED"}) == "SUCCEEDED", ray_cli("job", "logs", job).stdout[-3000:]
    job_id = next(j["job_id"] for j in listing("jobs") if j.get("submission_id") == job)
    tasks = json.loads(ray_cli("list", "tasks", "--detail", "--format", "json", "--limit", "10000",
                               "--filter", f"job_id={job_id}").stdout)

    def calls(name):
        return sorted((t for t in tasks if t["func_or_class_name"] == name), key=lambda t: _ms(t["creation_time_ms"]))

    updates, samples = calls("LearnerActor.step"), calls("LearnerActor.generate")
    loads, gens = calls("GenerationActor.load_weights"), calls("GenerationActor.generate")
    assert len(updates) == 3 and len(samples) == 3
    for update, sample in zip(updates[:-1], samples[1:]):
        done = _ms(update["end_time_ms"])
        its_loads = [t for t in loads if _ms(t["creation_time_ms"]) >= done][:2]
        assert len(its_loads) == 2
        assert _ms(sample["creation_time_ms"]) < min(_ms(t["end_time_ms"]) for t in its_loads)
        for load in its_loads:  # the generator's next chunk runs on the weights it loaded
            after = next(t for t in gens if t["actor_id"] == load["actor_id"]
                         and _ms(t["creation_time_ms"]) >= _ms(load["creation_time_ms"]))
            assert _ms(after["start_time_ms"]) >= _ms(load["end_time_ms"])
