"""Fixtures: a tiny Llama with a character-level tokenizer, built from a config (no download)."""

from __future__ import annotations

import os
import string

import pytest
import torch

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = list(string.digits + string.ascii_letters + " ?+-*=.,:!\n")
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}a:{% endif %}")


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(folder: str, seed: int = 0, hidden: int = 32, **config_overrides) -> str:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    config = LlamaConfig(**{**dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=512, tie_word_embeddings=False,
                                   pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id), **config_overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _durations() -> list[tuple[float, str]]:
    with open(os.path.join(os.path.dirname(__file__), "durations.txt")) as f:
        rows = [line.split(maxsplit=1) for line in f if line.strip() and not line.startswith("#")]
    return [(float(seconds), node.strip()) for seconds, node in rows]


def pytest_collection_modifyitems(config, items) -> None:
    """Longest first (tests/durations.txt), the rest in their order: a worker that picks the next
    test from the front then never starts a long one while the other has nothing left to do."""
    slow = _durations()
    items.sort(key=lambda item: -max((s for s, node in slow if item.nodeid.startswith(node)), default=0.0))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_model_dir_64(tmp_path_factory) -> str:
    """Hidden size 64: bitsandbytes' CPU 4-bit kernels quantize rows in blocks of 64."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama-64")), hidden=64)


@pytest.fixture(scope="session")
def tiny_model_dir_vllm(tmp_path_factory) -> str:
    """Head size 64: one the CPU build of vLLM's attention kernels take (8 is not)."""
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama-vllm")), head_dim=64)
