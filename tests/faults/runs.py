"""Start a real training run in a subprocess, hold it at a reward gate, and hurt it for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CALLS_PER_STEP = 16  # --batch_size 4 x --num_candidates 4: one reward call per completion


def run_args(model_dir: str, out: Path, run_name: str, *extra: str) -> list[str]:
    return ["--model", model_dir, "--output_dir", str(out), "--run_name", run_name, "--number_of_actors", "2",
            "--batch_size", "4", "--learner_chunk_size", "1", "--num_candidates", "4", "--max_new_tokens", "8",
            "--num_eval", "4", "--eval_every", "0", "--lr", "1e-2", "--reward", "tests.helpers:gated_ones",
            "--reward_timeout_s", "120", "--log_samples", "4", "--dtype", "float32", *extra]


class Run:
    """A `train_distributed.py` process in its own session (so the whole tree can be killed)."""

    def __init__(self, args: list[str], gate: Path | None = None, gate_step: int = 0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DISTRL_TEST_GATE")}
        if gate is not None:
            gate.mkdir(parents=True, exist_ok=True)
            env["DISTRL_TEST_GATE"] = f"{gate}:{CALLS_PER_STEP * (gate_step - 1) + 1}"
        self.gate = gate
        self.proc = subprocess.Popen([sys.executable, "train_distributed.py", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def wait_at_gate(self, timeout: float = 300) -> None:
        """Until the gated step's rewards are being scored (generation done, update not yet)."""
        deadline = time.time() + timeout
        while not (self.gate / "paused").exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended before the gate:\n{self.proc.stderr.read()[-3000:]}")
            assert time.time() < deadline, "the run never reached the gate"
            time.sleep(0.1)

    def release(self) -> None:
        (self.gate / "go").touch()

    def finish(self, timeout: float = 600) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        """SIGKILL the driver and everything it started (the local Ray cluster included)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=60)


def actor_pid(run_dir: Path, name: str) -> int:
    with open(run_dir / "actors.json") as f:
        return int(json.load(f)[name]["pid"])


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def write_rows(path: Path, prompts: list[str]) -> str:
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"prompt": p, "answer": str(i)}) + "\n")
    return str(path)
