"""BAT sweeps: blockwise == materialised Kronecker form over shapes, exact parameter / MAC formulas, clear errors."""
import pytest, torch
from nonlocal_book.core import count_params, count_macs
from nonlocal_book.ops.bat import (BATBlock, bat_literal, bilinear_transform, blockwise_transform, kron_identity,
                                   normalise, temporal_literal, temporal_transform, bat_params, bat_macs)


@pytest.mark.parametrize('H,W,sh,sw,k,T', [(6, 9, 3, 3, 2, 1), (8, 4, 2, 4, 4, 2), (7, 14, 7, 7, 1, 3), (12, 10, 4, 5, 2, 1)])
def test_blockwise_equals_materialised(H, W, sh, sw, k, T):
    g = torch.Generator().manual_seed(H * W)
    x = torch.randn(2, 4, T, H, W, generator=g, dtype=torch.float64)
    P = torch.rand(2, k, T, sh, sh, generator=g, dtype=torch.float64)
    Q = torch.rand(2, k, T, sw, sw, generator=g, dtype=torch.float64)
    Pf, Qf = kron_identity(P, H // sh), kron_identity(Q, W // sw)
    for columns in ('auto', 'block', 'kron'):
        torch.testing.assert_close(blockwise_transform(x, P, Q, columns), bat_literal(x, Pf, Qf))
    torch.testing.assert_close(bilinear_transform(x, Pf, Qf), bat_literal(x, Pf, Qf))


@pytest.mark.parametrize('H,W,sh,sw,k', [(6, 9, 3, 3, 2), (8, 4, 2, 4, 4), (14, 28, 7, 7, 4), (12, 10, 4, 5, 1)])
def test_column_steps_same_gradients(H, W, sh, sw, k):
    "The Kronecker column step and Figure 3's give the same gradients for x, P and Q (float64, a loss weighing each output)."
    g = torch.Generator().manual_seed(H + W)
    x = torch.randn(2, 4 * k, 2, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    P = torch.rand(2, k, 2, sh, sh, generator=g, dtype=torch.float64, requires_grad=True)
    Q = torch.rand(2, k, 2, sw, sw, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4 * k, 2, H, W, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((blockwise_transform(x, P, Q, c) * w).sum(), (x, P, Q)) for c in ('block', 'kron')]
    for a, b in zip(*grads): torch.testing.assert_close(a, b)


def test_block_column_steps_agree_and_are_counted():
    "A BATBlock gives the same output whichever column step it runs, and count_macs sees each step's own cost."
    torch.manual_seed(0)
    a, b = BATBlock(32, columns='block').double(), BATBlock(32, columns='kron').double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 32, 4, 14, 28, dtype=torch.float64)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
    macs = {c: count_macs(BATBlock(32, columns=c), x[:1].float()) for c in ('block', 'kron')}
    assert macs['kron'] - macs['block'] == 16 * (4 * 14 * 28) * (28 - 7)                   # C·N·(W − s_w)
    with pytest.raises(ValueError, match='unknown column step'): BATBlock(32, columns='fast')


def test_temporal_block_equals_literal():
    y = torch.randn(1, 4, 8, 2, 3, dtype=torch.float64)
    Tm = normalise(torch.randn(1, 2, 4, 4, dtype=torch.float64), -1, 'softmax')
    torch.testing.assert_close(temporal_transform(y, Tm), temporal_literal(y, kron_identity(Tm, 2)))


@pytest.mark.parametrize('opts', [{}, {'k': 0}, {'k': 2, 's': (7, 14)}, {'k': 8, 'kt': 4}, {'resize': 'downsample', 's': 5},
                                  {'resize': 'full', 's': (14, 28)}, {'reduced': 8, 'r': 4}, {'columns': 'block'}, {'columns': 'kron'}])
def test_param_and_mac_formulas(opts):
    b = BATBlock(32, **opts)
    assert count_params(b) == bat_params(32, **{k: v for k, v in opts.items() if k not in ('resize', 'columns')})
    assert count_macs(b, torch.randn(1, 32, 4, 14, 28)) == bat_macs(32, 4, 14, 28, **opts)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="resize='downsample'"): BATBlock(16)(torch.randn(1, 16, 15, 14))
    with pytest.raises(ValueError, match='build with s=\\(28, 28\\)'): BATBlock(16, s=(14, 14), resize='full')(torch.randn(1, 16, 28, 28))
    with pytest.raises(ValueError, match='ts=4'): BATBlock(32, k=8, kt=4)(torch.randn(1, 32, 6, 14, 14))
    with pytest.raises(ValueError, match='k=3'): BATBlock(32, k=3)


def test_identity_init_is_identity_and_trainable():
    b = BATBlock(16, init='identity')
    x = torch.randn(2, 16, 2, 14, 14)
    with torch.no_grad(): torch.testing.assert_close(b.eval()(x), x)
    b.train()(x).sum().backward()
    assert b.up[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('mode', ['sigmoid', 'softmax', 'relu'])
def test_normalised_output_stays_in_range(mode):
    x = torch.randn(2, 8, 1, 6, 6, dtype=torch.float64)
    P, Q = 30 * torch.randn(2, 4, 1, 6, 6, dtype=torch.float64), 30 * torch.randn(2, 4, 1, 6, 6, dtype=torch.float64)
    y = bilinear_transform(x, normalise(P, -1, mode), normalise(Q, -2, mode))
    assert y.abs().max() <= x.abs().max() + 1e-12


@pytest.mark.parametrize('shape,s', [((2, 15, 13), 7), ((1, 14, 28), (7, 4)), ((4, 9, 9), 3)])
def test_downsample_is_the_transform_on_the_pooled_map(shape, s):
    """Table 2's downsampling: Y = bilinear-upsample(BA-Transform(X^ds)), predictor and 1×1 conv included, on the s_h×s_w map."""
    import torch.nn.functional as F
    b = BATBlock(32, s=s, resize='downsample').eval().double()
    x = torch.randn(2, 32, *shape, dtype=torch.float64)
    tr = b.transform
    with torch.no_grad():
        xr = b.down(x)
        xds = F.adaptive_avg_pool3d(xr, (shape[0], tr.sh, tr.sw))
        P, Q, _ = tr.predictor(xds)
        yds = tr.conv(bat_literal(xds, P, Q))
        y = torch.stack([F.interpolate(yds[:, :, t], size=shape[1:], mode='bilinear', align_corners=False) for t in range(shape[0])], 2)
        torch.testing.assert_close(b(x), x + b.up(y))
    assert count_macs(b.float(), x[:1].float()) == bat_macs(32, *shape, s=s, resize='downsample')


def test_table2_increments():
    """Table 2 (ResNet-50 + 5 blocks): downsampling Δ 1.08 G and block-based Δ 1.30 G (differences of totals rounded to 0.01)."""
    cfg = [(512, 28)] * 2 + [(1024, 14)] * 3
    ds = sum(bat_macs(D, 1, H, H, resize='downsample') for D, H in cfg) / 1e9
    block = sum(bat_macs(D, 1, H, H) for D, H in cfg) / 1e9
    assert abs(ds - 1.08) <= 0.01 and abs(block - 1.30) <= 0.01, (ds, block)
