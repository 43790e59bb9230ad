"""How often does a reward give a group any signal on the untrained model? Sample the embedded
SmolLM2-135M-Instruct at training settings (48 new tokens, transformers, bf16; temperature 1.0
unless --temperatures says otherwise: the training default until a80aed3, now 0.7) on training
prompts of each family, score every group with each reward, and count the groups whose rewards
are not all equal (GRPO's advantage is 0 for the others).

    python bench/reward_signal.py [--families big_numbers,arithmetic,word] [--prompts 24]
        [--group 8] [--rewards numeric,numeric_close,numeric_digits] [--temperatures 1.0]

One line per family, temperature and reward: mean reward, groups with signal, exact answers.
With one temperature the last line compares the last reward with the first on the groups with
signal, summed over families; with several it compares the temperatures under the first reward.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def sample(model, tok, family: str, prompts: int, group: int, tokens: int, temperature: float) -> list[dict]:
    import torch

    from distrl.data.prompts import encode_prompt
    from distrl.data.tasks import task_splits

    torch.manual_seed(0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for row in random.Random(0).sample(task_splits(family)["train"], prompts):
        ids = torch.tensor([encode_prompt(tok, row["prompt"])] * group)
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 do_sample=True, temperature=temperature, top_p=1.0, pad_token_id=pad)
        out.append({**row, "completions": tok.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)})
    return out


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distrl.config import DEFAULT_MODEL
    from distrl.models import resolve_model
    from distrl.rewards import load_reward

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="big_numbers,arithmetic,word")
    parser.add_argument("--rewards", default="numeric,numeric_close,numeric_digits")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--temperatures", default="1.0", help="comma-separated sampling temperatures")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    opts = parser.parse_args()
    rewards = opts.rewards.split(",")
    path = resolve_model(opts.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    temperatures = [float(t) for t in opts.temperatures.split(",")]
    with_signal = {(t, name): 0 for t in temperatures for name in rewards}
    for family in opts.families.split(","):
        for t in temperatures:
            groups = sample(model, tok, family, opts.prompts, opts.group, opts.max_new_tokens, t)
            for name in rewards:
                fn, scores, signal = load_reward(name), [], 0
                for g in groups:
                    r = fn([g["prompt"]] * opts.group, g["completions"], answer=[g["answer"]] * opts.group)
                    scores += r
                    signal += statistics.pstdev(r) > 1e-4
                with_signal[t, name] += signal
                print(f"{family:<12} T={t:<4} {name:<15} mean {statistics.mean(scores):.3f}  groups with signal "
                      f"{signal}/{len(groups)}  exact {sum(x > 0.5 for x in scores)}", flush=True)
    first, last = rewards[0], rewards[-1]
    if len(temperatures) == 1:
        t = temperatures[0]
        print(f"groups with signal: {last} {with_signal[t, last]}, {first} {with_signal[t, first]}")
    else:
        print(f"groups with signal ({first}): " + ", ".join(f"T={t} {with_signal[t, first]}" for t in temperatures))


if __name__ == "__main__":
    main()
