"""Packing weights for the object store: exact round trips and strict loading."""

import pytest
import torch

from distrl.config import ModelConfig
from distrl.models import load_policy, trainable_parameters
from distrl.weights import WeightPacker, load_packed, pack, unpack


def test_round_trip_is_exact_for_mixed_dtypes():
    torch.manual_seed(0)
    named = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16),
             "c": torch.randn(2, 2).to(torch.float16), "d": torch.randn(7)}
    packed = pack(named, policy_version=3)
    assert packed.policy_version == 3
    assert sorted(packed.buffers) == ["torch.bfloat16", "torch.float16", "torch.float32"]
    assert packed.nbytes == (12 + 7) * 4 + 5 * 2 + 4 * 2
    out = unpack(packed)
    for k, v in named.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)


def test_full_model_round_trip_into_another_copy(tiny_model_dir):
    cpu = torch.device("cpu")
    src = load_policy(tiny_model_dir, ModelConfig(), cpu)
    dst = load_policy(tiny_model_dir, ModelConfig(), cpu)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    n = load_packed(dict(dst.named_parameters()), pack(trainable_parameters(src), 1))
    assert n == len(list(src.parameters()))
    for (name, a), (_, b) in zip(src.named_parameters(), dst.named_parameters()):
        assert torch.equal(a, b), name


def test_lora_packs_only_adapter_tensors(tiny_model_dir):
    cfg = ModelConfig(lora_rank=4, lora_alpha=8)
    src = load_policy(tiny_model_dir, cfg, torch.device("cpu"), seed=1)
    packed = pack(trainable_parameters(src), 1)
    assert packed.index and all("lora_" in s.name for s in packed.index)
    total = sum(p.numel() for p in src.parameters())
    assert sum(s.numel for s in packed.index) < total / 5
    dst = load_policy(tiny_model_dir, cfg, torch.device("cpu"), seed=2)
    with torch.no_grad():
        for p in trainable_parameters(src).values():
            p.add_(1.0)
    load_packed(dict(dst.named_parameters()), pack(trainable_parameters(src), 2))
    dst_params = dict(dst.named_parameters())
    for name, p in trainable_parameters(src).items():
        assert torch.equal(dst_params[name], p)


def test_loading_refuses_unknown_names_and_wrong_shapes():
    target = {"w": torch.zeros(2, 2)}
    with pytest.raises(KeyError, match="no matching parameter"):
        load_packed(target, pack({"v": torch.ones(2, 2)}, 1))
    with pytest.raises(ValueError, match="shape"):
        load_packed(target, pack({"w": torch.ones(4)}, 1))


def test_packer_reuses_its_buffer_and_refuses_changed_tensors():
    named = {"a": torch.zeros(3), "b": torch.ones(2, 2)}
    packer = WeightPacker(named)
    first = packer.pack(named, 1)
    ptr = first.buffers["torch.float32"].ctypes.data
    named["a"] += 5.0
    second = packer.pack(named, 2)
    assert second.buffers["torch.float32"].ctypes.data == ptr  # no new allocation per version
    assert unpack(second)["a"].tolist() == [5.0, 5.0, 5.0] and second.policy_version == 2
    with pytest.raises(ValueError, match="changed shape"):
        packer.pack({"a": torch.zeros(4), "b": torch.ones(2, 2)}, 3)
