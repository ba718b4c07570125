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
    torch.testing.assert_close(blockwise_transform(x, P, Q), bat_literal(x, Pf, Qf))
    torch.testing.assert_close(bilinear_transform(x, Pf, Qf), bat_literal(x, Pf, Qf))


def test_temporal_block_equals_literal():
    y = torch.randn(1, 4, 8, 2, 3, dtype=torch.float64)
    Tm = normalise(torch.randn(1, 2, 4, 4, dtype=torch.float64), -1, 'softmax')
    torch.testing.assert_close(temporal_transform(y, Tm), temporal_literal(y, kron_identity(Tm, 2)))


@pytest.mark.parametrize('opts', [{}, {'k': 0}, {'k': 2, 's': (7, 14)}, {'k': 8, 'kt': 4}, {'resize': 'downsample', 's': 5},
                                  {'resize': 'full', 's': (14, 28)}, {'reduced': 8, 'r': 4}])
def test_param_and_mac_formulas(opts):
    b = BATBlock(32, **opts)
    assert count_params(b) == bat_params(32, **{k: v for k, v in opts.items() if k != 'resize'})
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
