"""Prompt data: built-in tasks, local files and hub datasets, split and served in seeded order.

Rows are dicts with at least `prompt` and `answer`; other columns travel along to the reward.
Tokenisation and chat templates live in `distrl.data.prompts`.
"""

from distrl.data.datasets import PromptSampler, load_splits

__all__ = ["PromptSampler", "load_splits"]
