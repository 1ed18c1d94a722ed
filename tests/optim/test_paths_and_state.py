"""The mechanics every optimizer shares: foreach == per-tensor, bf16 parameters with float32 state,
bit-identical resume from a state_dict, param groups, closures, sparse gradients rejected."""

import io

import pytest
import torch

from stablelab.optim import available, create

NAMES = ["spam", "stable_spam", "adabelief", "diffgrad", "adamp", "laprop", "ademamix"]
# short reset schedules, so resets, warm-up ramps and spike clipping happen within these tests
SHORT = {"spam": dict(reset_interval=12, warmup_steps=4, clip_warmup=3), "stable_spam": dict(reset_interval=12)}
SHAPES = [(8, 6), (6,), (4, 3, 2), (5,)]


def make(name, params, foreach, **kwargs):
    settings = dict(lr=1e-2, weight_decay=0.05, foreach=foreach, **SHORT.get(name, {}))
    settings.update(kwargs)
    return create(name, params, **settings)


def initial(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for shape in SHAPES]


def grads_at(step, dtype=torch.float32):
    gen = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(shape, generator=gen) for shape in SHAPES]
    if step % 7 == 6:
        grads[0].view(-1)[step % 48] *= 1000.0  # a gradient spike
    if step == 17:
        grads[1].zero_()  # an all-zero gradient (Stable-SPAM still steps it, with g = 0)
    return [g.to(dtype) for g in grads]


def run(optimizer, params, steps, start=0, dtype=None):
    for step in range(start, start + steps):
        for p, g in zip(params, grads_at(step, dtype or params[0].dtype)):
            p.grad = g
        optimizer.step()


def test_registry_lists_every_issue_name():
    assert set(NAMES + ["adamw"]) <= set(available())


@pytest.mark.parametrize("name", NAMES)
def test_foreach_path_matches_per_tensor_path(name):
    slow = [torch.nn.Parameter(p) for p in initial()]
    fast = [torch.nn.Parameter(p.clone()) for p in initial()]
    run(make(name, slow, foreach=False), slow, 30)
    run(make(name, fast, foreach=True), fast, 30)
    moved = max((p - p0).abs().max().item() for p, p0 in zip(slow, initial()))
    assert moved > 1e-2
    for p, q in zip(slow, fast):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("name", NAMES)
def test_bf16_parameters_use_float32_state_and_round_once(name, foreach):
    """bf16 run == float32 run whose parameters are rounded to bf16 after every step (same grads)."""
    low = [torch.nn.Parameter(p) for p in initial(torch.bfloat16)]
    master = [torch.nn.Parameter(p.float()) for p in initial(torch.bfloat16)]
    opt_low, opt_master = make(name, low, foreach), make(name, master, foreach)
    for step in range(20):
        grads = grads_at(step, torch.bfloat16)
        for p, q, g in zip(low, master, grads):
            p.grad, q.grad = g, g.float()
        opt_low.step()
        opt_master.step()
        with torch.no_grad():
            for q in master:
                q.copy_(q.to(torch.bfloat16).float())
    for p, q in zip(low, master):
        assert p.dtype == torch.bfloat16
        assert torch.equal(p.float(), q)
    for state in opt_low.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                assert value.dtype == torch.float32, key
    assert any((p.float() - p0.float()).abs().max() > 0 for p, p0 in zip(low, initial(torch.bfloat16)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_resumes_bit_identically(name, foreach, dtype):
    straight = [torch.nn.Parameter(p) for p in initial(dtype)]
    opt = make(name, straight, foreach)
    run(opt, straight, 10)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in straight], "optimizer": opt.state_dict()}, buffer)
    run(opt, straight, 10, start=10)  # crosses a reset (interval 12) for the SPAM family

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p) for p in saved["params"]]
    opt2 = make(name, resumed, foreach, lr=0.5, weight_decay=0.0)  # the saved groups must win
    opt2.load_state_dict(saved["optimizer"])
    run(opt2, resumed, 10, start=10)
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)
    for p in resumed:
        for value in opt2.state[p].values():
            if torch.is_tensor(value) and value.dim() > 0:
                assert value.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_keep_their_own_hyperparameters(name):
    """One optimizer with two groups == two optimizers, one per group."""
    together = [torch.nn.Parameter(p) for p in initial()]
    apart = [torch.nn.Parameter(p.clone()) for p in initial()]
    betas = (0.8, 0.99, 0.999) if name == "ademamix" else (0.8, 0.99)
    second = dict(lr=3e-3, betas=betas, weight_decay=0.2)
    opt = make(name, [{"params": together[:2]}, {"params": together[2:], **second}], foreach=None)
    first_alone, second_alone = make(name, apart[:2], None), make(name, apart[2:], None, **second)
    for step in range(15):
        for p, q, g in zip(together, apart, grads_at(step)):
            p.grad, q.grad = g, g.clone()
        opt.step()
        first_alone.step()
        second_alone.step()
    for p, q in zip(together, apart):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", NAMES)
def test_closure_is_evaluated_with_grad_and_its_loss_returned(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    twin = torch.nn.Linear(4, 1)
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    opt, opt_twin = make(name, model.parameters(), None), make(name, twin.parameters(), None)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        loss = opt.step(closure)
        opt_twin.zero_grad()
        expected = torch.nn.functional.mse_loss(twin(x), y)
        expected.backward()
        opt_twin.step()
        assert loss.item() == expected.item()
    assert torch.equal(model.weight, twin.weight)


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_are_rejected_with_a_clear_error(name):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    opt = make(name, embedding.parameters(), None)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradients_are_untouched(name):
    params = [torch.nn.Parameter(p) for p in initial()]
    opt = make(name, params, None)
    before = params[1].detach().clone()
    for step in range(3):
        for i, (p, g) in enumerate(zip(params, grads_at(step))):
            p.grad = None if i == 1 else g
        opt.step()
    assert torch.equal(params[1], before)
    assert params[1] not in opt.state or not opt.state[params[1]]
