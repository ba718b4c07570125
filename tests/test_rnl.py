"""RNL chapter sweeps: region aggregation and relation functions against their literal forms (hypothesis), the block against
its stage-by-stage composition, flat-region numerics, the constructed-clip claim on other seeds, parameter and MAC counts."""
import pytest
import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from hypothesis import given, settings, strategies as st, HealthCheck

from nonlocal_book.core import count_macs, count_params, recording, get_operator, build_block
from nonlocal_book.ops.nl import NLBlock, nl_macs
from nonlocal_book.ops.rnl import (REGIONS, RELATIONS, region_kernel, region_literal, region_aggregate, RegionAggregation,
                                   rnl_literal, rnl_weights, rnl_attend, RNLBlock, AdditiveSE, SERNLBlock, rnl_params,
                                   rnl_macs, textured_objects, own_object_mass, map_distance)

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
odd = st.sampled_from([1, 3, 5])


# ---------------------------------------------------------------- Eq. 2–3: region aggregation
@FAST
@given(B=st.integers(1, 2), C=st.integers(1, 3), T=st.integers(1, 3), H=st.integers(1, 5), W=st.integers(1, 5),
       kT=odd, kH=odd, kW=odd, seed=st.integers(0, 10**6))
def test_region_aggregation_equals_literal(B, C, T, H, W, kT, kH, kW, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, W, generator=g, dtype=torch.float64)
    u = torch.randn(C, kT, kH, kW, generator=g, dtype=torch.float64)
    k = (kT, kH, kW)
    torch.testing.assert_close(region_aggregate(x, 'conv', k, u[:, None]), region_literal(x, k, u))
    torch.testing.assert_close(region_aggregate(x, 'avg', k), region_literal(x, k, torch.full_like(u, 1 / (kT * kH * kW))))
    torch.testing.assert_close(region_aggregate(x, 'max', k), region_literal(x, k, op='max'))


def test_region_borders_by_hand():
    "A single 1 in a corner: a 3×3×3 sum reaches it from the 8 positions whose neighbourhood contains the corner."
    x = torch.zeros(1, 1, 3, 3, 3, dtype=torch.float64); x[..., 0, 0, 0] = 1
    s = region_aggregate(x, 'conv', 3, torch.ones(1, 1, 3, 3, 3, dtype=torch.float64))
    assert s.sum() == 8 and s[..., :2, :2, :2].eq(1).all()
    torch.testing.assert_close(region_aggregate(x, 'avg', 3), s / 27)                 # padded zeros count
    assert region_aggregate(-x - 1, 'max', 3).max() == -1                              # −∞ padding never wins


def test_region_on_images_and_errors():
    x = torch.randn(2, 4, 1, 5, 5)                                                      # an image: T = 1 under a 3-frame region
    for region in REGIONS:
        assert RegionAggregation(4, region)(x).shape == x.shape
    for bad in ((3, 4, 4), (3, 3), 0, (3.5, 3, 3)):
        with pytest.raises(ValueError, match='odd'): region_kernel(bad)
    with pytest.raises(ValueError, match='depthwise weight'): region_aggregate(x, 'conv', 3, torch.ones(4, 1, 3, 3, 1))
    with pytest.raises(ValueError, match='unknown region'): RegionAggregation(4, 'median')


# ---------------------------------------------------------------- Eq. 4–7: relation functions
@FAST
@given(N=st.integers(1, 7), M=st.integers(1, 7), D=st.integers(1, 5), f=st.sampled_from(RELATIONS),
       scale=st.sampled_from([1.0, 0.25]), zero=st.booleans(), seed=st.integers(0, 10**6))
def test_relations_equal_literal(N, M, D, f, scale, zero, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, n, d, generator=g, dtype=torch.float64) for n, d in ((N, D), (M, D), (M, 3)))
    if zero: q[0, 0] = 0; k[1, -1] = 0
    torch.testing.assert_close(rnl_attend(q, k, v, f, scale), rnl_literal(q, k, v, f, scale))


def test_relation_normalisers():
    q, k = torch.randn(1, 5, 4, dtype=torch.float64), torch.randn(1, 9, 4, dtype=torch.float64)
    torch.testing.assert_close(rnl_weights(q, k, 'gaussian').sum(-1), torch.ones(1, 5, dtype=torch.float64))   # Σ_j f
    torch.testing.assert_close(rnl_weights(q, k, 'dot') * 9, q @ k.transpose(1, 2))                           # ÷ THW
    cos = F.cosine_similarity(q[0, :, None], k[0, None], dim=-1)
    torch.testing.assert_close(rnl_weights(q, k, 'cosine')[0] * 9, cos.relu())                                # ReLU(cos) ÷ THW


@pytest.mark.parametrize('f', RELATIONS)
def test_flat_regions_stay_finite_with_gradients(f):
    "All-zero region summaries (and a zero input through the whole block): finite output and finite gradients."
    q = torch.zeros(1, 6, 4, dtype=torch.float64, requires_grad=True)
    y = rnl_attend(q, q, torch.randn(1, 6, 3, dtype=torch.float64), f)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(q.grad).all()
    blk = RNLBlock(8, f=f).double()
    with torch.no_grad():
        blk.bn.weight.fill_(1); blk.g.bias.zero_()                                      # W_g x = 0: every region is flat
    x = torch.zeros(2, 8, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    blk(x).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in blk.parameters() if p.grad is not None) and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- Eq. 8–9: the block
def literal_block(blk, x):
    Wg = blk.g.weight[:, :, 0, 0, 0]
    value = einsum(Wg, x, 'o c, b c t h w -> b o t h w') + blk.g.bias[None, :, None, None, None]
    K = blk.region.kernel
    if blk.region.region == 'max': regions = region_literal(value, K, op='max')
    elif blk.region.region == 'avg': regions = region_literal(value, K, torch.full((blk.inner, *K), 1 / (K[0] * K[1] * K[2]), dtype=x.dtype))
    else: regions = region_literal(value, K, blk.region.weight[:, 0])
    tok = lambda t: rearrange(t, 'b c t h w -> b (t h w) c')
    y = rnl_literal(tok(regions), tok(regions), tok(value), blk.f, blk.scale)
    y = rearrange(y, 'b (t h w) c -> b c t h w', t=x.shape[2], h=x.shape[3], w=x.shape[4])
    return x + blk.bn(blk.out(y))


@pytest.mark.parametrize('f', RELATIONS)
@pytest.mark.parametrize('region', REGIONS)
def test_block_equals_literal_composition(f, region):
    torch.manual_seed(1)
    blk = RNLBlock(4, f=f, region=region, kernel=(1, 3, 3), scale=0.7).double().eval()
    with torch.no_grad():
        blk.bn.weight.uniform_(0.5, 1.5); blk.bn.running_mean.uniform_(-1, 1)
        x = torch.randn(2, 4, 2, 3, 3, dtype=torch.float64)
        torch.testing.assert_close(blk(x), literal_block(blk, x))


@pytest.mark.parametrize('f', RELATIONS)
@pytest.mark.parametrize('region', REGIONS)
def test_block_identity_at_init_and_image_input(f, region):
    blk = RNLBlock(8, f=f, region=region)
    x, img = torch.randn(2, 8, 3, 6, 5), torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        assert torch.equal(blk(x), x) and torch.equal(blk(img), img)


def test_block_records_one_map_per_query_and_subsamples_like_nl():
    blk = RNLBlock(8, subsample=True).eval()
    with torch.no_grad(): blk.bn.weight.fill_(1)
    with recording(blk) as maps: blk(torch.randn(1, 8, 2, 5, 7))
    assert maps['']['attn'].shape == (1, 2, 5, 7, 2, 3, 4)
    torch.testing.assert_close(maps['']['attn'].sum((-3, -2, -1)), torch.ones(1, 2, 5, 7))


def test_block_errors():
    blk = RNLBlock(8)
    with pytest.raises(ValueError, match='channels'): blk(torch.randn(1, 6, 2, 5, 5))
    with pytest.raises(ValueError): blk(torch.randn(8, 5))
    with pytest.raises(ValueError, match='unknown relation'): RNLBlock(8, f='embedded_gaussian')
    with pytest.raises(ValueError, match='odd'): RNLBlock(8, kernel=2)


# ---------------------------------------------------------------- Eq. 10–12 and the chain
@pytest.mark.parametrize('squeeze', ['mean', 'attention'])
def test_additive_se_equation(squeeze):
    torch.manual_seed(0)
    se = AdditiveSE(12, reduction=3, squeeze=squeeze).eval()
    x = torch.randn(3, 12, 2, 4, 5)
    with torch.no_grad():
        assert torch.equal(se(x), x)                                                   # W₂ = 0: identity at init
        se.fc2.weight.normal_(); se.bn.running_var.uniform_(0.5, 2)
        if squeeze == 'mean': s_ = x.mean((2, 3, 4))
        else:
            a = se.key(x).flatten(2).softmax(-1)                                       # (B, 1, THW)
            s_ = (x.flatten(2) * a).sum(-1)
        s = se.fc2(torch.relu(se.bn(se.fc1(s_))))
        torch.testing.assert_close(se(x), x + s[:, :, None, None, None])
    with pytest.raises(ValueError, match='unknown squeeze'): AdditiveSE(12, squeeze='max')


def test_chain_is_se_then_rnl():
    torch.manual_seed(0)
    chain = SERNLBlock(8, kernel=(1, 3, 3), f='cosine').eval()
    assert chain.rnl.f == 'cosine' and chain.rnl.region.kernel == (1, 3, 3)
    with torch.no_grad():
        chain.se.fc2.weight.normal_(); chain.rnl.bn.weight.fill_(1)
        x = torch.randn(2, 8, 3, 5, 5)
        torch.testing.assert_close(chain(x), chain.rnl(chain.se(x)))
        assert not torch.allclose(chain(x), chain.rnl(x))


# ---------------------------------------------------------------- the claim, on other seeds
@pytest.mark.parametrize('seed', [1, 2])
def test_nl_maps_ignore_the_object_rnl_maps_follow_it(seed):
    clip, ma, mb = textured_objects(seed=seed)
    nl = NLBlock(2, mode='gaussian', scale=40.0, subsample=False).eval()
    rnl = RNLBlock(2, inner=2, region='avg', scale=40.0).eval()
    with torch.no_grad(): rnl.g.weight.copy_(torch.eye(2)[:, :, None, None, None]); rnl.g.bias.zero_()
    with recording(nl) as m1, recording(rnl) as m2: nl(clip); rnl(clip)
    na, ra = m1['']['attn'][0], m2['']['attn'][0]
    red = clip[0, 0] > 0
    # interior red queries of A and of B
    a = next((1, h, w) for h in range(5, 8) for w in range(5, 10) if ma[1, h, w] and red[1, h, w])
    b = next((1, h, w) for h in range(16, 19) for w in range(15, 19) if mb[1, h, w] and red[1, h, w])
    assert map_distance(na[a], na[b]) < 1e-6 < 0.8 < map_distance(ra[a], ra[b])
    nl_mass, rnl_mass = own_object_mass(na, [ma, mb]).mean(), own_object_mass(ra, [ma, mb]).mean()
    assert nl_mass < 0.7 < 0.9 < rnl_mass


def test_learned_nl_embeddings_cannot_separate_equal_pixels():
    "Any 1×1×1 θ, φ: two positions with the same feature get the same row of NL weights; RNL's rows differ."
    torch.manual_seed(0)
    x = torch.randn(1, 6, 3, 6, 6)
    x[:, :, 2, 5, 5] = x[:, :, 0, 0, 0]
    nl, rnl = NLBlock(6).eval(), RNLBlock(6, kernel=(3, 3, 3)).eval()
    with recording(nl) as m1, recording(rnl) as m2: nl(x); rnl(x)
    torch.testing.assert_close(m1['']['attn'][0, 0, 0, 0], m1['']['attn'][0, 2, 5, 5])
    assert (m2['']['attn'][0, 0, 0, 0] - m2['']['attn'][0, 2, 5, 5]).abs().max() > 1e-3


# ---------------------------------------------------------------- counts
@pytest.mark.parametrize('C', [8, 64, 96])
@pytest.mark.parametrize('kernel', [(1, 1, 1), (3, 3, 3), (3, 7, 7), (7, 9, 9)])
@pytest.mark.parametrize('region', REGIONS)
def test_param_formula_matches_module(C, kernel, region):
    assert rnl_params(C, kernel, region) == count_params(RNLBlock(C, region=region, kernel=kernel))


class MaskedGroupedConv3d(torch.nn.Module):
    "The official construction (re-stated): grouped conv3d, groups = C/32, dense weight masked to one input per output."
    def __init__(self, channels, kernel):
        super().__init__()
        self.groups = max(channels // 32, 1); width = channels // self.groups
        mask = torch.zeros(channels, width, *kernel)
        for o in range(channels): mask[o, o % width] = 1
        self.mask = torch.nn.Parameter(mask, requires_grad=False)
        self.weight = torch.nn.Parameter(torch.randn(channels, width, *kernel) * mask)
        self.pad = tuple(k // 2 for k in kernel)
    def forward(self, x): return F.conv3d(x, self.weight * self.mask, padding=self.pad, groups=self.groups)


@pytest.mark.parametrize('C, kernel', [(16, (3, 3, 3)), (64, (3, 7, 7)), (96, (1, 3, 5))])
def test_official_masked_conv_is_our_depthwise_conv_and_explains_the_count(C, kernel):
    m = MaskedGroupedConv3d(C, kernel)
    live = m.weight.detach()[torch.arange(C), torch.arange(C) % (C // m.groups)]
    x = torch.randn(1, C, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m(x), region_aggregate(x, 'conv', kernel, live[:, None]), rtol=1e-4, atol=1e-4)
    off = rnl_params(2 * C, kernel, official=True) - rnl_params(2 * C, kernel, 'avg', official=True)
    assert off == count_params(m)


def test_paper_table_counts():
    assert round(rnl_params(512, official=True) / 1e6, 2) == 2.67                    # Table II(c), channel-wise conv
    assert round(rnl_params(512, region='avg', official=True) / 1e6, 2) == 0.26      # average / max pooling
    five = 2 * rnl_params(512, (3, 7, 7), official=True) + 3 * rnl_params(1024, (3, 3, 3), official=True)
    assert abs(five / 1e6 - (35.48 - 24.33)) <= 0.01                                  # Table III, 5 RNL blocks
    assert rnl_params(512) - rnl_params(512, region='avg') == 256 * 147               # what a true depthwise region costs


@pytest.mark.parametrize('region', REGIONS)
@pytest.mark.parametrize('subsample', [False, True])
@pytest.mark.parametrize('shape', [(1, 8, 1, 5, 5), (2, 8, 3, 4, 7), (1, 8, 6, 9)])
def test_macs_formula_matches_measurement(region, subsample, shape):
    x = torch.randn(*shape)
    T, (H, W) = (shape[2] if len(shape) == 5 else 1), shape[-2:]
    blk = RNLBlock(8, region=region, subsample=subsample, kernel=(3, 5, 5))
    assert count_macs(blk, x) == shape[0] * rnl_macs(8, T, H, W, kernel=(3, 5, 5), region=region, subsample=subsample)


def test_macs_at_paper_sizes_on_meta():
    with torch.device('meta'):
        for C, S in ((512, 28), (1024, 14)):
            assert count_macs(RNLBlock(C), torch.empty(1, C, 8, S, S)) == rnl_macs(C, 8, S, S)
            assert count_macs(RNLBlock(C, subsample=True), torch.empty(1, C, 8, S, S)) < nl_macs(C, 8, S, S)
    assert round(2 * 8 * 28 * 28 * 512 * 256 / 1e9, 2) == 1.64                       # Table II(c)'s 1.65 G: W_g + W_z only


# ---------------------------------------------------------------- registry
def test_registered_variants():
    for name, cls in (('rnl', 'RNLBlock'), ('rnl_dot', 'RNLBlock'), ('rnl_cosine', 'RNLBlock'), ('rnl_avg', 'RNLBlock'),
                      ('rnl_max', 'RNLBlock'), ('se_add', 'AdditiveSE'), ('se_rnl', 'SERNLBlock'), ('cg_rnl', 'SERNLBlock')):
        assert type(build_block(name, 16)).__qualname__ == cls, name
    assert build_block('rnl_cosine', 16).f == 'cosine' and build_block('rnl_avg', 16).region.region == 'avg'
    assert build_block('cg_rnl', 16).se.squeeze == 'attention' and build_block('se_rnl', 16).se.squeeze == 'mean'
    assert get_operator('rnl').doc


# ---------------------------------------------------------------- F_θ init, layouts, SDPA
from nonlocal_book.ops.rnl import REGION_INITS, official_region_std
from torch.profiler import profile


def _kernels(fn):
    "Names of the aten ops `fn` runs (forward and backward)."
    with profile() as p: fn()
    return {e.key for e in p.key_averages()}


@pytest.mark.parametrize('channels,kernel', [(256, (3, 7, 7)), (512, (3, 3, 3)), (16, (1, 3, 3))])
def test_region_init_scales(channels, kernel):
    "'official': the std of xavier on the masked (C', min(32, C'), k) weight; 'pytorch': nn.Conv3d's depthwise default, 1/√(3K)."
    torch.manual_seed(0)
    K = kernel[0] * kernel[1] * kernel[2]
    w = min(32, channels)
    assert abs(official_region_std(channels, kernel) - (2 / ((w + channels) * K)) ** 0.5) < 1e-12
    std = {i: RegionAggregation(channels, kernel=kernel, init=i).weight.std().item() for i in REGION_INITS}
    assert abs(std['official'] / official_region_std(channels, kernel) - 1) < 0.1
    assert abs(std['pytorch'] * (3 * K) ** 0.5 - 1) < 0.1
    assert RNLBlock(2 * channels, kernel=kernel).region.init == 'official'
    with pytest.raises(ValueError, match='unknown region init'): RegionAggregation(channels, init='xavier')


def test_official_init_starts_near_uniform_attention():
    "At the official scale a query's weight on itself is ≈ 1/N at init; at PyTorch's default it is about half (C = 512, post-ReLU)."
    torch.manual_seed(1)
    x = torch.relu(torch.randn(1, 512, 2, 8, 8))
    own = {}
    for init in REGION_INITS:
        blk = RNLBlock(512, region_init=init).eval()
        with recording(blk) as maps, torch.no_grad(): blk(x)
        own[init] = rearrange(maps['']['attn'][0], 't h w u i j -> (t h w) (u i j)').diagonal().mean().item()
    assert own['official'] * 128 < 1.5 and own['pytorch'] > 0.3, own


def test_region_conv_channels_last_equals_ncdhw():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 5, 7, dtype=torch.float64)
    w = torch.randn(6, 1, 3, 3, 5, dtype=torch.float64)
    y = region_aggregate(x, 'conv', (3, 3, 5), w)
    torch.testing.assert_close(y, F.conv3d(x, w, padding=(1, 1, 2), groups=6))   # the layout changes, the sums do not


@pytest.mark.parametrize('subsample', [False, True])
def test_rnl_sdpa_equals_einsum_and_runs_the_fused_kernel(subsample):
    "Default 'auto' = SDPA for the Gaussian when not recording: same output and gradients as forming the weights; flash kernel, 4-D."
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, 5, 6, dtype=torch.float64)
    ein = RNLBlock(16, subsample=subsample, backend='einsum').double()
    with torch.no_grad(): ein.bn.weight.fill_(1.0)
    fused = RNLBlock(16, subsample=subsample).double(); fused.load_state_dict(ein.state_dict())
    assert fused.backend == 'sdpa' and RNLBlock(16, f='dot').backend == 'einsum'
    outs = []
    for blk in (ein, fused):
        xi = x.clone().requires_grad_()
        y = blk(xi); y.square().sum().backward()
        outs.append((y.detach(), xi.grad, blk.region.weight.grad))
    for a, b in zip(*outs): torch.testing.assert_close(a, b)
    fused.float()
    ops = _kernels(lambda: fused(x.float()))
    assert 'aten::_scaled_dot_product_flash_attention_for_cpu' in ops, ops
    with recording(fused) as maps: fused(x.float())
    assert maps['']['attn'].ndim == 7                                    # recording still forms (and keeps) the weights
    with pytest.raises(ValueError, match='Gaussian'): RNLBlock(16, f='cosine', backend='sdpa')
