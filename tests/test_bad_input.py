"""Bad options end with one line naming the option and the fix, exit status 2, and nothing written."""
import os
import os.path as osp
import shutil

import pytest

from conftest import ROOT, run_entry, tiny_sr_options, write_options, write_sr_folders


def set_key(opt, dotted, value):
    *parents, last = dotted.split('.')
    for key in parents:
        opt = opt[key]
    opt[last] = value


CASES = [
    ('network_g.type', 'NoSuchNet', "network_g.type: unknown arch type 'NoSuchNet'"),
    ('model_type', 'NoSuchModel', "model_type: unknown model type 'NoSuchModel'"),
    ('train.pixel_opt.type', 'NoSuchLoss', "train.pixel_opt.type: unknown loss type 'NoSuchLoss'"),
    ('datasets.train.type', 'NoSuchDataset', "datasets.train.type: unknown dataset type 'NoSuchDataset'"),
    ('datasets.train.dataroot_gt', '/nonexistent/HR', 'datasets.train.dataroot_gt: /nonexistent/HR does not exist'),
    ('datasets.train.gt_size', 33, 'datasets.train.gt_size: 33 is not divisible by scale 2'),
    ('network_g.num_feat', 'sixty', "network_g.num_feat: expected an integer, got 'sixty'"),
    ('network_g.upscale', 3, 'network_g.upscale: 3 differs from scale 2'),
    ('train.network_opt', [{'type': 'NoSuchLoss'}], "train.network_opt[0].type: unknown loss type 'NoSuchLoss'"),
    ('train.pixel_opt', {'type': 'EARNLoss', 'vgg_weights_path': '/nonexistent/vgg19.pth'},
     'train.pixel_opt.vgg_weights_path: /nonexistent/vgg19.pth'),
    ('val.reference', 'lanczos', "val.reference: unknown baseline 'lanczos'"),
    ('path.pretrain_network_g', '/nonexistent/net.pth', 'path.pretrain_network_g: /nonexistent/net.pth does not exist'),
    ('num_gpu', 2, 'num_gpu: 2, but this machine has 0 CUDA device(s); use num_gpu: 0 (CPU).'),
    ('train.optim_g.lr', -1, 'train.optim_g: torch refuses it (Invalid learning rate: -1); fix that value.'),
]


def assert_clean_failure(result, expected, name):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [v for v in result.stderr.splitlines() if v.strip()]
    assert lines[-1].startswith('error: ') and expected in lines[-1], result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    assert not osp.exists(osp.join(ROOT, 'experiments', name))
    assert not osp.exists(osp.join(ROOT, 'results', name))


@pytest.mark.slow
@pytest.mark.parametrize('key,value,expected', CASES, ids=[c[0] for c in CASES])
def test_wrong_option_gives_one_line(tmp_path, sr_folders, experiment_name, key, value, expected):
    opt = tiny_sr_options(experiment_name, *sr_folders)
    set_key(opt, key, value)
    assert_clean_failure(run_entry('train', write_options(opt, tmp_path / 'o.yml')), expected, experiment_name)


@pytest.mark.slow
def test_empty_mismatched_and_wrong_scale_data(tmp_path, experiment_name):
    hr_dir, lr_dir = write_sr_folders(str(tmp_path / 'data'), num=3, size=48, scale=2)
    empty = tmp_path / 'empty'
    empty.mkdir()
    opt = tiny_sr_options(experiment_name, str(empty), str(empty))
    assert_clean_failure(run_entry('train', write_options(opt, tmp_path / 'o.yml')),
                         f'datasets.train.dataroot_gt: {empty} holds no images', experiment_name)

    opt = tiny_sr_options(experiment_name, osp.join(hr_dir, 'img00.png'), lr_dir)  # a file, not a folder
    assert_clean_failure(run_entry('train', write_options(opt, tmp_path / 'o.yml')),
                         f"datasets.train.dataroot_gt: {osp.join(hr_dir, 'img00.png')} is not a folder", experiment_name)

    os.remove(osp.join(lr_dir, 'img01.png'))
    opt = tiny_sr_options(experiment_name, hr_dir, lr_dir)
    assert_clean_failure(run_entry('train', write_options(opt, tmp_path / 'o.yml')),
                         'GT images have no LQ partner', experiment_name)

    shutil.copy(osp.join(hr_dir, 'img01.png'), osp.join(lr_dir, 'img01.png'))  # full size: not x2
    assert_clean_failure(run_entry('train', write_options(opt, tmp_path / 'o.yml')),
                         'which is not scale 2; set scale', experiment_name)


@pytest.mark.slow
def test_corrupt_image_is_named(tmp_path, experiment_name):
    hr_dir, lr_dir = write_sr_folders(str(tmp_path / 'data'), num=2)
    with open(osp.join(lr_dir, 'img00.png'), 'wb') as f:
        f.write(b'not a png')
    opt = tiny_sr_options(experiment_name, hr_dir, lr_dir)
    assert_clean_failure(run_entry('train', write_options(opt, tmp_path / 'o.yml')),
                         f"cannot read {osp.join(lr_dir, 'img00.png')}", experiment_name)


@pytest.mark.slow
def test_missing_or_invalid_options_file(tmp_path):
    result = run_entry('train', tmp_path / 'missing.yml')
    assert result.returncode == 2 and 'missing.yml does not exist' in result.stderr
    bad = tmp_path / 'bad.yml'
    bad.write_text('name: [unclosed\n')
    result = run_entry('train', bad)
    assert result.returncode == 2 and 'is not valid YAML' in result.stderr
