"""GTA chapter sweeps: literal = einops over random shapes, temporal-order (equivariance) properties, errors, cost formulas."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from einops import rearrange, einsum
from hypothesis import given, settings, strategies as st, HealthCheck

from nonlocal_book.core import count_macs, count_params, build_block, recording
from nonlocal_book.ops.nl import NLBlock
from nonlocal_book.ops.gta import (attention_literal, self_attention, spatial_attend, temporal_attend, spatial_literal,
                                   temporal_literal, gta_mix, gta_mix_literal, region_gta_literal, REGION_NORMS,
                                   SpatialAttention, TemporalAttention, DNLBlock, GlobalTemporalAttention, GTABlock,
                                   sinusoidal_encoding, gta_macs, dnl_macs, spatial_macs, kv_pool_literal)

F64 = dict(dtype=torch.float64)
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def switch_on(block):
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.BatchNorm3d): m.weight.fill_(1.0)
    return block.eval()


def as_matrix(conv): return rearrange(conv.weight, 'o i 1 1 1 -> i o')


# ---------------------------------------------------------------- Eq. 1-2
@FAST
@given(n=st.integers(1, 12), c=st.integers(1, 6), d=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_self_attention_literal_einops_sdpa(n, c, d, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, c, generator=g, **F64)
    wq, wk, wv = (torch.randn(c, d, generator=g, **F64) for _ in range(3))
    wo = torch.randn(d, c, generator=g, **F64)
    lit = attention_literal(x, wq, wk, wv, wo)
    torch.testing.assert_close(self_attention(x, wq, wk, wv, wo), lit, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x + F.scaled_dot_product_attention(x @ wq, x @ wk, x @ wv) @ wo, lit, rtol=1e-9, atol=1e-9)


def test_nl_block_is_eq_1_2():
    torch.manual_seed(0)
    clip = torch.randn(2, 6, 3, 4, 2, **F64)
    nl = NLBlock(6, inner=6, subsample=False, norm=False, zero_init=False).double()
    with torch.no_grad():
        for conv in (nl.theta, nl.phi, nl.g, nl.out): conv.bias.zero_()
        X = rearrange(clip, 'b c t h w -> b (t h w) c')
        Y = self_attention(X, *(as_matrix(c) for c in (nl.theta, nl.phi, nl.g, nl.out)))
        torch.testing.assert_close(nl(clip), rearrange(Y, 'b (t h w) c -> b c t h w', t=3, h=4))


def test_self_attention_weights_are_rows_of_a_softmax():
    x = torch.randn(1, 7, 4, **F64); w = torch.eye(4, **F64)
    _, M = self_attention(x, w, w, w, w, return_weights=True)
    torch.testing.assert_close(M.sum(-1), torch.ones(1, 7, **F64))


# ---------------------------------------------------------------- Eq. 3-4
@FAST
@given(t=st.integers(1, 4), h=st.integers(1, 3), w=st.integers(1, 3), d=st.integers(1, 5), e=st.integers(1, 5),
       seed=st.integers(0, 10**6))
def test_spatial_temporal_literal_vs_einops(t, h, w, d, e, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, d, t, h, w, generator=g, **F64) for _ in range(2))
    v = torch.randn(2, e, t, h, w, generator=g, **F64)
    torch.testing.assert_close(spatial_attend(q, k, v), spatial_literal(q, k, v))
    torch.testing.assert_close(temporal_attend(q, k, v), temporal_literal(q, k, v))
    torch.testing.assert_close(spatial_attend(q, k, v, backend='sdpa'), spatial_literal(q, k, v))
    torch.testing.assert_close(temporal_attend(q, k, v, backend='sdpa'), temporal_literal(q, k, v))


@FAST
@given(t=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), ph=st.integers(1, 3), pw=st.integers(1, 3),
       seed=st.integers(0, 10**6))
def test_pooled_spatial_attention_literal_vs_block(t, h, w, ph, pw, seed):
    "kv_pool: the block = Eq. 3 with keys and values max-pooled per window after W_K, W_V (literal loops), any size, odd included."
    torch.manual_seed(seed)
    x = torch.randn(2, 6, t, h, w, **F64)
    sa = SpatialAttention(6, inner=4, norm=False, zero_init=False, kv_pool=(ph, pw)).double()
    proj = lambda conv, z: einsum(z, as_matrix(conv), 'b c t h w, c d -> b d t h w')
    with torch.no_grad():
        k, v = (kv_pool_literal(proj(c, x), (ph, pw)) for c in (sa.k, sa.v))
        assert k.shape[-2:] == (-(-h // ph), -(-w // pw))
        ref = x + sa.out(spatial_literal(proj(sa.q, x), k, v))
        torch.testing.assert_close(sa(x), ref)
        with recording(sa) as maps: sa(x)
        assert maps['']['attn'].shape == (2, t, h * w, k.shape[-2] * k.shape[-1])


def test_kv_pool_default_and_errors():
    assert SpatialAttention(8).kv_pool == (2, 2) and DNLBlock(8).spatial.kv_pool == (2, 2)
    assert GTABlock(32, T=4, kv_pool=1).spatial.kv_pool == (1, 1)
    assert isinstance(SpatialAttention(8, kv_pool=1).pool, nn.Identity)
    for bad in (0, (2, 0), 1.5, (2,)):
        with pytest.raises(ValueError, match='kv_pool must be'): SpatialAttention(8, kv_pool=bad)


def test_table6_spatial_attention_cost():
    "Table 6: R2D-50 (32.7 G) + five SA blocks = 41.7 G with keys pooled 2×2; with every key it would be 43.9 G."
    cfg = [(512, 28)] * 2 + [(1024, 14)] * 3
    sa = lambda p: 32.7 + sum(spatial_macs(c, 8, h, h, c // 4, p) for c, h in cfg) / 1e9
    assert abs(sa(2) - 41.7) < 0.05 and abs(sa(1) - 43.91) < 0.01
    assert abs(32.7 + sum(dnl_macs(c, 8, h, h) for c, h in cfg) / 1e9 - 49.9) < 0.05


@pytest.mark.parametrize('name', ['dnl', 'tape', 'gta', 'gta_pixel', 'gta_region'])
def test_empty_batch_gives_empty_output(name):
    "A batch of zero clips returns the empty shape (it raised ZeroDivisionError in an einops split before)."
    blk = build_block(name, 32)
    x = torch.randn(0, 32, 4, 6, 6)
    assert blk(x).shape == x.shape
    with recording(blk) as maps: assert blk(x).shape == x.shape


def test_spatial_attention_stays_within_its_frame():
    "Changing frame 0 must not change the spatial attention output of frame 1."
    torch.manual_seed(0)
    sa = switch_on(SpatialAttention(8))
    x = torch.randn(1, 8, 2, 4, 4)
    y = x.clone(); y[:, :, 0] = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(sa(x)[:, :, 1], sa(y)[:, :, 1])
        assert (sa(x)[:, :, 0] - sa(y)[:, :, 0]).abs().max() > 1e-3


def test_temporal_attention_stays_at_its_position():
    torch.manual_seed(0)
    ta = switch_on(TemporalAttention(8))
    x = torch.randn(1, 8, 4, 3, 3)
    y = x.clone(); y[..., 0, 0] = torch.randn(1, 8, 4)
    with torch.no_grad():
        torch.testing.assert_close(ta(x)[..., 1:, :], ta(y)[..., 1:, :])


def test_temporal_block_on_one_frame_is_a_pixelwise_linear_map():
    "With T = 1 the softmax has one key (weight 1): Y = X + BN(W_O W_V X)."
    torch.manual_seed(0)
    ta = switch_on(TemporalAttention(8)).double()
    x = torch.randn(2, 8, 5, 5, **F64)
    with torch.no_grad():
        v = einsum(x, as_matrix(ta.v), 'b c h w, c e -> b e h w')
        expected = x + ta.out(rearrange(v, 'b e h w -> b e 1 h w'))[:, :, 0]
        torch.testing.assert_close(ta(x), expected)


def test_sinusoidal_encoding():
    pe = sinusoidal_encoding(5, 7, dtype=torch.float64)
    assert pe.shape == (7, 5)
    torch.testing.assert_close(pe[0], torch.sin(torch.arange(5.0, dtype=torch.float64)))
    torch.testing.assert_close(pe[1], torch.cos(torch.arange(5.0, dtype=torch.float64)))
    torch.testing.assert_close(pe[2], torch.sin(torch.arange(5.0, dtype=torch.float64) * 10000 ** (-2 / 7)))
    assert len({tuple(col.tolist()) for col in pe.T}) == 5          # every frame gets its own code


# ---------------------------------------------------------------- Eq. 5-8
@FAST
@given(G=st.sampled_from([1, 2, 3, 4]), c=st.integers(1, 3), T=st.integers(1, 5), S=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_gta_mix_literal_vs_einops(G, c, T, S, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(G, G, T, T, generator=g, **F64)
    v = torch.randn(2, G * c, T, S, generator=g, **F64)
    torch.testing.assert_close(gta_mix(M, v), gta_mix_literal(M, v))


def test_gta_mix_mixes_channels_across_groups():
    "CCMH: a head reads every group (Eq. 8's sum); zero all M̂_g^k but one and only that group -> head path is left."
    M = torch.zeros(2, 2, 3, 3, **F64); M[1, 0] = torch.eye(3, **F64)      # group 1 -> head 0
    v = torch.randn(1, 4, 3, 2, **F64)
    out = gta_mix(M, v)
    torch.testing.assert_close(out[:, :2], v[:, 2:])                       # head 0 = channels of group 1
    torch.testing.assert_close(out[:, 2:], torch.zeros_like(out[:, 2:]))


@pytest.mark.parametrize('norm', REGION_NORMS)
@pytest.mark.parametrize('groups', [1, 2, 4])
@pytest.mark.parametrize('parts', [(True, True), (True, False), (False, True)])
def test_gta_block_equals_literal(norm, groups, parts):
    pixel, region = parts
    torch.manual_seed(groups)
    x = torch.randn(2, 16, 3, 2, 3, **F64)
    gta = GlobalTemporalAttention(16, T=3, groups=groups, pixel=pixel, region=region, region_norm=norm,
                                  norm=False, zero_init=False).double()
    xs = rearrange(x, 'b c t h w -> b c t (h w)')
    expected = xs.clone()
    with torch.no_grad():
        if pixel:
            vp = einsum(xs, as_matrix(gta.v_p), 'b c t s, c e -> b e t s')
            expected += einsum(gta_mix_literal(gta.m_p, vp), as_matrix(gta.out_p), 'b e t s, e c -> b c t s')
        if region: expected += region_gta_literal(xs, gta.w_g, gta.w_v_r, gta.m_r, gta.w_o_r, norm=norm)
        torch.testing.assert_close(gta(x), rearrange(expected, 'b c t (h w) -> b c t h w', h=2))


def test_region_assignments_are_distributions_and_regions_are_means():
    torch.manual_seed(0)
    gta = GlobalTemporalAttention(16, T=2, groups=2)
    from nonlocal_book.core import recording
    x = torch.randn(1, 16, 2, 4, 4)
    with recording(gta) as maps: gta(x)
    G = maps['']['regions']
    torch.testing.assert_close(G.sum(1), torch.ones(1, 2, 4, 4))
    # a constant frame: every region's mean is that constant, whatever the assignment
    from nonlocal_book.ops.gta import region_transform
    xs = torch.full((1, 16, 2, 9), 2.5)
    _, xg = region_transform(torch.randn(1, 2, 2, 9), xs)
    torch.testing.assert_close(xg, torch.full((1, 16, 2, 2), 2.5), rtol=1e-5, atol=1e-5)


def test_gta_identity_at_init_and_m_init():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(GTABlock(32, T=4)(x), x)
    m = GTABlock(32, T=8, groups=8).temporal.m_p
    assert m.shape == (8, 8, 8, 8)
    assert abs(m.std().item() - (8 * 8) ** -0.5) < 0.02                      # N(0, 1/(GT))
    mi = GTABlock(32, T=4, m_init='identity').temporal.m_p
    torch.testing.assert_close(mi[2, 2], torch.eye(4)); torch.testing.assert_close(mi[2, 3], torch.zeros(4, 4))


def test_identity_at_init_without_norm():
    # norm=False zero-initialises W^O's bias as well as its weight (it used to leave the bias live in the spatial and
    # temporal blocks, so DNL and GTA without BN did not start as the identity)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 3, 3)
    with torch.no_grad():
        for blk in (SpatialAttention(8, norm=False), TemporalAttention(8, norm=False), DNLBlock(8, norm=False),
                    DNLBlock(8, pos_enc='sine', norm=False), GTABlock(8, T=4, groups=2, norm=False)):
            assert torch.equal(blk(x), x), type(blk).__name__

def test_gta_errors():
    blk = GTABlock(32, T=4)
    for T in (1, 3, 8):
        with pytest.raises(ValueError, match='built for T=4 frames'): blk(torch.randn(1, 32, T, 4, 4))
    with pytest.raises(ValueError, match='image batch'): blk(torch.randn(1, 32, 4, 4))
    with pytest.raises(ValueError, match='must divide'): GTABlock(32, T=4, groups=3)
    with pytest.raises(ValueError, match='needs pixel=True'): GTABlock(32, T=4, pixel=False, region=False)
    with pytest.raises(ValueError, match='region_norm'): GTABlock(32, T=4, region_norm='l1')
    with pytest.raises(ValueError, match='regions >= 2'): GTABlock(32, T=4, regions=1)
    with pytest.raises(ValueError, match='must divide'): gta_mix(torch.randn(3, 3, 2, 2), torch.randn(1, 4, 2, 1))
    assert GTABlock(8, T=1, groups=2)(torch.randn(2, 8, 5, 5)).shape == (2, 8, 5, 5)   # built for T=1: images work


# ---------------------------------------------------------------- temporal order
PERMS = st.permutations(list(range(5))).filter(lambda p: p != list(range(5)))


def _gap(block, x, perm):
    perm = torch.tensor(perm)
    with torch.no_grad(): return (block(x[:, :, perm]) - block(x)[:, :, perm]).abs().max().item()


@settings(max_examples=10, deadline=None)
@given(perm=PERMS, seed=st.integers(0, 1000))
def test_nl_and_dnl_are_time_equivariant(perm, seed):
    torch.manual_seed(seed)
    x = torch.randn(2, 8, 5, 3, 4)
    for block in (NLBlock(8), DNLBlock(8), DNLBlock(8, spatial=False), GTABlock(8, T=5, groups=2, m_init='identity')):
        assert _gap(switch_on(block), x, perm) < 1e-5


@settings(max_examples=10, deadline=None)
@given(perm=PERMS, seed=st.integers(0, 1000))
def test_gta_and_tape_are_not_time_equivariant(perm, seed):
    torch.manual_seed(seed)
    x = torch.randn(2, 8, 5, 3, 4)
    for block in (GTABlock(8, T=5, groups=2), GTABlock(8, T=5, groups=2, region=False),
                  GTABlock(8, T=5, groups=2, pixel=False), DNLBlock(8, pos_enc='sine')):
        assert _gap(switch_on(block), x, perm) > 1e-3, type(block).__name__


def test_pooled_features_cannot_tell_a_clip_from_its_reverse_under_nl_and_dnl():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 4, 4, 4)
    pool = lambda b, z: b(z).mean((2, 3, 4))
    with torch.no_grad():
        for b in (NLBlock(16), DNLBlock(16)):
            b = switch_on(b)
            torch.testing.assert_close(pool(b, x), pool(b, x.flip(2)), rtol=1e-5, atol=1e-5)
        b = switch_on(GTABlock(16, T=4, groups=4))
        assert (pool(b, x) - pool(b, x.flip(2))).abs().max() > 1e-2


# ---------------------------------------------------------------- cost
@pytest.mark.parametrize('C,T,H,W', [(32, 4, 5, 5), (64, 8, 7, 6), (32, 2, 3, 9)])
def test_mac_formulas_equal_measured(C, T, H, W):
    x = torch.randn(1, C, T, H, W)
    for kw in ({}, {'region': False}, {'pixel': False}, {'spatial': False}, {'regions': 3, 'groups': 4}):
        assert count_macs(GTABlock(C, T=T, **kw), x) == gta_macs(C, T, H, W, **kw), kw
    assert count_macs(DNLBlock(C), x) == dnl_macs(C, T, H, W)
    for p in (1, 3, (1, 2)):
        assert count_macs(DNLBlock(C, kv_pool=p), x) == dnl_macs(C, T, H, W, kv_pool=p)
        assert count_macs(GTABlock(C, T=T, kv_pool=p), x) == gta_macs(C, T, H, W, kv_pool=p)
    assert count_macs(DNLBlock(C, spatial=False), x) == dnl_macs(C, T, H, W, spatial=False)
    assert count_macs(DNLBlock(C, pos_enc='sine'), x) == dnl_macs(C, T, H, W)


def test_parameter_budget():
    C = 128
    assert count_params(DNLBlock(C)) == 2 * C * C + 4 * C                 # = NL's 2C² (+ BN instead of biases)
    assert count_params(GTABlock(C, T=8)) == 2 * C * C + (C // 8) * C + 2 * 8 ** 4 + 4 * C


def test_registry_variants():
    assert type(build_block('gta', 32)).__qualname__ == 'GTABlock'
    assert build_block('gta_pixel', 32).temporal.region is False
    assert build_block('gta_region', 32).temporal.pixel is False
    assert build_block('tape', 8).temporal.pos_enc == 'sine'
    assert build_block('dnl', 8).temporal.pos_enc is None


@pytest.mark.parametrize('name', ['dnl', 'tape', 'gta', 'gta_region'])
def test_bfloat16_autocast_and_weights(name):
    "Under CPU autocast to bfloat16 the blocks run, stay finite and stay close to float32."
    torch.manual_seed(0)
    blk = switch_on(build_block(name, 32))
    x = torch.randn(2, 32, 4, 4, 4)
    with torch.no_grad():
        ref = blk(x)
        with torch.autocast('cpu', dtype=torch.bfloat16): y = blk(x)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_spatial_sdpa_is_the_default_equal_and_fused():
    "SpatialAttention's 'auto' backend is SDPA on 4-D contiguous tokens (the CPU flash kernel), equal to forming the weights."
    from torch.profiler import profile
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, 5, 6, **F64)
    for p in (1, 2):
        ein = switch_on(SpatialAttention(16, kv_pool=p, backend='einsum')).double()
        fused = SpatialAttention(16, kv_pool=p).double(); fused.load_state_dict(ein.state_dict()); fused.eval()
        assert fused.backend == 'sdpa' and TemporalAttention(16).backend == 'einsum'
        with torch.no_grad(): torch.testing.assert_close(fused(x), ein(x))
    q, k = torch.randn(2, 8, 3, 5, 6), torch.randn(2, 8, 3, 3, 3)
    torch.testing.assert_close(spatial_attend(q, k, k, backend='sdpa'), spatial_attend(q, k, k), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(temporal_attend(q, q, q, backend='sdpa'), temporal_attend(q, q, q), rtol=1e-5, atol=1e-5)
    with profile() as prof: spatial_attend(q, k, k, backend='sdpa')
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in {e.key for e in prof.key_averages()}
    with recording(fused) as maps: fused(x)
    assert maps['']['attn'].shape == (2, 3, 30, 9)                        # recording forms the weights
    with pytest.raises(ValueError, match='unknown backend'): SpatialAttention(8, backend='flash')
