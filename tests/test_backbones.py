"""Backbones, operator insertion and ImageNet initialisation (chapters 10_backbones and 11_pretrained).

Every registered operator joins the insertion tests automatically; the torchvision checks run where torchvision is installed."""
import importlib.util
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from nonlocal_book.core import OPERATORS, OperatorBlock, count_params, list_operators, get_operator, register
from nonlocal_book.models.backbones import (PRESETS, STAGES, KINDS, temporal_shift, temporal_shift_literal, video_resnet,
                                            a2_resnet, tiny_resnet, insert_operator, insert_preset, stage_shapes, i3d_kernels,
                                            VideoResNet)
from nonlocal_book.models.pretrained import (load_imagenet, to_torchvision_state_dict, inflate_state_dict, inflate_weight,
                                             torchvision_to_book, book_to_torchvision)

NAMES = list_operators()
HAS_TV = importlib.util.find_spec('torchvision') is not None


# ---------------------------------------------------------------- temporal shift
@pytest.mark.parametrize('C,T,fold_div', [(8, 1, 8), (8, 2, 8), (16, 5, 8), (12, 3, 4), (9, 4, 3)])
def test_temporal_shift_matches_literal(C, T, fold_div):
    x = torch.randn(2, C, T, 3, 2, dtype=torch.float64)
    assert torch.equal(temporal_shift(x, fold_div), temporal_shift_literal(x, fold_div))


from hypothesis import given, settings, strategies as st


@settings(max_examples=40, deadline=None)
@given(C=st.integers(1, 24), T=st.integers(1, 6), fold_div=st.integers(1, 8))
def test_temporal_shift_fuzz(C, T, fold_div):
    x = torch.randn(1, C, T, 2, 2, dtype=torch.float64)
    if fold_div < 2 or C // fold_div == 0:
        with pytest.raises(ValueError, match='fold_div'): temporal_shift(x, fold_div)
    else:
        y = temporal_shift(x, fold_div)
        assert torch.equal(y, temporal_shift_literal(x, fold_div))
        f = C // fold_div                                    # a shift moves values, it never scales them
        assert torch.equal(y[:, 2 * f:], x[:, 2 * f:]) and torch.equal(y[:, :f, :-1], x[:, :f, 1:])


def test_stage_mapped_to_all():
    with torch.device('meta'): m = video_resnet(50, 'c2d')
    assert insert_operator(m, 'se', at={'res5': 'all'}) == ['res5.after.0', 'res5.after.1', 'res5.after.2']


def test_temporal_shift_moves_a_pulse():
    x = torch.zeros(1, 8, 4, 1, 1); x[:, :, 2] = 1.0          # every channel lit at frame 2
    y = temporal_shift(x)[0, :, :, 0, 0]
    assert y[0].tolist() == [0, 1, 0, 0]                       # channel 0 reads t+1: the pulse moves to frame 1
    assert y[1].tolist() == [0, 0, 0, 1]                       # channel 1 reads t-1: it moves to frame 3
    assert y[2].tolist() == [0, 0, 1, 0]                       # the rest stay


# ---------------------------------------------------------------- backbones
def test_torchvision_parameter_counts():
    with torch.device('meta'):
        got = {d: count_params(video_resnet(d, 'c2d', num_classes=1000)) for d in (18, 50, 101)}
    assert got == {18: 11_689_512, 50: 25_557_032, 101: 44_549_160}


@pytest.mark.parametrize('depth,paper', [(26, 7.043e6), (29, 7.620e6)])
def test_a2_resnet_params_match_table_2(depth, paper):
    with torch.device('meta'): m = a2_resnet(depth)
    assert abs(count_params(m) - paper) / paper < 0.01


@pytest.mark.parametrize('kind,pooled', [('c2d', True), ('i3d', True), ('tsm', False), ('r2d', False)])
def test_temporal_sizes(kind, pooled):
    with torch.device('meta'): m = video_resnet(50, kind)
    s = stage_shapes(m, 8, 224)
    assert s['res2'][1] == 8 and s['res5'][1] == (4 if pooled else 8)
    assert s['res5'] [2:] == (7, 7)


def test_i3d_pattern():
    assert i3d_kernels((3, 4, 6, 3)) == [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]]
    with torch.device('meta'): m = video_resnet(50, 'i3d')
    assert m.res4.blocks[0].conv1.kernel_size == (3, 1, 1) and m.res4.blocks[1].conv1.kernel_size == (1, 1, 1)
    assert m.stem[0].kernel_size == (5, 7, 7)


@pytest.mark.parametrize('kind', KINDS)
def test_tiny_backbone_trains_a_step(kind):
    torch.manual_seed(0)
    net = tiny_resnet(kind, num_classes=3, width=8, layers=(1, 1, 1, 1))   # TSM shifts C // 8 channels: at least 8 at the stem
    x, y = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 2])
    loss = F.cross_entropy(net(x), y); loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_backbone_errors():
    with pytest.raises(ValueError, match='depth'): video_resnet(42)
    with pytest.raises(ValueError, match='kind'): video_resnet(50, 'c3d')
    with pytest.raises(ValueError, match='ResNet-26'): a2_resnet(50)
    net = tiny_resnet('c2d', width=4)
    with pytest.raises(ValueError, match='temporal_pool=False'): net(torch.randn(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match='channels'): net(torch.randn(1, 1, 4, 32, 32))


# ---------------------------------------------------------------- presets and the index convention
EXPECTED_PLACES = {
    'nl': ['res3.after.1', 'res3.after.3', 'res4.after.1', 'res4.after.3', 'res4.after.5'],
    'bat': ['res3.after.1', 'res3.after.3', 'res4.after.1', 'res4.after.3', 'res4.after.5'],
    'a2': ['res3.after.1', 'res3.after.3', 'res4.after.1', 'res4.after.3', 'res4.after.5'],
    'gta': ['res3.after.1', 'res3.after.3', 'res4.after.1', 'res4.after.3', 'res4.after.5'],
    'rnl': ['res3.after.0', 'res3.after.2', 'res4.after.0', 'res4.after.2', 'res4.after.4'],
    'a2_conv4': ['res4.after.1'],
    'cgd': [f'{s}.blocks.{i}.inner' for s, n in zip(STAGES, (3, 4, 6, 3)) for i in range(n)],
}


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_preset_places(preset):
    "Each preset inserts at the documented places; a stand-in operator ('se') is used where the paper's is not registered yet."
    assert set(EXPECTED_PLACES) == set(PRESETS)
    with torch.device('meta'): m = video_resnet(50, 'c2d')
    # the places do not depend on the operator: check them with SE, whose constructor needs only channels
    names = insert_preset(m, preset, op='se')
    assert names == EXPECTED_PLACES[preset]
    for n in names:
        stage, kind, i = n.split('.')[:3]
        block = getattr(m, stage).blocks[int(i)]
        want = block.out_channels if kind == 'after' else block.conv1.out_channels
        assert m.get_submodule(n).channels == want


def test_index_convention_is_zero_based_within_the_stage():
    "`{'res3': (1,)}` runs after the *second* block of res3: the operator sees exactly that block's output."
    seen = {}
    class Spy(OperatorBlock):
        def __init__(self, channels): super().__init__(); self.channels = channels
        def forward(self, x): seen['op'] = x.detach().clone(); return x
    register('_spy', Spy, doc='test spy')
    try:
        net = tiny_resnet('c2d', width=4).eval()
        insert_operator(net, '_spy', at={'res3': (1,)})
        net.res3.blocks[1].register_forward_hook(lambda m, i, o: seen.__setitem__('block1', o.detach().clone()))
        net.res3.blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__('block0', o.detach().clone()))
        with torch.no_grad(): net(torch.randn(1, 3, 4, 32, 32))
        assert torch.equal(seen['op'], seen['block1']) and not torch.equal(seen['op'], seen['block0'])
        with pytest.raises(ValueError, match='indices 0..3'): insert_operator(net, '_spy', at={'res3': (4,)})
        with pytest.raises(ValueError, match='indices 0..3'): insert_operator(net, '_spy', at={'res3': (-1,)})
        with pytest.raises(ValueError, match='already has an operator after'): insert_operator(net, '_spy', at={'res3': (1,)})
    finally:
        del OPERATORS['_spy']


def test_fixed_T_operators_get_their_stage_T():
    class NeedsT(OperatorBlock):
        def __init__(self, channels, T): super().__init__(); self.channels, self.T = channels, T
        def forward(self, x):
            if x.shape[2] != self.T: raise ValueError(f'built for T={self.T}, got {x.shape[2]}')
            return x
    register('_needs_t', NeedsT, doc='test: fixed T')
    try:
        with torch.device('meta'):
            for kind, t3 in (('c2d', 4), ('tsm', 8)):
                m = video_resnet(50, kind)
                with pytest.raises(ValueError, match='frames='): insert_operator(m, '_needs_t', at={'res3': (1,)})
                names = insert_preset(m, 'gta', op='_needs_t', frames=8)
                assert [m.get_submodule(n).T for n in names] == [t3] * 5
            m = a2_resnet(26)
            names = insert_preset(m, 'a2_conv4', op='_needs_t', frames=16)
            assert m.get_submodule(names[0]).T == 8
            # inside the first conv2 block, time has not been strided yet: 16 frames; after it, 8
            names = insert_operator(m, '_needs_t', at={'res2': (0,)}, where='inside', frames=16)
            names += insert_operator(m, '_needs_t', at={'res2': (0,)}, where='after', frames=16)
            assert [m.get_submodule(n).T for n in names] == [16, 8]
            m(torch.empty(1, 3, 16, 112, 112, device='meta'))
            # a basic block strides time in its first conv: the inside operator sees the strided T
            m = VideoResNet((1, 1, 1, 1), 'basic', 5, width=8, stem='small', t_strides=[[1], [2], [1], [1]])
            names = insert_operator(m, '_needs_t', at={'res3': (0,)}, where='inside', frames=8)
            assert m.get_submodule(names[0]).T == 4
            m(torch.empty(1, 3, 8, 32, 32, device='meta'))
    finally:
        del OPERATORS['_needs_t']


# ---------------------------------------------------------------- every registered operator in a small C2D
def _geometry_net(spec, kind='c2d'):
    "A small C2D whose res3 carries spec.channels channels at spec.size × spec.size and spec.frames frames."
    assert spec.channels % 2 == 0
    net = tiny_resnet(kind, num_classes=3, width=spec.channels // 2, layers=(1, 2, 1, 1), block='basic')
    x = torch.randn(2, 3, 2 * spec.frames, 2 * spec.size, 2 * spec.size)
    return net, x


@pytest.mark.parametrize('name', NAMES)
def test_every_operator_inserted_trains_a_step(name):
    "One operator after res3 block 0 and one inside res3 block 1 (after its first conv): a forward, a backward, an SGD step."
    spec = get_operator(name)
    torch.manual_seed(0)
    net, x = _geometry_net(spec)
    names = insert_operator(net, name, at={'res3': (0,)}, where='after', frames=x.shape[2], size=x.shape[-1])
    names += insert_operator(net, name, at={'res3': (1,)}, where='inside', frames=x.shape[2], size=x.shape[-1])
    assert names == ['res3.after.0', 'res3.blocks.1.inner']
    shapes = stage_shapes(net, x.shape[2], x.shape[-1])
    assert shapes['res3'] == (spec.channels, spec.frames, spec.size, spec.size)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = F.cross_entropy(net(x), torch.tensor([0, 2])); loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    for n in names:
        op_params = list(net.get_submodule(n).parameters())
        if op_params: assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in op_params), f'no gradient reaches {n}'
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def _is_identity_at_init(spec):
    torch.manual_seed(0)
    block = spec.build(spec.channels).eval()
    x = torch.randn(2, spec.channels, spec.frames, spec.size, spec.size)
    with torch.no_grad(): return torch.equal(block(x), x)


@pytest.mark.parametrize('name', NAMES)
def test_identity_start_leaves_the_backbone_unchanged(name):
    spec = get_operator(name)
    if not _is_identity_at_init(spec): pytest.skip(f'{name} does not start as the identity')
    torch.manual_seed(0)
    plain, x = _geometry_net(spec)
    plain.eval()
    with_op, _ = _geometry_net(spec); with_op.load_state_dict(plain.state_dict())
    insert_operator(with_op, name, at={'res3': (0, 1)}, frames=x.shape[2], size=x.shape[-1])
    with_op.eval()
    with torch.no_grad(): assert torch.equal(with_op(x), plain(x))


def test_nl_is_an_identity_start_operator():
    assert _is_identity_at_init(get_operator('nl'))


# ---------------------------------------------------------------- ImageNet initialisation
def test_key_maps_are_inverse():
    with torch.device('meta'): m = video_resnet(101, 'c2d')
    for k in m.state_dict():
        assert torchvision_to_book(book_to_torchvision(k)) == k


@pytest.mark.parametrize('mode', ['centre', 'mean'])
def test_inflate_weight(mode):
    w = torch.randn(4, 3, 3, 3)
    w3 = inflate_weight(w, 3, mode)
    assert w3.shape == (4, 3, 3, 3, 3)
    torch.testing.assert_close(w3.sum(2), w)                   # both keep the static-clip response


def test_centre_inflated_i3d_equals_c2d():
    torch.manual_seed(0)
    src = tiny_resnet('c2d', width=4).eval()
    i3d = tiny_resnet('i3d', width=4).eval()
    load_imagenet(i3d, state_dict=to_torchvision_state_dict(src), mode='centre')
    x = torch.randn(2, 3, 6, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(i3d(x), src(x), atol=1e-5, rtol=1e-5)


def test_classifier_of_another_size_is_kept_and_reported():
    torch.manual_seed(0)
    src = tiny_resnet('c2d', width=4, num_classes=10)
    dst = tiny_resnet('c2d', width=4, num_classes=3); insert_preset(dst, 'nl')
    fc_before = dst.fc.weight.detach().clone()
    rep = load_imagenet(dst, state_dict=to_torchvision_state_dict(src))
    assert rep.skipped == ['fc.weight', 'fc.bias']
    assert torch.equal(dst.fc.weight, fc_before)
    assert all('.after.' in k or k.startswith('fc.') for k in rep.kept)
    assert torch.equal(dst.res3.blocks[2].conv2.weight, src.res3.blocks[2].conv2.weight)


@pytest.mark.skipif(not HAS_TV, reason='torchvision is not installed')
@pytest.mark.parametrize('depth', [18, 50])
def test_c2d_reproduces_torchvision_logits(depth):
    import torchvision
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f'resnet{depth}')(weights=None)
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1); mod.running_var.uniform_(0.5, 1.5)
                mod.weight.normal_(1, 0.1); mod.bias.normal_(0, 0.1)
    tv.eval()
    c2d = video_resnet(depth, 'c2d', num_classes=1000, temporal_pool=False).eval()
    rep = load_imagenet(c2d, state_dict=tv.state_dict())
    assert rep.kept == [] and rep.skipped == []
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(): ref, ours = tv(x), c2d(x.unsqueeze(2))
    torch.testing.assert_close(ours, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
    # and back: our export equals torchvision's own state dict
    back = to_torchvision_state_dict(c2d)
    assert set(back) == set(tv.state_dict())
    assert all(torch.equal(back[k], v) for k, v in tv.state_dict().items())


def test_load_from_a_local_state_dict_file(tmp_path):
    "The offline route: a state dict saved with torchvision's names (plain or wrapped in {'state_dict': ...}, DDP 'module.' prefix)."
    torch.manual_seed(0)
    src = tiny_resnet('c2d', width=4).eval()
    sd = to_torchvision_state_dict(src)
    torch.save({'state_dict': {f'module.{k}': v for k, v in sd.items()}}, tmp_path / 'ckpt.pth')
    dst = tiny_resnet('r2d', width=4).eval()
    rep = load_imagenet(dst, path=str(tmp_path / 'ckpt.pth'))
    assert rep.kept == [] and rep.skipped == []
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


# ---------------------------------------------------------------- complexity counting (results chapter)
def test_meta_count_equals_real_count_and_falls_back_for_meta_hostile_operators():
    "An operator that cannot run on the meta device is counted on real zeros; the total equals a real-tensor count."
    from nonlocal_book.core import count_macs
    from nonlocal_book.results.complexity import PaperRow, measure_row, within_rounding
    class Hostile(OperatorBlock):
        def __init__(self, channels): super().__init__(); self.channels = channels; self.proj = nn.Conv3d(channels, channels, 1)
        def forward(self, x):
            if float(x.abs().sum()) < 0: raise RuntimeError('unreachable')     # data-dependent: impossible on meta
            return x + self.proj(x)
    register('_hostile', Hostile, doc='test: needs real data')
    try:
        row = PaperRow('t', 'test', 'tiny + hostile', lambda: tiny_resnet('c2d', width=8), (8, 32, 32), None, None,
                       op='_hostile', preset='nl')
        rec = measure_row(row)
        torch.manual_seed(0)
        real = tiny_resnet('c2d', width=8); insert_preset(real, 'nl', op='_hostile')
        assert rec['gmacs'] * 1e9 == count_macs(real, torch.zeros(1, 3, 8, 32, 32))
        assert rec['params'] * 1e6 == count_params(real)
        plain = measure_row(PaperRow('p', 'test', 'tiny', lambda: tiny_resnet('c2d', width=8), (8, 32, 32), None, None))
        assert rec['gmacs'] > plain['gmacs']
    finally:
        del OPERATORS['_hostile']
    assert within_rounding(0.0227, 0.02) and not within_rounding(0.031, 0.02)


def test_unregistered_operator_rows_say_so():
    from nonlocal_book.results.complexity import PaperRow, measure_row, NOT_IN_BOOK
    row = PaperRow('x', 'test', 'r', lambda: tiny_resnet('c2d', width=8), (8, 32, 32), 1.0, 1.0, op='_not_registered', preset='nl')
    rec = measure_row(row)
    assert rec['status'] == NOT_IN_BOOK and rec['params'] is None


# ---------------------------------------------------------------- a functional 2D ResNet on torchvision's names
def _resnet2d_forward(sd, x, layers, bottleneck):
    """torchvision's ResNet written as plain functional 2D ops on a state dict with torchvision's names (v1.5: stride on the
    3×3 of a bottleneck, on conv1 of a basic block; downsample = 1×1 conv with stride + BN). Independent of the book's modules."""
    def bn(t, p): return F.batch_norm(t, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'], False, 0.0, 1e-5)
    def conv(t, p, stride=1):
        w = sd[p + '.weight']
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)
    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd['conv1.weight'], stride=2, padding=3), 'bn1')), 3, 2, 1)
    for li, n in enumerate(layers, start=1):
        for j in range(n):
            p, stride = f'layer{li}.{j}', 2 if (j == 0 and li > 1) else 1
            if bottleneck:
                y = F.relu(bn(conv(x, p + '.conv1'), p + '.bn1'))
                y = F.relu(bn(conv(y, p + '.conv2', stride), p + '.bn2'))
                y = bn(conv(y, p + '.conv3'), p + '.bn3')
            else:
                y = F.relu(bn(conv(x, p + '.conv1', stride), p + '.bn1'))
                y = bn(conv(y, p + '.conv2'), p + '.bn2')
            sc = bn(F.conv2d(x, sd[p + '.downsample.0.weight'], stride=stride), p + '.downsample.1') if p + '.downsample.0.weight' in sd else x
            x = F.relu(y + sc)
    return F.linear(x.mean((2, 3)), sd['fc.weight'], sd['fc.bias'])


@pytest.mark.parametrize('depth', [18, 50])
def test_c2d_one_frame_equals_a_functional_2d_resnet(depth):
    "Without torchvision: a random torchvision-named 2D state dict, loaded into C2D, gives the functional 2D network's logits."
    torch.manual_seed(depth)
    c2d = video_resnet(depth, 'c2d', num_classes=7, temporal_pool=False, width=16).eval()
    sd = {}
    for k, v in to_torchvision_state_dict(c2d).items():   # names and shapes only; values drawn afresh
        if k.endswith('running_var'): sd[k] = torch.rand(v.shape) + 0.5
        elif k.endswith('num_batches_tracked'): sd[k] = v
        elif v.ndim == 4: sd[k] = torch.randn(v.shape) * (2 / (v.shape[1] * v.shape[2] * v.shape[3])) ** 0.5
        else: sd[k] = torch.randn(v.shape) * 0.1 + (1.0 if k.endswith('.weight') and v.ndim == 1 else 0.0)
    rep = load_imagenet(c2d, state_dict=sd)
    assert rep.kept == [] and rep.skipped == []
    layers = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): ref, ours = _resnet2d_forward(sd, x, layers, depth == 50), c2d(x.unsqueeze(2))
    torch.testing.assert_close(ours, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
