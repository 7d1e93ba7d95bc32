"""Shared fixtures: tiny SR data made on the fly, tiny configs, and running the entry points."""
import os
import os.path as osp
import re
import shutil
import socket
import subprocess
import sys
import uuid

import cv2
import numpy as np
import pytest
import yaml

# One thread per process, in this process and the ones the tests start: the suite's runs are tiny, and on a
# shared 2-core machine torch's default threads oversubscribe the cores (measured: the fast part took 4 min 38 s
# beside one other job with the default, 33 s with one thread).
os.environ.setdefault('OMP_NUM_THREADS', '1')

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import acla_basicsr  # noqa: E402,F401  (makes basicsr importable, registers the project's classes)

SHARED_DATASETS = osp.abspath(osp.join(ROOT, osp.pardir, 'shared', 'datasets'))


def smooth_image(rng, size, channels=3):
    """A random smooth uint8 image (blurred noise plus a gradient): learnable, unlike white noise."""
    img = rng.random((size // 4 + 1, size // 4 + 1, channels)).astype(np.float32)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)
    img = 0.7 * img + 0.3 * np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    return np.clip(img * 255, 0, 255).round().astype(np.uint8)


def write_sr_folders(root, num=6, size=48, scale=2, seed=0):
    """Write ``root/HR`` and ``root/LR/X{scale}`` PNG folders (MATLAB-bicubic LR); return both paths."""
    from basicsr.utils.matlab_functions import imresize
    rng = np.random.default_rng(seed)
    hr_dir, lr_dir = osp.join(root, 'HR'), osp.join(root, 'LR', f'X{scale}')
    os.makedirs(hr_dir, exist_ok=True)
    os.makedirs(lr_dir, exist_ok=True)
    for i in range(num):
        hr = smooth_image(rng, size)
        lr = np.clip(np.round(imresize(hr.astype(np.float32) / 255., 1 / scale) * 255), 0, 255).astype(np.uint8)
        cv2.imwrite(osp.join(hr_dir, f'img{i:02d}.png'), hr)
        cv2.imwrite(osp.join(lr_dir, f'img{i:02d}.png'), lr)
    return hr_dir, lr_dir


def tiny_sr_options(name, hr_dir, lr_dir, scale=2, total_iter=4, **train_overrides):
    """A complete basicsr training options dict for a tiny EDSR on folder data, on the CPU."""
    opt = {
        'name': name, 'model_type': 'RestorationModel', 'scale': scale, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': hr_dir, 'dataroot_lq': lr_dir,
                      'io_backend': {'type': 'disk'}, 'gt_size': 16 * scale, 'use_hflip': True, 'use_rot': True,
                      'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1},
            'val': {'name': 'tiny_val', 'type': 'PairedImageDataset', 'dataroot_gt': hr_dir, 'dataroot_lq': lr_dir,
                    'io_backend': {'type': 'disk'}},
        },
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                      'upscale': scale, 'res_scale': 1, 'img_range': 255., 'rgb_mean': [0.4488, 0.4371, 0.4040]},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': total_iter, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': scale, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'gloo'},
    }
    opt['train'].update(train_overrides)
    return opt


def write_options(opt, path):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def run_entry(script, opt_path, *args, cwd=None, timeout=300, env=None):
    """Run ``acla_basicsr/<script>.py -opt opt_path args...`` in a fresh process; return the result."""
    cmd = [sys.executable, osp.join(ROOT, 'acla_basicsr', f'{script}.py'), '-opt', str(opt_path), *args]
    full_env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **(env or {}))
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def run_torchrun_training(opt_path, out_dir, nproc=2, timeout=240, elastic=False, args=(), env=None):
    """Train ``opt_path`` with torchrun (gloo, CPU); every rank saves its final weights to ``out_dir/rank{r}.pth``.

    The output of torchrun and its workers goes to ``out_dir/torchrun.log``, not to pipes: torchrun starts its
    workers in sessions of their own, so a worker can outlive it, and reading a pipe to its end would wait for
    that worker. Past ``timeout`` seconds torchrun and every process below it are killed and the test fails
    with the log's tail.

    Args:
        elastic (bool): torchrun's elastic mode, as the README's command: c10d rendezvous on a port that the
            system picks, ``--max-restarts=2``, and ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a store per restart:
            torchrun's shared store keeps the dead workers' addresses, which restarted workers read and fail or hang
            on). Default: False (``--master_port`` on a free port).
        args (Sequence[str]): More arguments of ``train.py``, such as ``--auto_resume``.
        env (dict | None): More environment variables of torchrun and its workers.

    Returns:
        subprocess.CompletedProcess: ``returncode``, and the log as ``stdout`` and ``stderr``.
    """
    if osp.join(ROOT, 'scripts') not in sys.path:
        sys.path.insert(0, osp.join(ROOT, 'scripts'))
    from gpu_check import wait_or_kill

    if elastic:
        launch = ['--nnodes=1', '--rdzv-backend=c10d', '--rdzv-endpoint=127.0.0.1:0', '--max-restarts=2']
    else:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            launch = [f'--master_port={s.getsockname()[1]}']
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', *launch,
           osp.join(ROOT, 'tests', 'helpers', 'dist_train_worker.py'), str(out_dir), '-opt', str(opt_path),
           '--launcher', 'pytorch', *args]
    full_env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1', **(env or {}))
    if elastic:
        full_env['TORCH_DISABLE_SHARE_RDZV_TCP_STORE'] = '1'
    log_path = osp.join(str(out_dir), 'torchrun.log')
    with open(log_path, 'w') as log:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                   start_new_session=True)
        returncode = wait_or_kill(process, timeout)
    with open(log_path, errors='replace') as f:
        output = f.read()
    if returncode is None:
        pytest.fail(f'torchrun ran past {timeout} s and was killed with its workers; the end of {log_path}:\n'
                    f'{output[-6000:]}', pytrace=False)
    return subprocess.CompletedProcess(cmd, returncode, output, output)


def parsed_checked_options(config):
    """Parse ``config`` with basicsr's own ``parse_options`` and run the project's checks, as train.py does.

    Skips when the example data that the demo configs read is absent.
    """
    from unittest import mock

    from basicsr.utils.options import parse_options

    from acla_basicsr.config.checks import check_options
    from acla_basicsr.config.files import resolve_relative_paths
    if not osp.isdir(osp.join(ROOT, 'datasets', 'example', 'train', 'HR_sub.lmdb')):
        pytest.skip('datasets/example is absent; run python scripts/prepare_example_data.py')
    with mock.patch.object(sys, 'argv', ['train.py', '-opt', osp.join(ROOT, config)]):
        opt, _ = parse_options(ROOT, is_train=True)
    resolve_relative_paths(opt, ROOT)
    check_options(opt)
    return opt


# ------------------------------------------------------------------ the test device (tests/test_device.py)
@pytest.fixture(scope='session')
def device():
    """The device of the device tests: ``ACLA_TEST_DEVICE`` (``cpu`` by default; ``cuda`` on a GPU machine).

    ``scripts/gpu_check.py`` sets it to ``cuda``. A device that torch cannot use fails the test (a GPU run
    must not pass by skipping its device).
    """
    import torch
    name = os.environ.get('ACLA_TEST_DEVICE', 'cpu') or 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        pytest.fail(f'ACLA_TEST_DEVICE={name!r} is not a torch device; use cpu or cuda.', pytrace=False)
    if device.type not in ('cpu', 'cuda'):
        pytest.fail(f"ACLA_TEST_DEVICE={name!r}: only 'cpu' and 'cuda' are tested.", pytrace=False)
    if device.type == 'cuda' and not torch.cuda.is_available():
        pytest.fail(f'ACLA_TEST_DEVICE={name!r} but torch sees no CUDA device.', pytrace=False)
    return device


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (in-process trainings: faster than two threads on a busy machine)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The runs that tests make in the repository's output folders, and the names they get: under pytest-xdist (`make
# test` runs two workers) they appear and vanish beside any other test, which must not count them as its own.
RUN_FOLDERS = ('experiments', 'results', 'tb_logger')
OTHER_TESTS_RUN = re.compile(r'pytest_[0-9a-f]{8}|cmp_|gpu_check_torchrun_')  # experiment_name, compare.py, gpu_check


def pytest_configure(config):
    """The output folders exist before any test runs (every xdist worker makes them; ``exist_ok`` is race-free), so a
    test that snapshots them does not see another worker's first run create them."""
    for folder in RUN_FOLDERS:
        os.makedirs(osp.join(ROOT, folder), exist_ok=True)


def remove_run_folders(name):
    """Remove the experiments/, results/ and tb_logger/ folders of the run ``name`` (and its archived ones)."""
    for folder in RUN_FOLDERS:
        shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)
        for archived in (os.listdir(osp.join(ROOT, folder)) if osp.isdir(osp.join(ROOT, folder)) else []):
            if archived.startswith(name):
                shutil.rmtree(osp.join(ROOT, folder, archived), ignore_errors=True)


@pytest.fixture
def experiment_name():
    """A unique experiment name; its experiments/, results/ and tb_logger/ folders are removed after the test."""
    name = f'pytest_{uuid.uuid4().hex[:8]}'
    yield name
    remove_run_folders(name)


@pytest.fixture
def sr_folders(tmp_path):
    return write_sr_folders(str(tmp_path / 'data'))
