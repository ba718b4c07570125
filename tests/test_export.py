"""Compile and export for every registered operator, as timm tests every model.

For each name in `list_operators()`, a small block in eval mode with random weights (so no layer starts at zero and hides a
difference), on one small input:

* `torch.compile(fullgraph=True)` runs without a graph break (fullgraph turns any break into an error) and gives the eager
  output to 1e-5 (backend 'eager': Dynamo's graph capture is what this proves, for all; backend 'inductor', which also
  generates and compiles C++ kernels, for a representative few — see INDUCTOR);
* `torch.onnx.export(..., dynamo=True)` produces a model that onnxruntime runs to the eager output (1e-4 relative,
  1e-5 absolute: ONNX Runtime's kernels sum in their own order).

An operator that cannot do one of them is listed, with the reason, in CANNOT_COMPILE / CANNOT_EXPORT, and its test then
asserts that it still fails — so a fixed one must be taken off the list. Run on its own:
`pytest -m export tests/test_export.py` (marker registered in pytest.ini)."""
import io, warnings
import pytest
import torch

from nonlocal_book.core import get_operator, list_operators
from nonlocal_book.results.official import randomise_

pytestmark = pytest.mark.export
OPS = list_operators()
CANNOT_COMPILE = {}          # name -> reason (none today)
CANNOT_EXPORT = {}           # name -> reason (none today: BAT pools by matrix products while exporting, `adaptive_mean`)
# Inductor generates and compiles C++ on the CPU (tens of seconds each on 2 cores), so it runs on two that between them
# hold every kind of graph in the book: CGD (reductions and pointwise gating only: what inductor fuses into loops) and GTA
# (matmul + softmax attention per frame as in NL, grouped T×T mixing, region pooling and scatter back: the most layout
# changes of any operator). NL's graph alone took 4 minutes to build on a loaded 2-core machine.
INDUCTOR = ('cgd', 'gta')


def small_block(name: str):
    "The registered block at its test size, eval mode, random weights; and an input (1, C, T, S, S)."
    spec = get_operator(name)
    torch.manual_seed(0)
    block = randomise_(spec.build(spec.channels), std=0.5).eval()
    x = torch.randn(1, spec.channels, spec.frames, spec.size, spec.size)
    return block, x


def test_lists_name_registered_operators():
    assert set(CANNOT_COMPILE) <= set(OPS) and set(CANNOT_EXPORT) <= set(OPS)
    assert set(INDUCTOR) <= set(OPS)
    assert len(OPS) >= 40, OPS


def _compiled_equals_eager(name, backend):
    torch.compiler.reset()
    block, x = small_block(name)
    with torch.no_grad():
        want = block(x)
        if name in CANNOT_COMPILE:
            with pytest.raises(Exception): torch.compile(block, fullgraph=True, backend=backend)(x)
            return
        got = torch.compile(block, fullgraph=True, backend=backend)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(want, x), f'{name}: the block is the identity on this input; the comparison would prove nothing'


@pytest.mark.parametrize('name', OPS)
def test_compiles_fullgraph_to_the_eager_result(name):
    _compiled_equals_eager(name, 'eager')


@pytest.mark.parametrize('name', INDUCTOR)
def test_inductor_compiles_to_the_eager_result(name):
    _compiled_equals_eager(name, 'inductor')


@pytest.mark.parametrize('name', OPS)
def test_onnx_export_runs_in_onnxruntime_to_the_eager_result(name):
    ort = pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
    block, x = small_block(name)
    with torch.no_grad(): want = block(x).numpy()
    def export():
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(block, (x,), dynamo=True, verbose=False, report=False, verify=False)
        sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])
        return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    if name in CANNOT_EXPORT:
        with pytest.raises(Exception): export()
        return
    got = export()
    assert got.shape == want.shape
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('way', ['compile', 'onnx'])
def test_rnl_grouped_region_form_compiles_and_exports(way):
    """RNL's F_θ in its grouped form (`grouped_depthwise`, what 'auto' takes from 256 channels on AVX-512 kernels): the
    registered test sizes have fewer channels, so this form is checked here at 256, by hand."""
    from nonlocal_book.ops.rnl import RegionAggregation
    torch.manual_seed(0)
    m, x = RegionAggregation(256, form='grouped').eval(), torch.randn(1, 256, 3, 6, 6)
    with torch.no_grad():
        want = m(x)
        depthwise = RegionAggregation(256, form='depthwise').eval()
        depthwise.load_state_dict(m.state_dict())
        torch.testing.assert_close(want, depthwise(x), rtol=1e-5, atol=1e-5)       # the same function, eagerly
        if way == 'compile':
            torch.compiler.reset()
            got = torch.compile(m, fullgraph=True, backend='eager')(x)
        else:
            ort = pytest.importorskip('onnxruntime'); pytest.importorskip('onnxscript')
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                program = torch.onnx.export(m, (x,), dynamo=True, verbose=False, report=False, verify=False)
            sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])
            got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
