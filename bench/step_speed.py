"""One whole default step in fp32 and in bf16 (what `--dtype auto` picks on a CPU with AMX), side by side.

Each side is a real run of `train_distributed.py` with the default flags (2 generators and the
learner's chunk that `--learner_chunk_size` auto gives each side, printed; 8 prompts x 8 samples,
the default token budget) and the same `--backend`;
only `--dtype` differs. The first `--warmup` steps are left out (first-call kernels, caches);
the median of the rest is reported per phase: gen_s (sampling, all actors at once), train_s
(the learner's forward, backward and update), sync_s (generators loading the new weights),
reward_s and step_s (the whole step). Evaluation is off, so start-up and held-out passes are
not timed.

A shared machine's speed drifts (this one's bf16 matmul rate moved between 390 and 660 GFLOP/s
within a minute). `--repeats N` runs the pair N times, alternating fp32 and bf16, and takes each
side's median over all its timed steps, so a slow spell falls on both sides.

    python bench/step_speed.py [--steps 4] [--warmup 1] [--repeats 1] [--backend auto] [--model NAME]

Last line: `bf16/fp32 step_s = X.XX`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("gen_s", "reward_s", "train_s", "sync_s", "step_s")


def run(side: list[str], args: argparse.Namespace, out: str, name: str) -> tuple[list[dict], float]:
    """The timed steps' metrics, and the run's whole wall time; `side`: the flags that differ."""
    label = " ".join(side)
    cmd = [sys.executable, os.path.join(ROOT, "train_distributed.py"), *side,
           "--backend", args.backend, "--max_steps", str(args.steps), "--eval_every", "0",
           "--plot_every", "0", "--output_dir", out, "--run_name", name, *args.extra]
    if args.model:
        cmd += ["--model", args.model]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{label} run failed:\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(("dtype auto", "backend auto", "learner_chunk_size auto")):
            print(f"  {label}: {line}", flush=True)
    with open(os.path.join(out, name, "metrics.jsonl")) as f:
        steps = [m for m in map(json.loads, f) if m.get("step", 0) > args.warmup and "step_s" in m]
    if not steps:
        sys.exit(f"{label}: no step after the {args.warmup} warm-up step(s); raise --steps")
    return steps, wall


def alternate(sides: dict[str, list[str]], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run every side (name -> the flags that differ) `args.repeats` times, one after the other so
    they never share the cores, alternating so that a slow spell falls on all; each side's median
    per phase over all its timed steps."""
    steps: dict[str, list[dict]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            for side, flags in sides.items():
                timed, wall = run(flags, args, out, f"{side}-{r}")
                steps[side] += timed
                print(f"{side} (run {r + 1}/{args.repeats}): {args.steps} steps in {wall:.0f} s, "
                      "step_s " + " ".join(f"{m['step_s']:.1f}" for m in timed), flush=True)
    print(f"median of steps {args.warmup + 1}..{args.steps} over {args.repeats} run(s) per side (seconds):")
    return {side: {k: statistics.median(m[k] for m in steps[side]) for k in PHASES} for side in sides}


def print_phases(before: dict[str, float], after: dict[str, float], heads: tuple[str, str, str]) -> None:
    """The two sides' medians per phase and their ratio (after / before), under `heads`."""
    print(f"{'phase':<10}{heads[0]:>10}{heads[1]:>10}{heads[2]:>11}")
    for k in PHASES:
        print(f"{k:<10}{before[k]:>10.2f}{after[k]:>10.2f}{after[k] / max(before[k], 1e-9):>11.2f}")


def parser(doc: str, steps: int, repeats: int) -> argparse.ArgumentParser:
    """The flags every side-by-side step bench takes (unknown ones go to both sides' runs)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--steps", type=int, default=steps, help="steps per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=repeats, help="run the pair N times, alternating the sides")
    ap.add_argument("--backend", default="auto", help="the same generator backend on both sides")
    ap.add_argument("--model", default="", help="default: the embedded SmolLM2-135M")
    return ap


def main() -> None:
    ap = parser(__doc__, steps=4, repeats=1)
    ap.add_argument("--bf16", default="auto", help="the bf16 side's --dtype (auto: what a user gets)")
    args, args.extra = ap.parse_known_args()
    if args.bf16 == "float32" or args.repeats < 1:
        ap.error("--bf16 must be a low-precision dtype (auto, bfloat16, float16) and --repeats >= 1")
    medians = alternate({"float32": ["--dtype", "float32"], args.bf16: ["--dtype", args.bf16]}, args)
    fp32, bf16 = medians["float32"], medians[args.bf16]
    print_phases(fp32, bf16, ("fp32", "bf16", "bf16/fp32"))
    print(f"bf16/fp32 step_s = {bf16['step_s'] / fp32['step_s']:.2f}")


if __name__ == "__main__":
    main()
