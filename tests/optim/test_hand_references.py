"""Each optimizer, step by step, against a hand-written NumPy float64 reference of its paper's update
(written from the papers and official code, sharing no code with stablelab.optim)."""

import math

import numpy as np
import pytest
import torch

from stablelab.optim import SPAM, AdaBelief, AdamP, AdEMAMix, DiffGrad, LaProp, StableSPAM

STEPS = 40


def stream(shape, seed):
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((STEPS, *shape))
    for t in range(5, STEPS, 9):  # spikes, 300x, at varying entries
        grads[t].reshape(-1)[t % grads[t].size] *= 300.0
    return rng.standard_normal(shape), grads


def ref_spam(p, grads, lr, b1, b2, eps, wd, theta, interval, warmup, clip_after):
    # SPAM (arXiv 2501.06842, Alg. 1; official SPAM.py); t counts from 1
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, 1):
        if t % interval == 0:
            m, v = np.zeros_like(p), np.zeros_like(p)
        if t >= clip_after and t % interval >= clip_after:
            spike = g ** 2 > theta * v
            g = np.where(spike, np.sign(g) * np.sqrt(theta * v), g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        c = t % interval
        # official CosineDecay(0.99, warmup).get_dr(c): CosineAnnealingLR(T_max=warmup+1).step(c), 0 once c >= warmup
        scale = 1 - 0.99 * (1 + math.cos(math.pi * c / (warmup + 1))) / 2 if t >= interval and c < warmup else 1
        p = p - scale * lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        p = p - lr * wd * p
        out.append(p)
    return out


def ref_stable_spam(p, grads, lr, b1, b2, eps, wd, g1, g2, g3, interval):
    # Stable-SPAM (arXiv 2502.17055, Alg. 1) with the moments zeroed on the reset step
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    m_max = m_norm = v_norm = 0.0
    since = 0
    for t, g in enumerate(grads, 1):
        p = p * (1 - lr * wd)
        since += 1
        if t % interval == 0:
            m, v, since = np.zeros_like(p), np.zeros_like(p), 1
        gmax = np.abs(g).max()
        m_max = g3 * m_max + (1 - g3) * gmax
        bound = m_max / (1 - g3 ** t)
        g = np.where(np.abs(g) > bound, g / gmax * bound, g)
        norm = np.linalg.norm(g)
        m_norm = g1 * m_norm + (1 - g1) * norm
        v_norm = g2 * v_norm + (1 - g2) * norm ** 2
        g = g / norm * (m_norm / (1 - g1 ** t)) / (math.sqrt(v_norm / (1 - g2 ** t)) + eps)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        p = p - lr / (1 - b1 ** since) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** since) + eps)
        out.append(p)
    return out


def ref_adabelief(p, grads, lr, b1, b2, eps, wd):
    # AdaBelief (arXiv 2010.07468, Alg. 2) + RAdam rectification (arXiv 1908.03265), official 0.2.1
    m, s, out = np.zeros_like(p), np.zeros_like(p), []
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, 1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        if rho >= 5:
            r = math.sqrt((1 - b2 ** t) * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            p = p - lr * r / (1 - b1 ** t) * m / (np.sqrt(s) + eps)
        else:
            p = p - lr / (1 - b1 ** t) * m
        out.append(p)
    return out


def ref_diffgrad(p, grads, lr, b1, b2, eps, wd):
    # diffGrad (arXiv 1909.11015, Alg. 1; official diffGrad_v2.py), L2 decay in the gradient
    m, v, prev, out = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, 1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        xi = 1 / (1 + np.exp(-np.abs(prev - g)))
        prev = g
        p = p - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * xi * m / (np.sqrt(v) + eps)
        out.append(p)
    return out


def ref_adamp(p, grads, lr, b1, b2, eps, wd, delta=0.1, wd_ratio=0.1):
    # AdamP (arXiv 2006.08217, Alg. 2; official adamp.py) for a 2-D weight
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        u = m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
        ratio = 1.0
        for rows_g, rows_p in ((g, p), (g.reshape(1, -1), p.reshape(1, -1))):
            cos = np.abs((rows_g * rows_p).sum(1)) / np.maximum(
                np.linalg.norm(rows_g, axis=1) * np.linalg.norm(rows_p, axis=1), eps)
            if cos.max() < delta / math.sqrt(rows_p.shape[1]):
                unit = rows_p / (np.linalg.norm(rows_p, axis=1, keepdims=True) + eps)
                rows_u = u.reshape(rows_p.shape)
                u = (rows_u - unit * (unit * rows_u).sum(1, keepdims=True)).reshape(p.shape)
                ratio = wd_ratio
                break
        p = p * (1 - lr * wd * ratio)
        p = p - lr / (1 - b1 ** t) * u
        out.append(p)
    return out


def ref_laprop(p, grads, lr, b1, b2, eps, wd):
    # LaProp (arXiv 2002.04839, Alg. 1; official laprop.py) with a constant lr: c1 = 1 - b1^t
    m, v, out = np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, 1):
        v = b2 * v + (1 - b2) * g ** 2
        m = b1 * m + (1 - b1) * lr * g / (np.sqrt(v / (1 - b2 ** t)) + eps)
        p = p - m / (1 - b1 ** t)
        p = p - wd * p
        out.append(p)
    return out


def ref_ademamix(p, grads, lr, b1, b2, b3, alpha, eps, wd):
    # AdEMAMix (arXiv 2409.03137, Alg. 1; official pytorch_ademamix.py), no warm-ups
    m1, m2, v, out = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, 1):
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b3 * m2 + (1 - b3) * g
        v = b2 * v + (1 - b2) * g ** 2
        p = p - lr * ((m1 / (1 - b1 ** t) + alpha * m2) / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps) + wd * p)
        out.append(p)
    return out


CASES = {
    "spam": (lambda ps: SPAM(ps, lr=1e-2, weight_decay=0.1, reset_interval=15, warmup_steps=5, clip_warmup=3),
             lambda p, g: ref_spam(p, g, 1e-2, 0.9, 0.999, 1e-6, 0.1, 5000, 15, 5, 3)),
    "stable_spam": (lambda ps: StableSPAM(ps, lr=1e-2, weight_decay=0.1, reset_interval=15),
                    lambda p, g: ref_stable_spam(p, g, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.7, 0.9, 0.999, 15)),
    "adabelief": (lambda ps: AdaBelief(ps, lr=1e-2, weight_decay=0.1),
                  lambda p, g: ref_adabelief(p, g, 1e-2, 0.9, 0.999, 1e-16, 0.1)),
    "diffgrad": (lambda ps: DiffGrad(ps, lr=1e-2, weight_decay=0.1),
                 lambda p, g: ref_diffgrad(p, g, 1e-2, 0.9, 0.999, 1e-8, 0.1)),
    "adamp": (lambda ps: AdamP(ps, lr=1e-2, weight_decay=0.1),
              lambda p, g: ref_adamp(p, g, 1e-2, 0.9, 0.999, 1e-8, 0.1)),
    "laprop": (lambda ps: LaProp(ps, lr=4e-3, weight_decay=0.01),
               lambda p, g: ref_laprop(p, g, 4e-3, 0.9, 0.999, 1e-15, 0.01)),
    "ademamix": (lambda ps: AdEMAMix(ps, lr=1e-2, weight_decay=0.1, alpha=5.0),
                 lambda p, g: ref_ademamix(p, g, 1e-2, 0.9, 0.999, 0.9999, 5.0, 1e-8, 0.1)),
}


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_hand_written_reference_every_step(name, foreach):
    make, reference = CASES[name]
    p0, grads = stream((6, 5), seed=len(name))
    expected = reference(p0.copy(), grads)
    param = torch.nn.Parameter(torch.tensor(p0))
    opt = make([param])
    opt.param_groups[0]["foreach"] = foreach
    for t in range(STEPS):
        param.grad = torch.tensor(grads[t])
        opt.step()
        np.testing.assert_allclose(param.detach().numpy(), expected[t], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{name} step {t + 1}")


def test_adamp_reference_projects_scale_invariant_weights():
    """With gradients orthogonal to each row (weights behind a norm layer) AdamP removes the radial
    part of the update, so each row's norm grows only to second order (AdamP paper, section 3)."""
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((6, 5))
    grads = rng.standard_normal((STEPS, 6, 5))
    for g in grads:
        g -= (g * p0).sum(1, keepdims=True) / (p0 * p0).sum(1, keepdims=True) * p0
    param = torch.nn.Parameter(torch.tensor(p0))
    opt = AdamP([param], lr=1e-2)
    param.grad = torch.tensor(grads[0])
    opt.step()
    expected = ref_adamp(p0.copy(), grads[:1], 1e-2, 0.9, 0.999, 1e-8, 0.0)[0]
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-10)
    update = param.detach().numpy() - p0
    radial = np.abs((update * p0).sum(1)) / np.linalg.norm(p0, axis=1)
    assert radial.max() < 1e-6 * np.abs(update).max()  # up to the eps 1e-8 in ||p|| + eps
    plain = ref_adamp(p0.copy(), grads[:1], 1e-2, 0.9, 0.999, 1e-8, 0.0, delta=0.0)[0] - p0
    plain_radial = np.abs((plain * p0).sum(1)) / np.linalg.norm(p0, axis=1)
    assert plain_radial.max() > 1e-2 * np.abs(plain).max()  # without the projection: a radial part


def test_laprop_first_moment_correction_follows_a_changing_lr():
    """LaProp's c1 is the EMA of the lr, so under a schedule p moves by lr_t-weighted averages."""
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LaProp([param], lr=1e-2, eps=0.0)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    lrs = [1e-2, 5e-3, 2e-3]
    ema_lr, m, expected = 0.0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        param.grad = g.clone()
        opt.step()
        ema_lr = 0.9 * ema_lr + 0.1 * lr
        m = 0.9 * m + 0.1 * lr * torch.sign(g)  # constant g: g / sqrt(v / c2) = sign(g)
        expected = expected - m / (ema_lr / lr)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=0)


def test_ademamix_warmups_follow_the_official_schedules():
    from stablelab.optim.ademamix import alpha_warmup, beta3_warmup

    assert alpha_warmup(25, 8.0, 100) == pytest.approx(2.0)
    assert alpha_warmup(100, 8.0, 100) == 8.0
    # half-life space: beta3 starts at beta1 and its half-life grows linearly to beta3's
    assert beta3_warmup(0, 0.9999, 0.9, 1000) == pytest.approx(0.9, abs=1e-6)
    half = lambda b: math.log(0.5) / math.log(b) - 1  # noqa: E731
    mid = beta3_warmup(500, 0.9999, 0.9, 1000)
    assert half(mid) == pytest.approx((half(0.9) + half(0.9999)) / 2, rel=1e-4)
    assert beta3_warmup(1000, 0.9999, 0.9, 1000) == 0.9999
