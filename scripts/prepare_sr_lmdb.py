#!/usr/bin/env python
"""DIV2K (or any folder of HR images) to sub-images and basicsr LMDBs: HR and MATLAB-bicubic LR x2/x3/x4.

The recipe of basicsr's ``scripts/data_preparation`` (``extract_subimages.py``,
``create_lmdb.py``), which are not in basicsr's pip package, written on ``basicsr.utils``:

1. sub-images: every HR image is cut into ``crop_size`` crops every ``step`` pixels (480 and
   240 for DIV2K, plus one flush with the edge when more than ``thresh_size`` pixels would be
   lost), saved as ``<out>/<name>_HR_sub/<image>_s001.png``, ...;
2. LR: each HR sub-image downscaled with MATLAB's bicubic (``basicsr.utils.matlab_functions.imresize``,
   antialiased) by every scale, ``<out>/<name>_LR_bicubic/X{s}_sub/<image>_s001.png``, same names;
3. LMDBs with ``basicsr.utils.lmdb_util.make_lmdb_from_imgs``: ``<out>/<name>_HR_sub.lmdb`` and
   ``<out>/<name>_LR_bicubic_X{s}_sub.lmdb``, one key per sub-image, the same keys in all;
4. verification: every key of every LMDB is opened and decoded, its shape checked against
   ``meta_info.txt``, and LR shapes against HR shapes.

Resumable: files are written under a temporary name and renamed, and a rerun skips every
sub-image, LR image and LMDB that is already complete (an LMDB is built under
``*.partial.lmdb`` and renamed when done). An unreadable source image stops the script with
its file name. Crop size must be divisible by every scale, so that LR sub-images are exact.

Usage (the defaults make the files the full-size configs read)::

    python scripts/prepare_sr_lmdb.py --input datasets/DIV2K/DIV2K_train_HR
    python scripts/prepare_sr_lmdb.py --input my_hr_folder --output datasets/mine --name mine --scales 2 4
"""
import os
import shutil
import sys
from functools import partial
from multiprocessing import Pool
from os import path as osp

REPO = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, REPO)
from acla_basicsr.cli.args import (ArgumentParser, existing_folder, non_negative_int, output_folder,  # noqa: E402
                                   positive_int)


def extract_subimages(name, input_dir, hr_dir, crop_size, step, thresh_size):
    """Write the sub-images of one HR image that are not there yet; return how many it has."""
    from PIL import Image

    from acla_basicsr.data.prepare_util import PrepareError, read_image, subimage_positions, write_image
    path = osp.join(input_dir, name)
    stem = osp.splitext(name)[0]
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception:
        raise PrepareError(f'{path}: cannot read it as an image (corrupt or unsupported); '
                           'replace or remove the file and run again.') from None
    positions = subimage_positions(height, width, crop_size, step, thresh_size)
    targets = [osp.join(hr_dir, f'{stem}_s{i:03d}.png') for i in range(1, len(positions) + 1)]
    if all(osp.exists(t) for t in targets):
        return len(targets)
    img = read_image(path)
    if img.shape[:2] != (height, width):
        raise PrepareError(f'{path}: its header says {width}x{height} but it decodes to '
                           f'{img.shape[1]}x{img.shape[0]}; replace the file.')
    for (y, x), target in zip(positions, targets):
        if not osp.exists(target):
            write_image(target, img[y:y + crop_size, x:x + crop_size])
    return len(targets)


def make_lr(key, hr_dir, lr_dirs):
    """Write the MATLAB-bicubic LR versions of one HR sub-image that are not there yet."""
    from acla_basicsr.data.prepare_util import bicubic_downscale, read_image, write_image
    missing = [(s, osp.join(d, f'{key}.png')) for s, d in lr_dirs.items() if not osp.exists(osp.join(d, f'{key}.png'))]
    if missing:
        hr = read_image(osp.join(hr_dir, f'{key}.png'))
        for scale, target in missing:
            write_image(target, bicubic_downscale(hr, scale))
    return key


def _init_worker():
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, REPO)
    import acla_basicsr  # noqa: F401  (makes basicsr importable with current torchvision)


def _run(pool, function, items, desc, unit):
    from tqdm import tqdm
    iterator = pool.imap(function, items, chunksize=4) if pool else map(function, items)
    return list(tqdm(iterator, total=len(items), desc=desc, unit=unit))


def build_lmdb(folder, lmdb_path, keys):
    """Build ``lmdb_path`` from ``folder``/<key>.png under a temporary name, unless it exists."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    if osp.exists(lmdb_path):
        print(f'{lmdb_path} exists; skipped.')
        return
    partial_path = lmdb_path[:-len('.lmdb')] + '.partial.lmdb'
    if osp.exists(partial_path):
        shutil.rmtree(partial_path)
    make_lmdb_from_imgs(folder, partial_path, [f'{k}.png' for k in keys], keys, multiprocessing_read=False)
    os.replace(partial_path, lmdb_path)


def verify(hr_lmdb, lr_lmdbs, crop_size):
    """Open every key of every LMDB; check keys agree and LR = HR / scale. Return the key count."""
    from acla_basicsr.data.prepare_util import PrepareError, verify_lmdb
    hr = verify_lmdb(hr_lmdb)
    for (key, shape) in hr:
        if shape[:2] != (crop_size, crop_size):
            raise PrepareError(f'{hr_lmdb}: key {key} is {shape}, not {crop_size}x{crop_size}; '
                               'delete the output and run again with the same --crop-size.')
    for scale, path in lr_lmdbs.items():
        lr = verify_lmdb(path)
        expected = [(k, (h // scale, w // scale, c)) for k, (h, w, c) in hr]
        if lr != expected:
            bad = next((a, b) for a, b in zip(lr + [None] * len(expected), expected) if a != b)
            raise PrepareError(f'{path}: entry {bad[0]} does not match HR entry {bad[1]} at scale {scale}; '
                               'delete this LMDB and run again.')
    return len(hr)


def prepare(input_dir, output_dir, name, scales, crop_size=480, step=240, thresh_size=0, workers=1, check=True):
    """Run the four stages (see the module docstring); return the number of sub-images."""
    from acla_basicsr.data.prepare_util import PrepareError, list_images
    for scale in scales:
        if crop_size % scale:
            raise PrepareError(f'--crop-size {crop_size} is not divisible by scale {scale}; use e.g. 480.')
    images = list_images(input_dir)
    if not images:
        raise PrepareError(f'{input_dir}: holds no images; give the folder of HR images.')
    hr_dir = osp.join(output_dir, f'{name}_HR_sub')
    lr_dirs = {s: osp.join(output_dir, f'{name}_LR_bicubic', f'X{s}_sub') for s in scales}
    hr_lmdb = osp.join(output_dir, f'{name}_HR_sub.lmdb')
    lr_lmdbs = {s: osp.join(output_dir, f'{name}_LR_bicubic_X{s}_sub.lmdb') for s in scales}

    pool = Pool(workers, initializer=_init_worker) if workers > 1 else None
    try:
        counts = _run(pool, partial(extract_subimages, input_dir=input_dir, hr_dir=hr_dir, crop_size=crop_size,
                                    step=step, thresh_size=thresh_size), images, 'sub-images', 'image')
        keys = [f'{osp.splitext(n)[0]}_s{i:03d}' for n, c in zip(images, counts) for i in range(1, c + 1)]
        if not keys:
            raise PrepareError(f'{input_dir}: every image is smaller than --crop-size {crop_size}; lower it.')
        if scales:
            _run(pool, partial(make_lr, hr_dir=hr_dir, lr_dirs=lr_dirs), keys, 'LR bicubic', 'sub-image')
    finally:
        if pool:
            pool.close()
            pool.join()
    build_lmdb(hr_dir, hr_lmdb, keys)
    for scale in scales:
        build_lmdb(lr_dirs[scale], lr_lmdbs[scale], keys)
    if check:
        verify(hr_lmdb, lr_lmdbs, crop_size)
    print(f'Prepared {len(keys)} sub-images of {len(images)} images: {hr_lmdb}'
          + ''.join(f', {lr_lmdbs[s]}' for s in scales))
    return len(keys)


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--input', type=existing_folder, default=osp.join(REPO, 'datasets', 'DIV2K', 'DIV2K_train_HR'),
                        help='folder of HR images (default: datasets/DIV2K/DIV2K_train_HR of this repository)')
    parser.add_argument('--output', type=output_folder, default=osp.join(REPO, 'datasets', 'DIV2K'),
                        help='folder of the sub-images and LMDBs (default: datasets/DIV2K of this repository)')
    parser.add_argument('--name', default='DIV2K_train', help='prefix of the output names')
    parser.add_argument('--scales', type=positive_int, nargs='*', default=[2, 3, 4], help='LR scales (none: HR only)')
    parser.add_argument('--crop-size', type=positive_int, default=480, help='HR sub-image size')
    parser.add_argument('--step', type=positive_int, default=240, help='stride between sub-images')
    parser.add_argument('--thresh-size', type=non_negative_int, default=0,
                        help='edge remainder above which a last crop is added')
    parser.add_argument('--workers', type=positive_int, default=min(4, os.cpu_count() or 1), help='processes')
    parser.add_argument('--no-verify', action='store_true', help='skip opening every key at the end')
    args = parser.parse_args(argv)
    for scale in args.scales:
        if args.crop_size % scale:
            parser.error(f'--crop-size: {args.crop_size} is not divisible by scale {scale}; use e.g. 480')
    if not args.name or os.sep in args.name:
        parser.error(f'--name: {args.name!r} is not a file name prefix; give one such as DIV2K_train')
    import acla_basicsr  # noqa: F401  (makes basicsr importable with current torchvision)
    from acla_basicsr.data.prepare_util import PrepareError
    try:
        prepare(args.input, args.output, args.name, args.scales, args.crop_size, args.step, args.thresh_size,
                args.workers, not args.no_verify)
    except PrepareError as error:
        sys.exit(f'error: {error}')


if __name__ == '__main__':
    main()
