"""TRL's GRPOTrainer on one built-in task family, for the same wall-clock budget as distrl: the
peer in bench/learning.py --vs_trl. It runs in the TRL virtual environment that bench/learning.py
creates (.venv-trl); TRL is not a distrl dependency.

    .venv-trl/bin/python bench/trl_grpo.py --model DIR --train_jsonl F --budget_s S --seed N --out DIR
        [--dtype bfloat16|float32]

What a user of TRL would run: GRPOConfig's defaults (temperature 1.0, beta 0, loss_type dapo,
epsilon 0.2, bf16, one optimizer step per generation batch) with the settings the issue's TRL
run used where a default cannot run here: `--dtype float32` where the CPU has no bf16 matrix
units (bench/learning.py's `--trl_dtype auto`, as distrl's `--dtype auto`: there bf16 matrix work
runs ~5x slower than fp32, so TRL's default would be a peer built to lose), 8 prompts x 8
completions per step (TRL's default batch of 8 completions is one prompt a step), lr 1e-5
(TRL's 1e-6 barely moves a model in 20 minutes), 48 new tokens (TRL's 512 would spend most of
the budget on long tails), use_cpu.
The reward is the exact one (1 when the last number equals the answer), as a TRL user writes.
Training stops at the budget; the model is saved to --out and a JSON line with steps and
seconds is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def exact_reward(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the completion's last number equals the reference answer: distrl's `numeric`
    reward, written as a TRL user would (this runs in .venv-trl, which has no distrl packages,
    and TRL hands conversational completions as message lists)."""
    out = []
    for completion, ref in zip(completions, answer):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        numbers = _NUMBER.findall(text)
        try:
            ok = bool(numbers) and abs(float(numbers[-1].replace(",", "")) - float(ref)) < 1e-6
        except ValueError:
            ok = False
        out.append(1.0 if ok else 0.0)
    return out


class StopAtBudget(TrainerCallback):
    """Ends training once the wall-clock budget is spent (checked after each optimizer step)."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.started, self.steps = budget_s, None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps = state.global_step
        if time.perf_counter() - self.started >= self.budget_s:
            control.should_training_stop = True
        return control


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train_jsonl", required=True)
    parser.add_argument("--budget_s", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_completion_length", type=int, default=48)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="bfloat16 (GRPOConfig's bf16 autocast, TRL's default) or float32")
    opts = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with open(opts.train_jsonl) as f:
        rows = [json.loads(line) for line in f]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                              for r in rows])
    config = GRPOConfig(output_dir=opts.out, use_cpu=True, bf16=opts.dtype == "bfloat16", seed=opts.seed,
                        per_device_train_batch_size=64, num_generations=8, learning_rate=1e-5,
                        max_completion_length=opts.max_completion_length, max_steps=100_000,
                        save_strategy="no", logging_steps=1, report_to=[], disable_tqdm=True)
    stop = StopAtBudget(opts.budget_s)
    # Loaded here rather than by name: the embedded model's config names no architecture.
    model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=exact_reward, args=config, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(opts.model), callbacks=[stop])
    trainer.train()
    train_s = time.perf_counter() - stop.started
    trainer.save_model(opts.out)
    trainer.processing_class.save_pretrained(opts.out)
    print(json.dumps({"steps": stop.steps, "train_s": train_s, "samples": stop.steps * 64}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
