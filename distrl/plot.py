"""Draw a run's plots from its metrics.jsonl (the source of truth) into OUTPUT_DIR/plots/.

    python -m distrl.plot OUTPUT_DIR

Plots: reward and accuracy, held-out accuracy, completion length, KL and logprob_gap, and the
time per step split by phase. Uses matplotlib's file-only backend; reads nothing but the file.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

PHASES = ("gen_s", "reward_s", "ref_s", "train_s", "sync_s")


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    picked = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in picked], [v for _, v in picked]


def draw(run_dir: str) -> list[str]:
    """Write the PNGs; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = os.path.join(run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    charts = {
        "reward.png": ("reward and accuracy per step", ["reward_mean", "accuracy"], None),
        "eval_accuracy.png": ("held-out accuracy (greedy)", ["eval_accuracy"], "o-"),
        "completion_length.png": ("completion length (tokens): mean, 10th/90th percentile, max",
                                  ["completion_len_mean", "completion_len_p10", "completion_len_p90",
                                   "completion_len_max"], None),
        "kl_logprob_gap.png": ("KL to reference and logprob_gap",
                               ["kl", "logprob_gap", "logprob_gap_learner", "logprob_gap_stale"], None),
    }
    paths = []
    for name, (title, keys, style) in charts.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            steps, values = _series(rows, key)
            ax.plot(steps, values, style or "-", label=key)
        ax.set(title=title, xlabel="step")
        ax.legend()
        ax.grid(alpha=0.3)
        paths.append(_save(fig, out, name))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows if "step_s" in r]
    bottom = [0.0] * len(steps)
    for phase in PHASES:
        values = [r.get(phase, 0.0) for r in rows if "step_s" in r]
        ax.bar(steps, values, bottom=bottom, label=phase.removesuffix("_s"))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(title="seconds per step by phase", xlabel="step", ylabel="s")
    ax.legend(fontsize="small")
    paths.append(_save(fig, out, "time_per_step.png"))
    return paths


def _save(fig: Any, folder: str, name: str) -> str:
    import matplotlib.pyplot as plt

    path = os.path.join(folder, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isfile(os.path.join(sys.argv[1], "metrics.jsonl")):
        print("usage: python -m distrl.plot OUTPUT_DIR  (a run folder holding metrics.jsonl)", file=sys.stderr)
        sys.exit(2)
    for p in draw(sys.argv[1]):
        print(p)
