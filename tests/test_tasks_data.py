"""Restoration-task data: degradations, DegradedImageDataset, data-preparation scripts, task configs."""
import glob
import importlib.util
import os
import shutil
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml

import acla_basicsr  # noqa: F401  (registers the project's classes; makes basicsr importable)
from acla_basicsr.data.degradations import (BAYER_PATTERNS, DEMOSAIC_REFERENCES, add_gaussian_noise,
                                            bilinear_demosaic, jpeg_compress, mosaic)
from acla_basicsr.data.degraded_image_dataset import DegradedImageDataset
from acla_basicsr.data.prepare_util import PrepareError, bicubic_downscale, verify_lmdb
from acla_basicsr.errors import OptionError
from basicsr.utils import bgr2ycbcr
from basicsr.utils.registry import ARCH_REGISTRY

from conftest import parsed_checked_options

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
BGR = {'B': 0, 'G': 1, 'R': 2}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smooth_image(h, w, seed=0, channels=3):
    """A smooth uint8 BGR test image (natural-image-like, so that demosaicing is well posed)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.random((h // 8 + 2, w // 8 + 2, channels)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    img = np.clip(img * 200 + 30, 0, 255).astype(np.uint8)
    return img.reshape(h, w, channels)


def write_folder(folder, images):
    os.makedirs(folder, exist_ok=True)
    for name, img in images.items():
        assert cv2.imwrite(osp.join(folder, name), img)
    return str(folder)


def dataset_opt(root, degradation, phase='val', backend='disk', **extra):
    return dict(name='t', phase=phase, scale=1, dataroot_gt=root, io_backend={'type': backend},
                degradation=degradation, **extra)


# ---------------------------------------------------------------------------- degradations
def test_gaussian_noise_has_requested_std_and_zero_mean():
    img = np.full((256, 256, 3), 0.5, np.float32)
    for sigma in (10, 30, 50):
        noise = add_gaussian_noise(img, sigma, np.random.default_rng(sigma)) - img
        assert noise.dtype == np.float32
        assert abs(noise.std() * 255 / sigma - 1) < 0.01
        assert abs(noise.mean()) < 4 * (sigma / 255) / np.sqrt(noise.size)
    assert np.array_equal(add_gaussian_noise(img, 0, np.random.default_rng(0)), img)


def test_jpeg_equals_opencv_round_trip():
    for channels in (3, 1):
        img8 = smooth_image(40, 56, seed=channels, channels=channels)
        for quality in (10, 40, 95):
            ok, buf = cv2.imencode('.jpg', img8 if channels == 3 else img8[..., 0],
                                   [cv2.IMWRITE_JPEG_QUALITY, quality])
            expected = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).reshape(img8.shape)
            out = jpeg_compress(img8.astype(np.float32) / 255., quality)
            assert out.shape == img8.shape and out.dtype == np.float32
            np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), expected)
            assert not np.array_equal(expected, img8)


@pytest.mark.parametrize('pattern', BAYER_PATTERNS)
def test_mosaic_keeps_one_channel_per_pixel_in_the_pattern(pattern):
    img = smooth_image(6, 8).astype(np.float32) / 255.
    plane = mosaic(img, pattern, channels=1)
    sparse = mosaic(img, pattern, channels=3)
    assert plane.shape == (6, 8, 1) and sparse.shape == (6, 8, 3)
    for y in range(6):
        for x in range(8):
            kept = BGR[pattern[2 * (y % 2) + x % 2]]
            assert plane[y, x, 0] == img[y, x, kept]
            assert sparse[y, x, kept] == img[y, x, kept]
            assert np.count_nonzero(sparse[y, x]) == 1
    with pytest.raises(ValueError, match='pattern'):
        mosaic(img, 'RGBG')


@pytest.mark.parametrize('pattern', BAYER_PATTERNS)
def test_bilinear_demosaic_uses_the_right_opencv_pattern(pattern):
    img = smooth_image(64, 64, seed=3).astype(np.float32) / 255.
    gt = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1)[None]
    errors = {}
    for channels in (1, 3):
        lq = torch.from_numpy(mosaic(img, pattern, channels)[..., ::-1].copy()).permute(2, 0, 1)[None]
        for other in BAYER_PATTERNS:
            out = DEMOSAIC_REFERENCES[f'demosaic_{other}'](lq, 1)
            assert out.shape == gt.shape
            errors[channels, other] = (out - gt)[..., 4:-4, 4:-4].abs().mean().item()
        assert errors[channels, pattern] < 0.01
        assert errors[channels, pattern] * 5 < min(v for (c, p), v in errors.items() if c == channels and p != pattern)
    assert torch.equal(bilinear_demosaic(lq, pattern), DEMOSAIC_REFERENCES[f'demosaic_{pattern}'](lq, 1))


# ---------------------------------------------------------------------------- dataset
def test_validation_degradation_is_identical_across_runs_and_differs_across_images(tmp_path):
    img = smooth_image(24, 32)
    root = write_folder(tmp_path / 'gt', {'a.png': img, 'b.png': img})
    opt = dataset_opt(root, {'type': 'gaussian_noise', 'sigma': 30})
    first, second = DegradedImageDataset(dict(opt)), DegradedImageDataset(dict(opt))
    a1, b1, a2 = first[0], first[1], second[0]
    assert torch.equal(a1['lq'], a2['lq']) and torch.equal(a1['lq'], first[0]['lq'])
    assert torch.equal(a1['gt'], b1['gt']) and not torch.equal(a1['lq'], b1['lq'])
    assert a1['lq_path'] == a1['gt_path'] == osp.join(root, 'a.png')
    # training draws fresh noise every time
    train = DegradedImageDataset(dataset_opt(root, {'type': 'gaussian_noise', 'sigma': 30}, phase='train',
                                             gt_size=16))
    x, y = train[0], train[0]
    assert x['lq'].shape == x['gt'].shape == (3, 16, 16)
    assert not torch.allclose(x['lq'] - x['gt'], y['lq'] - y['gt'])


def test_dataset_colors_and_mosaic_shapes(tmp_path):
    color, gray = smooth_image(16, 20, seed=1), smooth_image(16, 20, seed=2, channels=1)[..., 0]
    root = write_folder(tmp_path / 'gt', {'c.png': color, 'g.bmp': gray})
    y = DegradedImageDataset(dataset_opt(root, {'type': 'jpeg', 'quality': 20}, color='y'))
    expected_y = np.round(bgr2ycbcr(color.astype(np.float32) / 255., y_only=True) * 255) / 255
    np.testing.assert_allclose(y[0]['gt'][0].numpy(), expected_y, atol=1e-6)
    np.testing.assert_allclose(y[1]['gt'][0].numpy(), gray / 255., atol=1e-6)  # gray stays as it is
    assert y[1]['lq'].shape == (1, 16, 20)
    rgb = DegradedImageDataset(dataset_opt(root, {'type': 'mosaic'}))
    sample = rgb[1]
    assert sample['gt'].shape == (3, 16, 20) and sample['lq'].shape == (1, 16, 20)
    assert sample['lq'][0, 0, 0] == sample['gt'][0, 0, 0]  # RGGB: red at the top-left pixel, RGB order
    sparse = DegradedImageDataset(dataset_opt(root, {'type': 'mosaic', 'pattern': 'GBRG', 'channels': 3}))[0]
    assert sparse['lq'].shape == (3, 16, 20) and sparse['lq'][1, 0, 0] == sparse['gt'][1, 0, 0]
    assert sparse['lq'][0, 1, 0] == sparse['gt'][0, 1, 0] and sparse['lq'][2, 1, 0] == 0  # R at (1, 0)


@pytest.mark.parametrize('change, message', [
    ({'dataroot_gt': None}, 'dataroot_gt: missing'),
    ({'degradation': {'type': 'blur'}}, "degradation.type: unknown degradation 'blur'"),
    ({'degradation': {'type': 'gaussian_noise', 'sigma': -1}}, 'degradation.sigma: -1'),
    ({'degradation': {'type': 'gaussian_noise', 'quality': 10}}, "degradation: unknown option 'quality'; known: sigma."),
    ({'degradation': {'type': 'jpeg', 'quality': 0}}, 'degradation.quality: 0 is out of range; give an integer >= 1 and <= 100.'),
    ({'degradation': {'type': 'jpeg', 'quality': 101}}, 'degradation.quality: 101'),
    ({'degradation': {'type': 'mosaic', 'pattern': 'RGBG'}}, "degradation.pattern: expected 'RGGB', 'BGGR', 'GRBG' or 'GBRG', got 'RGBG'."),
    ({'degradation': {'type': 'mosaic', 'channels': 2}}, 'degradation.channels: 2'),
    ({'color': 'lab'}, "color: expected 'rgb', 'y' or 'gray', got 'lab'."),
    ({'degradation': {'type': 'mosaic'}, 'color': 'y'}, 'needs colour images'),
    ({'phase': 'train'}, 'gt_size: missing; give an integer >= 1'),
    ({'scale': 2}, 'use scale: 1'),
    ({'io_backend': {'type': 'http'}}, "io_backend.type: 'http'"),
    ({'dataroot_gt': 'EMPTY'}, 'holds no images'),
])
def test_check_options_gives_one_clear_line(tmp_path, change, message):
    root = write_folder(tmp_path / 'gt', {'a.png': smooth_image(16, 16)})
    os.makedirs(tmp_path / 'empty')
    opt = dataset_opt(root, {'type': 'gaussian_noise', 'sigma': 25})
    opt.update(change)
    if opt['dataroot_gt'] == 'EMPTY':
        opt['dataroot_gt'] = str(tmp_path / 'empty')
    with pytest.raises(OptionError, match=message) as error:
        DegradedImageDataset.check_options(opt)
    assert '\n' not in str(error.value)
    with pytest.raises(OptionError):
        DegradedImageDataset(opt)


def test_corrupt_image_names_the_file(tmp_path):
    root = write_folder(tmp_path / 'gt', {'a.png': smooth_image(16, 16)})
    with open(osp.join(root, 'b.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n truncated')
    dataset = DegradedImageDataset(dataset_opt(root, {'type': 'jpeg', 'quality': 10}))
    assert dataset[0]['gt'].shape == (3, 16, 16)
    with pytest.raises(OptionError, match='b.png: cannot decode'):
        dataset[1]


# ---------------------------------------------------------------------------- LMDB preparation
@pytest.fixture
def hr_folder(tmp_path):
    return write_folder(tmp_path / 'hr', {'im0.png': smooth_image(50, 70, 0), 'im1.png': smooth_image(40, 40, 1)})


def prepare_tiny(hr_folder, out, scales=(2, 4)):
    module = load_script('prepare_sr_lmdb')
    return module, module.prepare(hr_folder, str(out), 'T', list(scales), crop_size=32, step=16, thresh_size=0)


def test_lmdb_round_trip(tmp_path, hr_folder):
    _, count = prepare_tiny(hr_folder, tmp_path / 'out')
    # 50x70: rows at 0, 16, 18; columns at 0, 16, 32, 38 -> 12; 40x40: 0, 8 -> 4
    assert count == 16
    hr_lmdb = str(tmp_path / 'out' / 'T_HR_sub.lmdb')
    opt = dataset_opt(hr_lmdb, {'type': 'gaussian_noise', 'sigma': 0}, backend='lmdb')
    dataset = DegradedImageDataset(opt)
    assert len(dataset) == 16 and dataset.paths[0] == 'im0_s001'
    source = cv2.imread(osp.join(hr_folder, 'im0.png'))
    second = dataset[1]['gt'].numpy().transpose(1, 2, 0)[..., ::-1]  # im0_s002: top 0, left 16
    np.testing.assert_allclose(second * 255, source[0:32, 16:48], atol=1e-3)
    for scale in (2, 4):
        entries = verify_lmdb(str(tmp_path / 'out' / f'T_LR_bicubic_X{scale}_sub.lmdb'))
        assert entries[1] == ('im0_s002', (32 // scale, 32 // scale, 3))
        lr = cv2.imread(str(tmp_path / 'out' / 'T_LR_bicubic' / f'X{scale}_sub' / 'im0_s002.png'))
        np.testing.assert_array_equal(lr, bicubic_downscale(source[0:32, 16:48], scale))


def test_prepare_sr_lmdb_resumes_and_is_idempotent(tmp_path, hr_folder):
    out = tmp_path / 'out'
    module, _ = prepare_tiny(hr_folder, out)
    files = sorted(glob.glob(str(out / '**' / '*.png'), recursive=True))
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    # an interrupted run: one sub-image, one LR image and one LMDB missing, a stale partial LMDB
    os.remove(out / 'T_HR_sub' / 'im1_s003.png')
    os.remove(out / 'T_LR_bicubic' / 'X2_sub' / 'im0_s005.png')
    shutil.rmtree(out / 'T_LR_bicubic_X4_sub.lmdb')
    os.makedirs(out / 'T_LR_bicubic_X4_sub.partial.lmdb')
    assert module.prepare(hr_folder, str(out), 'T', [2, 4], crop_size=32, step=16, thresh_size=0) == 16
    rewritten = {f for f in files if os.stat(f).st_mtime_ns != stamps[f]}
    assert rewritten == {str(out / 'T_HR_sub' / 'im1_s003.png'), str(out / 'T_LR_bicubic' / 'X2_sub' / 'im0_s005.png')}
    assert not osp.exists(out / 'T_LR_bicubic_X4_sub.partial.lmdb')
    assert len(verify_lmdb(str(out / 'T_LR_bicubic_X4_sub.lmdb'))) == 16
    assert not glob.glob(str(out / '**' / '.tmp-*'), recursive=True)


def test_prepare_sr_lmdb_stops_on_a_corrupt_image(tmp_path, hr_folder):
    with open(osp.join(hr_folder, 'bad.png'), 'wb') as f:
        f.write(b'not an image')
    with pytest.raises(PrepareError, match='bad.png: cannot read'):
        prepare_tiny(hr_folder, tmp_path / 'out')
    with pytest.raises(SystemExit, match='bad.png'):
        load_script('prepare_sr_lmdb').main(['--input', hr_folder, '--output', str(tmp_path / 'o2'), '--crop-size',
                                             '32', '--step', '16', '--scales', '2', '--workers', '1'])


def test_missing_meta_info_is_a_clear_error(tmp_path, hr_folder):
    prepare_tiny(hr_folder, tmp_path / 'out', scales=())
    hr_lmdb = str(tmp_path / 'out' / 'T_HR_sub.lmdb')
    os.remove(osp.join(hr_lmdb, 'meta_info.txt'))
    with pytest.raises(OptionError, match='has no meta_info.txt'):
        DegradedImageDataset(dataset_opt(hr_lmdb, {'type': 'jpeg'}, backend='lmdb'))
    with pytest.raises(PrepareError, match='no meta_info.txt'):
        verify_lmdb(hr_lmdb)


def test_prepare_benchmark(tmp_path):
    sets = tmp_path / 'sets'
    write_folder(sets / 'Tiny', {'color.png': smooth_image(25, 38, 4)})
    write_folder(sets / 'Gray', {'g.bmp': smooth_image(30, 26, 5, channels=1)[..., 0]})
    module = load_script('prepare_benchmark')
    args = ['--input', str(sets), '--output', str(tmp_path / 'out'), '--scales', '2', '3']
    module.main(args)
    out = tmp_path / 'out'
    assert cv2.imread(str(out / 'Tiny' / 'HR' / 'color.png')).shape == (24, 36, 3)
    assert cv2.imread(str(out / 'Tiny' / 'LR_bicubic' / 'X3' / 'color.png')).shape == (8, 12, 3)
    np.testing.assert_array_equal(cv2.imread(str(out / 'Tiny' / 'GT' / 'color.png')), smooth_image(25, 38, 4))
    assert cv2.imread(str(out / 'Gray' / 'GT' / 'g.png'), cv2.IMREAD_UNCHANGED).shape == (30, 26)
    stamps = {f: os.stat(f).st_mtime_ns for f in glob.glob(str(out / '**' / '*.png'), recursive=True)}
    assert len(stamps) == 8
    module.main(args)  # a rerun writes nothing
    assert stamps == {f: os.stat(f).st_mtime_ns for f in glob.glob(str(out / '**' / '*.png'), recursive=True)}
    with open(sets / 'Tiny' / 'broken.png', 'wb') as f:
        f.write(b'garbage')
    with pytest.raises(SystemExit, match='broken.png'):
        module.main(args)


# ---------------------------------------------------------------------------- configs
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'options', '*', '*.yml')))
TASK_CONFIGS = [c for c in CONFIGS if osp.basename(c).startswith(('ACLA_EDSR_DN', 'ACLA_EDSR_CAR', 'ACLA_EDSR_DM'))]
DEMO_CONFIGS = [c for c in CONFIGS if osp.basename(c).startswith(('demo_EDSR_DN', 'demo_EDSR_CAR', 'demo_EDSR_DM'))]


def test_there_are_configs_for_every_task():
    names = {osp.relpath(c, osp.join(ROOT, 'options')) for c in TASK_CONFIGS + DEMO_CONFIGS}
    for task in ['DN_sigma10', 'DN_sigma30', 'DN_sigma50', 'DN_sigma70', 'CAR_q10', 'CAR_q20', 'CAR_q30', 'CAR_q40',
                 'DM']:
        assert {f'train/ACLA_EDSR_{task}.yml', f'test/ACLA_EDSR_{task}.yml'} <= names
    assert {'train/demo_EDSR_DNsigma30.yml', 'train/demo_EDSR_CARq10.yml', 'train/demo_EDSR_DM.yml'} <= names


@pytest.mark.parametrize('config', TASK_CONFIGS, ids=lambda c: osp.relpath(c, ROOT))
def test_task_configs_datasets_and_network(config):
    with open(config) as f:
        opt = yaml.safe_load(f)
    positions = {'DN': [2, 7, 9, 13, 15], 'CAR': [2, 7, 10, 13, 14], 'DM': [2, 5, 11, 14, 16]}
    task = osp.basename(config)[len('ACLA_EDSR_'):].split('_')[0].split('.')[0]
    assert opt['network_g']['insert_positions'] == positions[task]
    for phase, dataset in opt['datasets'].items():
        DegradedImageDataset.check_degradation_options({**dataset, 'phase': phase.split('_')[0], 'scale': 1})
        assert dataset['color'] == ('y' if task == 'CAR' else 'rgb')
    assert opt['val']['metrics']['psnr']['test_y_channel'] == (task == 'CAR')
    if 'ACLAEDSR' not in ARCH_REGISTRY:
        pytest.skip('ACLAEDSR (issue 3) is not registered in this branch; the network cannot be built yet.')
    arch = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(arch.pop('type'))(**arch)
    channels = opt['network_g']['num_in_ch']
    with torch.no_grad():
        assert net(torch.rand(1, channels, 16, 16)).shape == (1, opt['network_g']['num_out_ch'], 16, 16)


@pytest.mark.parametrize('config', DEMO_CONFIGS, ids=osp.basename)
def test_demo_configs_pass_check_options_and_train_one_batch(config):
    from basicsr.data import build_dataset
    from basicsr.models import build_model
    opt = parsed_checked_options(config)
    train_set = build_dataset(opt['datasets']['train'])
    batch = {k: torch.stack([train_set[i][k] for i in range(2)]) for k in ('lq', 'gt')}
    assert batch['gt'].shape == (2, 3, 48, 48)
    model = build_model(opt)
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert np.isfinite(model.log_dict['l_pix'])
    val = build_dataset(opt['datasets']['val'])[0]
    assert val['gt'].shape[0] == 3 and val['lq'].shape == val['gt'].shape
