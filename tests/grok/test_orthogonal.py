"""Orthogonal gradient (Prieto et al. 2025, official orthograd.py) and the two fixed wrapper bugs."""

import io
import math

import pytest
import torch

from stablelab.optim.orthogonal import OrthogonalGradient, orthogonal_gradient


def test_projection_by_hand():
    # w = (1, 0), g = (1, 1): g_perp = (0, 1), rescaled to |g| = sqrt(2)
    out = orthogonal_gradient(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert out.tolist() == pytest.approx([0.0, math.sqrt(2)], abs=1e-7)
    raw = orthogonal_gradient(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), rescale=False)
    assert raw.tolist() == pytest.approx([0.0, 1.0], abs=1e-7)


def test_projection_is_orthogonal_and_keeps_the_norm():
    w, g = torch.randn(20, 30, dtype=torch.float64), torch.randn(20, 30, dtype=torch.float64)
    out = orthogonal_gradient(w, g)
    assert out.shape == g.shape
    assert abs(float((out * w).sum())) < 1e-10 * float(w.norm() * g.norm())
    assert float(out.norm()) == pytest.approx(float(g.norm()), rel=1e-12)
    # the part removed is parallel to w: g - out_unscaled = (<w,g>/<w,w>) w
    unscaled = orthogonal_gradient(w, g, rescale=False)
    assert torch.allclose(g - unscaled, (w * g).sum() / (w * w).sum() * w, atol=1e-12)


def _model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def test_closure_gradient_is_projected():
    # official bug: base_optimizer.step(closure) recomputed the gradient after the projection
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    model.zero_grad()
    _loss(model, x, y).backward()
    expected = [w - 0.5 * orthogonal_gradient(w, p.grad) for w, p in zip(before, model.parameters())]
    model.zero_grad()

    optimizer = OrthogonalGradient(torch.optim.SGD(model.parameters(), lr=0.5))

    def closure():
        optimizer.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss is not None
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p, e, atol=1e-6)


def test_state_dict_round_trips_through_torch_save():
    # official bug: the wrapper's state_dict was empty, so a resumed run restarted Adam's moments
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    model_a = _model()
    opt_a = OrthogonalGradient(torch.optim.AdamW(model_a.parameters(), lr=1e-2), eps=1e-20)
    for _ in range(3):
        opt_a.zero_grad()
        _loss(model_a, x, y).backward()
        opt_a.step()
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "optimizer": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model_b = _model()
    model_b.load_state_dict(saved["model"])
    opt_b = OrthogonalGradient(torch.optim.AdamW(model_b.parameters(), lr=1e-2))
    opt_b.load_state_dict(saved["optimizer"])
    assert opt_b.eps == 1e-20
    assert len(opt_b.state) == len(list(model_b.parameters()))
    assert opt_b.state is opt_b.optimizer.state and opt_b.param_groups is opt_b.optimizer.param_groups
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        for _ in range(2):
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_lr_scheduler_drives_the_wrapped_optimizer():
    model = _model()
    optimizer = OrthogonalGradient(torch.optim.AdamW(model.parameters(), lr=1.0))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        model(torch.randn(2, 5)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_lbfgs_is_refused_because_it_reevaluates_its_closure():
    with pytest.raises(TypeError):
        OrthogonalGradient(torch.optim.LBFGS(_model().parameters()))
