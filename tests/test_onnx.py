"""ONNX export of every family (acla_basicsr/zoo/onnx_export.py, scripts/export_onnx.py): torch's dynamo
exporter with a dynamic batch, height and width, checked with onnxruntime at other sizes than the export's; the
TorchScript fallback, which warns."""
import os.path as osp

import pytest
import torch

from acla_basicsr.zoo.onnx_export import check_onnx, export_mode, export_onnx
from test_cla_arch import randomise, tiny_edsr
from test_zoo import TINY, load_script, tiny_net, training_checkpoint

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')  # the dynamo exporter's translation

# float32 networks with random weights everywhere; measured differences are below 1e-6
TOLERANCE = 1e-4
FAMILIES = ['EDSR', 'ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN', 'ACLAEDSR_gray_x1']
# torch.export and its decompositions trace every op: EARN's export takes 15 s (idle CPU, 2-3 times that on a loaded
# one), the attention networks' 4-10 s; the fast part keeps plain EDSR's (4 s) and the fallback, the others are slow
# (test_export_paths_compute_the_function_of_the_default_paths checks every family's export paths fast)
SLOW = {'ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN', 'ACLAEDSR_gray_x1'}


@pytest.mark.parametrize('key', FAMILIES)
def test_export_paths_compute_the_function_of_the_default_paths(key):
    net = tiny_net(key)
    x = torch.rand(1, TINY[key]['num_in_ch'], 19, 23)
    with torch.no_grad():
        expected = net(x)
        with export_mode(net):
            assert (net(x) - expected).abs().max() < 1e-5
        assert torch.equal(net(x), expected)  # and the default paths are back


@pytest.mark.filterwarnings('error::DeprecationWarning')  # the TorchScript exporter's, above all
@pytest.mark.parametrize('key', [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in FAMILIES])
def test_dynamo_export_runs_at_other_batches_and_sizes(tmp_path, key):
    import onnx
    net = tiny_net(key)
    path = str(tmp_path / 'net.onnx')
    assert export_onnx(net, path, size=(16, 20)) == 'dynamo'  # not the fallback
    graph = onnx.load(path).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == \
        ['batch', TINY[key]['num_in_ch'], 'height', 'width']
    assert [d.dim_param for d in graph.output[0].type.tensor_type.shape.dim][0] == 'batch'
    assert check_onnx(net, path, size=(29, 17)) < TOLERANCE  # odd sizes: EARN's mask branch crops
    assert check_onnx(net, path, size=(12, 33), seed=1, batch=3) < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize('attention', ['nl', 'clnl'])
def test_dynamo_export_of_the_non_local_comparisons(tmp_path, attention):
    """NL/CLNL's query chunks are off for the export too (an infinite memory budget: one chunk)."""
    net = randomise(tiny_edsr(attention=attention, num_block=2, insert_positions=[1, 2])).eval()
    path = str(tmp_path / 'net.onnx')
    assert export_onnx(net, path, size=(16, 20)) == 'dynamo'
    assert check_onnx(net, path, size=(29, 17)) < TOLERANCE
    assert check_onnx(net, path, size=(12, 33), seed=1, batch=3) < TOLERANCE


def test_a_failed_dynamo_export_falls_back_to_torchscript_and_says_why(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise NotImplementedError('forced by the test\nsecond line')

    monkeypatch.setattr(torch.export, 'export', fail)  # every capture strategy of torch.onnx fails
    net = tiny_net('EDSR')
    path = str(tmp_path / 'net.onnx')
    with pytest.warns(UserWarning) as record:
        assert export_onnx(net, path, size=(16, 20)) == 'torchscript'
    (message, ) = [str(w.message) for w in record if 'TorchScript' in str(w.message)]
    assert message == ('EDSR: the dynamo ONNX exporter failed (NotImplementedError: forced by the test); exported '
                       'with the deprecated TorchScript exporter (dynamo=False) instead')
    assert not [w for w in record if issubclass(w.category, DeprecationWarning)]
    assert check_onnx(net, path, size=(29, 17)) < TOLERANCE


@pytest.mark.filterwarnings('error::DeprecationWarning')
def test_export_onnx_script(tmp_path, capsys):
    ckpt, opt, _ = training_checkpoint(tmp_path, 'EDSR')
    script = load_script('export_onnx')
    with pytest.raises(SystemExit) as exit_info:
        script.main(['-opt', opt, '--model', ckpt, '--out', str(tmp_path / 'a.onnx'), '--size', '24', '24'])
    assert exit_info.value.code == 0 and osp.getsize(tmp_path / 'a.onnx') > 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f'exported EDSR to {tmp_path / "a.onnx"} with the dynamo exporter (')
    assert out[1].startswith('onnxruntime vs torch at 29x27: max abs difference ') and out[1].endswith(': ok')
