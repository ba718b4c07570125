"""Global context, disentangled NL and efficient attention: sweeps and fuzzing beyond the chapter's lesson cells
(nbs/45_beyond.ipynb). Each identity is checked in float64 on random input, with a control that breaks it."""
import pytest
import torch
from einops import rearrange
from hypothesis import given, settings, strategies as st
from nonlocal_book.core import OPERATORS, build_block, count_macs, count_params, recording, softmax32
from nonlocal_book.ops.a2 import double_attention
from nonlocal_book.ops.nl import NLBlock, nl_literal, nl_weights
from nonlocal_book.ops.context import (EFFICIENT_FORMS, DisentangledNLBlock, EfficientAttentionBlock, GCBlock, disentangled_attend,
                                       dnl_literal, dnl_terms, efficient_attention, efficient_cost, efficient_literal, gc_literal,
                                       gc_pool, gc_weights, whiten)

FAST = settings(max_examples=25, deadline=None)


def rand(*shape, dtype=torch.float64, seed=0, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale + shift


def tok(t): return rearrange(t, 'b c t h w -> b (t h w) c')


# --- GC ---------------------------------------------------------------------------------------------------------------

@FAST
@given(B=st.integers(1, 2), N=st.integers(1, 12), C=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_gc_literal_equals_pool_for_every_query(B, N, C, seed):
    x, w = rand(B, N, C, seed=seed, scale=2), rand(C, seed=seed + 1)
    lit = gc_literal(x, w)
    torch.testing.assert_close(lit, gc_pool(x, w)[:, None].expand_as(lit), rtol=1e-10, atol=1e-10)


def test_gc_pool_control_softmax_over_channels_differs():
    x, w = rand(2, 10, 4, seed=1), rand(4, seed=2)
    wrong = torch.einsum('bn,bnc->bc', (x * w).softmax(-1).sum(-1), x)
    assert (wrong - gc_pool(x, w)).abs().max() > 1e-3


@pytest.mark.parametrize('subsample', [False])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_nl_without_query_weight_is_gc(subsample, seed):
    torch.manual_seed(seed)
    nl = NLBlock(6, subsample=subsample).double()
    with torch.no_grad(): nl.theta.weight.zero_()
    x = rand(2, 6, 2, 3, 3, seed=seed)
    q, k = tok(nl.theta(x)), tok(nl.phi(x))
    w_k = nl.scale * rearrange(nl.phi.weight, 'o i 1 1 1 -> o i').T @ nl.theta.bias
    A = nl_weights(q, k, scale=nl.scale)
    torch.testing.assert_close(A, gc_weights(tok(x), w_k)[:, None].expand_as(A), rtol=1e-10, atol=1e-10)
    with torch.no_grad(): nl.theta.weight.normal_()                       # the query back: no longer one map
    A = nl_weights(tok(nl.theta(x)), k, scale=nl.scale)
    assert (A - A.mean(1, keepdim=True)).abs().max() > 1e-4


def test_gc_block_adds_one_vector_and_keeps_a_shared_map():
    torch.manual_seed(0)
    blk = GCBlock(32).eval()
    x = torch.randn(2, 32, 3, 5, 5)
    assert torch.equal(blk(x), x)
    with torch.no_grad(): blk.fc2.weight.normal_(); blk.fc2.bias.normal_()
    with recording(blk) as rec: y = blk(x)
    d = y - x
    torch.testing.assert_close(d, d[:, :, :1, :1, :1].expand_as(d))
    A = rec['']['attn'].flatten(4).flatten(1, 3)                          # (B, N, M)
    assert torch.equal(A, A[:, :1].expand_as(A))                          # the same row for every query
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 75))


def test_gc_block_sizes_and_errors():
    assert GCBlock(256).hidden == 16 and GCBlock(8).hidden == 4 and GCBlock(64, hidden=10).hidden == 10
    assert count_params(GCBlock(256)) == 256 + (256 * 16 + 16) + 32 + (16 * 256 + 256)
    with pytest.raises(ValueError, match='reduction'): GCBlock(64, reduction=0)
    with pytest.raises(ValueError, match='built for 64 channels'): GCBlock(64)(torch.randn(1, 32, 2, 4, 4))
    x = torch.randn(1, 64, 4, 8, 8)
    assert count_macs(GCBlock(64), x) == 2 * (4 * 8 * 8) * 64 + 64 * 4 + 4 * 64   # W_k and the pooling (N·C each), W_v1, W_v2


# --- DNL (Yin et al.) -------------------------------------------------------------------------------------------------

@FAST
@given(B=st.integers(1, 2), N=st.integers(1, 8), M=st.integers(1, 8), D=st.integers(1, 5), s=st.floats(0.1, 2.0),
       seed=st.integers(0, 10**6))
def test_nl_is_softmax_of_whitened_pairwise_plus_unary(B, N, M, D, s, seed):
    q, k = rand(B, N, D, seed=seed, shift=1.0), rand(B, M, D, seed=seed + 1, shift=-0.7)
    P, u = dnl_terms(q, k, s)
    A = nl_weights(q, k, scale=s)
    torch.testing.assert_close(softmax32(P + u[:, None]), A, rtol=1e-10, atol=1e-10)
    prod = softmax32(P) * softmax32(u)[:, None]
    torch.testing.assert_close(prod / prod.sum(-1, keepdim=True), A, rtol=1e-10, atol=1e-10)


def test_dnl_literal_equals_nl_literal_and_control():
    q, k, v = rand(2, 6, 3, seed=3, shift=1.0), rand(2, 5, 3, seed=4, shift=0.5), rand(2, 5, 2, seed=5)
    torch.testing.assert_close(dnl_literal(q, k, v, 0.7), nl_literal(q, k, v, scale=0.7), rtol=1e-10, atol=1e-10)
    P, u = dnl_terms(q, k, 0.7)
    assert (softmax32(P) - nl_weights(q, k, scale=0.7)).abs().max() > 1e-3     # dropping the unary term breaks it


def test_nl_block_weights_decompose_with_subsampling_and_biases():
    torch.manual_seed(0)
    nl = NLBlock(8).double()                                               # θ, φ with biases, keys max-pooled 2×2
    x = rand(2, 8, 2, 6, 6, seed=7)
    q, k = tok(nl.theta(x)), tok(nl.phi(nl.pool(x)))
    P, u = dnl_terms(q, k, nl.scale)
    torch.testing.assert_close(softmax32(P + u[:, None]), nl_weights(q, k, scale=nl.scale), rtol=1e-10, atol=1e-10)


def test_whitened_pairwise_ignores_biases():
    q, k = rand(2, 7, 4, seed=1), rand(2, 9, 4, seed=2)
    P = dnl_terms(q, k)[0]
    torch.testing.assert_close(dnl_terms(q + rand(4, seed=3), k + rand(4, seed=4))[0], P, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(whiten(q).mean(1), torch.zeros(2, 4, dtype=q.dtype), rtol=0, atol=1e-12)


def test_disentangled_attend_is_the_sum_of_two_softmaxes():
    q, k, v, un = rand(2, 6, 3, seed=1), rand(2, 5, 3, seed=2), rand(2, 5, 4, seed=3), rand(2, 5, seed=4)
    y, wp, wu = disentangled_attend(q, k, v, un, 0.5, return_weights=True)
    P = dnl_terms(q, k, 0.5)[0]
    torch.testing.assert_close(y, (softmax32(P) + softmax32(un)[:, None]) @ v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(wp.sum(-1), torch.ones(2, 6, dtype=q.dtype)); torch.testing.assert_close(wu.sum(-1), torch.ones(2, dtype=q.dtype))


def test_disentangled_block_identity_and_names():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, 6, 6)
    assert torch.equal(DisentangledNLBlock(16)(x), x)
    assert type(build_block('disentangled_nl', 16)).__name__ == 'DisentangledNLBlock'
    assert type(build_block('dnl', 16)).__name__ == 'DNLBlock'               # GTA's decoupled baseline keeps its name
    assert 'Yin' in OPERATORS['disentangled_nl'].doc and 'GTA' in OPERATORS['dnl'].doc
    blk, nl = DisentangledNLBlock(16), NLBlock(16)
    assert count_params(blk) == count_params(nl) + 16 - 2 * 8               # + W_m, − the θ and φ biases


# --- efficient attention ----------------------------------------------------------------------------------------------

@FAST
@given(B=st.integers(1, 2), N=st.integers(1, 9), M=st.integers(1, 9), heads=st.sampled_from([1, 2, 3]),
       d=st.integers(1, 2), e=st.integers(1, 2), seed=st.integers(0, 10**6))
def test_efficient_linear_equals_quadratic_equals_literal(B, N, M, heads, d, e, seed):
    q, k, v = rand(B, N, heads * d, seed=seed, scale=3), rand(B, M, heads * d, seed=seed + 1, scale=3), rand(B, M, heads * e, seed=seed + 2)
    lin, quad = (efficient_attention(q, k, v, heads, f) for f in EFFICIENT_FORMS)
    torch.testing.assert_close(lin, quad, rtol=1e-10, atol=1e-10)
    lit = torch.cat([efficient_literal(q[..., h * d:(h + 1) * d], k[..., h * d:(h + 1) * d], v[..., h * e:(h + 1) * e])
                     for h in range(heads)], -1)
    torch.testing.assert_close(lin, lit, rtol=1e-10, atol=1e-10)


def test_efficient_one_head_is_a2_left_and_the_rank_bound():
    q, k, v = rand(1, 40, 3, seed=1, scale=2), rand(1, 40, 3, seed=2, scale=2), rand(1, 40, 5, seed=3)
    a2 = double_attention(rearrange(v, 'b m e -> b e m'), rearrange(k, 'b m d -> b d m'), rearrange(q, 'b n d -> b d n'), 'left')
    torch.testing.assert_close(efficient_attention(q, k, v), rearrange(a2, 'b e n -> b n e'), rtol=1e-10, atol=1e-10)
    A = softmax32(q, -1)[0] @ softmax32(k, 1)[0].T                         # the N × N matrix of the quadratic form
    assert torch.linalg.matrix_rank(A) <= 3 and torch.allclose(A.sum(-1), torch.ones(40, dtype=A.dtype))
    assert torch.linalg.matrix_rank(nl_weights(q, k)[0]) > 3               # NL's softmax is not bounded so


@pytest.mark.parametrize('dk,dv,N,heads', [(64, 64, 100, 1), (32, 16, 50, 4), (8, 8, 8, 2)])
def test_efficient_cost_is_counted(dk, dv, N, heads):
    q, k, v = torch.randn(1, N, dk), torch.randn(1, N, dk), torch.randn(1, N, dv)
    class F(torch.nn.Module):
        def __init__(self, f): super().__init__(); self.f = f
        def forward(self, q, k, v): return efficient_attention(q, k, v, heads, self.f)
    for f in EFFICIENT_FORMS: assert count_macs(F(f), q, k, v) == efficient_cost(dk, dv, N, heads=heads)[f]


def test_efficient_block_forms_agree_and_errors():
    torch.manual_seed(0)
    a, b = EfficientAttentionBlock(12, heads=3).eval(), EfficientAttentionBlock(12, heads=3, form='quadratic').eval()
    with torch.no_grad(): a.bn.weight.fill_(1.)
    b.load_state_dict(a.state_dict())
    for x in (torch.randn(2, 12, 3, 4, 5), torch.randn(2, 12, 4, 5)):
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
        assert (a(x) - x).abs().max() > 1e-3
    with pytest.raises(ValueError, match='must divide'): EfficientAttentionBlock(12, heads=5)
    with pytest.raises(ValueError, match='unknown form'): EfficientAttentionBlock(12, form='cubic')
    with pytest.raises(ValueError, match='unknown form'): efficient_attention(*(torch.randn(1, 3, 2),) * 3, form='x')
    with pytest.raises(ValueError, match='same features'): efficient_attention(torch.randn(1, 3, 2), torch.randn(1, 3, 4), torch.randn(1, 3, 2))
