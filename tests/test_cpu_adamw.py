"""CPUAdamW against torch.optim.AdamW: same parameters, with accumulation, clipping, decay."""

import copy
import math

import pytest
import torch

from distrl.optim import CPUAdamW


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)) for _ in range(n)]


def _loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean() * 5.0  # scaled so that clipping at 1.0 takes effect


def _reference(model, batches, accum, lr=1e-2, wd=0.1, clip=1.0):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    norms = []
    for k in range(0, len(batches), accum):
        for b in batches[k:k + accum]:
            (_loss(model, b) / accum).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad()
    return norms


@pytest.mark.parametrize("master_copy,grad_offload", [(None, False), (True, False), (True, True)])
@pytest.mark.parametrize("accum", [1, 2])
def test_matches_torch_adamw_over_ten_steps(master_copy, grad_offload, accum):
    batches = _batches(10 * accum)
    ref_model, model = _model(), _model()
    ref_norms = _reference(ref_model, batches, accum)
    opt = CPUAdamW(model.parameters(), lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, accum_steps=accum,
                   grad_offload=grad_offload, master_copy=master_copy)
    norms = []
    for b in batches:
        _loss(model, b).backward()
        if grad_offload:  # the hooks took every gradient off the parameters during backward
            assert all(p.grad is None for p in model.parameters())
        norm = opt.step()
        if norm is not None:
            norms.append(norm)
    assert norms == pytest.approx(ref_norms, rel=1e-5)
    assert max(ref_norms) > 1.0  # clipping really happened
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_no_second_copy_of_fp32_cpu_weights():
    model = _model()
    opt = CPUAdamW(model.parameters())
    assert all(m is p for m, p in zip(opt.masters, model.parameters()))


def test_grad_offload_and_plain_give_the_same_parameters():
    batches = _batches(6)
    a, b = _model(), _model()
    oa = CPUAdamW(a.parameters(), lr=1e-2, master_copy=True, grad_offload=True, accum_steps=2)
    ob = CPUAdamW(b.parameters(), lr=1e-2, master_copy=True, grad_offload=False, accum_steps=2)
    for batch in batches:
        _loss(a, batch).backward()
        _loss(b, batch).backward()
        oa.step()
        ob.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_low_precision_device_weights_follow_fp32_masters():
    model = _model().to(torch.bfloat16)
    opt = CPUAdamW(model.parameters(), lr=1e-2)
    assert all(m.dtype == torch.float32 and m is not p for m, p in zip(opt.masters, model.parameters()))
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    model(x).float().pow(2).mean().backward()
    opt.step()
    for p, m in zip(model.parameters(), opt.masters):
        assert p.dtype == torch.bfloat16 and torch.equal(p, m.to(torch.bfloat16))


@pytest.mark.parametrize("master_copy", [None, True])
def test_state_dict_round_trip_resumes_identically(master_copy):
    batches = _batches(8)
    straight = _model()
    opt = CPUAdamW(straight.parameters(), lr=1e-2, weight_decay=0.1, master_copy=master_copy)
    for b in batches:
        _loss(straight, b).backward()
        opt.step()

    first = _model()
    opt1 = CPUAdamW(first.parameters(), lr=1e-2, weight_decay=0.1, master_copy=master_copy)
    for b in batches[:4]:
        _loss(first, b).backward()
        opt1.step()
    state = copy.deepcopy(opt1.state_dict())

    resumed = _model(seed=5)  # different weights: the state must restore them
    opt2 = CPUAdamW(resumed.parameters(), lr=1e-2, weight_decay=0.1, master_copy=master_copy)
    opt2.load_state_dict(state)
    for b in batches[4:]:
        _loss(resumed, b).backward()
        opt2.step()
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_lr_schedules_start_at_the_lr_and_reach_zero_at_the_end():
    from distrl.optim import LR_SCHEDULES, lr_scale

    for schedule in LR_SCHEDULES:
        assert lr_scale(schedule, 0.0) == 1.0
        assert lr_scale(schedule, -1.0) == 1.0 and lr_scale(schedule, 2.0) == lr_scale(schedule, 1.0)
    assert [lr_scale("constant", p) for p in (0.25, 1.0)] == [1.0, 1.0]
    assert [lr_scale("linear", p) for p in (0.25, 0.5, 1.0)] == pytest.approx([0.75, 0.5, 0.0])
    assert [lr_scale("cosine", p) for p in (0.25, 0.5, 1.0)] == pytest.approx([0.8536, 0.5, 0.0], abs=1e-4)
    with pytest.raises(KeyError, match="valid: constant, linear, cosine"):
        lr_scale("step", 0.5)


def test_lr_schedule_hook_and_non_finite_gradients_skip():
    model = _model()
    opt = CPUAdamW(model.parameters(), lr=1e-2, lr_schedule=lambda update: 0.5 ** update)
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, _batches(1)[0]).backward()
    next(model.parameters()).grad[0, 0] = float("nan")
    assert math.isnan(opt.step())
    assert opt.num_updates == 0
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)  # the NaN update was skipped
    for k in range(3):
        _loss(model, _batches(1, seed=k)[0]).backward()
        opt.step()
        assert opt.lr == pytest.approx(1e-2 * 0.5 ** k)


def test_gradients_cleared_after_a_skipped_step_never_reach_the_next_one():
    """With gradient offload a backward's copies are still queued when the learner discards a
    step (non-finite loss): zero_grad must drop them, not add them to the next step's."""
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))  # a separate fp32 master: hooks run
    opt = CPUAdamW([p], lr=0.1, grad_offload=True)
    (p.float() * float("nan")).sum().backward()  # queued by the hook, not yet drained
    opt.zero_grad()
    (p.float() * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    norm = opt.step()
    assert norm == pytest.approx(math.sqrt(30.0))  # only the second gradient: finite, not NaN
    assert torch.isfinite(p.float()).all() and (p.float() < 0).all()
