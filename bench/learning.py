"""Does it learn, on tasks no default was chosen on, and better than TRL? Train the embedded
SmolLM2-135M-Instruct on each built-in task family for the same wall-clock budget, with distrl's
defaults (and, with --vs_trl, with TRL's GRPOTrainer), one run after the other on this machine,
then score every final model and the untrained one with ONE shared evaluator.

    python bench/learning.py [--vs_trl] [--families word,two_step] [--only FAMILY] [--seeds 0,1]
        [--budget_min 20] [--split test] [--presets default] [--dtypes auto] [-- extra distrl flags]
    python bench/learning.py --lengths        # the untrained model's answer lengths per family

The shared evaluator (`evaluate`): transformers, fp32, greedy, 48 new tokens, the family's
`--split` rows (300; `validation` to choose settings, `test` to report), the chat template
without a system prompt (as both systems train), exact answer = the last number equals the
reference. Neither system's own evaluation is used.

TRL runs in its own virtual environment (.venv-trl, created here on first use; TRL is not a
project dependency) through bench/trl_grpo.py, whose docstring lists its settings.

Every finished run is stored as JSON under bench/results/FAMILY/, keyed by system, seed, budget,
split and version (distrl: the commit; TRL: its version, and `-float32` where it ran in fp32: see
`--trl_dtype`; the untrained model: none), with the
machine it ran on (CPU, cores, bf16 units; a reused run from another machine is warned about, as
its budget bought another amount of training), and reused:
a bench that was interrupted picks up where it stopped, `--only FAMILY` runs one family and
prints the table of every family stored for the same keys. Each row: family, system, accuracy
before and after, gain in points, optimizer steps, samples (completions) per second of training.
A stored distrl run also keeps the learning-health warnings its run printed (`warnings`) and the
share of the evaluator's answers that loop (`loop_frac`).
Last line, with --vs_trl (the worst family is the lowest mean over seeds):
`distrl-trl gain = +X.X points (worst family), distrl gain = +Y.Y points (worst family)`.
300 problems per split: one problem is 0.33 points, and differences under ~5 points are noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from distrl.config import DEFAULT_MODEL  # noqa: E402
from distrl.data.tasks import FAMILIES, TUNING_FAMILIES, task_splits  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")  # --results_dir
TRL_VENV = os.path.join(ROOT, ".venv-trl")
TRL_REQUIREMENTS = ["torch==2.13.0", "trl==1.16.0", "transformers==5.19.0", "datasets==5.2.0", "accelerate==1.15.0"]
EVAL_TOKENS = 48


def commit() -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "distrl", "launch", "actors", "learners",
                            "train_distributed.py"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (rev or "nogit") + ("-dirty" if dirty else "")


def machine() -> str:
    """This machine as each stored run records it: a wall-clock budget buys a different amount of
    training on another CPU, so rows measured on different machines do not compare."""
    from distrl.precision import BF16_UNITS, cpu_flags

    name = "unknown CPU"
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    units = "+".join(sorted(cpu_flags() & set(BF16_UNITS))) or "no bf16 matrix units"
    return f"{name}, {os.cpu_count()} cores, {units}"


def evaluate(model_dir: str, rows: list[dict], max_new_tokens: int = EVAL_TOKENS, batch: int = 50) -> dict:
    """The shared evaluator: greedy accuracy, cut-off share, answer lengths and the share of answers
    that loop (repeat one of their lines 3+ times) of one model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distrl.data.prompts import encode_prompt
    from distrl.rewards.answers import numeric_reward, repeats_itself

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    texts, lengths = [], []
    for start in range(0, len(rows), batch):
        ids = [encode_prompt(tok, r["prompt"]) for r in rows[start:start + batch]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad)
        for seq in out[:, width:].tolist():
            n = next((i + 1 for i, t in enumerate(seq) if t == tok.eos_token_id), None)
            lengths.append(n if n is not None else max_new_tokens + 1)  # budget + 1 = cut off
            texts.append(tok.decode(seq[:n], skip_special_tokens=True))
    correct = numeric_reward([r["prompt"] for r in rows], texts, answer=[r["answer"] for r in rows])
    ordered = sorted(lengths)
    return {"accuracy": sum(correct) / len(rows), "cut_frac": sum(n > max_new_tokens for n in lengths) / len(rows),
            "len_p50": ordered[len(ordered) // 2], "len_p90": ordered[int(0.9 * len(ordered))],
            "loop_frac": sum(map(repeats_itself, texts)) / len(rows),
            "samples": [{"prompt": r["prompt"], "completion": t} for r, t in zip(rows[:3], texts[:3])]}


def stored(path: str, make) -> dict:
    """The JSON at `path`, or make it (a finished run) and store it."""
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    result = make()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    return result


def base_model(name: str) -> str:
    from distrl.models import resolve_model

    return resolve_model(name)


def run_distrl(system: str, family: str, seed: int, budget_s: float, split: str, out: str, preset: str,
               dtype: str, extra: list[str], model: str) -> dict:
    name = f"{family}-{system}-s{seed}-{split}-{budget_s / 60:g}min"  # a later run must not overwrite it
    shutil.rmtree(os.path.join(out, name), ignore_errors=True)  # a fresh run, never an appended one
    args = [sys.executable, "train_distributed.py", "--model", model, "--dataset", family, "--eval_split", split,
            "--output_dir", out, "--run_name", name, "--dtype", dtype, "--seed", str(seed),
            "--max_steps", "100000", "--time_budget_s", str(budget_s), "--eval_every", "0",
            "--save_every", "0", "--plot_every", "0", *extra]
    if preset != "default":
        args += ["--algo_preset", preset]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"distrl on {family} failed:\n{proc.stderr[-3000:]}")
    # The run is scored from final/ and never resumed: its last checkpoint (the fp32 masters and
    # moments, 1.8 GB for the embedded model) only fills the disk.
    shutil.rmtree(os.path.join(out, name, "checkpoints"), ignore_errors=True)
    with open(os.path.join(out, name, "metrics.jsonl")) as f:
        steps = [m for m in map(json.loads, f) if m["step"] > 0]
    train_s = sum(m["step_s"] for m in steps)
    return {"model": os.path.join(out, name, "final"), "steps": len(steps), "train_s": train_s,
            "samples_per_s": sum(m["rollouts"] for m in steps) / train_s,
            "truncated_frac": statistics.mean(m["truncated_frac"] for m in steps),
            "prompt_copy_frac_end": steps[-1]["prompt_copy_frac"], "repeat_frac_end": steps[-1]["repeat_frac"],
            "warnings": [line for line in proc.stderr.splitlines() if line.startswith("warning:")]}


def trl_python() -> str:
    python = os.path.join(TRL_VENV, "bin", "python")
    if not os.path.isfile(os.path.join(TRL_VENV, ".installed")):
        print(f"creating {TRL_VENV} for TRL ({', '.join(TRL_REQUIREMENTS)})", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", TRL_VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *TRL_REQUIREMENTS], check=True)
        open(os.path.join(TRL_VENV, ".installed"), "w").close()
    return python


def trl_dtype(choice: str, flags: set[str]) -> str:
    """TRL's compute dtype: its own default (bf16) where the CPU has bf16 matrix units, else fp32,
    as distrl's `--dtype auto`. Without them bf16 matrix work is emulated, ~5x slower than fp32 on
    the Intel Xeon (142 against 29 GFLOP/s, 1024^2 matmul, one thread): TRL's default there would
    be a peer built to lose."""
    from distrl.precision import cpu_bf16_units

    if choice != "auto":
        return choice
    return "bfloat16" if cpu_bf16_units(flags) else "float32"


def trl_version(dtype: str) -> str:
    """The key of a stored TRL run: its version, and its dtype where that is not TRL's default."""
    return "trl1.16.0" + ("" if dtype == "bfloat16" else f"-{dtype}")


def run_trl(family: str, seed: int, budget_s: float, out: str, model: str, dtype: str) -> dict:
    folder = os.path.join(out, f"{family}-trl-s{seed}-{budget_s / 60:g}min")
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "train.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in task_splits(family)["train"])
    proc = subprocess.run([trl_python(), os.path.join(ROOT, "bench", "trl_grpo.py"), "--model", base_model(model),
                           "--train_jsonl", data, "--budget_s", str(budget_s), "--seed", str(seed),
                           "--out", os.path.join(folder, "final"), "--dtype", dtype],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"TRL on {family} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"model": os.path.join(folder, "final"), "steps": summary["steps"], "train_s": summary["train_s"],
            "samples_per_s": summary["samples"] / summary["train_s"], "dtype": dtype}


def lengths_table(opts) -> None:
    """The untrained model's greedy answer lengths per family (validation split, 256 tokens)."""
    print(f"{'family':<12} {'p50':>4} {'p90':>4} {'cut at 256':>10} {'accuracy':>8}")
    p90s = {}
    for family in opts.families:
        rows = task_splits(family)["validation"][:opts.length_prompts]
        r = stored(os.path.join(opts.results_dir, family, f"base-lengths-{len(rows)}.json"),
                   lambda: evaluate(base_model(opts.model), rows, max_new_tokens=256, batch=25))
        p90s[family] = r["len_p90"]
        print(f"{family:<12} {r['len_p50']:>4} {r['len_p90']:>4} {r['cut_frac']:>10.2f} {r['accuracy']:>8.3f}")
    tuned = [p90s[f] for f in TUNING_FAMILIES if f in p90s]
    if tuned:
        print(f"base p90 answer length on the tuning families ({', '.join(TUNING_FAMILIES)}): max {max(tuned)} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vs_trl", action="store_true", help="also train with TRL's GRPOTrainer")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--only", default="", help="run this family only; print every stored family")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--budget_min", type=float, default=20.0)
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--presets", default="default", help="distrl presets: default or --algo_preset names")
    parser.add_argument("--dtypes", default="auto", help="distrl --dtype per run, e.g. float32,auto")
    parser.add_argument("--lengths", action="store_true", help="only measure the base model's answer lengths")
    parser.add_argument("--length_prompts", type=int, default=100)
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "bench-learning"))
    parser.add_argument("--results_dir", default=RESULTS, help="where finished runs are stored as JSON")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="for both systems (a smoke test: a tiny one)")
    parser.add_argument("--print_only", action="store_true", help="train nothing: the table of stored runs")
    parser.add_argument("--at_commit", default="", help="distrl rows stored at this commit (reprint a table, "
                        "or finish one after a commit); default: the checkout's")
    parser.add_argument("--trl_dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                        help="TRL's compute dtype: auto = bfloat16 (TRL's default) where the CPU has bf16 "
                        "matrix units, else float32; its stored runs are keyed by it")
    parser.add_argument("--eval_rows", type=int, default=0, help="score only this many rows of the split (smoke tests)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    opts = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    opts.families = opts.families.split(",")
    unknown = [f for f in opts.families + ([opts.only] if opts.only else []) if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown family {unknown[0]}: choose from {', '.join(FAMILIES)}")
    if opts.lengths:
        return lengths_table(opts)
    seeds, budget_s = [int(s) for s in opts.seeds.split(",")], opts.budget_min * 60
    tag = "-x" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:6] if extra else ""
    systems = [(f"distrl-{p}-{d}{tag}", p, d) for p in opts.presets.split(",") for d in opts.dtypes.split(",")]
    if opts.vs_trl:
        systems.append(("trl", "", ""))
    scope = ("" if opts.model == DEFAULT_MODEL and not opts.eval_rows else
             "-" + hashlib.sha1(f"{opts.model} {opts.eval_rows}".encode()).hexdigest()[:6])
    key = f"{opts.budget_min:g}min-{opts.split}{scope}"
    from distrl.precision import cpu_flags

    dtype_of_trl = trl_dtype(opts.trl_dtype, cpu_flags())
    version = {"trl": trl_version(dtype_of_trl)}
    here = machine()
    rows = []
    for family in opts.families:
        split_rows = task_splits(family)[opts.split][:opts.eval_rows or None]
        base = stored(os.path.join(opts.results_dir, family, f"base-{opts.split}{scope}.json"),
                      lambda: evaluate(base_model(opts.model), split_rows))
        for system, preset, dtype in systems:
            for seed in seeds:
                path = os.path.join(opts.results_dir, family,
                                    f"{system}-seed{seed}-{key}-{version.get(system, opts.at_commit or commit())}.json")
                if not os.path.isfile(path) and (opts.print_only or opts.only and family != opts.only):
                    continue

                def make() -> dict:
                    started = time.perf_counter()
                    run = (run_trl(family, seed, budget_s, opts.output_dir, opts.model, dtype_of_trl)
                           if system == "trl" else
                           run_distrl(system, family, seed, budget_s, opts.split, opts.output_dir, preset, dtype,
                                      extra, opts.model))
                    return {**run, **evaluate(run["model"], split_rows), "wall_s": time.perf_counter() - started,
                            "family": family, "system": system, "seed": seed, "budget_min": opts.budget_min,
                            "split": opts.split, "extra": extra if system != "trl" else [], "machine": here}

                r = stored(path, make)
                if r.get("machine", here) != here:
                    print(f"warning: the stored {system} run on {family} (seed {seed}) was measured on "
                          f"{r['machine']}, this is {here}: its {opts.budget_min:g} minutes bought another "
                          f"amount of training; delete {os.path.relpath(path)} to run it here",
                          file=sys.stderr, flush=True)
                rows.append({**r, "base": base["accuracy"]})
    unrecorded = sum("machine" not in r for r in rows)
    if unrecorded:
        print(f"note: {unrecorded} of these rows were stored before runs recorded their machine "
              f"(2026-12-05); this is {here}", file=sys.stderr)
    report(rows, systems, opts.vs_trl)


def report(rows: list[dict], systems: list, vs_trl: bool) -> None:
    print(f"{'family':<12} {'system':<28} {'seed':>4} {'before':>6} {'after':>6} {'gain':>6} {'steps':>5} "
          f"{'samples/s':>9} {'cut':>5}")
    for r in rows:
        print(f"{r['family']:<12} {r['system']:<28} {r['seed']:>4} {100 * r['base']:>6.1f} {100 * r['accuracy']:>6.1f} "
              f"{100 * (r['accuracy'] - r['base']):>+6.1f} {r['steps']:>5} {r['samples_per_s']:>9.2f} "
              f"{100 * r['cut_frac']:>4.0f}%")
    gains: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        gains.setdefault((r["family"], r["system"]), []).append(100 * (r["accuracy"] - r["base"]))
    ours = systems[0][0]
    families = sorted({f for f, s in gains if s == ours})
    if not families:
        return
    mean = {k: statistics.mean(v) for k, v in gains.items()}
    worst_ours = min(mean[(f, ours)] for f in families)
    if vs_trl:
        both = [f for f in families if (f, "trl") in mean]
        worst_vs = min(mean[(f, ours)] - mean[(f, "trl")] for f in both) if both else float("nan")
        print(f"distrl-trl gain = {worst_vs:+.1f} points (worst family), distrl gain = {worst_ours:+.1f} points (worst family)")
    else:
        print(f"distrl gain = {worst_ours:+.1f} points (worst family)")


if __name__ == "__main__":
    main()
