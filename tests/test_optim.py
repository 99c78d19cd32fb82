import math

import pytest
import torch
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.optim import LARS, build_optimizer, lr_at, param_groups


def test_lr_schedule_warmup_then_cosine():
    peak, warm, total = 0.4, 10, 110
    assert lr_at(0, peak, warm, total) == pytest.approx(peak / warm)
    assert lr_at(9, peak, warm, total) == pytest.approx(peak)
    assert lr_at(10, peak, warm, total) == pytest.approx(peak)  # start of the cosine
    assert lr_at(60, peak, warm, total) == pytest.approx(peak / 2)  # half way: cos(pi/2) = 0
    assert lr_at(110, peak, warm, total) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, peak, warm, total) for s in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(0, peak, 0, 100) == pytest.approx(peak)


def test_biases_and_norms_get_no_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decayed, plain = param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decayed["params"]) and len(decayed["params"]) == 2
    assert all(p.ndim < 2 for p in plain["params"]) and len(plain["params"]) == 4
    assert plain["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.1


def test_adamw_does_not_shrink_biases():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.5, lr=0.1))
    bias, weight = model.bias.detach().clone(), model.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(model.bias, bias)
    assert torch.allclose(model.weight, weight * (1 - 0.1 * 0.5))


def test_lars_step_matches_the_trust_ratio_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars": True}, {"params": [b], "weight_decay": 0.0, "lars": False}],
               lr=0.5, momentum=0.9, eta=0.01)
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[1.0, 0.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    trust = 0.01 * 5.0 / math.sqrt(float((g**2).sum()))
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * trust * g)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))
    # second step: momentum buffer = 0.9 * previous + new
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(b.detach(), torch.tensor([0.0 - 0.5 * (0.9 * 2.0 + 2.0)]))
