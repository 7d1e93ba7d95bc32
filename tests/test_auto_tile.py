"""Automatic tiles (``tile='auto'``, ``acla-restore --tile auto --max-memory``): the tensor memory tracker, the
fitted memory per pixel, the tile chosen within a budget, the budget kept on the CPU, out-of-memory retries, and
the command's refusals."""
import cv2
import numpy as np
import pytest
import torch
from basicsr.archs.edsr_arch import EDSR

from acla_basicsr import ACLAEDSR
from acla_basicsr.cli.restore import main
from acla_basicsr.errors import OptionError
from acla_basicsr.inference import run_network, tile_forward
from acla_basicsr.inference.memory import (MIN_TILE, TILE_STEP, TensorMemoryTracker, choose_tile, default_budget,
                                           forward_peak_bytes, measure_memory)

MIB = 2**20


def _net(seed=0, scale=2, cls=EDSR, **kwargs):
    torch.manual_seed(seed)
    net = cls(3, 3, 16, 2, scale, 1., 255., **kwargs) if cls is EDSR else cls(
        num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, upscale=scale, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.eval()


def test_tracker_counts_live_tensor_bytes_once_per_storage():
    with TensorMemoryTracker() as tracker:
        a = torch.empty(MIB // 4)  # 1 MiB
        b = torch.empty(2 * MIB // 4)  # 2 MiB: 3 live
        view = b[:10]  # a view allocates nothing
        b.add_(1)  # in place: nothing
        del a
        c = torch.empty(MIB // 4)  # 1 MiB after 1 MiB freed: still 3 at most
        assert tracker.current == 3 * MIB
    assert tracker.peak == 3 * MIB
    del view, b, c


def test_fit_predicts_the_peak_at_other_sizes_from_above():
    net = _net(cls=ACLAEDSR, attention='acla', insert_positions=[1], num_keys=4)
    model = measure_memory(net)
    assert model.per_pixel > 0 and model.scale == 2 and model.out_channels == 3
    assert measure_memory(net) is model  # measured once per device and precision
    for height, width in [(96, 80), (150, 40)]:
        peak, out = forward_peak_bytes(net, torch.rand(1, 3, height, width))
        predicted = model.forward_bytes(height, width)
        assert out.shape[-2:] == (2 * height, 2 * width)
        assert peak <= predicted <= 1.5 * peak, (peak, predicted)


def test_choose_tile_is_the_largest_step_within_the_budget():
    net = _net()
    model = measure_memory(net)
    height, width, pad = 300, 200, 8
    whole = model.canvas_bytes(height, width) + model.forward_bytes(height, width)
    assert choose_tile(model, height, width, pad, whole) is None  # the whole image fits

    def need(tile):
        side = tile + 2 * pad
        return model.canvas_bytes(height, width) + model.forward_bytes(min(side, height), min(side, width))

    for fraction in (0.3, 0.6, 0.9):
        budget = model.canvas_bytes(height, width) + fraction * model.forward_bytes(height, width)
        tile = choose_tile(model, height, width, pad, budget)
        assert tile % TILE_STEP == 0 and tile >= MIN_TILE
        assert need(tile) <= budget < need(tile + TILE_STEP)
    with pytest.raises(OptionError, match=r'^--max-memory: .* below the .* smallest tile \(32 px, pad 8\)'):
        choose_tile(model, height, width, pad, need(MIN_TILE) - 1, option='--max-memory')


def test_auto_tiles_keep_the_budget_on_the_cpu_and_equal_the_fixed_tiles():
    """A budget of half the untiled pass forces tiles; the tracked peak of the whole run stays within it."""
    net = _net(cls=ACLAEDSR, attention='cla', insert_positions=[1], num_keys=4)
    lq = torch.rand(1, 3, 120, 100)
    model = measure_memory(net)
    untiled, _ = forward_peak_bytes(net, lq)
    budget = model.canvas_bytes(120, 100) + 0.5 * untiled
    lines = []
    with TensorMemoryTracker() as tracker:
        out = run_network(net, lq, 'auto', 8, max_memory=budget, notify=lines.append)
    tile = choose_tile(model, 120, 100, 8, budget)
    assert tile is not None and lines[0].startswith(f'tile auto: tile {tile} for 100x120 within ')
    assert tracker.peak <= budget, (tracker.peak / MIB, budget / MIB)
    with torch.no_grad():
        assert torch.equal(out, tile_forward(net, lq, tile, 8))
    assert torch.equal(run_network(net, lq, 'auto', 8, max_memory=1e12), run_network(net, lq))  # fits: no tiles


class _OutOfMemoryAbove(torch.nn.Module):
    """Raises torch.OutOfMemoryError (as CUDA's allocator does) on inputs larger than ``side`` (once the memory
    probes of ``tile='auto'`` have run)."""

    def __init__(self, net, side):
        super().__init__()
        self.net, self.side = net, 10**9
        measure_memory(self)
        self.side = side

    def forward(self, x):
        if max(x.shape[-2:]) > self.side:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')
        return self.net(x)


def test_out_of_memory_halves_the_tile_and_retries():
    net = _net()
    lq = torch.rand(1, 3, 128, 96)
    lines = []
    out = run_network(_OutOfMemoryAbove(net, 60), lq, 'auto', 4, max_memory=1e12, notify=lines.append)
    assert lines[1:] == ['tile auto: out of memory with the whole image; retrying with tile 64',
                         'tile auto: out of memory with 64; retrying with tile 32']  # the whole image was chosen
    with torch.no_grad():
        assert torch.equal(out, tile_forward(net, lq, 32, 4))
    with pytest.warns(RuntimeWarning, match='retrying with tile 64'):  # no notify: warned
        run_network(_OutOfMemoryAbove(net, 80), lq, 'auto', 4, max_memory=1e12)
    with pytest.raises(torch.OutOfMemoryError):  # below the smallest tile: the error is the caller's
        run_network(_OutOfMemoryAbove(net, 20), lq, 'auto', 4, max_memory=1e12, notify=lines.append)
    assert lines[-1] == 'tile auto: out of memory with 64; retrying with tile 32'


def test_default_budget_is_a_fraction_of_the_available_memory():
    import psutil
    available = psutil.virtual_memory().available
    assert 0.3 * available < default_budget('cpu') < 0.7 * available


@pytest.fixture
def image_folder(tmp_path):
    net = _net()
    torch.save({'params': net.state_dict()}, str(tmp_path / 'net.pth'))
    (tmp_path / 'in').mkdir()
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), np.random.default_rng(0).integers(0, 256, (90, 70, 3), np.uint8))
    return tmp_path, net


def _opt(tmp_path):
    import yaml
    from conftest import tiny_sr_options
    opt = tiny_sr_options('auto', 'unused', 'unused')
    opt['network_g'].update(num_feat=16, num_block=2)
    path = tmp_path / 'opt.yml'
    path.write_text(yaml.safe_dump(opt))
    return str(path)


def test_restore_cli_tiles_automatically_within_max_memory(image_folder, capsys):
    tmp_path, net = image_folder
    args = ['-opt', _opt(tmp_path), '--model', str(tmp_path / 'net.pth'), '-i', str(tmp_path / 'in'),
            '--tile-pad', '8', '-o']
    assert main(args + [str(tmp_path / 'out'), '--max-memory', '3M']) == 0
    tile = choose_tile(measure_memory(net), 90, 70, 8, 3 * MIB)
    assert tile is not None and f'tile auto: tile {tile} for 70x90 within 3 MiB' in capsys.readouterr().err
    image = cv2.imread(str(tmp_path / 'in' / 'a.png'))[..., ::-1]
    lq = torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0)
    with torch.no_grad():
        expected = tile_forward(net, lq, tile, 8).clamp(0, 1).mul(255).round()[0].permute(1, 2, 0).byte().numpy()
    assert np.array_equal(cv2.imread(str(tmp_path / 'out' / 'a.png'))[..., ::-1], expected)


@pytest.mark.parametrize('extra, message', [
    (['--max-memory', '1M'], '--max-memory: 1 MiB is below the '),
    (['--tile', '64', '--max-memory', '1G'], '--max-memory: the budget of --tile auto; leave it out'),
])
def test_restore_cli_refuses_a_budget_it_cannot_keep_before_writing(image_folder, extra, message, capsys):
    tmp_path, _ = image_folder
    args = ['-opt', _opt(tmp_path), '--model', str(tmp_path / 'net.pth'), '-i', str(tmp_path / 'in'),
            '-o', str(tmp_path / 'never')]
    assert main(args + extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ' + message), lines
    assert not (tmp_path / 'never').exists()


@pytest.mark.slow  # a fresh process
@pytest.mark.skipif(not __import__('sys').platform.startswith('linux'), reason='glibc only')
def test_return_freed_memory_gives_large_blocks_back_at_once():
    """After ``return_freed_memory`` a freed 16 MiB tensor leaves the resident set (glibc would keep the second one:
    its threshold rises to the first block freed)."""
    import subprocess
    import sys
    code = ('import psutil, torch\n'
            'from acla_basicsr.inference.memory import return_freed_memory\n'
            'assert return_freed_memory()\n'
            'rss = lambda: psutil.Process().memory_info().rss / 2**20\n'
            'start = rss()\n'
            'for _ in range(3):\n'
            '    x = torch.ones(4 * 2**20); y = torch.ones(4 * 2**20); del x, y\n'
            'print(rss() - start)\n')
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.split()[-1]) < 4, run.stdout
