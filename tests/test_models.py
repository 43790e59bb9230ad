"""The embedded default model resolves offline from its cache and generates."""

import torch

from distrl.config import DEFAULT_MODEL, ModelConfig
from distrl.data.prompts import encode_prompt
from distrl.generation import SamplingParams
from distrl.generation.hf import HFBackend
from distrl.models import load_policy, load_tokenizer, resolve_model


def test_embedded_model_resolves_and_generates():
    path = resolve_model(DEFAULT_MODEL)
    tok = load_tokenizer(path)
    model = load_policy(path, ModelConfig(), torch.device("cpu"))
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 100e6
    assert tok.chat_template
    backend = HFBackend(model, tok, torch.device("cpu"))
    prompt = encode_prompt(tok, "What is 12 + 35?", "Answer with the final number only.")
    (group,) = backend.generate([prompt], SamplingParams(n=1, max_new_tokens=12, greedy=True), 0)
    text = tok.decode(group[0].completion_ids, skip_special_tokens=True)
    assert text.strip()  # real text comes out
    # Greedy, the model explains first ("To add 12 and 35, ..."): 12 tokens cut it off; given
    # room, it ends on its own, before the budget.
    assert group[0].finish_reason == "length" and len(group[0].completion_ids) == 12, text
    (done,) = backend.generate([prompt], SamplingParams(n=1, max_new_tokens=160, greedy=True), 0)
    assert done[0].finish_reason == "stop" and len(done[0].completion_ids) < 160
