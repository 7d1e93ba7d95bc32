"""Distributed training with torchrun and gloo on the CPU: both ranks train the same network, and a run whose
worker is killed restarts under elastic torchrun and ends as an uninterrupted one."""
import os.path as osp
import re
import uuid

import torch
import pytest

from conftest import ROOT, remove_run_folders, run_torchrun_training, tiny_sr_options, write_options, write_sr_folders
from acla_basicsr.cli.launch import normalise_argv


# one pytest-xdist worker for the module: its tests share one two-process run (a module fixture is built once per
# worker), and two torchruns at once would put four torch processes on this 2-core machine
pytestmark = pytest.mark.xdist_group('distributed')


def two_process_options(name, hr_dir, lr_dir):
    """8 iterations of a tiny ACLAEDSR, one patch per rank, checkpoints every 2 iterations, validated every 2."""
    opt = tiny_sr_options(name, hr_dir, lr_dir, total_iter=8)
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    # a network with buffers (ACLAEDSR's mean shift), validated mid-training on rank 0 alone: a DDP
    # forward there would broadcast buffers that the other rank never receives
    opt['network_g'] = {'type': 'ACLAEDSR', 'num_feat': 8, 'num_block': 2, 'upscale': 2, 'attention': 'acla',
                        'insert_positions': [1, 2], 'num_keys': 2}
    opt['val']['val_freq'] = 2
    return opt


@pytest.fixture(scope='module')
def uninterrupted_run(tmp_path_factory):
    """One uninterrupted two-process run of :func:`two_process_options` (torchrun, gloo) for the module's tests.

    Returns:
        dict: ``name`` (the experiment), ``out`` (its torchrun folder: ``rank{r}.pth``, ``torchrun.log``),
        ``result`` (the finished torchrun), ``hr_dir`` and ``lr_dir`` (its data).
    """
    root = tmp_path_factory.mktemp('uninterrupted')
    hr_dir, lr_dir = write_sr_folders(str(root / 'data'))
    name = f'pytest_{uuid.uuid4().hex[:8]}'
    opt_path = write_options(two_process_options(name, hr_dir, lr_dir), root / 'dist.yml')
    result = run_torchrun_training(opt_path, root)
    yield {'name': name, 'out': root, 'result': result, 'hr_dir': hr_dir, 'lr_dir': lr_dir}
    remove_run_folders(name)


def latest_checkpoint(name):
    return torch.load(osp.join(ROOT, 'experiments', name, 'models', 'net_g_latest.pth'))


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(uninterrupted_run):
    result, out, name = uninterrupted_run['result'], uninterrupted_run['out'], uninterrupted_run['name']
    assert result.returncode == 0, result.stdout[-5000:]
    rank0, rank1 = (torch.load(out / f'rank{r}.pth') for r in (0, 1))
    initial = torch.load(osp.join(ROOT, 'experiments', name, 'models', 'net_g_2.pth'))['params']
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)  # training went on after iteration 2
    assert 'World size (gpu number): 2' in result.stdout


@pytest.mark.slow
def test_a_killed_worker_restarts_resumes_and_ends_as_an_uninterrupted_run(tmp_path, uninterrupted_run,
                                                                            experiment_name):
    """Elastic torchrun (README's command): rank 1 is SIGKILLed after iteration 5; torchrun restarts both workers
    once, they resume from the newest training state (iteration 4, every rank's random states in it) and end
    with the weights of the uninterrupted run of the same options."""
    straight = uninterrupted_run
    assert straight['result'].returncode == 0, straight['result'].stdout[-5000:]
    opt = two_process_options(experiment_name, straight['hr_dir'], straight['lr_dir'])
    result = run_torchrun_training(write_options(opt, tmp_path / 'killed.yml'), tmp_path, elastic=True,
                                   args=['--auto_resume'], env={'KILL_RANK1_AT': '5'}, timeout=240)
    log = result.stdout
    assert result.returncode == 0, log[-5000:]
    # the kill: rank 1 of the first attempt ended by SIGKILL, after iteration 5; the only failure
    pid = (tmp_path / 'killed_at_5').read_text()
    assert f'failed (exitcode: -9) local_rank: 1 (pid: {pid})' in log, log[-5000:]
    assert log.count('failed (exitcode') == 1, log[-5000:]
    # the restart: once, from the newest state
    assert re.findall(r'Resuming training from epoch: \d+, iter: (\d+)\.', log) == ['4'], log[-5000:]
    # the weights: every tensor equal to the uninterrupted run's, in the checkpoint and on both ranks
    killed, uninterrupted = latest_checkpoint(experiment_name), latest_checkpoint(straight['name'])
    assert killed.keys() == uninterrupted.keys() and killed['params'].keys() == uninterrupted['params'].keys()
    for group in uninterrupted:
        for key in uninterrupted[group]:
            assert torch.equal(killed[group][key], uninterrupted[group][key]), (group, key)
    for r in (0, 1):
        ranks = torch.load(tmp_path / f'rank{r}.pth'), torch.load(straight['out'] / f'rank{r}.pth')
        assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[1]), r


def test_local_rank_spellings_are_accepted():
    assert normalise_argv(['-opt', 'x.yml', '--local-rank=1']) == ['-opt', 'x.yml', '--local_rank=1']
    assert normalise_argv(['--local-rank', '0', '--local_rank', '2']) == ['--local_rank', '0', '--local_rank', '2']


def test_elastic_runs_without_a_store_per_restart_are_warned():
    from acla_basicsr.compat import shared_store_warning
    elastic = {'TORCHELASTIC_MAX_RESTARTS': '2', 'RANK': '0'}
    assert 'TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1' in shared_store_warning(elastic)
    assert shared_store_warning({**elastic, 'TORCH_DISABLE_SHARE_RDZV_TCP_STORE': '1'}) is None
    assert shared_store_warning({**elastic, 'TORCHELASTIC_MAX_RESTARTS': '0'}) is None  # no restarts
    assert shared_store_warning({**elastic, 'RANK': '1'}) is None  # said once, by rank 0
    assert shared_store_warning({}) is None
