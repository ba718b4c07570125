"""Registry-wide property tests: every operator registered in `nonlocal_book.core.OPERATORS` joins automatically.

Zero-initialised parameters (an identity start) are perturbed first where a property needs every branch to contribute."""
import pytest
import torch
from nonlocal_book.core import OPERATORS, list_operators, get_operator

NAMES = list_operators()


def example(spec, batch=2, image=False, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, spec.channels) + ((spec.size, spec.size) if image else (spec.frames, spec.size, spec.size))
    return torch.randn(*shape, generator=g, dtype=dtype)


def build(spec, seed=0, perturb=True):
    torch.manual_seed(seed)
    block = spec.build(spec.channels)
    if perturb:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in block.parameters():
                if p.numel() and p.abs().max() == 0: p.copy_(torch.randn(p.shape, generator=g) * 0.5 + 0.5)
    return block


def test_registry_is_populated():
    assert {'nl', 'se'} <= set(NAMES)
    for name in NAMES:
        assert OPERATORS[name].doc, f'{name} has no description'


@pytest.mark.parametrize('name', NAMES)
def test_shape_video(name):
    spec = get_operator(name)
    x = example(spec)
    y = build(spec)(x)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize('name', NAMES)
def test_shape_image(name):
    spec = get_operator(name)
    x = example(spec, image=True)
    block = build(spec)
    if spec.image:
        assert block(x).shape == x.shape
    else:  # operators that need several frames must say so clearly
        with pytest.raises(ValueError):
            block(x)


@pytest.mark.parametrize('name', NAMES)
def test_bad_input_is_a_clear_error(name):
    spec = get_operator(name)
    block = build(spec)
    x = example(spec)
    with pytest.raises(ValueError, match='channels'):
        block(torch.randn(x.shape[0], x.shape[1] + 1, *x.shape[2:]))
    with pytest.raises(ValueError):
        block(torch.randn(spec.channels, spec.size))


@pytest.mark.parametrize('name', NAMES)
def test_gradients_reach_every_parameter(name):
    spec = get_operator(name)
    block = build(spec).train()
    x = example(spec).requires_grad_()
    y = block(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    dead = [n for n, p in block.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f'no gradient reaches {dead}'


@pytest.mark.parametrize('name', NAMES)
def test_batch_independence_in_eval(name):
    spec = get_operator(name)
    block = build(spec).eval()
    x = example(spec, batch=3)
    with torch.no_grad():
        full = block(x)
        alone = block(x[1:2])
        other = block(torch.cat([x[:1], x[1:2] * 0 + x[1:2], torch.randn_like(x[2:])]))
    torch.testing.assert_close(full[1:2], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full[1:2], other[1:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_gradcheck_float64(name):
    spec = get_operator(name)
    block = build(spec).double().eval()
    x = example(spec, batch=1, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-4, fast_mode=True)


@pytest.mark.parametrize('name', NAMES)
def test_deterministic_with_seed(name):
    spec = get_operator(name)
    a, b = build(spec, seed=3), build(spec, seed=3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), f'{na} differs between two builds with the same seed'
    x = example(spec)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_finite_on_constant_input(name, mode):
    spec = get_operator(name)
    block = build(spec).train(mode == 'train')
    for value in (0.0, 3.0):
        x = torch.full(example(spec).shape, value)
        with torch.no_grad():
            assert torch.isfinite(block(x)).all(), f'non-finite output on constant input {value}'


@pytest.mark.parametrize('name', NAMES)
def test_follows_input_dtype(name):
    spec = get_operator(name)
    block = build(spec).double().eval()
    with torch.no_grad():
        assert block(example(spec, dtype=torch.float64)).dtype == torch.float64
