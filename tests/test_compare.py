"""scripts/compare.py end to end on tiny EDSR configs and tiny data made here."""
import importlib.util
import math
import os
import os.path as osp
import re
import shutil

import pytest

from conftest import ROOT, tiny_sr_options, write_options, write_sr_folders

# one pytest-xdist worker for the module: test_results_record_and_paired_table checks that the cmp_tiny_ folders it
# makes are gone, and test_compare_end_to_end makes folders of that stem
pytestmark = pytest.mark.xdist_group('compare')

spec = importlib.util.spec_from_file_location('compare', osp.join(ROOT, 'scripts', 'compare.py'))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


@pytest.fixture
def tiny_setup(tmp_path):
    hr, lr = write_sr_folders(str(tmp_path / 'train'), num=4, size=48)
    data_root = tmp_path / 'bench'
    write_sr_folders(str(data_root / 'TinySet'), num=2, size=36, seed=1)
    os.rename(data_root / 'TinySet' / 'LR', data_root / 'TinySet' / 'LR_bicubic')
    paths = []
    for blocks in (1, 2):
        opt = tiny_sr_options(f'tiny_edsr_{blocks}', hr, lr, total_iter=8)
        opt['network_g']['num_block'] = blocks
        opt['train']['scheduler']['milestones'] = [4]
        paths.append(write_options(opt, tmp_path / f'tiny_edsr_{blocks}.yml'))
    return paths, str(data_root)


def cmp_folders(stem='cmp_tiny_'):
    """This test's experiment folders (other comparisons may run beside it)."""
    folder = osp.join(ROOT, 'experiments')
    return {d for d in os.listdir(folder) if d.startswith(stem)} if osp.isdir(folder) else set()


@pytest.mark.slow
def test_compare_end_to_end(tiny_setup, tmp_path, capsys):
    paths, data_root = tiny_setup
    before = cmp_folders()
    out = tmp_path / 'table.md'
    rows = compare.run(compare.parse_args([
        '-opt', *paths, '--iters', '3', '--seeds', '0', '1', '--val-sets', 'TinySet', '--data-root', data_root,
        '--out', str(out), '--threads', '1']))
    printed = capsys.readouterr().out
    assert cmp_folders() == before  # experiments removed without --keep
    assert [r['network'] for r in rows] == ['EDSR(num_feat=8, num_block=1, upscale=2)',
                                            'EDSR(num_feat=8, num_block=2, upscale=2)']
    for row in rows:
        assert row['params'] > 0 and row['macs'] > 0
        assert [r['seed'] for r in row['runs']] == [0, 1]
        for run in row['runs']:
            psnr, ssim = run['metrics']['TinySet']
            assert math.isfinite(psnr) and 5 < psnr < 60 and 0 < ssim <= 1
            assert run['eff_macs'] == row['macs'] and run['wall'] > 0
        # the seed reaches the network's initialisation: two seeds, two results
        assert row['runs'][0]['metrics'] != row['runs'][1]['metrics']
    assert rows[1]['params'] > rows[0]['params'] and rows[1]['macs'] > rows[0]['macs']
    table = out.read_text()
    assert table in printed
    summary = [line for line in table.splitlines() if line.startswith('| `')][:2]
    assert len(summary) == 2
    for line, path in zip(summary, paths):
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert osp.basename(path) in cells[0]
        numbers = [float(x) for cell in cells[2:] for x in re.findall(r'[-+]?\d+(?:\.\d+)?', cell)]
        assert len(numbers) == 3 + 2 * 2 + 1 and all(math.isfinite(x) for x in numbers)
    assert len([line for line in table.splitlines() if line.startswith('| `')]) == 2 + 4  # summary + every run


def test_schedule_is_scaled():
    opt = {'train': {'total_iter': 800, 'scheduler': {'type': 'MultiStepLR', 'milestones': [200, 600]},
                     'warmup_iter': -1, 'network_opt': [{'type': 'ENLCAContrastiveLoss', 'warmup_iter': 150}]}}
    entries, warnings = compare.schedule_overrides(opt, 400)
    assert entries == ['train:total_iter=400', 'train:scheduler:milestones=[100,300]']
    assert warnings == []
    _, warnings = compare.schedule_overrides(opt, 100)
    assert len(warnings) == 1 and 'ENLCAContrastiveLoss' in warnings[0]


@pytest.mark.slow
def test_compare_errors(tiny_setup, tmp_path, capsys):
    paths, data_root = tiny_setup
    with pytest.raises(SystemExit) as exit_info:
        compare.main(['-opt', str(tmp_path / 'missing.yml'), '--iters', '2', '--data-root', data_root])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'missing.yml does not exist' in err

    with pytest.raises(SystemExit) as exit_info:
        compare.main(['-opt', paths[0], '--iters', '2', '--val-sets', 'Set99', '--data-root', data_root])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'Set99' in err and 'scripts/prepare_benchmark.py' in err

    bad = tiny_sr_options('tiny_bad', *write_sr_folders(str(tmp_path / 'd2'), num=2), total_iter=2)
    bad['network_g']['type'] = 'NoSuchNet'
    bad_path = write_options(bad, tmp_path / 'bad.yml')
    with pytest.raises(SystemExit) as exit_info:
        compare.main(['-opt', bad_path, '--iters', '2', '--seeds', '0', '--val-sets', 'TinySet',
                      '--data-root', data_root])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'training of' in err and 'failed with exit status 2' in err
    for name in cmp_folders('cmp_bad_'):
        shutil.rmtree(osp.join(ROOT, 'experiments', name))


def test_results_record_and_paired_table(tiny_setup, tmp_path, capsys):
    """Runs held in --results are not trained again; --baseline pairs every row with the baseline's seed."""
    import json
    paths, data_root = tiny_setup
    files = [osp.relpath(osp.abspath(p), ROOT) for p in paths]
    psnr = {(0, 0): 30.0, (0, 1): 30.2, (1, 0): 30.5, (1, 1): 30.6}  # (row, seed): dB; row 1 ahead in both seeds
    record = [{'file': files[i], 'seed': s, 'iters': 3, 'force_yml': [], 'channel': 'y',
               'metrics': {'TinySet': [psnr[i, s], 0.9]}, 'eff_macs': 1e6, 'wall': 1.0, 'params': 10 + i,
               'macs': 1e6} for i in (0, 1) for s in (0, 1)]
    results = tmp_path / 'runs.json'
    results.write_text(json.dumps(record))
    before = cmp_folders()
    rows = compare.run(compare.parse_args([
        '-opt', *paths, '--iters', '3', '--seeds', '0', '1', '--val-sets', 'TinySet', '--data-root', data_root,
        '--results', str(results), '--baseline', paths[0]]))
    printed = capsys.readouterr().out
    assert cmp_folders() == before and printed.count('not run again') == 4  # nothing trained
    assert [r['metrics']['TinySet'][0] for r in rows[1]['runs']] == [30.5, 30.6]
    paired = [line for line in printed.splitlines() if line.startswith(f'| `{files[1]}` | TinySet |')]
    assert len(paired) == 1
    cells = [c.strip() for c in paired[0].strip('|').split('|')]
    # differences +0.5 / +0.4, mean +0.45, spread max(std(30.5, 30.6), std(30.0, 30.2)) = 0.141: beyond it
    assert cells[2:] == ['0 / 1', '+0.50 / +0.40', '+0.450', '0.141', 'yes']

    with pytest.raises(SystemExit):  # the baseline must be one of the rows
        compare.parse_args(['-opt', paths[1], '--iters', '3', '--baseline', paths[0]])


def test_network_options_apply_forced_network_keys():
    """A run trained with --force_yml network_g:... is tested with the network it was trained as."""
    opt = {'network_g': {'type': 'EDSR', 'img_range': 255., 'rgb_mean': [0.4, 0.4, 0.4]}}
    net_opt = compare.network_options(opt, ['val:val_freq=200', 'network_g:img_range=1.', 'train:optim_g:lr=0.0002',
                                            'network_g:num_block=9'])
    assert net_opt == {'type': 'EDSR', 'img_range': 1., 'rgb_mean': [0.4, 0.4, 0.4], 'num_block': 9}
    assert opt['network_g']['img_range'] == 255.  # the file's options are left as they are
