"""Turn a question into prompt token ids with the tokenizer's chat template."""

from __future__ import annotations

from typing import Any


def prompt_messages(question: str, system_prompt: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def encode_prompt(tokenizer: Any, question: str, system_prompt: str = "") -> list[int]:
    """Prompt ids ending where the assistant's answer starts (chat template when there is one)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(prompt_messages(question, system_prompt),
                                            add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = f"{system_prompt}\n{question}\n" if system_prompt else f"{question}\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]
