"""Does it learn? Train the embedded SmolLM2-135M-Instruct on the built-in arithmetic task with
2-3 algorithm presets, each for the same wall-clock budget, one after the other on this machine,
and print a table: preset, steps, held-out greedy accuracy at start and end, completion tokens/s.

    python bench/learning.py [--budget_min 20] [--presets default,dapo,dr_grpo] [--dtypes auto] [-- extra flags]

A preset is `default` (train_distributed.py's defaults) or an `--algo_preset` name; flags after
`--` go to every run. Each run is `train_distributed.py --time_budget_s` with evaluation only at
the start and the end (50 held-out prompts, greedy). `--dtypes float32,auto` runs every preset in
each dtype (auto: bf16 on a CPU with AMX/AVX512-BF16). Each run's peak memory is the machine's
memory in use (MemTotal - MemAvailable) above what it was at the run's start: all its Ray
processes together. Last line: the best preset and its gain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def used_mib() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return (info["MemTotal"] - info["MemAvailable"]) // 1024


def run(preset: str, budget_s: float, out: str, extra: list[str], dtype: str = "auto") -> dict:
    name = f"learning-{preset}-{dtype}"
    args = [sys.executable, "train_distributed.py", "--output_dir", out, "--run_name", name, "--dtype", dtype,
            "--max_steps", "100000", "--time_budget_s", str(budget_s), "--eval_every", "0",
            "--save_every", "0", "--plot_every", "0", *extra]
    if preset != "default":
        args += ["--algo_preset", preset]
    start, base, peak, done = time.perf_counter(), used_mib(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(2.0):
            peak[0] = max(peak[0], used_mib() - base)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    done.set()
    if proc.returncode != 0:
        raise SystemExit(f"{preset} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, name, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    steps = [m for m in lines if m["step"] > 0]
    return {"preset": f"{preset}/{dtype}", "peak_mib": peak[0], "steps": len(steps), "start": lines[0]["eval_accuracy"],
            "end": steps[-1]["eval_accuracy"], "tokens_per_s": sum(m["tokens_per_s"] for m in steps) / len(steps),
            "train_min": sum(m["step_s"] for m in steps) / 60, "wall_min": (time.perf_counter() - start) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_min", type=float, default=20.0)
    parser.add_argument("--presets", default="default,dapo,dr_grpo")
    parser.add_argument("--dtypes", default="auto", help="e.g. float32,auto: every preset in each")
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "bench-learning"))
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    opts = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    rows = [run(p, opts.budget_min * 60, opts.output_dir, extra, d)
            for p in opts.presets.split(",") for d in opts.dtypes.split(",")]
    print(f"{'preset/dtype':<18} {'steps':>5} {'eval start':>10} {'eval end':>9} {'gain':>6} {'tokens/s':>9} "
          f"{'train min':>9} {'s/step':>6} {'peak MiB':>8}")
    for r in rows:
        print(f"{r['preset']:<18} {r['steps']:>5} {r['start']:>10.3f} {r['end']:>9.3f} "
              f"{r['end'] - r['start']:>+6.3f} {r['tokens_per_s']:>9.1f} {r['train_min']:>9.1f} "
              f"{60 * r['train_min'] / max(r['steps'], 1):>6.1f} {r['peak_mib']:>8}")
    best = max(rows, key=lambda r: r["end"] - r["start"])
    print(f"best: {best['preset']} {best['start']:.3f} -> {best['end']:.3f} "
          f"({100 * (best['end'] - best['start']):+.0f} points in {best['train_min']:.1f} min of training)")


if __name__ == "__main__":
    main()
