"""The model zoo: publishing (hash-named weights, safetensors, model cards), loading by path or URL with the
hash checked, spandrel detection of every family, and the published demo networks (their files, cards, and a
card's PSNR reproduced through test.py). The ONNX export of every family: tests/test_onnx.py."""
import copy
import glob
import hashlib
import importlib.util
import json
import math
import os
import os.path as osp
import shutil

import pytest
import torch
import yaml

from acla_basicsr.errors import OptionError
from acla_basicsr.inference.detect import network_options
from acla_basicsr.inference import build_network, load_network
from acla_basicsr.zoo.card import parse_test_log, read_card, read_front_matter, render_card
from acla_basicsr.config.schema import check_schema
from acla_basicsr.zoo.published import check_hash_suffix, file_sha256, load_zoo_model, read_state_dict, zoo_parts
from conftest import ROOT, SHARED_DATASETS, run_entry


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


publish_model = load_script('publish_model')

MEAN = [0.4488, 0.4371, 0.4040]
# One tiny network per family, with arguments that differ from the detection conventions where a tensor cannot
# tell them (ACLA positions, EARN heads), so that the published metadata is what makes them load right.
TINY = {
    'EDSR': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'upscale': 2,
             'res_scale': 1, 'img_range': 255., 'rgb_mean': MEAN},
    'ACLAEDSR': {'type': 'ACLAEDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 3, 'upscale': 2,
                 'res_scale': 1, 'img_range': 255., 'rgb_mean': MEAN, 'attention': 'acla', 'insert_positions': [1, 2],
                 'num_keys': 2},
    'ACLARCAN': {'type': 'ACLARCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_group': 2, 'num_block': 1,
                 'squeeze_factor': 4, 'upscale': 3, 'attention': 'cla', 'insert_positions': [1, 2], 'num_keys': 2},
    'ENLCN': {'type': 'ENLCN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'upscale': 2,
              'res_scale': 1, 'attention_positions': [0, 2], 'num_embed_feat': 4, 'num_samples': 8,
              'attention_res_scale': 1},
    'EARN': {'type': 'EARN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2,
             'reduction': 2, 'window_size': 3, 'num_heads': 2},
    'ACLAEDSR_gray_x1': {'type': 'ACLAEDSR', 'num_in_ch': 1, 'num_out_ch': 1, 'num_feat': 8, 'num_block': 2,
                         'upscale': 1, 'res_scale': 1, 'attention': 'acla', 'insert_positions': [1, 2], 'num_keys': 2},
}
ZOO = osp.join(ROOT, 'model_zoo')
ZOO_MODELS = sorted(glob.glob(osp.join(ZOO, '*.pth')))


def tiny_net(key, seed=0):
    """The network of ``TINY[key]`` with random weights everywhere (zero-initialised layers included)."""
    net = build_network(dict(TINY[key]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return net.eval()


def training_checkpoint(tmp_path, key, ema=False):
    """A checkpoint as basicsr's training writes it: ``{'params': ...}`` (and ``params_ema``); its options file."""
    net = tiny_net(key)
    state = {'params': net.state_dict()}
    if ema:
        state['params_ema'] = tiny_net(key, seed=1).state_dict()
    ckpt, opt = tmp_path / f'{key}.pth', tmp_path / f'{key}.yml'
    torch.save(state, ckpt)
    opt.write_text(yaml.safe_dump({'name': f'tiny_{key}', 'scale': TINY[key]['upscale'], 'network_g': TINY[key]}))
    return str(ckpt), str(opt), net


def publish(tmp_path, key, *args, ema=False):
    ckpt, opt, net = training_checkpoint(tmp_path, key, ema)
    publish_model.main(['-opt', opt, '--model', ckpt, '--out', str(tmp_path / 'zoo'), *args])
    (pth, ) = glob.glob(str(tmp_path / 'zoo' / '*.pth'))
    return pth, net


def first_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------ publishing


def test_publish_names_files_by_hash_and_writes_a_card_that_loads_strictly(tmp_path):
    pth, _ = publish(tmp_path, 'ACLAEDSR', '--name', 'tiny', ema=True)
    name, sha8 = zoo_parts(pth)
    assert name == 'tiny' and file_sha256(pth).startswith(sha8)
    card = read_front_matter(pth[:-4] + '.md')
    assert card['sha256'] == file_sha256(pth) and card['param_key'] == 'params_ema'  # preferred when present
    assert card['architecture'] == 'ACLAEDSR' and card['files']['safetensors'] == f'tiny-{sha8}.safetensors'
    # weights only, and the card's network_g loads them strictly (basicsr's way: network_g + the .pth)
    assert list(torch.load(pth, weights_only=True)) == ['params_ema']
    net = load_network(card['network_g'], pth, param_key='params_ema', strict=True, device='cpu')
    ema = tiny_net('ACLAEDSR', seed=1)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ema.state_dict().values()))
    safe, key = read_state_dict(pth[:-4] + '.safetensors')
    assert key == 'params_ema' and all(torch.equal(safe[k], v) for k, v in ema.state_dict().items())
    # the same weights again: the same name; --param-key params: other weights, another name
    publish_model.main(['-opt', str(tmp_path / 'ACLAEDSR.yml'), '--model', str(tmp_path / 'ACLAEDSR.pth'), '--out',
                        str(tmp_path / 'zoo'), '--name', 'tiny'])
    assert glob.glob(str(tmp_path / 'zoo' / '*.pth')) == [pth]
    publish_model.main(['-opt', str(tmp_path / 'ACLAEDSR.yml'), '--model', str(tmp_path / 'ACLAEDSR.pth'), '--out',
                        str(tmp_path / 'zoo'), '--name', 'tiny', '--param-key', 'params'])
    assert len(glob.glob(str(tmp_path / 'zoo' / '*.pth'))) == 2
    assert not glob.glob(str(tmp_path / 'zoo' / '.*'))  # no temporary file left


@pytest.mark.parametrize('case', ['missing', 'mismatch', 'log'])
def test_publish_bad_input_is_one_line_naming_the_file_and_exit_2(tmp_path, capsys, case):
    ckpt, opt, _ = training_checkpoint(tmp_path, 'EDSR')
    args = ['-opt', opt, '--model', ckpt, '--out', str(tmp_path / 'zoo')]
    if case == 'missing':
        args[3] = str(tmp_path / 'nothing.pth')
        expected = f'error: --model: {tmp_path / "nothing.pth"} does not exist'
    elif case == 'mismatch':
        args[1] = training_checkpoint(tmp_path, 'ENLCN')[1]
        expected = f'error: {ckpt}: does not fit network_g (ENLCN)'
    else:
        (tmp_path / 'test.log').write_text('2026-01-01 00:00:00,000 INFO: nothing useful\n')
        args += ['--metrics', str(tmp_path / 'test.log')]
        expected = f'error: {tmp_path / "test.log"}: no options dump'
    with pytest.raises(SystemExit) as exit_info:
        publish_model.main(args)
    assert exit_info.value.code == 2
    assert first_error_line(capsys).startswith(expected)
    assert not osp.exists(tmp_path / 'zoo') or not os.listdir(tmp_path / 'zoo')


def test_publish_hub_folder_holds_the_card_weights_and_config(tmp_path):
    pth, net = publish(tmp_path, 'ACLAEDSR', '--hub-folder', str(tmp_path / 'hub'))
    stem = osp.splitext(osp.basename(pth))[0]
    assert sorted(os.listdir(tmp_path / 'hub')) == sorted(['README.md', 'config.json', f'{stem}.pth',
                                                           f'{stem}.safetensors'])
    assert (tmp_path / 'hub' / 'README.md').read_text() == open(pth[:-4] + '.md').read()
    for ext in ('.pth', '.safetensors'):
        assert file_sha256(str(tmp_path / 'hub' / (stem + ext))) == file_sha256(pth[:-4] + ext)
    config = json.loads((tmp_path / 'hub' / 'config.json').read_text())
    assert config['network_g'] == TINY['ACLAEDSR'] and config['scale'] == 2 and config['param_key'] == 'params'
    assert config['sha256'] == file_sha256(pth) and config['task'].startswith('super-resolution x2')
    loaded = load_zoo_model(str(tmp_path / 'hub' / f'{stem}.pth'))
    x = torch.rand(1, 3, 9, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert not glob.glob(str(tmp_path / 'hub' / '.*'))  # no temporary file left


def zoo_copy(tmp_path, name='demo_EDSR_SRx2'):
    """A copy of a zoo network's card and weights in ``tmp_path/zoo``; the card's path."""
    (pth, ) = [v for v in ZOO_MODELS if osp.basename(v).startswith(name + '-')]
    os.makedirs(tmp_path / 'zoo', exist_ok=True)
    for ext in ('.pth', '.safetensors', '.md'):
        shutil.copy(pth[:-4] + ext, tmp_path / 'zoo')
    return str(tmp_path / 'zoo' / osp.basename(pth[:-4] + '.md'))


def test_refresh_card_rerenders_a_card_from_itself(tmp_path, capsys):
    """A card of the layout before the Hub's model-index gets it back, nothing else changes; with --hub-folder."""
    card = zoo_copy(tmp_path)
    front, description, commands = read_card(card)
    text = render_card(front, description, commands, front['metrics'])
    old = text.replace(text[text.index('model-index:'):text.index('\n---\n', 4) + 1], '')  # the card as it was
    with open(card, 'w') as f:
        f.write(old)
    assert 'model-index' not in read_front_matter(card)
    publish_model.main(['--refresh-card', card, '--hub-folder', str(tmp_path / 'hub')])
    assert open(card).read() == text and (tmp_path / 'hub' / 'README.md').read_text() == text
    assert sorted(os.listdir(tmp_path / 'hub'))[:2] == ['README.md', 'config.json']
    publish_model.main(['--refresh-card', card])  # a refreshed card is its own rendering
    assert open(card).read() == text


@pytest.mark.parametrize('case', ['hand-edited', 'other arguments', 'no weights', 'two cards, one folder'])
def test_refresh_card_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    card = zoo_copy(tmp_path)
    args, expected = ['--refresh-card', card], f'error: --refresh-card: {card}: its text is not the layout'
    if case == 'hand-edited':
        with open(card, 'a') as f:
            f.write('A line added by hand.\n')
    elif case == 'other arguments':
        args += ['--out', str(tmp_path / 'zoo'), '--trained-on', 'x']
        expected = 'error: --out, --trained-on: not used with --refresh-card'
    elif case == 'no weights':
        os.remove(card[:-3] + '.safetensors')
        args += ['--hub-folder', str(tmp_path / 'hub')]
        expected = f"error: --refresh-card: {card[:-3] + '.safetensors'}: not found beside its card"
    else:
        args = ['--refresh-card', card, card, '--hub-folder', str(tmp_path / 'hub')]
        expected = 'error: --hub-folder: give one --refresh-card with it'
    before = {v: open(v, 'rb').read() for v in glob.glob(str(tmp_path / 'zoo' / '*'))}
    with pytest.raises(SystemExit) as exit_info:
        publish_model.main(args)
    assert exit_info.value.code == 2
    assert first_error_line(capsys).startswith(expected)
    assert {v: open(v, 'rb').read() for v in glob.glob(str(tmp_path / 'zoo' / '*'))} == before
    assert not osp.exists(tmp_path / 'hub')


@pytest.mark.slow
def test_publish_reads_the_metrics_of_test_logs_of_these_weights(tmp_path, sr_folders, experiment_name, capsys):
    pth, _ = publish(tmp_path, 'EDSR')
    hr_dir, lr_dir = sr_folders
    opt = {'name': experiment_name, 'model_type': 'RestorationModel', 'scale': 2, 'num_gpu': 0,
           'datasets': {'test_1': {'name': 'tiny_test', 'type': 'PairedImageDataset', 'dataroot_gt': hr_dir,
                                   'dataroot_lq': lr_dir, 'io_backend': {'type': 'disk'}}},
           'network_g': TINY['EDSR'],
           'path': {'pretrain_network_g': pth, 'strict_load_g': True, 'param_key_g': 'params'},
           'val': {'save_img': False, 'reference': 'bicubic', 'metrics': {
               'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True},
               'ssim': {'type': 'calculate_ssim', 'crop_border': 2, 'test_y_channel': True}}}}
    opt_path = tmp_path / 'test.yml'
    opt_path.write_text(yaml.safe_dump(opt))
    result = run_entry('test', opt_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (log, ) = glob.glob(osp.join(ROOT, 'results', experiment_name, 'test_*.log'))
    parsed = parse_test_log(log)
    assert parsed['checkpoint'] == pth and [s['name'] for s in parsed['sets']] == ['tiny_test']
    args = ['-opt', str(tmp_path / 'EDSR.yml'), '--model', str(tmp_path / 'EDSR.pth'), '--out', str(tmp_path / 'zoo'),
            '--metrics', log, '--train-command', 'python acla_basicsr/train.py -opt X.yml --force_yml num_gpu=1']
    publish_model.main(args)
    text = open(pth[:-4] + '.md').read()
    (row, ) = read_front_matter(pth[:-4] + '.md')['metrics']
    psnr = parsed['sets'][0]['metrics']['psnr']
    assert row['dataset'] == 'tiny_test' and row['psnr'] == round(psnr, 4) and row['psnr_crop_border'] == 2
    assert row['psnr_y_channel'] is True and row['baseline'] == 'bicubic' and 'baseline_psnr' in row
    assert f'| tiny_test | {psnr:.4f} |' in text and '--force_yml num_gpu=1' in text
    # a log of other weights is refused
    other = str(tmp_path / 'other.pth')
    torch.save({'params': tiny_net('EDSR', seed=5).state_dict()}, other)
    args[3] = other
    with pytest.raises(SystemExit) as exit_info:
        publish_model.main(args)
    assert exit_info.value.code == 2
    assert first_error_line(capsys).startswith(f'error: {log}: tested {pth}, whose parameters differ from --model')


# ------------------------------------------------------------------------------------------ loading by URL


def test_load_zoo_model_by_file_url_checks_the_hash(tmp_path):
    pth, net = publish(tmp_path, 'EDSR')
    cache = tmp_path / 'cache'
    loaded = load_zoo_model('file://' + pth, model_dir=str(cache), progress=False)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert os.listdir(cache) == [osp.basename(pth)]
    # a file whose content does not match its name: one line, and the bad download is not kept
    wrong = osp.join(osp.dirname(pth), 'tiny-00000000.pth')
    shutil.copy(pth, wrong)
    with pytest.raises(OptionError) as error:
        load_zoo_model('file://' + wrong, model_dir=str(cache), progress=False)
    assert len(str(error.value).splitlines()) == 1 and 'does not match the -00000000 of its name' in str(error.value)
    assert not osp.exists(cache / 'tiny-00000000.pth')
    with pytest.raises(OptionError, match='does not match'):
        check_hash_suffix(wrong)
    # the .safetensors copy loads the same network (its options in the safetensors metadata)
    safe = load_zoo_model(pth[:-4] + '.safetensors')
    with torch.no_grad():
        assert torch.equal(safe(x), net(x))


# ------------------------------------------------------------------------------------------ spandrel


@pytest.mark.parametrize('key', ['EDSR', 'ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN', 'ACLAEDSR_gray_x1'])
def test_spandrel_detects_and_loads_every_family(tmp_path, key):
    spandrel = pytest.importorskip('spandrel')
    from acla_basicsr.zoo.spandrel_support import register
    register()
    assert register() == []  # idempotent
    pth, net = publish(tmp_path, key)
    model = spandrel.ModelLoader().load_from_file(pth)
    options = TINY[key]
    assert type(model.model).__name__ == options['type'] and model.architecture.id == options['type']
    assert model.scale == options['upscale'] and model.input_channels == options['num_in_ch']
    assert model.output_channels == options['num_out_ch']
    x = torch.rand(1, options['num_in_ch'], 14, 11)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x).clamp(0, 1), atol=1e-6)
    # the shapes alone (no stored options) give every argument that a tensor holds
    detected = network_options(torch.load(pth, weights_only=True)['params'], use_metadata=False)
    for arg in ('type', 'num_in_ch', 'num_out_ch', 'num_feat', 'num_block', 'num_group', 'upscale', 'attention',
                'num_keys', 'attention_positions', 'num_embed_feat', 'num_samples', 'window_size', 'reduction',
                'squeeze_factor'):
        if arg in options:
            assert detected[arg] == options[arg], arg


def test_spandrel_leaves_other_architectures_alone():
    spandrel = pytest.importorskip('spandrel')
    from acla_basicsr.zoo.spandrel_support import register
    register()
    # a SwinIR-like layout (conv_first, conv_after_body, conv_last, no body.N.conv1) is not claimed
    state = {'conv_first.weight': torch.zeros(8, 3, 3, 3), 'conv_after_body.weight': torch.zeros(8, 8, 3, 3),
             'conv_last.weight': torch.zeros(3, 8, 3, 3),
             'layers.0.residual_group.blocks.0.norm1.weight': torch.zeros(8)}
    for arch in spandrel.MAIN_REGISTRY.architectures('detection')[:5]:
        assert not arch.detect(state)


# The decisions that the descriptors must declare (acla_basicsr/zoo/spandrel_support.py says why).
SPANDREL_TILING = {'EDSR': 'SUPPORTED', 'ACLAEDSR': 'SUPPORTED', 'ACLARCAN': 'SUPPORTED', 'ENLCN': 'DISCOURAGED',
                   'EARN': 'SUPPORTED'}


def photo(height, width, channels=3):
    """A crop of a photograph that scikit-image ships, (1, C, H, W) in [0, 1]."""
    from skimage import data
    crop = data.chelsea()[100:100 + height, 180:180 + width, :channels]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def psnr_against(output, reference):
    mse = (output.float() - reference).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def spandrel_model(path):
    spandrel = pytest.importorskip('spandrel')
    from acla_basicsr.zoo.spandrel_support import register
    register()
    return spandrel.ModelLoader().load_from_file(path)


@pytest.mark.parametrize('key', ['EDSR', 'ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN', 'ACLAEDSR_gray_x1'])
def test_spandrel_declares_tiling_and_runs_at_every_size(tmp_path, key):
    """The declared tiling; no size requirement, and sizes from the minimum (1x1) on run without padding."""
    pth, net = publish(tmp_path, key)
    model = spandrel_model(pth)
    assert model.tiling.name == SPANDREL_TILING[TINY[key]['type']]
    assert model.size_requirements.none and model.size_requirements.minimum == 0
    channels, scale = TINY[key]['num_in_ch'], TINY[key]['upscale']
    for height, width in ((1, 1), (1, 4), (3, 2), (5, 7)):
        x = torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(height))
        assert model.size_requirements.check(width, height)
        with torch.no_grad():
            assert torch.allclose(model(x), net(x).clamp(0, 1), atol=1e-6), (height, width)
        assert model(x).shape[-2:] == (height * scale, width * scale)


# one trained network per family (and a tiny ACLARCAN: no zoo network), at a size a CPU runs quickly in float16
PRECISION_CASES = ['demo_EDSR_SRx2', 'demo_EDSR_DM', 'demo_ACLA_SRx2', 'demo_ENLCN_SRx2', 'demo_EARN_SRx2',
                   'tiny ACLARCAN']


@pytest.mark.parametrize('case', PRECISION_CASES)
def test_spandrel_half_and_bfloat16_within_the_declared_tolerance(tmp_path, case):
    """What spandrel users do with a declared dtype (``model.half()`` / ``model.bfloat16()``, the image in that
    dtype): the output stays within PRECISION_PSNR dB of float32's, finite."""
    from acla_basicsr.zoo.spandrel_support import PRECISION_PSNR
    if case.startswith('tiny '):
        pth = publish(tmp_path, case.split()[1])[0]
    else:
        (pth, ) = [v for v in ZOO_MODELS if osp.basename(v).startswith(case + '-')]
    model = spandrel_model(pth)
    x = photo(32, 28, model.input_channels)
    reference = model(x)
    for dtype in (torch.bfloat16, torch.float16):
        assert model.supports_bfloat16 if dtype == torch.bfloat16 else model.supports_half
        low = copy.deepcopy(model).to(dtype)  # spandrel's check of the declaration, then .to of the network
        output = low(x.to(dtype))
        assert output.dtype == dtype and output.shape == reference.shape and torch.isfinite(output).all()
        assert psnr_against(output, reference) > PRECISION_PSNR, dtype


def test_spandrel_tiling_declarations_match_tiled_outputs():
    """Tiles with 16 pixels of context: the SUPPORTED zoo networks keep their output within 8-bit rounding
    (EDSR's receptive field is 12 pixels: equal up to float rounding), ENLCN's (DISCOURAGED) changes beyond it."""
    from acla_basicsr.inference.tiles import tile_forward
    x = photo(64, 64)
    for pth in ZOO_MODELS:
        model = spandrel_model(pth)
        with torch.no_grad():
            difference = (tile_forward(model, x, 32, 16) - model(x)).abs().max().item() * 255
        if model.architecture.id == 'EDSR':
            assert difference < 1e-3, pth
        elif model.tiling.name == 'SUPPORTED':
            assert difference < 0.5, (pth, difference)
        else:
            assert difference > 0.5, (pth, difference)


# ------------------------------------------------------------------------------------------ the published zoo


def zoo_ids():
    return [osp.basename(v) for v in ZOO_MODELS]


@pytest.mark.parametrize('pth', ZOO_MODELS, ids=zoo_ids())
def test_zoo_file_hash_card_and_strict_load(pth):
    check_hash_suffix(pth)
    card = read_front_matter(pth[:-4] + '.md')
    assert card['sha256'] == hashlib.sha256(open(pth, 'rb').read()).hexdigest()
    load_network(card['network_g'], pth, param_key=card['param_key'], strict=True, device='cpu')
    assert network_options(read_state_dict(pth)[0]) == card['network_g']
    test_options = osp.join(ROOT, 'options', 'test', 'zoo', f"{card['model_name']}.yml")
    with open(test_options) as f:
        opt = yaml.safe_load(f)
    check_schema(opt, is_train=False)
    assert opt['path']['pretrain_network_g'] == f'model_zoo/{osp.basename(pth)}'
    assert opt['network_g'] == card['network_g'] and card['metrics']


@pytest.mark.parametrize('pth', ZOO_MODELS, ids=zoo_ids())
def test_zoo_card_has_the_hub_model_index_of_its_table(pth):
    """Every zoo card: the Hub's model-index holds the network's metrics of each test set, the values of the
    card's table and of its ``metrics``; the card is the rendering of itself (``--refresh-card`` changes nothing)."""
    card = read_front_matter(pth[:-4] + '.md')
    (index, ) = card['model-index']
    assert index['name'] == card['model_name'] and len(index['results']) == len(card['metrics'])
    text = open(pth[:-4] + '.md').read()
    for result, row in zip(index['results'], card['metrics']):
        assert result['task'] == {'type': 'image-to-image', 'name': card['task']}
        assert result['dataset'] == {'name': row['dataset'], 'type': row['dataset']}
        metrics = {m['type']: m for m in result['metrics']}
        assert set(metrics) == {'psnr', 'ssim'}
        for metric, entry in metrics.items():
            assert entry['value'] == row[metric]
            assert entry['args'] == {'crop_border': row[f'{metric}_crop_border'],
                                     'test_y_channel': row[f'{metric}_y_channel']}
            assert entry['name'] == metric.upper() + ('-Y' if row[f'{metric}_y_channel'] else ' (RGB)')
        assert f"| {row['dataset']} | {metrics['psnr']['value']:.4f} | {metrics['ssim']['value']:.4f} |" in text
    front, description, commands = read_card(pth[:-4] + '.md')
    assert render_card(front, description, commands, front['metrics']) == text


@pytest.mark.parametrize('pth', ZOO_MODELS, ids=zoo_ids())
def test_zoo_file_loads_in_spandrel_from_pth_and_safetensors(pth):
    """The .pth (options in its metadata) and the .safetensors (spandrel drops its metadata: shapes and
    conventions only) give the card's network and its output."""
    spandrel = pytest.importorskip('spandrel')
    from acla_basicsr.zoo.spandrel_support import register
    register()
    card = read_front_matter(pth[:-4] + '.md')
    net = load_network(card['network_g'], pth, strict=True, device='cpu')
    x = torch.rand(1, card['network_g']['num_in_ch'], 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x).clamp(0, 1)
    for path in (pth, pth[:-4] + '.safetensors'):
        model = spandrel.ModelLoader().load_from_file(path)
        assert model.architecture.id == card['architecture'] and model.scale == card['scale']
        assert (model(x) - expected).abs().max() < 1e-5, path


def test_zoo_total_size_under_10_mb():
    if not ZOO_MODELS:
        pytest.skip('model_zoo/ holds no published network')
    assert sum(osp.getsize(v) for v in glob.glob(osp.join(ZOO, '*'))) < 10 * 2**20


@pytest.mark.slow
def test_zoo_card_psnr_is_reproduced_by_test_py(experiment_name, tmp_path):
    """demo_EDSR_SRx2's card: its Set5 PSNR within 0.01 dB, through test.py with its zoo options."""
    found = [v for v in ZOO_MODELS if osp.basename(v).startswith('demo_EDSR_SRx2-')]
    if not found:
        pytest.skip('model_zoo/ holds no demo_EDSR_SRx2')
    if not osp.isdir(osp.join(SHARED_DATASETS, 'Set5')):
        pytest.skip('../shared/datasets/Set5 is absent (the benchmark images are not part of the project)')
    # Set5 prepared here (datasets/ of the repository is left alone: other tests may snapshot it)
    data = tmp_path / 'datasets'
    load_script('prepare_benchmark').main(['--sets', 'Set5', '--scales', '2', '--tasks', 'sr', '--output', str(data)])
    hr, lr = data / 'Set5' / 'HR', data / 'Set5' / 'LR_bicubic' / 'X2'
    card = read_front_matter(found[0][:-4] + '.md')
    expected = {row['dataset']: row for row in card['metrics']}['Set5']
    opt = osp.join(ROOT, 'options', 'test', 'zoo', 'demo_EDSR_SRx2.yml')
    # Set5 only (test_2 pointed at Set5 too), under a name of this test
    result = run_entry('test', opt, '--force_yml', f'name={experiment_name}', 'datasets:test_2:name=Set5_again',
                       f'datasets:test_1:dataroot_gt={hr}', f'datasets:test_1:dataroot_lq={lr}',
                       f'datasets:test_2:dataroot_gt={hr}', f'datasets:test_2:dataroot_lq={lr}')
    assert result.returncode == 0, result.stderr[-2000:]
    (log, ) = glob.glob(osp.join(ROOT, 'results', experiment_name, 'test_*.log'))
    measured = {s['name']: s['metrics'] for s in parse_test_log(log)['sets']}['Set5']
    assert abs(measured['psnr'] - expected['psnr']) < 0.01
    assert abs(measured['ssim'] - expected['ssim']) < 1e-4
