"""The two places where an earlier version differed from the official code, now fixed, checked
against the official formulas worked by hand (TianjinYellow/StableSPAM stablespam.py,
TianjinYellow/SPAM-Optimizer SPAM.py), and the functional cores used without a class."""

import math

import numpy as np
import pytest
import torch

from stablelab.optim import SPAM, StableSPAM, spam, stable_spam
from stablelab.optim.transforms import reset_warmup_scale

ZERO_STEPS = (1, 6)  # steps at which the first tensor's gradient is exactly 0


def official_stable_spam(p, grads, lr, b1, b2, eps, wd, g1, g2, g3):
    """stablespam.py's step for one tensor, without a reset (update_proj_gap 1000), float64."""
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    m_max = m_norm = v_norm = 0.0
    for t, g in enumerate(grads, 1):
        g = g.copy()
        p = p * (1 - lr * wd)
        max_gradient = np.abs(g).max()
        m_max = g3 * m_max + (1 - g3) * max_gradient
        m_max_hat = m_max / (1 - g3 ** t)
        mask = np.abs(g) > m_max_hat
        if mask.sum() > 0:
            g[mask] = g[mask] / max_gradient * m_max_hat
        grad_norm = np.linalg.norm(g)
        m_norm = g1 * m_norm + (1 - g1) * grad_norm  # updated for a zero gradient too
        v_norm = g2 * v_norm + (1 - g2) * grad_norm ** 2
        c_norm = (m_norm / (1 - g1 ** t)) / (math.sqrt(v_norm / (1 - g2 ** t)) + eps)
        if grad_norm > 0:
            g = g / grad_norm * c_norm
        m = b1 * m + (1 - b1) * g  # the Adam step is taken with g = 0
        v = b2 * v + (1 - b2) * g ** 2
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
        out.append((p, m_norm))
    return out


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
def test_stable_spam_steps_a_zero_gradient_tensor_as_the_official_code(foreach):
    rng = np.random.default_rng(7)
    shapes = [(4, 3), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(12)]
    for t in ZERO_STEPS:
        grads[t - 1][0][...] = 0.0
    grads[8][1][2] *= 500.0  # a spike in the other tensor, clipped
    params = [torch.nn.Parameter(torch.tensor(p)) for p in init]
    opt = StableSPAM(params, lr=1e-2, weight_decay=0.1, foreach=foreach)
    expected = [official_stable_spam(p0, [g[i] for g in grads], 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.7, 0.9, 0.999)
                for i, p0 in enumerate(init)]
    for t, step_grads in enumerate(grads, 1):
        before = params[0].detach().clone()
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        opt.step()
        for i, p in enumerate(params):
            np.testing.assert_allclose(p.detach().numpy(), expected[i][t - 1][0], rtol=1e-12, atol=1e-15,
                                       err_msg=f"tensor {i} step {t}")
            assert opt.state[p]["norm_ema"].item() == pytest.approx(expected[i][t - 1][1], rel=1e-12)
        if t == 6:  # not skipped: the momentum still moves it, the norm EMA decays by gamma1
            assert (params[0] - before * (1 - 1e-2 * 0.1)).abs().max() > 1e-4
            assert opt.state[params[0]]["norm_ema"].item() == pytest.approx(0.7 * expected[0][4][1], rel=1e-12)


def official_warmup_scale(c, warmup):
    """SPAM.py: scale = 1 - CosineDecay(0.99, warmup).get_dr(c); get_dr returns eta_min = 0 for
    c >= T_max = warmup, else CosineAnnealingLR(T_max = warmup + 1).step(c), the closed form
    0.99 (1 + cos(pi c / (warmup + 1))) / 2. c = current_step, set to 0 after the step before a reset."""
    if c >= warmup:
        return 1.0
    return 1.0 - 0.99 * (1 + math.cos(math.pi * c / (warmup + 1))) / 2


@pytest.mark.parametrize("warmup", [50, 150])
def test_spam_warmup_scale_at_the_reset_step_and_49_steps_after(warmup):
    assert reset_warmup_scale(500, 500, warmup) == pytest.approx(0.01, abs=1e-15)  # was 0.010939 at warmup 50
    assert reset_warmup_scale(549, 500, warmup) == pytest.approx(official_warmup_scale(49, warmup), abs=1e-15)
    if warmup == 50:  # by hand: 1 - 0.99 (1 - cos(2 pi / 51)) / 2 = 0.9962482
        assert reset_warmup_scale(549, 500, 50) == pytest.approx(0.9962482, abs=1e-7)
        assert reset_warmup_scale(550, 500, 50) == 1.0


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
def test_spam_update_after_a_reset_follows_the_official_ramp(foreach):
    """Constant gradient, reset every 100 steps, warm-up 50: after the reset at step 100, the
    update is scale(c) * lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps) with the official scale."""
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-6
    g = torch.tensor([0.5, -2.0], dtype=torch.float64)
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = SPAM([param], lr=lr, reset_interval=100, warmup_steps=50, clip_warmup=5, foreach=foreach)
    m = v = torch.zeros(2, dtype=torch.float64)
    for t in range(1, 152):
        if t % 100 == 0:
            m = v = torch.zeros(2, dtype=torch.float64)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        before = param.detach().clone()
        param.grad = g.clone()
        opt.step()
        unscaled = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
        scale = official_warmup_scale(t - 100, 50) if t >= 100 else 1.0
        torch.testing.assert_close(before - param.detach(), scale * unscaled, rtol=1e-12, atol=0)
    assert official_warmup_scale(0, 50) == pytest.approx(0.01)


def test_functional_cores_work_without_a_class_and_both_paths_agree():
    """spam(...) and stable_spam(...) on plain tensors: per-tensor == foreach == the class."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (4,)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(25)]
    results = {}
    for foreach in (False, True):
        ps = [p.clone() for p in init]
        m, v = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
        ps2 = [p.clone() for p in init]
        m2, v2 = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
        stats = [[torch.zeros((), dtype=torch.float64) for _ in ps] for _ in range(3)]
        for t, gs in enumerate(grads, 1):
            spam(ps, gs, m, v, step=t, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.1,
                 threshold=5000.0, reset_interval=10, warmup_steps=4, clip_warmup=3, foreach=foreach)
            stable_spam(ps2, gs, m2, v2, *stats, step=t, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
                        weight_decay=0.1, gamma1=0.7, gamma2=0.9, gamma3=0.999, reset_interval=10, foreach=foreach)
        results[foreach] = ps + ps2
    for a, b in zip(results[False], results[True]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for cls, kwargs, ours in ((SPAM, dict(reset_interval=10, warmup_steps=4, clip_warmup=3), results[False][:2]),
                              (StableSPAM, dict(reset_interval=10), results[False][2:])):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        opt = cls(params, lr=1e-2, weight_decay=0.1, **kwargs)
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
        for p, q in zip(params, ours):
            assert torch.equal(p.detach(), q)
