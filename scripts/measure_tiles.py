"""PSNR/SSIM of a trained network tested whole, in tiles and with self-ensemble, through test.py (val.tile).

Runs ``acla_basicsr/test.py`` once per setting on a copy of an options file whose test set is replaced by a
benchmark folder, and prints a markdown table of docs/inference.md. Default: the demo EDSR trained by
``python acla_basicsr/train.py -opt options/train/demo_EDSR_SRx2.yml`` on Set14 x2 (built by
``python scripts/prepare_benchmark.py --sets Set14 --scales 2 --tasks sr``).

    python scripts/measure_tiles.py [--opt options/test/demo_EDSR_SRx2.yml] [--set Set14] [--tiles 32:8 64:16]
"""
import argparse
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from acla_basicsr.cli.args import ArgumentParser  # noqa: E402


def tile_setting(text):
    """A ``--tiles`` entry: ``tile_size:tile_pad``, a positive size and a pad of 0 or more (LR pixels)."""
    parts = text.split(':')
    if len(parts) != 2 or not all(v.isdigit() for v in parts) or int(parts[0]) < 1:
        raise argparse.ArgumentTypeError(f'expected tile_size:tile_pad such as 64:16 (size >= 1, pad >= 0), '
                                         f'got {text!r}')
    return int(parts[0]), int(parts[1])


def run_test(opt, folder, tile=None, ensemble=False):
    """Test with ``val.tile = tile`` ((size, pad) or None); return {metric: value} and the seconds taken."""
    opt = dict(opt, name=f"{opt['name']}_tiles_{os.getpid()}")
    opt['val'] = dict(opt['val'], save_img=False, tile=None if tile is None else
                      {'tile_size': tile[0], 'tile_pad': tile[1]}, self_ensemble=ensemble)
    path = osp.join(folder, 'opt.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    start = time.time()
    run = subprocess.run([sys.executable, osp.join(ROOT, 'acla_basicsr', 'test.py'), '-opt', path], cwd=ROOT,
                         capture_output=True, text=True)
    seconds = time.time() - start
    shutil.rmtree(osp.join(ROOT, 'results', opt['name']), ignore_errors=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip().splitlines()[-1])
    values = dict(re.findall(r'# (\w+): ([\d.]+)', run.stdout + run.stderr))
    return {k: float(v) for k, v in values.items()}, seconds


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--opt', default='options/test/demo_EDSR_SRx2.yml',
                        help='test options file, relative to the repository')
    parser.add_argument('--set', default='Set14', help='a folder of datasets/ with HR and LR_bicubic/X<scale>')
    parser.add_argument('--tiles', nargs='+', type=tile_setting, default=[(32, 0), (32, 8), (64, 16), (128, 16)],
                        help='tile_size:tile_pad pairs (LR pixels)')
    args = parser.parse_args(argv)
    if not osp.isfile(osp.join(ROOT, args.opt)):
        parser.error(f'--opt: {args.opt} is not a file of the repository; give a test options file such as '
                     'options/test/demo_EDSR_SRx2.yml')
    with open(osp.join(ROOT, args.opt)) as f:
        opt = yaml.safe_load(f)
    scale = opt['scale']
    if not osp.isdir(osp.join(ROOT, 'datasets', args.set, 'LR_bicubic', f'X{scale}')):
        parser.error(f'--set: datasets/{args.set}/LR_bicubic/X{scale} does not exist; give a set prepared by '
                     'scripts/prepare_benchmark.py')
    opt['datasets'] = {'test_1': {'name': args.set, 'type': 'PairedImageDataset',
                                  'dataroot_gt': f'datasets/{args.set}/HR',
                                  'dataroot_lq': f'datasets/{args.set}/LR_bicubic/X{scale}',
                                  'io_backend': {'type': 'disk'}}}
    settings = [('whole image', None, False)] + [
        (f'tile {size}, pad {pad}', (size, pad), False) for size, pad in args.tiles] + [
        ('self-ensemble', None, True), ('self-ensemble, tile 64, pad 16', (64, 16), True)]
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for label, tile, ensemble in settings:
            values, seconds = run_test(opt, folder, tile, ensemble)
            rows.append((label, values, seconds))
    base = rows[0][1]
    print(f'| {args.set} x{scale}, `{args.opt}` | PSNR-Y | difference | SSIM-Y | time |')
    print('|---|---|---|---|---|')
    for label, values, seconds in rows:
        print(f"| {label} | {values['psnr']:.4f} dB | {values['psnr'] - base['psnr']:+.4f} dB | "
              f"{values.get('ssim', float('nan')):.4f} | {seconds:.0f} s |")


if __name__ == '__main__':
    main()
