"""Data checks that run before the experiment folder exists: patch size, batch size, LMDB meta_info, scale."""
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from acla_basicsr.config.checks import check_options
from acla_basicsr.errors import OptionError
from conftest import ROOT, run_entry, tiny_sr_options, write_options, write_sr_folders


def parsed(opt):
    """What basicsr's parse_options adds to an options dict, for calling check_options in process."""
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt.update(phase=phase.split('_')[0], scale=opt['scale'])
    return opt


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    return write_sr_folders(str(tmp_path_factory.mktemp('data')), num=6, size=48)


def test_gt_size_larger_than_the_training_images(folders):
    opt = parsed(tiny_sr_options('c', *folders))
    opt['datasets']['train']['gt_size'] = 64
    with pytest.raises(OptionError, match=r'^datasets.train.gt_size: 64 is larger than the smallest training image '
                                          r'\(48 pixels on a side\); use at most 48.$'):
        check_options(opt)
    opt['datasets']['train']['gt_size'] = 48
    check_options(opt)


def test_batch_larger_than_the_data(folders):
    opt = parsed(tiny_sr_options('c', *folders))
    opt['datasets']['train']['batch_size_per_gpu'] = 8
    with pytest.raises(OptionError, match=r'^datasets.train.batch_size_per_gpu: 8 \(x 1 processes\) is more than '
                                          r'the 6 images x dataset_enlarge_ratio 1, .* at least 2.$'):
        check_options(opt)
    opt['datasets']['train']['dataset_enlarge_ratio'] = 2
    check_options(opt)


def test_scale_of_every_pair_is_checked(tmp_path):
    hr_dir, lr_dir = write_sr_folders(str(tmp_path / 'data'), num=10, size=32)
    last = osp.join(lr_dir, 'img09.png')  # beyond the pairs that are decoded
    cv2.imwrite(last, np.zeros((11, 11, 3), np.uint8))
    opt = parsed(tiny_sr_options('c', hr_dir, lr_dir))
    with pytest.raises(OptionError, match=r'^datasets.train: image img09 is 32x32 \(GT\) and 11x11 \(LQ\), which is '
                                          r'not scale 2; set scale'):
        check_options(opt)


def test_lmdb_without_meta_info(tmp_path, folders):
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    lmdbs = []
    for folder, name in zip(folders, ('HR.lmdb', 'LR.lmdb')):
        names = sorted(os.listdir(folder))
        path = str(tmp_path / name)
        make_lmdb_from_imgs(folder, path, names, [osp.splitext(v)[0] for v in names])
        lmdbs.append(path)
    opt = parsed(tiny_sr_options('c', *lmdbs))
    opt['datasets']['train']['io_backend'] = {'type': 'lmdb'}
    del opt['datasets']['val']
    check_options(opt)
    opt['datasets']['train']['gt_size'] = 50
    with pytest.raises(OptionError, match='gt_size: 50 is larger than the smallest training image'):
        check_options(opt)  # sizes from meta_info.txt
    os.remove(osp.join(lmdbs[1], 'meta_info.txt'))
    with pytest.raises(OptionError, match=rf'^datasets.train.dataroot_lq: {lmdbs[1]} has no meta_info.txt'):
        check_options(opt)


def test_degraded_dataset_gt_size(folders):
    opt = parsed(tiny_sr_options('c', *folders, scale=1))
    opt['network_g']['upscale'] = 1
    for dataset_opt in opt['datasets'].values():
        del dataset_opt['dataroot_lq']
        dataset_opt.update(type='DegradedImageDataset', degradation={'type': 'gaussian_noise', 'sigma': 30})
    opt['datasets']['train']['gt_size'] = 96
    with pytest.raises(OptionError, match='^datasets.train.gt_size: 96 is larger than the smallest training image'):
        check_options(opt)


@pytest.mark.slow
def test_patch_too_large_ends_the_run_before_the_experiment_folder(tmp_path, folders, experiment_name):
    opt = tiny_sr_options(experiment_name, *folders)
    opt['datasets']['train']['gt_size'] = 400
    result = run_entry('train', write_options(opt, tmp_path / 'o.yml'))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith('error: datasets.train.gt_size: 400 is larger than')
    assert not osp.exists(osp.join(ROOT, 'experiments', experiment_name))
