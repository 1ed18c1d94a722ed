"""The registry: names, the proxy study's call, the AdamW weight-decay convention, bad names."""

import pytest
import torch

from stablelab.errors import UsageError
from stablelab.optim import AdEMAMix, DiffGrad, LaProp, available, create

NAMES = ["adamw", "spam", "stable_spam", "adabelief", "diffgrad", "adamp", "laprop", "ademamix", "orthogonal_adamw",
         "adamw8bit", "stable_spam8bit", "ademamix8bit"]


@pytest.mark.parametrize("name", NAMES)
def test_proxy_study_call_works_for_every_name(name):
    """The proxy study passes groups with an extra "lr_scale" key, plus lr, betas (two) and eps."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    groups = [{"params": [model[0].weight, model[2].weight], "lr_scale": 0.5, "weight_decay": 0.1},
              {"params": [model[0].bias, model[1].weight, model[1].bias, model[2].bias], "lr_scale": 1.0,
               "weight_decay": 0.0}]
    opt = create(name, groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    before = model[0].weight.detach().clone()
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)
    assert opt.param_groups[0]["lr_scale"] == 0.5


def test_available_lists_the_issue_names_sorted():
    names = available()
    assert names == sorted(names)
    assert set(NAMES) <= set(names)


def test_unknown_name_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match="unknown optimizer 'adamx'.*stable_spam"):
        create("adamx", [torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


def test_registry_uses_adamw_decay_convention():
    """wd in the registry means p -= lr * wd * p per step, for DiffGrad and LaProp too."""
    for name, cls in (("diffgrad", DiffGrad), ("laprop", LaProp)):
        p = torch.nn.Parameter(torch.ones(3))
        opt = create(name, [p], lr=0.1, weight_decay=0.5)
        assert isinstance(opt, cls)
        p.grad = torch.zeros(3)
        opt.step()  # zero gradient: only the decay moves p
        torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.1 * 0.5))


def test_ademamix_accepts_two_betas():
    opt = create("ademamix", [torch.nn.Parameter(torch.zeros(2))], lr=1e-3, betas=(0.9, 0.95))
    assert isinstance(opt, AdEMAMix)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95, 0.9999)
