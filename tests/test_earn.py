"""Tests of EARN (acla_basicsr/archs/earn_arch.py, earn_modules.py) and its loss (earn_loss.py)."""
import glob
import logging
import os
import os.path as osp

import acla_basicsr  # noqa: F401  (before basicsr: registers the project's classes)
import numpy as np
import pytest
import torch
import yaml
from torch.nn import functional as F

from acla_basicsr.archs.earn_arch import EARN
from acla_basicsr.archs.earn_modules import (ERAB, ASCALayer, EfficientResidualBlock, LocalSelfAttention,
                                             MaskBranch)
from acla_basicsr.losses.earn_loss import VGG19_FILENAME, EARNLoss
from acla_basicsr.errors import OptionError
from basicsr.metrics import calculate_ssim
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY

from conftest import parsed_checked_options

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = dict(num_feat=8, num_block=1, reduction=2, window_size=3, num_heads=2)


@pytest.fixture(scope='module')
def vgg19_file(tmp_path_factory):
    """A file with the ``features.*`` entries of a randomly initialised torchvision vgg19, and those features."""
    from torchvision.models.vgg import cfgs, make_layers
    torch.manual_seed(0)
    features = make_layers(cfgs['E'])
    path = str(tmp_path_factory.mktemp('vgg') / VGG19_FILENAME)
    torch.save({f'features.{k}': v for k, v in features.state_dict().items()}, path)
    return path, features


# ----------------------------------------------------------------------------------- network
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_earn_shapes(scale):
    net = EARN(upscale=scale, **TINY)
    out = net(torch.rand(2, 3, 9, 7))
    assert out.shape == (2, 3, 9 * scale, 7 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('ablation', ['use_asca', 'use_local_attention', 'use_skip_connections'])
def test_earn_ablations(ablation):
    net = EARN(upscale=2, **TINY, **{ablation: False})
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
    modules = list(net.modules())
    full = list(EARN(upscale=2, **TINY).modules())
    kind = {'use_asca': ASCALayer, 'use_local_attention': LocalSelfAttention}.get(ablation)
    if kind is not None:
        assert any(isinstance(m, kind) for m in full) and not any(isinstance(m, kind) for m in modules)
    else:
        assert not net.use_skip_connections and not any(m.use_skip for m in modules if isinstance(m, ERAB))


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_inference_in_bands_equals_training_path(scale, monkeypatch):
    """Without grad the attention and the upsampler run in bands of rows: the same output as with grad."""
    torch.manual_seed(0)
    net = EARN(upscale=scale, num_feat=8, num_block=1, reduction=2, window_size=5, num_heads=2).eval()
    x = torch.rand(2, 3, 13, 9)
    full = net(x).detach()  # grad enabled: one band everywhere
    monkeypatch.setattr(EARN, 'TAIL_BAND_ELEMENTS', 8 * scale * scale * 9 * 2 * 3)  # 3 rows a band
    monkeypatch.setattr(LocalSelfAttention, 'BAND_ELEMENTS', 2 * 2 * 25 * 9 * 2)  # 2 rows a band
    with torch.no_grad():
        torch.testing.assert_close(net(x), full, rtol=1e-5, atol=1e-5)


def test_earn_default_is_paper_size():
    net = EARN(upscale=2)
    erabs = [m for m in net.modules() if isinstance(m, ERAB)]
    assert len(erabs) == 4 and net.conv_first.out_channels == 64
    assert net(torch.rand(1, 3, 10, 10)).shape == (1, 3, 20, 20)


def test_erab_matches_eq4():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 6)
    for use_skip in (True, False):
        block = ERAB(8, reduction=2, window_size=3, num_heads=2, use_skip=use_skip).eval()
        att = block.pre(block.asca(block.conv_first(x)))
        mid = block.trunk(att) * block.mask(att) + (x if use_skip else 0)
        torch.testing.assert_close(block(x), block.post(mid))


@pytest.mark.parametrize('kwargs, key', [
    (dict(num_feat=10), 'num_feat'),
    (dict(window_size=4), 'window_size'),
    (dict(num_heads=3), 'num_heads'),
    (dict(upscale=5), 'upscale'),
    (dict(reduction=128), 'reduction'),
    (dict(num_block=0), 'num_block'),
])
def test_earn_rejects_bad_args(kwargs, key):
    with pytest.raises(ValueError, match=f'^{key}: '):
        EARN(**kwargs)


# ----------------------------------------------------------------------------------- modules
def local_attention_reference(layer, x):
    """Eq. 5 with explicit loops over pixels and window positions; out-of-image neighbours skipped."""
    n, c, h, w = x.shape
    k, heads = layer.window_size, layer.num_heads
    d, r = c // heads, k // 2
    q, key, v = layer.query(x), layer.key(x), layer.value(x)
    rel = layer.relative_embeddings()  # (C, k, k)
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            for g in range(heads):
                ch = slice(g * d, (g + 1) * d)
                logits, vals = [], []
                for a in range(i - r, i + r + 1):
                    for b in range(j - r, j + r + 1):
                        if 0 <= a < h and 0 <= b < w:
                            qij = q[:, ch, i, j]
                            logits.append((qij * key[:, ch, a, b]).sum(1) +
                                          (qij * rel[ch, a - i + r, b - j + r]).sum(1))
                            vals.append(v[:, ch, a, b])
                weights = torch.softmax(layer.scale * torch.stack(logits, 1), dim=1)  # (N, #neighbours)
                out[:, ch, i, j] = (weights[:, :, None] * torch.stack(vals, 1)).sum(1)
    return out


def local_attention_unfold_reference(layer, x):
    """The layer's first vectorised form: every k x k neighbourhood as a strided view, contracted by einsum.

    einsum copies the (N, C, H, W, k, k) views of keys and values: about 15.5 KB per pixel at
    64 channels and k = 7, the memory that the layer no longer needs.
    """
    from acla_basicsr.archs.earn_modules import local_windows
    n, c, h, w = x.shape
    k, heads = layer.window_size, layer.num_heads
    d = c // heads
    q = layer.query(x).view(n, heads, d, h, w) * layer.scale
    keys = local_windows(layer.key(x), k).view(n, heads, d, h, w, k, k)
    values = local_windows(layer.value(x), k).view(n, heads, d, h, w, k, k)
    rel = layer.relative_embeddings().view(heads, d, k, k)
    logits = torch.einsum('nhdij,nhdijab->nhijab', q, keys) + torch.einsum('nhdij,hdab->nhijab', q, rel)
    inside = local_windows(x.new_ones(1, 1, h, w), k)[0] > 0
    attn = torch.softmax(logits.masked_fill(~inside, float('-inf')).flatten(-2), dim=-1).view_as(logits)
    return torch.einsum('nhijab,nhdijab->nhdij', attn, values).reshape(n, c, h, w)


@pytest.mark.parametrize('scale_logits', [True, False])
@pytest.mark.parametrize('window_size, shape', [(3, (2, 8, 5, 6)), (5, (1, 8, 6, 4)), (1, (1, 4, 3, 3))])
def test_local_attention_matches_loop_reference(window_size, shape, scale_logits):
    torch.manual_seed(0)
    layer = LocalSelfAttention(shape[1], window_size=window_size, num_heads=2, scale_logits=scale_logits)
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), local_attention_reference(layer, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scale_logits', [True, False])
def test_local_attention_matches_unfold_reference_with_gradients(scale_logits):
    """Window 7, 4 heads, 64 channels, on a map smaller and larger than the window: outputs and gradients."""
    torch.manual_seed(0)
    layer = LocalSelfAttention(64, window_size=7, num_heads=4, scale_logits=scale_logits)
    for shape in ((2, 64, 11, 9), (1, 64, 5, 4)):
        x = torch.randn(*shape, requires_grad=True)
        out, ref = layer(x), local_attention_unfold_reference(layer, x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, *layer.parameters()], grad)
        want = torch.autograd.grad(ref, [x, *layer.parameters()], grad)
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_every_head_sees_row_and_column_offsets():
    layer = LocalSelfAttention(16, window_size=5, num_heads=4)
    rel = layer.relative_embeddings().view(4, 4, 5, 5).detach()  # (heads, d, k, k)
    for head in rel:
        assert (head[:2] == head[:2, :, :1]).all() and (head[:2].std(dim=1) > 0).all()  # rows: vary with a only
        assert (head[2:] == head[2:, :1, :]).all() and (head[2:].std(dim=2) > 0).all()  # columns: vary with b only


def attention_entropies(net, x):
    """Mean entropy (nats) of every LocalSelfAttention softmax of ``net`` on ``x``, over interior pixels."""
    entropies = []

    def hook(layer, inputs, output):
        feat = inputs[0]
        n, c, h, w = feat.shape
        k, heads, r = layer.window_size, layer.num_heads, layer.window_size // 2
        d = c // heads
        q = layer.query(feat).view(n, heads, d, h, w, 1, 1) * layer.scale
        keys = F.pad(layer.key(feat), (r, r, r, r)).unfold(2, k, 1).unfold(3, k, 1).view(n, heads, d, h, w, k, k)
        rel = layer.relative_embeddings().view(1, heads, d, 1, 1, k, k)
        p = torch.softmax((q * (keys + rel)).sum(2)[:, :, r:h - r, r:w - r].flatten(-2), dim=-1)
        entropies.append(-(p * p.clamp_min(1e-30).log()).sum(-1).mean().item())

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, LocalSelfAttention)]
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    return entropies


def test_attention_not_saturated_at_initialisation():
    """EARN x2 at its defaults, on a 48x48 crop of a photograph: every softmax keeps >= half of log(49) nats."""
    from skimage import data
    x = torch.from_numpy(data.chelsea()[100:148, 200:248].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    torch.manual_seed(0)
    entropies = attention_entropies(EARN(upscale=2).eval(), x)
    assert len(entropies) == 4 and min(entropies) >= 0.5 * np.log(49), entropies
    # Eq. 5 as printed on 0..255 inputs starts near an argmax
    torch.manual_seed(0)
    paper = attention_entropies(EARN(upscale=2, scale_logits=False, img_range=255.).eval(), x)
    assert max(paper) < 0.5 * np.log(49), paper


def test_local_attention_window_one_is_value_projection():
    layer = LocalSelfAttention(8, window_size=1, num_heads=2)
    x = torch.randn(1, 8, 4, 5)
    torch.testing.assert_close(layer(x), layer.value(x))


def test_asca_mask_per_channel_in_unit_interval():
    torch.manual_seed(0)
    layer = ASCALayer(16, reduction=4)
    x = torch.randn(3, 16, 9, 11) * 5
    mask = layer.mask(x)
    assert mask.shape == (3, 16, 1, 1)
    assert (mask > 0).all() and (mask < 1).all()
    assert mask.flatten(1).std(1).min() > 0  # channels get different scales
    torch.testing.assert_close(layer(x), x * mask)
    # reference: Eq. 2 on the fused SE-refined mean and std descriptors
    mean = x.mean((2, 3), keepdim=True)
    std = ((x - mean)**2).mean((2, 3), keepdim=True).add(layer.eps).sqrt()
    z = layer.fusion(torch.cat([layer.se_mean(mean), layer.se_std(std)], 1))
    torch.testing.assert_close(mask, torch.sigmoid(layer.se_mask[2](F.relu(layer.se_mask[0](z)))))
    # the mask depends only on the channel statistics: a spatial shuffle does not change it
    perm = torch.randperm(9 * 11)
    shuffled = x.flatten(2)[:, :, perm].view_as(x)
    torch.testing.assert_close(layer.mask(shuffled), mask)


def test_efficient_residual_block_groups():
    block = EfficientResidualBlock(16)
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.groups for m in convs] == [4, 4, 1] and [m.kernel_size for m in convs] == [(3, 3), (3, 3), (1, 1)]
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(block(x), F.relu(x + block.body(x)))


@pytest.mark.parametrize('size', [(8, 8), (7, 5)])
def test_mask_branch_shape_and_range(size):
    branch = MaskBranch(8, window_size=3, num_heads=2)
    mask = branch(torch.randn(2, 8, *size))
    assert mask.shape == (2, 8, *size) and (mask > 0).all() and (mask < 1).all()


# ----------------------------------------------------------------------------------- loss
def test_loss_zero_for_identical_images():
    loss = EARNLoss(perceptual_weight=0)
    x = torch.rand(2, 3, 24, 24)
    terms = loss(x, x.clone())
    assert list(terms) == ['l_l1', 'l_ssim']
    for value in terms.values():
        assert abs(value.item()) < 1e-6


def test_loss_values_match_reference(vgg19_file):
    vgg_path, features = vgg19_file
    torch.manual_seed(1)
    gt = torch.rand(2, 3, 32, 32)
    pred = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    loss = EARNLoss(vgg_weights_path=vgg_path, loss_weight=2.0)
    terms = loss(pred, gt)
    assert list(terms) == ['l_l1', 'l_ssim', 'l_percep']
    torch.testing.assert_close(terms['l_l1'], 2.0 * 1.5 * (pred - gt).abs().mean())
    ssims = [
        calculate_ssim(p.permute(1, 2, 0).double().numpy() * 255, g.permute(1, 2, 0).double().numpy() * 255, 0)
        for p, g in zip(pred, gt)
    ]
    assert abs(terms['l_ssim'].item() - 2.0 * 0.6 * (1 - np.mean(ssims))) < 1e-5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    relu2_2 = features[:9]  # conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1 conv2_2 relu2_2
    with torch.no_grad():
        ref = F.mse_loss(relu2_2((pred - mean) / std), relu2_2((gt - mean) / std))
    torch.testing.assert_close(terms['l_percep'], 2.0 * 0.4 * ref, rtol=1e-5, atol=1e-7)


def test_loss_reductions():
    gt = torch.rand(3, 3, 16, 16)
    pred = gt.flip(-1)
    per_image = EARNLoss(perceptual_weight=0, reduction='none')(pred, gt)
    assert all(v.shape == (3, ) for v in per_image.values())
    mean = EARNLoss(perceptual_weight=0)(pred, gt)
    total = EARNLoss(perceptual_weight=0, reduction='sum')(pred, gt)
    for name in per_image:
        torch.testing.assert_close(mean[name], per_image[name].mean())
        torch.testing.assert_close(total[name], per_image[name].sum())
    with pytest.raises(ValueError, match='Unsupported reduction mode: max'):
        EARNLoss(perceptual_weight=0, reduction='max')
    with pytest.raises(ValueError, match='^ssim_window: '):
        EARNLoss(perceptual_weight=0)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize('term', ['l1_weight', 'ssim_weight', 'perceptual_weight'])
def test_each_term_gradient_reaches_prediction(term, vgg19_file):
    vgg_path = vgg19_file[0]
    weights = {'l1_weight': 0, 'ssim_weight': 0, 'perceptual_weight': 0, term: 1.0}
    loss = EARNLoss(vgg_weights_path=vgg_path, **weights)
    gt = torch.rand(1, 3, 20, 20)
    pred = (gt + 0.1 * torch.randn_like(gt)).requires_grad_()
    terms = loss(pred, gt)
    assert len(terms) == 1
    sum(terms.values()).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())  # VGG19 stays frozen


def test_perceptual_weights_from_hub_cache_and_missing_file(tmp_path, monkeypatch, vgg19_file):
    hub = tmp_path / 'hub'
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(hub))
    with pytest.raises(OptionError, match=f'vgg_weights_path: ~ .*{VGG19_FILENAME}.*no download'):
        EARNLoss()
    missing = str(tmp_path / 'nowhere' / VGG19_FILENAME)
    with pytest.raises(OptionError, match=f'^vgg_weights_path: {missing} does not exist'):
        EARNLoss(vgg_weights_path=missing)
    (hub / 'checkpoints').mkdir(parents=True)
    os.symlink(vgg19_file[0], hub / 'checkpoints' / VGG19_FILENAME)
    assert 'l_percep' in EARNLoss()(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    bad = tmp_path / 'bad.pth'
    torch.save({'features.0.weight': torch.zeros(1)}, str(bad))
    with pytest.raises(OptionError, match=f'^vgg_weights_path: {bad} is not a state dict'):
        EARNLoss(vgg_weights_path=str(bad))


def test_perceptual_conv_layer_not_overwritten(vgg19_file):
    vgg_path, features = vgg19_file
    loss = EARNLoss(vgg_weights_path=vgg_path, vgg_layer_weights={'conv1_2': 1.0, 'relu2_1': 1.0})
    x = torch.rand(1, 3, 16, 16)
    out = loss.vgg(x)
    normed = (x - loss.vgg.mean) / loss.vgg.std
    with torch.no_grad():
        torch.testing.assert_close(out['conv1_2'], features[:3](normed))  # before relu1_2
        assert (out['conv1_2'] < 0).any()


@pytest.mark.parametrize('rounded', [False, True])
def test_ssim_equals_basicsr_metric(rounded):
    rng = np.random.default_rng(0)
    gt = rng.random((40, 36, 3))
    gt = (gt + np.roll(gt, 1, 0) + np.roll(gt, 1, 1)) / 3  # some structure
    pred = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1)
    if rounded:
        gt, pred = np.round(gt * 255) / 255, np.round(pred * 255) / 255
    expected = calculate_ssim(pred * 255, gt * 255, crop_border=0)
    loss = EARNLoss(perceptual_weight=0)
    got = loss.ssim(torch.from_numpy(pred).permute(2, 0, 1)[None].float(),
                    torch.from_numpy(gt).permute(2, 0, 1)[None].float())
    assert abs(got.item() - expected) < 1e-3
    assert abs(got.item() - expected) < 1e-5  # float32 vs float64, in fact much closer


# ----------------------------------------------------------------------------------- configs
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'options', '*', '*EARN*.yml')))


def test_configs_exist():
    names = {osp.relpath(p, ROOT) for p in CONFIGS}
    for scale in (2, 3, 4):
        assert f'options/train/EARN_SRx{scale}.yml' in names and f'options/test/EARN_SRx{scale}.yml' in names
    assert 'options/train/demo_EARN_SRx2.yml' in names


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.relpath(p, ROOT) for p in CONFIGS])
def test_config_builds(path, vgg19_file):
    with open(path) as f:
        opt = yaml.safe_load(f)
    arch = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(arch.pop('type'))(**arch)
    assert arch['upscale'] == opt['scale']
    assert net(torch.rand(1, 3, 12, 12)).shape == (1, 3, 12 * opt['scale'], 12 * opt['scale'])
    if 'train' in opt:
        assert opt['datasets']['train']['gt_size'] % opt['scale'] == 0
        loss_opt = dict(opt['train']['pixel_opt'])
        if loss_opt.get('perceptual_weight', 0.4) > 0:  # full configs: give the loss a local VGG19 file
            loss_opt['vgg_weights_path'] = vgg19_file[0]
        loss = LOSS_REGISTRY.get(loss_opt.pop('type'))(**loss_opt)
        assert isinstance(loss, EARNLoss)


def test_demo_config_passes_check_options():
    opt = parsed_checked_options('options/train/demo_EARN_SRx2.yml')
    assert opt['network_g']['type'] in ARCH_REGISTRY and opt['model_type'] == 'RestorationModel'



def test_loss_check_options_without_building(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    EARNLoss.check_options({'type': 'EARNLoss', 'perceptual_weight': 0})
    with pytest.raises(OptionError, match=f'^vgg_weights_path: ~ .*{VGG19_FILENAME}'):
        EARNLoss.check_options({'type': 'EARNLoss'})
    with pytest.raises(OptionError, match='^reduction: max'):
        EARNLoss.check_options({'type': 'EARNLoss', 'reduction': 'max', 'perceptual_weight': 0})
    path = tmp_path / VGG19_FILENAME
    path.write_bytes(b'')  # present: the file is read only when the loss is built
    EARNLoss.check_options({'type': 'EARNLoss', 'vgg_weights_path': str(path)})


def test_bad_network_option_is_one_line():
    from acla_basicsr.config.checks import check_options
    with open(osp.join(ROOT, 'options', 'train', 'demo_EARN_SRx2.yml')) as f:
        opt = yaml.safe_load(f)
    opt['network_g']['window_size'] = 4
    with pytest.raises(OptionError, match='^network_g: window_size: 4 must be an odd positive integer'):
        check_options(opt)


def test_restoration_model_logs_each_term():
    from basicsr.models import build_model
    opt = {
        'name': 'test_earn', 'model_type': 'RestorationModel', 'scale': 2, 'num_gpu': 0, 'is_train': True,
        'dist': False, 'rank': 0, 'world_size': 1,
        'network_g': dict(type='EARN', upscale=2, **TINY),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.999], 'eps': 1e-8},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5}, 'total_iter': 10,
            'pixel_opt': {'type': 'EARNLoss', 'perceptual_weight': 0}
        },
    }
    try:
        model = build_model(opt)
        model.feed_data({'lq': torch.rand(2, 3, 8, 8), 'gt': torch.rand(2, 3, 16, 16)})
        before = [p.detach().clone() for p in model.net_g.parameters()]
        model.optimize_parameters(1)
    finally:  # building the model set up basicsr's logger without its file; forget it, as check_options does
        from basicsr.utils import logger as basicsr_logger
        if basicsr_logger.initialized_logger.pop('basicsr', None):
            logging.getLogger('basicsr').handlers.clear()
    assert set(model.log_dict) == {'l_l1', 'l_ssim'}
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))


@pytest.mark.slow
def test_full_network_restores_512_lr_image_within_1_5_gib():
    """options/train/EARN_SRx2.yml's network, one 512x512 LR image untiled, no grad: the whole process peaks
    below 1.5 GiB (VmHWM, a fresh process; about 0.8 GiB of it is import torch/basicsr)."""
    import subprocess
    import sys
    if not osp.isfile('/proc/self/status'):
        pytest.skip('peak resident memory is read from /proc (Linux)')
    result = subprocess.run([sys.executable, osp.join(ROOT, 'benchmarks', 'bench_earn.py'), '--memory-case',
                             'earn_infer', '--memory-size', '512', '--threads', '1'],
                            capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-2000:]
    before, peak = map(float, result.stdout.split()[-2:])
    assert before > 0 and peak <= 1536, (before, peak)


@pytest.mark.parametrize('h, w, k', [(5, 7, 7), (13, 9, 3), (1, 1, 7), (30, 31, 7)])
def test_window_mask_equals_unfolded_windows_of_ones(h, w, k):
    """window_mask (index arithmetic, exportable to ONNX at any size) marks the neighbours inside the image
    exactly as the unfolded windows of a padded map of ones do."""
    x = torch.zeros(2, 4, h, w)
    from acla_basicsr.archs.earn_modules import local_windows, window_mask
    unfolded = local_windows(x.new_ones(1, 1, h, w), k)[0, 0].permute(2, 3, 0, 1).reshape(k * k, h, w) > 0
    assert torch.equal(window_mask(x, k), unfolded)
