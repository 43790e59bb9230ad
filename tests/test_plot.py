"""`python -m distrl.plot OUTPUT_DIR` redraws a finished run's plots from metrics.jsonl."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plots_are_drawn_from_metrics_jsonl(tmp_path):
    rows = [{"step": 0, "policy_version": 0, "eval_accuracy": 0.1}]
    rows += [{"step": s, "reward_mean": s / 10, "accuracy": s / 20, "completion_len_mean": 20 - s, "kl": 0.01 * s,
              "logprob_gap": 2e-6, "gen_s": 10, "reward_s": 0.1, "ref_s": 0, "train_s": 5, "sync_s": 0.1,
              "step_s": 15.2} for s in range(1, 6)]
    rows[-1]["eval_accuracy"] = 0.3
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    proc = subprocess.run([sys.executable, "-m", "distrl.plot", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    names = sorted(os.listdir(tmp_path / "plots"))
    assert names == ["completion_length.png", "eval_accuracy.png", "kl_logprob_gap.png", "reward.png",
                     "time_per_step.png"]
    for name in names:
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_a_folder_without_metrics_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distrl.plot", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "a run folder holding metrics.jsonl" in proc.stderr


def test_tensorboard_gets_every_numeric_metric_per_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from launch.metrics import ExtraLogs

    logs = ExtraLogs(str(tmp_path), "run", tensorboard=True, wandb=False)
    logs.record({"step": 0, "eval_accuracy": 0.25})
    logs.record({"step": 1, "reward_mean": 0.5, "logprob_gap": 2e-6, "note": "text is skipped"})
    logs.record({"step": 2, "reward_mean": 0.75, "logprob_gap": 3e-6})
    logs.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"eval_accuracy", "reward_mean", "logprob_gap"}
    assert [(e.step, e.value) for e in events.Scalars("reward_mean")] == [(1, 0.5), (2, 0.75)]


def test_completion_length_spread_per_step():
    from launch.driver import length_percentiles

    assert length_percentiles(list(range(1, 11))) == {"completion_len_p10": 2.0, "completion_len_p90": 10.0,
                                                      "completion_len_max": 10.0}
    assert length_percentiles([7]) == {"completion_len_p10": 7.0, "completion_len_p90": 7.0, "completion_len_max": 7.0}
