"""ACLA's adaptive parts: key gates with one meaning in training and evaluation, the temperature schedule, the
MAC term over open keys and positions, exact export of a supernet selection, and the search's lambda."""
import copy
import os
import os.path as osp

import acla_basicsr  # noqa: F401  (before basicsr: makes it importable, registers the classes)
import pytest
import torch
import yaml
from basicsr.models import build_model

from conftest import ROOT
from test_cla_arch import randomise, tiny_edsr
from test_search import exported, run_search, search_options, toy_data
from acla_basicsr.archs.acla_edsr_arch import ACLAEDSR
from acla_basicsr.archs.acla_rcan_arch import ACLARCAN
from acla_basicsr.archs.acla_super_edsr_arch import ACLASuperEDSR
from acla_basicsr.archs.acla_super_rcan_arch import ACLASuperRCAN
from acla_basicsr.archs.supernet import readout_selection
from acla_basicsr.archs.cla_modules import KEY_STATS_DECAY, AdaptiveCrossLayerAttention
from acla_basicsr.archs.macs import counted_macs
from acla_basicsr.models.search_export import CONFIG_FILE
from acla_basicsr.models.schedule_options import macs_weight
from acla_basicsr.errors import OptionError


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data():
    return toy_data()


# ---------------------------------------------------------------------- gates
def gated_module(bias):
    torch.manual_seed(0)  # the same module whatever the bias
    module = randomise(AdaptiveCrossLayerAttention(8, 2, num_keys=4), std=0.5)
    with torch.no_grad():
        module.gate.weight.zero_()
        module.gate.bias.fill_(bias)
    return module


@pytest.mark.parametrize('straight_through', [True, False])
def test_training_output_follows_the_absolute_gate_level_like_evaluation(straight_through):
    """Gate bias -8: training (mean of passes) and evaluation are the identity; +8: both are the open module."""
    x, keys = torch.randn(2, 8, 6, 6), [torch.randn(2, 8, 6, 6) for _ in range(2)]
    with torch.no_grad():
        open_eval = gated_module(8.0).eval()(x, keys)
        effect = (open_eval - x).abs().mean()
        assert effect > 0.05  # the attention does something
        for bias, target in ((-8.0, x), (8.0, open_eval)):
            module = gated_module(bias)
            module.straight_through = straight_through
            evaluated = module.eval()(x, keys)
            torch.testing.assert_close(evaluated, target)
            module.train()
            trained = torch.stack([module(x, keys) for _ in range(16)]).mean(0)
            assert (trained - evaluated).abs().mean() <= 0.05 * effect, bias
        # a common shift of the gate logits changes the training output (it did not under renormalisation)
        half = gated_module(0.0).train()
        torch.manual_seed(1)
        shifted = torch.stack([half(x, keys) for _ in range(16)]).mean(0)
        assert (shifted - x).abs().mean() > 0.2 * effect and (shifted - open_eval).abs().mean() > 0.2 * effect


def test_straight_through_keys_are_exactly_closed_in_training_with_a_gradient():
    torch.manual_seed(0)
    module = gated_module(0.0).train()
    x, keys = torch.randn(1, 8, 5, 5), [torch.randn(1, 8, 5, 5) for _ in range(2)]
    weights = module.key_weights(x)
    dense = module.logit(x).view(1, 8, 5, 5).softmax(1).view(1, 2, 4, 5, 5)
    gates = weights.detach() / dense.detach()
    assert set(gates.round(decimals=5).unique().tolist()) <= {0.0, 1.0} and 0 < gates.mean() < 1
    module(x, keys).square().sum().backward()
    assert module.gate.weight.grad.abs().sum() > 0
    # the expectation the MAC term uses: sigmoid(g) summed over keys, in the graph
    assert module.expected_open_keys.requires_grad
    torch.testing.assert_close(module.expected_open_keys.detach(),
                               torch.sigmoid(module.gate(x)).view(1, 2, 4, 5, 5).sum(2).mean((0, 2, 3)).detach())


# ---------------------------------------------------------------------- MACs of open keys
def test_macs_count_open_keys_and_effective_macs_follow_the_counter():
    """The cost model of the sparse evaluation (docs/cla_acla.md): a closed key saves its aggregation (4 C MACs per
    pixel), not its logit (the softmax runs over every logit) nor its gate nor its offsets (those of a projected key
    layer are one matrix product for all its keys); a key layer without an open key saves its value projection
    and offsets (C^2 + 2 K C). The counts are what the code runs (tests/test_sparse_eval.py checks them against
    the flop counter on the sparse path)."""
    torch.manual_seed(0)
    net = randomise(tiny_edsr(attention='acla', num_keys=4), std=1.0).eval()
    for module in net.attention:
        torch.nn.init.zeros_(module.gate.weight)  # the gates follow their bias alone
    size = (8, 6)
    hw, c = size[0] * size[1], 8
    num_layer_pairs = sum(range(1, len(net.attention) + 1))
    dense = counted_macs(lambda: tiny_edsr(attention='acla', num_keys=4), *size)
    aggregation = num_layer_pairs * 4 * 4 * c * hw  # every key open: 4 keys per (module, key layer), 4 C each
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        for module in net.attention:  # every key open
            module.gate.bias.fill_(50.0)
        net(x)
        assert net.effective_macs(*size) == pytest.approx(dense + aggregation, rel=1e-12)
        net.reset_key_stats()
        for module in net.attention:  # close keys 0 and 1 of every key layer: they save their 4 C MACs each
            module.gate.bias.view(-1, 4)[:, :2] = -50.0
        net(x)
    measured = net.measured_active_keys()
    assert all(v == pytest.approx(2.0) for layers in measured.values() for v in layers)
    saved = num_layer_pairs * 2 * 4 * c * hw
    assert net.effective_macs(*size) == pytest.approx(dense + aggregation - saved, rel=1e-12)
    with torch.no_grad():  # close every key of the head layer too: no projection nor offsets (C^2 + 2 K C)
        net.reset_key_stats()
        for module in net.attention:
            module.gate.bias.view(-1, 4)[0] = -50.0
        net(x)
    saved += len(net.attention) * (2 * 4 * c + c * c + 2 * 4 * c) * hw
    assert net.effective_macs(*size) == pytest.approx(dense + aggregation - saved, rel=1e-12)
    # the MAC term (after a training pass): the expectation from sigmoid(g) of the same model; keys 0 and 1 of
    # every key layer closed, and keys 0 to 3 of the head layer
    net.train()(x)
    expected = net.expected_attention_macs(*size).item()
    per_layer = [c * c + 2 * 4 * c + 2 * 4 * c + n * 4 * c for n in (0, 2, 2)]  # projection, offsets, heads
    analytic = sum(hw * (c * c + sum(per_layer[:index + 1])) for index in range(len(net.attention)))
    assert expected == pytest.approx(analytic, rel=1e-6)


def tiny_acla_options(root, total_iter, **train):
    from conftest import tiny_sr_options, write_sr_folders
    hr, lr = write_sr_folders(str(root / 'data'), num=4, size=32)
    opt = tiny_sr_options('gates', hr, lr, total_iter=total_iter, **train)
    opt['network_g'] = {'type': 'ACLAEDSR', 'num_feat': 8, 'num_block': 2, 'upscale': 2, 'res_scale': 1,
                        'insert_positions': [1, 2], 'num_keys': 4}
    opt.update(is_train=True, dist=False, rank=0, world_size=1, root_path=str(root))
    opt['path'].update(experiments_root=str(root), models=str(root / 'models'),
                       training_states=str(root / 'training_states'), log=str(root))
    return opt


def test_temperature_schedule_is_applied_logged_and_a_function_of_the_iteration(tmp_path, data):
    opt = tiny_acla_options(tmp_path, 8, gate_temperature={'start': 2.0, 'end': 0.5, 'iters': 4})
    torch.manual_seed(0)
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    lq, gt = data
    for it in (1, 2, 4, 6):
        model.feed_data({'lq': lq[:2, :, :16, :16], 'gt': gt[:2, :, :32, :32]})
        model.optimize_parameters(it)
        expected = 2.0 * 0.25**min(it / 4, 1)
        assert model.log_dict['gate_temp'] == pytest.approx(expected)
        assert all(m.temperature == pytest.approx(expected) for m in net.attention)
    linear = tiny_acla_options(tmp_path, 8, gate_temperature={'start': 2.0, 'end': 0.5, 'mode': 'linear'})
    model = build_model(linear)
    model.feed_data({'lq': lq[:2, :, :16, :16], 'gt': gt[:2, :, :32, :32]})
    model.optimize_parameters(4)  # iters defaults to total_iter (8)
    assert model.log_dict['gate_temp'] == pytest.approx(1.25)
    for bad, match in (({'start': 0}, r'^train\.gate_temperature\.start: 0 is out of range; give a number > 0\.$'),
                       ({'mode': 'cosine'}, r"^train\.gate_temperature\.mode: expected 'exp' or 'linear', got 'cosine'"),
                       ({'stop': 1}, r"^train\.gate_temperature: unknown option 'stop'; known: end, iters, mode, noise_end, start\.")):
        with pytest.raises(OptionError, match=match):
            build_model(tiny_acla_options(tmp_path, 8, gate_temperature=bad)).__class__.check_options(
                tiny_acla_options(tmp_path, 8, gate_temperature=bad))


def test_gate_noise_is_annealed_to_the_evaluation_gates(tmp_path, data):
    """Issue 21: the gate noise falls linearly from 1 to noise_end; at 0 a training pass opens exactly the keys
    that evaluation opens (at 1 it opened a fraction E[sigmoid(g)], evaluation the fraction of g > 0)."""
    opt = tiny_acla_options(tmp_path, 8, gate_temperature={'start': 1.0, 'end': 0.2, 'iters': 4})
    torch.manual_seed(0)
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    lq, gt = data
    for it, noise in ((1, 0.75), (2, 0.5), (4, 0.0), (6, 0.0)):
        model.feed_data({'lq': lq[:2, :, :16, :16], 'gt': gt[:2, :, :32, :32]})
        model.optimize_parameters(it)
        assert model.log_dict['gate_noise'] == pytest.approx(noise)
        assert all(m.noise == pytest.approx(noise) for m in net.attention)
    module = AdaptiveCrossLayerAttention(8, 2, 4)
    with torch.no_grad():
        module.gate.weight.normal_(std=1.0)
        module.gate.bias.zero_()
    x, keys = torch.rand(2, 8, 12, 12), [torch.rand(2, 8, 12, 12) for _ in range(2)]
    module.eval()(x, keys)
    evaluated = module.last_active_keys.clone()
    module.noise = 0.0
    torch.manual_seed(3)
    module.train()(x, keys)
    torch.testing.assert_close(module.last_active_keys, evaluated, rtol=0, atol=0)
    module.noise = 1.0
    module.train()(x, keys)
    assert not torch.equal(module.last_active_keys, evaluated)
    with pytest.raises(OptionError, match=r'^train\.gate_temperature\.noise_end: 2 is out of range'):
        build_model(tiny_acla_options(tmp_path, 8)).check_options(
            tiny_acla_options(tmp_path, 8, gate_temperature={'noise_end': 2}))


def test_logged_open_keys_are_a_moving_average_of_the_training_passes():
    """One batch of patches is a noisy estimate of the open keys; the log line gets their moving average."""
    torch.manual_seed(0)
    net = tiny_edsr(attention='acla', insert_positions=[1, 3]).train()
    with torch.no_grad():
        for module in net.attention:
            module.gate.weight.normal_()
    passes = []
    for _ in range(3):
        net(torch.rand(2, 3, 12, 12))
        passes.append(net.attention[1].last_active_keys.clone())
    expected = passes[0]
    for current in passes[1:]:
        expected = expected * KEY_STATS_DECAY + current * (1 - KEY_STATS_DECAY)
    torch.testing.assert_close(net.attention[1].smoothed_active_keys, expected)
    assert net.training_stats()['keys_p3_p1'] == pytest.approx(expected[1].item())
    net.eval()(torch.rand(2, 3, 12, 12))  # evaluation passes do not enter the training average
    torch.testing.assert_close(net.attention[1].smoothed_active_keys, expected)


def test_macs_weight_is_ramped_in_after_start_iter():
    penalty = {'lambda': 0.4, 'start_iter': 10, 'ramp_iter': 20}
    assert [macs_weight(penalty, it) for it in (5, 10, 11, 20, 30, 50)] == pytest.approx([0, 0, 0.02, 0.2, 0.4, 0.4])
    assert macs_weight({'lambda': 0.4, 'start_iter': 0, 'ramp_iter': 0}, 1) == pytest.approx(0.4)


def test_macs_penalty_closes_keys_and_is_multiplicative(tmp_path, data):
    """The same 40 steps with and without the MAC term: with it the keys close; the term is L_rec * lambda * r."""
    lq, gt = data
    open_keys = {}
    for lam in (0.0, 20.0):
        opt = tiny_acla_options(tmp_path, 40, macs_penalty={'lambda': lam, 'macs_size': 16})
        opt['train']['optim_g']['lr'] = 5e-2
        torch.manual_seed(0)
        model = build_model(opt)
        net = model.get_bare_model(model.net_g)
        for it in range(1, 41):
            torch.manual_seed(it)
            model.feed_data({'lq': lq[:4, :, :16, :16], 'gt': gt[:4, :, :32, :32]})
            model.optimize_parameters(it)
        rec = model.log_dict['l_pix']
        assert model.log_dict['l_macs'] == pytest.approx(rec * lam * model.log_dict['macs_ratio'], rel=1e-4)
        stats = [v for layers in net.active_keys().values() for v in layers.values()]  # the last step's, of 4
        open_keys[lam] = sum(stats) / len(stats) / 4
    assert open_keys[20.0] < 0.1 and open_keys[0.0] > 0.3, open_keys
    with pytest.raises(OptionError, match=r'^train\.macs_penalty\.lambda: missing'):
        build_model(tiny_acla_options(tmp_path, 8)).check_options(tiny_acla_options(tmp_path, 8, macs_penalty={}))
    bad = tiny_acla_options(tmp_path, 8, macs_penalty={'lambda': 0.1})
    bad['network_g'] = {'type': 'EDSR', 'num_feat': 8, 'num_block': 1, 'upscale': 2}
    with pytest.raises(OptionError, match=r'^train\.macs_penalty: network_g\.type EDSR has no expected_attention'):
        build_model(tiny_acla_options(tmp_path, 8)).check_options(bad)


# ---------------------------------------------------------------------- exact export
@pytest.mark.parametrize('cls, kwargs, selection', [
    (ACLASuperEDSR, dict(num_feat=8, num_block=5, num_keys=3, upscale=2), [2, 4]),
    (ACLASuperEDSR, dict(num_feat=8, num_block=5, num_keys=3, upscale=2), [1, 3, 5]),
    (ACLASuperRCAN, dict(num_feat=16, num_group=4, num_block=1, squeeze_factor=4, num_keys=2, upscale=2), [1, 4]),
])
def test_a_hard_selection_of_the_supernet_is_exactly_the_exported_network(cls, kwargs, selection):
    torch.manual_seed(0)
    net = cls(**kwargs)
    with torch.no_grad():
        for module in net.attention:
            for name, p in module.named_parameters():
                p.add_(torch.randn_like(p) * (0.01 if 'offset' in name else 1.0))
            # the dropped layers' logits dominate: masking after the softmax would underflow the kept weights
            module.logit.bias.view(module.num_key_layers, -1)[1:] += 200.0
        net.arch_logits.copy_(torch.tensor([30.0 if p in selection else -30.0 for p in net.insert_positions]))
    opt = net.final_network_opt(selection)
    final = (ACLAEDSR if cls is ACLASuperEDSR else ACLARCAN)(**{k: v for k, v in opt.items() if k != 'type'})
    final.load_state_dict(net.final_state_dict(selection), strict=True)
    x = torch.rand(2, 3, 10, 12)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), final.eval()(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='not a candidate'):
        ACLASuperEDSR(num_feat=8, num_block=5, candidates=[1, 3]).final_state_dict([2])


def test_exported_config_takes_the_task_recipe(tmp_path, data):
    recipe = tmp_path / 'recipe.yml'
    recipe_opt = {'name': 'task', 'model_type': 'RestorationModel', 'scale': 2, 'num_gpu': 0,
                  'datasets': {'train': {'name': 'task_data', 'type': 'PairedImageDataset'}},
                  'network_g': {'type': 'ACLAEDSR'},
                  'train': {'total_iter': 300000, 'scheduler': {'type': 'MultiStepLR', 'milestones': [200000]},
                            'optim_g': {'type': 'Adam', 'lr': 1e-4}, 'macs_penalty': {'lambda': 0.2}}}
    recipe.write_text(yaml.safe_dump(recipe_opt))
    opt = search_options(tmp_path, 0.0, 2, final_config=str(recipe))
    model = run_search(opt, data)
    model.record_search(2)
    config = yaml.safe_load(open(tmp_path / CONFIG_FILE))
    assert config['train'] == recipe_opt['train'] and config['datasets'] == recipe_opt['datasets']
    assert config['name'] == 'toy_search_searched' and config['network_g']['type'] == 'ACLAEDSR'
    assert exported(tmp_path)['recipe'] == str(recipe)
    with pytest.raises(OptionError, match=r'^train\.search\.final_config: .* is not a file'):
        run_search(search_options(tmp_path, 0.0, 2, final_config='nope.yml'), data)
    # every shipped search config names an existing recipe
    for name in os.listdir(osp.join(ROOT, 'options', 'search')):
        with open(osp.join(ROOT, 'options', 'search', name)) as f:
            final = yaml.safe_load(f)['train']['search'].get('final_config')
        assert final and osp.isfile(osp.join(ROOT, final)), name


# ---------------------------------------------------------------------- the search's lambda
@pytest.mark.slow
def test_search_closes_useless_candidates_first(tmp_path, data):
    """Candidates 1 and 3 are made useless, as queries (their output forced to the identity) and as key layers
    (their value maps in later candidates fixed at zero, so their keys only take softmax weight from the others):
    the MAC term closes them, while the useful ones stay open (lambda 0 keeps all four open on this toy problem; a
    tiny 8-channel backbone, where attention costs 40 % of its MACs). With straight-through position gates (the
    default) a candidate useless only as a query stays open for its features as a key layer. After 160 iterations
    the useless gates are still above 0.5 (measured: P 0.53 and 0.53 against 0.87 and 0.56): the expected-count
    readout drops them, the default readout (the most probable selection of at least the most probable count) keeps
    the mode, every candidate."""
    opt = search_options(tmp_path, 0.02, 160, arch_start_iter=40)
    opt['network_g'] = dict(opt['network_g'], num_block=4)
    opt['train']['optim_arch']['lr'] = 0.05
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(opt))
    net = model.get_bare_model(model.net_g)
    useless = [0, 2]
    for index in useless:
        net.attention[index].register_forward_hook(lambda module, args, out: args[0])
        for later in net.attention[index + 1:]:  # its feature is key layer index + 1 of every later candidate
            for param in later.value[index + 1].parameters():
                param.requires_grad_(False)
                torch.nn.init.zeros_(param)
    run_search(opt, data, model=model)
    probs = net.gate_probabilities()
    useful = [i for i in range(4) if i not in useless]
    assert probs[useless].max() < probs[useful].min(), probs  # closed first
    assert readout_selection(probs.tolist(), 'expected_count') == useful, probs  # round(sum P) = 2: the useful ones
    assert set(useful) <= set(readout_selection(probs.tolist())), probs  # the default keeps them too


# ---------------------------------------------------------------------- effective MACs of a checkpoint
@pytest.mark.slow
def test_complexity_reports_a_checkpoints_measured_keys_and_effective_macs(tmp_path):
    import subprocess
    import sys

    import cv2
    import numpy as np
    network = {'type': 'ACLAEDSR', 'num_feat': 8, 'num_block': 2, 'upscale': 2, 'res_scale': 1,
               'insert_positions': [1, 2], 'num_keys': 4}
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump({'network_g': network}))
    torch.manual_seed(0)
    net = ACLAEDSR(**{k: v for k, v in network.items() if k != 'type'})
    with torch.no_grad():
        for module in net.attention:  # keys 0 and 1 of every key layer closed, 2 and 3 open
            module.gate.bias.view(-1, 4)[:, :2] = -50.0
    torch.save({'params': net.state_dict()}, tmp_path / 'net.pth')
    (tmp_path / 'lr').mkdir()
    cv2.imwrite(str(tmp_path / 'lr' / 'a.png'), np.random.default_rng(0).integers(0, 255, (12, 10, 3), np.uint8))
    script = osp.join(ROOT, 'scripts', 'complexity.py')
    run = subprocess.run([sys.executable, script, '-opt', str(tmp_path / 'opt.yml'), '--checkpoint',
                          str(tmp_path / 'net.pth'), '--images', str(tmp_path / 'lr'), '--size', '16'],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'mean open keys per key layer: 2.00 of 4 (50.0 %)' in run.stdout
    assert 'ACLA effective below CLA' in run.stdout
    # 3 (module, key layer) pairs, 2 closed keys, 4 C MACs each (their aggregation; offsets are computed for every
    # key of a projected key layer), per pixel
    saved = 3 * 2 * 4 * 8 * 16 * 16
    aggregation = 3 * 4 * 4 * 8 * 16 * 16  # of every key, when all are open
    dense = counted_macs(lambda: ACLAEDSR(**{k: v for k, v in network.items() if k != 'type'}), 16, 16)
    assert f'| ACLA effective (measured open keys) | {(dense + aggregation - saved) / 1e6:.3f} |' in run.stdout
    bad = subprocess.run([sys.executable, script, '-opt', str(tmp_path / 'opt.yml'), '--checkpoint',
                          str(tmp_path / 'missing.pth')], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == (f'error: --checkpoint: {tmp_path / "missing.pth"} does not '
                                                          'exist; give an existing file (see complexity.py -h)')
