"""CGD (He et al. 2019): sweeps and fuzzing beyond the chapter's lesson cells (nbs/04_cgd.ipynb)."""
import math
import pytest
import torch
from torch import nn
from einops import rearrange, reduce
from hypothesis import given, settings, strategies as st, HealthCheck

from nonlocal_book.core import count_macs, count_params, build_block, list_operators
from nonlocal_book.results.official import OfficialCGD
from nonlocal_book.ops.cgd import (VARIANTS, POOLS, DIMS, TEMPORAL, RESNET50_WIDTHS, CGDBlock, CGDBatchNorm, cgd_literal,
                                   cgd_dense, cgd_compact, cgd_pool, cgd_z, cgd_levels, cgd_variant_literal, cgd_apply,
                                   cgd_bn_fold, cgd_macs, cgd_resnet_params, cgd_param_groups)

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def randomise(block, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters(): p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return block


def fitted_bn(bn, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.weight.shape, generator=g)); bn.bias.copy_(torch.randn(bn.bias.shape, generator=g))
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    return bn.eval()


# ---- Eq. 1 -> Eq. 10 ---------------------------------------------------------------------------------------------

@FUZZ
@given(N=st.integers(1, 5), M=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_eq1_literal_dense_compact_agree(N, M, seed):
    g = torch.Generator().manual_seed(seed)
    X, w = torch.randn(N, M, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    lit = cgd_literal(X, w)
    torch.testing.assert_close(cgd_dense(X, w), lit, rtol=1e-9, atol=1e-9)
    mean = cgd_pool(X, 'avg')
    torch.testing.assert_close(cgd_compact(mean, mean, w * M * M), lit, rtol=1e-9, atol=1e-9)   # Eq. 8: w' = (WH)² w
    torch.testing.assert_close(cgd_z(X[None, None], 'v1', [w]) * M * M, lit[None], rtol=1e-9, atol=1e-9)


def test_literal_takes_any_psi_and_differs_from_compact_for_non_products():
    torch.manual_seed(0)
    X, w = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    mean = cgd_pool(X, 'avg')
    compact = cgd_compact(mean, mean, w * 16)
    assert not torch.allclose(cgd_literal(X, w, psi=lambda a, b: a - b), compact)
    assert torch.allclose(cgd_literal(X, w, psi=lambda a, b: 2 * a * b), 2 * compact)


@FUZZ
@given(variant=st.sampled_from(list(VARIANTS)), T=st.integers(1, 3), N=st.integers(1, 5), M=st.integers(1, 6),
       bias=st.booleans(), seed=st.integers(0, 10**6))
def test_every_variant_literal_equals_compact(variant, T, N, M, bias, seed):
    g = torch.Generator().manual_seed(seed)
    Xd = torch.randn(2, T, N, M, generator=g, dtype=torch.float64)
    L = cgd_levels(variant)
    ws = [torch.randn(N, generator=g, dtype=torch.float64) for _ in range(L)]
    bs = [torch.randn(N, generator=g, dtype=torch.float64) for _ in range(L)] if bias else None
    fast = cgd_z(Xd, variant, ws, bs)
    for b in range(2):
        torch.testing.assert_close(fast[b], cgd_variant_literal(Xd[b], variant, ws, bs), rtol=1e-9, atol=1e-9)


def test_pools_and_softmax_axis():
    X = torch.tensor([[[1.0, 3.0], [0.0, -2.0], [5.0, 5.0]]])
    torch.testing.assert_close(cgd_pool(X, 'avg'), torch.tensor([[2.0, -1.0, 5.0]]))
    torch.testing.assert_close(cgd_pool(X, 'max'), torch.tensor([[3.0, 0.0, 5.0]]))
    torch.testing.assert_close(cgd_pool(X, 'softmax_avg').sum(-1), torch.ones(1))          # softmax over the N entries
    torch.testing.assert_close(cgd_pool(X, 'softmax_max'), torch.softmax(torch.tensor([[3.0, 0.0, 5.0]]), -1))
    with pytest.raises(ValueError, match='unknown sub-descriptor'): cgd_pool(X, 'median')


def test_levels_and_table2():
    assert [cgd_levels(v) for v in VARIANTS] == [1] * 7 + [3] * 3
    assert VARIANTS['v10'] == ('v3', 'v6') and VARIANTS['v3'] == ('softmax_avg', 'avg') and VARIANTS['v6'] == ('softmax_avg', 'max')


def test_v10_is_the_official_cascade_written_out():
    "The official AttentionLayer, re-derived by hand: att0 = v3 gate, att1 = v6 gate, out = x (1 + tanh(att0 att1ᵀ w2 + b2))."
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 5)
    blk = randomise(CGDBlock(8))
    (w0, w1, w2), (b0, b1, b2) = list(blk.weights), list(blk.biases)
    avg, mx = x.mean((2, 3)), x.amax((2, 3))
    sm = torch.softmax(avg, 1)
    outer = lambda a, b: a[:, :, None] * b[:, None, :]                        # (B, C, C), the code's matmul(g, fᵀ)
    att0 = torch.tanh(outer(sm, avg) @ w0 + b0)
    att1 = torch.tanh(outer(sm, mx) @ w1 + b1)
    att2 = torch.tanh(outer(att0, att1) @ w2 + b2)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), x * (1 + att2[:, :, None, None]), rtol=1e-5, atol=1e-6)


# ---- the block ---------------------------------------------------------------------------------------------------

def configs():
    for variant in VARIANTS:
        for temporal in TEMPORAL:
            for dim in DIMS:
                yield variant, temporal, dim


@pytest.mark.parametrize('variant,temporal,dim', list(configs()))
def test_identity_start_and_shapes(variant, temporal, dim):
    torch.manual_seed(0)
    T, H, W = 3, 5, 6
    kw = dict(variant=variant, temporal=temporal, dim=dim, num_frames=T if temporal == 'concat' else None,
              map_size={'channel': None, 'height': H, 'width': W}[dim])
    clip = torch.randn(2, 4, T, H, W)
    with torch.no_grad():
        assert torch.equal(CGDBlock(4, **kw)(clip), clip)
        blk = randomise(CGDBlock(4, **kw))
        y = blk(clip)
    assert y.shape == clip.shape and not torch.allclose(y, clip)
    if temporal != 'concat':                                                   # images: T = 1
        with torch.no_grad(): assert blk(clip[:, :, 0]).shape == clip[:, :, 0].shape


@pytest.mark.parametrize('variant', ['v8', 'v9', 'v10'])
def test_all_zero_cascade_is_a_dead_start_and_identity_init_is_not(variant):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4, 4)
    def weight_grads(init):
        blk = CGDBlock(6, variant=variant, init=init)
        y = blk(x); (y * torch.randn_like(y)).sum().backward()
        return [p.grad.abs().max().item() for p in blk.weights]
    assert weight_grads('zeros') == [0.0, 0.0, 0.0]
    assert weight_grads('identity')[-1] > 0
    assert all(g > 0 for g in weight_grads('xavier'))


def test_xavier_init_matches_the_official_bound():
    torch.manual_seed(0)
    blk = CGDBlock(64, init='xavier')
    bound = math.sqrt(6 / 65)
    for p in blk.weights:
        assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound and p.std() > 0.3 * bound
    assert all(torch.equal(b, torch.zeros(64)) for b in blk.biases)
    ident = CGDBlock(64)
    assert torch.equal(ident.weights[-1], torch.zeros(64)) and ident.weights[0].abs().max() > 0


@pytest.mark.parametrize('variant', ['v1', 'v3', 'v6', 'v7'])
@pytest.mark.parametrize('T', [2, 5])
def test_eq12_sum_is_T_times_frame_mean_on_a_static_clip(variant, T):
    torch.manual_seed(T)
    frame = torch.randn(2, 6, 1, 4, 4)
    clip = frame.expand(2, 6, T, 4, 4)
    s, m = CGDBlock(6, variant=variant, bias=False), CGDBlock(6, variant=variant, temporal='mean', bias=False)
    randomise(s); m.load_state_dict(s.state_dict())
    with torch.no_grad(): torch.testing.assert_close(s.descriptor(clip), T * m.descriptor(clip), rtol=1e-5, atol=1e-5)


def test_temporal_forms_differ_on_moving_clips_and_mean_broadcasts_one_gate():
    torch.manual_seed(0)
    clip = torch.randn(2, 6, 4, 5, 5)
    blocks = {t: randomise(CGDBlock(6, variant='v1', temporal=t, num_frames=4 if t == 'concat' else None)) for t in TEMPORAL}
    with torch.no_grad():
        gates = {t: b.gate(clip) for t, b in blocks.items()}
    assert gates['sum'].shape == gates['mean'].shape == (2, 6, 1, 1, 1)     # one gate for every frame
    assert gates['concat'].shape == gates['frame'].shape == (2, 6, 4, 1, 1)  # one gate per frame
    assert not torch.allclose(gates['sum'], gates['mean'])
    mean_blk = blocks['mean']
    with torch.no_grad():                                                     # 'mean' = the image block on the frame average
        img_gate = CGDBlock(6, variant='v1')
        img_gate.load_state_dict(mean_blk.state_dict())
        torch.testing.assert_close(gates['mean'][:, :, 0], img_gate.gate(clip.mean(2))[:, :, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_frame_form_is_the_image_block_on_each_frame(variant):
    torch.manual_seed(0)
    clip = torch.randn(2, 6, 3, 4, 5)
    fr = randomise(CGDBlock(6, variant=variant, temporal='frame'))
    img = CGDBlock(6, variant=variant); img.load_state_dict(fr.state_dict())
    with torch.no_grad():
        y = fr(clip)
        for t in range(3): torch.testing.assert_close(y[:, :, t], img(clip[:, :, t]), rtol=1e-5, atol=1e-6)


def test_frame_terms_sum_to_eq12():
    torch.manual_seed(0)
    clip = torch.randn(2, 6, 3, 4, 5)
    fr = randomise(CGDBlock(6, variant='v3', temporal='frame', bias=False))
    sm = CGDBlock(6, variant='v3', temporal='sum', bias=False); sm.load_state_dict(fr.state_dict())
    with torch.no_grad():
        per_frame = rearrange(fr.descriptor(clip), 'b (t n) -> b t n', t=3)
        torch.testing.assert_close(per_frame.sum(1), sm.descriptor(clip), rtol=1e-5, atol=1e-6)


def test_table3_video_macs_reconciliation():
    frames = (16,) * 3 + (8,) * 13
    counted = sum(count_macs(CGDBlock(c, temporal='frame'), torch.randn(1, c, T, 2, 2)) for c, T in zip(RESNET50_WIDTHS, frames))
    assert counted == 95232                                             # Table 3: +0.095M


def test_height_and_width_gates_multiply_rows_and_columns():
    torch.manual_seed(0)
    clip = torch.randn(2, 3, 4, 5, 6)
    hb = randomise(CGDBlock(3, variant='v4', dim='height', map_size=5))
    wb = randomise(CGDBlock(3, variant='v4', dim='width', map_size=6), seed=1)
    with torch.no_grad():
        gh, gw = hb.gate(clip), wb.gate(clip)
        assert gh.shape == (2, 1, 1, 5, 1) and gw.shape == (2, 1, 1, 1, 6)
        torch.testing.assert_close(hb(clip), clip * (1 + gh))
        # a row's descriptor pools over its C·W values: permuting columns leaves the height gate unchanged
        torch.testing.assert_close(hb.gate(clip[..., torch.randperm(6)]), gh, rtol=1e-5, atol=1e-6)


def test_channel_gate_is_invariant_to_spatial_and_temporal_permutations():
    torch.manual_seed(0)
    clip = torch.randn(2, 6, 4, 5, 5)
    for temporal in ('sum', 'mean'):
        blk = randomise(CGDBlock(6, temporal=temporal))
        with torch.no_grad():
            g = blk.gate(clip)
            shuffled = clip[:, :, torch.randperm(4)][..., torch.randperm(5), :][..., torch.randperm(5)]
            torch.testing.assert_close(blk.gate(shuffled), g, rtol=1e-5, atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match='unknown CGD variant'): CGDBlock(8, variant='v11')
    with pytest.raises(ValueError, match='unknown dim'): CGDBlock(8, dim='depth')
    with pytest.raises(ValueError, match='unknown temporal'): CGDBlock(8, temporal='max')
    with pytest.raises(ValueError, match='unknown init'): CGDBlock(8, init='ones')
    with pytest.raises(ValueError, match='num_frames'): CGDBlock(8, temporal='concat')
    with pytest.raises(ValueError, match='map_size'): CGDBlock(8, dim='width')
    with pytest.raises(ValueError, match='channels'): CGDBlock(8)(torch.randn(1, 7, 2, 4, 4))
    with pytest.raises(ValueError, match='num_frames=3'): CGDBlock(8, temporal='concat', num_frames=3)(torch.randn(1, 8, 2, 4, 4))
    with pytest.raises(ValueError, match='W=4'): CGDBlock(8, dim='width', map_size=4)(torch.randn(1, 8, 2, 4, 5))
    with pytest.raises(ValueError, match='needs 3 weight vectors'): cgd_z(torch.randn(1, 1, 4, 4), 'v10', [torch.randn(4)])


def test_low_precision_and_extremes():
    torch.manual_seed(0)
    blk = randomise(CGDBlock(8))
    x = torch.randn(2, 8, 3, 4, 4)
    with torch.no_grad():
        y16 = blk.to(torch.bfloat16)(x.to(torch.bfloat16))
        assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
        big = blk.float()(x * 1e4)                                    # tanh saturates: gate in [0, 2], output finite
        assert torch.isfinite(big).all() and (big.abs() <= 2 * (x * 1e4).abs() + 1e-3).all()


@pytest.mark.parametrize('dim,temporal', [('height', 'sum'), ('width', 'mean'), ('channel', 'concat')])
def test_gradcheck_unregistered_configurations(dim, temporal):
    torch.manual_seed(0)
    blk = randomise(CGDBlock(3, dim=dim, temporal=temporal, num_frames=2 if temporal == 'concat' else None,
                             map_size=4 if dim != 'channel' else None).double())
    x = torch.randn(1, 3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blk, (x,), eps=1e-6, atol=1e-4)


def test_eq6_first_term_at_zero_weights_is_the_identity_gradient():
    x = torch.randn(2, 5, 3, 4, 4, requires_grad=True)
    G = torch.randn_like(x)
    (CGDBlock(5, init='zeros')(x) * G).sum().backward()
    assert torch.equal(x.grad, G)


def test_cgd_apply_is_eq11():
    x, z = torch.randn(3, 4), torch.randn(3, 1)
    torch.testing.assert_close(cgd_apply(x, z), x + torch.tanh(z) * x)


# ---- fused inference -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('variant', list(VARIANTS))
@pytest.mark.parametrize('temporal', list(TEMPORAL))
def test_fused_bn_equals_cgd_then_bn(variant, temporal):
    torch.manual_seed(0)
    cgd = randomise(CGDBlock(6, variant=variant, temporal=temporal, num_frames=3 if temporal == 'concat' else None)).eval()
    bn = fitted_bn(nn.BatchNorm3d(6))
    x = torch.randn(2, 6, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(CGDBatchNorm(cgd, bn).eval()(x), bn(cgd(x)), rtol=1e-5, atol=1e-5)


def test_fused_bn_images_float64_no_affine_and_errors():
    torch.manual_seed(0)
    cgd = randomise(CGDBlock(6).double()).eval()
    for bn in (fitted_bn(nn.BatchNorm2d(6).double()), fitted_bn(nn.BatchNorm2d(6, affine=False).double())):
        x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(CGDBatchNorm(cgd, bn).eval()(x), bn(cgd(x)), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match='running statistics'):
        cgd_bn_fold(torch.zeros(1, 6, 1, 1, 1), nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(ValueError, match='must match'): CGDBatchNorm(CGDBlock(6), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match='only a channel CGD'): CGDBatchNorm(CGDBlock(6, dim='height', map_size=5), nn.BatchNorm2d(6))


def test_fused_module_trains_like_the_pair():
    torch.manual_seed(0)
    cgd, bn = randomise(CGDBlock(6)), nn.BatchNorm2d(6)
    pair = CGDBatchNorm(cgd, bn).train()
    x = torch.randn(4, 6, 5, 5)
    y = pair(x)
    y.sum().backward()
    assert all(p.grad is not None for p in pair.parameters())


# ---- cost and parameters -----------------------------------------------------------------------------------------

def test_dense_and_compact_macs_on_meta():
    from torch.utils.flop_counter import FlopCounterMode
    for C, HW in ((8, 9), (64, 196), (256, 3136)):
        X, w = torch.empty(C, HW, device='meta'), torch.empty(C, device='meta')
        with FlopCounterMode(display=False) as c: cgd_dense(X, w)
        assert c.get_total_flops() // 2 == 2 * C * C * HW * HW
        with FlopCounterMode(display=False) as c: cgd_compact(X[:, 0], X[:, 0], w)
        assert c.get_total_flops() // 2 == C


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_block_macs_formula(variant):
    for T, temporal in ((1, 'sum'), (3, 'sum'), (3, 'mean'), (3, 'concat'), (3, 'frame'), (1, 'frame')):
        blk = CGDBlock(16, variant=variant, temporal=temporal, num_frames=T if temporal == 'concat' else None)
        assert 2 * count_macs(blk, torch.randn(1, 16, T, 5, 5)) == cgd_macs(16, variant, T, temporal)


def test_resnet50_parameter_budget():
    assert sum(RESNET50_WIDTHS) == 3776 and len(RESNET50_WIDTHS) == 16
    assert cgd_resnet_params() == 6 * 3776 == 22656                     # the paper's +0.02M (Tables 3, 6, 11)
    assert cgd_resnet_params(variant='v1', bias=False) == 3776
    assert cgd_resnet_params(temporal='mean') == cgd_resnet_params(temporal='sum')
    assert cgd_resnet_params(temporal='concat', num_frames=8) == 8 * 22656
    for variant in VARIANTS:
        for bias in (False, True):
            assert cgd_resnet_params(variant=variant, bias=bias) == cgd_levels(variant) * (1 + bias) * 3776
    assert sum(cgd_macs(c) for c in RESNET50_WIDTHS) == 22656           # Table 6: +0.023M MACs


def test_param_groups_for_weight_decay():
    model = nn.Sequential(nn.Conv3d(3, 8, 1), CGDBlock(8), nn.Conv3d(8, 8, 1), CGDBlock(8, variant='v1'))
    rest, cgd = cgd_param_groups(model, weight_decay=1e-4, cgd_weight_decay=4e-5)
    assert sum(p.numel() for p in cgd['params']) == 6 * 8 + 2 * 8 and cgd['weight_decay'] == 4e-5
    assert sum(p.numel() for p in rest['params']) + sum(p.numel() for p in cgd['params']) == count_params(model)
    torch.optim.SGD(cgd_param_groups(model), lr=0.1)                    # a valid optimiser spec


def test_registry_entries():
    names = set(list_operators())
    assert {'cgd', 'cgd_official', 'cgd_frame', 'cgd_ct', 'cgd_height', 'cgd_width'} | {f'cgd_{v}' for v in VARIANTS} <= names
    assert build_block('cgd', 32).variant == 'v10' and build_block('cgd', 32).temporal == 'sum'
    off = build_block('cgd_official', 32)
    assert off.temporal == 'mean' and all(p.abs().max() > 0 for p in off.weights)
    assert build_block('cgd_height', 4).map_size == 8 and build_block('cgd_ct', 4).num_frames == 4


# ---- issue 17: passes over the feature map, saved memory -----------------------------------------------------------

def _passes(fn, numel):
    "Names of the full-size ATen ops of fn(): the library's counter."
    from nonlocal_book.results.measure import full_size_passes
    return full_size_passes(fn, numel)


def _saved_bytes(fn, *args):
    "(fn(*args), bytes autograd keeps for backward): the library's meter."
    from nonlocal_book.results.measure import saved_bytes
    return saved_bytes(lambda: fn(*args))


@pytest.mark.parametrize('variant', ['v10', 'v8', 'v1', 'v6'])
@pytest.mark.parametrize('temporal', ['sum', 'mean', 'frame'])
def test_each_pool_runs_once_and_no_amax(variant, temporal):
    x = torch.randn(2, 16, 3, 5, 5, requires_grad=True)
    blk = randomise(CGDBlock(16, variant=variant, temporal=temporal))
    gy = torch.randn_like(x)
    ops = _passes(lambda: torch.autograd.grad(blk(x), x, gy), x.numel() // 3)   # // 3: the frame mean of 'mean' is a third of x
    # the average pool is one 'sum' (its backward a broadcast view, no pass), the other 'sum' the gate's Σ X·∂L/∂X̂;
    # a 'mean' only for temporal='mean' (the frame average, before pooling)
    assert ops.count('sum') == 2 and ops.count('mean') == (1 if temporal == 'mean' else 0), ops
    assert 'amax' not in ops and ops.count('max') + ops.count('adaptive_max_pool3d') <= 1, ops


def test_v10_pass_count_equals_the_official_attention_layer():
    x = torch.randn(2, 32, 4, 7, 7, requires_grad=True)
    gy = torch.randn_like(x)
    for temporal in ('sum', 'frame'):
        blk = CGDBlock(32, temporal=temporal, init='xavier')
        ops = _passes(lambda: torch.autograd.grad(blk(x), x, gy), x.numel())
        off = OfficialCGD(blk)
        official = _passes(lambda: torch.autograd.grad(off(x), x, gy), x.numel())
        assert len(ops) == 9 and len(official) == 10, (temporal, ops, official)   # no pass for the average pool's backward


@pytest.mark.parametrize('temporal', ['sum', 'frame', 'mean'])
def test_saved_memory_is_the_input_only(temporal):
    x = torch.randn(2, 64, 4, 14, 14, requires_grad=True)
    _, saved = _saved_bytes(CGDBlock(64, temporal=temporal), x)
    assert x.nbytes <= saved < 1.1 * x.nbytes            # the per-frame clone made 'frame' save 2×


def test_max_pool_gradient_equals_amax_gradient_without_ties():
    torch.manual_seed(0)
    X = torch.randn(2, 3, 6, 10, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 3, 6, dtype=torch.float64)
    (ours,) = torch.autograd.grad(cgd_pool(X, 'max'), X, gy)
    (ref,) = torch.autograd.grad(X.amax(-1), X, gy)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_per_frame_z_without_sum_equals_one_call_per_frame(variant):
    torch.manual_seed(0)
    Xd = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    L = cgd_levels(variant)
    ws = [torch.randn(5, dtype=torch.float64) for _ in range(L)]
    bs = [torch.randn(5, dtype=torch.float64) for _ in range(L)]
    per_frame = cgd_z(Xd, variant, ws, bs, frame_sum=False)
    assert per_frame.shape == (2, 3, 5)
    for t in range(3):
        torch.testing.assert_close(per_frame[:, t], cgd_z(Xd[:, t:t + 1], variant, ws, bs))
