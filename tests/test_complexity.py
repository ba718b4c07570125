"""The complexity chapter's counting machinery: BatchNorm skipped without changing a count, per-stage options and unregistered
block classes reaching the right places, bare-backbone counts shared, and two of the rows the chapter matches."""
import pytest, torch
from torch import nn
from nonlocal_book.core import count_macs, count_params
from nonlocal_book.models.backbones import tiny_resnet, insert_preset
from nonlocal_book.ops.gta import SpatialAttention
import nonlocal_book.results.complexity as cx


def test_norms_skipped_keeps_the_count_and_restores_forward():
    torch.manual_seed(0)
    m = tiny_resnet('c2d', width=8); insert_preset(m, 'nl')
    x = torch.randn(1, 3, 4, 32, 32)
    full = count_macs(m, x)
    with cx.norms_skipped(m) as same: skipped = count_macs(same, x)
    assert skipped == full
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm3d)]
    assert bns and all('forward' not in vars(b) for b in bns)          # the class forward is back
    m.eval(); y = m(x)
    with cx.norms_skipped(m): y_skip = m(x)
    assert not torch.equal(y, y_skip)                                   # it really bypasses them while active


def test_stage_options_reach_their_stage():
    row = {r.key: r for r in cx.PAPER_ROWS}['bat2_full']
    model, names, note = cx.build_row(row)
    assert note == '' and len(names) == 5
    sizes = {n.split('.')[0]: model.get_submodule(n).transform.sh for n in names}
    assert sizes == {'res3': 28, 'res4': 14}


def test_a_block_class_is_inserted_where_the_row_says():
    row = cx.PaperRow('t', 'test', 'tiny + SA', lambda: tiny_resnet('c2d', width=8), (4, 32, 32), None, None,
                      op=SpatialAttention, at={'res3': (1, 3)})
    model, names, _ = cx.build_row(row, device='cpu')
    assert names == ['res3.after.1', 'res3.after.3']
    assert all(isinstance(model.get_submodule(n), SpatialAttention) for n in names)
    base = count_params(tiny_resnet('c2d', width=8))
    assert count_params(model) == base + sum(count_params(model.get_submodule(n)) for n in names)


def test_bare_backbone_counted_once_per_builder_and_input():
    rows = {r.key: r for r in cx.PAPER_ROWS}
    assert rows['bat4_k0'].backbone is rows['bat4_k16'].backbone is rows['bat2_base'].backbone
    cx._BASE.clear()
    a, b = cx.measure_row(rows['bat4_k0']), cx.measure_row(rows['bat4_k1'])
    assert len(cx._BASE) == 1 and a['params'] < b['params']


@pytest.mark.parametrize('key,params,gmacs', [('bat2_ds', 30.23 - 25.56, 5.22 - 4.14), ('gta6_sa', 27.5, 41.7)])
def test_rows_the_chapter_matches(key, params, gmacs):
    rec = cx.measure_row({r.key: r for r in cx.PAPER_ROWS}[key])
    assert abs(rec['params'] - params) <= 0.01 * params and abs(rec['gmacs'] - gmacs) <= 0.01 * gmacs, rec


def test_every_table_of_the_fidelity_issue_has_rows():
    "Issue 15, item 5: each numbered cost table named there has rows (BAT Table 1 has its own formula section in the chapter)."
    rows = cx.PAPER_ROWS
    sources = {r.source for r in rows}
    named = {'BAT Table 2', 'BAT Table 4', 'BAT Table 5', 'BAT Table 7', 'BAT Table 8', 'RNL Table II(c)', 'RNL Table III',
             'CGD Table 3', 'CGD Table 6', 'A² Table 1', 'A² Table 2', 'A² Table 3', 'GTA Table 1', 'GTA Table 6'}
    assert named <= sources, named - sources
    keys = {r.key for r in rows}
    assert {'bat5_r18_nl', 'bat5_r18_bat', 'bat5_nl', 'bat5_bat', 'bat8_i3d', 'bat8_i3d_bat', 'bat8_c2d_bat3d',
            'a2_r26', 'a2_r29', 'a2_r50', 'gta6_sa', 'gta6_ta', 'gta6_sa_ta', 'gta6_gta', 'gta1_dnl', 'cgd3_mk_cgnl'} <= keys
    assert len(keys) == len(rows)                                                   # one key per row
    mk_cgnl = {r.key: r for r in rows}['cgd3_mk_cgnl']
    assert (mk_cgnl.params_m, mk_cgnl.gmacs) == (1.64, 1.29)                        # the one Mini-Kinetics row that differs
