"""The device paths, on the test device (``ACLA_TEST_DEVICE``: ``cpu`` by default, ``cuda`` on a GPU machine).

Every test builds its tiny network or inputs on the CPU, moves them to the device with ``.to(device)`` and
compares what the device computes with the same computation on the CPU, or with an independent reference on
the device (the per-key ``deform_conv2d``, the unfolded local attention, exact attention): forward and backward
of every network family, bfloat16 autocast, the key samplers, ENLCA and its contrastive loss, EARN's local
attention and loss, a tiny training through ``RestorationModel`` (``num_gpu: 1`` on CUDA) and tiled inference.
On the CPU they run with the rest of the suite; ``scripts/gpu_check.py`` runs this file with
``ACLA_TEST_DEVICE=cuda``. TF32 is switched off where float32 results are compared (the ``exact_fp32`` fixture).
"""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.ops import deform_conv2d

import acla_basicsr  # noqa: F401  (before basicsr: registers the project's classes)
from acla_basicsr import restore
from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR
from acla_basicsr.archs.acla_rcan_arch import ACLARCAN
from acla_basicsr.archs.acla_super_edsr_arch import ACLASuperEDSR
from acla_basicsr.archs.cla_modules import AdaptiveCrossLayerAttention, sample_keys
from acla_basicsr.archs.earn_arch import EARN
from acla_basicsr.archs.earn_modules import LocalSelfAttention
from acla_basicsr.archs.enlca_modules import ENLCA, NonLocalAttention, draw_random_matrix, efficient_attention
from acla_basicsr.archs.enlcn_arch import ENLCN
from acla_basicsr.losses.earn_loss import EARNLoss
from acla_basicsr.losses.enlca_contrastive_loss import ENLCAContrastiveLoss
from basicsr.data import build_dataset
from basicsr.models import build_model

from conftest import tiny_sr_options
from test_cla_arch import randomise
from test_earn import local_attention_unfold_reference
from test_enlca import reference_contrastive_loss

FAMILIES = {
    'ACLAEDSR-cla': lambda: randomise(ACLAEDSR(num_feat=8, num_block=4, upscale=2, res_scale=1,
                                               insert_positions=[1, 3, 4], num_keys=3, attention='cla')),
    'ACLAEDSR-acla': lambda: randomise(ACLAEDSR(num_feat=8, num_block=4, upscale=2, res_scale=1,
                                                insert_positions=[1, 3, 4], num_keys=3, attention='acla')),
    'ACLAEDSR-nl': lambda: randomise(ACLAEDSR(num_feat=8, num_block=2, upscale=2, res_scale=1,
                                              insert_positions=[1, 2], attention='nl')),
    'ACLAEDSR-clnl': lambda: randomise(ACLAEDSR(num_feat=8, num_block=2, upscale=2, res_scale=1,
                                                insert_positions=[1, 2], attention='clnl')),
    'ACLARCAN-acla': lambda: randomise(ACLARCAN(num_feat=16, num_group=3, num_block=1, squeeze_factor=4, upscale=2,
                                                insert_positions=[1, 3], num_keys=3)),
    'ACLASuperEDSR': lambda: randomise(ACLASuperEDSR(num_feat=8, num_block=5, num_keys=4, upscale=2)),
    'ENLCN': lambda: ENLCN(num_feat=16, num_block=4, upscale=2, res_scale=1, attention_positions=[0, 2, 4],
                           num_embed_feat=8, num_samples=16, redraw_every=3),
    'EARN': lambda: EARN(upscale=2, num_feat=8, num_block=1, reduction=2, window_size=3, num_heads=2),
}


@pytest.fixture
def exact_fp32():
    """float32 convolutions and matrix products without TF32 on CUDA, so that they compare with the CPU's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def assert_near(got, want, tol, what=''):
    """``max |got - want| <= tol * max(1, max |want|)``, ``got`` on any device."""
    got, want = got.detach().cpu().to(want.dtype), want.detach().cpu()
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f'{what}: max abs difference {err:.3g}'


def forward_backward(net, x):
    """Output and the gradients of ``sum(out * weights)`` with respect to the input and every parameter."""
    x = x.clone().requires_grad_()
    out = net(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weights).sum(), [x] + params, allow_unused=True)
    return out, grads


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize('family', list(FAMILIES))
def test_network_forward_backward_on_device_equals_cpu(family, device, exact_fp32):
    """Eval mode (hard gates, fixed ENLCA features): the device's output and gradients are the CPU's."""
    torch.manual_seed(0)
    net = FAMILIES[family]().eval()
    x = torch.rand(2, 3, 12, 10)
    out, grads = forward_backward(net, x)
    out_dev, grads_dev = forward_backward(net.to(device), x.to(device))
    assert out_dev.device.type == device.type and out_dev.shape == (2, 3, 24, 20)
    assert_near(out_dev, out, 1e-4, 'output')
    for i, (g_dev, g) in enumerate(zip(grads_dev, grads)):
        assert (g is None) == (g_dev is None)
        if g is not None:
            assert_near(g_dev, g, 1e-3, f'gradient {i}')


@pytest.mark.parametrize('family', list(FAMILIES))
def test_network_trains_on_device(family, device):
    """Training mode (relaxed gates, redrawn features) on the device: finite output, finite non-zero gradients
    on the device, and three Adam steps lower the L1 loss on a fixed batch."""
    torch.manual_seed(0)
    net = FAMILIES[family]().to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 12, 10, device=device)
    target = torch.nn.functional.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        out = net(x)
        assert out.device.type == device.type and torch.isfinite(out).all()
        loss = (out - target).abs().mean()
        loss.backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(g.device.type == device.type and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize('family', list(FAMILIES))
def test_network_bfloat16_autocast_on_device(family, device):
    """bfloat16 autocast (as ``bench_train_step.py --amp``): finite, within 5 % of float32, gradients finite."""
    torch.manual_seed(0)
    net = FAMILIES[family]().to(device).eval()
    x = torch.rand(1, 3, 12, 10, device=device)
    with torch.no_grad():
        reference = net(x).float()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out, grads = forward_backward(net, x)
    assert torch.isfinite(out).all()
    assert ((out.float() - reference).norm() / reference.norm()).item() < 0.05
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


# ------------------------------------------------------------------------------------- key sampling
def deform_reference(values, offsets, weights):
    """The public code's sampling on the inputs' device: one deform_conv2d per key, identity CxC kernel."""
    c = values.shape[2]
    eye = torch.eye(c, dtype=values.dtype, device=values.device).view(c, c, 1, 1)
    return sum(weights[:, l, k:k + 1] * deform_conv2d(values[:, l], offsets[:, l, k], eye)
               for l in range(values.shape[1]) for k in range(offsets.shape[2]))


def sampling_inputs(device, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, num_layers, c, h, w, k = 2, 2, 5, 7, 9, 4
    values = torch.randn(b, num_layers, c, h, w, generator=g, dtype=dtype)
    offsets = torch.randn(b, num_layers, k, 2, h, w, generator=g, dtype=dtype) * scale  # many keys outside
    weights = torch.rand(b, num_layers, k, h, w, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (values, offsets, weights)]


def with_grads(fn, inputs, seed=1):
    out = fn(*inputs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    return [out] + list(torch.autograd.grad(out, inputs, grad_out))


@pytest.mark.parametrize('method', ['fused', 'gather', 'grid_sample'])
def test_sample_keys_on_device_equals_deform_conv2d(method, device, exact_fp32):
    """Output and gradients to values, offsets and weights against the per-key deform_conv2d on the device."""
    inputs = sampling_inputs(device)
    got = with_grads(lambda *t: sample_keys(*t, method=method), inputs)
    want = with_grads(deform_reference, inputs)
    for name, new, ref in zip(('output', 'values', 'offsets', 'weights'), got, want):
        assert new.device.type == device.type
        assert_near(new, ref, 1e-4 if name == 'output' else 5e-4, f'{method} {name}')


@pytest.mark.parametrize('scale', [0.7, 3.0, 40.0])
def test_fused_sampling_on_device_equals_gather_and_cpu(scale, device):
    """float64: the fused backward equals autograd's through 'gather' on the device, and the CPU's fused."""
    inputs = sampling_inputs(device, torch.float64, scale)
    fused = with_grads(lambda *t: sample_keys(*t, method='fused'), inputs)
    gather = with_grads(lambda *t: sample_keys(*t, method='gather'), inputs)
    cpu = with_grads(lambda *t: sample_keys(*t, method='fused'), sampling_inputs('cpu', torch.float64, scale))
    for new, ref, on_cpu in zip(fused, gather, cpu):
        assert_near(new, ref, 1e-9, 'fused vs gather')
        assert_near(new, on_cpu, 1e-9, 'device vs cpu')


@pytest.mark.parametrize('method', ['fused', 'gather', 'grid_sample'])
def test_chunked_sampling_on_device_equals_full(method, device):
    inputs = sampling_inputs(device, torch.float64)
    full = with_grads(lambda *t: sample_keys(*t, method=method), inputs)
    chunked = with_grads(lambda *t: sample_keys(*t, max_memory_mb=1e-3, method=method), inputs)  # a key a chunk
    for new, ref in zip(chunked, full):
        assert_near(new, ref, 1e-9, 'chunked')


# --------------------------------------------------------------------------------------------- ENLCA
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_enlca_inference_path_on_device_equals_autograd_path(dtype, tol, device, exact_fp32):
    g = torch.Generator().manual_seed(5)
    q, k = (torch.nn.functional.normalize(torch.randn(3, 50, 8, generator=g, dtype=torch.float64), dim=-1) * 2.5
            for _ in range(2))
    v = torch.randn(3, 50, 13, generator=g, dtype=torch.float64)
    matrix = draw_random_matrix(32, 8, g, True, torch.float64).to(device)
    q, k, v = (t.to(device, dtype) for t in (q, k, v))
    with torch.no_grad():
        fast = efficient_attention(q, k, v, matrix)
    reference = efficient_attention(q, k, v.clone().requires_grad_(), matrix).detach()
    assert fast.device.type == device.type and fast.dtype == dtype
    assert_near(fast.float(), reference.float(), tol, 'inference vs autograd path')
    with torch.no_grad():
        assert torch.isfinite(efficient_attention(q * 10, k * 10, v, matrix)).all()


def test_enlca_and_exact_attention_on_device_equal_cpu(device, exact_fp32):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 7)
    for module in (ENLCA(num_feat=8, num_embed_feat=4, num_samples=32, seed=7),
                   NonLocalAttention(num_feat=8, num_embed_feat=4, amplification=1.0, implementation='naive'),
                   NonLocalAttention(num_feat=8, num_embed_feat=4, amplification=1.0)):
        module.eval()
        out, grads = forward_backward(module, x)
        out_dev, grads_dev = forward_backward(module.to(device), x.to(device))
        assert_near(out_dev, out, 1e-4, type(module).__name__)
        for g_dev, g in zip(grads_dev, grads):
            if g is not None:
                assert_near(g_dev, g, 1e-3, f'{type(module).__name__} gradient')


def test_enlca_contrastive_loss_on_device_equals_reference(device):
    g = torch.Generator().manual_seed(6)
    q, k = (torch.randn(2, 120, 6, generator=g, dtype=torch.float64) for _ in range(2))
    module = ENLCA(num_feat=8, num_embed_feat=6, num_samples=16).to(device)
    module.stored_embeddings = tuple(torch.nn.functional.normalize(t, dim=-1).to(device) for t in (q, k))
    value = ENLCAContrastiveLoss(loss_weight=1.0, num_queries=None, warmup_iter=0)(module)
    assert value.device.type == device.type
    assert value.item() == pytest.approx(reference_contrastive_loss(q, k, 6.0), rel=1e-9)


# ---------------------------------------------------------------------------------------------- EARN
def test_earn_local_attention_on_device_equals_unfold_reference(device, exact_fp32):
    torch.manual_seed(0)
    layer = LocalSelfAttention(64, window_size=7, num_heads=4).to(device)
    for shape in ((2, 64, 11, 9), (1, 64, 5, 4)):
        x = torch.randn(*shape, device=device, requires_grad=True)
        out, ref = layer(x), local_attention_unfold_reference(layer, x)
        assert_near(out, ref, 1e-5, 'output')
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, *layer.parameters()], grad)
        want = torch.autograd.grad(ref, [x, *layer.parameters()], grad)
        for g, r in zip(got, want):
            assert_near(g, r, 1e-4, 'gradient')


def test_earn_loss_on_device_equals_cpu(device, exact_fp32):
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 24, 20), torch.rand(2, 3, 24, 20)
    loss = EARNLoss(l1_weight=1.5, ssim_weight=0.6, perceptual_weight=0)
    want = loss(pred, target)
    got = loss.to(device)(pred.to(device), target.to(device))
    for name in ('l_l1', 'l_ssim'):
        if isinstance(want, dict):
            assert_near(got[name], want[name], 1e-5, name)
    if not isinstance(want, dict):
        assert_near(got, want, 1e-5, 'loss')


# ---------------------------------------------------------------------------- training and inference
TRAIN_NETWORKS = {
    'ACLAEDSR': ({'type': 'ACLAEDSR', 'num_feat': 8, 'num_block': 2, 'upscale': 2, 'res_scale': 1,
                  'insert_positions': [1, 2], 'num_keys': 3, 'attention': 'acla'},
                 {'gate_temperature': {'start': 1.0, 'end': 0.2, 'iters': None, 'mode': 'exp'},
                  'macs_penalty': {'lambda': 1.0, 'macs_size': None, 'start_iter': 0}}),
    'ENLCN': ({'type': 'ENLCN', 'num_feat': 16, 'num_block': 2, 'upscale': 2, 'res_scale': 1,
               'attention_positions': [0, 2], 'num_embed_feat': 8, 'num_samples': 16},
              {'network_opt': [{'type': 'ENLCAContrastiveLoss', 'name': 'l_cl', 'loss_weight': 1e-3,
                                'warmup_iter': 0, 'num_queries': 16}]}),
    'EARN': ({'type': 'EARN', 'num_feat': 8, 'num_block': 1, 'upscale': 2, 'reduction': 2, 'window_size': 3,
              'num_heads': 2},
             {'pixel_opt': {'type': 'EARNLoss', 'l1_weight': 1.5, 'ssim_weight': 0.6, 'perceptual_weight': 0}}),
}


@pytest.mark.parametrize('network', list(TRAIN_NETWORKS))
def test_tiny_training_through_restoration_model(network, device, tmp_path, sr_folders, one_thread):
    """RestorationModel with ``num_gpu: 1`` on CUDA (0 on the CPU): the network, the losses and the batches on
    the device, three iterations from the paired dataset, a validation, a saved and reloaded checkpoint."""
    network_g, train = TRAIN_NETWORKS[network]
    opt = tiny_sr_options('device', *sr_folders, total_iter=3, **train)
    opt['network_g'] = network_g
    opt.update(num_gpu=1 if device.type == 'cuda' else 0, is_train=True, dist=False, rank=0, world_size=1,
               auto_resume=False)
    opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path),
                       log=str(tmp_path), visualization=str(tmp_path))
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt.update(phase=phase, scale=opt['scale'])
    torch.manual_seed(0)
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    assert model.device.type == device.type
    assert all(p.device.type == device.type for p in net.parameters())
    loader = DataLoader(build_dataset(opt['datasets']['train']), batch_size=2, shuffle=False)
    for it, data in zip(range(1, 4), loader):
        model.feed_data(data)
        assert model.lq.device.type == device.type
        model.optimize_parameters(it)
        assert model.log_dict and all(np.isfinite(v) for v in model.log_dict.values()), model.log_dict
    model.validation(DataLoader(build_dataset(opt['datasets']['val']), batch_size=1), 3, None)
    assert np.isfinite(model.metric_results['psnr'])
    model.save(epoch=0, current_iter=3)
    reloaded = build_model(dict(opt, path=dict(opt['path'], pretrain_network_g=f'{tmp_path}/net_g_3.pth')))
    for (name, p), q in zip(net.state_dict().items(), reloaded.get_bare_model(reloaded.net_g).state_dict().values()):
        assert torch.equal(p.cpu(), q.cpu()), name


@pytest.mark.parametrize('family', ['ACLAEDSR-acla', 'ENLCN', 'EARN'])
def test_tiled_restore_on_device_equals_untiled(family, device, exact_fp32):
    """The public ``restore`` on the device: tiles with enough context give the untiled image."""
    torch.manual_seed(0)
    net = FAMILIES[family]().to(device).eval()
    image = (np.random.default_rng(0).random((30, 26, 3)) * 255).astype(np.uint8)
    whole = restore(net, image)
    assert whole.shape == (60, 52, 3) and whole.dtype == np.uint8
    if family != 'ENLCN':  # ENLCA is global: tiles change its keys, so no tile equals the whole image there
        tiled = restore(net, image, tile=16, tile_pad=12)
        assert np.abs(tiled.astype(int) - whole).max() <= 1


@pytest.mark.parametrize('family', [
    'ACLAEDSR-acla', 'EARN',
    'ENLCN',  # ENLCA's inference path under autocast: it failed before issue 22 (docs/gpu.md)
])
def test_half_restore_on_device(family, device):
    """``restore(..., half=True)``: float16 autocast on CUDA, bfloat16 on the CPU, close to float32."""
    torch.manual_seed(0)
    net = FAMILIES[family]().to(device).eval()
    image = (np.random.default_rng(0).random((30, 26, 3)) * 255).astype(np.uint8)
    whole = restore(net, image)
    half = restore(net, image, half=True)
    assert half.shape == whole.shape and np.abs(half.astype(int) - whole).mean() < 8
