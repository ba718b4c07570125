"""Sweeps for the NL chapter: literal = einops = SDPA over random shapes, odd sizes, images, autocast."""
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
