"""Do small updates reach bf16 weights? CPUAdamW's fp32 masters at the centre of their bf16
rounding cell (as they were: copied from the rounded weights) against masters dithered inside the
cell (`--dither_masters`), with fp32 weights and torch's AdamW as the reference.

An update of lr 1e-5 moves a weight of 0.05 by about a twentieth of its bf16 spacing. From the
cell's centre no such update reaches the weights the model computes with until the master has
drifted half a spacing; from a random point in the cell a weight crosses with probability
update / spacing, so the rounded weights move by the update on average from the first step.

The proxy is supervised, so that the same batches reach every contender: the embedded
SmolLM2-135M-Instruct learns to answer built-in `arithmetic` training prompts with "a op b = c"
(its chat template, loss on the answer tokens), 16 rows per update, `--lr` 1e-5 (the default),
no clipping difference (gradient-norm clip 1.0 everywhere), no weight decay. Each contender's
loss on 64 validation prompts is printed every 10 updates, computed with the weights it computes
with (bf16 for the two bf16 contenders). Last line:
`validation loss after 10 updates: centred / dithered masters = X.XX`.

    python bench/bf16_masters.py [--steps 20] [--lr 1e-5] [--rows 16] [--held_out 64] [--model NAME]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distrl.data.prompts import encode_prompt  # noqa: E402
from distrl.data.tasks import task_splits  # noqa: E402
from distrl.models import resolve_model  # noqa: E402
from distrl.optim import CPUAdamW  # noqa: E402


def batch(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, labels (-100 outside the answer) and attention mask of prompt + "a op b = c"."""
    ids, labels = [], []
    for row in rows:
        expression = row["prompt"].split("What is ", 1)[1].split("?", 1)[0]
        p = encode_prompt(tokenizer, row["prompt"])  # the prompt ids distrl trains on
        a = tokenizer(f"{expression} = {row['answer']}", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, ids))
    pad = lambda xs, value: [x + [value] * (width - len(x)) for x in xs]  # noqa: E731
    return (torch.tensor(pad(ids, tokenizer.pad_token_id)), torch.tensor(pad(labels, -100)),
            torch.tensor(pad([[1] * len(x) for x in ids], 0)))


def loss(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    ids, labels, mask = data
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--rows", type=int, default=16, help="rows per update")
    parser.add_argument("--held_out", type=int, default=64, help="validation prompts scored")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded model name or folder")
    opts = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(opts.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    splits = task_splits("arithmetic")
    train, held_out = splits["train"], batch(tokenizer, splits["validation"][:opts.held_out])
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    after_10 = {}
    for name in ("fp32 weights, torch AdamW", "bf16 weights, centred masters", "bf16 weights, dithered masters"):
        start = time.perf_counter()
        model = copy.deepcopy(base)
        if name.startswith("fp32"):
            optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.0)
        else:
            model = model.to(torch.bfloat16)
            optimizer = CPUAdamW(list(model.parameters()), lr=opts.lr, max_grad_norm=1.0,
                                 dither_seed=None if "centred" in name else 0)
        losses = []
        for step in range(opts.steps + 1):
            if step % 10 == 0:
                with torch.no_grad():
                    losses.append(float(loss(model, held_out)))
                if step == 10:
                    after_10[name] = losses[-1]
            if step == opts.steps:
                break
            loss(model, batch(tokenizer, train[step * opts.rows:(step + 1) * opts.rows])).backward()
            if isinstance(optimizer, CPUAdamW):
                optimizer.step()  # clips at max_grad_norm itself
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
        print(f"{name}: validation loss every 10 updates {' '.join(f'{x:.3f}' for x in losses)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    if len(after_10) == 3:
        print(f"validation loss after 10 updates: centred / dithered masters = "
              f"{after_10['bf16 weights, centred masters'] / after_10['bf16 weights, dithered masters']:.2f}")


if __name__ == "__main__":
    main()
