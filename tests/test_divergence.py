"""Divergence stops: a non-finite loss, gradient or weight stops the run with one line (or the step is skipped)."""
import glob
import logging
import os.path as osp

import pytest
import torch
from basicsr.models import build_model

from acla_basicsr.models.divergence import DivergenceError, DivergenceGuard
from conftest import ROOT, run_entry, tiny_sr_options, write_options
from test_search import TINY_EDSR


def losses(**terms):
    return {k: torch.tensor(float(v)) for k, v in terms.items()}


def params(grad=0.0):
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3, ), float(grad))
    return [('head.weight', p)]


def test_non_finite_loss_stops_with_one_line_naming_the_term_and_the_last_state(tmp_path):
    guard = DivergenceGuard(state_dir=str(tmp_path))
    assert guard.check_step(losses(l_pix=0.5), params(), 1)
    with pytest.raises(DivergenceError) as error:
        guard.check_step(losses(l_pix=0.5, l_macs=float('nan')), params(), 3)
    assert str(error.value) == ('loss is nan at iteration 3 (l_macs); no training state was saved yet; lower '
                                'train.optim_g.lr or allow skipping bad steps with train.divergence.skip_steps.')
    for name in ('2.state', '10.state', '.12.state1234.tmp'):
        (tmp_path / name).write_bytes(b'')
    with pytest.raises(DivergenceError, match=rf"^loss is inf at iteration 11 \(l_pix\); the last good state is "
                                              rf"{tmp_path / '10.state'} \(resume from it with --auto_resume\)"):
        guard.check_step(losses(l_pix=float('inf')), params(), 11)


def test_non_finite_gradient_and_weight_are_named():
    guard = DivergenceGuard()
    with pytest.raises(DivergenceError, match=r'^the gradient of head.weight is inf at iteration 4;'):
        guard.check_step(losses(l_pix=1.0), params(grad=float('inf')), 4)
    weights = params()
    weights[0][1].data[1] = float('nan')
    with pytest.raises(DivergenceError, match=r'^head.weight is nan after the step of iteration 5;'):
        guard.check_weights(weights, 5)


def test_skip_steps_then_stop_and_the_spike_check(caplog):
    guard = DivergenceGuard({'skip_steps': 2, 'spike_factor': 3.0, 'spike_window': 4})
    logger = logging.getLogger('test_divergence')
    for it in range(1, 5):
        assert guard.check_step(losses(l_pix=1.0 + 0.1 * it), params(), it)
    with caplog.at_level(logging.WARNING, logger='test_divergence'):
        assert not guard.check_step(losses(l_pix=10.0), params(), 5, logger)  # 8x the median 1.25
        assert not guard.check_step(losses(l_pix=float('nan')), params(), 6, logger)
    assert 'Skipped the step of iteration 5: loss is 10 at iteration 5, 8.0x its running median 1.25' in caplog.text
    assert '(2 of train.divergence.skip_steps: 2)' in caplog.text
    assert guard.check_step(losses(l_pix=1.2), params(), 7)
    state = guard.state_dict()
    resumed = DivergenceGuard({'skip_steps': 2})
    resumed.load_state_dict(state)
    assert resumed.skipped == 2 and list(resumed.recent) == list(guard.recent)
    with pytest.raises(DivergenceError, match='^loss is nan at iteration 8'):
        guard.check_step(losses(l_pix=float('nan')), params(), 8)


def model_options(tmp_path, sr_folders, search=False, **divergence):
    opt = tiny_sr_options('unit', *sr_folders, divergence=divergence)
    if search:
        opt['model_type'] = 'ACLASearchModel'
        opt['network_g'] = dict(TINY_EDSR)
        opt['train'].update(optim_arch={'type': 'Adam', 'lr': 0.05}, search={'lambda': 0.1, 'arch_start_iter': 0})
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False, root_path=str(tmp_path))
    opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path),
                       log=str(tmp_path), visualization=str(tmp_path))
    for phase, dataset_opt in opt['datasets'].items():
        dataset_opt.update(phase=phase, scale=opt['scale'])
    return opt


@pytest.mark.parametrize('search', [False, True], ids=['RestorationModel', 'ACLASearchModel'])
def test_models_skip_a_bad_step_then_stop(tmp_path, sr_folders, search):
    model = build_model(model_options(tmp_path, sr_folders, search, skip_steps=1))
    good = {'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 32, 32)}
    bad = {'lq': good['lq'].clone(), 'gt': good['gt'].clone()}
    bad['gt'][0, 0, 0, 0] = float('nan')
    model.feed_data(good)
    model.optimize_parameters(1)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(bad)
    model.optimize_parameters(2)  # skipped: weights (and architecture logits) unchanged
    assert all(torch.equal(before[k], v) for k, v in model.net_g.state_dict().items())
    assert model.divergence_guard.skipped == 1
    model.feed_data(good)
    model.optimize_parameters(3)
    assert not all(torch.equal(before[k], v) for k, v in model.net_g.state_dict().items())
    model.feed_data(bad)
    with pytest.raises(DivergenceError, match=r'^loss is nan at iteration 4 \(l_pix\)'):
        model.optimize_parameters(4)


@pytest.mark.slow
def test_exploding_learning_rate_stops_the_run_without_a_checkpoint(tmp_path, sr_folders, experiment_name):
    opt = tiny_sr_options(experiment_name, *sr_folders, total_iter=6)
    opt['train']['optim_g']['lr'] = 1e30
    result = run_entry('train', write_options(opt, tmp_path / 'o.yml'))
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith('error: conv_first.weight is inf after the step of iteration 1; no training state was '
                           'saved yet; lower train.optim_g.lr'), line
    assert 'Traceback' not in result.stderr
    experiment = osp.join(ROOT, 'experiments', experiment_name)
    assert glob.glob(osp.join(experiment, 'models', '*')) == []
    assert glob.glob(osp.join(experiment, 'training_states', '*')) == []
