"""An image that becomes undecodable mid-run: one line naming it (exit 2), or skipped and logged (issue 24 item 4)."""
import glob
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_sr_options, write_options, write_sr_folders
from acla_basicsr.data.bad_images import CheckedDataset
from acla_basicsr.errors import DataError, OptionError


def corrupt_keeping_header(path):
    """Cut a PNG where its pixels begin: PIL still reads its size (the pre-run check), cv2 cannot decode it."""
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:content.index(b'IDAT') + 4])


def paired_dataset(hr_dir, lr_dir, phase='train'):
    from basicsr.data.paired_image_dataset import PairedImageDataset
    return PairedImageDataset({'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': hr_dir,
                               'dataroot_lq': lr_dir, 'io_backend': {'type': 'disk'}, 'phase': phase, 'scale': 2,
                               'gt_size': 32, 'use_hflip': False, 'use_rot': False})


def test_corrupt_header_kept_passes_pil_not_cv2(tmp_path):
    import cv2
    from PIL import Image
    hr_dir, _ = write_sr_folders(str(tmp_path), num=1)
    path = osp.join(hr_dir, 'img00.png')
    corrupt_keeping_header(path)
    with Image.open(path) as img:
        assert img.size == (48, 48)
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED) is None


def test_undecodable_image_is_one_data_error_naming_it(tmp_path):
    hr_dir, lr_dir = write_sr_folders(str(tmp_path), num=3)
    corrupt_keeping_header(osp.join(lr_dir, 'img01.png'))
    dataset = CheckedDataset(paired_dataset(hr_dir, lr_dir), 'datasets.train')
    assert len(dataset) == 3 and dataset.opt['name'] == 'tiny'  # the wrapped dataset's attributes
    assert dataset[[i for i, v in enumerate(dataset.paths) if v['lq_path'].endswith('img00.png')][0]]['gt'].shape \
        == (3, 32, 32)
    with pytest.raises(DataError) as caught:
        dataset[[i for i, v in enumerate(dataset.paths) if v['lq_path'].endswith('img01.png')][0]]
    message = str(caught.value)
    assert '\n' not in message and message.startswith('datasets.train: image img01.png (')
    assert osp.join(lr_dir, 'img01.png') in message and 'cannot decode it' in message
    assert 'datasets.train.skip_bad_images: true' in message
    assert caught.value.__context__ is None  # no basicsr traceback chained to it


def test_skip_bad_images_returns_the_next_sample_and_logs(tmp_path, monkeypatch):
    import basicsr.utils
    hr_dir, lr_dir = write_sr_folders(str(tmp_path), num=3)
    warnings = []
    monkeypatch.setattr(basicsr.utils, 'get_root_logger', lambda: type('L', (), {'warning': warnings.append})())
    dataset = CheckedDataset(paired_dataset(hr_dir, lr_dir), 'datasets.train', skip=True)
    os.remove(osp.join(hr_dir, 'img02.png'))  # removed mid-run: cannot read it
    bad = [i for i, v in enumerate(dataset.paths) if v['gt_path'].endswith('img02.png')][0]  # basicsr: scandir order
    sample = dataset[bad]
    assert sample['gt_path'] == dataset.paths[(bad + 1) % 3]['gt_path']  # the next index (wrapping around)
    assert len(warnings) == 1 and 'img02.png' in warnings[0] and 'cannot read it (FileNotFoundError' in warnings[0]
    assert 'skip_bad_images' in warnings[0]


def test_other_failures_are_raised_as_they_were(tmp_path):
    hr_dir, lr_dir = write_sr_folders(str(tmp_path), num=2)
    inner = paired_dataset(hr_dir, lr_dir)
    inner.opt['gt_size'] = 400  # larger than the images: basicsr's own ValueError, not a bad image
    with pytest.raises(ValueError, match='smaller than patch size'):
        CheckedDataset(inner, 'datasets.train', skip=True)[0]


def test_degraded_dataset_image_in_an_lmdb(tmp_path):
    """DegradedImageDataset's own decode error becomes the one line too; an LMDB key names its LMDB."""
    import lmdb
    from acla_basicsr.data.degraded_image_dataset import DegradedImageDataset
    hr_dir, _ = write_sr_folders(str(tmp_path), num=2)
    db_path = str(tmp_path / 'HR.lmdb')
    env = lmdb.open(db_path, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b'img00', open(osp.join(hr_dir, 'img00.png'), 'rb').read())
        txn.put(b'img01', b'\x89PNG\r\n\x1a\n not an image')
    env.close()
    with open(osp.join(db_path, 'meta_info.txt'), 'w') as f:
        f.write('img00.png (48,48,3) 1\nimg01.png (48,48,3) 1\n')
    inner = DegradedImageDataset({'name': 'noise', 'type': 'DegradedImageDataset', 'dataroot_gt': db_path,
                                  'io_backend': {'type': 'lmdb'}, 'phase': 'train', 'scale': 1, 'gt_size': 16,
                                  'degradation': {'type': 'gaussian_noise', 'sigma': 25}})
    dataset = CheckedDataset(inner, 'datasets.train')
    assert dataset[0]['gt'].shape == (3, 16, 16)
    with pytest.raises(DataError, match=r'^datasets.train: image img01 \(key of the LMDB .*HR.lmdb\): cannot decode'):
        dataset[1]


def test_data_error_from_a_worker_process_is_one_line(tmp_path):
    """torch re-raises a worker's exception as the same type built from the worker's traceback."""
    hr_dir, lr_dir = write_sr_folders(str(tmp_path), num=2)
    corrupt_keeping_header(osp.join(hr_dir, 'img01.png'))
    dataset = CheckedDataset(paired_dataset(hr_dir, lr_dir), 'datasets.train')
    batches = iter(torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1))
    with pytest.raises(DataError) as caught:
        next(batches)
    del batches  # the worker process ends now, not at the test's teardown
    assert 'worker process' in caught.value.args[0]  # torch's wrapping...
    message = str(caught.value)  # ...and the one line back
    assert '\n' not in message and message.startswith('datasets.train: image img01.png (')
    assert message.endswith('skip_bad_images: true to skip such images with a warning.')


def test_skip_bad_images_is_declared_and_refused_outside_training(tmp_path):
    from acla_basicsr.config.schema import check_schema
    from acla_basicsr.data.checks import check_dataset
    hr_dir, lr_dir = write_sr_folders(str(tmp_path), num=2)
    opt = tiny_sr_options('x', hr_dir, lr_dir)
    opt['datasets']['train']['skip_bad_images'] = True
    check_schema(opt, is_train=True)
    opt['datasets']['train']['skip_bad_images'] = 'maybe'
    with pytest.raises(OptionError, match='datasets.train.skip_bad_images'):
        check_schema(opt, is_train=True)
    val = dict(opt['datasets']['val'], phase='val', skip_bad_images=True)
    with pytest.raises(OptionError, match='^datasets.val.skip_bad_images: only training sets skip images'):
        check_dataset(val, 'val', 2)


# ------------------------------------------------------------------ through train.py
_CORRUPT_AFTER_STATE_2 = r'''
import sys
sys.path.insert(0, sys.argv[1])
import acla_basicsr.fileio as fileio
write = fileio.atomic_write
bad = sys.argv[3]

def write_then_corrupt(path, *args, **kwargs):  # the image is damaged once the state of iteration 2 is saved
    result = write(path, *args, **kwargs)
    if str(path).endswith('2.state'):
        with open(bad, 'rb') as f:
            content = f.read()
        with open(bad, 'wb') as f:
            f.write(content[:content.index(b'IDAT') + 4])
    return result

fileio.atomic_write = write_then_corrupt
sys.argv = ['train.py', '-opt', sys.argv[2]]
from acla_basicsr.cli.launch import main
main('train', sys.path[0])
'''


def _train_corrupting(tmp_path, experiment_name, workers, **train_options):
    """Train 12 iterations (two epochs of 12 images) while img11.png (GT) is damaged after iteration 2."""
    hr_dir, lr_dir = write_sr_folders(str(tmp_path / 'data'), num=12)
    val_hr, val_lr = write_sr_folders(str(tmp_path / 'val'), num=2, seed=1)
    opt = tiny_sr_options(experiment_name, hr_dir, lr_dir, total_iter=12)
    opt['datasets']['val'].update(dataroot_gt=val_hr, dataroot_lq=val_lr)
    opt['datasets']['train'].update(num_worker_per_gpu=workers, **train_options)
    bad = osp.join(hr_dir, 'img11.png')
    run = subprocess.run([sys.executable, '-c', _CORRUPT_AFTER_STATE_2, ROOT,
                          write_options(opt, tmp_path / 'train.yml'), bad],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    return run, bad, osp.join(ROOT, 'experiments', experiment_name)


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 1])
def test_image_damaged_mid_run_ends_it_with_one_line(tmp_path, experiment_name, workers):
    run, bad, exp = _train_corrupting(tmp_path, experiment_name, workers)
    lines = [v for v in run.stderr.splitlines() if v.startswith('error: ')]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-3000:]
    assert 'Traceback' not in run.stderr, run.stderr[-3000:]
    assert lines[0].startswith(f'error: datasets.train: image img11.png ({bad}): cannot decode it'), lines[0]
    assert 'set datasets.train.skip_bad_images: true' in lines[0] and 'resume it with --auto_resume' in lines[0]
    states = sorted(os.listdir(osp.join(exp, 'training_states')))
    assert states and '2.state' in states and not [v for v in states if v.startswith('.')]  # nothing half-written
    last = max(states, key=lambda v: int(v.split('.')[0]))
    state = torch.load(osp.join(exp, 'training_states', last), map_location='cpu', weights_only=False)
    assert state['iter'] == int(last.split('.')[0]) < 12
    assert 'params' in torch.load(osp.join(exp, 'models', f'net_g_{state["iter"]}.pth'), map_location='cpu',
                                  weights_only=True)


@pytest.mark.slow
def test_image_damaged_mid_run_is_skipped_and_logged_with_skip_bad_images(tmp_path, experiment_name):
    run, bad, exp = _train_corrupting(tmp_path, experiment_name, 1, skip_bad_images=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert osp.isfile(osp.join(exp, 'models', 'net_g_12.pth'))
    log = open(glob.glob(osp.join(exp, 'train_*.log'))[-1]).read()
    warnings = [v for v in log.splitlines() if 'WARNING' in v and 'skipped image img11.png' in v]
    assert warnings and bad in warnings[0] and 'cannot decode it' in warnings[0], log[-3000:]
