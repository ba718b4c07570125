"""Sweeps for the NL chapter: literal = einops = SDPA over random shapes, odd sizes, images, autocast."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from nonlocal_book.ops.nl import NLBlock, PAIRWISE, SOFTMAX_MODES, nl_attend, nl_literal, nl_weights

dims = st.integers(1, 6)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), n=dims, m=dims, d=dims, e=dims, mode=st.sampled_from(PAIRWISE),
       scale=st.sampled_from([1.0, 0.5]), seed=st.integers(0, 2**16))
def test_literal_equals_einops(b, n, m, d, e, mode, scale, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, x, y, generator=g, dtype=torch.float64) for x, y in ((n, d), (m, d), (m, e)))
    w_f = torch.randn(2 * d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(nl_attend(q, k, v, mode, scale, w_f), nl_literal(q, k, v, mode, scale, w_f))
    if mode in SOFTMAX_MODES:
        torch.testing.assert_close(nl_attend(q, k, v, mode, scale, backend='sdpa'), nl_literal(q, k, v, mode, scale))


@settings(max_examples=20, deadline=None)
@given(t=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), mode=st.sampled_from(PAIRWISE), sub=st.booleans())
def test_block_any_size_identity_at_init_and_shape_when_on(t, h, w, mode, sub):
    blk = NLBlock(8, mode=mode, subsample=sub)
    x = torch.randn(2, 8, t, h, w)
    with torch.no_grad():
        assert torch.equal(blk(x), x)
        blk.bn.weight.fill_(1.0)
        blk.eval()
        blk.recording = True
        y = blk(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    kh, kw = (-(-h // 2), -(-w // 2)) if sub else (h, w)       # ceil: odd sizes keep their last row and column
    assert blk.maps['attn'].shape == (2, t, h, w, t, kh, kw)


def test_image_is_a_one_frame_clip():
    torch.manual_seed(0)
    blk = NLBlock(8).eval()
    with torch.no_grad():
        blk.bn.weight.fill_(1.0)
        img = torch.randn(2, 8, 6, 6)
        torch.testing.assert_close(blk(img), blk(img[:, :, None])[:, :, 0])


def test_softmax_in_float32_under_autocast():
    torch.manual_seed(0)
    q, k = torch.randn(1, 16, 8) * 30, torch.randn(1, 16, 8) * 30
    with torch.autocast('cpu', dtype=torch.bfloat16):
        a = nl_weights(q, k)
    assert a.dtype == torch.bfloat16 and torch.isfinite(a).all()
    torch.testing.assert_close(a.float().sum(-1), torch.ones(1, 16), atol=2e-2, rtol=0)
    torch.testing.assert_close(a.float(), nl_weights(q, k), atol=1e-2, rtol=0)


def test_identity_at_init_without_norm_too():
    # zero_init without a BatchNorm must zero the output conv's bias as well as its weight (a regression: it did not)
    from nonlocal_book.ops.rnl import RNLBlock
    from nonlocal_book.ops.a2 import A2Block
    x = torch.randn(2, 8, 2, 6, 6)
    with torch.no_grad():
        for blk in (NLBlock(8, norm=False), RNLBlock(8, norm=False), A2Block(8, norm=False)):
            assert torch.equal(blk(x), x), type(blk).__name__


# ---- issue 17: layouts, the flash kernel, the 'auto' backend ---------------------------------------------------------

def _saved_bytes(fn, *args):
    "(fn(*args), bytes autograd keeps for backward): the library's meter."
    from nonlocal_book.results.measure import saved_bytes
    return saved_bytes(lambda: fn(*args))


def _sdpa_ops(fn):
    from torch.profiler import profile
    with profile() as prof: fn()
    return {e.name for e in prof.events() if 'scaled_dot_product' in e.name}


@settings(max_examples=15, deadline=None)
@given(n=dims, m=dims, d=dims, backend=st.sampled_from(['einsum', 'sdpa']), seed=st.integers(0, 2**16))
def test_channels_first_is_the_transpose_and_contiguous(n, m, d, backend, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, x, d, generator=g, dtype=torch.float64) for x in (n, m, m))
    y = nl_attend(q, k, v, scale=0.5, backend=backend, channels_first=True)
    assert y.shape == (2, d, n) and y.is_contiguous()
    torch.testing.assert_close(y, nl_literal(q, k, v, scale=0.5).transpose(1, 2))


def test_sdpa_backend_runs_the_flash_kernel_forward_and_backward():
    q, k, v = (torch.randn(2, x, 8, requires_grad=True) for x in (40, 10, 10))
    ops = _sdpa_ops(lambda: nl_attend(q, k, v, backend='sdpa').sum().backward())
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in ops
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu_backward' in ops
    assert 'aten::_scaled_dot_product_attention_math' not in ops
    # the 3-D call nl_attend used to make gets the math kernel: the test can tell them apart
    assert 'aten::_scaled_dot_product_attention_math' in _sdpa_ops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_auto_backend_rule_equality_and_recording():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 2, 8, 8)                       # C' = 8, M = 2·4·4 = 32 ≥ 8: auto takes flash
    ein = NLBlock(16, backend='einsum').eval()
    with torch.no_grad(): ein.bn.weight.fill_(1.0)
    auto = NLBlock(16).eval(); auto.load_state_dict(ein.state_dict())
    assert auto.backend == 'auto'
    with torch.no_grad(): torch.testing.assert_close(auto(x), ein(x), atol=1e-5, rtol=1e-5)
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in _sdpa_ops(lambda: auto(x))
    auto.recording = True                                 # recording needs the weights: einsum, no SDPA call at all
    assert not _sdpa_ops(lambda: auto(x)) - {'aten::scaled_dot_product_attention'}
    assert auto.maps['attn'].shape == (2, 2, 8, 8, 2, 4, 4)
    small = torch.randn(1, 16, 1, 2, 2)                   # M = 1 < C' = 8: einsum
    assert not NLBlock(16).use_sdpa(torch.zeros(1, 4, 8), torch.zeros(1, 1, 8), torch.zeros(1, 1, 8))
    assert NLBlock(16)(small).shape == small.shape
    assert not NLBlock(16, mode='dot').use_sdpa(torch.zeros(1, 4, 8), torch.zeros(1, 64, 8), torch.zeros(1, 64, 8))
    with pytest.raises(ValueError, match='unknown backend'): NLBlock(16, backend='flash')


def test_flop_counter_sees_the_flash_kernel():
    from nonlocal_book.core import count_macs
    from nonlocal_book.ops.nl import nl_macs
    x = torch.randn(1, 32, 2, 14, 14)
    for backend in ('sdpa', 'einsum', 'auto'):
        assert count_macs(NLBlock(32, backend=backend), x) == nl_macs(32, 2, 14, 14), backend


@pytest.mark.parametrize('C,T,H', [(64, 2, 14), (256, 1, 14)])
def test_saved_memory_model_flash_vs_einsum(C, T, H):
    "flash saves its output and a log-sum-exp (N·C' + N) where einsum saves the N×M weights; everything else is the same."
    torch.manual_seed(0)
    x = torch.randn(1, C, T, H, H, requires_grad=True)
    e = NLBlock(C, backend='einsum'); s = NLBlock(C, backend='sdpa'); s.load_state_dict(e.state_dict())
    (_, me), (_, ms) = _saved_bytes(e, x), _saved_bytes(s, x)
    N, M, Ci = T * H * H, T * (H // 2) ** 2, C // 2
    assert ms - me == 4 * (N * Ci + N - N * M)
    assert (ms < me) == (M > Ci) == NLBlock(C).use_sdpa(torch.zeros(1, N, Ci), torch.zeros(1, M, Ci), torch.zeros(1, M, Ci))


def test_block_gradients_agree_between_backends():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    e = NLBlock(16, backend='einsum').double()
    with torch.no_grad(): e.bn.weight.fill_(1.0)
    s = NLBlock(16, backend='sdpa').double(); s.load_state_dict(e.state_dict())
    gy = torch.randn_like(x)
    ge = torch.autograd.grad(e(x), [x] + list(e.parameters()), gy)
    gs = torch.autograd.grad(s(x), [x] + list(s.parameters()), gy)
    for a, b in zip(ge, gs): torch.testing.assert_close(a, b)
