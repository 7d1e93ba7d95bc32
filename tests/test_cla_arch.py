"""Tests of the CLA / ACLA / NL / CLNL modules and of the ACLAEDSR / ACLARCAN networks (tiny sizes, CPU)."""
import glob
from os import path as osp

import acla_basicsr  # noqa: F401  (before basicsr: makes it importable, registers the archs)
import pytest
import torch
import yaml
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.utils.registry import ARCH_REGISTRY

from conftest import parsed_checked_options
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import deform_conv2d

from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR
from acla_basicsr.archs.acla_rcan_arch import ACLARCAN
from acla_basicsr.archs.cla_modules import (AdaptiveCrossLayerAttention, CrossLayerAttention,
                                            CrossLayerNonLocalAttention, NonLocalAttention, dot_product_attention,
                                            sample_keys, set_sampling_method)
from acla_basicsr.config.checks import check_options
from acla_basicsr.errors import OptionError

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ATTENTIONS = ['none', 'cla', 'acla', 'nl', 'clnl']


def tiny_edsr(**kwargs):
    args = dict(num_feat=8, num_block=4, upscale=2, res_scale=1, insert_positions=[1, 3, 4], num_keys=3)
    args.update(kwargs)
    return ACLAEDSR(**args)


def tiny_rcan(**kwargs):
    args = dict(num_feat=16, num_group=3, num_block=1, squeeze_factor=4, upscale=2, insert_positions=[1, 3],
                num_keys=3)
    args.update(kwargs)
    return ACLARCAN(**args)


def randomise(net, std=0.1):
    """Give the zero-initialised attention weights random values, so that the modules do something.

    Offsets get a 100x smaller noise: features are in the 0..255 range, and keys far outside the map are zero.
    """
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith('attention') or name.split('.')[0] in ('proj', 'offset', 'logit', 'gate', 'value'):
                p.add_(torch.randn_like(p) * (std / 100 if 'offset.weight' in name else std))
    return net


def deform_reference(values, offsets, weights):
    """The public code's sampling: one deform_conv2d per key with an identity CxC kernel, weighted and summed."""
    c = values.shape[2]
    eye = torch.eye(c).view(c, c, 1, 1)
    return sum(weights[:, l, k:k + 1] * deform_conv2d(values[:, l], offsets[:, l, k], eye)
               for l in range(values.shape[1]) for k in range(offsets.shape[2]))


@pytest.mark.parametrize('method', ['fused', 'gather', 'grid_sample'])
def test_sample_keys_equals_per_key_deform_conv2d(method):
    torch.manual_seed(0)
    b, num_layers, c, h, w, k = 2, 2, 5, 7, 9, 4
    values = torch.randn(b, num_layers, c, h, w)
    offsets = torch.randn(b, num_layers, k, 2, h, w) * 4  # many keys outside the map: zero padding
    weights = torch.rand(b, num_layers, k, h, w)
    out = sample_keys(values, offsets, weights, method=method)
    assert torch.allclose(out, deform_reference(values, offsets, weights), atol=1e-4)
    # a 1-pixel-high map too
    out = sample_keys(values[..., :1, :], offsets[..., :1, :], weights[..., :1, :], method=method)
    ref = deform_reference(values[..., :1, :], offsets[..., :1, :], weights[..., :1, :])
    assert torch.allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize('method', ['fused', 'gather', 'grid_sample'])
def test_chunked_sampling_gives_the_same_values_and_gradients(method):
    torch.manual_seed(0)
    tensors = [torch.randn(2, 2, 6, 8, 8), torch.randn(2, 2, 5, 2, 8, 8) * 2, torch.rand(2, 2, 5, 8, 8)]
    tensors = [t.requires_grad_() for t in tensors]
    full = sample_keys(*tensors, method=method)
    grads = torch.autograd.grad(full.square().sum(), tensors)
    chunked = sample_keys(*tensors, max_memory_mb=1e-3, method=method)  # one key per chunk
    chunked_grads = torch.autograd.grad(chunked.square().sum(), tensors)
    assert torch.allclose(full, chunked, atol=1e-5)
    for g, cg in zip(grads, chunked_grads):
        assert torch.allclose(g, cg, atol=1e-4)
    with pytest.raises(ValueError, match='method'):
        sample_keys(*tensors, method='nearest')


def _sampling_inputs(dtype=torch.float64, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, num_layers, c, h, w, k = 2, 2, 3, 5, 6, 3
    values = torch.randn(b, num_layers, c, h, w, generator=g, dtype=dtype)
    offsets = torch.randn(b, num_layers, k, 2, h, w, generator=g, dtype=dtype) * scale  # many keys outside
    weights = torch.rand(b, num_layers, k, h, w, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (values, offsets, weights)]


@pytest.mark.slow
def test_fused_sampling_passes_gradcheck():
    """The hand-written backward of method='fused' is the derivative of its forward (float64, finite differences)."""
    inputs = _sampling_inputs()
    assert torch.autograd.gradcheck(lambda *t: sample_keys(*t, method='fused'), inputs, eps=1e-6, atol=1e-7)
    # one input at a time (the backward skips the unneeded gradients)
    for i in range(3):
        partial = [t if j == i else t.detach() for j, t in enumerate(inputs)]
        assert torch.autograd.gradcheck(lambda *t: sample_keys(*t, method='fused'), partial, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize('scale', [0.7, 3.0, 40.0])
def test_fused_sampling_equals_autograd_gather_and_deform_conv2d(scale):
    """Output and the three gradients of 'fused' equal autograd's through 'gather' within 1e-5 in float64, and
    autograd's through the per-key deform_conv2d in float32 (torchvision's CPU deform_conv2d fails in float64)."""
    for dtype, references, tol in ((torch.float64, ('gather', ), 1e-5), (torch.float32, ('deform_conv2d', ), 1e-4)):
        inputs = _sampling_inputs(dtype, scale=scale)
        grad_out = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(1)).to(dtype)
        results = {}
        for name, fn in (('fused', lambda *t: sample_keys(*t, method='fused')),
                         ('gather', lambda *t: sample_keys(*t, method='gather')), ('deform_conv2d', deform_reference)):
            if name == 'fused' or name in references:
                out = fn(*inputs)
                results[name] = [out] + list(torch.autograd.grad(out, inputs, grad_out))
        for reference in references:
            for new, ref in zip(results['fused'], results[reference]):
                assert (new - ref).abs().max().item() < tol * max(1, ref.abs().max().item()), reference


def test_fused_backward_reads_the_gradient_rows_contiguously(monkeypatch):
    """For a batch of one, the incoming gradient's channels-last reshape is a column-major view of it, which
    ``embedding_bag`` (the values' gradient, one per corner) and its per-sample-weight gradient read about 20 times
    slower: the backward makes the rows contiguous. Same gradients as a batch-of-two run of the same item."""
    real, tables = torch.nn.functional.embedding_bag, []

    def spy(input, weight, *args, **kwargs):
        tables.append(weight.is_contiguous())
        return real(input, weight, *args, **kwargs)

    inputs = [t.detach()[:1].float().requires_grad_() for t in _sampling_inputs()]
    grad_out = torch.randn(1, 3, 5, 6)  # channels-first, contiguous: what a conv's backward returns
    monkeypatch.setattr(torch.nn.functional, 'embedding_bag', spy)
    grads = torch.autograd.grad(sample_keys(*inputs, method='fused'), inputs, grad_out)
    monkeypatch.undo()
    assert len(tables) == 5 and all(tables)  # the forward (with its per-sample-weight graph), one per corner
    pair = [torch.cat([t.detach(), t.detach()]).requires_grad_() for t in inputs]
    pair_grads = torch.autograd.grad(sample_keys(*pair, method='fused'), pair, torch.cat([grad_out, grad_out]))
    for g, pg in zip(grads, pair_grads):
        torch.testing.assert_close(g, pg[:1], rtol=1e-5, atol=1e-5)


def test_fused_sampling_keeps_the_acla_gates_straight_through(device):
    """ACLA's gates reach the gate logits through the fused backward as through autograd's gather (on the
    device of ``ACLA_TEST_DEVICE``, tests/test_device.py)."""
    torch.manual_seed(0)
    module = randomise(AdaptiveCrossLayerAttention(6, 2, num_keys=3), std=1.0).double().to(device).train()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, device=device)
    layers = [torch.randn(2, 6, 5, 5, dtype=torch.float64, device=device) for _ in range(2)]
    grads = {}
    for method in ('fused', 'gather'):
        module.sampling_method = method
        torch.manual_seed(3)  # the same gate noise
        module.zero_grad()
        module(x, layers).square().sum().backward()
        grads[method] = {name: p.grad.clone() for name, p in module.named_parameters()}
    assert grads['fused']['gate.weight'].abs().sum() > 0
    for name, grad in grads['gather'].items():
        torch.testing.assert_close(grads['fused'][name], grad, atol=1e-9, rtol=1e-9)


def test_chunked_dot_product_attention_equals_full():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 30, 4), torch.randn(2, 4, 20), torch.randn(2, 20, 4)
    full = torch.softmax(q @ k / 2, -1) @ v
    assert torch.allclose(dot_product_attention(q, k, v), full, atol=1e-6)
    assert torch.allclose(dot_product_attention(q, k, v, max_memory_mb=1e-3), full, atol=1e-6)


@pytest.mark.parametrize('attention', ATTENTIONS)
def test_shapes_every_attention_scale_and_backbone(attention):
    x = torch.rand(1, 3, 10, 12)
    for scale in (1, 2, 3, 4):
        out = randomise(tiny_edsr(attention=attention, upscale=scale))(x)
        assert out.shape == (1, 3, 10 * scale, 12 * scale)
    out = randomise(tiny_rcan(attention=attention, upscale=3))(x)
    assert out.shape == (1, 3, 30, 36)
    # demosaicing (1-channel mosaic in, RGB out) and gray denoising (1 in, 1 out) at scale 1
    assert tiny_edsr(attention=attention, upscale=1, num_in_ch=1)(x[:, :1]).shape == (1, 3, 10, 12)
    assert tiny_rcan(attention=attention, upscale=1, num_in_ch=1, num_out_ch=1)(x[:, :1]).shape == (1, 1, 10, 12)


def test_mean_shift_per_channel_count():
    net = tiny_edsr(num_in_ch=1, num_out_ch=3, upscale=1)
    assert net.mean_in.shape == (1, 1, 1, 1) and net.mean_out.shape == (1, 3, 1, 1)
    assert net.mean_in.item() == pytest.approx((0.4488 + 0.4371 + 0.4040) / 3)
    assert 'mean_in' not in net.state_dict()  # not a parameter: basicsr EDSR checkpoints stay loadable
    assert tiny_edsr(rgb_mean=None).mean_in.abs().sum() == 0
    with pytest.raises(ValueError, match='rgb_mean'):
        tiny_edsr(num_in_ch=2)


def test_gradients_reach_offsets_logits_and_gates():
    torch.manual_seed(0)
    module = randomise(AdaptiveCrossLayerAttention(8, 2, num_keys=3)).train()
    x, keys = torch.randn(2, 8, 6, 6), [torch.randn(2, 8, 6, 6) for _ in range(2)]
    module(x, keys).square().sum().backward()
    for name in ('offset', 'logit', 'gate'):
        grad = getattr(module, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad.abs().sum() > 0 for p in module.value.parameters())


def test_straight_through_gates_are_hard_in_forward_with_gradients():
    torch.manual_seed(0)
    module = randomise(AdaptiveCrossLayerAttention(8, 1, num_keys=4, straight_through=True)).train()
    x = torch.randn(1, 8, 5, 5)
    gates = module.key_mask(x)
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    module(x, [x]).sum().backward()
    assert module.gate.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_training_samples_gates():
    torch.manual_seed(0)
    net = randomise(tiny_edsr(attention='acla'), std=1.0)
    x = torch.rand(1, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        net.train()
        assert not torch.equal(net(x), net(x))


def test_closed_gates_make_identity_and_closed_keys_get_no_weight():
    torch.manual_seed(0)
    module = randomise(AdaptiveCrossLayerAttention(8, 2, num_keys=3), std=1.0).eval()
    x, keys = torch.randn(1, 8, 6, 6), [torch.randn(1, 8, 6, 6) for _ in range(2)]
    with torch.no_grad():
        module.gate.weight.zero_()
        module.gate.bias.fill_(-1.0)
        assert torch.equal(module(x, keys), x)
        assert module.last_active_keys.tolist() == [0.0, 0.0]
        # close the keys of layer 1 and key 0 of layer 0 only: their weights are exactly 0, the open keys keep
        # their softmax weight over all keys (no renormalisation, so the gate level matters)
        module.gate.bias.copy_(torch.tensor([-1.0, 1.0, 1.0, -1.0, -1.0, -1.0]))
        weights = module.key_weights(x)
        assert torch.all(weights[:, 1] == 0) and torch.all(weights[:, 0, 0] == 0)
        dense = module.logit(x).view(1, 6, 6, 6).softmax(1).view(1, 2, 3, 6, 6)
        torch.testing.assert_close(weights[:, 0, 1:], dense[:, 0, 1:])
        assert module.last_active_keys.tolist() == [2.0, 0.0]
    # a network whose gates are all closed is its backbone
    net = randomise(tiny_edsr(attention='acla'), std=1.0).eval()
    plain = EDSR(3, 3, 8, 4, 2, res_scale=1)
    plain.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        for module in net.attention:
            module.gate.weight.zero_()
            module.gate.bias.fill_(-1.0)
        x = torch.rand(1, 3, 8, 8)
        assert torch.allclose(net(x), plain.eval()(x), atol=1e-6)


def test_set_sampling_method_switches_every_module_to_the_same_function():
    """set_sampling_method (e.g. 'grid_sample' for an ONNX export) changes how keys are sampled, not the output."""
    torch.manual_seed(0)
    net = ACLAEDSR(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2, attention='acla', num_keys=3,
                   insert_positions=[1, 2]).eval()
    for module in net.modules():
        if isinstance(module, CrossLayerAttention):
            randomise(module, std=1.0)
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        gathered = net(x)
        for method in ('grid_sample', 'gather', 'fused'):
            assert set_sampling_method(net, method) == 2
            assert torch.allclose(net(x), gathered, atol=1e-5), method
    with pytest.raises(ValueError, match="method: 'bogus' is unknown"):
        set_sampling_method(net, 'bogus')


def test_zero_layer_weight_removes_a_key_layer():
    """layer_weights (for the insert-position supernet): a layer weighted 0 is as if the module lacked it."""
    torch.manual_seed(0)
    two = randomise(CrossLayerAttention(8, 2, num_keys=3), std=1.0)
    one = CrossLayerAttention(8, 1, num_keys=3)
    with torch.no_grad():
        one.value[0].load_state_dict(two.value[0].state_dict())
        one.proj.load_state_dict(two.proj.state_dict())
        for conv, rows in ((one.offset, 6), (one.logit, 3)):
            src = getattr(two, 'offset' if conv is one.offset else 'logit')
            conv.weight.copy_(src.weight[:rows])
            conv.bias.copy_(src.bias[:rows])
    x, keys = torch.randn(2, 8, 5, 5), [torch.randn(2, 8, 5, 5) for _ in range(2)]
    assert torch.allclose(two(x, keys, layer_weights=torch.tensor([1.0, 0.0])), one(x, keys[:1]), atol=1e-5)


def test_modules_are_identities_at_initialisation():
    x, keys = torch.randn(1, 8, 5, 5), [torch.randn(1, 8, 5, 5) for _ in range(2)]
    for module in (CrossLayerAttention(8, 2), AdaptiveCrossLayerAttention(8, 2), NonLocalAttention(8),
                   CrossLayerNonLocalAttention(8, 2)):
        assert torch.equal(module(x, keys), x)


@pytest.mark.parametrize('backbone', ['edsr', 'rcan'])
def test_plain_basicsr_weights_load_into_the_backbone(backbone):
    if backbone == 'edsr':
        plain, net = EDSR(3, 3, 8, 4, 2, res_scale=1), tiny_edsr(attention='acla')
    else:
        plain, net = RCAN(3, 3, 16, 3, 1, 4, 2), tiny_rcan(attention='cla')
    result = net.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith('attention.') for k in result.missing_keys)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), plain.eval()(x), atol=1e-6)  # zero-initialised output projections


@pytest.mark.parametrize('kwargs, match', [
    (dict(insert_positions=[0, 2]), 'insert_positions: 0 is out of range 1..4'),
    (dict(insert_positions=[2, 5]), 'insert_positions: 5 is out of range 1..4'),
    (dict(insert_positions=[2, 2]), 'insert_positions: 2 is listed twice'),
    (dict(insert_positions=[3, 1]), 'insert_positions: .* not in increasing order'),
    (dict(insert_positions=[], attention='cla'), 'insert_positions: empty'),
    (dict(insert_positions=None, attention='acla'), 'insert_positions: empty'),
    (dict(insert_positions=[1.5]), 'insert_positions: 1.5 is not an integer'),
    (dict(num_keys=0), 'num_keys: 0'),
    (dict(attention='cla', num_keys=-2), 'num_keys: -2'),
    (dict(attention='transformer'), "attention: 'transformer' is unknown"),
    (dict(temperature=0), 'temperature'),
    (dict(upscale=5), 'upscale: 5'),
    (dict(attention='nl', nl_reduction=0), 'nl_reduction'),
])
def test_invalid_arguments_raise_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        tiny_edsr(**kwargs)
    assert '\n' not in str(error.value)


def test_invalid_positions_of_rcan_and_through_check_options():
    with pytest.raises(ValueError, match=r'out of range 1..3 \(num_group\)'):
        tiny_rcan(insert_positions=[4])
    opt = {
        'model_type': 'RestorationModel',
        'scale': 2,
        'network_g': {'type': 'ACLAEDSR', 'num_feat': 8, 'num_block': 4, 'insert_positions': [3, 12]},
        'datasets': {},
    }
    with pytest.raises(OptionError, match=r'^network_g: insert_positions: 12 is out of range 1..4 \(num_block\)'):
        check_options(opt)
    assert tiny_edsr(attention='none', insert_positions=[]).attention_type == 'none'


def test_training_stats_report_open_keys_per_key_layer():
    net = tiny_edsr(attention='acla').train()
    assert net.training_stats() == {}
    net(torch.rand(2, 3, 8, 8))
    stats = net.training_stats()
    assert sorted(stats) == sorted(['keys_p1_head', 'keys_p3_head', 'keys_p3_p1', 'keys_p4_head', 'keys_p4_p1',
                                    'keys_p4_p3'])
    assert all(0 <= v <= 3 for v in stats.values())
    assert net.active_keys()[4]['p3'] == stats['keys_p4_p3']
    net.set_temperature(0.25)
    assert all(m.temperature == 0.25 for m in net.attention)
    assert tiny_edsr(attention='cla')(torch.rand(1, 3, 8, 8)) is not None
    assert tiny_edsr(attention='cla').training_stats() == {}


@pytest.mark.parametrize('attention', ['cla', 'acla', 'nl', 'clnl'])
def test_analytic_macs_equal_the_flop_counter(attention):
    def counted(net):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(torch.rand(1, 3, 9, 11))
        return counter.get_total_flops() / 2

    net = tiny_edsr(attention=attention)
    assert counted(net) - counted(tiny_edsr(attention='none')) == pytest.approx(net.attention_macs(9, 11), rel=1e-9)
    if attention in ('cla', 'acla'):
        extra = net.attention_macs(9, 11, aggregation=True) - net.attention_macs(9, 11)
        assert extra == pytest.approx(4 * 3 * (1 + 2 + 3) * 8 * 9 * 11)


def _option_files():
    names = ['ACLA_*.yml', 'demo_ACLA_*.yml']
    return sorted({f for name in names for f in glob.glob(osp.join(ROOT, 'options', '*', name))})


def test_shipped_configs_build_their_networks():
    files = _option_files()
    assert len(files) >= 9, files
    for filename in files:
        with open(filename) as f:
            opt = yaml.safe_load(f)
        args = dict(opt['network_g'])
        cls = ARCH_REGISTRY.get(args.pop('type'))
        assert args.get('upscale', opt['scale']) == opt['scale'], filename
        with torch.device('meta'):  # full-size networks: build without allocating weights
            net = cls(**args)
        assert len(net.attention) == len(args['insert_positions']), filename


def test_demo_config_passes_check_options():
    opt = parsed_checked_options('options/train/demo_ACLA_SRx2.yml')
    assert opt['network_g']['type'] in ARCH_REGISTRY and opt['model_type'] == 'RestorationModel'
