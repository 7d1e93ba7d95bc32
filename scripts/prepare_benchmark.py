#!/usr/bin/env python
"""Benchmark image folders to the layout the test and validation configs read.

For every set (Set5, Set14, B100, Urban100, Manga109, Kodak24, CBSD68, McMaster, LIVE1,
Classic5, ... : the sub-folders of ``--input``, by default ``../shared/datasets``) it writes::

    <output>/<set>/HR/<image>.png                 SR: mod-cropped to --mod (default 12, so
                                                  that one HR folder serves x2, x3 and x4)
    <output>/<set>/LR_bicubic/X{s}/<image>.png    SR: MATLAB-bicubic downscaling of HR
    <output>/<set>/GT/<image>.png                 restoration (denoising, JPEG, demosaicing):
                                                  the image itself as PNG, gray images
                                                  (Classic5) kept 1-channel; the degraded
                                                  inputs are made on the fly by
                                                  DegradedImageDataset, seeded by image name

Every file is written under a temporary name and renamed; a rerun skips the files that exist.
An unreadable image stops the script with its file name.

Usage::

    python scripts/prepare_benchmark.py                       # every set of ../shared/datasets
    python scripts/prepare_benchmark.py --input ~/benchmarks --sets Set5 Urban100 --tasks sr
"""
import os
import sys
from os import path as osp

REPO = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, REPO)
from acla_basicsr.cli.args import ArgumentParser, existing_folder, output_folder, positive_int  # noqa: E402
TASKS = ('sr', 'restoration')


def prepare_set(set_dir, out_dir, scales, mod, tasks):
    """Write the HR, LR_bicubic and GT folders of one set; return the number of files written."""
    from tqdm import tqdm

    from basicsr.data.transforms import mod_crop

    from acla_basicsr.data.prepare_util import bicubic_downscale, list_images, read_image, write_image
    written = 0
    for name in tqdm(list_images(set_dir), desc=osp.basename(set_dir), unit='image'):
        stem = osp.splitext(name)[0] + '.png'
        targets = []
        if 'restoration' in tasks:
            targets.append(('GT', osp.join(out_dir, 'GT', stem)))
        if 'sr' in tasks:
            targets.append(('HR', osp.join(out_dir, 'HR', stem)))
            targets += [(s, osp.join(out_dir, 'LR_bicubic', f'X{s}', stem)) for s in scales]
        missing = [(kind, path) for kind, path in targets if not osp.exists(path)]
        if not missing:
            continue
        img = read_image(osp.join(set_dir, name))
        hr = mod_crop(img, mod)
        for kind, path in missing:
            write_image(path, img if kind == 'GT' else hr if kind == 'HR' else bicubic_downscale(hr, kind))
            written += 1
    return written


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--input', type=existing_folder, default=osp.join(REPO, osp.pardir, 'shared', 'datasets'),
                        help='folder whose sub-folders are the sets (default: ../shared/datasets)')
    parser.add_argument('--output', type=output_folder, default=osp.join(REPO, 'datasets'),
                        help='default: datasets/ of this repository')
    parser.add_argument('--sets', nargs='*', help='set names (default: every sub-folder of --input)')
    parser.add_argument('--scales', type=positive_int, nargs='*', default=[2, 3, 4], help='SR scales')
    parser.add_argument('--mod', type=positive_int, default=12, help='HR sizes are cropped to a multiple of this')
    parser.add_argument('--tasks', nargs='+', choices=TASKS, default=list(TASKS))
    args = parser.parse_args(argv)
    for scale in args.scales:
        if args.mod % scale:
            parser.error(f'--mod: {args.mod} is not a multiple of scale {scale}; use e.g. 12')
    missing = [name for name in args.sets or () if not osp.isdir(osp.join(args.input, name))]
    if missing:
        parser.error(f'--sets: {missing[0]} is not a folder of {args.input}; give the names of its sub-folders')
    import acla_basicsr  # noqa: F401  (makes basicsr importable with current torchvision)
    from acla_basicsr.data.prepare_util import PrepareError, list_images

    sets = args.sets or sorted(d for d in os.listdir(args.input) if osp.isdir(osp.join(args.input, d)))
    try:
        for name in sets:
            set_dir = osp.join(args.input, name)
            if not list_images(set_dir):
                raise PrepareError(f'{set_dir}: holds no images; check --input and --sets.')
            count = prepare_set(set_dir, osp.join(args.output, name), args.scales, args.mod, args.tasks)
            print(f'{name}: {count} files written to {osp.join(args.output, name)}')
    except PrepareError as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
