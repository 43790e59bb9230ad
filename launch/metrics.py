"""Run outputs: `metrics.jsonl` (one JSON object per line, the source of truth), gauges for the
Ray dashboard (`ray.util.metrics`, tagged with the run name), the console line printed per step,
and the closing summary."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any


class MetricsLog:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_through(self, step: int) -> None:
        """Drop the records of steps after `step` (a resumed run redoes them)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)


# metrics.jsonl keys exported as dashboard gauges, named distrl_<key>.
DASHBOARD_KEYS = ("step", "policy_version", "reward_mean", "accuracy", "eval_accuracy", "loss", "kl",
                  "logprob_gap", "logprob_gap_learner", "completion_len_mean", "tokens_per_s", "gen_s",
                  "reward_s", "ref_s", "train_s", "sync_s", "step_s", "samples_per_s", "staleness_max",
                  "rollouts_dropped", "reward_errors", "reward_timeouts")


class DashboardMetrics:
    """Gauges in Ray's metrics export (Prometheus format), so the dashboard can chart a run."""

    def __init__(self, run_name: str) -> None:
        from ray.util.metrics import Gauge

        self.tags = {"run": run_name}
        self.gauges = {k: Gauge(f"distrl_{k}", description=f"distrl {k} (see metrics.jsonl)",
                                tag_keys=("run",)) for k in DASHBOARD_KEYS}

    def record(self, metrics: dict[str, Any]) -> None:
        for key, gauge in self.gauges.items():
            if key in metrics and math.isfinite(float(metrics[key])):
                gauge.set(float(metrics[key]), tags=self.tags)


class ExtraLogs:
    """Optional copies of each metrics record: TensorBoard scalars in `output_dir/tensorboard`
    and a Weights & Biases run (project distrl). metrics.jsonl stays the source of truth."""

    def __init__(self, output_dir: str, run_name: str, tensorboard: bool, wandb: bool,
                 config: dict[str, Any] | None = None) -> None:
        self.tb = self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        if wandb:
            import wandb as wb

            self.wandb = wb.init(project="distrl", name=run_name, config=config, dir=output_dir)

    def record(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        scalars = {k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, int | float)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def object_store_bytes_used() -> int:
    """Bytes the connected cluster's object store holds now (Ray's memory summary)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    return get_memory_info_reply(state).store_stats.object_store_bytes_used


def step_line(m: dict[str, Any], max_steps: int) -> str:
    parts = [f"step {m['step']}/{max_steps}", f"reward {m['reward_mean']:.3f}", f"acc {m['accuracy']:.3f}",
             f"loss {m['loss']:+.4f}", f"kl {m['kl']:.4f}", f"gap {m['logprob_gap']:.1e}",
             f"len {m['completion_len_mean']:.1f}", f"{m['tokens_per_s']:.0f} tok/s",
             f"{m['step_s']:.1f}s (gen {m['gen_s']:.1f} train {m['train_s']:.1f} sync {m['sync_s']:.2f})"]
    if "eval_accuracy" in m:
        parts.append(f"eval_accuracy {m['eval_accuracy']:.3f}")
    return " | ".join(parts)


def gap_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's logprob_gap for the summary: the generators' median and worst step (a median
    alone hides one bad step), and the learner's own chunk apart. Steps without any are left out."""
    out: dict[str, Any] = {}
    for key in ("logprob_gap", "logprob_gap_learner"):
        steps = [m for m in history if math.isfinite(m.get(key, float("nan")))]
        if steps:
            worst = max(steps, key=lambda m: m[key])
            out.update({key: statistics.median(m[key] for m in steps), f"{key}_max": worst[key],
                        f"{key}_max_step": worst["step"]})
    return out


def _evaluator(s: dict[str, Any]) -> str:
    """How held-out accuracy was measured: one evaluator at both ends, its budget, and how many
    answers it cut off (a rise in accuracy with many cut off answers may be length, not skill)."""
    if "eval_tokens" not in s:
        return ""
    cut = [f"{100 * s[k]:.0f}%" for k in ("eval_truncated_start", "eval_truncated_end") if s.get(k) is not None]
    return (f" (greedy, {s['eval_tokens']} new tokens"
            + (f"; cut off at the budget: {' -> '.join(cut)}" if cut else "") + ")")


def summary_lines(s: dict[str, Any]) -> list[str]:
    lines = ["== distrl summary ==",
             f"steps: {s['steps']}",
             f"held-out accuracy: {s['eval_accuracy_start']:.3f} at step 0 -> "
             f"{s['eval_accuracy_end']:.3f} at step {s['steps']}" + _evaluator(s)]
    if "median_step_s" in s:
        lines += [f"seconds per step (median): {s['median_step_s']:.1f}",
                  f"completion tokens/s (median): {s['tokens_per_s']:.1f}",
                  *[f"logprob_gap{label}: median {s[k]:.2e}, max {s[k + '_max']:.2e} at step {s[k + '_max_step']}"
                    for k, label in (("logprob_gap", " (generators vs learner)"),
                                     ("logprob_gap_learner", "_learner (its own chunk)")) if k in s],
                  f"training time: {s['train_minutes']:.1f} min"]
    lines += [f"outputs: {s['output_dir']} (metrics.jsonl, config.json, plots/)",
              f"final model: {s['final_model']}"]
    return lines
