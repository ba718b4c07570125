"""A²-Nets (double attention): sweeps and fuzzing beyond the chapter's lesson cells (nbs/05_a2.ipynb)."""
import pytest
import torch
from einops import rearrange
from hypothesis import given, settings, strategies as st
from torch import nn
from nonlocal_book.core import count_macs, count_params, recording
from nonlocal_book.ops.a2 import (A2Block, ASSOCIATIONS, a2_cost, a2_left, a2_literal, a2_macs, a2_params, a2_relation,
                                  a2_right, attention_maps, attention_pool, bilinear_pool, bilinear_pool_literal,
                                  choose_association, distribute, distribution_weights, double_attention)
from nonlocal_book.results.measure import peak_live_bytes

FAST = settings(max_examples=25, deadline=None)


def rand(*shape, dtype=torch.float64, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


@FAST
@given(B=st.integers(1, 2), m=st.integers(1, 5), n=st.integers(1, 5), N=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_left_right_literal_agree_float64(B, m, n, N, seed):
    a, b, v = rand(B, m, N, seed=seed), rand(B, n, N, seed=seed + 1, scale=3), rand(B, n, N, seed=seed + 2, scale=3)
    ref = a2_literal(a, b, v)
    torch.testing.assert_close(a2_left(a, b, v), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a2_right(a, b, v), ref, rtol=1e-10, atol=1e-10)
    for s in ASSOCIATIONS: torch.testing.assert_close(double_attention(a, b, v, s), ref, rtol=1e-10, atol=1e-10)


@FAST
@given(m=st.integers(1, 32), n=st.integers(1, 32), N=st.integers(1, 300), seed=st.integers(0, 10**6))
def test_left_equals_right_to_float32_precision(m, n, N, seed):
    a, b, v = (rand(2, c, N, dtype=torch.float32, seed=seed + i, scale=4) for i, c in enumerate((m, n, n)))
    left, right = a2_left(a, b, v), a2_right(a, b, v)
    scale = left.abs().max().clamp_min(1e-6)
    assert ((left - right).abs().max() / scale) < 64 * torch.finfo(torch.float32).eps


@FAST
@given(m=st.integers(1, 6), n=st.integers(1, 6), N=st.integers(1, 10), seed=st.integers(0, 10**6))
def test_bilinear_pool_is_a_sum_of_outer_products(m, n, N, seed):
    a, b = rand(2, m, N, seed=seed), rand(2, n, N, seed=seed + 1)
    torch.testing.assert_close(bilinear_pool(a, b), bilinear_pool_literal(a, b))


def test_softmax_axes():
    b, v = rand(2, 3, 17, scale=5), rand(2, 3, 17, scale=5)
    torch.testing.assert_close(attention_maps(b).sum(-1), torch.ones(2, 3, dtype=torch.float64))        # over positions
    torch.testing.assert_close(distribution_weights(v).sum(1), torch.ones(2, 17, dtype=torch.float64))  # over descriptors
    R = a2_relation(b, v)
    torch.testing.assert_close(R.sum(1), torch.ones(2, 17, dtype=torch.float64))                       # a convex mix per query
    assert torch.linalg.matrix_rank(R[0]) <= 3


def test_gather_and_distribute_compose_to_left():
    a, b, v = rand(2, 4, 9), rand(2, 3, 9), rand(2, 3, 9)
    torch.testing.assert_close(distribute(attention_pool(a, b), v), a2_left(a, b, v))


@pytest.mark.parametrize('m,n,N', [(8, 8, 9), (8, 8, 7), (8, 8, 8), (16, 4, 6), (4, 16, 7), (1, 1, 1), (64, 64, 196)])
def test_auto_picks_the_cheaper_association(m, n, N):
    c = a2_cost(m, n, N)
    choice = choose_association(m, n, N)
    assert c[choice]['macs'] == min(c['left']['macs'], c['right']['macs'])
    if c['left']['macs'] == c['right']['macs']: assert choice == 'left'


@pytest.mark.parametrize('shape,expect', [((1, 64, 4, 8, 8), 'left'), ((1, 64, 2, 2), 'right'), ((1, 64, 1, 3, 3), 'right'),
                                          ((1, 64, 1, 4, 5), 'left')])
def test_block_auto_costs_the_cheaper_association(shape, expect):
    torch.manual_seed(0)
    blocks = {s: A2Block(64, association=s) for s in ASSOCIATIONS}
    for s in ('left', 'right'): blocks[s].load_state_dict(blocks['auto'].state_dict())
    x = torch.randn(*shape)
    macs = {s: count_macs(blocks[s], x) for s in ASSOCIATIONS}
    assert macs['auto'] == macs[expect] == min(macs['left'], macs['right'])
    with torch.no_grad():
        for blk in blocks.values(): blk.bn.weight.fill_(1.0); blk.eval()
        torch.testing.assert_close(blocks['left'](x), blocks['right'](x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('C,shape,kw', [(16, (2, 3, 5), {}), (32, (1, 4, 4), {'m': 5, 'n': 3}), (24, (3, 2, 2), {'reduction': 2}),
                                         (8, (1, 1, 2), {})])   # (N = 1 would not do: einsum turns a length-1 contraction
                                                                 #  into an element-wise product, which FlopCounterMode skips)
@pytest.mark.parametrize('association', ASSOCIATIONS)
def test_cost_helpers_match_measurement(C, shape, kw, association):
    blk = A2Block(C, association=association, **kw)
    assert count_macs(blk, torch.randn(1, C, *shape)) == a2_macs(C, *shape, association=association, **kw)
    assert count_params(blk) == a2_params(C, **kw)
    assert count_params(A2Block(C, norm=False, **kw)) == a2_params(C, norm=False, **kw)


def test_paper_memory_arithmetic():
    N = 32 * 28 * 28
    c = a2_cost(512, 512, N)
    assert c['right']['bytes'] / 2**20 == N * N / 2**18 > 2048       # "> 2 GB"
    assert c['left']['bytes'] == 2**20                               # "1 MB"


@pytest.mark.parametrize('N', [128, 512])
def test_measured_memory_follows_the_model(N):
    m = n = 8
    a, b, v = torch.randn(1, m, N), torch.randn(1, n, N), torch.randn(1, n, N)
    shared = 4 * (2 * n * N + m * N)
    (zl, pl), (zr, pr) = (peak_live_bytes(double_attention, a, b, v, s) for s in ('left', 'right'))
    torch.testing.assert_close(zl, zr, rtol=1e-5, atol=1e-5)
    assert shared + 4 * m * n <= pl <= shared + 4 * m * n + 4 * n * N
    assert shared + 4 * N * N <= pr <= shared + 4 * N * N + 4 * n * N


def test_identity_at_init_and_shapes():
    torch.manual_seed(0)
    for s in ASSOCIATIONS:
        blk = A2Block(16, association=s)
        for x in (torch.randn(2, 16, 3, 4, 5), torch.randn(2, 16, 4, 5)):
            with torch.no_grad(): assert torch.equal(blk(x), x)
    blk = A2Block(16, norm=False)
    with torch.no_grad(): assert torch.equal(blk(torch.ones(1, 16, 2, 3, 3)), torch.ones(1, 16, 2, 3, 3))


def test_theta_has_no_bias_because_it_would_cancel():
    blk = A2Block(16)
    assert blk.theta.bias is None and blk.phi.bias is not None and blk.rho.bias is not None
    a, b, v = rand(1, 4, 10), rand(1, 4, 10), rand(1, 4, 10)
    torch.testing.assert_close(double_attention(a, b + rand(1, 4, 1, seed=5), v), double_attention(a, b, v))


def test_recorded_maps():
    torch.manual_seed(0)
    blk = A2Block(16)
    with recording(blk) as rec: blk(torch.randn(2, 16, 3, 4, 5))
    g, d = rec['']['gather'], rec['']['distribute']
    assert g.shape == d.shape == (2, 4, 3, 4, 5)
    torch.testing.assert_close(g.sum((2, 3, 4)), torch.ones(2, 4))
    torch.testing.assert_close(d.sum(1), torch.ones(2, 3, 4, 5))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_follows_dtype(dtype):
    a, b, v = (rand(2, c, 30, dtype=torch.float32, seed=i) for i, c in enumerate((4, 3, 3)))
    z = double_attention(a.to(dtype), b.to(dtype), v.to(dtype))
    assert z.dtype == dtype
    torch.testing.assert_close(z.float(), double_attention(a, b, v), rtol=0.05, atol=0.05)


def test_clear_errors():
    with pytest.raises(ValueError, match='association'): A2Block(8, association='middle')
    with pytest.raises(ValueError, match='channels'): A2Block(8)(torch.randn(1, 9, 2, 3, 3))
    with pytest.raises(ValueError, match='dims'): A2Block(8)(torch.randn(8, 3))
    with pytest.raises(ValueError, match='same shape'): double_attention(rand(1, 2, 5), rand(1, 3, 5), rand(1, 2, 5))
    with pytest.raises(ValueError, match='share'): double_attention(rand(1, 2, 4), rand(1, 3, 5), rand(1, 3, 5))


def test_gradients_agree_between_associations():
    a, b, v = (rand(1, c, 12, seed=i).requires_grad_() for i, c in enumerate((3, 2, 2)))
    w = rand(1, 3, 12, seed=9)
    grads = []
    for s in ('left', 'right'):
        g = torch.autograd.grad((double_attention(a, b, v, s) * w).sum(), (a, b, v))
        grads.append(g)
    for gl, gr in zip(*grads): torch.testing.assert_close(gl, gr)
    assert torch.autograd.gradcheck(lambda a, b, v: a2_left(a, b, v), (a, b, v))


# ---- issue 17: one convolution for θ, φ, ρ; the BatchNorm's price ----------------------------------------------------

def test_fused_projection_equals_three_convolutions_values_and_gradients():
    torch.manual_seed(0)
    blk = A2Block(16, norm=False, zero_init=False).double()
    x = torch.randn(2, 16, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    def three_convs(x):
        flat = lambda t: t.flatten(2)
        z = double_attention(flat(blk.phi(x)), flat(blk.theta(x)), flat(blk.rho(x)))
        return x + blk.out(z.view(2, blk.m, 2, 5, 5))
    gy = torch.randn_like(x)
    params = [x] + list(blk.parameters())
    for a, b in zip(torch.autograd.grad(blk(x), params, gy), torch.autograd.grad(three_convs(x), params, gy)):
        torch.testing.assert_close(a, b)


def test_batchnorm_saves_its_input():
    def saved(fn, x):
        seen = {}
        def pack(t):
            st = t.untyped_storage(); seen[st.data_ptr()] = st.nbytes(); return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t): fn(x)
        return sum(seen.values())
    x = torch.randn(2, 32, 2, 7, 7, requires_grad=True)
    with_bn, without = saved(A2Block(32), x), saved(A2Block(32, norm=False), x)
    assert 0 <= with_bn - without - x.nbytes <= 8 * 4 * 32          # + BN's C×N input and a few per-channel vectors
