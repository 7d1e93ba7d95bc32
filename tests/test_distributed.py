"""Distributed training with torchrun and gloo on the CPU: both ranks train the same network."""
import os
import os.path as osp

import torch
import pytest

from conftest import ROOT, run_torchrun_training, tiny_sr_options, write_options
from acla_basicsr.cli.launch import normalise_argv


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path, sr_folders, experiment_name):
    hr_dir, lr_dir = sr_folders
    opt = tiny_sr_options(experiment_name, hr_dir, lr_dir, total_iter=4)
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    # a network with buffers (ACLAEDSR's mean shift), validated mid-training on rank 0 alone: a DDP
    # forward there would broadcast buffers that the other rank never receives
    opt['network_g'] = {'type': 'ACLAEDSR', 'num_feat': 8, 'num_block': 2, 'upscale': 2, 'attention': 'acla',
                        'insert_positions': [1, 2], 'num_keys': 2}
    opt['val']['val_freq'] = 2
    opt_path = write_options(opt, tmp_path / 'dist.yml')
    result = run_torchrun_training(opt_path, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pth') for r in (0, 1))
    initial = torch.load(osp.join(ROOT, 'experiments', experiment_name, 'models', 'net_g_2.pth'))['params']
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)  # training went on after iteration 2
    log_dir = osp.join(ROOT, 'experiments', experiment_name)
    log = open(next(osp.join(log_dir, v) for v in os.listdir(log_dir) if v.endswith('.log'))).read()
    assert 'World size (gpu number): 2' in log


def test_local_rank_spellings_are_accepted():
    assert normalise_argv(['-opt', 'x.yml', '--local-rank=1']) == ['-opt', 'x.yml', '--local_rank=1']
    assert normalise_argv(['--local-rank', '0', '--local_rank', '2']) == ['--local_rank', '0', '--local_rank', '2']
