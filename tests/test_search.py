"""Insert-position search: supernet gates, MAC model vs the flop counter, search model, export, resume, DDP."""
import glob
import itertools
import math
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, run_entry, run_torchrun_training, smooth_image, tiny_sr_options, write_options
from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR
from acla_basicsr.archs.acla_rcan_arch import ACLARCAN
from acla_basicsr.archs.acla_super_edsr_arch import ACLASuperEDSR
from acla_basicsr.archs.acla_super_rcan_arch import ACLASuperRCAN
from acla_basicsr.archs.macs import counted_macs
from acla_basicsr.archs.cla_modules import CrossLayerAttention
from acla_basicsr.archs.supernet import PositionSelection, most_probable_count, readout_selection
from acla_basicsr.models.search_export import CONFIG_FILE, POSITIONS_FILE
from acla_basicsr.models.search_options import search_temperature
from acla_basicsr.config.checks import check_options
from acla_basicsr.errors import OptionError
from basicsr.models import build_model
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY

TINY_EDSR = {'type': 'ACLASuperEDSR', 'num_feat': 8, 'num_block': 3, 'upscale': 2, 'res_scale': 1, 'num_keys': 4}


# ---------------------------------------------------------------------- supernet
@pytest.mark.parametrize('cls, final, kwargs', [
    (ACLASuperEDSR, ACLAEDSR, dict(num_feat=8, num_block=5, num_keys=4, upscale=2)),
    (ACLASuperRCAN, ACLARCAN, dict(num_feat=16, num_group=4, num_block=1, squeeze_factor=4, num_keys=2, upscale=3)),
])
def test_expected_macs_equal_counted_macs_for_hard_gates(cls, final, kwargs):
    net = cls(**kwargs)
    size = (12, 10)
    backbone = counted_macs(lambda: final(**kwargs, attention='none', insert_positions=[]), *size)
    assert net.backbone_macs(*size) == backbone
    candidates = net.insert_positions
    subsets = [[], [candidates[0]], [candidates[-1]], candidates, candidates[1::2], [candidates[0], candidates[-1]]]
    for positions in subsets:
        expected = net.expected_attention_macs(*size, [float(p in positions) for p in candidates], key_gates=False,
                                               aggregation=False).item()
        opt = net.final_network_opt(positions)
        assert ARCH_REGISTRY.get(opt.pop('type')) is final
        counted = counted_macs(lambda: final(**opt), *size) - backbone
        assert expected == pytest.approx(counted, rel=1e-9, abs=0.5), positions


def test_expected_macs_is_the_expectation_over_independent_gates():
    """The analytic E[MACs] (with its pairwise P_p * P_q terms) equals the sum over all 2^P gate patterns."""
    net = ACLASuperEDSR(num_feat=8, num_block=4, num_keys=4)
    probs = torch.tensor([0.9, 0.2, 0.6, 0.35], dtype=torch.float64)
    total = 0.0
    for pattern in itertools.product([0.0, 1.0], repeat=4):
        z = torch.tensor(pattern, dtype=torch.float64)
        weight = torch.prod(torch.where(z > 0, probs, 1 - probs))
        total += weight * net.expected_attention_macs(16, 16, z)
    assert net.expected_attention_macs(16, 16, probs).item() == pytest.approx(total.item(), rel=1e-12)
    # differentiable in the logits, and a larger probability costs more
    net.expected_attention_macs(16, 16).backward()
    assert (net.arch_logits.grad > 0).all()


def test_mac_gradient_charges_each_candidate_its_share():
    """Issue 21: the gradient of E[added MACs] in the position probabilities charges each candidate its module
    and half of each key-layer pair it is part of, so the charges sum to E (the plain derivative charges every
    pair in full to both candidates)."""
    net = ACLASuperEDSR(num_feat=8, num_block=4, num_keys=3)
    probs = torch.tensor([0.9, 0.3, 0.6, 0.8], dtype=torch.float64, requires_grad=True)
    total = net.expected_attention_macs(16, 16, probs)
    grad, = torch.autograd.grad(total, probs)
    assert (probs * grad).sum().item() == pytest.approx(total.item(), rel=1e-12)
    # against the exact derivative: the same own term, half the pair terms
    exact, = torch.autograd.grad(sum(probs[i] * net.attention[i].expected_macs(
        16, 16, torch.cat((probs.new_ones(1), probs[:i]))) for i in range(4)), probs)
    own = torch.stack([net.attention[i].expected_macs(16, 16, torch.cat((probs.new_ones(1), probs.new_zeros(i))))
                       for i in range(4)]).detach()
    torch.testing.assert_close(grad, own + 0.5 * (exact - own))


def test_closed_position_is_neither_query_nor_key():
    torch.manual_seed(0)
    net = ACLASuperEDSR(num_feat=8, num_block=3, num_keys=4).eval()
    net.readout = 'threshold'  # the candidates with a positive logit are open
    for module in net.attention:  # non-identity modules
        torch.nn.init.normal_(module.proj.weight, std=0.1)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        net.arch_logits.copy_(torch.tensor([1.0, -1.0, 1.0]))
        before = net(x)
        # position 2 is closed: neither its own module nor its key layer in module 3 matters
        torch.nn.init.normal_(net.attention[1].proj.weight)
        torch.nn.init.normal_(net.attention[2].value[2].weight)
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)
        net.arch_logits.copy_(torch.tensor([1.0, 1.0, 1.0]))  # open it: the output changes
        assert not torch.allclose(net(x), before)
        net.arch_logits.fill_(-1.0)  # all closed: the plain backbone
        plain = ACLAEDSR(num_feat=8, num_block=3, attention='none', insert_positions=[])
        plain.load_state_dict(net.state_dict(), strict=False)
        torch.testing.assert_close(net(x), plain.eval()(x))


def test_relaxed_and_straight_through_gates_are_differentiable():
    torch.manual_seed(0)
    net = ACLASuperEDSR(num_feat=8, num_block=3, num_keys=4).train()
    for module in net.attention:
        torch.nn.init.normal_(module.proj.weight, std=0.1)
    net.position_temperature = 0.5
    gates = net.position_gates(5)
    assert gates.shape == (5, 3) and ((gates > 0) & (gates < 1)).all()
    net(torch.rand(2, 3, 12, 12)).abs().mean().backward()
    assert net.arch_logits.grad.abs().min() > 0
    net.position_straight_through = True
    net.zero_grad()
    gates = net.position_gates(5)
    assert set(gates.detach().unique().tolist()) <= {0.0, 1.0}
    net(torch.rand(2, 3, 12, 12)).abs().mean().backward()
    assert net.arch_logits.grad.abs().max() > 0
    with pytest.raises(ValueError, match='temperature'):
        net.position_temperature = 0


def test_straight_through_closed_candidate_gets_the_relaxed_gradient_as_a_key_layer():
    """Issue 21: a candidate closed by a straight-through gate (z = 0) is a key layer weighted 0 of every later
    candidate; its gradient there is the relaxation's, finite and non-zero (log-space masking passed 0)."""
    torch.manual_seed(0)
    module = CrossLayerAttention(8, 3, 4).double()
    for param in module.parameters():
        torch.nn.init.normal_(param, std=0.3)
    x = torch.rand(1, 8, 6, 6, dtype=torch.float64)
    keys = [torch.rand(1, 8, 6, 6, dtype=torch.float64) for _ in range(3)]

    def loss(z):
        one = torch.ones((), dtype=torch.float64)
        return module(x, keys, torch.stack((one, z, one))).square().mean()

    def grad_at(value):
        z = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(loss(z), z)[0].item()

    at_zero = grad_at(0.0)
    relaxed = (loss(torch.tensor(1e-7, dtype=torch.float64)) - loss(torch.tensor(0.0, dtype=torch.float64))) / 1e-7
    assert math.isfinite(at_zero) and abs(at_zero) > 1e-3
    assert at_zero == pytest.approx(relaxed.item(), abs=1e-4)
    assert at_zero == pytest.approx(grad_at(1e-8), abs=1e-4)  # continuous at 0
    # through the supernet: straight-through position gates give every closed candidate's logit a gradient
    torch.manual_seed(1)
    net = ACLASuperEDSR(num_feat=8, num_block=3, num_keys=4).train()
    net.position_straight_through = True
    for module in net.attention:
        torch.nn.init.normal_(module.proj.weight, std=0.1)
    with torch.no_grad():
        net.arch_logits.copy_(torch.tensor([-30.0, 30.0, 30.0]))  # candidate 1 closed in every sample
    net(torch.rand(2, 3, 12, 12)).abs().mean().backward()
    assert net.arch_logits.grad[0].abs() > 0


def test_readout_selects_the_most_probable_selection_of_at_least_the_most_probable_count():
    probs = [0.30, 0.25, 0.38, 0.20, 0.33, 0.29]  # no P above 0.5, sum 1.75: two positions
    assert readout_selection(probs) == readout_selection(probs, 'expected_count') == [2, 4]
    assert readout_selection(probs, 'threshold') == []
    leaning = [0.849, 0.742, 0.757, 0.758]  # every gate leans open, sum 3.11: the mode (all 4), not 3
    assert readout_selection(leaning) == readout_selection(leaning, 'threshold') == [0, 1, 2, 3]
    assert readout_selection(leaning, 'expected_count') == [0, 2, 3]
    mixed = [0.612, 0.676, 0.2, 0.3, 0.45, 0.45]  # two above 0.5, three open the most probable count: topped up
    assert readout_selection(mixed) == [0, 1, 4]
    split = [0.886, 0.099, 0.491, 0.029]  # sum 1.51 rounds to 2, but one open (0.451) is likelier than two (0.443)
    assert most_probable_count(split) == 1 and readout_selection(split) == [0]
    assert readout_selection(split, 'expected_count') == [0, 2]

    def probability(selection, p):
        return math.prod(q if i in selection else 1 - q for i, q in enumerate(p))

    for p in (probs, leaning, mixed, split, [0.053, 0.418, 0.134, 0.031], [0.7] * 10):
        selections = [c for n in range(len(p) + 1) for c in itertools.combinations(range(len(p)), n)]
        dist = [sum(probability(c, p) for c in selections if len(c) == n) for n in range(len(p) + 1)]
        count = max(range(len(p) + 1), key=lambda n: (dist[n], -n))  # the mode of the enumerated count
        assert most_probable_count(p) == count
        best = max((c for c in selections if len(c) >= count), key=lambda c: probability(c, p))
        assert readout_selection(p) == list(best)  # the most probable of every selection of at least that count
    assert readout_selection([0.9, 0.97, 0.95, 0.96]) == [0, 1, 2, 3]
    assert readout_selection([0.05, 0.04, 0.06, 0.03]) == []  # sum 0.18
    assert readout_selection([0.053, 0.418, 0.134, 0.031]) == []  # sum 0.64, but none open is the likeliest count
    assert readout_selection([0.5] * 4) == [0, 1]  # ties: the earlier candidates
    assert readout_selection([0.185, 0.973, 0.065, 0.987]) == [1, 3]
    with pytest.raises(ValueError, match=r"^readout: 'mode' is unknown; use one of most_probable, expected_count, "
                       r"threshold\.$"):
        readout_selection(probs, 'mode')
    net = ACLASuperEDSR(num_feat=8, num_block=3, num_keys=4).eval()
    with torch.no_grad():
        net.arch_logits.copy_(torch.tensor([-1.0, -0.5, -1.5]))  # P 0.27, 0.38, 0.18: sum 0.83, one position
    assert net.selected_positions() == [2]
    assert net.position_gates(1).tolist() == [0.0, 1.0, 0.0]  # evaluation computes the selection


def test_alternate_architecture_step_differentiates_the_logits_alone(tmp_path, data):
    opt = search_options(tmp_path, 0.2, 2, mode='alternate')
    torch.manual_seed(0)
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    assert net.position_straight_through and net.readout == 'most_probable'  # the defaults of train.search
    weights_before = {k: v.detach().clone() for k, v in net.named_parameters() if k != 'arch_logits'}
    logits_before = net.arch_logits.detach().clone()
    batch = next(toy_batches(data, 1))
    model.feed_data(batch)
    held_out = 2  # arch_fraction 0.5 of 4
    model._step(1, (model.optimizer_arch, ), batch['lq'][-held_out:], batch['gt'][-held_out:], logits_only=True)
    assert all(p.grad is None for k, p in net.named_parameters() if k != 'arch_logits')
    assert net.arch_logits.grad is not None and (net.arch_logits.detach() != logits_before).all()
    assert all(torch.equal(v, weights_before[k]) for k, v in net.named_parameters() if k != 'arch_logits')


def test_position_selection_formats_as_a_list():
    sel = PositionSelection([3, 12, 26])
    assert f'sel: {sel:.4e}' == 'sel: [3,12,26]' and float(sel) == 3


# ---------------------------------------------------------------------- search model, in process
def toy_data(num=6, size=48, scale=2):
    rng = np.random.default_rng(0)
    hr = [smooth_image(rng, size).astype(np.float32) / 255 for _ in range(num)]
    lr = [imresize(h, 1 / scale) for h in hr]
    return tuple(torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous() for v in (lr, hr))


def toy_batches(data, iterations, batch=4, patch=16, scale=2, seed=0):
    lr, hr = data
    g = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        idx = torch.randint(len(lr), (batch, ), generator=g)
        y, x = (torch.randint(n - patch + 1, (1, ), generator=g).item() for n in lr.shape[-2:])
        yield {'lq': lr[idx, :, y:y + patch, x:x + patch],
               'gt': hr[idx, :, y * scale:(y + patch) * scale, x * scale:(x + patch) * scale]}


def search_options(root, lam, total_iter, network=None, **search):
    """Options as basicsr's parse_options returns them, for building ACLASearchModel in process."""
    root = str(root)
    return {
        'name': 'toy_search', 'model_type': 'ACLASearchModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'root_path': root,
        'datasets': {'train': {'name': 'toy', 'type': 'PairedImageDataset', 'gt_size': 32, 'batch_size_per_gpu': 4}},
        'network_g': dict(network or TINY_EDSR, position_logit_init=1.0),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None, 'experiments_root': root,
                 'models': osp.join(root, 'models'), 'training_states': osp.join(root, 'training_states'),
                 'log': root},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 2e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
                  'optim_arch': {'type': 'Adam', 'lr': 0.05}, 'search': dict({'lambda': lam}, **search)},
        'logger': {'print_freq': 10, 'save_checkpoint_freq': 1000, 'use_tb_logger': False},
    }


def run_search(opt, data, start=1, stop=None, seed=0, model=None):
    if model is None:
        torch.manual_seed(seed)  # the same initial weights for every fresh model of a test
        model = build_model(opt)
    stop = stop or opt['train']['total_iter']
    batches = list(toy_batches(data, stop, seed=seed))
    for it in range(start, stop + 1):
        torch.manual_seed(1000 * seed + it)  # the gate noise of iteration it, whatever ran before
        model.feed_data(batches[it - 1])
        model.optimize_parameters(it)
    return model


@pytest.fixture(scope='module')
def data():
    return toy_data()


def exported(root):
    with open(osp.join(root, POSITIONS_FILE)) as f:
        return yaml.safe_load(f)


pytestmark = pytest.mark.usefixtures('one_thread')  # in-process searches: faster than two threads on a busy machine


@pytest.mark.slow
@pytest.mark.parametrize('lam, mode, iters', [(0.0, 'joint', 150), (1000.0, 'joint', 50), (1000.0, 'alternate', 50)])
def test_lambda_zero_keeps_useful_positions_and_large_lambda_closes_all(tmp_path, data, lam, mode, iters):
    """150 iterations of SR on smooth images: once the modules are trained (50 warm-up iterations) the
    reconstruction gradient opens every gate further (P rises from 0.73); a huge MAC weight closes them all."""
    opt = search_options(tmp_path, lam, iters, arch_start_iter=50 if lam == 0 else 0, mode=mode)
    opt['train']['optim_arch']['lr'] = 0.05 if lam == 0 else 0.1
    model = run_search(opt, data)
    model.record_search(iters)
    result = exported(tmp_path)
    probs = list(result['probabilities'].values())
    assert result['readout'] == 'most_probable' and result['sum_probabilities'] == pytest.approx(sum(probs), abs=1e-3)
    assert result['most_probable_count'] == most_probable_count(probs)
    if lam == 0:
        assert result['positions'] == [1, 2, 3]
        assert min(probs) > 0.8  # rose from sigmoid(1.0) = 0.73: the search found them useful
    else:  # from sigmoid(1.0) = 0.73: sum P < 0.5, the expected-count readout selects nothing
        assert result['positions'] == [] and sum(probs) < 0.5
        config = yaml.safe_load(open(tmp_path / CONFIG_FILE))
        assert config['network_g']['attention'] == 'none' and config['network_g']['insert_positions'] == []
    if mode == 'alternate':
        assert 'l_pix_arch' in model.log_dict
    assert model.log_dict['temp'] == pytest.approx(0.1)
    assert osp.isfile(tmp_path / 'gate_heatmap.png') and osp.isfile(tmp_path / 'gate_history.csv')



@pytest.mark.slow
def test_fused_sampling_moves_the_logits_as_the_gather_did(tmp_path, data):
    """Issue 15 made the fused key sampler the default: a short search moves the architecture logits and selects
    the positions it did with the previous sampler (autograd's gather), within float32 rounding."""
    from acla_basicsr.archs.cla_modules import set_sampling_method
    logits = {}
    for method in ('gather', 'fused'):
        opt = search_options(tmp_path / method, 0.5, 30, arch_start_iter=5)
        torch.manual_seed(0)
        model = build_model(opt)
        net = model.get_bare_model(model.net_g)
        assert set_sampling_method(net, method) == 3
        run_search(opt, data, model=model)
        logits[method] = net.arch_logits.detach().clone()
        net.readout = 'threshold'
        assert net.selected_positions() == [p for p, v in zip(net.insert_positions, logits[method].tolist()) if v > 0]
    initial = torch.full_like(logits['gather'], 1.0)
    assert (logits['gather'] - initial).abs().min() > 1e-3  # every logit moved
    torch.testing.assert_close(logits['fused'], logits['gather'], atol=1e-4, rtol=0)
    assert (logits['fused'] > 0).tolist() == (logits['gather'] > 0).tolist()

def test_resume_continues_temperature_logits_and_their_optimizer(tmp_path, data):
    opt = search_options(tmp_path, 0.5, 8, temperature_start=2.0, temperature_end=0.5)
    for folder in ('models', 'training_states'):
        os.makedirs(tmp_path / folder)
    straight = run_search(opt, data, 1, 8)  # the uninterrupted search
    model = run_search(search_options(tmp_path, 0.5, 8, temperature_start=2.0, temperature_end=0.5), data, 1, 4)
    model.save(0, 4)
    logits4 = model.get_bare_model(model.net_g).arch_logits.detach().clone()

    resumed_opt = search_options(tmp_path, 0.5, 8, temperature_start=2.0, temperature_end=0.5)
    resumed_opt['path']['pretrain_network_g'] = str(tmp_path / 'models' / 'net_g_4.pth')
    resumed = build_model(resumed_opt)
    state = torch.load(tmp_path / 'training_states' / '4.state', map_location='cpu', weights_only=False)
    resumed.resume_training(state)
    net = resumed.get_bare_model(resumed.net_g)
    torch.testing.assert_close(net.arch_logits.detach(), logits4, rtol=0, atol=0)
    assert resumed.optimizer_arch.state_dict()['state'][0]['step'] == 4
    run_search(resumed_opt, data, 5, 8, model=resumed)
    assert net.position_temperature == pytest.approx(search_temperature(resumed.search, 8))
    assert net.position_temperature == pytest.approx(0.5)
    # the same as without interruption: same initial weights, gate noise and batches, restored optimizers
    torch.testing.assert_close(net.arch_logits.detach(), straight.get_bare_model(straight.net_g).arch_logits.detach(),
                               rtol=0, atol=1e-6)
    assert (net.arch_logits.detach() - logits4).abs().min() > 0.05


def test_bad_search_options_fail_with_one_clear_line(tmp_path):
    with pytest.raises(OptionError, match=r'^train\.search\.lambda: -0\.1 is out of range; give a number >= 0\.$'):
        build_model(search_options(tmp_path, -0.1, 4))
    with pytest.raises(OptionError, match=r'^train\.search\.lambda: missing'):
        opt = search_options(tmp_path, 0, 4)
        del opt['train']['search']['lambda']
        build_model(opt)
    with pytest.raises(OptionError, match=r"^train\.search: unknown option 'tempreature_end'; did you mean 'temperature_end'\?"):
        build_model(search_options(tmp_path, 0, 4, tempreature_end=0.1))
    with pytest.raises(OptionError, match=r"^train\.search\.readout: expected 'most_probable', 'expected_count' or "
                       r"'threshold', got 'top'"):
        build_model(search_options(tmp_path, 0, 4, readout='top'))
    with pytest.raises(OptionError, match=r'^train\.search\.ramp_iter: -1 is out of range; give an integer >= 0\.$'):
        build_model(search_options(tmp_path, 0, 4, ramp_iter=-1))
    with pytest.raises(OptionError, match=r'^network_g\.type: EDSR is not a position supernet'):
        opt = search_options(tmp_path, 0, 4)
        opt['network_g'] = {'type': 'EDSR', 'num_feat': 8, 'num_block': 1, 'upscale': 2}
        build_model(opt)
    # no candidate position: the entry point's option check builds the network and names the key
    for network, key in (({'type': 'ACLASuperEDSR', 'num_block': 0}, 'num_block'),
                         ({'type': 'ACLASuperRCAN', 'num_group': 0}, 'num_group')):
        opt = search_options(tmp_path, 0.1, 4, network=network)
        opt['datasets'] = {}
        with pytest.raises(OptionError, match=rf'^network_g: {key}: 0 leaves the supernet no candidate position'):
            check_options(opt)


# ---------------------------------------------------------------------- through basicsr's pipeline
def tiny_search_options(name, hr_dir, lr_dir, total_iter, lam=0.2):
    opt = tiny_sr_options(name, hr_dir, lr_dir, total_iter=total_iter)
    opt['model_type'] = 'ACLASearchModel'
    opt['network_g'] = dict(TINY_EDSR)
    opt['train']['optim_arch'] = {'type': 'Adam', 'lr': 0.05, 'betas': [0.5, 0.999], 'weight_decay': 0}
    opt['train']['search'] = {'lambda': lam, 'temperature_start': 1.0, 'temperature_end': 0.2}
    opt['val']['val_freq'] = 2
    return opt


@pytest.mark.slow
def test_pipeline_search_exports_a_config_that_trains(tmp_path, sr_folders, experiment_name):
    hr_dir, lr_dir = sr_folders
    opt = tiny_search_options(experiment_name, hr_dir, lr_dir, total_iter=4)
    result = run_entry('train', write_options(opt, tmp_path / 'search.yml'))
    assert result.returncode == 0, result.stderr[-3000:]
    exp = osp.join(ROOT, 'experiments', experiment_name)
    log = open(glob.glob(osp.join(exp, 'train_*.log'))[0]).read()
    assert 'Search at iter 2: positions [1, 2, 3]' in log and 'sel: [1,2,3]' in log and 'macs_ratio:' in log
    history = open(osp.join(exp, 'gate_history.csv')).read().split()
    assert history[0] == 'iter,p1,p2,p3' and [v.split(',')[0] for v in history[1:]] == ['2', '4']
    assert osp.getsize(osp.join(exp, 'gate_heatmap.png')) > 0
    result_yml = exported(exp)
    assert result_yml['iteration'] == 4 and result_yml['network'] == 'ACLAEDSR'

    # the CLI derives the same from the checkpoint
    out = tmp_path / 'cli'
    cli = subprocess.run([sys.executable, osp.join(ROOT, 'scripts', 'export_search.py'), '-opt',
                          str(tmp_path / 'search.yml'), '--checkpoint', osp.join(exp, 'models', 'net_g_4.pth'),
                          '--out', str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert cli.returncode == 0, cli.stderr[-2000:]
    from_cli = exported(out)
    for key in ('positions', 'probabilities', 'logits', 'temperature', 'macs', 'iteration'):
        assert from_cli[key] == result_yml[key], key
    with open(out / CONFIG_FILE) as f, open(osp.join(exp, CONFIG_FILE)) as g:
        assert yaml.safe_load(f) == yaml.safe_load(g)

    # the exported config: RestorationModel, the final network, no search options; it trains
    config = yaml.safe_load(open(osp.join(exp, CONFIG_FILE)))
    assert config['model_type'] == 'RestorationModel' and config['name'] == f'{experiment_name}_searched'
    assert config['network_g']['type'] == 'ACLAEDSR'
    assert config['network_g']['insert_positions'] == result_yml['positions']
    assert 'search' not in config['train'] and 'optim_arch' not in config['train']
    final_name = config['name']
    try:
        config['train']['total_iter'] = 2
        result = run_entry('train', write_options(config, tmp_path / 'final.yml'))
        assert result.returncode == 0, result.stderr[-3000:]
        final_log = open(glob.glob(osp.join(ROOT, 'experiments', final_name, 'train_*.log'))[0]).read()
        assert 'Validation tiny_val' in final_log
        weights = torch.load(osp.join(ROOT, 'experiments', final_name, 'models', 'net_g_2.pth'))['params']
        assert any(k.startswith('attention.') for k in weights)
    finally:
        import shutil
        for folder in ('experiments', 'tb_logger'):
            shutil.rmtree(osp.join(ROOT, folder, final_name), ignore_errors=True)


@pytest.mark.slow
def test_two_process_gloo_search_keeps_logits_identical(tmp_path, sr_folders, experiment_name):
    hr_dir, lr_dir = sr_folders
    opt = tiny_search_options(experiment_name, hr_dir, lr_dir, total_iter=4, lam=1.0)
    opt['train']['optim_arch']['lr'] = 0.2
    opt['datasets']['train']['batch_size_per_gpu'] = 2
    opt['datasets']['train']['dataset_enlarge_ratio'] = 2  # 3 full batches per rank and epoch
    opt['logger']['save_checkpoint_freq'] = 100
    opt_path = write_options(opt, tmp_path / 'dist.yml')
    result = run_torchrun_training(opt_path, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f'rank{r}.pth') for r in (0, 1))
    torch.testing.assert_close(rank0['arch_logits'], rank1['arch_logits'], rtol=0, atol=0)
    assert (rank0['arch_logits'] < 2.0).all()  # they moved (lambda = 1 pushes them down from the initial 2)
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)
    # only rank 0 wrote the export, once per validation
    exp = osp.join(ROOT, 'experiments', experiment_name)
    assert exported(exp)['iteration'] == 4
    assert not glob.glob(osp.join(exp, '.*.tmp'))


# ---------------------------------------------------------------------- shipped configs
SEARCH_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'options', 'search', '*.yml')))
TABLE9_LAMBDA = {'search_ACLA_EDSR_SRx2': 0.15, 'search_ACLA_RCAN_SRx2': 0.3, 'search_ACLA_EDSR_DN_sigma30': 0.2,
                 'search_ACLA_EDSR_DM': 0.2, 'search_ACLA_EDSR_CAR_q20': 0.2}


def test_every_table9_config_is_shipped():
    names = {osp.splitext(osp.basename(v))[0] for v in SEARCH_CONFIGS}
    assert set(TABLE9_LAMBDA) | {'demo_search_SRx2'} <= names


@pytest.mark.parametrize('path', SEARCH_CONFIGS, ids=[osp.basename(v) for v in SEARCH_CONFIGS])
def test_search_config_builds_its_supernet(path):
    from basicsr.utils.options import ordered_yaml
    from acla_basicsr.models.acla_search_model import ACLASearchModel
    with open(path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    for dataset in opt['datasets'].values():
        if dataset['type'] not in DATASET_REGISTRY:
            pytest.skip(f"{dataset['type']} is not registered in this checkout (being written in another branch)")
    name = osp.splitext(osp.basename(path))[0]
    assert opt['name'] == name and opt['model_type'] == 'ACLASearchModel'
    search = ACLASearchModel.check_options(dict(opt, is_train=True))
    if name in TABLE9_LAMBDA:
        assert search['lambda'] == TABLE9_LAMBDA[name]
    network = dict(opt['network_g'])
    cls = ARCH_REGISTRY.get(network.pop('type'))
    with torch.device('meta'):  # full-size supernets: build without allocating weights
        net = cls(**network)
    assert net.final_network_opt(net.insert_positions)['type'] in ('ACLAEDSR', 'ACLARCAN')
    if name.startswith('demo'):
        if not osp.isdir(osp.join(ROOT, 'datasets', 'example')):
            pytest.skip('example data absent: run scripts/prepare_example_data.py')
        from acla_basicsr.config.files import resolve_relative_paths
        opt['is_train'] = True
        for phase, dataset in opt['datasets'].items():
            dataset['phase'] = phase
        resolve_relative_paths(opt, ROOT)
        check_options(opt)


# ---------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_bench_search_sampling_bound_replaces_only_the_key_sampling():
    """benchmarks/bench_search.py --sampling-bound: inside ``sampler(free_sampling)`` a CLA module's keys come from
    the stand-in, which passes gradients to every head the real sampler does (so the bound times every other
    operation and gradient); outside it the real sampler is back. The script prints the rows and the bound."""
    import importlib.util
    from acla_basicsr.archs import cla_modules
    from acla_basicsr.archs.cla_modules import AdaptiveCrossLayerAttention
    spec = importlib.util.spec_from_file_location('bench_search', osp.join(ROOT, 'benchmarks', 'bench_search.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    module = AdaptiveCrossLayerAttention(4, 2, num_keys=3)
    torch.nn.init.normal_(module.proj.weight)  # zero-initialised: the update would not show
    x, keys = torch.randn(1, 4, 6, 5), [torch.randn(1, 4, 6, 5) for _ in range(2)]
    real = cla_modules.sample_keys

    def grads():
        module.zero_grad()
        torch.manual_seed(1)  # the same gate noise in every pass
        out = module(x, keys)
        out.square().sum().backward()
        return out.detach(), {n: p.grad for n, p in module.named_parameters()}

    reference, real_grads = grads()
    with bench.sampler(bench.free_sampling):
        free, free_grads = grads()
    assert cla_modules.sample_keys is real
    assert not torch.allclose(free, reference)
    assert torch.equal(grads()[0], reference)
    for name, grad in real_grads.items():
        assert (grad is None) == (free_grads[name] is None), name
        if grad is not None and grad.abs().sum() > 0:
            assert free_grads[name].abs().sum() > 0, name
    result = subprocess.run([sys.executable, osp.join(ROOT, 'benchmarks', 'bench_search.py'), '--iters', '1',
                             '--batch', '2', '--sampling-bound'], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-2000:]
    assert '| search (joint), key sampling free |' in result.stdout
    assert 'final network, ACLA at [2, 4], key sampling free' in result.stdout
    bound = float(result.stdout.split('search (joint) / final network = ')[1].split('x')[0])
    assert bound > 0
