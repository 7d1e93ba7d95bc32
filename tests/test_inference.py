"""Inference without ground truth: tiles, self-ensemble, half precision, ACLA's sampling memory, the Python API,
the ``acla-restore`` command, tiled validation in RestorationModel, and the installed package."""
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from basicsr.archs.edsr_arch import EDSR

from acla_basicsr import ACLAEDSR, ACLARCAN, EARN, ENLCN, load_network, restore
from acla_basicsr.archs.cla_modules import sample_keys, sampling_chunks
from acla_basicsr.cli.restore import main
from acla_basicsr.errors import OptionError
from acla_basicsr.inference import run_network, tile_forward
from conftest import ROOT, smooth_image, tiny_sr_options

# EDSR with one residual block, x2: 3x3 convs at LR (head, 2 in the block, after the body, the upsampler's)
# reach 5 LR pixels, the last 3x3 conv at HR one HR pixel = half an LR pixel: receptive radius 6 LR pixels.
EDSR_1BLOCK_X2_RADIUS = 6
# ACLAEDSR without attention, one block, scale 1: head, 2 block convs, after body, last conv.
EDSR_1BLOCK_X1_RADIUS = 5


def randomised(net, std=0.05, seed=0):
    """``net`` with random weights everywhere (so that no zero-initialised layer hides a border effect)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net.eval()


def tiny_edsr(scale=2):
    return randomised(EDSR(3, 3, 16, 1, scale, 1., 255.))


# ------------------------------------------------------------------------------------------ tiles


def test_tiled_equals_untiled_with_pad_at_least_the_receptive_field():
    net, lq = tiny_edsr(), torch.rand(1, 3, 41, 37)
    full = run_network(net, lq)
    tiled = run_network(net, lq, tile_size=16, tile_pad=EDSR_1BLOCK_X2_RADIUS)
    assert tiled.shape == full.shape == (1, 3, 82, 74)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)
    short = run_network(net, lq, tile_size=16, tile_pad=EDSR_1BLOCK_X2_RADIUS - 1)
    assert (short - full).abs().max() > 1e-4  # a pad below the receptive field shows: the check is sharp
    image = smooth_image(np.random.default_rng(0), 45)
    a, b = restore(net, image), restore(net, image, tile=12, tile_pad=EDSR_1BLOCK_X2_RADIUS)
    assert a.dtype == np.uint8 and a.shape == (90, 90, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # within one grey level


def test_tiles_for_restoration_scale_1_and_one_channel_input():
    # demosaicing-like: a 1-channel mosaic in, colour out, scale 1
    net = randomised(ACLAEDSR(num_in_ch=1, num_out_ch=3, num_feat=8, num_block=1, upscale=1, attention='none',
                                 insert_positions=[]))
    lq = torch.rand(2, 1, 30, 23)
    full = run_network(net, lq)
    tiled = run_network(net, lq, tile_size=10, tile_pad=EDSR_1BLOCK_X1_RADIUS)
    assert full.shape == (2, 3, 30, 23)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)
    gray = smooth_image(np.random.default_rng(1), 24, channels=1)[..., 0]
    out = restore(net, gray, tile=8, tile_pad=EDSR_1BLOCK_X1_RADIUS)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    colour = smooth_image(np.random.default_rng(1), 24)  # converted to the luma the network reads
    expected = restore(net, cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY))
    assert np.array_equal(restore(net, colour), expected)


def test_tile_forward_rejects_a_network_without_integer_scale():
    with pytest.raises(ValueError, match='not an integer scale'):
        tile_forward(lambda x: x[..., :-1, :-1], torch.rand(1, 3, 20, 20), 8, 2)
    with pytest.raises(OptionError, match='tile_pad'):
        run_network(tiny_edsr(), torch.rand(1, 3, 8, 8), tile_size=4, tile_pad=-1)


# --------------------------------------------------------------------------------- self-ensemble


def test_self_ensemble_is_the_mean_of_the_eight_dihedral_transforms():
    net, lq = tiny_edsr(), torch.rand(1, 3, 13, 17)  # not square: transpositions change the shape
    expected = 0
    with torch.no_grad():
        for flip in (False, True):
            x = lq.flip(-1) if flip else lq
            for k in range(4):  # rotations, undone in reverse order
                out = torch.rot90(net(torch.rot90(x, k, (-2, -1))), -k, (-2, -1))
                expected = expected + (out.flip(-1) if flip else out)
    got = run_network(net, lq, self_ensemble=True)
    torch.testing.assert_close(got, expected / 8, atol=1e-6, rtol=0)
    assert (got - run_network(net, lq)).abs().max() > 1e-4  # not the plain forward
    tiled = run_network(net, lq, tile_size=8, tile_pad=EDSR_1BLOCK_X2_RADIUS, self_ensemble=True)
    torch.testing.assert_close(tiled, got, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ half precision


def test_acla_sampling_keeps_float32_coordinates_under_low_precision():
    # rows alternate 1, 0 (exact in bfloat16); a key 0.3 below row 600 reads 1 - 0.3 = 0.7. In bfloat16 the
    # coordinate 600.3 would be 600 (spacing 4 there), giving 1.
    h, w = 700, 3
    values = (torch.arange(h) % 2 == 0).to(torch.bfloat16).view(1, 1, 1, h, 1).expand(1, 1, 1, h, w).contiguous()
    offsets = torch.zeros(1, 1, 1, 2, h, w, dtype=torch.bfloat16)
    offsets[:, :, :, 0] = 0.3
    weights = torch.ones(1, 1, 1, h, w, dtype=torch.bfloat16)
    for method in ('fused', 'gather', 'grid_sample'):
        out = sample_keys(values, offsets, weights, method=method)
        expected = 1 - offsets[0, 0, 0, 0, 600, 0].float().item()
        assert abs(out[0, 0, 600, 1].float().item() - expected) < 4e-3, method


def test_acla_network_runs_under_bfloat16_autocast_at_300x300():
    # bfloat16 rounds pixel 299 to 300: an index past the value table ('Index 180001 not in [0, 180000)')
    net = ACLAEDSR(num_feat=8, num_block=2, insert_positions=[1, 2], num_keys=2).eval()
    lq = torch.rand(1, 3, 300, 300)
    with torch.no_grad():
        values = torch.rand(1, 2, 8, 300, 300)
        offsets = torch.full((1, 2, 2, 2, 300, 300), 0.4)
        weights = torch.full((1, 2, 2, 300, 300), 0.25)
        reference = sample_keys(values, offsets, weights)
        low = sample_keys(values.bfloat16(), offsets.bfloat16(), weights.bfloat16())
    torch.testing.assert_close(low.float(), reference, atol=0.03, rtol=0.02)
    out = run_network(net, lq, half=True)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 600, 600) and torch.isfinite(out).all()
    torch.testing.assert_close(out, run_network(net, lq), atol=0.05, rtol=0)  # modules are identities at init


# --------------------------------------------------------------------------------- memory budget


def test_sampling_budget_covers_the_value_table():
    shape = (1, 5, 256, 1000, 1000)  # the last ACLA module of EDSR-large at a 1000x1000 input
    layers, keys = sampling_chunks(shape, 16, max_memory_mb=1024)
    table = 1000 * 1000 * 256 * 4
    assert layers == 1 and keys >= 1  # one key layer's table (977 MiB) fills most of the budget
    assert sampling_chunks(shape, 16, max_memory_mb=20 * table / 2**20, method='gather')[0] == 2  # a layer: 7.4 GB
    assert sampling_chunks(shape, 16, max_memory_mb=20 * table / 2**20)[0] == 2  # fused, 93 B per entry: 7.0 GB
    assert sampling_chunks(shape, 16, max_memory_mb=40 * table / 2**20)[0] == 5
    assert sampling_chunks((1, 5, 8, 16, 16), 16, max_memory_mb=1024) == (5, 16)  # small: one step
    budget = 3 * table / 2**20
    training = sampling_chunks(shape, 16, max_memory_mb=budget, method='gather', training=True)  # table + gradient
    assert training == (1, 2) and sampling_chunks(shape, 16, max_memory_mb=budget, method='gather') == (1, 5)
    # fused: the table has a 2-pixel zero border, an entry costs 93 B: (3 - 2 * 1.008) / 0.372 and (3 - 1.008) / 0.372
    assert sampling_chunks(shape, 16, max_memory_mb=budget, training=True) == (1, 2)
    assert sampling_chunks(shape, 16, max_memory_mb=budget) == (1, 5)


@pytest.mark.parametrize('method', ['fused', 'gather', 'grid_sample'])
def test_sampling_chunked_by_key_layers_equals_one_step(method):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 3, 4, 9, 7, generator=g, requires_grad=True)
    offsets = (torch.randn(2, 3, 5, 2, 9, 7, generator=g) * 2).requires_grad_()
    weights = torch.rand(2, 3, 5, 9, 7, generator=g, requires_grad=True)
    assert sampling_chunks(values.shape, 5, 1e-3, method)[0] == 1
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            full = sample_keys(values, offsets, weights, method=method)
            chunked = sample_keys(values, offsets, weights, max_memory_mb=1e-3, method=method)
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(chunked.square().sum(), (values, offsets, weights))
    for a, b in zip(grads, torch.autograd.grad(full.square().sum(), (values, offsets, weights))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


_PEAK_PROBE = '''
import sys, torch
sys.path.insert(0, sys.argv[1])
from acla_basicsr.archs.cla_modules import sample_keys


def status(key):  # MiB
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key)) / 1024


g = torch.Generator().manual_seed(0)
values = torch.randn(1, 4, 256, 200, 200, generator=g)
offsets = torch.randn(1, 4, 4, 2, 200, 200, generator=g) * 3
weights = torch.rand(1, 4, 4, 200, 200, generator=g)
with open('/proc/self/clear_refs', 'w') as f:  # resets the peak (VmHWM) to the current resident size
    f.write('5')
base = status('VmRSS:')
with torch.no_grad():
    out = sample_keys(values, offsets, weights, max_memory_mb=float(sys.argv[2]))
print(status('VmHWM:') - base)
'''


@pytest.mark.slow
def test_sampling_peak_memory_stays_near_the_budget():
    """Fresh processes, peak resident memory of one sampling step above what the inputs hold (the peak reset just
    before the step through /proc/self/clear_refs)."""
    budget, result = 128, 200 * 200 * 256 * 4 / 2**20  # the (1, 256, 200, 200) output itself: 39 MiB
    env = dict(os.environ, OMP_NUM_THREADS='1')
    peaks = []
    for _ in range(3):  # the resident peak of one process also holds allocator effects (233 MiB once in a full-suite
        # run, 176-184 MiB in every fresh process alone): the least of three fresh processes is the step's own
        run = subprocess.run([sys.executable, '-c', _PEAK_PROBE, ROOT, str(budget)], capture_output=True, text=True,
                             env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        peaks.append(float(run.stdout.split()[-1]))
    # measured 171-184 MiB (before the budget covered the table: 302 MiB, the four key layers' table being 156 MiB);
    # the budget leaves out the result and the running sum of the chunks
    assert min(peaks) < budget + 2 * result, peaks


# ------------------------------------------------------------------------------------ Python API


def test_public_api_exports_the_networks_and_functions():
    import acla_basicsr
    assert set(acla_basicsr.__all__) >= {'ACLAEDSR', 'ACLARCAN', 'ENLCN', 'EARN', 'load_network', 'restore'}
    for obj in (ACLAEDSR, ACLARCAN, ENLCN, EARN, load_network, restore):
        assert 'Args:' in obj.__doc__, obj


def test_load_network_reads_options_files_dicts_and_param_keys(tmp_path):
    opt = tiny_sr_options('api', 'unused', 'unused')
    net = randomised(EDSR(**{k: v for k, v in opt['network_g'].items() if k != 'type'}), seed=1)
    other = randomised(EDSR(**{k: v for k, v in opt['network_g'].items() if k != 'type'}), seed=2)
    path = str(tmp_path / 'both.pth')
    torch.save({'params': other.state_dict(), 'params_ema': {'module.' + k: v for k, v in net.state_dict().items()}},
               path)
    opt_path = str(tmp_path / 'opt.yml')
    with open(opt_path, 'w') as f:
        yaml.safe_dump(opt, f)
    lq = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        for options in (opt_path, opt, opt['network_g']):
            loaded = load_network(options, path, device='cpu')
            assert not loaded.training
            torch.testing.assert_close(loaded(lq), net(lq))  # params_ema first, DDP prefix removed
        torch.testing.assert_close(load_network(opt, path, param_key='params')(lq), other(lq))
        torch.save(net.state_dict(), str(tmp_path / 'plain.pth'))
        torch.testing.assert_close(load_network(opt, str(tmp_path / 'plain.pth'))(lq), net(lq))
    with pytest.raises(OptionError, match='--param-key'):
        load_network(opt, path, param_key='params_x')
    with pytest.raises(OptionError, match="does not fit network_g|holds the weights of"):
        load_network(dict(opt['network_g'], num_feat=4), path)
    with pytest.raises(OptionError, match='network_g: missing'):
        load_network({'name': 'x'}, path)
    (tmp_path / 'bad.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(OptionError, match='cannot read'):
        load_network(opt, str(tmp_path / 'bad.pth'))


# ---------------------------------------------------------------------------------- acla-restore


def _restore_cli(*args, cwd=None):
    cmd = [sys.executable, osp.join(ROOT, 'scripts', 'inference.py'), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def cli_setup(tmp_path):
    opt = tiny_sr_options('cli', 'unused', 'unused')
    opt['network_g']['num_block'] = 1
    net = randomised(EDSR(**{k: v for k, v in opt['network_g'].items() if k != 'type'}), seed=3)
    opt_path = str(tmp_path / 'opt.yml')
    with open(opt_path, 'w') as f:
        yaml.safe_dump(opt, f)
    torch.save({'params': net.state_dict()}, str(tmp_path / 'net.pth'))
    src = tmp_path / 'in'
    src.mkdir()
    rng = np.random.default_rng(0)
    images = {'a': smooth_image(rng, 20), 'b': smooth_image(rng, 16)}
    cv2.imwrite(str(src / 'a.png'), images['a'][..., ::-1])  # stored BGR, as every PNG read by OpenCV
    cv2.imwrite(str(src / 'b.jpg'), images['b'][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    (src / 'broken.png').write_bytes(b'\x89PNG truncated')
    return tmp_path, opt_path, net, images


@pytest.mark.slow
def test_restore_cli_restores_folders_skips_unreadable_and_prints_peak(cli_setup):
    tmp_path, opt_path, net, images = cli_setup
    out = tmp_path / 'out'
    run = _restore_cli('-opt', opt_path, '--model', tmp_path / 'net.pth', '-i', tmp_path / 'in', '-o', out,
                       '--tile', 8, '--tile-pad', EDSR_1BLOCK_X2_RADIUS, '--suffix', 'x2', cwd=str(tmp_path))
    assert run.returncode == 1, run.stderr  # one image failed, the others were restored
    assert sorted(os.listdir(out)) == ['a_x2.png', 'b_x2.png']  # no temporary file left
    assert [line for line in run.stderr.splitlines() if line.startswith(('skipped', 'failed', 'error'))] == [
        f"skipped: {tmp_path / 'in' / 'broken.png'} is not a readable image"]
    assert 'restored 2 of 3 images' in run.stdout and 'peak memory:' in run.stdout
    written = cv2.imread(str(out / 'a_x2.png'))[..., ::-1]
    assert written.shape == (40, 40, 3)
    assert np.abs(written.astype(int) - restore(net.eval(), images['a']).astype(int)).max() <= 1
    assert main(['-opt', opt_path, '--model', str(tmp_path / 'net.pth'), '-i', str(tmp_path / 'in' / 'a.png'),
                 '-o', str(tmp_path / 'ens'), '--self-ensemble', '--half']) == 0  # in this process
    expected = restore(net, images['a'], self_ensemble=True, half=True)
    got = cv2.imread(str(tmp_path / 'ens' / 'a.png'))[..., ::-1]
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize('args, message', [
    (['--tile', '-4'], "--tile: expected auto or a whole number >= 0, got '-4'"),
    (['--tile-pad', '-1'], "--tile-pad: expected a whole number >= 0, got '-1'"),
    (['--model', 'missing.pth'], '--model: missing.pth does not exist'),
    (['-i', 'nowhere'], '-i: nowhere does not exist'),
])
def test_restore_cli_rejects_bad_arguments_before_writing(cli_setup, args, message, capsys, monkeypatch):
    tmp_path, opt_path, _, _ = cli_setup
    monkeypatch.chdir(tmp_path)
    base = {'-opt': opt_path, '--model': str(tmp_path / 'net.pth'), '-i': str(tmp_path / 'in'),
            '-o': str(tmp_path / 'never')}
    base.update(dict(zip(args[::2], args[1::2])))
    assert main([v for pair in base.items() for v in pair]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines
    assert not (tmp_path / 'never').exists()


def test_restore_cli_refuses_to_overwrite_its_inputs(cli_setup, capsys):
    tmp_path, opt_path, _, _ = cli_setup
    args = ['-opt', opt_path, '--model', str(tmp_path / 'net.pth'), '-i', str(tmp_path / 'in'), '-o']
    assert main(args + [str(tmp_path / 'in')]) == 2
    assert 'would overwrite an input image' in capsys.readouterr().err


# ------------------------------------------------------------------------ validation with tiles


def _model(tmp_path, sr_folders, val):
    from basicsr.models import build_model
    opt = tiny_sr_options('tiles', *sr_folders)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, auto_resume=False)
    opt['path'].update(experiments_root=str(tmp_path), models=str(tmp_path), training_states=str(tmp_path),
                       log=str(tmp_path), visualization=str(tmp_path))
    opt['network_g']['num_feat'] = 16
    opt['val'].update(val)
    return opt, build_model(opt)


def test_restoration_model_tests_with_tiles_and_self_ensemble(tmp_path, sr_folders):
    opt, plain = _model(tmp_path, sr_folders, {})
    randomised(plain.net_g)
    lq = torch.rand(1, 3, 24, 24)
    plain.feed_data({'lq': lq})
    plain.test()
    assert plain.net_g.training  # SRModel's test restores training mode, and so does the tiled one
    for val, expected in (({'tile': {'tile_size': 10, 'tile_pad': EDSR_1BLOCK_X2_RADIUS}}, plain.output),
                          ({'self_ensemble': True}, run_network(plain.net_g.eval(), lq, self_ensemble=True))):
        _, model = _model(tmp_path, sr_folders, val)
        model.net_g.load_state_dict(plain.net_g.state_dict())
        model.feed_data({'lq': lq})
        model.test()
        assert model.net_g.training
        torch.testing.assert_close(model.output, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('val, message', [
    ({'tile': {'tile_size': 0.5}}, 'val.tile.tile_size: expected an integer >= 0, got 0.5'),
    ({'tile': {'tile_size': 64, 'tile_pad': -2}}, 'val.tile.tile_pad: -2'),
    ({'tile': 64}, 'val.tile: expected a mapping with keys tile_size, tile_pad, got 64'),
    ({'self_ensemble': 'yes'}, 'val.self_ensemble'),
])
def test_restoration_model_rejects_bad_tile_options(val, message):
    from acla_basicsr.models.restoration_model import RestorationModel
    opt = tiny_sr_options('x', 'unused', 'unused')
    opt['val'].update(val)
    with pytest.raises(OptionError, match=message.replace('.', r'\.')):
        RestorationModel.check_options(opt)


# -------------------------------------------------------------------------------------- packaging


@pytest.mark.slow
@pytest.mark.packaging
def test_wheel_installs_and_acla_restore_runs_from_another_folder(tmp_path):
    """Offline: build a wheel without dependencies or build isolation, install it into a folder, run the
    console command from a third folder, and check where an installed package puts its experiments."""
    wheels, target, elsewhere = tmp_path / 'wheels', tmp_path / 'site', tmp_path / 'elsewhere'
    elsewhere.mkdir()
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '--no-input']
    build = subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-w', str(wheels), ROOT],
                           capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel, ) = [v for v in os.listdir(wheels) if v.endswith('.whl')]
    install = subprocess.run(pip + ['install', '--no-deps', '--no-index', '--target', str(target),
                                    str(wheels / wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    assert any(osp.isfile(osp.join(target, d, 'licenses', 'LICENSE')) or osp.isfile(osp.join(target, d, 'LICENSE'))
               for d in os.listdir(target) if d.endswith('.dist-info'))
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS='1')
    for command in ('acla-restore', 'acla-train', 'acla-test'):
        run = subprocess.run([str(target / 'bin' / command), '--help'], cwd=str(elsewhere), capture_output=True,
                             text=True, timeout=120, env=env)
        assert run.returncode == 0 and 'usage' in run.stdout.lower(), run.stderr[-2000:]
    probe = ('import acla_basicsr, acla_basicsr.config.files as l; '
             'print(acla_basicsr.__file__); print(l.project_root())')
    run = subprocess.run([sys.executable, '-c', probe], cwd=str(elsewhere), capture_output=True, text=True,
                         timeout=120, env=env)
    package, root = run.stdout.split()
    assert package.startswith(str(target)) and root == str(elsewhere), run.stderr[-2000:]
