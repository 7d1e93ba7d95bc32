"""Resume equivalence: a run SIGKILLed several times and resumed with --auto_resume ends bit-identical to one
never interrupted (CPU, one thread, ``num_worker_per_gpu: 0``; acla_basicsr/data/sampler.py says why the
random states and the position in the epoch must be restored for that)."""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import torch
import pytest

from conftest import ROOT, tiny_sr_options, write_options
from test_search import TINY_EDSR

HELPER = osp.join(ROOT, 'tests', 'helpers', 'pausing_train.py')
TOTAL_ITER = 12  # 6 images, batch 2: 3 batches per epoch, so states fall mid-epoch and on epoch ends


def edsr_options(name, hr_dir, lr_dir):
    opt = tiny_sr_options(name, hr_dir, lr_dir, total_iter=TOTAL_ITER, ema_decay=0.5)  # the EMA copy resumes too
    opt['val']['val_freq'] = 3  # validations between checkpoints must not shift the random numbers
    return opt


def search_options(name, hr_dir, lr_dir):
    opt = tiny_sr_options(name, hr_dir, lr_dir, total_iter=TOTAL_ITER)
    opt['model_type'] = 'ACLASearchModel'
    opt['network_g'] = dict(TINY_EDSR)  # Gumbel noise in every gate: the torch random state matters
    opt['train']['optim_arch'] = {'type': 'Adam', 'lr': 0.05, 'betas': [0.5, 0.999], 'weight_decay': 0}
    opt['train']['search'] = {'lambda': 0.2, 'temperature_start': 1.0, 'temperature_end': 0.2, 'arch_start_iter': 3}
    opt['val']['val_freq'] = 5
    return opt


def run_sequence(tmp_path, runs, timeout=600):
    """Run ``(pause, config, resume)`` runs one after the other (tests/helpers/pausing_train.py), SIGKILLing
    each at its pause; return the helper's stderr (the runs' logs)."""
    marker = str(tmp_path / 'paused')
    log = tmp_path / 'runs.log'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
    cmd = [sys.executable, HELPER, marker] + [f"{pause}:{config}{':resume' if resume else ''}"
                                              for pause, config, resume in runs]
    with open(log, 'w') as err:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        deadline = time.time() + timeout
        for index, (pause, _, _) in enumerate(runs):
            if pause == 'none':
                continue
            while not osp.exists(f'{marker}.{index}'):  # the run reached its pause: kill it there
                assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.02)
            os.kill(int(open(f'{marker}.{index}').read()), signal.SIGKILL)
        out, _ = process.communicate(timeout=max(1, deadline - time.time()))
    expected = [f"run {i}: {'exit 0' if pause == 'none' else f'signal {signal.SIGKILL.value}'}"
                for i, (pause, _, _) in enumerate(runs)]
    assert [v for v in out.splitlines() if v.startswith('run ')] == expected, log.read_text()[-3000:]
    return log.read_text()


def assert_same_tensors(a, b, where):
    if torch.is_tensor(a):
        assert torch.equal(a, b), f'{where}: max difference {(a.double() - b.double()).abs().max().item()}'
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a} != {b}'


def load(name, file):
    return torch.load(osp.join(ROOT, 'experiments', name, file), map_location='cpu', weights_only=False)


@pytest.mark.slow
def test_killed_and_resumed_runs_end_bit_identical(tmp_path, sr_folders, experiment_name):
    hr_dir, lr_dir = sr_folders
    names = {kind: f'{experiment_name}_{kind}' for kind in ('edsr_ref', 'edsr', 'search_ref', 'search')}
    try:
        configs = {kind: write_options((search_options if 'search' in kind else edsr_options)(
            name, hr_dir, lr_dir), tmp_path / f'{kind}.yml') for kind, name in names.items()}
        edsr, search = configs['edsr'], configs['search']
        log = run_sequence(tmp_path, [
            # the uninterrupted runs
            ('none', configs['edsr_ref'], False), ('none', configs['search_ref'], False),
            # killed while writing the state of iteration 4 (after its network file), in the middle of
            # iteration 7, and while writing the network of iteration 10; then to the end
            ('save=4.state', edsr, True), ('iter=7', edsr, True), ('save=net_g_10.pth', edsr, True),
            ('none', edsr, True),
            # the search: killed in the middle of iteration 5 and while writing the network of iteration 8
            ('iter=5', search, True), ('save=net_g_8.pth', search, True), ('none', search, True)])
        states = os.listdir(osp.join(ROOT, 'experiments', names['edsr'], 'training_states'))
        assert any(v.startswith('.4.state') and v.endswith('.tmp') for v in states)  # the half-written file stayed
        reference, resumed = load(names['edsr_ref'], 'models/net_g_latest.pth'), load(names['edsr'],
                                                                                       'models/net_g_latest.pth')
        assert set(reference) == {'params', 'params_ema'}
        assert_same_tensors(reference, resumed, 'net_g_latest')
        assert_same_tensors(load(names['edsr_ref'], 'training_states/12.state')['optimizers'],
                            load(names['edsr'], 'training_states/12.state')['optimizers'], 'optimizers')
        assert 'Resuming training from epoch: 0, iter: 2.' in log  # not from the half-written 4.state
        assert 'Resuming training from epoch: 2, iter: 8.' in log  # not from the half-written net_g_10.pth

        # the search: network weights, architecture logits and both optimizers (weights and logits)
        reference, resumed = load(names['search_ref'], 'models/net_g_latest.pth'), load(names['search'],
                                                                                         'models/net_g_latest.pth')
        assert 'arch_logits' in reference['params']
        assert not torch.equal(reference['params']['arch_logits'],
                               torch.full_like(reference['params']['arch_logits'], 2.0))  # the logits moved
        assert_same_tensors(reference, resumed, 'search net_g_latest')
        reference_state = load(names['search_ref'], 'training_states/12.state')
        assert len(reference_state['optimizers']) == 2  # optim_g and optim_arch
        assert_same_tensors(reference_state['optimizers'], load(names['search'], 'training_states/12.state')[
            'optimizers'], 'search optimizers')
    finally:
        import shutil
        for name in names.values():
            shutil.rmtree(osp.join(ROOT, 'experiments', name), ignore_errors=True)
