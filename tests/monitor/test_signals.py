"""Pure signal functions against hand-worked values and reference implementations."""

import math

import pytest
import torch

from stablelab.signals.spikes import spike_fraction, squared_norms, tensor_spike_ratio
from stablelab.signals.weights import eps_ratio, gradient_rms, gradient_weight_cosine, update_to_weight_ratio


def test_tensor_spike_ratio_by_hand():
    g = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0, 1.0, 1.0])]
    g2 = squared_norms(g)                       # 25, 4
    numels = torch.tensor([2.0, 4.0])
    v_mean = torch.tensor([0.5, 0.0])           # second tensor: no history -> ratio 1
    ratio = tensor_spike_ratio(g2, numels, v_mean)
    assert ratio.tolist() == pytest.approx([(25 / 2) / 0.5, 1.0])


def test_spike_fraction_follows_spam_rule():
    # SPAM: an element spikes when g^2 > theta * v (theta 5000); v = 0 is not a spike.
    g = torch.tensor([100.0, 1.0, 3.0, 5.0])
    v = torch.tensor([1.0, 1.0, 0.0, 0.004])    # 1e4 > 5e3 yes; 1 no; v=0 no; 25 > 20 yes
    assert spike_fraction([g], [v]).item() == pytest.approx(2 / 4)


def test_update_to_weight_ratio_by_hand():
    before = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    after = [torch.tensor([[1.0, 0.0], [0.0, 2.0]])]
    # ||delta|| = 1, ||after|| = sqrt(5)
    assert update_to_weight_ratio(before, after).item() == pytest.approx(1 / math.sqrt(5))
    # the flat form the monitor runs: two tensors concatenated, one ratio per segment
    before2 = before + [torch.tensor([3.0, 4.0])]
    after2 = after + [torch.tensor([3.0, 0.0])]  # ||delta|| = 4, ||after|| = 3
    flat = update_to_weight_ratio(torch.cat([b.flatten() for b in before2]),
                                  torch.cat([a.flatten() for a in after2]), sizes=[4, 2])
    assert flat.tolist() == pytest.approx([1 / math.sqrt(5), 4 / 3])
    given = update_to_weight_ratio(before2, after2, weight_norms=torch.tensor([1.0, 2.0]))
    assert given.tolist() == pytest.approx([1.0, 2.0])  # ||delta|| / the norms given


def test_gradient_weight_cosine_matches_reference():
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    grads = [0.3 * weights[0] + 0.1 * torch.randn(5, 3), -weights[1]]
    ours = gradient_weight_cosine(grads, weights)
    reference = [torch.nn.functional.cosine_similarity(g.flatten(), w.flatten(), dim=0).item()
                 for g, w in zip(grads, weights)]
    assert ours.tolist() == pytest.approx(reference, abs=1e-6)
    assert ours[1].item() == pytest.approx(-1.0, abs=1e-6)
    collapse = pytest.importorskip("stablelab.signals.collapse")
    if hasattr(collapse, "nlm_alignment"):  # the grokking study's per-tensor definition agrees
        named = {"a": weights[0], "b": weights[1]}
        theirs = collapse.nlm_alignment(named, {"a": grads[0], "b": grads[1]})
        assert [theirs["a"], theirs["b"]] == pytest.approx(ours.tolist(), abs=1e-6)


def test_gradient_rms_and_eps_ratio():
    norms = torch.tensor([2.0, 0.0])
    numels = torch.tensor([4.0, 9.0])
    rms = gradient_rms(norms, numels)
    assert rms.tolist() == [1.0, 0.0]           # ||g|| / sqrt(n)
    assert eps_ratio(rms, 1e-8)[0].item() == pytest.approx(1e8)


@pytest.mark.parametrize("causal,t_q", [(True, 7), (False, 7), (True, 3)])
def test_fast_attention_logit_max_equals_the_reference(causal, t_q):
    from stablelab.signals.attention import attention_logit_max, attention_logit_max_fast

    torch.manual_seed(1)
    q, k = torch.randn(2, 3, t_q, 8) * 5, torch.randn(2, 3, 7, 8) * 5
    assert attention_logit_max_fast(q, k, causal=causal).item() == pytest.approx(
        attention_logit_max(q, k, causal=causal).item(), rel=1e-6)
    # and by hand: explicit loops over the visible pairs
    best = 0.0
    for b in range(2):
        for h in range(3):
            for i in range(t_q):
                for j in range(7):
                    if causal and j > i + 7 - t_q:
                        continue
                    best = max(best, abs(float(q[b, h, i] @ k[b, h, j])) / math.sqrt(8))
    assert attention_logit_max_fast(q, k, causal=causal).item() == pytest.approx(best, rel=1e-5)
