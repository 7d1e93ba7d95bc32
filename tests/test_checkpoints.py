"""Self-describing checkpoints: every ``net_g_*.pth`` written by training carries its ``network_g`` (and scale,
task, colour) in the state dict's ``_metadata``, as the published zoo files do; ``load_network`` and
``acla-restore`` need no options file for them, find zoo networks by name, and name both architectures when a
checkpoint belongs to another network than the options describe."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml

from acla_basicsr.cli.restore import main
from acla_basicsr.errors import OptionError
from acla_basicsr.inference import load_network, restore
from acla_basicsr.inference.checkpoints import (described_state_dict, resolve_checkpoint, stored_description,
                                                zoo_models)
from acla_basicsr.inference.detect import METADATA_KEY
from conftest import ROOT, smooth_image

EDSR_G = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': 2}
SUPERNET_G = {'type': 'ACLASuperEDSR', 'num_feat': 8, 'num_block': 3, 'upscale': 2, 'res_scale': 1, 'num_keys': 2}


def build_model(tmp_path, network_g, seed=0):
    """A RestorationModel (not training) that writes its checkpoints into ``tmp_path/models``."""
    from basicsr.models import build_model as basicsr_build
    (tmp_path / 'models').mkdir(parents=True, exist_ok=True)
    opt = {'name': 'ckpt', 'model_type': 'RestorationModel', 'scale': 2, 'num_gpu': 0, 'is_train': False,
           'dist': False, 'rank': 0, 'world_size': 1, 'network_g': dict(network_g),
           'path': {'models': str(tmp_path / 'models'), 'pretrain_network_g': None}, 'val': {}}
    model = basicsr_build(opt)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def first_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    return lines[0]


def test_training_checkpoints_describe_themselves_and_load_strictly(tmp_path):
    model = build_model(tmp_path, EDSR_G)
    ema = build_model(tmp_path / 'ema', EDSR_G, seed=1).net_g  # other weights, as an EMA copy would have
    model.save_network([model.net_g, ema], 'net_g', -1, param_key=['params', 'params_ema'])  # as SRModel.save
    path = str(tmp_path / 'models' / 'net_g_latest.pth')
    saved = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('params', 'params_ema'):
        entry = saved[key]._metadata[METADATA_KEY]
        assert entry == {'network_g': EDSR_G, 'scale': 2, 'task': 'super-resolution x2 (MATLAB bicubic downscaling)',
                         'colour': 'rgb'}
        assert saved[key]._metadata[''] == {'version': 1}  # torch's own module versions are kept
    # basicsr 1.4.2's own loader and torch's strict load_state_dict ignore the description
    fresh = build_model(tmp_path / 'fresh', EDSR_G)
    fresh.load_network(fresh.net_g, path, strict=True, param_key='params_ema')
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(fresh.net_g(x), ema.eval()(x))
        type(model.net_g)(3, 3, 4, 1, 2).load_state_dict(saved['params'], strict=True)
        # no options needed: the file says which network it holds; params_ema first, as with options
        torch.testing.assert_close(load_network(path, device='cpu')(x), ema(x))
        torch.testing.assert_close(load_network(None, path, param_key='params', device='cpu')(x), model.net_g(x))


def test_search_supernet_checkpoint_describes_itself(tmp_path):
    model = build_model(tmp_path, SUPERNET_G)
    model.save_network(model.net_g, 'net_g', 4)
    net = load_network(str(tmp_path / 'models' / 'net_g_4.pth'), device='cpu')
    assert type(net).__name__ == 'ACLASuperEDSR'
    assert stored_description(net.state_dict()) is None  # the description is the file's, not the network's
    state = torch.load(tmp_path / 'models' / 'net_g_4.pth', weights_only=True)['params']
    assert stored_description(state)['network_g'] == SUPERNET_G


def test_a_checkpoint_without_description_needs_options(tmp_path, capsys):
    net = build_model(tmp_path, EDSR_G).net_g
    torch.save({'params': net.state_dict()}, tmp_path / 'old.pth')  # as training wrote it before
    with pytest.raises(OptionError, match='does not say which network it holds.*give -opt'):
        load_network(str(tmp_path / 'old.pth'))
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), smooth_image(np.random.default_rng(0), 8))
    assert main(['--model', str(tmp_path / 'old.pth'), '-i', str(image), '-o', str(tmp_path / 'out')]) == 2
    assert 'give -opt with the options file' in first_error(capsys) and not (tmp_path / 'out').exists()
    opt = tmp_path / 'opt.yml'
    opt.write_text(yaml.safe_dump({'network_g': EDSR_G}))
    assert main(['-opt', str(opt), '--model', str(tmp_path / 'old.pth'), '-i', str(image), '-o',
                 str(tmp_path / 'out')]) == 0
    assert cv2.imread(str(tmp_path / 'out' / 'a.png')).shape == (16, 16, 3)


def test_options_override_the_description_and_another_network_names_both(tmp_path, capsys):
    model = build_model(tmp_path, EDSR_G)
    model.save_network(model.net_g, 'net_g', 2)
    path = str(tmp_path / 'models' / 'net_g_2.pth')
    # -opt overrides: the same network described with other non-structural options loads
    load_network(dict(EDSR_G, res_scale=0.5), path, device='cpu')
    with pytest.raises(OptionError) as error:
        load_network({'type': 'ENLCN', 'num_feat': 8, 'num_block': 2, 'upscale': 2,
                      'attention_positions': [0], 'num_embed_feat': 4, 'num_samples': 8}, path)
    message = str(error.value)
    assert len(message.splitlines()) == 1 and 'holds the weights of EDSR (x2, num_feat 4, num_block 1)' in message
    assert "not of network_g's ENLCN (x2, num_feat 8, num_block 2)" in message and 'missing' not in message.lower()
    with pytest.raises(OptionError, match=r'EDSR \(x2, num_feat 8, num_block 1\) \(num_feat 4 against 8\)'):
        load_network(dict(EDSR_G, num_feat=8), path)
    # a zoo file given with the options of another network (a published ACLA, ENLCN's options)
    opt = os.path.join(ROOT, 'options', 'test', 'zoo', 'demo_ENLCN_SRx2.yml')
    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), smooth_image(np.random.default_rng(0), 8))
    assert main(['-opt', opt, '-n', 'demo_ACLA_SRx2', '-i', str(image), '-o', str(tmp_path / 'out')]) == 2
    line = first_error(capsys)
    assert 'holds the weights of ACLAEDSR (x2, num_feat 32, num_block 4), not of network_g\'s ENLCN' in line
    assert 'drop -opt' in line and not (tmp_path / 'out').exists()


def test_zoo_networks_by_name_and_url_keep_the_hash_check(tmp_path, capsys, monkeypatch):
    models = zoo_models()
    assert {'demo_ACLA_SRx2', 'demo_EDSR_SRx2', 'demo_EARN_SRx2'} <= set(models)
    image = smooth_image(np.random.default_rng(1), 8)
    cv2.imwrite(str(tmp_path / 'a.png'), image[..., ::-1])
    for argv in (['-n', 'demo_EDSR_SRx2'], ['--model', 'demo_EDSR_SRx2']):
        out = tmp_path / argv[0].strip('-')
        assert main(argv + ['-i', str(tmp_path / 'a.png'), '-o', str(out), '--device', 'cpu']) == 0
        expected = restore(load_network('demo_EDSR_SRx2', device='cpu'), image)
        assert np.array_equal(cv2.imread(str(out / 'a.png'))[..., ::-1], expected)
    capsys.readouterr()
    assert main(['-n', 'demo_NOPE', '-i', str(tmp_path / 'a.png'), '-o', str(tmp_path / 'never')]) == 2
    line = first_error(capsys)
    assert "-n: no network named 'demo_NOPE'" in line and 'known names: demo_ACLA_SRx2, demo_EARN_SRx2' in line
    assert not (tmp_path / 'never').exists()
    # URLs keep the hash check: a renamed copy is refused and its download removed
    wrong = tmp_path / 'demo_EDSR_SRx2-00000000.pth'
    shutil.copy(models['demo_EDSR_SRx2'], wrong)
    with pytest.raises(OptionError, match='does not match the -00000000 of its name'):
        load_network('file://' + str(wrong), model_dir=str(tmp_path / 'cache'))
    assert os.listdir(tmp_path / 'cache') == []
    path = resolve_checkpoint('file://' + models['demo_EDSR_SRx2'], model_dir=str(tmp_path / 'cache'),
                              progress=False)
    assert os.path.basename(path) == os.path.basename(models['demo_EDSR_SRx2'])
    # a damaged zoo file is refused by name as well
    zoo = tmp_path / 'cwd' / 'model_zoo'
    zoo.mkdir(parents=True)
    shutil.copy(wrong, zoo / 'demo_BROKEN-00000000.pth')
    monkeypatch.chdir(tmp_path / 'cwd')
    with pytest.raises(OptionError, match='does not match'):
        load_network('demo_BROKEN')


def test_published_and_training_descriptions_are_one_format():
    state = {'w': torch.zeros(2)}
    described = described_state_dict(state, {'type': 'EDSR'}, scale=2, task=None)
    assert described._metadata == {METADATA_KEY: {'network_g': {'type': 'EDSR'}, 'scale': 2}}
    published = torch.load(sorted(zoo_models().values())[0], weights_only=True)
    assert set(stored_description(next(iter(published.values())))) == {'network_g'}  # older zoo files: network_g
