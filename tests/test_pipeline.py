"""End to end: train a tiny network through basicsr's pipeline, resume it, and test it, on the CPU."""
import glob
import os
import os.path as osp

import torch
import pytest

from conftest import ROOT, run_entry, tiny_sr_options, write_options


@pytest.mark.slow
def test_train_save_validate_then_resume_from_another_directory(tmp_path, sr_folders, experiment_name):
    hr_dir, lr_dir = sr_folders
    opt = tiny_sr_options(experiment_name, hr_dir, lr_dir, total_iter=4, ema_decay=0.9)
    result = run_entry('train', write_options(opt, tmp_path / 'train.yml'))
    assert result.returncode == 0, result.stderr[-3000:]
    exp = osp.join(ROOT, 'experiments', experiment_name)
    for name in ('models/net_g_2.pth', 'models/net_g_4.pth', 'models/net_g_latest.pth', 'training_states/4.state'):
        assert osp.isfile(osp.join(exp, name)), name
    log = open(glob.glob(osp.join(exp, 'train_*.log'))[0]).read()
    assert 'Validation tiny_val' in log and 'against bicubic' in log
    state = torch.load(osp.join(exp, 'training_states', '4.state'), map_location='cpu', weights_only=False)
    assert state['iter'] == 4
    assert 'params_ema' in torch.load(osp.join(exp, 'models', 'net_g_4.pth'), map_location='cpu')
    assert not [v for v in os.listdir(osp.join(exp, 'models')) if v.endswith('.tmp')]

    # A run killed while writing its newest state leaves a truncated file: resume skips it.
    with open(osp.join(exp, 'training_states', '6.state'), 'wb') as f:
        f.write(b'truncated')
    opt['train']['total_iter'] = 6
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    result = run_entry('train', write_options(opt, tmp_path / 'train.yml'), '--auto_resume', cwd=str(elsewhere))
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted(glob.glob(osp.join(exp, 'train_*.log')), key=os.path.getmtime)
    log = open(logs[-1]).read()
    assert 'Resuming training from epoch: 1, iter: 4.' in log, log[-2000:]
    assert 'WARNING: skipped the unreadable training state' in log and '6.state' in log  # said in the run's log
    assert 'with param key: [params_ema]' in log  # the EMA network is restored, not re-initialised
    assert osp.isfile(osp.join(exp, 'models', 'net_g_6.pth'))
    assert not osp.exists(elsewhere / 'experiments')


_FULL_DISK = r'''
import sys
sys.path.insert(0, sys.argv[1])
import acla_basicsr.fileio as fileio
write = fileio.atomic_write

def full_disk(path, *args, **kwargs):  # the disk fills up when the checkpoint of iteration 4 is written
    if str(path).endswith('net_g_4.pth'):
        def fill(tmp):
            with open(tmp, 'wb') as f:
                f.write(b'half')
            raise OSError(28, 'No space left on device')
        return write(path, fill, *args[1:], **kwargs)
    return write(path, *args, **kwargs)

fileio.atomic_write = full_disk
sys.argv = ['train.py', '-opt', sys.argv[2]]
from acla_basicsr.cli.launch import main
main('train', sys.path[0])
'''


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_ends_the_run_and_keeps_the_previous_one(tmp_path, sr_folders,
                                                                                      experiment_name):
    """basicsr retries a failed save, then logs "Just ignore it" and trains on without checkpoints; here the
    run ends with one line naming the file and the space, and the checkpoint and state before are intact."""
    import subprocess
    import sys
    hr_dir, lr_dir = sr_folders
    opt = tiny_sr_options(experiment_name, hr_dir, lr_dir, total_iter=6)
    run = subprocess.run([sys.executable, '-c', _FULL_DISK, ROOT, write_options(opt, tmp_path / 'train.yml')],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    lines = [v for v in run.stderr.splitlines() if v.startswith('error: ')]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-3000:]
    assert 'net_g_4.pth: cannot write it (No space left on device); about ' in lines[0]
    assert 'free on its disk' in lines[0] and 'resume it with --auto_resume' in lines[0]
    exp = osp.join(ROOT, 'experiments', experiment_name)
    assert sorted(os.listdir(osp.join(exp, 'models'))) == ['net_g_2.pth']  # nothing half-written, no temporary
    assert sorted(os.listdir(osp.join(exp, 'training_states'))) == ['2.state']
    assert torch.load(osp.join(exp, 'training_states', '2.state'), map_location='cpu', weights_only=False)['iter'] == 2
    assert 'params' in torch.load(osp.join(exp, 'models', 'net_g_2.pth'), map_location='cpu', weights_only=True)


@pytest.mark.slow
def test_test_pipeline_writes_results(tmp_path, sr_folders, experiment_name):
    hr_dir, lr_dir = sr_folders
    opt = tiny_sr_options(experiment_name, hr_dir, lr_dir, total_iter=2)
    assert run_entry('train', write_options(opt, tmp_path / 'train.yml')).returncode == 0
    weights = osp.join(ROOT, 'experiments', experiment_name, 'models', 'net_g_latest.pth')
    test_opt = {k: opt[k] for k in ('name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'network_g')}
    test_opt['datasets'] = {'test_1': dict(opt['datasets']['val'], name='tiny_test')}
    test_opt['path'] = {'pretrain_network_g': weights, 'strict_load_g': True, 'param_key_g': 'params'}
    test_opt['val'] = {'save_img': True, 'suffix': None, 'metrics': opt['val']['metrics']}
    result = run_entry('test', write_options(test_opt, tmp_path / 'test.yml'))
    assert result.returncode == 0, result.stderr[-3000:]
    results = osp.join(ROOT, 'results', experiment_name)
    assert len(glob.glob(osp.join(results, 'visualization', 'tiny_test', '*.png'))) == 6
    log = open(glob.glob(osp.join(results, 'test_*.log'))[0]).read()
    assert 'Validation tiny_test' in log and '# psnr' in log


def test_checkpoint_saved_anywhere_loads_on_cpu(tmp_path):
    """States are loaded with map_location='cpu', so a GPU-saved state resumes on a CPU machine."""
    from acla_basicsr.compat import load_state_file
    net = torch.nn.Conv2d(3, 3, 3)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.rand(1, 3, 8, 8)).mean().backward()
    optimizer.step()
    from basicsr.models.lr_scheduler import MultiStepRestartLR
    scheduler = MultiStepRestartLR(optimizer, milestones=[10, 20], gamma=0.5)
    path = str(tmp_path / '7.state')
    torch.save({'epoch': 1, 'iter': 7, 'optimizers': [optimizer.state_dict()],
                'schedulers': [scheduler.state_dict()]}, path)
    state = load_state_file(path)
    assert state['iter'] == 7
    optimizer.load_state_dict(state['optimizers'][0])
    scheduler.load_state_dict(state['schedulers'][0])
    assert all(t.device.type == 'cpu' for s in state['optimizers'][0]['state'].values() for t in s.values()
               if torch.is_tensor(t))
